"""The one renderer of the benchmarks: history JSON files, RESULTS.md, verdicts.

Every ``bench_*.py`` measures into a plain dict (its ``measure(**options)``,
built with :func:`_common.result`) and hands it to :func:`report`, which

* prints the run's details and one summary line per goal, with the verdict
  computed here from :data:`GOALS` (never written by a script);
* with ``record=True`` writes the dict to ``history/<date>_<bench>.json`` and
  regenerates ``RESULTS.md`` from every file in ``history/``.

A result dict holds ``bench``, ``title``, ``date`` (ISO 8601 with offset),
``commit``, ``machine``, ``load``, ``options``, ``metrics`` (flat
``{name: number}``, SI units with the unit as the name's suffix: ``_s``,
``_bytes``, ``_mm``, ``_ratio``, ``_fraction``, ``_count``, ``_r``,
``_bool``) and optionally ``details`` (Markdown lines printed after the run
and kept in the JSON, never in RESULTS.md) and ``notes``.

Goals live in ONE table, :data:`GOALS`: a row names the benchmark and the
metric it judges, the comparison and the target. A new budget is a new row.
This module uses the standard library only (the tests import it).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
HISTORY = HERE / "history"
RESULTS = HERE / "RESULTS.md"
#: RESULTS.md never grows beyond this many lines.
MAX_LINES = 200
#: Secondary figures shown per benchmark in RESULTS.md (the JSON keeps them all).
MAX_FIGURES = 10


@dataclass(frozen=True)
class Goal:
    """One budget: ``metric`` of ``bench``'s latest run compared with ``target``."""

    issue: str
    text: str
    bench: str
    metric: str
    op: str  # "<=" or ">="
    target: float
    #: metrics of the same run shown beside the figure (e.g. the two sides of a ratio)
    context: tuple[str, ...] = ()

    def passes(self, value: float) -> bool:
        """Whether ``value`` meets the goal (NaN never does)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.op == "<=":
            return value <= self.target
        if self.op == ">=":
            return value >= self.target
        raise ValueError(f"goal {self.text!r}: unknown comparison {self.op!r}")


G = Goal
#: Every budget of the issues, in one table. ``bench`` names the script (or a
#: record made by hand, e.g. ``readme_command1``); rows whose benchmark has not
#: been written yet show "not measured".
GOALS: tuple[Goal, ...] = (
    # performance issue #7
    G("#7", "MD fit, ours / MRtrix3 wall time, file to file, simulated session", "bench_md_fit",
      "session_ours_over_mrtrix_files_ratio", "<=", 0.5,
      ("session_ours_files_wall_s", "session_mrtrix_files_wall_s")),
    G("#7", "MD fit, ours / MRtrix3 wall time, file to file, issue-sized volume", "bench_md_fit",
      "issue_ours_over_mrtrix_files_ratio", "<=", 0.5,
      ("issue_ours_files_wall_s", "issue_mrtrix_files_wall_s")),
    G("#7", "MD fit, voxels within 1e-4 of dipy WLS, issue-sized volume", "bench_md_fit",
      "issue_within_1e-4_of_dipy_fraction", ">=", 0.999),
    G("#7", "MD fit, voxels within 1e-4 of dipy WLS, simulated session", "bench_md_fit",
      "session_within_1e-4_of_dipy_fraction", ">=", 0.999),
    G("#7", "one session, ours / plain dipy + nilearn script, new processes",
      "bench_session_vs_script", "ours_over_script_new_process_ratio", "<=", 0.33,
      ("ours_new_process_wall_s", "script_new_process_wall_s")),
    G("#7", "one session, regional MD ours vs the script, largest difference",
      "bench_session_vs_script", "regional_md_max_abs_diff_fraction", "<=", 0.05),
    G("#7", "`ketamine-nb demo` (98 participants) wall time", "bench_demo", "wall_s", "<=", 180),
    G("#14", "`ketamine-nb demo` with everything on, at most", "bench_demo", "wall_s", "<=",
      240),
    G("#7", "`ketamine-nb demo` peak memory (PSS, process tree)", "bench_demo",
      "peak_pss_bytes", "<=", 1.5e9),
    G("#7", "`ketamine-nb demo` disk", "bench_demo", "disk_bytes", "<=", 1e9),
    G("#7", "run stage, speed-up 2 workers vs 1", "bench_dask", "speedup_ratio", ">=", 1.7,
      ("workers1_wall_s", "workers2_wall_s")),
    G("#7", "run stage, outputs identical with 1 and 2 workers", "bench_dask",
      "outputs_identical_bool", ">=", 1),
    G("#7", "`import ketamine_nb` (fresh process, median)", "bench_import",
      "import_ketamine_nb_wall_s", "<=", 1.0),
    G("#7", "widget update latency, worst control's median", "bench_widgets",
      "worst_median_update_s", "<=", 0.150),
    G("#4", "ROI table, 14 models, 5000 permutations + 2000 bootstrap", "bench_stats",
      "roi_table_wall_s", "<=", 2.0),
    G("#4", "robustness grid, per 100 specifications", "bench_stats",
      "robustness_grid_per_100_specs_wall_s", "<=", 10.0),
    G("#7", "registration default vs earlier dense 4 mm: CPU ratio", "bench_registration",
      "default_over_dense4_cpu_ratio", "<=", 1.0),
    G("#7", "registration default vs earlier: median error, excess", "bench_registration",
      "default_minus_dense4_error_median_mm", "<=", 0.05),
    G("#7", "registration default vs earlier: largest error, excess", "bench_registration",
      "default_minus_dense4_error_max_mm", "<=", 0.1),
    # simulator #2 / #13
    G("#13", "simulate the default cohort of 98 (realistic since 2026-12-01 07:07; warm; "
      "without the memory sampler since 2026-12-02), 2 cores",
      "bench_simulate",
      "warm_wall_s", "<=", 75),
    G("#13", "simulated cohort on disk", "bench_simulate", "warm_disk_bytes", "<=", 800e6),
    G("#2", "simulate, peak memory (PSS, warm caches)", "bench_simulate",
      "warm_peak_pss_bytes", "<=", 1e9),
    G("#2", "simulate, peak memory (PSS, cold data home)", "bench_simulate",
      "cold_peak_pss_bytes", "<=", 1e9),
    G("#2", "simulated voxel size", "bench_simulate", "voxel_size_mm", "<=", 3.0),
    G("#2", "simulated diffusion directions", "bench_simulate", "directions_count", ">=", 20),
    G("#13", "simulate, byte-identical for a seed (cold vs warm)", "bench_simulate",
      "cold_warm_identical_bool", ">=", 1),
    G("#13", "all artefacts on, default cohort (98): ΔMD vs truth, Pearson r",
      "bench_artefacts", "default_cohort_all_artefacts_delta_md_r", ">=", 0.85),
    G("#13", "all artefacts on, default cohort (98): regional MD error, largest",
      "bench_artefacts", "default_cohort_all_artefacts_md_max_abs_error_fraction", "<=", 0.05),
    # real scans #14
    G("#14", "realignment per session, ours / plain dipy `motion_correction`", "bench_realign",
      "ours_over_script_ratio", "<=", 1 / 3),
    G("#14", "registration per participant, ours / plain dipy affine + SyN",
      "bench_longitudinal", "ours_over_script_ratio", "<=", 1 / 3),
    G("#14", "uih-retest sub-01: largest regional |ΔMD| (goal)", "bench_realdata",
      "uih_sub01_max_abs_delta_md_fraction", "<=", 0.010),
    G("#14", "uih-retest sub-01: largest regional |ΔMD| (at most)", "bench_realdata",
      "uih_sub01_max_abs_delta_md_fraction", "<=", 0.015),
    # notebooks #6 / #16, viewer #17
    G("#16", "notebook series on the demo, kernel starts included", "bench_notebooks",
      "series_wall_s", "<=", 300),
    G("#16", "notebook kernel peak memory (PSS), worst notebook", "bench_notebooks",
      "kernel_peak_pss_bytes", "<=", 1.5e9),
    G("#16", "notebook cells that raised", "bench_notebooks", "cell_errors_count", "<=", 0),
    G("#17", "3D viewer, kernel-side latency of a control change (median)", "bench_viewer",
      "viewer_median_update_s", "<=", 0.050),
    G("#17", "3D viewer, largest map payload", "bench_viewer", "viewer_max_payload_bytes",
      "<=", 5e6),
)
del G

#: Figures without a goal, shown for the README and notebooks to quote (bench, metric, text).
QUOTED: tuple[tuple[str, str, str], ...] = (
    ("readme_command1", "demo_wall_s", "README command 1: `ketamine-nb demo`"),
    ("readme_command1", "install_s", "README command 1: the install"),
    ("readme_command1", "install_and_demo_wall_s", "README command 1: install + demo"),
    ("bench_demo", "simulate_stage_wall_s", "`ketamine-nb demo`: the simulation stage"),
    ("bench_demo", "run_stage_wall_s", "`ketamine-nb demo`: the run stage (2 workers)"),
    ("bench_demo", "cpu_s", "`ketamine-nb demo`: CPU time of the process tree"),
    ("bench_session", "warm_wall_s", "one session, `process_session`, warm"),
    ("bench_dask", "workers1_wall_s", "run stage, 1 worker (`bench_dask` cohort)"),
    ("bench_artefacts", "default_cohort_all_artefacts_delta_md_r_ci_low",
     "all artefacts on, default cohort: r, 95 % interval, lower end"),
    ("bench_realdata", "uih_sub01_max_abs_delta_md_vs_global_fraction",
     "uih-retest sub-01: largest regional |ΔMD| relative to the slab's grey matter"),
    ("bench_artefacts", "all_artefacts_delta_md_r",
     "all artefacts on, 12 participants (data/README table): r"),
    ("bench_artefacts", "all_artefacts_md_max_abs_error_fraction",
     "all artefacts on, 12 participants: regional MD error, largest"),
    *(("bench_notebooks", f"nb{i:02d}_wall_s", f"notebook {i:02d}, code on the demo")
      for i in range(8)),
)


# --------------------------------------------------------------------------
# Formatting


def unit_of(name: str) -> str:
    """The unit suffix of a metric name (``""`` when it has none)."""
    for suffix in ("_bytes", "_fraction", "_ratio", "_count", "_bool", "_mm", "_s", "_r"):
        if name.endswith(suffix):
            return suffix[1:]
    return ""


def fmt(name: str, value) -> str:
    """A metric's value for people: seconds, MB, %, as its name's unit says."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, str):
        return value
    unit = unit_of(name)
    if unit == "s":
        if abs(value) < 1:
            return f"{value * 1e3:.3g} ms"
        return f"{value:.3g} s" if abs(value) < 100 else f"{value:.0f} s"
    if unit == "bytes":
        return f"{value / 1e6:.0f} MB" if abs(value) >= 1e6 else f"{value / 1e6:.2f} MB"
    if unit == "fraction":
        return f"{100 * value:.4g} %"
    if unit == "bool":
        return "yes" if value else "no"
    if unit == "count":
        return f"{value:.0f}"
    if unit == "mm":
        return f"{value:.3g} mm"
    if unit == "r":
        return f"{value:.4f}"
    return f"{value:.3g}"


