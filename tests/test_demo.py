"""``ketamine-nb demo`` as a new user runs it: data home, outputs, reuse."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest


@pytest.mark.slow  # about 100 s (3 realistic participants, one worker); CI runs it
def test_demo_simulates_runs_and_reuses(tmp_path):
    home = tmp_path / "home"
    cmd = [sys.executable, "-m", "ketamine_nb.cli", "demo", "--data-dir", str(home),
           "--subjects", "3", "--workers", "1", "--quiet"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    demo = home / "demo"
    for line in ("BIDS dataset:", "ground truth:", "derivatives:", "roi_deltas.tsv"):
        assert line in first.stdout
    assert str(demo / "bids") in first.stdout
    assert "6 processed" in first.stdout
    deltas = pd.read_csv(demo / "derivatives" / "roi_deltas.tsv", sep="\t")
    assert len(deltas) == 3 * 8 and deltas["delta_md"].notna().all()   # 7 regions + global
    # What the notebooks read is there, the robustness grid (notebook 06) too.
    from ketamine_nb.workflows import demo_results

    res = demo_results(home, prepare=False)
    # Every region is in the grid; the global reference is a covariate there, not a region.
    assert res.robustness is not None and set(res.robustness["region"]) == set(res.regions)
    assert set(res.regions) == set(deltas["region"]) - {"global_gm"}
    grid = demo / "derivatives" / "robustness.tsv"
    grid.unlink()                      # a demo prepared by an earlier version
    kept = {p.name: p.read_bytes() for p in (demo / "derivatives").glob("*.*") if p.is_file()}
    rebuilt = demo_results(home).robustness
    assert grid.is_file()
    pd.testing.assert_frame_equal(rebuilt, res.robustness)
    # Only the grid was added: the statistics (maybe the user's settings) are untouched.
    assert {p: (demo / "derivatives" / p).read_bytes() for p in kept} == kept
    # The caches followed --data-dir.
    assert (home / "atlas_cache").is_dir() and (home / "sim_cache").is_dir()

    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "already" in second.stdout and "6 reused" in second.stdout
    again = pd.read_csv(demo / "derivatives" / "roi_deltas.tsv", sep="\t")
    pd.testing.assert_frame_equal(again, deltas)
