"""Shared helpers of the benchmarks: machine facts, process-tree memory, RESULTS.md.

Not a benchmark itself. The ``bench_*.py`` scripts import it (they run with
``benchmarks/`` first on ``sys.path``).

RESULTS.md keeps one dated section per run, newest first. A run is named by
``BENCH_RUN_ID`` (``run_all.sh`` sets one for all its scripts, so they share
a section); a script run on its own makes its own section. Each script
appends its subsection at the end of its run's section.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "RESULTS.md"
MARKER = "<!-- benchmark runs below, newest first; the scripts insert them here -->"

_RUN_ID = os.environ.get("BENCH_RUN_ID") or _dt.datetime.now(_dt.UTC).strftime(
    "%Y%m%dT%H%M%SZ")
#: Load average when the run started (run_all.sh measures it before the first script).
LOAD_BEFORE = os.environ.get("BENCH_LOADAVG") or " ".join(
    f"{x:.2f}" for x in os.getloadavg())


_SCRIPT_LOAD = " ".join(f"{x:.2f}" for x in os.getloadavg())  # when this script started


def run_id() -> str:
    """Identifier of this benchmark run (shared by the scripts of one run_all.sh)."""
    return _RUN_ID


# --------------------------------------------------------------------------
# Machine facts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def n_cpus() -> int:
    """CPUs this process may use (what ``nproc`` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def git_commit() -> str:
    """Short commit of the work tree (``BENCH_COMMIT`` from run_all.sh, taken at the start)."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    return _git_commit_now()


def _git_commit_now() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True)
        sha = out.stdout.strip()
        # Only changes to what is measured matter (others edit tests and notebooks).
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no", "--", "ketamine_nb", "pyproject.toml"],
                               capture_output=True, text=True)
        return sha + (" (with uncommitted changes to ketamine_nb/)" if dirty.stdout.strip()
                      else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


#: Commit (and whether ketamine_nb/ had uncommitted edits) when this script started.
_SCRIPT_CODE = _git_commit_now()


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {platform.python_version()}"]
    for name in ("ketamine-nb", "numpy", "scipy", "dipy", "nibabel"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_lines() -> list[str]:
    now = _dt.datetime.now().astimezone()
    load = LOAD_BEFORE
    busy = float(load.split()[0]) >= 0.5
    return [
        f"- git commit: {git_commit()}; section started {now:%Y-%m-%d %H:%M:%S %Z}",
        f"- machine: {n_cpus()} CPUs (nproc), {cpu_model()}, {ram_gib():.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}",
        f"- load average before the run (1/5/15 min): {load}"
        + (" - NOT idle: the machine was shared with other work, so absolute times are "
           "noisy; the side-by-side ratios are the numbers to trust" if busy else " (idle)"),
        f"- software: {versions()}",
    ]


# --------------------------------------------------------------------------
# RESULTS.md


_HEADER = """# Benchmarks

Speed, memory and disk of `ketamine_nb`, measured here and never in the unit tests.

    bash benchmarks/run_all.sh            # runs all, prints a summary, writes nothing
    RECORD=1 bash benchmarks/run_all.sh   # also adds a dated section below (~20 min)
    bash benchmarks/run_all.sh bench_dask bench_import   # only these

`PYTHON=/path/to/python` picks the interpreter (default `.venv/bin/python`, else
`python3`); it must import `ketamine_nb`. Each script also runs alone and appends its
own section with `--record` (`python benchmarks/bench_md_fit.py --help`).

| script | measures | goal |
|---|---|---|
{rows}

`bench_md_fit.py` installs Debian's `mrtrix3` when `dwi2tensor` is missing (as root or
with passwordless sudo; otherwise it skips MRtrix3 and says so). Units: MB = 10^6 bytes.
Ratios are measured side by side in one process and one run, since the machines are
shared and noisy; each section gives the load average, and the CPU time where the wall
time is judged. Sections are dated, newest first; earlier ones are never rewritten.