def fmt_target(goal: Goal) -> str:
    if unit_of(goal.metric) == "bool":
        return "yes"
    return f"{goal.op} {fmt(goal.metric, goal.target)}"


def label(name: str) -> str:
    """A metric name without its unit suffix, spaced."""
    unit = unit_of(name)
    stem = name[: -len(unit) - 1] if unit else name
    return stem.replace("_", " ")


# --------------------------------------------------------------------------
# Verdicts and history


def goals_of(bench: str) -> list[Goal]:
    return [g for g in GOALS if g.bench == bench]


def verdicts(result: dict) -> list[tuple[Goal, float | None, str]]:
    """(goal, value, "PASS" / "FAIL" / "not measured") for each goal of this result's bench."""
    out = []
    for g in goals_of(result["bench"]):
        v = result.get("metrics", {}).get(g.metric)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append((g, None, "not measured"))
        else:
            out.append((g, v, "PASS" if g.passes(v) else "FAIL"))
    return out


def history_path(result: dict, history: Path = HISTORY) -> Path:
    """``history/<YYYY-MM-DDTHHMM>_<bench>.json``, made unique with ``-2``, ``-3``, ..."""
    when = _dt.datetime.fromisoformat(result["date"])
    stem = f"{when:%Y-%m-%dT%H%M}_{result['bench']}"
    path, k = history / f"{stem}.json", 1
    while path.exists():
        k += 1
        path = history / f"{stem}-{k}.json"
    return path


