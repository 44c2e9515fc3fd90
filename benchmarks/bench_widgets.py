#!/usr/bin/env python
"""Latency of the explorers: from setting a control to an updated table and figure.

On the full demo (98 participants, ``<data home>/demo/derivatives``, prepared
first with ``ketamine-nb demo`` when missing, or ``--results DIR``),
``roi_explorer`` and ``outcome_explorer`` are built once; then each
control's ``.value`` is set from code, as the widget comm does when a user
clicks in the browser, cycling through its values ``--rounds`` times
(default 3). The **update** time runs from setting the value until the
observer returns, i.e. the table is replaced and every artist is updated
(what a test or an export can read). A Jupyter kernel then renders the
figure to PNG and sends it (``Explorer.png``); that **render** is timed apart
(Agg, at the explorer's dpi), since it does not depend on the computation.

A change is a *first visit* when the explorer has to read or fit something
it has not seen: a session's MD map and voxel table (roi_explorer keeps the
last eight sessions), or a (region, outcome, change, covariates) model
(outcome_explorer keeps every one it fitted). Thresholds, views and display
choices never read or fit anything.

Judged by ``_render.GOALS``: the worst control's median update (kernel side;
the browser adds the round trip and the image decode).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import _common as C
import numpy as np


def _sequences(w, results, kind: str) -> dict:
    """Values to set, per control (cycled ``rounds`` times; each differs from the last)."""
    regions = results.regions
    if kind == "roi":
        subjects = [v for _, v in w.controls["subject"].options][1:6]
        return {
            "probability_threshold": [0.3, 0.4, 0.5, 0.15, 0.25],
            "csf_md_threshold": [0.9e-3, 1.2e-3, 1.5e-3, float("inf"), 1.1e-3],
            "region": regions[1:] + regions[:1],
            "view": ["axial", "sagittal", "coronal"],
            "subject": subjects + [w.controls["subject"].value],
            "session": ["post", "pre"],
        }
    return {
        "region": regions[1:] + regions[:1],
        "outcome": ["qids", "madrs"],
        "change": ["percent", "absolute"],
        "arm": ["ketamine", "saline", "both"],
        "method": ["spearman", "pearson"],
        "covariates": ["age+sex", "none"],
    }


def _visit_key(w, kind: str):
    v = w.values
    if kind == "roi":
        return ("session", v["subject"], v["session"])
    return ("model", v["region"], v["outcome"], v["change"], v["covariates"])


def time_controls(w, results, kind: str, rounds: int) -> list[dict]:
    """Set every control's values; one record per change."""
    seen = {_visit_key(w, kind)}
    out = []
    for name, values in _sequences(w, results, kind).items():
        for _ in range(rounds):
            for value in values:
                if w.controls[name].value == value:
                    continue
                before = w.table
                t0 = time.perf_counter()
                w.controls[name].value = value
                t_update = time.perf_counter() - t0
                if w.table is before:
                    raise SystemExit(f"{kind}.{name} = {value!r}: the table was not updated")
                key = _visit_key(w, kind)
                first = key not in seen
                seen.add(key)
                t0 = time.perf_counter()
                w.png()
                t_png = time.perf_counter() - t0
                out.append({"control": name, "value": value, "update": t_update,
                            "png": t_png, "first": first})
    return out


def summarise(records: list[dict]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["control"] for r in records):
        rs = [r for r in records if r["control"] == name]
        up = np.array([r["update"] for r in rs]) * 1e3
        png = np.array([r["png"] for r in rs]) * 1e3
        first = np.array([r["update"] for r in rs if r["first"]]) * 1e3
        again = np.array([r["update"] for r in rs if not r["first"]]) * 1e3
        rows.append({"control": name, "n": len(rs), "median": float(np.median(up)),
                     "max": float(up.max()),
                     "first": float(np.median(first)) if first.size else float("nan"),
                     "n_first": int(first.size),
                     "again": float(np.median(again)) if again.size else float("nan"),
                     "png": float(np.median(png)),
                     "total": float(np.median(up + png))})
    return rows


def _ms(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x:.0f}"


def table_lines(kind: str, rows: list[dict], build_s: float) -> list[str]:
    what = ("reading one session and the first update" if kind == "roi" else
            "the first model fit, with the statsmodels import, and the first update")
    lines = [f"`{kind}_explorer(results)`: built in {build_s * 1e3:.0f} ms ({what}).", "",
             "| control | changes | update median (ms) | max | first visits: median (n) | "
             "repeats: median | PNG render median | update + render median |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        first = f"{_ms(r['first'])} ({r['n_first']})" if r["n_first"] else "- (0)"
        lines.append(f"| `{r['control']}` | {r['n']} | {r['median']:.1f} | {_ms(r['max'])} | "
                     f"{first} | {_ms(r['again'])} | {_ms(r['png'])} | {_ms(r['total'])} |")
    return lines


def measure(*, results_dir: Path | None = None, rounds: int = 3) -> dict:
    """Build each explorer on the demo and time every control's updates."""
    import matplotlib

    matplotlib.use("Agg")
    from ketamine_nb.widgets import outcome_explorer, roi_explorer

    out_dir, results = C.results_or_demo(results_dir)
    n = results.roi_deltas["participant_id"].nunique()
    print(f"results: {out_dir} ({n} participants, {len(results.sessions)} sessions); "
          f"load average {C.loadavg()}", flush=True)

    lines = [f"`benchmarks/bench_widgets.py --rounds {rounds}` on "
             f"`{'the demo' if results_dir is None else out_dir}` ({n} participants). "
             "Update: from setting a control's `.value` from code until the table and the "
             "artists are updated (kernel side); render: `Explorer.png()` (Agg PNG at the "
             "explorer's dpi, what a kernel sends after each update). First visits read a "
             "session from disk (roi) or fit a model configuration for the first time "
             "(outcome).", ""]
    metrics = {"participants_count": n}
    for kind, build in (("roi", roi_explorer), ("outcome", outcome_explorer)):
        t0 = time.perf_counter()
        w = build(results)
        build_s = time.perf_counter() - t0
        rows = summarise(time_controls(w, results, kind, rounds))
        lines += table_lines(kind, rows, build_s) + [""]
        print(f"{kind}_explorer timed", flush=True)
        metrics[f"{kind}_build_s"] = build_s
        for r in rows:
            metrics[f"{kind}_{r['control']}_median_update_s"] = r["median"] / 1e3
        metrics[f"{kind}_worst_median_update_s"] = max(r["median"] for r in rows) / 1e3
        metrics[f"{kind}_worst_update_plus_render_s"] = max(r["total"] for r in rows) / 1e3
    metrics["worst_median_update_s"] = max(metrics["roi_worst_median_update_s"],
                                           metrics["outcome_worst_median_update_s"])
    return C.result("bench_widgets", "explorer latency on the demo",
                    options={"results": str(results_dir) if results_dir else "demo",
                             "rounds": rounds}, metrics=metrics, details=lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=None,
                    help="derivatives folder (default: <data home>/demo/derivatives)")
    ap.add_argument("--rounds", type=int, default=3, help="passes over each control's values")
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_widgets.json and regenerate RESULTS.md")
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(results_dir=args.results, rounds=args.rounds), args.record)


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
