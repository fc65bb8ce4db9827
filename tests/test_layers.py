"""The package's layout holds: layers import only downward, no circles, small modules.

The layers contract itself lives in ``pyproject.toml`` (``[tool.importlinter]``) and is checked by
import-linter's ``lint-imports``; the other rules are read from the source with ``ast``.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlsec"
ROOT = PACKAGE.parent
LAYERS = ("core", "attacks", "defenses", "zoo", "auditing", "reports", "io", "cli")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_layers_contract_holds() -> None:
    """import-linter finds no import that goes up a layer or across independent layers."""
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout
    assert done.stdout.count("KEPT") >= 2


def test_the_contract_names_every_layer_folder() -> None:
    """A new top-level folder cannot slip past the contract unnoticed."""
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == set(LAYERS)
    config = (ROOT / "pyproject.toml").read_text()
    for layer in LAYERS:
        assert f'"mlsec.{layer}' in config or f"| mlsec.{layer}" in config, layer


def test_no_import_circle_between_modules() -> None:
    """Module-level imports among mlsec's own modules form no cycle."""
    graph: dict[str, set[str]] = {}
    for path in _modules():
        name = _name(path)
        tree = ast.parse(path.read_text())
        deps: set[str] = set()
        for node in tree.body:  # module level only: what runs at import time
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mlsec"):
                deps.add(node.module)
                deps.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("mlsec"))
        graph[name] = deps
    known = set(graph)
    edges = {m: {d for d in deps if d in known and d != m} for m, deps in graph.items()}
    # A package's __init__ re-exporting its children is not a cycle through the child.
    for module, deps in edges.items():
        edges[module] = {d for d in deps if not module.startswith(d + ".")}
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        trail.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        trail.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_no_mlsec_import_inside_a_function() -> None:
    """Imports of mlsec's own modules sit at the top, where a circle would show at once.

    Third-party imports inside a function (optional dependencies, slow imports used by one
    command) are allowed.
    """
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    names = [a.name for a in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    names = [inner.module or ""]
                else:
                    continue
                if any(n.split(".")[0] == "mlsec" for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{inner.lineno} {names}")
    assert not offenders, "\n".join(offenders)


def test_no_private_module_used_from_another_package() -> None:
    offenders = []
    for path in _modules():
        package = _name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                private = [i for i, p in enumerate(parts) if p.startswith("_") and i > 0]
                if parts[0] == "mlsec" and private:
                    owner = ".".join(parts[: private[0]])
                    if not package.startswith(owner):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {target}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_function_sizes(path: Path) -> None:
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{lines} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"  # type: ignore[operator]
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
    ]
    assert not long, ", ".join(long)


def test_no_branch_on_the_norm_outside_the_geometry() -> None:
    """Per-norm behaviour lives in core/threat.py's geometry objects."""
    offenders = []
    for path in _modules():
        if path.relative_to(PACKAGE).as_posix() == "core/threat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            names = {getattr(o, "id", None) for o in operands} | {
                getattr(o, "attr", None) for o in operands
            }
            values = {o.value for o in operands if isinstance(o, ast.Constant)}
            if names & {"LINF", "L2"} or values & {"linf", "l2"}:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "\n".join(offenders)
