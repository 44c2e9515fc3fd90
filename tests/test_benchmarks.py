"""The benchmarks' renderer: verdicts from the goals table, history files, RESULTS.md.

The benchmarks themselves are never run here (speed is measured in benchmarks/,
never asserted in tests); these tests check the bookkeeping with fake results.
"""

import ast
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def R():
    spec = importlib.util.spec_from_file_location("_render_under_test", BENCH / "_render.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def fake(bench, date, metrics, *, load=0.2, commit="abc1234"):
    return {"bench": bench, "title": "fake", "date": date, "commit": commit,
            "machine": {"cpus": 2, "cpu_model": "Test CPU", "ram_gib": 8.0},
            "load": {"before_1_5_15_min": [load, load, load], "busy": load >= 0.5},
            "options": {}, "metrics": metrics, "details": ["| a | table |"]}


def goal_row(text, goal_text):
    rows = [ln for ln in text.splitlines() if ln.startswith(f"| {goal_text} |")]
    assert len(rows) == 1, goal_text
    return [c.strip() for c in rows[0].strip("|").split(" | ")]


def test_verdict_at_the_boundary(R):
    at_most = R.Goal("#0", "t", "b", "x_s", "<=", 1.0)
    assert at_most.passes(1.0) and not at_most.passes(1.0 + 1e-9)
    at_least = R.Goal("#0", "t", "b", "y_ratio", ">=", 1.7)
    assert at_least.passes(1.7) and not at_least.passes(1.6999)
    assert not at_most.passes(math.nan) and not at_least.passes(math.nan)
    with pytest.raises(ValueError):
        R.Goal("#0", "t", "b", "x_s", "<", 1.0).passes(0.5)


def test_render_judges_the_latest_run_of_each_goal(R, tmp_path):
    hist = tmp_path / "history"
    # import goal: <= 1.0 s. Older run exactly at the goal (PASS), newer just above (FAIL).
    R.write_history(fake("bench_import", "2026-01-01T10:00:00+00:00",
                         {"import_ketamine_nb_wall_s": 1.0}), hist)
    R.write_history(fake("bench_import", "2026-01-02T10:00:00+00:00",
                         {"import_ketamine_nb_wall_s": 1.02}, load=1.5, commit="def5678"),
                    hist)
    # speed-up goal: >= 1.7, met exactly; its side-by-side times are shown beside it.
    R.write_history(fake("bench_dask", "2026-01-01T11:00:00+00:00",
                         {"speedup_ratio": 1.7, "workers1_wall_s": 51.0,
                          "workers2_wall_s": 30.0, "outputs_identical_bool": 0}), hist)
    out = R.write_results(hist, tmp_path / "RESULTS.md")
    text = out.read_text()

    imp = goal_row(text, "`import ketamine_nb` (fresh process, median)")
    assert imp[3] == "1.02 s" and imp[4] == "**FAIL**"
    assert imp[5] == "1 s"                          # the earlier value
    assert imp[6] == "2026-01-02 10:00" and imp[7] == "def5678" and imp[9] == "1.5 busy"
    dask = goal_row(text, "run stage, speed-up 2 workers vs 1")
    assert dask[4] == "**PASS**" and "51 s" in dask[3] and "30 s" in dask[3]
    same = goal_row(text, "run stage, outputs identical with 1 and 2 workers")
    assert same[3] == "no" and same[4] == "**FAIL**"
    demo = goal_row(text, "`ketamine-nb demo` disk")
    assert demo[4] == "not measured"
    n_goals = len(R.GOALS)
    assert f"1 PASS, 2 FAIL, {n_goals - 3} not measured yet, of {n_goals} goals." in text
    # one JSON per run, named by date and benchmark; the details stay out of RESULTS.md
    assert sorted(p.name for p in hist.glob("*.json")) == [
        "2026-01-01T1000_bench_import.json", "2026-01-01T1100_bench_dask.json",
        "2026-01-02T1000_bench_import.json"]
    assert "| a | table |" not in text
    assert json.loads((hist / "2026-01-01T1100_bench_dask.json").read_text())[
        "metrics"]["speedup_ratio"] == 1.7


def test_same_minute_gets_a_new_file(R, tmp_path):
    r = fake("bench_stats", "2026-01-01T10:00:30+00:00", {"roi_table_wall_s": 0.5})
    a, b = R.write_history(r, tmp_path), R.write_history(r, tmp_path)
    assert a.name == "2026-01-01T1000_bench_stats.json"
    assert b.name == "2026-01-01T1000_bench_stats-2.json"


def test_results_md_stays_under_200_lines(R, tmp_path):
    hist = tmp_path / "history"
    for i in range(300):  # many benchmarks, many figures each
        metrics = {f"figure_{k}_s": float(k) for k in range(40)}
        R.write_history(fake(f"bench_fake{i:03d}", "2026-01-01T10:00:00+00:00", metrics), hist)
    text = R.write_results(hist, tmp_path / "RESULTS.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= R.MAX_LINES == 200
    assert all(f"| {g.text.replace('|', chr(92) + '|')} |" in text for g in R.GOALS)
    assert "left out to keep this page under 200 lines" in text


def test_summary_lines_carry_the_verdicts(R):
    res = fake("bench_stats", "2026-01-01T10:00:00+00:00",
               {"roi_table_wall_s": 2.5, "robustness_grid_per_100_specs_wall_s": 10.0})
    lines = R.summary_lines(res)
    assert any(ln.startswith("bench_stats: FAIL ROI table") and "2.5 s" in ln for ln in lines)
    assert any(ln.startswith("bench_stats: PASS robustness grid") for ln in lines)


def test_goal_metrics_name_their_unit(R):
    for g in R.GOALS:
        assert R.unit_of(g.metric), g.metric
        assert g.op in ("<=", ">=")


def test_every_benchmark_has_measure_and_a_thin_main():
    scripts = sorted(BENCH.glob("bench_*.py"))
    assert len(scripts) >= 10
    for path in scripts:
        tree = ast.parse(path.read_text(), filename=str(path))
        funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "measure" in funcs, f"{path.name}: no top-level measure()"
        assert "main" in funcs, f"{path.name}: no top-level main()"
        called = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr
                  for n in ast.walk(funcs["main"]) if isinstance(n, ast.Call)
                  and isinstance(n.func, (ast.Name, ast.Attribute))}
        assert "measure" in called and "report" in called, path.name
        text = path.read_text()
        assert "**PASS**" not in text and "'PASS'" not in text, f"{path.name} judges itself"


def test_committed_history_renders_to_the_committed_results_md(R):
    history = sorted((BENCH / "history").glob("*.json"))
    assert history, "benchmarks/history/ is empty"
    for p in history:
        r = json.loads(p.read_text())
        assert {"bench", "date", "commit", "machine", "load", "metrics"} <= set(r), p.name
        assert all(v is None or isinstance(v, (int, float)) for v in r["metrics"].values())
    rendered = R.render(R.load_history(BENCH / "history"))
    assert (BENCH / "RESULTS.md").read_text() == rendered, (
        "RESULTS.md is out of date: run `python benchmarks/_render.py`")
    assert len(rendered.splitlines()) <= 200
