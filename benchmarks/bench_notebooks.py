#!/usr/bin/env python
"""The notebook series on the prepared demo: time and kernel memory per notebook.

What a Binder user meets: every notebook in ``notebooks/`` (00 to 07, in
order) executed top to bottom on a fresh Jupyter kernel (``nbclient``, the
``python3`` kernel of this interpreter, inline matplotlib backend) against the
full prepared demo (98 participants) in the data home, each in its own empty
working folder. Per notebook: wall time from the first cell to the last
(kernel start-up reported apart), and the peak memory of the kernel's process
tree (summed PSS, sampled every 0.1 s, so forked workers count too).

The data home is ``--data-dir``, else ``KETAMINE_NB_DATA``, else
``~/ketamine_nb_data``; when its demo is not prepared, ``ketamine-nb demo``
prepares it first (not timed). Judged by ``_render.GOALS`` (notebooks
issues): the whole series' time, the kernel's peak memory (mybinder.org
guarantees 1 GB and kills kernels above 2 GB) and the cells that raised.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

REPO = Path(__file__).resolve().parents[1]


def run_notebook(path: Path, workdir: Path, timeout: int) -> dict:
    """Execute one notebook on a fresh kernel; time it and sample its memory."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    t0 = time.perf_counter()
    with client.setup_kernel():
        started = time.perf_counter() - t0
        pid = client.km.provisioner.process.pid
        sampler = C.TreeMemorySampler(pid, 0.1).start()
        t1 = time.perf_counter()
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        wall = time.perf_counter() - t1
        sampler.stop()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    return {"name": path.name, "start": started, "wall": wall, "peak": sampler.peak_pss,
            "procs": sampler.peak_procs, "cells": sum(c.cell_type == "code" for c in nb.cells),
            "errors": len(errors)}


def measure(*, data_dir: str | None = None, timeout: int = 600) -> dict:
    """Execute every notebook on the prepared demo; time and kernel memory per notebook."""
    from ketamine_nb.datasets import get_data_home, get_demo_dir

    home = get_data_home(data_dir)
    os.environ["KETAMINE_NB_DATA"] = str(home)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    demo = get_demo_dir(home)
    if not (demo / "derivatives" / "roi_deltas.tsv").exists():
        print(f"preparing the demo in {demo} (not timed)", flush=True)
        subprocess.run([sys.executable, "-m", "ketamine_nb.cli", "demo", "--quiet"],
                       check=True)
    notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    load0 = C.loadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_nb_") as tmp:
        for path in notebooks:
            work = Path(tmp) / path.stem
            work.mkdir()
            r = run_notebook(path, work, timeout)
            rows.append(r)
            print(f"{r['name']}: {r['wall']:.1f} s (+{r['start']:.1f} s kernel start), peak "
                  f"{r['peak'] / 1e6:.0f} MB, {r['errors']} errors", flush=True)
    total = sum(r["wall"] + r["start"] for r in rows)
    peak = max(r["peak"] for r in rows)
    errors = sum(r["errors"] for r in rows)
    lines = [
        f"Each notebook of `notebooks/` top to bottom on a fresh `python3` kernel (nbclient), "
        f"against the prepared 98-participant demo in the data home; kernel memory = peak "
        f"summed PSS of the kernel's process tree (every 0.1 s). Load average before: {load0}.",
        "", "| notebook | code cells | kernel start (s) | cells (s) | peak kernel memory (MB) | "
        "processes | errors |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['cells']} | {r['start']:.1f} | {r['wall']:.1f} | "
                     f"{r['peak'] / 1e6:.0f} | {r['procs']} | {r['errors']} |")
    metrics = {"series_wall_s": total, "kernel_peak_pss_bytes": peak,
               "cell_errors_count": errors, "notebooks_count": len(rows)}
    for r in rows:
        stem = r["name"].removesuffix(".ipynb")[:2]
        metrics[f"nb{stem}_wall_s"] = r["wall"] + r["start"]
    return C.result("bench_notebooks", "the series on the demo", options={"timeout_s": timeout},
                    metrics=metrics, details=lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_notebooks.json and regenerate RESULTS.md")
    ap.add_argument("--data-dir", default=None, help="data home holding the prepared demo")
    ap.add_argument("--timeout", type=int, default=600, help="per cell, seconds (default 600)")
    args = ap.parse_args(argv)
    C.check_package()
    res = measure(data_dir=args.data_dir, timeout=args.timeout)
    C.report(res, args.record)
    return 0 if res["metrics"]["cell_errors_count"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
