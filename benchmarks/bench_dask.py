#!/usr/bin/env python
"""Speed-up of the run stage on Dask: ``--n-jobs 1`` against ``--n-jobs 2``, same outputs.

On one simulated cohort (``--participants``, default 48, i.e. 96 sessions;
``simulate_cohort`` seed 0), ``ketamine-nb run BIDS OUT --quiet`` runs as a
subprocess into a fresh OUT each time:

* ``--n-jobs 1``: the sessions one after another in the command's process
  (no Dask);
* ``--n-jobs 2``: Dask's local multiprocessing scheduler with two worker
  processes (forked after the parent has imported dipy and loaded the
  template and region maps), what ``run`` does;
* ``distributed`` (with ``--distributed``): the earlier way, for comparison:
  a ``dask.distributed`` ``LocalCluster`` of two
  single-threaded worker processes, started in a Python process that then
  calls ``run_pipeline(..., scheduler=ADDRESS)`` (``--scheduler``).

Timed side by side in the order 1, 2, 2, 1, ... (with the distributed runs:
1, 2, distributed, distributed, 2, 1, ...)
(``--repeats`` rounds, default 2), median per setting, after one untimed
2-session warm-up (data-home caches, page cache). Reported: wall time, CPU
time of the process tree, peak PSS of the tree, and a timeline from the QC
JSONs each session writes last: start-up to the first finished session, the
steady rate, and the tail from the last session to the exit (cohort tables).

Outputs: ``roi_md.tsv``, ``roi_deltas.tsv`` and every ``*_dwimap.nii.gz`` of
every run are compared byte for byte with those of the first
``--n-jobs 1`` run.

Two probes say where a shortfall comes from (skip them with ``--no-probes``):

* parallel capacity of the machine for this work, without Dask: a plain
  process runs ``process_session`` on 7 sessions (the first untimed: imports
  and caches), alone, then two such processes at once; the ratio of the
  per-session medians (alone / concurrent) is 1.0 when two sessions at once
  run as fast as one, 0.5 when the CPUs are not really there (shared machine);
* ``dask.distributed``'s fixed cost: start a ``LocalCluster`` of 2
  single-threaded worker processes, run a no-op on each worker, close it.

Judged by ``_render.GOALS`` (performance issue): the speed-up wall(1 worker) /
wall(2 workers), and identical outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import _common as C
import numpy as np

DISTRIBUTED_CODE = """
import sys
from dask.distributed import LocalCluster
from ketamine_nb.pipeline import run_pipeline

if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=40) as cluster:
        run_pipeline(sys.argv[1], sys.argv[2], scheduler=cluster.scheduler_address,
                     progress=False)
"""


def cli_command() -> list[str]:
    exe = Path(sys.executable).with_name("ketamine-nb")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ketamine_nb.cli"]


def digests(out: Path) -> dict[str, str]:
    files = [out / "roi_md.tsv", out / "roi_deltas.tsv", *sorted(out.rglob("*_dwimap.nii.gz"))]
    return {str(p.relative_to(out)): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


def timeline(out: Path, start: float, end: float, workers: int) -> dict:
    qc = sorted(p.stat().st_mtime for p in out.glob("sub-*/ses-*/dwi/*_desc-qc_dwi.json"))
    if not qc:
        return {}
    n = len(qc)
    # Seconds per session per worker in the steady state, from the later half.
    half = qc[n // 2:]
    rate = (half[-1] - half[0]) / max(len(half) - 1, 1) * workers if len(half) > 1 else np.nan
    return {"first": qc[0] - start, "tail": end - qc[-1], "per_session": rate, "n": n}


PROBE_CODE = """
import json, sys, time
from ketamine_nb.pipeline import process_session
out, paths = sys.argv[1], sys.argv[2:]
times, cpu = [], []
for k, p in enumerate(paths):
    t0, c0 = time.perf_counter(), time.process_time()
    process_session(p, out, "sub-%03d" % (k + 1), "pre")
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
print(json.dumps({"wall": times, "cpu": cpu}))
"""

CLUSTER_CODE = """
import json, time
t0 = time.perf_counter()
from dask.distributed import Client, LocalCluster
t1 = time.perf_counter()
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                       dashboard_address=":0", silence_logs=40)
client = Client(cluster)
client.run(lambda: None)
t2 = time.perf_counter()
client.close()
cluster.close()
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "start": t2 - t1, "close": t3 - t2}))
"""


def probes(bids: Path, work: Path) -> dict:
    """Parallel capacity of the machine (no Dask) and Dask's start/stop cost."""
    import json
    import subprocess

    dwis = sorted(bids.glob("sub-*/ses-pre/dwi/*_dwi.nii.gz"))[:7]

    def start(tag):
        return subprocess.Popen([sys.executable, "-c", PROBE_CODE, str(work / tag),
                                 *map(str, dwis)], stdout=subprocess.PIPE, text=True)

    def result(p):
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit("the parallel-capacity probe failed")
        return json.loads(out.strip().splitlines()[-1])

    alone_r = result(start("alone"))
    procs = [start("pair_a"), start("pair_b")]
    pair_r = [result(p) for p in procs]
    alone, pair = alone_r["wall"], [r["wall"] for r in pair_r]
    wall, rc, _, text, cpu = C.run_measured([sys.executable, "-c", CLUSTER_CODE])
    if rc != 0:
        raise SystemExit(f"the Dask probe failed: {text[-300:]}")
    dask = json.loads(text.strip().splitlines()[-1])
    return {"first_alone": alone[0], "alone": float(np.median(alone[1:])),
            "pair": float(np.median(pair[0][1:] + pair[1][1:])),
            "first_pair": float(np.median([pair[0][0], pair[1][0]])), "n": len(alone) - 1,
            "alone_cpu": float(np.median(alone_r["cpu"][1:])),
            "pair_cpu": float(np.median(pair_r[0]["cpu"][1:] + pair_r[1]["cpu"][1:])),
            "dask_wall": wall, "dask_cpu": cpu, **dask, "probe_load": C.loadavg()}


