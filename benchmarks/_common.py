"""Shared helpers of the benchmarks: machine facts, the result dict, process-tree memory.

Not a benchmark itself. The ``bench_*.py`` scripts import it (they run with
``benchmarks/`` first on ``sys.path``). Each script's ``measure()`` returns
:func:`result`; ``_render.py`` (the one renderer) prints it, judges it against
the goals table and, when recording, writes ``history/*.json`` and RESULTS.md.
A run of ``run_all.sh`` shares one ``BENCH_RUN_ID``, commit and load average.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

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


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def software() -> dict:
    """Versions of the interpreter and the libraries that set the speed."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("ketamine-nb", "numpy", "scipy", "dipy", "nibabel"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    """Facts about this machine, for a result dict."""
    return {"cpus": n_cpus(), "cpu_model": cpu_model(), "ram_gib": round(ram_gib(), 1),
            "system": f"{platform.system()} {platform.release()}", "software": software()}


def _floats(load: str) -> list[float]:
    try:
        return [float(x) for x in load.split()[:3]]
    except ValueError:
        return []


#: A load average (1 min) from this value up marks a run as made on a busy machine.
BUSY_LOAD = 0.5


def result(bench: str, title: str, *, options: dict, metrics: dict,
           details: list[str] | None = None, notes: list[str] | None = None) -> dict:
    """The plain dict a ``measure()`` returns: facts, date, commit, load, the numbers.

    ``metrics`` is flat, ``{name: number}``, in SI units with the unit as the
    name's suffix (``_s``, ``_bytes``, ``_mm``, ``_ratio``, ``_fraction``,
    ``_count``, ``_r``, ``_bool``); ``_render.GOALS`` judges some of them.
    ``details`` are Markdown lines printed after the run and kept in the JSON.
    """
    before = _floats(LOAD_BEFORE)
    busy = bool(before) and before[0] >= BUSY_LOAD
    note = os.environ.get("BENCH_LOAD_NOTE", "")
    if busy and not note:
        note = ("NOT idle: the machine was shared with other work, so absolute times are "
                "noisy; the side-by-side ratios are the numbers to trust")
    clean = {}
    for k, v in metrics.items():
        if v is None:
            clean[k] = None
        elif isinstance(v, bool):
            clean[k] = int(v)
        else:
            v = float(v)
            clean[k] = None if v != v else (int(v) if k.endswith(("_count", "_bytes", "_bool"))
                                             else v)
    return {
        "bench": bench,
        "title": title,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "code_at_script_start": _SCRIPT_CODE,
        "run_id": run_id(),
        "machine": machine(),
        "load": {"before_1_5_15_min": before, "script_start_1_5_15_min": _floats(_SCRIPT_LOAD),
                 "after_1_5_15_min": _floats(loadavg()), "busy": busy, "note": note},
        "options": options,
        "metrics": clean,
        "details": list(details or []),
        "notes": list(notes or []),
    }


def report(res: dict, record: bool) -> int:
    """Hand a result to the one renderer (prints; with ``record`` writes JSON + RESULTS.md)."""
    import _render

    return _render.report(res, record=record)


def record(*_args, **_kwargs):
    """Gone: RESULTS.md is generated. Return ``result(...)`` from ``measure()`` instead."""
    raise RuntimeError("benchmarks/RESULTS.md is generated now: return C.result(...) from "
                       "measure() and call C.report(result, record) in main() (see "
                       "benchmarks/README.md)")


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


def run_measured(cmd, *, env=None, interval: float | None = 0.1, cwd=None):
    """Run a command; return (wall s, returncode, sampler, output text, CPU s of the tree).

    The CPU time (user + system) covers the command and every descendant it
    waited for (``RUSAGE_CHILDREN``), i.e. the forked workers too. Unlike the
    wall time it hardly depends on how busy the machine is. ``interval=None``
    runs without the memory sampler (``sampler`` is then ``None``), for a
    time untouched by the sampler's own reads of every process's memory map.
    """
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sampler = TreeMemorySampler(proc.pid, interval).start() if interval else None
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    if sampler is not None:
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
    simulate_cohort(out, params=SimulationParams.idealised(n_subjects=3), seed=0, n_jobs=1,
                    progress=False)
    return out / "sub-001" / "ses-pre" / "dwi" / "sub-001_ses-pre_dwi.nii.gz"


def check_package() -> None:
    try:
        import ketamine_nb  # noqa: F401
    except ImportError:
        sys.exit(f"{sys.executable} cannot import ketamine_nb; install the package "
                 "(pip install -e .) or set PYTHON to the project's venv")


def ms(x: float) -> str:
    """Seconds as milliseconds with one decimal, or ``-`` for a missing value."""
    import math

    return "-" if x is None or not math.isfinite(x) else f"{x * 1e3:.1f}"


def results_or_demo(results_dir: Path | None):
    """Load a derivatives folder's results; without one, the demo's (prepared first, untimed).

    Parameters
    ----------
    results_dir : pathlib.Path or None
        A folder ``ketamine-nb run`` wrote; None means the data home's demo.
    """
    from ketamine_nb.datasets import get_demo_dir
    from ketamine_nb.results import load_results

    out_dir = results_dir or get_demo_dir() / "derivatives"
    if not (out_dir / "roi_deltas.tsv").is_file():
        if results_dir is not None:
            sys.exit(f"{out_dir}: no roi_deltas.tsv; pass the derivatives folder of a run")
        print(f"preparing the demo in {get_demo_dir()} (not timed)", flush=True)
        subprocess.run([sys.executable, "-m", "ketamine_nb.cli", "demo", "--quiet"],
                       check=True)
    return out_dir, load_results(out_dir)
