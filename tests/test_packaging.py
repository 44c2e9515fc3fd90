"""The ways in agree: pyproject, the conda and Binder environments, postBuild, CI, README.

A newcomer meets the project through the README's Quickstart, a Binder user
through ``binder/``, a conda user through ``environment.yml`` and CI through
``.ci/run``. These tests fail when one of them drifts from ``pyproject.toml``
or from the others.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml  # PyYAML: a dependency of dask, so always installed with ketamine-nb

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "environment.yml"
BINDER_ENV_FILE = ROOT / "binder" / "environment.yml"
POSTBUILD = ROOT / "binder" / "postBuild"
CI_RUN = ROOT / ".ci" / "run"
README = ROOT / "README.md"

#: The README's Quickstart, command by command.
QUICKSTART = [
    "python3.11 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/ketamine-nb demo",
    "bash tools/test.sh",
]

#: Extras that are separate packages on conda-forge: (PyPI name, extra) -> conda names.
EXTRA_PACKAGES = {("dask", "distributed"): ("distributed",)}

#: Entries of an environment file that are not Python dependencies of the package.
NOT_DEPENDENCIES = {"python", "pip"}

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*(.*?)\s*(?:;.*)?$")


def normalise(requirement: str) -> dict[str, str]:
    """Map a requirement (PyPI or conda syntax) to ``{name: version spec}``.

    Names are lowercased with ``_`` and ``.`` turned into ``-``; extras are
    dropped, except those that are packages of their own on conda-forge
    (``dask[distributed]`` gives ``dask`` and ``distributed``, same spec).
    Spaces are removed from the spec (``numpy >=1.26`` -> ``>=1.26``).
    """
    m = _REQ.match(requirement)
    assert m, f"cannot parse requirement {requirement!r}"
    name = re.sub(r"[_.]", "-", m.group(1).lower())
    spec = m.group(3).replace(" ", "")
    out = {name: spec}
    for extra in (m.group(2) or "").split(","):
        for pkg in EXTRA_PACKAGES.get((name, extra.strip().lower()), ()):
            out[pkg] = spec
    return out


def normalise_all(requirements) -> dict[str, str]:
    out: dict[str, str] = {}
    for req in requirements:
        out.update(normalise(req))
    return out


def test_normalise_handles_extras_markers_and_conda_syntax():
    assert normalise("dask[distributed]>=2024.8") == {"dask": ">=2024.8",
                                                      "distributed": ">=2024.8"}
    assert normalise("Bids_Validator.Deno >= 2.0 ; python_version >= '3.10'") == {
        "bids-validator-deno": ">=2.0"}
    assert normalise("python=3.11") == {"python": "=3.11"}
    assert normalise("pytest") == {"pytest": ""}


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runtime(pyproject):
    return normalise_all(pyproject["project"]["dependencies"])


@pytest.fixture(scope="module")
def test_extra(pyproject):
    return normalise_all(pyproject["project"]["optional-dependencies"]["test"])


def read_env(path: Path) -> tuple[dict, dict[str, str], dict[str, str]]:
    """Return (the parsed file, its conda packages, its pip packages)."""
    env = yaml.safe_load(path.read_text(encoding="utf-8"))
    conda, pip = [], []
    for item in env["dependencies"]:
        if isinstance(item, dict):
            assert set(item) == {"pip"}, f"{path.name}: unexpected entry {item}"
            pip.extend(item["pip"])
        else:
            conda.append(str(item))
    conda_pkgs, pip_pkgs = normalise_all(conda), normalise_all(pip)
    both = set(conda_pkgs) & set(pip_pkgs)
    assert not both, f"{path.name}: {sorted(both)} listed for both conda and pip"
    return env, conda_pkgs, pip_pkgs


@pytest.mark.parametrize("path", [ENV_FILE, BINDER_ENV_FILE], ids=lambda p: p.parent.name)
def test_environment_file_is_conda_forge_python_311_with_pip(path, pyproject):
    env, conda, pip = read_env(path)
    assert env["name"] == "ketamine-nb"
    assert env["channels"] == ["conda-forge"]
    assert conda.get("python") == "=3.11"
    assert "pip" in conda
    lower = re.fullmatch(r">=(\d+)\.(\d+)", pyproject["project"]["requires-python"])
    assert lower and (3, 11) >= (int(lower[1]), int(lower[2]))


@pytest.mark.parametrize("path", [ENV_FILE, BINDER_ENV_FILE], ids=lambda p: p.parent.name)
def test_environment_file_has_every_runtime_dependency_with_its_lower_bound(path, runtime):
    _, conda, pip = read_env(path)
    listed = {**conda, **pip}
    missing = sorted(set(runtime) - set(listed))
    assert not missing, f"{path.name} lacks runtime dependencies {missing} of pyproject.toml"
    differ = {n: (runtime[n], listed[n]) for n in runtime if runtime[n] != listed[n]}
    assert not differ, f"{path.name}: bounds differ (pyproject, env): {differ}"


def test_binder_environment_is_exactly_the_runtime_dependencies(runtime):
    _, conda, pip = read_env(BINDER_ENV_FILE)
    extra = sorted((set(conda) | set(pip)) - NOT_DEPENDENCIES - set(runtime))
    assert not extra, f"binder/environment.yml lists {extra}, which pyproject's runtime lacks"


def test_top_level_environment_is_runtime_plus_test_extra(runtime, test_extra):
    _, conda, pip = read_env(ENV_FILE)
    listed = {**conda, **pip}
    extra = sorted(set(listed) - NOT_DEPENDENCIES - set(runtime) - set(test_extra))
    assert not extra, f"environment.yml lists {extra}, which pyproject.toml lacks"
    missing = sorted(set(test_extra) - set(listed))
    assert not missing, f"environment.yml lacks the test extra's {missing}"
    differ = {n: (test_extra[n], listed[n]) for n in test_extra if test_extra[n] != listed[n]}
    assert not differ, f"environment.yml: test bounds differ (pyproject, env): {differ}"


def test_binder_and_top_level_environments_agree_on_the_runtime_part(runtime):
    _, c1, p1 = read_env(ENV_FILE)
    _, c2, p2 = read_env(BINDER_ENV_FILE)
    for name in runtime:
        assert (name in c1) == (name in c2), f"{name}: conda in one file, pip in the other"


def _git_mode(path: Path) -> str | None:
    """The file mode git records for ``path`` (None if untracked or no git)."""
    if shutil.which("git") is None:
        return None
    res = subprocess.run(["git", "ls-files", "--stage", "--", str(path.relative_to(ROOT))],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    return res.stdout.split()[0] if res.returncode == 0 and res.stdout.strip() else None


@pytest.mark.parametrize("path", [POSTBUILD, CI_RUN, ROOT / "tools" / "test.sh"],
                         ids=lambda p: p.name)
def test_scripts_are_executable_and_stop_on_errors(path):
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    assert os.access(path, os.X_OK), f"{path.relative_to(ROOT)} is not executable (chmod +x)"
    mode = _git_mode(path)
    assert mode in (None, "100755"), f"git records {path.relative_to(ROOT)} as {mode}"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#!"), "no shebang line"
    assert re.search(r"^set -[a-z]*e", text, re.M), "no 'set -e'"


def _commands(script: str) -> list[str]:
    """Command lines of a shell script: no shebang, comments or blank lines."""
    return [line.strip() for line in script.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_postbuild_installs_the_package_then_prepares_the_demo(pyproject):
    text = POSTBUILD.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/bash\n")
    lines = _commands(text)
    install = [i for i, c in enumerate(lines)
               if re.search(r"\bpip install\b.*(?:-e\s+)?\.(?:\s|$)", c)]
    demo = [i for i, c in enumerate(lines) if re.match(r"ketamine-nb demo\b", c)]
    assert install, "postBuild does not pip-install the package"
    assert demo, "postBuild does not run 'ketamine-nb demo'"
    assert install[0] < demo[0], "postBuild runs the demo before installing the package"
    assert "ketamine-nb" in pyproject["project"]["scripts"]


def readme_quickstart() -> list[str]:
    """The commands in the code blocks of the README's Quickstart section."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Quickstart[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, "README.md has no '## Quickstart' section"
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", m.group(1), re.M | re.S)
    commands = []
    for block in blocks:
        block = re.sub(r"\\\n\s*", " ", block)  # join continued lines
        commands += [re.sub(r"^\$\s+", "", c) for c in _commands(block)]
    return commands


