"""The layer rule of docs/design.md, enforced by reading the package's imports.

Every ``import`` and ``from ... import`` in every module counts, the lazy ones inside
functions included. A module may import its own layer's package and the layers below it,
never a layer above it; the packages of one layer do not import each other (the modules of
the top layer, the edge, may); the private
``_kernels`` package is imported by ``core`` alone; and no chain of imports leads from a
module back to itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import multibox

# Lowest first. A module belongs to the first entry one of whose prefixes it starts with.
LAYERS: list[tuple[str, ...]] = [
    ("_kernels",),
    ("core",),
    ("models", "data", "eval"),
    ("viz",),
    ("inference",),
    ("config",),
    ("engine",),
    ("cli", "__main__", "memory", ""),  # "" is the package's own __init__ (the public facade)
]
PRIVATE_TO = {"_kernels": "core"}


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def imports_of(path: Path, name: str, package: str) -> list[tuple[str, list[str], int]]:
    """``(module, names imported from it, line)`` for every import of the package's own modules."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == package]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != package:
                continue
            # "from . import x" / "from .pkg import mod" import the modules x and mod
            found.append((target, [a.name for a in node.names], node.lineno))
    return found


def layer_of(module: str, package: str) -> tuple[int, str]:
    rest = module[len(package) + 1 :] if module != package else ""
    top = rest.split(".")[0]
    for i, prefixes in enumerate(LAYERS):
        if top in prefixes:
            return i, top
    raise AssertionError(f"{module}: in no layer of LAYERS; add it to tests/test_architecture.py and docs/design.md")


def check_layers(root: Path, package: str) -> list[str]:
    """Every breach of the layer rule in the package at ``root``, as readable lines."""
    modules = {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    problems = []
    for name, path in modules.items():
        src_layer, src_top = layer_of(name, package)
        targets = []
        for module, names, line in imports_of(path, name, package):
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            if len(submodules) < len(names) or not names:
                submodules.append(module)  # names defined in the module (or package) itself
            targets += [(t, line) for t in submodules if t in modules]
        for target, line in targets:
            graph[name].add(target)
            dst_layer, dst_top = layer_of(target, package)
            where = f"{path.relative_to(root)}:{line}: {name} imports {target}"
            if dst_layer > src_layer:
                problems.append(f"{where}: a higher layer ({'/'.join(LAYERS[dst_layer]) or 'facade'})")
            elif dst_layer == src_layer and dst_top != src_top and src_layer != len(LAYERS) - 1:
                problems.append(f"{where}: another package of the same layer")
            owner = PRIVATE_TO.get(dst_top)
            if owner is not None and src_top not in (owner, dst_top):
                problems.append(f"{where}: {dst_top} is private to {owner}")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component) + [sorted(component)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_multibox_keeps_its_layer_rule():
    root = Path(multibox.__file__).parent
    assert check_layers(root, "multibox") == []


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "fakebox"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return root


def test_rule_catches_an_upward_import_even_a_lazy_one(tmp_path):
    root = _fake_package(
        tmp_path,
        {
            "core/boxes.py": "def f():\n    from ..inference.detector import Detector\n",
            "inference/detector.py": "from ..core import boxes\nclass Detector: ...\n",
        },
    )
    assert check_layers(root, "fakebox") == [
        "core/boxes.py:2: fakebox.core.boxes imports fakebox.inference.detector: a higher layer (inference)",
        "import cycle: fakebox.core.boxes -> fakebox.inference.detector -> fakebox.core.boxes",
    ]


def test_rule_catches_peers_private_kernels_and_cycles_within_a_package(tmp_path):
    root = _fake_package(
        tmp_path,
        {
            "data/voc.py": "import fakebox.models.zoo\n",
            "models/zoo.py": "from .ssd import SSD\nfrom .._kernels import loops\n",
            "models/ssd.py": "from . import zoo\nSSD = 1\n",
            "_kernels/loops.py": "",
            "core/nms.py": "from .._kernels.loops import f\n",  # allowed: core owns _kernels
        },
    )
    assert check_layers(root, "fakebox") == [
        "data/voc.py:1: fakebox.data.voc imports fakebox.models.zoo: another package of the same layer",
        "models/zoo.py:2: fakebox.models.zoo imports fakebox._kernels.loops: _kernels is private to core",
        "import cycle: fakebox.models.ssd -> fakebox.models.zoo -> fakebox.models.ssd",
    ]


def test_a_module_outside_every_layer_is_an_error(tmp_path):
    root = _fake_package(tmp_path, {"utils/misc.py": ""})
    try:
        check_layers(root, "fakebox")
    except AssertionError as e:
        assert "fakebox.utils" in str(e) and "in no layer" in str(e)
    else:
        raise AssertionError("a module outside LAYERS was accepted")
