"""The layout's promises, read from the source: stages depend one way, no import cycles,
project imports at the top of a module, and each package only reaches what its stage may."""
import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("data_utils", "lipsync", "models")
SCRIPTS = ("train_328.py", "train_syncnet.py", "inference_328.py", "evaluate_328.py", "serve_328.py")
# What each package may import from the project (a prefix matches the module and its submodules).
ALLOWED = {
    "models": ("models", "data_utils.crop", "data_utils.timebase", "lipsync.core.errors"),
    "data_utils": ("data_utils", "models", "lipsync.core"),
    "lipsync.core": ("lipsync.core", "data_utils.crop", "data_utils.layout", "data_utils.timebase", "models"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules():
    return {module_name(path): path for package in PACKAGES for path in (REPO_ROOT / package).rglob("*.py")}


def imported_modules(tree: ast.AST, known) -> list:
    """(module, line, at_top) of each project import; ``from a import b`` names a.b when that is a module."""
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        for name in dict.fromkeys(names):
            if name.split(".")[0] in PACKAGES:
                found.append((name, node.lineno, id(node) in top_level))
    return found


@pytest.fixture(scope="module")
def graph():
    known = project_modules()
    edges = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        edges[name] = imported_modules(tree, known)
    return known, edges


def test_no_import_cycles(graph):
    known, edges = graph
    state, cycles = {}, []

    def targets(node):
        """What importing ``node`` loads: each imported module and, before it, its parent packages."""
        for target, _, _ in edges.get(node, ()):
            target = target if target in known else target.rsplit(".", 1)[0]
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):
                loaded = ".".join(parts[:depth])
                if loaded in known and loaded != node and not node.startswith(loaded + "."):
                    yield loaded

    def visit(node, stack):
        state[node] = "open"
        for target in targets(node):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state and target in known:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(known):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_project_imports_sit_at_the_top_of_each_module(graph):
    _, edges = graph
    inside = [f"{name}:{line} imports {target}" for name, found in edges.items()
              for target, line, at_top in found if not at_top]
    assert not inside, "project imports inside functions (move them to the top):\n" + "\n".join(inside)


def test_each_package_imports_only_what_its_stage_may(graph):
    _, edges = graph
    wrong = []
    for name, found in edges.items():
        rules = [prefix for prefix in ALLOWED if name == prefix or name.startswith(prefix + ".")]
        if not rules:
            continue
        allowed = ALLOWED[max(rules, key=len)]
        wrong += [f"{name}:{line} imports {target}" for target, line, _ in found
                  if not any(target == ok or target.startswith(ok + ".") for ok in allowed)]
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_scripts_are_thin_and_parse_nothing_at_import():
    for script in SCRIPTS:
        path = REPO_ROOT / script
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(), str(path))
        calls_at_top = [node.lineno for node in tree.body
                        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)]
        assert not calls_at_top, f"{script} runs code at import (lines {calls_at_top})"
        functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
        assert any(function.name == "main" for function in functions), f"{script} has no main()"
