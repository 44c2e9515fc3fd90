#!/usr/bin/env python
"""What each realism switch of the simulator costs the pipeline's accuracy.

For each condition (the idealised cohort, then each participant's own anatomy
and each scanner artefact switched on alone at its realistic value, then all
of them together) a small cohort is simulated with the same seed and run
through ``ketamine_nb.pipeline.run_pipeline`` at its defaults. Measured against
the simulation's ground truth (``derivatives/simulation/ground_truth_roi.tsv``,
the noise-free MD a perfect measurement with the pipeline's default regions
would report):

* the largest and the mean absolute relative error of regional MD over all
  sessions and regions (``*_md_max_abs_error_fraction``,
  ``*_md_mean_abs_error_fraction``);
* the Pearson r of measured against true ΔMD over participants x regions
  (``*_delta_md_r``), with a 95 % interval from resampling participants
  (``*_delta_md_r_ci_low``/``_high``; a participant's regions share errors).

``all_artefacts_affine`` is the everything-on cohort again, processed with
the eddy-current option (``--realign affine``) instead of the defaults.

Goals (``_render.GOALS``, issue #13): with everything on, *on the default
cohort* (98 participants, ``--subjects 98 --conditions all_artefacts``), r >=
0.85 and the largest regional MD error <= 5 %. A run on the default cohort
size names its metrics ``default_cohort_<condition>_...``; the quick 12-
participant runs of every condition (the default here) keep the plain names
and show what each switch costs, with intervals about three times wider.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

#: Condition name -> the REALISTIC keys it switches on ("all": every one).
CONDITIONS = {
    "none": (),
    "anatomy": ("head_size_sd", "head_axis_sd", "warp_rms", "ventricle_growth",
                "ventricle_sd"),
    "motion": ("motion_rms", "motion_spikes"),
    "eddy": ("eddy_mm",),
    "susceptibility": ("susceptibility_hz",),
    "drift": ("signal_drift",),
    "noise": ("n_coils", "noise_sigma_variation"),
    "all_artefacts": "all",
    "all_artefacts_affine": "all",
}

#: Conditions run with a pipeline setting other than the defaults.
CONFIGS = {"all_artefacts_affine": {"realign": "affine"}}   # the eddy-current option


def _accuracy(bids: Path, out: Path) -> dict:
    import numpy as np
    import pandas as pd

    truth = pd.read_csv(bids / "derivatives" / "simulation" / "ground_truth_roi.tsv", sep="\t")
    d = pd.read_csv(out / "roi_deltas.tsv", sep="\t").merge(
        truth, on=["participant_id", "region"], suffixes=("", "_true"))
    err = np.concatenate([(d[f"md_{s}"] / d[f"md_{s}_true"] - 1).to_numpy()
                          for s in ("pre", "post")])
    ok = np.isfinite(err)
    both = d[["participant_id", "delta_md", "delta_md_true"]].dropna()
    # 95 % interval of r by resampling participants (their regions share errors).
    rng = np.random.default_rng(0)
    groups = [g[["delta_md", "delta_md_true"]].to_numpy() for _, g in
              both.groupby("participant_id")]
    boot = []
    for _ in range(2000):
        x = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        boot.append(np.corrcoef(x[:, 0], x[:, 1])[0, 1])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"md_max_abs_error_fraction": float(np.abs(err[ok]).max()),
            "md_mean_abs_error_fraction": float(np.abs(err[ok]).mean()),
            "md_mean_error_fraction": float(err[ok].mean()),
            "delta_md_r": float(np.corrcoef(both["delta_md"], both["delta_md_true"])[0, 1]),
            "delta_md_r_ci_low": float(lo), "delta_md_r_ci_high": float(hi),
            "rows_count": int(len(d)), "missing_count": int((~ok).sum())}


def measure(*, n_subjects: int = 12, seed: int = 0, n_jobs: int = 2,
            conditions=tuple(CONDITIONS)) -> dict:
    """Simulate and process one small cohort per condition; accuracy against the truth."""
    from ketamine_nb.pipeline import PipelineConfig, run_pipeline
    from ketamine_nb.simulate import REALISTIC, SimulationParams, simulate_cohort

    metrics, lines = {}, []
    # The goal is stated on the default cohort: its runs are kept apart.
    prefix = "default_cohort_" if n_subjects == SimulationParams().n_subjects else ""
    lines.append("| condition | switched on | regional MD error, largest | mean | ΔMD vs truth r "
                 "(95 % interval, participants resampled) | simulate s | pipeline s |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="bench_artefacts_") as tmp:
        for name in conditions:
            keys = tuple(REALISTIC) if CONDITIONS[name] == "all" else CONDITIONS[name]
            params = SimulationParams.idealised(n_subjects=n_subjects,
                                      **{k: REALISTIC[k] for k in keys})
            bids, out = Path(tmp) / name / "bids", Path(tmp) / name / "out"
            t0 = time.perf_counter()
            simulate_cohort(bids, params=params, seed=seed, n_jobs=n_jobs, progress=False)
            t1 = time.perf_counter()
            run_pipeline(bids, out, n_jobs=n_jobs, progress=False,
                         config=PipelineConfig(**CONFIGS.get(name, {})))
            t2 = time.perf_counter()
            acc = _accuracy(bids, out)
            for k, v in acc.items():
                metrics[f"{prefix}{name}_{k}"] = v
            metrics[f"{prefix}{name}_simulate_wall_s"] = t1 - t0
            metrics[f"{prefix}{name}_pipeline_wall_s"] = t2 - t1
            on = ", ".join(f"{k}={REALISTIC[k]}" for k in keys) or "-"
            if name in CONFIGS:
                on += "; pipeline " + ", ".join(f"{k}={v}" for k, v in CONFIGS[name].items())
            lines.append(f"| {name} | {on} | {100 * acc['md_max_abs_error_fraction']:.1f} % | "
                         f"{100 * acc['md_mean_abs_error_fraction']:.1f} % | "
                         f"{acc['delta_md_r']:.3f} ({acc['delta_md_r_ci_low']:.2f}-"
                         f"{acc['delta_md_r_ci_high']:.2f}) | {t1 - t0:.0f} | {t2 - t1:.0f} |")
            print(lines[-1], flush=True)
    notes = [f"{n_subjects} participants per condition, seed {seed}; the pipeline at its "
             "defaults on the commit measured (runs recorded before 2026-11-30 22:05 UTC did "
             "not realign the simulated series: the cohort's dataset_description was read as "
             "preprocessed)"]
    return C.result("bench_artefacts", "Cost of each simulated artefact to the pipeline",
                    options={"n_subjects": n_subjects, "seed": seed, "n_jobs": n_jobs,
                             "conditions": list(conditions)},
                    metrics=metrics, details=lines, notes=notes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_artefacts.json and regenerate RESULTS.md")
    ap.add_argument("--subjects", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS),
                    choices=list(CONDITIONS))
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(n_subjects=args.subjects, seed=args.seed, n_jobs=args.n_jobs,
                            conditions=tuple(args.conditions)), args.record)


if __name__ == "__main__":
    sys.exit(main())
