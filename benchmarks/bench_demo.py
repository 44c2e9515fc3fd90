#!/usr/bin/env python
"""Time, peak memory and disk of ``ketamine-nb demo`` (simulate + run + stats), against the budget.

Measured: ``ketamine-nb demo --out TMP --quiet`` at the default 98 participants
(196 sessions), run as a subprocess with its defaults (2 simulation jobs, a
local Dask cluster of min(2, CPUs) workers, 5000 permutations):

* wall time of the command (Python start-up included) and the CPU time of the
  whole tree; the three stages are timed from the files they write
  (simulation: start -> ``derivatives/dataset_description.json``; run: ->
  ``derivatives/roi_deltas.tsv``; statistics: -> ``stats_roi.tsv``; the rest
  is start-up and printing);
* peak memory of the whole process tree: the summed PSS of the command and
  all its descendants (Dask scheduler, nanny and worker processes, forked
  simulation workers), sampled every 0.1 s with ``_common.TreeMemorySampler``;
  also the peak within each stage;
* disk: the sum of the sizes of all files under TMP (MB = 10^6 bytes), raw
  BIDS and derivatives apart;
* where the run stage's time goes: after the demo, a pyinstrument profile of
  ``run_pipeline(BIDS, OUT, n_jobs=1)`` on the first ``--profile-participants``
  (default 4) participants of the demo's BIDS, in a new process (one process
  runs what each Dask worker runs, minus Dask).

The sampler costs a few % of one CPU (psutil reads every process of the tree
each ``--interval``, default 0.25 s).

Data home (``KETAMINE_NB_DATA``): a fresh folder warmed first (a 3-participant
``ketamine-nb simulate`` builds the anatomy cache, ``load_region_maps()`` the
atlas cache), so the demo finds its caches, as on every run after the first;
``--data-home DIR`` uses an existing one instead. The warm-up is not timed
with the demo.

Judged by ``_render.GOALS`` (performance and real-scan issues): wall time,
peak memory (PSS of the tree) and disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C


def cli_command() -> list[str]:
    """``ketamine-nb`` next to this interpreter (the venv's), else ``python -m``."""
    exe = Path(sys.executable).with_name("ketamine-nb")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ketamine_nb.cli"]


def warm_data_home(home: Path, work: Path) -> float:
    env = dict(os.environ, KETAMINE_NB_DATA=str(home))
    t0 = time.perf_counter()
    subprocess.run([*cli_command(), "simulate", str(work / "warmup_bids"), "--subjects", "3",
                    "--seed", "0", "--quiet"], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", "from ketamine_nb.regions import load_region_maps; "
                    "load_region_maps()"], env=env, check=True, capture_output=True)
    shutil.rmtree(work / "warmup_bids", ignore_errors=True)
    return time.perf_counter() - t0


PROFILE_CODE = """
import sys, time
from pyinstrument import Profiler
from ketamine_nb.pipeline import run_pipeline
labels = ["%03d" % (i + 1) for i in range(int(sys.argv[3]))]
prof = Profiler(interval=0.005)
prof.start()
t0 = time.perf_counter()
res = run_pipeline(sys.argv[1], sys.argv[2], n_jobs=1, participant_label=labels,
                   progress=False)
wall = time.perf_counter() - t0
prof.stop()
print("SESSIONS", len(res.sessions), "WALL", wall)
print(prof.output_text(unicode=False, color=False))
"""


def profile_run(bids: Path, out: Path, env: dict, n: int):
    """pyinstrument tree of run_pipeline(n_jobs=1) on the first n participants, or a note."""
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        return "(pyinstrument not installed: pip install -e '.[bench]')", None
    p = subprocess.run([sys.executable, "-c", PROFILE_CODE, str(bids), str(out), str(n)],
                       env=env, capture_output=True, text=True)
    if p.returncode != 0:
        return f"(profile failed: {p.stderr[-300:]})", None
    lines = p.stdout.splitlines()
    head = next(ln for ln in lines if ln.startswith("SESSIONS")).split()
    start = next((i for i, ln in enumerate(lines) if ln.lstrip()[:1].isdigit()), 0)
    tree = "\n".join(ln.rstrip() for ln in lines[start:] if ln.strip())
    return tree, (int(head[1]), float(head[3]))


