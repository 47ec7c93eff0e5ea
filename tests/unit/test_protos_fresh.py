"""Generated protobuf code must match the .proto files (run `make protos` after editing)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    # Compiled as streamrec/protos/*.proto: the generated code imports
    # streamrec.protos, the installed package's name.
    out = tmp_path / "streamrec" / "protos"
    out.mkdir(parents=True)
    for proto in (ROOT / "protos").glob("*.proto"):
        shutil.copy(proto, out / proto.name)
    protos = sorted(p.name for p in (ROOT / "protos").glob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
         *(f"streamrec/protos/{p}" for p in protos)],
        check=True, cwd=tmp_path)
    generated = sorted(p for p in out.iterdir() if p.suffix in (".py", ".pyi"))
    # A .proto without services yields an empty *_grpc.py that `make protos` removes.
    without_services = {f"{p[:-len('.proto')]}_pb2_grpc.py" for p in protos
                        if "\nservice " not in (ROOT / "protos" / p).read_text()}
    generated = [p for p in generated if p.name not in without_services]
    assert generated, "protoc generated nothing"
    stale = [p.name for p in generated
             if not (ROOT / "protos" / p.name).exists()
             or (ROOT / "protos" / p.name).read_text() != p.read_text()]
    assert not stale, f"stale generated code, run `make protos`: {stale}"


def test_generated_code_imports_package_qualified() -> None:
    for path in (ROOT / "protos").glob("*_pb2*.py"):
        for line in path.read_text().splitlines():
            if line.startswith("import ") and "_pb2" in line:
                raise AssertionError(f"{path.name}: flat import {line!r}")