def write_history(result: dict, history: Path = HISTORY) -> Path:
    """Write one result as a dated JSON file (atomically); return its path."""
    history.mkdir(parents=True, exist_ok=True)
    path = history_path(result, history)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=False, default=_jsonable) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)
    return path


def _jsonable(x):
    for attr in ("item", "tolist"):  # numpy scalars and arrays
        if hasattr(x, attr):
            return getattr(x, attr)()
    return str(x)


def load_history(history: Path = HISTORY) -> list[dict]:
    """Every result in ``history``, oldest first (by date, then file name)."""
    runs = []
    for path in sorted(Path(history).glob("*.json")):
        with open(path, encoding="utf-8") as fh:
            r = json.load(fh)
        r["_file"] = path.name
        runs.append(r)
    runs.sort(key=lambda r: (_when(r), r.get("order_in_run", 0), r["_file"]))
    return runs


def _when(r: dict) -> _dt.datetime:
    d = _dt.datetime.fromisoformat(r["date"])
    return d if d.tzinfo else d.replace(tzinfo=_dt.UTC)


def _value(r: dict, metric: str):
    v = r.get("metrics", {}).get(metric)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def latest_with(runs: list[dict], bench: str, metric: str) -> tuple[dict | None, list]:
    """The newest run of ``bench`` with ``metric``, and the older values (newest first)."""
    have = [r for r in runs if r["bench"] == bench and _value(r, metric) is not None]
    if not have:
        return None, []
    return have[-1], [_value(r, metric) for r in reversed(have[:-1])]


