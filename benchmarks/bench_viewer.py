#!/usr/bin/env python
"""The 3D brain viewer (#17): kernel-side latency of a control change, and what is sent.

On a derivatives folder (``--results DIR``; default the demo,
``<data home>/demo/derivatives``, prepared first with ``ketamine-nb demo`` when
missing), ``brain_viewer(results, webgl=True)`` is built once; then each
control's ``.value`` is set from code, as the widget comm does when a user
moves it in the browser, ``--rounds`` times over a list of values. The
**update** time runs from setting the value until the observers return: the
traitlets are set and their messages handed to the comm, and (region, arm,
outcome) the scatter's artists and the table are updated. In a Jupyter kernel
the scatter is then rendered to PNG (``Explorer.png``), timed apart.

Every message the widgets send is counted (``ipywidgets.Widget._send``, the
state's JSON plus binary buffers): a threshold, opacity or region change must
send a few traitlets and no volume. Changing the map to one not shown before
*computes* it (the mean ΔMD of an arm reads every participant's maps; the t
map fits the voxelwise OLS) and sends one volume: those first visits are
reported apart; coming back to a map sends only the list of volumes.
The payload of each volume is the size of its gzipped NIfTI (``int16`` with a
scale factor, regions ``uint8``, 3 mm template grid).

Judged by ``_render.GOALS`` (#17): ``viewer_median_update_s`` is the worst
control's median update, first map visits excluded; ``viewer_max_payload_bytes``
the largest volume sent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import _common as C
import numpy as np


def _spy():
    """Count what the widgets send: a list of (widget class, state keys, bytes)."""
    import ipywidgets

    log: list = []
    orig = ipywidgets.Widget._send

    def spy(self, msg, buffers=None):
        size = len(json.dumps(msg.get("state", msg.get("content", {})), default=str))
        log.append((type(self).__name__, sorted(msg.get("state", {})),
                    size + sum(len(b) for b in buffers or [])))
        return orig(self, msg, buffers)

    ipywidgets.Widget._send = spy
    return log


def _sequences(v, rounds: int) -> dict:
    t = v.controls["threshold"]
    regions = list(v.data.regions)
    return {
        "threshold": [float(x) for x in np.linspace(t.max * 0.1, t.max * 0.9, 9)],
        "opacity": [0.2, 0.5, 0.9, 0.7],
        "region": regions[1:] + regions[:1],
        "arm": ["ketamine", "saline", "both"],
        "outcome": ["qids", "madrs"],
        "map": ["t", "template", "md", "fa", "mean_delta_md"],
    }


def time_controls(v, rounds: int, log: list) -> list[dict]:
    out = []
    for _ in range(rounds):
        for name, values in _sequences(v, rounds).items():
            for value in values:
                c = v.controls[name]
                if c.value == value:
                    continue
                n_payloads = len(v.payload_bytes)
                del log[:]
                t0 = time.perf_counter()
                c.value = value
                dt = time.perf_counter() - t0
                first = len(v.payload_bytes) > n_payloads
                sent = sum(s[2] for s in log)
                png = float("nan")
                if name in ("region", "arm", "outcome"):
                    t1 = time.perf_counter()
                    v.png()
                    png = time.perf_counter() - t1
                out.append({"control": name, "value": value, "update": dt, "first": first,
                            "sent_bytes": sent, "png": png,
                            "message": v.message.value != ""})
    return out


def summarise(records: list[dict]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["control"] for r in records):
        rs = [r for r in records if r["control"] == name]
        again = [r for r in rs if not r["first"]]
        first = [r for r in rs if r["first"]]
        png = [r["png"] for r in rs if np.isfinite(r["png"])]
        rows.append({
            "control": name, "n": len(rs),
            "again": float(np.median([r["update"] for r in again])) if again else float("nan"),
            "again_max": float(max(r["update"] for r in again)) if again else float("nan"),
            "first": float(np.median([r["update"] for r in first])) if first else float("nan"),
            "n_first": len(first),
            "sent_again": max((r["sent_bytes"] for r in again), default=0),
            "png": float(np.median(png)) if png else float("nan"),
            "messages": sum(r["message"] for r in rs)})
    return rows


def measure(*, results_dir: Path | None = None, rounds: int = 3) -> dict:
    """Build the viewer on the results and time every control's changes."""
    import matplotlib

    matplotlib.use("Agg")

    out_dir, results = C.results_or_demo(results_dir)
    n = results.roi_deltas["participant_id"].nunique()
    print(f"results: {out_dir} ({n} participants); load average {C.loadavg()}", flush=True)
    log = _spy()
    t0 = time.perf_counter()
    from ketamine_nb.widgets import brain_viewer

    v = brain_viewer(results, webgl=True)
    build_s = time.perf_counter() - t0
    records = time_controls(v, rounds, log)
    rows = summarise(records)
    payloads = {str(k): int(b) for k, b in v.payload_bytes.items()}
    fast = [r for r in rows if np.isfinite(r["again"])]
    worst = max(fast, key=lambda r: r["again"])
    firsts = [r["update"] for r in records if r["first"]]
    lines = [f"`benchmarks/bench_viewer.py --rounds {rounds}` on "
             f"`{'the demo' if results_dir is None else out_dir}` ({n} participants). "
             f"`brain_viewer(results)` built in {build_s:.2f} s (template, regions on the "
             "3 mm grid, the first map). Update: setting a control's `.value` until its "
             "observers return (kernel side); sent: the largest message of a repeat change "
             "(state JSON + buffers); PNG: the scatter re-rendered in a kernel after a "
             "region/arm/outcome change. First visits compute a map and send its volume.", "",
             "| control | changes | update median (ms), repeats | max | first visits: "
             "median (n) | sent per repeat change (bytes, max) | PNG median (ms) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        fv = f"{C.ms(r['first'])} ({r['n_first']})" if r["n_first"] else "- (0)"
        lines.append(f"| `{r['control']}` | {r['n']} | {C.ms(r['again'])} | "
                     f"{C.ms(r['again_max'])} | {fv} | {r['sent_again']} | {C.ms(r['png'])} |")
    lines += ["", "Volumes sent (gzipped NIfTI bytes): " + ", ".join(
        f"{k}: {b / 1e3:.0f} kB" for k, b in payloads.items())]
    failed = [r["value"] for r in records if r["message"]]
    notes = [f"maps that could not be shown (message instead): {sorted(set(map(str, failed)))}"
             ] if failed else []
    metrics = {"participants_count": n, "viewer_build_s": build_s,
               "viewer_median_update_s": worst["again"],
               "viewer_max_payload_bytes": max(payloads.values()),
               "viewer_total_payload_bytes": sum(payloads.values()),
               "viewer_max_repeat_message_bytes": max(r["sent_again"] for r in rows),
               "viewer_worst_first_map_s": max(firsts) if firsts else None}
    for r in rows:
        metrics[f"viewer_{r['control']}_median_update_s"] = r["again"]
    return C.result("bench_viewer", "3D brain viewer: control latency and payloads",
                    options={"results": str(results_dir) if results_dir else "demo",
                             "rounds": rounds}, metrics=metrics, details=lines, notes=notes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=None,
                    help="derivatives folder (default: <data home>/demo/derivatives)")
    ap.add_argument("--rounds", type=int, default=3, help="passes over each control's values")
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_viewer.json and regenerate RESULTS.md")
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(results_dir=args.results, rounds=args.rounds), args.record)


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
