"""The package's layers run one way (docs/architecture.md), read from the imports.

    cli                                   (streamrec.cli)
    ingest | trainer | serving | synthetic   side by side: serving imports neither
                                          trainer nor ingest's sources; ingest imports
                                          neither trainer nor serving
    model                                 (streamrec.model: tables, embeddings,
                                          dense model, parameter codec)
    events and features, kernels, client  (ingest.event/ids/decode/batch, native,
                                          protos, client)
    config, errors, runtime               (no torch)

Every import counts (module level or inside a function) but those under
``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {"streamrec": ROOT / "streamrec", "streamrec.ingest": ROOT / "ingest",
                "streamrec.trainer": ROOT / "trainer", "streamrec.serving": ROOT / "serving",
                "streamrec.protos": ROOT / "protos"}

# Most specific prefix wins.
LAYERS = {
    "streamrec": 0, "streamrec._lazy": 0, "streamrec.config": 0, "streamrec.errors": 0,
    "streamrec.runtime": 0,
    "streamrec.protos": 1, "streamrec.native": 1, "streamrec.client": 1,
    "streamrec.ingest": 1, "streamrec.ingest.event": 1, "streamrec.ingest.ids": 1,
    "streamrec.ingest.decode": 1, "streamrec.ingest.batch": 1,
    "streamrec.model": 2,
    "streamrec.ingest.": 3, "streamrec.trainer": 3, "streamrec.serving": 3,
    "streamrec.synthetic": 3,
    "streamrec.cli": 4,
}
# Siblings of layer 3 that must not import each other: (importer, imported) prefixes.
APART = [("streamrec.serving", "streamrec.trainer"), ("streamrec.serving", "streamrec.ingest."),
         ("streamrec.ingest.", "streamrec.trainer"), ("streamrec.ingest.", "streamrec.serving"),
         ("streamrec.trainer", "streamrec.serving")]


def layer_of(module: str) -> int:
    best, layer = "", None
    for prefix, n in LAYERS.items():
        hit = (module == prefix or module.startswith(prefix + ".")
               or (prefix.endswith(".") and module.startswith(prefix)))
        if hit and len(prefix) > len(best):
            best, layer = prefix, n
    assert layer is not None, f"{module}: no layer assigned in this test"
    return layer


def matches(module: str, prefix: str) -> bool:
    if prefix.endswith("."):
        return module.startswith(prefix) and layer_of(module) == 3
    return module == prefix or module.startswith(prefix + ".")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if any(p in ("ingest", "trainer", "serving", "protos") for p in parts[:1]) \
                    and package == "streamrec":
                continue  # the links to the top-level folders, walked as their own package
            found[".".join([package, *parts])] = path
    return found


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                   "typing.TYPE_CHECKING"):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                node_module = ".".join(base + ([node.module] if node.module else []))
            else:
                node_module = node.module or ""
            # `from pkg import submodule` imports the submodule.
            names = [f"{node_module}.{a.name}" if f"{node_module}.{a.name}" in known
                     else node_module for a in node.names]
        else:
            continue
        out.update(n for n in names if n == "streamrec" or n.startswith("streamrec."))
    return {_longest_known(n, known) for n in out}


def _longest_known(name: str, known: set[str]) -> str:
    while name not in known:
        name = name.rsplit(".", 1)[0]
    return name


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {m: imports_of(m, p, known) - {m} for m, p in found.items()}


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    for module in graph:
        layer_of(module)


def test_no_import_against_the_layer_order(graph: dict[str, set[str]]) -> None:
    wrong = sorted(f"{m} (layer {layer_of(m)}) imports {i} (layer {layer_of(i)})"
                   for m, deps in graph.items() for i in deps
                   if layer_of(i) > layer_of(m) and not m.endswith("_lazy"))
    assert not wrong, "\n".join(wrong)


def test_side_by_side_packages_do_not_import_each_other(graph: dict[str, set[str]]) -> None:
    wrong = sorted(f"{m} imports {i}" for m, deps in graph.items() for i in deps
                   for a, b in APART if matches(m, a) and matches(i, b))
    assert not wrong, "\n".join(wrong)


def test_no_two_modules_import_each_other(graph: dict[str, set[str]]) -> None:
    pairs = sorted({tuple(sorted((m, i))) for m, deps in graph.items() for i in deps
                    if m in graph.get(i, set()) and not (m.startswith(i + ".")
                                                         or i.startswith(m + "."))})
    assert not pairs, pairs


def test_the_client_loads_grpc_and_the_messages_only() -> None:
    code = ("import sys; import streamrec.client; "
            "print('\\n'.join(sorted(m for m in sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split()
    ours = sorted(m for m in loaded if m.startswith("streamrec"))
    assert set(ours) <= {"streamrec", "streamrec._lazy", "streamrec.client", "streamrec.protos",
                         "streamrec.protos.serving_pb2", "streamrec.protos.serving_pb2_grpc",
                         "streamrec.protos.event_pb2", "streamrec.ingest", "streamrec.ingest.ids"}, ours
    heavy = [m for m in ("torch", "torchrec", "kafka", "numpy", "prometheus_client") if m in loaded]
    assert not heavy, heavy