""".format(rows="\n".join([
    "| `bench_simulate.py` | `ketamine-nb simulate OUT --subjects 98 --seed 0 --quiet`: wall "
    "time, peak memory of the process tree (summed PSS, sampled every 0.1 s), disk; cold and "
    "warm data-home caches | <= 60 s, <= 1 GB, <= 800 MB, voxels <= 3 mm, >= 20 directions |",
    "| `bench_md_fit.py` | one session and an issue-sized volume (96 x 96 x 60, 6 b0 + 64 "
    "directions, ~221k voxels): `compute_md_map` vs dipy `TensorModel` vs MRtrix3 "
    "`dwi2tensor`/`tensor2metric`; `brain_mask` vs dipy `median_otsu` | ours <= 0.5x MRtrix3 "
    "(file to file); >= 99.9 % of voxels within 1e-4 of dipy WLS (earlier: r >= 0.999 with "
    "MRtrix3; 100 % within 1e-6 of dipy) |",
    "| `bench_session.py` | one session through `process_session`, with a per-step breakdown "
    "and a pyinstrument tree | baseline for the performance issue |",
    "| `bench_import.py` | fresh-process wall time of `import ketamine_nb`, `import "
    "ketamine_nb.pipeline` and `ketamine-nb --help` (median of 5); `-X importtime` top "
    "offenders | import <= 1.0 s |",
    "| `bench_session_vs_script.py` | one session end to end: `process_session` + ROI table "
    "vs `plain_script.py` (dipy `median_otsu`, `TensorModel(WLS)`, rigid MI registration to "
    "nilearn's 2 mm template at the tutorial's parameters, `AffineMap`), new process and warm"
    " | ours <= 0.33x the script; regional MD within a few % |",
    "| `bench_dask.py` | `ketamine-nb run` on 16 participants, `--workers 1` vs `--workers "
    "2`; outputs compared byte for byte | speed-up >= 1.7; identical outputs |",
    "| `bench_demo.py` | `ketamine-nb demo --out TMP --quiet` (98 participants, warm data "
    "home): wall time, peak PSS of the tree, disk; per stage; pyinstrument of the run stage |"
    " <= 180 s, <= 1.5 GB, <= 1 GB |",
])) + MARKER + "\n"


def record(title: str, body: str) -> Path:
    """Append a subsection to this run's dated section of RESULTS.md (creating it)."""
    import fcntl

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        text = fh.read() or _HEADER
        if MARKER not in text:
            text = text.rstrip("\n") + "\n\n" + MARKER + "\n"
        tag = f"<!-- run: {run_id()} -->"
        sub = (f"\n### {title}\n\n{body.strip()}\n- load average (1/5/15 min) when this "
               f"benchmark started -> ended: {_SCRIPT_LOAD} -> {loadavg()}\n"
               f"- code measured: commit {_SCRIPT_CODE} when this benchmark started\n")
        if tag not in text:
            now = _dt.datetime.now().astimezone()
            section = (f"\n## {now:%Y-%m-%d %H:%M %Z} (run {run_id()})\n{tag}\n\n"
                       + "\n".join(machine_lines()) + "\n" + sub)
            head, tail = text.split(MARKER, 1)
            tail = tail.lstrip("\n")
            text = head + MARKER + "\n" + section + ("\n" + tail if tail else "")
        else:
            start = text.index(tag)
            m = re.compile(r"^## ", re.M).search(text, start)
            end = m.start() if m else len(text)
            text = text[:end].rstrip("\n") + "\n" + sub + ("\n" + text[end:] if m else "")
        fh.seek(0)
        fh.truncate()
        fh.write(text.rstrip("\n") + "\n")
    return RESULTS


