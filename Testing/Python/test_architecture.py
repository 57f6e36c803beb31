"""The house rules of docs/architecture.md, checked: layers, no import loops, small files, few settings."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "ProMISeModule"
PACKAGES = ("ProMISeLib", "ProMISeTrain", "ProMISeSlicer")
#: The CLI's training commands import the training wing when they run (issue 29): the one allowed way up.
LAZY_TRAINING_IMPORTS = {"ProMISeLib.cli_training"}


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(MODULE_DIR).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import of our packages in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                found.append((name, id(node) in top or _in_type_checking(tree, node)))
    return found


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    return any(isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test) and node in list(ast.walk(n))
               for n in tree.body)


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, bool]]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (MODULE_DIR / pkg).rglob("*.py")}
    edges = {}
    for name, path in files.items():
        edges[name] = [(target if target in files else target.rsplit(".", 1)[0], top)
                       for target, top in _imports(path)]
        edges[name] = [(t, top) for t, top in edges[name] if t in files and t != name]
    return edges


def test_the_core_imports_neither_the_training_wing_nor_the_slicer_layer(graph):
    for name, targets in graph.items():
        if not name.startswith("ProMISeLib"):
            continue
        for target, _ in targets:
            assert not target.startswith("ProMISeSlicer"), f"{name} imports {target}"
            if target.startswith("ProMISeTrain"):
                assert name in LAZY_TRAINING_IMPORTS, f"{name} imports the training wing ({target})"


#: The core's layers, from the callers down: a module imports only from its own layer and those below it.
LAYERS = ("cli", "engine", "walk", "runtime", "models", "prompting", "io")
#: Modules at the core's top level that every layer may use; they themselves use only ``io``.
SHARED = ("errors", "result", "metrics")


def _layer(module: str) -> str | None:
    """The layer of a core module: its first name under ProMISeLib (cli*.py and the batch are the CLI's)."""
    parts = module.split(".")
    if parts[0] != "ProMISeLib" or len(parts) == 1:
        return None
    head = parts[1]
    return "cli" if head.startswith("cli") or head == "batch" else head


def layer_violations(graph) -> list[str]:
    """Every import in the core that goes up the layers, lazy or not."""
    found = []
    for name, targets in graph.items():
        here = _layer(name)
        if here is None:
            continue
        for target, _ in targets:
            there = _layer(target)
            if there is None or there in SHARED:
                continue
            allowed = there == "io" if here in SHARED else LAYERS.index(there) >= LAYERS.index(here)
            if not allowed:
                found.append(f"{name} ({here}) imports {target} ({there})")
    return found


def test_the_core_imports_only_down_its_layers(graph):
    assert set(_layer(n) for n in graph if _layer(n)) <= set(LAYERS) | set(SHARED), "a core module outside the layers"
    assert not layer_violations(graph)
    # the check itself: an upward import is caught
    assert layer_violations({"ProMISeLib.io.weights": [("ProMISeLib.models.registry", False)]})


def test_module_level_imports_have_no_loops(graph):
    def visit(node, path):
        for target, top in graph.get(node, []):
            if not top:
                continue
            if target in path:
                cycle = path[path.index(target):] + [target]
                # a package importing its own submodule from its __init__ is not a loop
                pairs = zip(cycle, cycle[1:], strict=False)
                if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in pairs):
                    raise AssertionError(" -> ".join(cycle))
                continue
            visit(target, path + [target])

    for start in graph:
        visit(start, [start])


def test_no_core_file_is_over_400_lines():
    long = {str(p.relative_to(MODULE_DIR)): n for p in (MODULE_DIR / "ProMISeLib").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_the_walk_has_at_most_25_settings_by_stage_each_with_its_meaning():
    from ProMISeLib.walk.settings import STAGES, WALK_DEFAULTS, WalkSettings

    assert [f.name for f in dataclasses.fields(WalkSettings)] == list(STAGES)
    fields = [f for stage in STAGES.values() for f in dataclasses.fields(stage)]
    assert len(fields) <= 25
    source = (MODULE_DIR / "ProMISeLib" / "walk" / "settings.py").read_text().splitlines()
    for field in fields:
        line = next(s for s in source if s.strip().startswith(f"{field.name}:"))
        assert "#" in line and len(line.split("#", 1)[1].strip()) > 10, f"{field.name} has no one-line meaning"
    from ProMISeLib.prompting import PROMPT_MODES

    assert set(WALK_DEFAULTS) == set(PROMPT_MODES) - {"auto"}, "every prompt mode has its explicit defaults"


def test_only_the_batch_dask_runner_imports_dask():
    """The Slicer console's segmentBatch shares the batch modules in-process, where Dask is not installed."""
    for path in (MODULE_DIR / "ProMISeLib").rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        if names & {"dask", "distributed"}:
            assert path.relative_to(MODULE_DIR).as_posix() == "ProMISeLib/batch/dask_runner.py", path