def test_readme_quickstart_has_exactly_the_two_commands():
    assert readme_quickstart() == QUICKSTART


def test_ci_runs_exactly_the_readme_second_command():
    lines = _commands(CI_RUN.read_text(encoding="utf-8"))
    work = [c for c in lines if not re.match(r"(set|cd)\s", c)]
    assert work == [readme_quickstart()[1]]


def test_test_script_installs_the_test_extra_and_runs_pytest(pyproject):
    text = (ROOT / "tools" / "test.sh").read_text(encoding="utf-8")
    assert "test" in pyproject["project"]["optional-dependencies"]
    assert re.search(r'pip install\b.*-e "\.\[test\]"', text)
    # all of it, the slow set too (a plain pytest leaves it out), the caller's options last
    assert re.search(r'^exec \.venv/bin/python -m pytest -m "slow or not slow" .*"\$@"$', text,
                     re.M)
    assert '-m \\"not slow\\"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_readme_binder_badge_opens_the_start_notebook():
    text = README.read_text(encoding="utf-8")
    m = re.search(r"\]\((https://mybinder\.org/v2/gh/[^)\s]+)\)", text)
    assert m, "README.md has no Binder link"
    url = m.group(1)
    assert "urlpath=lab/tree/notebooks/00_start_here.ipynb" in url
    owner_repo = re.match(r"https://mybinder\.org/v2/gh/([^/]+/[^/]+)/", url).group(1)
    source = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"]
    assert source.rstrip("/").endswith("github.com/" + owner_repo)


def test_data_readme_lists_every_simulation_parameter_with_its_default():
    import ast
    import dataclasses

    from ketamine_nb.simulate import SimulationParams

    text = (ROOT / "data" / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", text, re.M))
    defaults = SimulationParams()
    for f in dataclasses.fields(SimulationParams):
        assert f.name in rows, f"data/README.md: the parameter table lacks {f.name}"
        value = getattr(defaults, f.name)
        if f.name == "pattern":
            assert rows[f.name] == "DEFAULT_PATTERN"
            continue
        cell = rows[f.name]
        frac = re.fullmatch(r"(\d+)/(\d+)", cell)
        written = int(frac[1]) / int(frac[2]) if frac else ast.literal_eval(cell)
        assert written == pytest.approx(value), f"data/README.md: {f.name} = {cell}, code: {value}"
    unknown = set(rows) - {f.name for f in dataclasses.fields(SimulationParams)}
    assert not unknown, f"data/README.md documents parameters the code lacks: {sorted(unknown)}"