def summary(line: str) -> None:
    """Print a summary line and hand it to run_all.sh (``BENCH_SUMMARY`` file)."""
    print(line)
    path = os.environ.get("BENCH_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


# --------------------------------------------------------------------------
# Timing


def fmt_times(ts) -> str:
    return ", ".join(f"{t:.2f}" for t in ts)


# --------------------------------------------------------------------------
# Memory of a process tree


def _proc_children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _proc_mem_kib(pid: int) -> tuple[int, int] | None:
    """(PSS, RSS) in KiB from /proc; PSS falls back to RSS without smaps_rollup."""
    rss = pss = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
    except OSError:
        return None
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    except OSError:
        pass
    if rss is None:
        return None  # a zombie or a kernel thread
    return (pss if pss is not None else rss), rss


class TreeMemorySampler:
    """Sample the memory of a process and all its descendants every ``interval`` s.

    PSS (proportional set size, from ``/proc/<pid>/smaps_rollup``) counts a page
    shared by n processes as 1/n in each, so the sum over forked workers is the
    real footprint; the sum of RSS counts shared pages once per process and is
    an upper bound. Uses psutil when installed, else reads /proc.
    """

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid = pid
        self.interval = interval
        #: (epoch time, PSS, RSS, processes) of every sample
        self.timeline: list[tuple[float, int, int, int]] = []
        self.peak_pss = 0  # bytes
        self.peak_rss = 0
        self.peak_procs = 0
        self.samples = 0
        self.pss_available = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        try:
            import psutil

            self._psutil = psutil
            self.method = f"psutil {psutil.__version__}"
        except ImportError:
            self._psutil = None
            self.method = "/proc"

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self

    def _sample_psutil(self):
        ps = self._psutil
        try:
            root = ps.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except ps.Error:
            return None
        pss = rss = n = 0
        for p in procs:
            try:
                info = p.memory_full_info()
            except ps.AccessDenied:
                try:
                    info = p.memory_info()
                except ps.Error:
                    continue
            except ps.Error:
                continue
            r = info.rss
            s = getattr(info, "pss", None)
            if s is None:
                self.pss_available = False
                s = r
            pss, rss, n = pss + s, rss + r, n + 1
        return pss, rss, n

    def _sample_proc(self):
        kids = _proc_children_map()
        todo, pids = [self.pid], []
        while todo:
            p = todo.pop()
            pids.append(p)
            todo.extend(kids.get(p, []))
        pss = rss = n = 0
        for p in pids:
            m = _proc_mem_kib(p)
            if m is None:
                continue
            pss, rss, n = pss + m[0] * 1024, rss + m[1] * 1024, n + 1
        return pss, rss, n

    def _run(self):
        sample = self._sample_psutil if self._psutil else self._sample_proc
        while not self._stop.is_set():
            got = sample()
            if got:
                pss, rss, n = got
                self.timeline.append((time.time(), pss, rss, n))
                self.peak_pss = max(self.peak_pss, pss)
                self.peak_rss = max(self.peak_rss, rss)
                self.peak_procs = max(self.peak_procs, n)
                self.samples += 1
            self._stop.wait(self.interval)


def run_measured(cmd, *, env=None, interval: float = 0.1, cwd=None):
    """Run a command; return (wall s, returncode, sampler, output text, CPU s of the tree).

    The CPU time (user + system) covers the command and every descendant it
    waited for (``RUSAGE_CHILDREN``), i.e. the forked workers too. Unlike the
    wall time it hardly depends on how busy the machine is.
    """
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sampler = TreeMemorySampler(proc.pid, interval).start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.stop()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, proc.returncode, sampler, out, cpu


def dir_size(path) -> tuple[int, int, int]:
    """(sum of file sizes in bytes, allocated bytes, number of files) under ``path``."""
    size = alloc = n = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            size += st.st_size
            alloc += st.st_blocks * 512
            n += 1
    return size, alloc, n


# --------------------------------------------------------------------------
# One simulated session, written as the simulator writes it


def make_session(tmp) -> Path:
    """Simulate a 3-subject cohort (the smallest allowed) and return sub-001 ses-pre's DWI.

    Uses ``simulate_cohort``, so the NIfTI, ``.bval`` and ``.bvec`` are exactly
    what ``ketamine-nb simulate`` writes (LAS int16, FSL gradient layout).
    """
    from ketamine_nb.simulate import SimulationParams, simulate_cohort

    out = Path(tmp) / "bids"
    simulate_cohort(out, params=SimulationParams(n_subjects=3), seed=0, n_jobs=1,
                    progress=False)
    return out / "sub-001" / "ses-pre" / "dwi" / "sub-001_ses-pre_dwi.nii.gz"


def check_package() -> None:
    try:
        import ketamine_nb  # noqa: F401
    except ImportError:
        sys.exit(f"{sys.executable} cannot import ketamine_nb; install the package "
                 "(pip install -e .) or set PYTHON to the project's venv")
