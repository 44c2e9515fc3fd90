"""The package's layers point one way and its modules import no cycle.

The contract lives in ``pyproject.toml`` (``[tool.importlinter]``) and is
checked by import-linter, which also sees imports inside functions. The
README's "Architecture" section draws the same layers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env=env)


@pytest.fixture(scope="module")
def contract():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_layers_contract_is_kept():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check can fail: an io module importing a widget, even lazily, is caught."""
    shutil.copytree(ROOT / "ketamine_nb", tmp_path / "ketamine_nb",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    dwi = tmp_path / "ketamine_nb" / "dwi.py"
    dwi.write_text(dwi.read_text() + "\n\ndef _upward():\n    from . import widgets  # noqa\n")
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert "BROKEN" in res.stdout and "ketamine_nb.dwi" in res.stdout


def test_every_module_sits_in_a_layer(contract):
    layers = contract["contracts"][0]["layers"]
    named = {m.strip().strip("()") for line in layers for m in line.split(":")}
    modules = {p.stem if p.is_file() else p.name
               for p in (ROOT / "ketamine_nb").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__")
               or (p.is_dir() and (p / "__init__.py").is_file())}
    assert modules <= named, f"modules in no layer: {sorted(modules - named)}"


def test_no_import_cycle_between_modules():
    import grimp

    graph = grimp.build_graph("ketamine_nb", cache_dir=None)
    top = {m.split(".")[1] for m in graph.modules if m.count(".") >= 1}

    def squash(m):
        return m.split(".")[1] if m.count(".") >= 1 else None

    edges = {a: set() for a in top}
    for m in graph.modules:
        a = squash(m)
        if a is None:
            continue
        for b in map(squash, graph.find_modules_directly_imported_by(m)):
            if b is not None and b != a:
                edges[a].add(b)
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle.extend([*path, node, nxt])
                return True
            if nxt not in state and visit(nxt, [*path, node]):
                return True
        state[node] = 2
        return False

    for node in sorted(edges):
        if node not in state and visit(node, []):
            break
    assert not cycle, f"import cycle: {' -> '.join(cycle)}"