def measure(*, participants: int = 48, repeats: int = 2, distributed: bool = False,
            with_probes: bool = True) -> dict:
    """Run the run stage with 1 and 2 workers (and distributed), compare outputs; probes."""
    import time

    from ketamine_nb.simulate import SimulationParams, simulate_cohort

    work = Path(tempfile.mkdtemp(prefix="bench_dask_"))
    try:
        bids = work / "bids"
        print(f"simulating {participants} participants", flush=True)
        simulate_cohort(bids, params=SimulationParams.idealised(n_subjects=participants), seed=0,
                        n_jobs=min(2, C.n_cpus()), progress=False)
        warm = C.run_measured([*cli_command(), "run", str(bids), str(work / "warmup"),
                               "--participant-label", "001", "--n-jobs", "1", "--quiet"])
        if warm[1] != 0:
            print(warm[3])
            raise SystemExit("the warm-up run failed")
        shutil.rmtree(work / "warmup")

        settings = [1, 2, "distributed"] if distributed else [1, 2]
        order = []
        for k in range(repeats):
            order += settings if k % 2 == 0 else settings[::-1]
        runs = {w: [] for w in settings}
        ref = None
        same = {w: [] for w in settings}
        differing = set()
        script = work / "distributed_run.py"
        script.write_text(DISTRIBUTED_CODE)
        for i, w in enumerate(order):
            out = work / f"out{i}_w{w}"
            load0 = C.loadavg()
            start = time.time()
            cmd = [sys.executable, str(script), str(bids), str(out)] if w == "distributed" \
                else [*cli_command(), "run", str(bids), str(out), "--n-jobs", str(w), "--quiet"]
            wall, rc, smp, text, cpu = C.run_measured(cmd)
            end = start + wall
            if rc != 0:
                print(text)
                raise SystemExit(f"ketamine-nb run --n-jobs {w} failed (exit {rc})")
            runs[w].append({"wall": wall, "cpu": cpu, "peak": smp.peak_pss,
                            "procs": smp.peak_procs, "load": load0,
                            **timeline(out, start, end, 2 if w == "distributed" else w)})
            d = digests(out)
            if ref is None:
                ref = d
            same[w].append(d == ref)
            differing |= {k for k in set(d) | set(ref) if d.get(k) != ref.get(k)}
            n_files = len(d)
            print(f"{label(w)}: {wall:.1f} s (CPU {cpu:.0f} s), outputs identical to the "
                  f"first run: {d == ref}", flush=True)
            shutil.rmtree(out)
        probe = None
        if with_probes:
            print("probes: parallel capacity without Dask, Dask start-up", flush=True)
            probe = probes(bids, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {w: float(np.median([r["wall"] for r in v])) for w, v in runs.items()}
    speedup = med[1] / med[2]
    ok_same = all(all(v) for v in same.values())
    n_sess = runs[1][0].get("n", 0)

    def m(w, key):
        return float(np.median([r[key] for r in runs[w]]))

    lines = [
        f"`ketamine-nb run BIDS OUT --n-jobs N --quiet` on {participants} simulated "
        f"participants ({n_sess} sessions), fresh OUT each run, order "
        f"{', '.join(map(str, order))}; median per setting. The timeline comes from the QC "
        f"JSON each session writes last.", "",
        "| setting | wall (s), median | repeats (s) | CPU user+sys, tree (s) | peak PSS, tree "
        "(MB) | processes | start-up to 1st session done (s) | s per session per worker "
        "(steady) | last session to exit (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for w in runs:
        lines.append(
            f"| {label(w)} | {med[w]:.1f} | {C.fmt_times([r['wall'] for r in runs[w]])} | "
            f"{m(w, 'cpu'):.0f} | {max(r['peak'] for r in runs[w]) / 1e6:.0f} | "
            f"{max(r['procs'] for r in runs[w])} | {m(w, 'first'):.1f} | "
            f"{m(w, 'per_session'):.2f} | {m(w, 'tail'):.1f} |")
    lines += ["", f"- speed-up, wall(1) / wall(2): {speedup:.2f}",
              *([f"- speed-up of `--n-jobs 2` over the `dask.distributed` LocalCluster "
                 f"(the earlier way), wall(distributed) / wall(2): "
                 f"{med['distributed'] / med[2]:.2f}"] if "distributed" in med else []),
              f"- outputs byte-identical (roi_md.tsv, roi_deltas.tsv, {n_files - 2} "
              f"*_dwimap.nii.gz) in every run: "
              f"{'yes' if ok_same else 'NO: ' + ', '.join(sorted(differing)[:5])}",
              f"- CPU time ratio 2 workers / 1 worker: {m(2, 'cpu') / m(1, 'cpu'):.2f} (the "
              f"extra CPU is the worker processes' own start-up and memory traffic)",
              *([f"- CPU time ratio distributed / 1 worker: "
                 f"{m('distributed', 'cpu') / m(1, 'cpu'):.2f}"] if "distributed" in med else []),
              "- load average when each run started: "
              + "; ".join(f"{label(w)}: " + ", ".join(r["load"].split()[0] for r in runs[w])
                          for w in runs)]
    if probe:
        eff = probe["alone"] / probe["pair"]
        lines.append(f"- CPU per session: 1 worker {m(1, 'cpu') / n_sess:.2f} s, 2 workers "
                     f"{m(2, 'cpu') / n_sess:.2f} s (whole tree, start-up included)")
        lines += [
            "", "Probes (after the runs; load average then "
            f"{probe['probe_load']}):", "",
            "| probe | measured |", "|---|---|",
            f"| `process_session`, one plain process alone: median of {probe['n']} warm "
            f"sessions | {probe['alone']:.2f} s, CPU {probe['alone_cpu']:.2f} s (first, cold: "
            f"{probe['first_alone']:.2f} s) |",
            f"| same, two plain processes at once (no Dask): median per session | "
            f"{probe['pair']:.2f} s, CPU {probe['pair_cpu']:.2f} s (first, cold: "
            f"{probe['first_pair']:.2f} s) |",
            f"| parallel efficiency of the machine for this work (alone / at once; 1.0 = two "
            f"CPUs really there) | **{eff:.2f}**, i.e. a speed-up of at most "
            f"**{2 * eff:.2f}** with 2 workers before any Dask cost |",
            f"| Dask `LocalCluster` of 2 worker processes: import, start + no-op on each "
            f"worker, close | {probe['import']:.1f} + {probe['start']:.1f} + "
            f"{probe['close']:.1f} s (wall {probe['dask_wall']:.1f} s, CPU "
            f"{probe['dask_cpu']:.1f} s) |"]
    metrics = {"participants_count": participants, "sessions_count": n_sess,
               "workers1_wall_s": med[1], "workers2_wall_s": med[2], "speedup_ratio": speedup,
               "outputs_identical_bool": ok_same, "workers1_cpu_s": m(1, "cpu"),
               "workers2_cpu_s": m(2, "cpu"),
               "workers2_peak_pss_bytes": max(r["peak"] for r in runs[2])}
    if "distributed" in med:
        metrics["distributed_wall_s"] = med["distributed"]
        metrics["distributed_over_workers2_ratio"] = med["distributed"] / med[2]
    if probe:
        metrics["parallel_efficiency_ratio"] = probe["alone"] / probe["pair"]
    return C.result("bench_dask", "run stage, 1 vs 2 Dask workers",
                    options={"participants": participants, "repeats": repeats,
                             "distributed": distributed, "probes": with_probes},
                    metrics=metrics, details=lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_dask.json and regenerate RESULTS.md")
    ap.add_argument("--participants", type=int, default=48,
                    help="participants to simulate (2 sessions each; default 48)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="rounds of runs, ordered 1,2,d,d,2,1,... (default 2)")
    ap.add_argument("--distributed", action="store_true",
                    help="also run on a dask.distributed LocalCluster (the earlier way)")
    ap.add_argument("--no-probes", action="store_true",
                    help="skip the parallel-capacity and Dask start-up probes")
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(participants=args.participants, repeats=args.repeats,
                            distributed=args.distributed, with_probes=not args.no_probes),
                    args.record)


def label(w) -> str:
    """Row label of a setting."""
    return {1: "`--n-jobs 1` (no Dask)", 2: "`--n-jobs 2` (Dask processes)",
            "distributed": "`--scheduler` on a 2-worker `LocalCluster`"}[w]


if __name__ == "__main__":
    sys.exit(main())
