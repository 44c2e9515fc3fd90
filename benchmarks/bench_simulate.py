#!/usr/bin/env python
"""Time, peak memory and disk of simulating the whole cohort, against the issue's budget.

Measured: ``ketamine-nb simulate OUT --subjects 98 --seed 0 --quiet`` run as a
subprocess (``python -m ketamine_nb.cli``, with its default 2 forked workers on
a 2-CPU machine):

* wall time of the command (Python start-up included);
* peak memory of the whole process tree: every 0.1 s the PSS (proportional set
  size, ``/proc/<pid>/smaps_rollup``) of the command and all its descendants is
  summed, and the maximum of the sum is reported; the sum of RSS, which counts
  the pages the forked workers share with their parent once per process, is
  given too as an upper bound;
* disk: sum of the sizes of all files written (MB = 10^6 bytes).

It runs three times with one fresh, empty data home (``KETAMINE_NB_DATA``):
*cold* builds the anatomy and atlas caches first, *warm* reuses them, and
*timed* reuses them without the memory sampler. The memory goals judge the
sampled runs, the time goal the timed run, so that the sampler's own reads of
every process's memory map cannot slow the two workers; the details give the
difference (+0.8 s on 2026-12-02, AMD EPYC: small). The outputs are also compared byte for byte
(the simulator promises identical files for the same seed).

Judged by ``_render.GOALS`` (foundation and simulator issues): wall time, peak
memory (PSS), disk, voxel size, diffusion directions, and cold vs warm outputs
byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import _common as C


def tree_digest(path: Path) -> dict[str, str]:
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h = hashlib.sha1()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[str(p.relative_to(path))] = h.hexdigest()
    return out


def protocol(out: Path) -> dict:
    """Voxel size and directions as written (parameters JSON and the first image)."""
    import nibabel as nib
    import numpy as np

    params = json.loads((out / "derivatives" / "simulation" /
                         "simulation_parameters.json").read_text())
    dwi = out / "sub-001" / "ses-pre" / "dwi" / "sub-001_ses-pre_dwi.nii.gz"
    img = nib.load(dwi)
    bvals = np.loadtxt(dwi.with_name("sub-001_ses-pre_dwi.bval"))
    return {"voxel_mm": float(max(img.header.get_zooms()[:3])),
            "n_directions": int(np.count_nonzero(bvals > 50)),
            "n_b0": int(np.count_nonzero(bvals <= 50)),
            "shape": tuple(int(s) for s in img.shape),
            "param_voxel_size": params["voxel_size"],
            "param_n_directions": params["n_directions"]}


def run_once(label: str, cmd_tail: list[str], data_home: Path, work: Path,
             interval: float) -> dict:
    out = work / f"bids_{label}"
    cmd = [sys.executable, "-m", "ketamine_nb.cli", "simulate", str(out), *cmd_tail]
    env = dict(os.environ, KETAMINE_NB_DATA=str(data_home))
    cache_before = C.dir_size(data_home)[0]
    print(f"[{label}] {' '.join(cmd[1:])}  (KETAMINE_NB_DATA={data_home})", flush=True)
    load = C.loadavg()
    wall, rc, sampler, log, cpu = C.run_measured(cmd, env=env, interval=interval)
    load_after = C.loadavg()
    if rc != 0:
        print(log)
        raise SystemExit(f"[{label}] the simulate command failed with exit code {rc}")
    size, alloc, nfiles = C.dir_size(out)
    if sampler is None:  # the timed run: no memory sampler
        sampler = argparse.Namespace(peak_pss=float("nan"), peak_rss=float("nan"), peak_procs=0,
                                     samples=0, pss_available=True, method="not sampled")
    res = {"label": label, "wall": wall, "cpu": cpu, "load_after": load_after,
           "peak_pss": sampler.peak_pss, "peak_rss": sampler.peak_rss,
           "procs": sampler.peak_procs, "samples": sampler.samples,
           "pss_ok": sampler.pss_available, "method": sampler.method,
           "disk": size, "disk_alloc": alloc, "files": nfiles,
           "cache_before": cache_before, "cache_after": C.dir_size(data_home)[0],
           "load": load, "protocol": protocol(out), "digest": tree_digest(out)}
    print(f"[{label}] {wall:.1f} s ({cpu:.0f} CPU s), peak PSS {sampler.peak_pss / 1e6:.0f} MB "
          f"(RSS sum {sampler.peak_rss / 1e6:.0f} MB, {sampler.peak_procs} processes, "
          f"{sampler.samples} samples), {size / 1e6:.0f} MB in {nfiles} files", flush=True)
    shutil.rmtree(out)
    return res


def measure(*, subjects: int = 98, seed: int = 0, interval: float = 0.1,
            cold: bool = True) -> dict:
    """Simulate the cohort with a cold then a warm data home; time, memory, disk."""
    work = Path(tempfile.mkdtemp(prefix="bench_simulate_"))
    data_home = work / "data_home"
    data_home.mkdir()
    tail = ["--subjects", str(subjects), "--seed", str(seed), "--quiet"]
    try:
        runs = []
        if not cold:
            from ketamine_nb.simulate import SimulationParams, _anatomy

            os.environ["KETAMINE_NB_DATA"] = str(data_home)
            _anatomy(SimulationParams())  # build the caches untimed
        else:
            runs.append(run_once("cold", tail, data_home, work, interval))
        runs.append(run_once("warm", tail, data_home, work, interval))
        # The time without the memory sampler, whose reads of every process's
        # memory map compete with the two workers for the two CPUs.
        runs.append(run_once("timed", tail, data_home, work, None))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    timed = runs[-1]
    warm = runs[-2]
    cold_run = runs[0] if len(runs) == 3 else None
    proto = warm["protocol"]
    n_sess = 2 * subjects
    lines = [f"`ketamine-nb simulate OUT --subjects {subjects} --seed {seed} --quiet` "
             f"(subprocess, default `--jobs` = min(2, CPUs)); {n_sess} sessions, image "
             f"{proto['shape']} int16, {proto['voxel_mm']:g} mm, {proto['n_directions']} "
             f"directions + {proto['n_b0']} b0. Memory: max over time of the summed "
             f"PSS of the process tree, sampled every {interval:g} s "
             f"({warm['method']}); MB = 10^6 bytes. The goal's time is the *timed* run: "
             f"warm, without the sampler, so that its reads cannot slow it.", "",
             "| run | wall (s) | CPU user+sys, tree (s) | peak PSS, tree (MB) | "
             "peak RSS sum (MB) | processes | output (MB, files) | data-home caches (MB) | "
             "load avg before -> after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['label']} | {r['wall']:.1f} | {r['cpu']:.1f} | "
                     f"{r['peak_pss'] / 1e6:.0f} | "
                     f"{r['peak_rss'] / 1e6:.0f} | {r['procs']} | {r['disk'] / 1e6:.0f} "
                     f"({r['files']}) | {r['cache_before'] / 1e6:.1f} -> "
                     f"{r['cache_after'] / 1e6:.1f} | {r['load']} -> {r['load_after']} |")
    lines.append("")
    same = None
    if cold_run:
        lines.append(f"- first-run cost of the anatomy/atlas caches: cold - warm = "
                     f"{cold_run['wall'] - warm['wall']:+.1f} s "
                     f"({cold_run['cache_after'] / 1e6:.1f} MB of caches written)")
        same = cold_run["digest"] == warm["digest"]
        ndiff = sum(cold_run["digest"].get(k) != v for k, v in warm["digest"].items())
        lines.append(f"- cold and warm outputs byte-identical: "
                     f"{'yes' if same else f'NO ({ndiff} files differ)'}")
    ncpu = C.n_cpus()
    lines.append(f"- timed and warm outputs byte-identical: "
                 f"{'yes' if timed['digest'] == warm['digest'] else 'NO'}; the sampler's cost: "
                 f"warm - timed = {warm['wall'] - timed['wall']:+.1f} s")
    lines.append(f"- CPU time / wall time (timed): {timed['cpu'] / timed['wall']:.2f} of at "
                 f"most {min(ncpu, 2)} (2 workers on {ncpu} CPUs); CPU time / {min(ncpu, 2)} = "
                 f"{timed['cpu'] / min(ncpu, 2):.0f} s is roughly the wall time the work would "
                 f"take with both CPUs to itself (serial parts not counted)")
    lines.append(f"- throughput (timed): {n_sess / timed['wall']:.2f} sessions/s; "
                 f"{warm['disk'] / n_sess / 1e6:.2f} MB per session; allocated on disk "
                 f"{warm['disk_alloc'] / 1e6:.0f} MB")
    if not warm["pss_ok"]:
        lines.append("- PSS was not readable; the memory column is RSS")
    metrics = {"participants_count": subjects, "warm_wall_s": timed["wall"],
               "warm_cpu_s": timed["cpu"], "warm_sampled_wall_s": warm["wall"],
               "warm_peak_pss_bytes": warm["peak_pss"],
               "warm_disk_bytes": warm["disk"], "voxel_size_mm": proto["voxel_mm"],
               "directions_count": proto["n_directions"], "b0_count": proto["n_b0"]}
    if cold_run:
        metrics.update(cold_wall_s=cold_run["wall"], cold_peak_pss_bytes=cold_run["peak_pss"],
                       cold_warm_identical_bool=same)
    return C.result("bench_simulate", "whole cohort, wall/memory/disk",
                    options={"subjects": subjects, "seed": seed, "interval_s": interval,
                             "cold": cold}, metrics=metrics, details=lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_simulate.json and regenerate RESULTS.md")
    ap.add_argument("--subjects", type=int, default=98,
                    help="participants (default 98, the budget's cohort)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--interval", type=float, default=0.1,
                    help="memory sampling interval in s (default 0.1)")
    ap.add_argument("--no-cold", action="store_true",
                    help="skip the cold run (warm only; the caches are still built first)")
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(subjects=args.subjects, seed=args.seed, interval=args.interval,
                            cold=not args.no_cold), args.record)


if __name__ == "__main__":
    sys.exit(main())
