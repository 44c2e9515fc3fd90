"""The ``ketamine-nb`` command line: help, names, allowed values, errors and exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ketamine_nb.cli import build_parser, main

COMMANDS = ("simulate", "demo", "run", "stats", "report", "lab")


def _action(parser, command, dest):
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if a.dest == dest)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: ketamine-nb " + command in capsys.readouterr().out


def test_help_and_version_in_a_new_process():
    out = subprocess.run([sys.executable, "-m", "ketamine_nb.cli", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout
    ver = subprocess.run([sys.executable, "-m", "ketamine_nb.cli", "--version"],
                         capture_output=True, text=True)
    from ketamine_nb import __version__

    assert ver.stdout.strip() == f"ketamine-nb {__version__}"


def test_unknown_command_and_bad_choice_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fly"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["stats", "out", "--correction", "bonferroni"])
    assert exc.value.code == 2
    assert "invalid choice: 'bonferroni'" in capsys.readouterr().err


def test_one_name_per_idea_and_the_old_spellings_still_parse():
    p = build_parser()
    new = p.parse_args(["run", "raw", "out", "--n-jobs", "3"])
    old = p.parse_args(["run", "raw", "out", "--workers", "3"])
    assert new.n_jobs == old.n_jobs == 3
    new = p.parse_args(["stats", "out", "--random-state", "7"])
    old = p.parse_args(["stats", "out", "--stats-seed", "7"])
    assert new.random_state == old.random_state == 7
    assert not hasattr(new, "workers") and not hasattr(new, "stats_seed")


def test_allowed_values_come_from_the_package_constants():
    from ketamine_nb.pipeline import (
        ATLAS_REGISTRATIONS,
        DENOISE_METHODS,
        REALIGN_MODELS,
        SPACES,
        TRANSFORMS,
    )
    from ketamine_nb.simulate import PRESETS
    from ketamine_nb.stats import CHANGES, CORRECTIONS, Q_SOURCES, STATISTICS
    from ketamine_nb.tensor import FIT_METHODS

    p = build_parser()
    expected = {("run", "fit_method"): FIT_METHODS, ("run", "denoise"): DENOISE_METHODS,
                ("run", "transform"): TRANSFORMS, ("run", "space"): SPACES,
                ("stats", "change"): CHANGES, ("stats", "md_change"): CHANGES,
                ("stats", "correction"): CORRECTIONS, ("stats", "statistic"): STATISTICS,
                ("stats", "q_from"): Q_SOURCES, ("simulate", "preset"): PRESETS,
                ("run", "realign"): (*REALIGN_MODELS, "none"),
                ("run", "atlas_registration"): (*ATLAS_REGISTRATIONS, "none")}
    for (command, dest), allowed in expected.items():
        assert tuple(_action(p, command, dest).choices) == tuple(allowed), (command, dest)


def test_an_off_guard_is_none_inside(monkeypatch):
    """``--csf-md-threshold 0`` on the command line is ``None`` in PipelineConfig."""
    from ketamine_nb.cli import _config_from_args
    from ketamine_nb.exceptions import InputError
    from ketamine_nb.pipeline import PipelineConfig

    args = build_parser().parse_args(["run", "raw", "out", "--csf-md-threshold", "0"])
    assert _config_from_args(args).csf_md_threshold is None
    args = build_parser().parse_args(["run", "raw", "out"])
    assert _config_from_args(args).csf_md_threshold == PipelineConfig().csf_md_threshold
    # the FA guard too: 0 is off (it used to reach PipelineConfig, which refused it)
    args = build_parser().parse_args(["run", "raw", "out", "--fa-threshold", "0"])
    assert _config_from_args(args).fa_threshold is None
    args = build_parser().parse_args(["run", "raw", "out", "--fa-threshold", "0.7"])
    assert _config_from_args(args).fa_threshold == 0.7
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(InputError, match="use None to switch the guard off"):
            PipelineConfig(csf_md_threshold=bad)


def test_input_error_is_one_line_with_exit_2_and_debug_shows_the_traceback(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["stats", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("ketamine-nb stats: error:") and "roi_deltas.tsv" in err
    from ketamine_nb.exceptions import InputError

    with pytest.raises(InputError):
        main(["--debug", "stats", str(missing)])


def test_lab_dry_run_prints_the_jupyterlab_command(capsys):
    assert main(["lab", "--dry-run", "--no-browser", "--port", "8899"]) == 0
    out = capsys.readouterr().out
    assert "jupyter lab" in out and "00_start_here.ipynb" in out and "--no-browser" in out
    assert "--ServerApp.port=8899" in out


def _stop_at(monkeypatch, module, name) -> dict:
    """Replace ``module.name`` by a stub that keeps its keyword arguments and stops the run."""
    seen = {}

    def stub(*args, **kw):
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(module, name, stub)
    return seen


def test_demo_passes_jobs_to_the_simulation_and_n_jobs_to_the_pipeline(monkeypatch, tmp_path):
    """``demo --jobs`` sets the simulation's workers (it used to be ignored)."""
    import ketamine_nb.workflows as wf

    seen = _stop_at(monkeypatch, wf, "build_demo")
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "d"), "--jobs", "1", "--n-jobs", "2"])
    assert seen["simulate_n_jobs"] == 1 and seen["n_jobs"] == 2


@pytest.mark.parametrize("simulate_n_jobs, expected", [(None, 2), (1, 1)])
def test_build_demo_gives_the_simulation_its_own_worker_count(monkeypatch, tmp_path,
                                                                simulate_n_jobs, expected):
    """``build_demo(simulate_n_jobs=)`` reaches ``simulate_cohort``; without it, ``n_jobs``."""
    import ketamine_nb.simulate as sim
    from ketamine_nb.workflows import build_demo

    seen = _stop_at(monkeypatch, sim, "simulate_cohort")
    with pytest.raises(SystemExit):
        build_demo(tmp_path / "d", n_jobs=2, simulate_n_jobs=simulate_n_jobs, progress=False)
    assert seen["n_jobs"] == expected