# --------------------------------------------------------------------------
# RESULTS.md


def _machine_key(r: dict) -> str:
    m = r.get("machine") or {}
    return (f"{m.get('cpus', '?')} CPUs, {m.get('cpu_model', '?')}, "
            f"{m.get('ram_gib', float('nan')):.1f} GiB")


def _commit(r: dict) -> str:
    c = str(r.get("commit") or "?")
    return _cell(c.replace(" (with uncommitted changes to ketamine_nb/)", " (dirty)"))


def _date(r: dict) -> str:
    """Date and time of a run; only the day, marked approximate, when the time is not known."""
    if r.get("date_note"):
        return f"{_when(r):%Y-%m-%d} (approx.)"
    return f"{_when(r):%Y-%m-%d %H:%M}"


def _load_text(r: dict) -> str:
    load = r.get("load") or {}
    before = load.get("before_1_5_15_min") or []
    if not before:
        return "not recorded"
    return f"{before[0]:.1f}" + (" busy" if load.get("busy") else "")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(runs: list[dict], *, max_lines: int = MAX_LINES) -> str:
    """RESULTS.md from the history (oldest first); at most ``max_lines`` lines."""
    machines: dict[str, str] = {}

    def mid(r):
        key = _machine_key(r)
        if key not in machines:
            machines[key] = f"M{len(machines) + 1}"
        return machines[key]

    head = [
        "# Benchmarks: goals, latest figures, verdicts",
        "",
        "<!-- Generated by benchmarks/_render.py from benchmarks/history/*.json: do not edit; "
        "goals live in _render.GOALS. -->",
        "",
        "Measured here, never in the unit tests. `bash benchmarks/run_all.sh` runs every "
        "benchmark and prints the verdicts; `RECORD=1` also writes one dated JSON per benchmark "
        "to `benchmarks/history/` and regenerates this page (see `benchmarks/README.md`). Each "
        "verdict is the latest figure against the goal, computed by the renderer. The machines "
        "are shared: \"busy\" marks a load average >= 0.5 when the run started; absolute times "
        "are then noisy, and ratios measured side by side in one run are the numbers to trust. "
        "Earlier values: newest first. Lessons of past runs: `benchmarks/history/NOTES.md`.",
        "",
        "## Goals",
        "",
        "| goal | issue | target | latest | verdict | earlier | date | commit | machine | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    goal_rows = []
    counts = {"PASS": 0, "FAIL": 0, "not measured": 0}
    for g in GOALS:
        r, older = latest_with(runs, g.bench, g.metric)
        if r is None:
            counts["not measured"] += 1
            goal_rows.append(f"| {_cell(g.text)} | {g.issue} | {_cell(fmt_target(g))} | - | "
                             f"not measured | - | - | - | - | - |")
            continue
        v = _value(r, g.metric)
        verdict = "PASS" if g.passes(v) else "FAIL"
        counts[verdict] += 1
        shown = fmt(g.metric, v)
        ctx = [f"{label(c)} {fmt(c, _value(r, c))}" for c in g.context
               if _value(r, c) is not None]
        if ctx:
            shown += " (" + "; ".join(ctx) + ")"
        earlier = ", ".join(fmt(g.metric, x) for x in older[:3]) or "-"
        goal_rows.append(
            f"| {_cell(g.text)} | {g.issue} | {_cell(fmt_target(g))} | {_cell(shown)} | "
            f"**{verdict}** | {_cell(earlier)} | {_date(r)} | "
            f"{_commit(r)} | {mid(r)} | {_load_text(r)} |")
    summary = (f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['not measured']} not "
               f"measured yet, of {len(GOALS)} goals.")

    quoted = ["", "## Figures quoted elsewhere (README, notebooks)", "",
              "| figure | latest | date | commit | machine | load |", "|---|---|---|---|---|---|"]
    for bench, metric, text in QUOTED:
        r, _ = latest_with(runs, bench, metric)
        if r is not None:
            quoted.append(f"| {_cell(text)} | {fmt(metric, _value(r, metric))} | "
                          f"{_date(r)} | {_commit(r)} | "
                          f"{mid(r)} | {_load_text(r)} |")
    if len(quoted) == 5:
        quoted = []

    latest: dict[str, dict] = {}
    for r in runs:
        latest[r["bench"]] = r
    goal_metrics = {(g.bench, g.metric) for g in GOALS}
    bench_rows = ["", "## Latest run of each benchmark", "",
                  "| benchmark | date | commit | machine | load | other figures of that run |",
                  "|---|---|---|---|---|---|"]
    for bench in sorted(latest):
        r = latest[bench]
        others = [(k, v) for k, v in r.get("metrics", {}).items()
                  if (bench, k) not in goal_metrics and not isinstance(v, (dict, list))]
        shown = "; ".join(f"{label(k)} {fmt(k, v)}" for k, v in others[:MAX_FIGURES])
        if len(others) > MAX_FIGURES:
            shown += f"; {len(others) - MAX_FIGURES} more in `history/{r['_file']}`"
        bench_rows.append(f"| `{bench}` | {_date(r)} | "
                          f"{_commit(r)} | {mid(r)} | {_load_text(r)} | "
                          f"{_cell(shown) or '-'} |")

    mach = ["", "## Machines", "", "| id | machine |", "|---|---|"]
    mach += [f"| {i} | {_cell(k)} |" for k, i in machines.items()]

    tail = ["", f"{len(runs)} runs in `benchmarks/history/`; the newest of each benchmark is "
            "shown."]
    lines = head + goal_rows + ["", summary] + quoted + mach + bench_rows + tail
    if len(lines) > max_lines:  # drop per-benchmark rows from the end, then say so
        keep = max_lines - len(head + goal_rows + quoted + mach + tail) - 4
        cut = bench_rows[: max(keep, 5)]
        lines = (head + goal_rows + ["", summary] + quoted + mach + cut
                 + ["", f"({len(bench_rows) - len(cut)} benchmark rows left out to keep "
                    f"this page under {max_lines} lines; see `benchmarks/history/`.)"] + tail)
        lines = lines[:max_lines]
    return "\n".join(lines) + "\n"


