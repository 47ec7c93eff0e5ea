"""Builds streamrec's compiled parts; the rest of the package is described in pyproject.toml.

``streamrec.native._ops``: the torch operators (torch.ops.streamrec, C++ against
libtorch). ``streamrec.native._batch`` and ``streamrec.native._records``: two
CPython extensions (the batcher's one-pass build, the Kafka record reader).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

NATIVE = "streamrec/native"


def _missing_build_tools() -> list[str]:
    """What this machine lacks to build the extensions: compilers, Python's headers."""
    missing = []
    for variable, default in (("CC", "cc"), ("CXX", "c++")):
        command = os.environ.get(variable) or sysconfig.get_config_var(variable) or default
        program = shlex.split(command)[0] if command.strip() else default
        if shutil.which(program) is None:
            missing.append(f"a {'C' if variable == 'CC' else 'C++'} compiler "
                           f"({variable}={command!r} not found)")
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        missing.append(f"Python's headers ({headers} not found)")
    return missing


class BuildNative(BuildExtension):
    """torch's extension build, failing first with a clear message when a tool is missing."""

    def run(self) -> None:
        missing = _missing_build_tools()
        if missing:
            raise SystemExit(
                "streamrec builds compiled extensions at install time and needs "
                + ", ".join(missing) + ". On Debian/Ubuntu: apt-get install g++ python3-dev "
                "(or set CC / CXX).")
        super().run()

    def build_extensions(self) -> None:
        # torch's build compiles every source as C++: the C extensions keep the plain compiler.
        self._plain = (self.compiler.compile, self.compiler._compile)
        super().build_extensions()

    def build_extension(self, ext: Extension) -> None:
        if ext.language == "c++":
            super().build_extension(ext)
            return
        torch_compile = (self.compiler.compile, self.compiler._compile)
        self.compiler.compile, self.compiler._compile = self._plain
        try:
            super().build_extension(ext)
        finally:
            self.compiler.compile, self.compiler._compile = torch_compile


_C_FLAGS = ["-O3", "-g0", "-std=c11"]

setup(
    ext_modules=[
        CppExtension("streamrec.native._ops", [f"{NATIVE}/ops.cpp"],
                     extra_compile_args=["-O3", "-g0"]),
        Extension("streamrec.native._batch", [f"{NATIVE}/batch.c"],
                  extra_compile_args=_C_FLAGS, libraries=["m"]),
        Extension("streamrec.native._records", [f"{NATIVE}/records.c"],
                  extra_compile_args=_C_FLAGS),
    ],
    cmdclass={"build_ext": BuildNative},
)
