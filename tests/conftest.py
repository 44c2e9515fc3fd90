"""Test configuration: Agg backend, closed figures, a seeded rng, no network.

As in nilearn's ``conftest.py``: figures never pop up and are closed after
each test, and every test runs with the network blocked (only loopback and
Unix sockets are allowed, which Jupyter kernels and a local JupyterLab use).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Use Agg, and keep the package's caches (atlases, anatomy) in one test data home."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    if "KETAMINE_NB_DATA" not in os.environ:
        home = REPO / ".pytest_cache" / "ketamine_nb_data"
        home.mkdir(parents=True, exist_ok=True)
        os.environ["KETAMINE_NB_DATA"] = str(home)


class NetworkBlockedError(RuntimeError):
    """A test tried to reach a host that is not this machine."""


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self, address):
    if not _is_local(address):
        raise NetworkBlockedError(f"network access blocked in tests: {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise NetworkBlockedError(f"network access blocked in tests: {address!r}")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Block every connection that leaves the machine."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)


@pytest.fixture(autouse=True)
def close_figures():
    """Close all matplotlib figures after each test."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture
def rng():
    """Return a seeded random generator."""
    return np.random.default_rng(42)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    """Simulate an 8-participant cohort (5 ketamine, 3 saline) once per test session.

    At the simulator's defaults, as a user gets it: each participant's own
    anatomy and every scanner artefact on.
    """
    from ketamine_nb.simulate import SimulationParams, simulate_cohort

    out = tmp_path_factory.mktemp("cohort") / "bids"
    simulate_cohort(out, params=SimulationParams(n_subjects=8), seed=3, progress=False)
    return out


def tree_hashes(root):
    """SHA-256 of every file below ``root`` (to prove a tree was not modified)."""
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def processed_cohort(small_cohort, tmp_path_factory):
    """The small cohort through the pipeline and the statistics, once per session.

    Returns a dict: ``bids``, ``out``, ``res`` (the PipelineResult), ``stats`` (the
    run_stats result) and ``raw_hashes`` (the raw tree before processing).
    """
    from ketamine_nb.pipeline import run_pipeline
    from ketamine_nb.stats import StatsConfig
    from ketamine_nb.workflows import run_stats

    before = tree_hashes(small_cohort)
    out = tmp_path_factory.mktemp("derivatives") / "out"
    # Two worker processes (CI has two cores); serial runs of some participants
    # are compared with these outputs in test_pipeline. test_bad_inputs and the
    # broken-session test seed their runs with these outputs, which the pipeline
    # reuses because shutil.copytree keeps the raw files' sizes and times.
    res = run_pipeline(small_cohort, out, progress=False, n_jobs=2)
    stats = run_stats(out, config=StatsConfig(n_permutations=200, n_bootstrap=200),
                      robustness=True)
    return {"bids": small_cohort, "out": out, "res": res, "stats": stats,
            "raw_hashes": before}


@pytest.fixture(scope="session")
def processed_idealised(tmp_path_factory):
    """The same 8 participants simulated idealised, through the pipeline only.

    For the tests of one step against an exact truth: every participant has
    the template's brain, so the planted rigid head position is the whole
    truth of a session's registration, and nothing within a series moves.
    Returns a dict: ``bids``, ``out``, ``res`` and ``results`` (load_results).
    """
    from ketamine_nb.pipeline import run_pipeline
    from ketamine_nb.results import load_results
    from ketamine_nb.simulate import SimulationParams, simulate_cohort

    bids = tmp_path_factory.mktemp("idealised") / "bids"
    simulate_cohort(bids, params=SimulationParams.idealised(n_subjects=8), seed=3,
                    progress=False)
    out = bids.parent / "out"
    res = run_pipeline(bids, out, progress=False, n_jobs=2)
    return {"bids": bids, "out": out, "res": res, "results": load_results(out)}


@pytest.fixture(scope="session")
def small_results(processed_cohort):
    """``ketamine_nb.load_results`` on the processed small cohort (read-only in tests)."""
    from ketamine_nb.results import load_results

    return load_results(processed_cohort["out"])


from conftest_builders import memory_results  # noqa: E402,F401  (in-memory Results for widget/plotting tests)
