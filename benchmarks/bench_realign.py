#!/usr/bin/env python
"""Within-scan realignment: ours against dipy's ``motion_correction``, time and accuracy.

A simulated 3 mm series (``--directions`` DW volumes at b = 1000 plus
``--b0`` b0s, the simulator's anatomy, Rician noise at 2 % of the bright
signal) is built with planted motion: every volume is taken from one of four
head positions (up to 2 mm and 3 degrees; volume 0, the reference b0, at the
first), each rendered by the simulator so that the diffusion contrast turns
with the head. It is realigned

* by ``ketamine_nb.motion.realign_series`` (rigid, default settings), and
* by the plain script of dipy's tutorial "Between-volumes motion correction on
  DWI datasets": ``dipy.align.motion_correction(data, gtab, affine=affine)``
  with its defaults (every volume to the first b0 by mutual information,
  centre of mass, translation, rigid and affine, 3-level pyramid) then
  ``reorient_bvecs``.

Time is the CPU time of the call (``time.process_time``, one BLAS thread;
wall time beside it), median of ``--repeats``. Error = planted minus
estimated transform of each volume, as the RMS displacement over a 50 mm
sphere at the centre of the brain (Jenkinson 1999), in mm; dipy's affine
transforms are judged by the same measure, relative to its own transform of
volume 0 (it registers to the mean of its realigned b0s, ours to volume 0).
``still`` is ours on the series without motion (the case of the simulated
demo: nothing to resample).
Goal (``_render.GOALS``, issue 14): ours at most a third of the script's CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import _common as C
import numpy as np

#: Head positions: translation (mm) and rotation vector (degrees), about the scanner origin.
POSITIONS = (((0, 0, 0), (0, 0, 0)), ((1.5, -1.0, 0.8), (2.0, -1.0, 1.5)),
             ((-1.0, 2.0, -0.5), (-1.5, 2.5, 0.0)), ((0.5, 0.5, 2.0), (0.0, 0.0, -3.0)))


def _series(directions: int, b0: int):
    import nibabel as nib
    from dipy.core.gradients import gradient_table

    from ketamine_nb.motion import _rotation
    from ketamine_nb.simulate import SimulationParams, simulate_session

    params = SimulationParams.idealised(n_directions=directions, n_b0=b0, bias_amplitude=0.0)
    truths, images = [], []
    for t, r in POSITIONS:
        T = np.eye(4)
        T[:3, :3] = _rotation(np.radians(r))
        T[:3, 3] = t
        img, bvals, bvecs = simulate_session(params, seed=0, noise=False, head_transform=T)
        truths.append(T)
        images.append(np.asarray(img.dataobj, np.float32))
    rng = np.random.default_rng(1)
    assign = rng.integers(0, len(POSITIONS), len(bvals))
    assign[0] = 0

    def noisy(clean):
        sigma = 0.02 * np.percentile(clean[..., 0], 99)
        return np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2
                       + rng.normal(0, sigma, clean.shape) ** 2).astype(np.float32)

    moved = noisy(np.stack([images[k][..., v] for v, k in enumerate(assign)], axis=-1))
    still = noisy(images[0])
    gtab = gradient_table(bvals, bvecs=bvecs)
    return (nib.Nifti1Image(moved, img.affine), nib.Nifti1Image(still, img.affine), gtab,
            [truths[k] for k in assign])


def _errors(transforms, truths, centre):
    from ketamine_nb.motion import _rms_displacement

    Cm = np.eye(4)
    Cm[:3, 3] = centre
    return np.array([_rms_displacement(np.linalg.inv(Cm) @ np.linalg.inv(t) @ e @ Cm)
                     for e, t in zip(transforms, truths, strict=True)])


def measure(*, directions: int = 30, b0: int = 3, repeats: int = 3,
            script_repeats: int = 1) -> dict:
    """Realign the planted-motion series with ours and with dipy's script; CPU and error."""
    import warnings

    from dipy.align import motion_correction
    from dipy.core.gradients import reorient_bvecs
    from threadpoolctl import threadpool_limits

    from ketamine_nb.dwi import brain_mask
    from ketamine_nb.motion import realign_series

    warnings.simplefilter("ignore")
    moved, still, gtab, truths = _series(directions, b0)
    mask = brain_mask(still, gtab)
    load0 = C.loadavg()
    ours_cpu, ours_wall, still_cpu, script_cpu, script_wall = [], [], [], [], []
    with threadpool_limits(limits=1, user_api="blas"):
        realign_series(still, gtab, mask=mask)                  # imports, caches
        for _ in range(repeats):
            t, w = time.process_time(), time.perf_counter()
            _, _, table = realign_series(moved, gtab, mask=mask, exclude_volumes=False)
            ours_cpu.append(time.process_time() - t)
            ours_wall.append(time.perf_counter() - w)
            t = time.process_time()
            _, _, still_table = realign_series(still, gtab, mask=mask)
            still_cpu.append(time.process_time() - t)
        for _ in range(script_repeats):
            t, w = time.process_time(), time.perf_counter()
            data = np.asarray(moved.dataobj)
            corrected, affines = motion_correction(data, gtab, affine=moved.affine)
            reorient_bvecs(gtab, affines[..., ~gtab.b0s_mask])
            script_cpu.append(time.process_time() - t)
            script_wall.append(time.perf_counter() - w)
    centre = np.array(table.attrs["centre_mm"])
    ours_err = _errors([np.array(m) for m in table.attrs["transforms"]], truths, centre)
    # dipy registers to the mean of its realigned b0s, not to volume 0: its transforms are
    # judged relative to its own estimate for volume 0 (ours is the identity there).
    ref = np.linalg.inv(affines[..., 0])
    dipy_err = _errors([affines[..., v] @ ref for v in range(affines.shape[-1])], truths,
                       centre)
    still_disp = float(still_table["displacement"].max())
    o, s = statistics.median(ours_cpu), statistics.median(script_cpu)
    n = len(gtab.bvals)
    lines = [
        f"Simulated 3 mm series, {n} volumes ({directions} directions at b = 1000, {b0} b0), "
        f"{moved.shape[0]} x {moved.shape[1]} x {moved.shape[2]} voxels; every volume from one "
        f"of {len(POSITIONS)} head positions (up to 2 mm / 3 deg). CPU median of {repeats} "
        f"(ours) and {script_repeats} (script) runs, one BLAS thread.", "",
        "| | CPU (s) | wall (s) | error median (mm) | error largest (mm) |",
        "|---|---|---|---|---|",
        f"| ours, `realign_series` (rigid) | {o:.2f} | {statistics.median(ours_wall):.2f} | "
        f"{np.median(ours_err):.3f} | {ours_err.max():.3f} |",
        f"| dipy `motion_correction` (tutorial) | {s:.2f} | "
        f"{statistics.median(script_wall):.2f} | {np.median(dipy_err):.3f} | "
        f"{dipy_err.max():.3f} |",
        f"| ours, series without motion | {statistics.median(still_cpu):.2f} | | "
        f"largest estimated displacement {still_disp:.3f} mm, "
        f"{int(still_table['resampled'].sum())} volumes resampled | |", "",
        f"- ours / script CPU: {o / s:.3f}",
        f"- load average when the timing started -> ended: {load0} -> {C.loadavg()}"]
    metrics = {"volumes_count": n, "ours_cpu_s": o, "ours_wall_s": statistics.median(ours_wall),
               "script_cpu_s": s, "script_wall_s": statistics.median(script_wall),
               "ours_over_script_ratio": o / s,
               "ours_still_cpu_s": statistics.median(still_cpu),
               "ours_error_median_mm": float(np.median(ours_err)),
               "ours_error_max_mm": float(ours_err.max()),
               "script_error_median_mm": float(np.median(dipy_err)),
               "script_error_max_mm": float(dipy_err.max()),
               "ours_still_displacement_max_mm": still_disp}
    return C.result("bench_realign", "within-scan realignment vs dipy motion_correction",
                    options={"directions": directions, "b0": b0, "repeats": repeats,
                             "script_repeats": script_repeats},
                    metrics=metrics, details=lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_realign.json and regenerate RESULTS.md")
    ap.add_argument("--directions", type=int, default=30,
                    help="DW directions (default 30)")
    ap.add_argument("--b0", type=int, default=3, help="b0 volumes (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of ours (default 3)")
    ap.add_argument("--script-repeats", type=int, default=1,
                    help="runs of dipy's script (default 1: it takes minutes)")
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(directions=args.directions, b0=args.b0, repeats=args.repeats,
                            script_repeats=args.script_repeats), args.record)


if __name__ == "__main__":
    sys.exit(main())