def write_results(history: Path = HISTORY, out: Path = RESULTS) -> Path:
    """Regenerate RESULTS.md from ``history`` (atomically)."""
    text = render(load_history(history))
    tmp = Path(out).with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return Path(out)


# --------------------------------------------------------------------------
# After a run


def summary_lines(result: dict) -> list[str]:
    """One line per goal of this run, with its verdict; one line when the bench has none."""
    out = []
    for g, v, verdict in verdicts(result):
        extra = [f"{label(c)} {fmt(c, result['metrics'].get(c))}" for c in g.context
                 if result["metrics"].get(c) is not None]
        out.append(f"{result['bench']}: {verdict} {g.text}: {fmt(g.metric, v)} "
                   f"(goal {fmt_target(g)})" + (f"; {'; '.join(extra)}" if extra else ""))
    if not out:
        first = list(result.get("metrics", {}).items())[:4]
        out.append(f"{result['bench']}: (no goal) "
                   + "; ".join(f"{label(k)} {fmt(k, v)}" for k, v in first))
    return out


def report(result: dict, *, record: bool = False, history: Path = HISTORY,
           out: Path = RESULTS) -> int:
    """Print a run's details and verdicts; with ``record``, write its JSON and RESULTS.md.

    Returns 0 (a FAIL is a finding, not a crash; run_all.sh reports script errors).
    """
    print()
    print(f"## {result['bench']}: {result.get('title', '')}")
    for ln in result.get("details", []):
        print(ln)
    load = result.get("load", {})
    print(f"- load average (1/5/15 min) before -> after: {load.get('before_1_5_15_min')} -> "
          f"{load.get('after_1_5_15_min')}{' (busy)' if load.get('busy') else ''}")
    lines = summary_lines(result)
    path = os.environ.get("BENCH_SUMMARY")
    for ln in lines:
        print(ln)
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(ln + "\n")
    if record:
        p = write_history(result, history)
        write_results(history, out)
        print(f"recorded in {p.relative_to(p.parent.parent)} and {Path(out).name}")
    return 0


def main(argv=None) -> int:
    """``python benchmarks/_render.py``: regenerate RESULTS.md from history/."""
    import argparse

    ap = argparse.ArgumentParser(description="Regenerate RESULTS.md from history/*.json.")
    ap.add_argument("--history", type=Path, default=HISTORY)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    path = write_results(args.history, args.out)
    n = len(path.read_text(encoding="utf-8").splitlines())
    print(f"wrote {path} ({n} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
