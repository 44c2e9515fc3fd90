#!/usr/bin/env python
"""Speed of the ROI statistics on a cohort the size of the trial.

Measures, side by side in one run on the default 98-participant design
(`ketamine_nb.simulate.simulate_tables`, the planted truth plus 0.5 % session
noise, so no images are needed):

* the full ROI table (7 regions x 2 outcomes) with 5000 Freedman-Lane
  permutations and 2000 bootstrap resamples  -- goal <= 2 s;
* the same table without permutations/bootstrap (the OLS fits alone);
* a 100-specification robustness grid from cached per-voxel tables -- goal
  <= 10 s (voxel tables built in memory with the demo's size: ~9000 voxels
  per session, 196 sessions).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _timed(fn, repeats=3):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help="append a section to RESULTS.md")
    args = ap.parse_args()
    C.check_package()

    import numpy as np
    import pandas as pd

    from ketamine_nb.robustness import robustness_grid
    from ketamine_nb.simulate import SimulationParams, simulate_tables
    from ketamine_nb.stats import StatsConfig, region_stats, stats_input

    d = simulate_tables(SimulationParams(), seed=0)
    truth = d["ground_truth"].copy()
    rng = np.random.default_rng(0)
    for col in ("md_pre", "md_post"):
        truth[col] *= 1 + rng.normal(0, 0.005, len(truth))
    truth["delta_md"] = truth["md_post"] - truth["md_pre"]
    rows, _ = stats_input(truth, d["scores"])

    full_cfg = StatsConfig(n_permutations=5000, n_bootstrap=2000)
    t_full, table = _timed(lambda: region_stats(rows, config=full_cfg))
    t_ols, _ = _timed(lambda: region_stats(rows, config=StatsConfig(n_permutations=0,
                                                                    n_bootstrap=0)))

    # Voxel tables of the demo's size, built in memory (regional means known).
    pids = d["participants"]["participant_id"].tolist()
    n_vox = 9000
    frames = []
    regions = sorted(truth["region"].unique())
    per_region = n_vox // len(regions)
    for pid in pids:
        for ses, col in (("pre", "md_pre"), ("post", "md_post")):
            t = truth[truth["participant_id"] == pid].set_index("region")[col]
            md = np.concatenate([rng.normal(t[r], 1e-4, per_region) for r in regions])
            frames.append(pd.DataFrame({
                "participant_id": pid, "session": ses,
                "region": np.repeat(regions, per_region),
                "probability": rng.uniform(0.05, 1, per_region * len(regions)),
                "md": md, "md_ols": md * 1.001, "fa": 0.1}))
    vox = pd.concat(frames, ignore_index=True)
    for c in ("participant_id", "session", "region"):
        vox[c] = vox[c].astype("category")
    grid = {"fit_method": ("configured", "OLS"), "probability_threshold": (0.1, 0.25, 0.5),
            "csf_md_threshold": (None, 1.5e-3, 1.1e-3, 1.0e-3), "outcome": ("madrs", "qids"),
            "change": ("absolute", "percent"), "covariates": ((), ("age", "sex"))}
    n_spec = 2 * 3 * 4 * 2 * 2 * 2
    t_grid, g = _timed(lambda: robustness_grid(vox, d["scores"], participants=d["participants"],
                                               grid=grid), repeats=1)
    t_grid_100 = t_grid * 100 / n_spec

    lines = [
        f"- ROI table, 14 models, 5000 permutations + 2000 bootstrap: {t_full:.2f} s "
        f"(goal <= 2 s: {'PASS' if t_full <= 2 else 'FAIL'})",
        f"- the same without permutations or bootstrap: {t_ols:.2f} s "
        f"(permutations and bootstrap cost {t_full - t_ols:.2f} s)",
        f"- robustness grid: {n_spec} specifications x 7 regions on {len(vox):,} cached voxel "
        f"rows in {t_grid:.2f} s, i.e. {t_grid_100:.2f} s per 100 specifications "
        f"(goal <= 10 s: {'PASS' if t_grid_100 <= 10 else 'FAIL'})",
        f"- planted signs back in the table: BA10_L ketamine slope "
        f"{table.set_index(['region', 'outcome']).loc[('BA10_L', 'madrs'), 'slope_ketamine']:.3f}"
        f" (> 0), grid rows {len(g)}",
    ]
    for ln in lines:
        print(ln)
    C.summary(lines[0])
    C.summary(lines[2])
    if args.record:
        title = "bench_stats: ROI statistics and robustness grid"
        print(f"recorded in {C.record(title, chr(10).join(lines))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