def measure(*, subjects: int | None = None, data_home: str | None = None,
            interval: float = 0.25, profile: bool = True, profile_participants: int = 4) -> dict:
    """Run ``ketamine-nb demo`` once in a temporary folder; time, memory, disk, stages."""
    import resource

    work = Path(tempfile.mkdtemp(prefix="bench_demo_"))
    try:
        if data_home:
            home = Path(data_home).resolve()
            warm_s, home_note = None, f"existing data home {home}"
        else:
            home = work / "data_home"
            print(f"warming a fresh data home {home}", flush=True)
            warm_s = warm_data_home(home, work)
            home_note = (f"fresh data home warmed first ({warm_s:.0f} s, not counted: a "
                         f"3-participant `simulate` and `load_region_maps()`)")
        cache_mb = C.dir_size(home)[0] / 1e6
        out = work / "demo"
        cmd = [*cli_command(), "demo", "--out", str(out), "--quiet"]
        if subjects:
            cmd += ["--subjects", str(subjects)]
        env = dict(os.environ, KETAMINE_NB_DATA=str(home))
        load0 = C.loadavg()
        print(f"running: {' '.join(cmd)}  (load {load0})", flush=True)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        smp = C.TreeMemorySampler(proc.pid, interval).start()
        text, _ = proc.communicate()
        wall = time.perf_counter() - t0
        end = time.time()
        smp.stop()
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        load1 = C.loadavg()
        if proc.returncode not in (0, 1):
            print(text)
            raise SystemExit(f"ketamine-nb demo failed (exit {proc.returncode})")
        deriv = out / "derivatives"
        marks = {"simulate": deriv / "dataset_description.json",
                 "run": deriv / "roi_deltas.tsv", "stats": deriv / "stats_roi.tsv"}
        stamp = {k: p.stat().st_mtime for k, p in marks.items() if p.exists()}
        size, alloc, nfiles = C.dir_size(out)
        bids_size = C.dir_size(out / "bids")[0]
        deriv_size = C.dir_size(deriv)[0]
        n_sessions = len(list(deriv.glob("sub-*/ses-*/dwi/*_desc-qc_dwi.json")))
        done_line = next((ln for ln in text.splitlines() if ln.startswith("Done in")), "")
        prof_tree = None
        if profile:
            prof_tree = profile_run(out / "bids", work / "profiled", env,
                                    profile_participants)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    bounds = [("simulate", start, stamp.get("simulate")),
              (f"run ({n_sessions} sessions on Dask)", stamp.get("simulate"), stamp.get("run")),
              ("stats (5000 permutations)", stamp.get("run"), stamp.get("stats")),
              ("rest (start-up, printing, exit)", stamp.get("stats"), end)]
    phases = []
    for name, a, b in bounds:
        if a is None or b is None:
            continue
        pk = [s for s in smp.timeline if a <= s[0] <= b]
        phases.append((name, b - a, max((s[1] for s in pk), default=0),
                       max((s[3] for s in pk), default=0)))

    lines = [
        f"`{' '.join(['ketamine-nb', *cmd[len(cli_command()):]]).replace(str(out), 'TMP')}`, "
        f"exit {proc.returncode}; {n_sessions} sessions processed; {home_note}; data-home "
        f"caches {cache_mb:.0f} MB. Memory: max over time of the summed PSS of the process "
        f"tree, sampled every {interval} s ({smp.method}, {smp.samples} samples); "
        f"MB = 10^6 bytes.", "",
        f"- wall {wall:.1f} s; peak PSS {smp.peak_pss / 1e6:.0f} MB; disk {size / 1e6:.0f} MB",
        "", "| stage | wall (s) | peak PSS in the stage (MB) | processes |", "|---|---|---|---|"]
    for name, dt, pk, n in phases:
        lines.append(f"| {name} | {dt:.1f} | {pk / 1e6:.0f} | {n} |")
    lines += [
        "",
        f"- CPU user+sys of the tree: {cpu:.0f} s (CPU / wall = {cpu / wall:.2f} of at most "
        f"{C.n_cpus()}); peak RSS sum {smp.peak_rss / 1e6:.0f} MB; up to {smp.peak_procs} "
        f"processes",
        f"- disk: raw BIDS {bids_size / 1e6:.0f} MB, derivatives {deriv_size / 1e6:.0f} MB; "
        f"{nfiles} files; allocated {alloc / 1e6:.0f} MB",
        f"- the command's own line: \"{done_line}\"",
        f"- load average before -> after the demo: {load0} -> {load1}"]
    if prof_tree:
        tree, info = prof_tree
        if info:
            lines += ["", f"pyinstrument call tree of the run stage without Dask: "
                      f"`run_pipeline(BIDS, OUT, n_jobs=1)` on {profile_participants} "
                      f"participants of the demo ({info[0]} sessions, {info[1]:.1f} s, "
                      f"{info[1] / max(info[0], 1):.2f} s per session; seconds, library frames "
                      f"collapsed):", "", "```", tree, "```"]
        else:
            lines += ["", f"- profile of the run stage: {tree}"]
    metrics = {"wall_s": wall, "cpu_s": cpu, "peak_pss_bytes": smp.peak_pss,
               "peak_rss_bytes": smp.peak_rss, "disk_bytes": size, "bids_disk_bytes": bids_size,
               "derivatives_disk_bytes": deriv_size, "sessions_count": n_sessions,
               "exit_code": proc.returncode}
    for name, dt, pk, _ in phases:
        metrics[f"{name.split(' ')[0]}_stage_wall_s"] = dt
        metrics[f"{name.split(' ')[0]}_stage_peak_pss_bytes"] = pk
    return C.result("bench_demo", "ketamine-nb demo, wall/memory/disk",
                    options={"subjects": subjects, "data_home": data_home or "fresh, warmed",
                             "interval_s": interval, "profile": profile,
                             "profile_participants": profile_participants},
                    metrics=metrics, details=lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_demo.json and regenerate RESULTS.md")
    ap.add_argument("--subjects", type=int, default=None,
                    help="participants (default: the demo's default, 98)")
    ap.add_argument("--data-home", default=None, metavar="DIR",
                    help="use this (warm) data home instead of a fresh one warmed here")
    ap.add_argument("--interval", type=float, default=0.25,
                    help="memory sampling interval (s; default 0.25)")
    ap.add_argument("--no-profile", action="store_true",
                    help="skip the pyinstrument profile of the run stage")
    ap.add_argument("--profile-participants", type=int, default=4, metavar="N",
                    help="participants in the profile of the run stage (default 4)")
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(subjects=args.subjects, data_home=args.data_home,
                            interval=args.interval, profile=not args.no_profile,
                            profile_participants=args.profile_participants), args.record)


if __name__ == "__main__":
    sys.exit(main())
