#!/usr/bin/env python
"""Speed of the ROI statistics on a cohort the size of the trial.

Measures, side by side in one run on the default 98-participant design
(`ketamine_nb.simulate.simulate_tables`, the planted truth plus 0.5 % session
noise, so no images are needed):

* the full ROI table (7 regions x 2 outcomes) with ``n_permutations``
  (default 5000) Freedman-Lane permutations (the default Aspin-Welch v within
  arms, and side by side the equal-variance t with free permutations) and
  ``n_bootstrap`` (default 2000) bootstrap resamples;
* the same table without permutations/bootstrap (the OLS fits alone);
* the robustness grid from cached per-voxel tables, per 100 specifications
  (voxel tables built in memory with the demo's size: ~9000 voxels per
  session, 196 sessions).

The goals (``_render.GOALS``) judge the first and the last.
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


def measure(*, n_permutations: int = 5000, n_bootstrap: int = 2000, repeats: int = 3,
            random_state: int = 0) -> dict:
    """Time the ROI table and the robustness grid on the default simulated design."""
    import numpy as np
    import pandas as pd

    from ketamine_nb.robustness import robustness_grid
    from ketamine_nb.simulate import SimulationParams, simulate_tables
    from ketamine_nb.stats import StatsConfig, region_stats, stats_input

    d = simulate_tables(SimulationParams(), seed=random_state)
    truth = d["ground_truth"].copy()
    rng = np.random.default_rng(random_state)
    for col in ("md_pre", "md_post"):
        truth[col] *= 1 + rng.normal(0, 0.005, len(truth))
    truth["delta_md"] = truth["md_post"] - truth["md_pre"]
    rows, _ = stats_input(truth, d["scores"])

    full_cfg = StatsConfig(n_permutations=n_permutations, n_bootstrap=n_bootstrap)
    t_cfg = StatsConfig(n_permutations=n_permutations, n_bootstrap=n_bootstrap, statistic="t")
    c0 = time.process_time()
    t_full, table = _timed(lambda: region_stats(rows, config=full_cfg), repeats)
    cpu_full = (time.process_time() - c0) / repeats
    # Side by side: the equal-variance t with free permutations (the earlier default).
    t_t, _ = _timed(lambda: region_stats(rows, config=t_cfg), repeats)
    t_ols, _ = _timed(lambda: region_stats(rows, config=StatsConfig(n_permutations=0,
                                                                    n_bootstrap=0)), repeats)

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
            "change": ("absolute", "percent"), "covariates": ((), ("age", "sex")),
            "global_covariate": (False,), "exclude_flagged": (False,),
            "orientation": ("score ~ md",), "estimator": ("OLS",)}
    n_spec = 2 * 3 * 4 * 2 * 2 * 2
    t_grid, g = _timed(lambda: robustness_grid(vox, d["scores"], participants=d["participants"],
                                               grid=grid), repeats=1)
    t_grid_100 = t_grid * 100 / n_spec

    slope = table.set_index(["region", "outcome"]).loc[("BA10_L", "madrs"), "slope_ketamine"]
    lines = [
        f"- ROI table, 14 models, {n_permutations} permutations + {n_bootstrap} bootstrap: "
        f"{t_full:.2f} s (median of {repeats}; CPU {cpu_full:.2f} s per run); the same with "
        f"the equal-variance t and free permutations: {t_t:.2f} s",
        f"- the same without permutations or bootstrap: {t_ols:.2f} s "
        f"(permutations and bootstrap cost {t_full - t_ols:.2f} s)",
        f"- robustness grid: {n_spec} specifications x 7 regions on {len(vox):,} cached voxel "
        f"rows in {t_grid:.2f} s, i.e. {t_grid_100:.2f} s per 100 specifications",
        f"- planted signs back in the table: BA10_L ketamine slope {slope:.3f} (> 0), grid "
        f"rows {len(g)}",
    ]
    return C.result(
        "bench_stats", "ROI statistics and robustness grid",
        options={"n_permutations": n_permutations, "n_bootstrap": n_bootstrap,
                 "repeats": repeats, "random_state": random_state},
        metrics={"roi_table_wall_s": t_full, "roi_table_cpu_s": cpu_full,
                 "roi_table_equal_variance_t_wall_s": t_t, "roi_table_ols_only_wall_s": t_ols,
                 "robustness_grid_wall_s": t_grid, "robustness_grid_specs_count": n_spec,
                 "robustness_grid_per_100_specs_wall_s": t_grid_100,
                 "voxel_rows_count": len(vox), "ba10_l_madrs_ketamine_slope": slope},
        details=lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_stats.json and regenerate RESULTS.md")
    ap.add_argument("--n-permutations", type=int, default=5000)
    ap.add_argument("--n-bootstrap", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(n_permutations=args.n_permutations, n_bootstrap=args.n_bootstrap,
                            repeats=args.repeats), args.record)


if __name__ == "__main__":
    sys.exit(main())
