#!/usr/bin/env python
"""Start-up cost: ``import ketamine_nb``, the CLI's ``--help``, and what they import.

Each command runs in a fresh interpreter, ``--repeats`` times (default 5)
after one untimed warm-up (page cache), interleaved; the median wall time is
reported, with the bare interpreter (``python -c pass``) for reference:

* ``python -c "import ketamine_nb"``;
* ``python -c "import ketamine_nb.pipeline"`` (what a notebook's first
  ``process_session`` imports before any work);
* ``ketamine-nb --help`` (the console script of this environment).

``python -X importtime`` then lists the top offenders of ``import ketamine_nb``
and of ``ketamine-nb --help`` (``-m ketamine_nb.cli --help``): the top-level
packages with the largest cumulative import time, each at its first import.

Judged by ``_render.GOALS`` (performance issue): ``import ketamine_nb`` (median
wall of a fresh process, interpreter start-up included).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import _common as C
import numpy as np


def cli_command() -> list[str]:
    exe = Path(sys.executable).with_name("ketamine-nb")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ketamine_nb.cli"]


def wall(cmd) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd="/")
    return time.perf_counter() - t0


def importtime(code_args: list[str], top: int = 8) -> tuple[list[tuple], float]:
    """Top ``top`` packages by cumulative import time (s), and the total of the command."""
    p = subprocess.run([sys.executable, "-X", "importtime", *code_args], capture_output=True,
                       text=True, cwd="/")
    rows = []
    for ln in p.stderr.splitlines():
        if not ln.startswith("import time:") or "cumulative" in ln:
            continue
        self_us, cum_us, name = ln[len("import time:"):].split("|", 2)
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2  # 2 spaces per level
        rows.append((name.strip(), int(self_us), int(cum_us), depth))
    # Top-level imports (depth 0) add up to the total.
    total = sum(r[2] for r in rows if r[3] == 0) / 1e6
    # Offenders: top-level packages (no dot), each at its first import, whose cumulative
    # time includes what they import first; not ours, not the interpreter's start-up.
    pkgs = [r for r in rows if "." not in r[0] and not r[0].startswith(("ketamine_nb", "_"))
            and r[0] not in ("site", "encodings")]
    best = sorted(pkgs, key=lambda r: -r[2])[:top]
    return [(n, s / 1e6, c / 1e6, d) for n, s, c, d in best], total


def measure(*, repeats: int = 5) -> dict:
    """Median wall time of each start-up command in fresh processes; importtime offenders."""
    py = sys.executable
    cmds = {
        "bare_python": ("python -c pass (bare interpreter)", [py, "-c", "pass"]),
        "import_ketamine_nb": ("python -c \"import ketamine_nb\"",
                               [py, "-c", "import ketamine_nb"]),
        "import_pipeline": ("python -c \"import ketamine_nb.pipeline\"",
                            [py, "-c", "import ketamine_nb.pipeline"]),
        "cli_help": ("ketamine-nb --help", [*cli_command(), "--help"]),
    }
    notes = []
    for k, (text, cmd) in list(cmds.items()):  # warm-up; a command that fails is left out
        p = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["?"])[-1]
            notes.append(f"`{text}` failed (exit {p.returncode}: {last}); not timed")
            print(notes[-1], flush=True)
            del cmds[k]
    times = {k: [] for k in cmds}
    for _ in range(repeats):
        for k, (_, cmd) in cmds.items():
            times[k].append(wall(cmd))
    med = {k: float(np.median(v)) for k, v in times.items()}
    bare = med["bare_python"]
    if "import_ketamine_nb" not in med:
        raise SystemExit("; ".join(notes))

    top_pkg, tot_pkg = importtime(["-c", "import ketamine_nb"])
    top_help, tot_help = (importtime(["-m", "ketamine_nb.cli", "--help"]) if "cli_help" in med
                          else ([], float("nan")))

    lines = [f"Fresh interpreter each time, median of {repeats} interleaved runs after one "
             f"warm-up; wall time includes interpreter start-up.", "",
             "| command | median (s) | minus bare interpreter (s) | repeats (s) |",
             "|---|---|---|---|"]
    for k, (text, _) in cmds.items():
        lines.append(f"| `{text}` | {med[k]:.3f} | {med[k] - bare:.3f} | "
                     f"{C.fmt_times(times[k])} |")
    for title, top, tot in (("`import ketamine_nb`", top_pkg, tot_pkg),
                            ("`ketamine-nb --help` (`-m ketamine_nb.cli --help`)", top_help,
                             tot_help)):
        lines += ["", f"`python -X importtime`, {title}: all imports {tot:.3f} s; largest "
                  "top-level packages (cumulative: with what each imports first; packages "
                  "nest, so the rows overlap):", "",
                  "| package | cumulative (s) | self (s) | nesting |", "|---|---|---|---|"]
        for name, s_, c, d in top:
            lines.append(f"| {name} | {c:.3f} | {s_:.3f} | {d} |")
    metrics = {f"{k}_wall_s": med[k] for k in cmds}
    metrics["importtime_ketamine_nb_s"] = tot_pkg
    metrics["importtime_cli_help_s"] = tot_help
    if top_help:
        metrics[f"largest_import_under_help_{top_help[0][0]}_s"] = top_help[0][2]
    return C.result("bench_import", "import and CLI start-up", options={"repeats": repeats},
                    metrics=metrics, details=lines + [f"- {n}" for n in notes],
                    notes=notes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_import.json and regenerate RESULTS.md")
    ap.add_argument("--repeats", type=int, default=5, help="fresh processes each (default 5)")
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(repeats=args.repeats), args.record)


if __name__ == "__main__":
    sys.exit(main())
