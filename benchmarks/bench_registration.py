#!/usr/bin/env python
"""Registration: CPU time and accuracy of the default against the earlier default.

Registration is most of a session's time (see ``bench_session.py``), so its
settings are a speed/accuracy trade-off, judged here where the truth is known:
on simulated cohorts (``--cohorts``, default three of 12 participants, seeds 0,
1 and 2: 72 sessions) every session's mean b0 is registered to the MNI template
with each setting, and the rigid transform is compared with the head position
the simulator planted (``derivatives/simulation/head_motion.tsv``): error =
the largest distance, over five brain points (the centre, frontal, occipital,
temporal and superior points used by the test suite), between where the
estimated and the true transform put the point (mm).

Settings (``ketamine_nb.registration.register_to_template(b0, params=...)``):

* ``default``: :data:`~ketamine_nb.registration.REGISTRATION_PARAMS`
  (mutual information on a regular 15 % sample of a 3 mm template);
* ``dense 4 mm``: the earlier default, every voxel of a 4 mm template;
* ``dense 3 mm``: every voxel of the 3 mm template (the most work);
* ``3 mm, 10 % sample``: fewer samples.

Time is the CPU time of the call (``time.process_time``, one BLAS thread),
which depends little on how busy the machine is; all settings run in one
process, interleaved session by session. Judged by ``_render.GOALS``: the
default's error no worse than the earlier default's (median within 0.05 mm,
largest within 0.1 mm), at less CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np

POINTS = np.array([[0, 0, 0], [50, 30, 30], [-50, -70, 0], [25, -20, -25], [0, 60, 10]],
                  float)
SETTINGS = {
    "default (3 mm, 15 % sample)": {},
    "dense 4 mm (earlier default)": {"template_resolution": 4.0, "sampling_proportion": None},
    "dense 3 mm": {"sampling_proportion": None},
    "3 mm, 10 % sample": {"sampling_proportion": 0.10},
}


def measure(*, participants: int = 12, cohorts: int = 3) -> dict:
    """Register every simulated session with each setting; CPU and error against the truth."""
    import json
    import warnings

    import pandas as pd
    from threadpoolctl import threadpool_limits

    from ketamine_nb.dwi import load_dwi, mean_b0
    from ketamine_nb.registration import REGISTRATION_PARAMS, register_to_template
    from ketamine_nb.simulate import SimulationParams, simulate_cohort

    warnings.simplefilter("ignore")
    sessions = []
    with tempfile.TemporaryDirectory(prefix="bench_reg_") as tmp:
        for seed in range(cohorts):
            bids = Path(tmp) / f"seed{seed}"
            print(f"simulating cohort seed {seed}", flush=True)
            simulate_cohort(bids, params=SimulationParams.idealised(n_subjects=participants),
                            seed=seed, n_jobs=min(2, C.n_cpus()), progress=False)
            motion = pd.read_csv(bids / "derivatives" / "simulation" / "head_motion.tsv",
                                 sep="\t")
            for row in motion.itertuples():
                dwi = next((bids / row.participant_id / f"ses-{row.session}" / "dwi")
                           .glob("*_dwi.nii.gz"))
                img, gtab = load_dwi(dwi)
                sessions.append((mean_b0(img, gtab), np.array(json.loads(row.mni_to_scanner))))
    load0 = C.loadavg()
    cpu = {k: [] for k in SETTINGS}
    err = {k: [] for k in SETTINGS}
    with threadpool_limits(limits=1, user_api="blas"):
        register_to_template(sessions[0][0])  # template set-up, imports
        for i, (b0, T) in enumerate(sessions):
            for name, params in SETTINGS.items():
                t = time.process_time()
                A = register_to_template(b0, params=params)
                cpu[name].append(time.process_time() - t)
                est = POINTS @ A[:3, :3].T + A[:3, 3]
                true = POINTS @ T[:3, :3].T + T[:3, 3]
                err[name].append(float(np.linalg.norm(est - true, axis=1).max()))
            if (i + 1) % 12 == 0:
                print(f"{i + 1}/{len(sessions)} sessions", flush=True)

    ref = "dense 4 mm (earlier default)"
    lines = [
        f"{len(sessions)} simulated sessions ({cohorts} cohorts of {participants} "
        f"participants, seeds 0-{cohorts - 1}); mean b0 registered rigidly to the MNI "
        "template with each setting, interleaved; error = largest distance over 5 brain "
        "points between the estimated and the planted head position. Default parameters: "
        f"`{REGISTRATION_PARAMS}`.", "",
        "| setting | CPU per session, mean (s) | median | largest | CPU vs earlier default | "
        "error median (mm) | 90th percentile | largest |", "|---|---|---|---|---|---|---|---|"]
    for name in SETTINGS:
        c, e = np.array(cpu[name]), np.array(err[name])
        lines.append(f"| {name} | {c.mean():.2f} | {np.median(c):.2f} | {c.max():.2f} | "
                     f"{c.sum() / np.sum(cpu[ref]):.2f} | {np.median(e):.2f} | "
                     f"{np.quantile(e, 0.9):.2f} | {e.max():.2f} |")
    d, r = np.array(err[next(iter(SETTINGS))]), np.array(err[ref])
    ratio = np.sum(cpu[next(iter(SETTINGS))]) / np.sum(cpu[ref])
    lines += ["", f"- default vs earlier default: CPU x{ratio:.2f}; error median "
                  f"{np.median(d):.2f} vs {np.median(r):.2f} mm, largest {d.max():.2f} vs "
                  f"{r.max():.2f} mm",
              f"- load average when the timing started -> ended: {load0} -> {C.loadavg()}"]
    short = {"default (3 mm, 15 % sample)": "default", ref: "dense4", "dense 3 mm": "dense3",
             "3 mm, 10 % sample": "sample10"}
    metrics = {"sessions_count": len(sessions)}
    for name, key in short.items():
        c, e = np.array(cpu[name]), np.array(err[name])
        metrics[f"{key}_cpu_per_session_s"] = c.mean()
        metrics[f"{key}_error_median_mm"] = np.median(e)
        metrics[f"{key}_error_max_mm"] = e.max()
    metrics["default_over_dense4_cpu_ratio"] = ratio
    metrics["default_minus_dense4_error_median_mm"] = np.median(d) - np.median(r)
    metrics["default_minus_dense4_error_max_mm"] = d.max() - r.max()
    return C.result("bench_registration", "speed and accuracy",
                    options={"participants": participants, "cohorts": cohorts},
                    metrics=metrics, details=lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_registration.json and regenerate "
                    "RESULTS.md")
    ap.add_argument("--participants", type=int, default=12,
                    help="participants per cohort (default 12)")
    ap.add_argument("--cohorts", type=int, default=3, help="cohorts, seeds 0.. (default 3)")
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(participants=args.participants, cohorts=args.cohorts), args.record)


if __name__ == "__main__":
    sys.exit(main())
