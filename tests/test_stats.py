"""ROI statistics with known answers: exact relations, independent refits, BH by hand."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ketamine_nb.exceptions import InputError
from ketamine_nb.regions import STUDY_REGIONS
from ketamine_nb.simulate import SimulationParams, simulate_tables
from ketamine_nb.stats import (
    StatsConfig,
    adjust_pvalues,
    clinical_change,
    freedman_lane,
    model_formula,
    region_stats,
    reliable_change,
    stats_input,
)


def _tables(rng, n_ket=40, n_sal=20, slope_ket=2.0, slope_sal=-1.0, noise=0.0):
    """ROI deltas and scores with delta_score = slope[arm] * delta_md_e6 + 3 (+ noise)."""
    n = n_ket + n_sal
    pids = [f"sub-{i:03d}" for i in range(1, n + 1)]
    arm = np.array(["ketamine"] * n_ket + ["saline"] * n_sal)
    md_pre = rng.uniform(0.75e-3, 0.85e-3, n)
    d_e6 = rng.normal(0, 10, n)
    slope = np.where(arm == "ketamine", slope_ket, slope_sal)
    pre = rng.integers(20, 45, n).astype(float)
    delta = slope * d_e6 + 3 + noise * rng.normal(size=n)
    deltas = pd.DataFrame({"participant_id": pids, "arm": arm, "region": "BA10_L",
                           "md_pre": md_pre, "md_post": md_pre + d_e6 * 1e-6,
                           "delta_md": d_e6 * 1e-6})
    scores = pd.DataFrame({"participant_id": pids, "arm": arm, "madrs_pre": pre,
                           "madrs_post": pre + delta, "qids_pre": np.round(pre / 2),
                           "qids_post": np.round(pre / 2) + np.round(delta / 2)})
    return deltas, scores


def test_exact_linear_relation_gives_r_one_and_the_planted_slopes(rng):
    deltas, scores = _tables(rng)
    rows, dropped = stats_input(deltas, scores, config=StatsConfig(outcomes=("madrs",)))
    assert dropped.empty and len(rows) == 60
    t = region_stats(rows, config=StatsConfig(outcomes=("madrs",), n_permutations=200,
                                              n_bootstrap=200)).iloc[0]
    assert t["r_ketamine"] == pytest.approx(1.0, abs=1e-12)
    assert t["r_saline"] == pytest.approx(-1.0, abs=1e-12)
    assert t["rho_ketamine"] == pytest.approx(1.0)
    assert t["slope_ketamine"] == pytest.approx(2.0, rel=1e-9)
    assert t["slope_saline"] == pytest.approx(-1.0, rel=1e-9)
    assert t["beta_interaction"] == pytest.approx(3.0, rel=1e-9)
    assert t["n_ketamine"] == 40 and t["n_saline"] == 20
    assert t["formula"] == model_formula()


def test_interaction_p_equals_an_independent_lstsq_fit(rng):
    deltas, scores = _tables(rng, slope_ket=0.3, slope_sal=0.1, noise=8.0)
    rows, _ = stats_input(deltas, scores, config=StatsConfig(outcomes=("madrs",)))
    t = region_stats(rows, config=StatsConfig(outcomes=("madrs",), n_permutations=0,
                                              n_bootstrap=0, statistic="t")).iloc[0]
    x = rows["delta_md_e6"].to_numpy()
    k = (rows["arm"] == "ketamine").to_numpy(float)
    X = np.column_stack([np.ones_like(x), k, x, x * k, rows["score_pre"]])
    y = rows["delta_score"].to_numpy()
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    res = y - X @ beta
    dof = len(y) - X.shape[1]
    cov = (res @ res) / dof * np.linalg.inv(X.T @ X)
    se = np.sqrt(cov[3, 3])
    p = 2 * sps.t.sf(abs(beta[3] / se), dof)
    assert t["beta_interaction"] == pytest.approx(beta[3], rel=1e-9)
    assert t["se_interaction"] == pytest.approx(se, rel=1e-9)
    assert t["p_interaction"] == pytest.approx(p, rel=1e-8)
    # Simple slopes: saline = beta_x, ketamine = beta_x + beta_int, with their SEs.
    assert t["slope_ketamine"] == pytest.approx(beta[2] + beta[3], rel=1e-9)
    assert t["se_slope_ketamine"] == pytest.approx(
        np.sqrt(cov[2, 2] + cov[3, 3] + 2 * cov[2, 3]), rel=1e-9)


def test_q_values_equal_benjamini_hochberg_by_hand():
    p = np.array([0.001, 0.04, 0.03, 0.2, 0.5, 0.012, np.nan])
    m = 6
    order = np.argsort(p[:6])
    ranked = p[:6][order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    expected = np.empty(m)
    expected[order] = np.minimum(q_sorted, 1)
    q = adjust_pvalues(p)
    np.testing.assert_allclose(q[:6], expected)
    assert np.isnan(q[6])
    holm = adjust_pvalues(p, "holm")
    assert holm[0] == pytest.approx(0.006)


def test_freedman_lane_is_exact_for_a_strong_effect_and_calibrated_under_the_null(rng):
    deltas, scores = _tables(rng, slope_ket=2.0, slope_sal=0.0, noise=5.0)
    rows, _ = stats_input(deltas, scores, config=StatsConfig(outcomes=("madrs",)))
    term = "delta_md_e6:C(arm, Treatment('saline'))[T.ketamine]"
    p = freedman_lane(rows, model_formula(), term, n_permutations=999,
                      random_state=np.random.default_rng(1))
    assert p == pytest.approx(1 / 1000)
    assert freedman_lane(rows, model_formula(), term, n_permutations=999,
                         random_state=np.random.default_rng(1)) == p   # seeded: reproducible
    # Under the null the permutation p tracks the OLS p.
    deltas, scores = _tables(rng, slope_ket=0.2, slope_sal=0.2, noise=8.0)
    rows, _ = stats_input(deltas, scores, config=StatsConfig(outcomes=("madrs",)))
    t = region_stats(rows, config=StatsConfig(outcomes=("madrs",), n_permutations=5000,
                                              n_bootstrap=0)).iloc[0]
    assert t["p_perm_interaction"] == pytest.approx(t["p_interaction"], abs=0.03)


def test_missing_scores_drop_out_of_that_outcome_only(rng):
    deltas, scores = _tables(rng, noise=1.0)
    scores.loc[scores["participant_id"] == "sub-003", "qids_post"] = np.nan
    rows, dropped = stats_input(deltas, scores)
    assert (rows["outcome"] == "madrs").sum() == 60
    assert (rows["outcome"] == "qids").sum() == 59
    assert dropped[["region", "outcome", "n_dropped", "participants"]].values.tolist() == [
        ["BA10_L", "qids", 1, "sub-003"]]
    t = region_stats(rows, config=StatsConfig(n_permutations=0, n_bootstrap=0))
    assert t.set_index("outcome").loc["qids", "n_ketamine"] == 39
    assert t.set_index("outcome").loc["madrs", "n_ketamine"] == 40


def test_clinical_change_response_and_remission():
    scores = pd.DataFrame({"participant_id": ["a", "b", "c", "d"], "arm": "ketamine",
                           "madrs_pre": [30, 30, 30, np.nan], "madrs_post": [15, 16, 8, 10]})
    c = clinical_change(scores, ("madrs",))
    assert c["delta_score"].tolist()[:3] == [-15, -14, -22]
    assert c["pct_change"].iloc[0] == pytest.approx(-50)
    assert c["responder"].tolist()[:3] == [1, 0, 1]
    assert c["remitter"].tolist()[:3] == [0, 0, 1]
    assert np.isnan(c["delta_score"].iloc[3]) and np.isnan(c["responder"].iloc[3])


def test_covariates_enter_the_formula_and_unknown_ones_are_refused(rng):
    deltas, scores = _tables(rng, noise=2.0)
    participants = scores[["participant_id"]].assign(age=rng.integers(20, 60, 60))
    cfg = StatsConfig(outcomes=("madrs",), covariates=("age",), n_permutations=0,
                      n_bootstrap=0)
    rows, _ = stats_input(deltas, scores, config=cfg, participants=participants)
    t = region_stats(rows, config=cfg).iloc[0]
    assert t["formula"].endswith("+ score_pre + age")
    with pytest.raises(InputError, match="covariate"):
        stats_input(deltas, scores, config=StatsConfig(covariates=("height",)))


@pytest.fixture(scope="module")
def default_cohort_tables():
    return simulate_tables(SimulationParams(), seed=0)


def test_planted_signs_come_back_on_the_default_cohort(default_cohort_tables):
    """98 subjects, the planted truth plus the measurement noise the pipeline shows."""
    d = default_cohort_tables
    truth = d["ground_truth"].copy()
    rng = np.random.default_rng(5)
    # Pipeline-sized error on each session's regional MD: 0.5 % (the pipeline recovers
    # the true ΔMD at r = 0.94 on the simulated cohort; see test_pipeline.py).
    for col in ("md_pre", "md_post"):
        truth[col] = truth[col] * (1 + rng.normal(0, 0.005, len(truth)))
    truth["delta_md"] = truth["md_post"] - truth["md_pre"]
    rows, _ = stats_input(truth, d["scores"])
    t = region_stats(rows, config=StatsConfig(outcomes=("madrs", "qids"),
                                              n_permutations=1000, n_bootstrap=0))
    m = t[t["outcome"] == "madrs"].set_index("region")
    assert m.loc["BA10_L", "slope_ketamine"] > 0 and m.loc["BA10_L", "beta_interaction"] > 0
    assert m.loc["amygdala_L", "slope_ketamine"] > 0
    assert m.loc["amygdala_L", "beta_interaction"] > 0
    assert m.loc["BA10_R", "slope_ketamine"] > 0 and m.loc["BA10_R", "slope_saline"] > 0
    for r in ("hippocampus_L", "hippocampus_R"):
        assert m.loc[r, "slope_ketamine"] < 0 and m.loc[r, "beta_interaction"] < 0
    assert "matches_study" not in t
    assert m.loc["amygdala_L", "verdict"] == "consistent"
    assert (m["verdict"] != "contradicts").all()
    assert m.loc["amygdala_L", "q_fdr"] < 0.05
    assert m.loc["vACC", "verdict"] == "not reported"
    assert t.set_index(["region", "outcome"]).loc[("hippocampus_L", "qids"),
                                                  "verdict"] == "not reported"


@pytest.mark.slow
def test_family_wise_error_is_near_nominal_under_the_null():
    """20 null cohorts (no planted effect): BH at 0.05 controls the FWER under the null."""
    params = SimulationParams(effect_slope=0.0)
    any_hit, pvals = 0, []
    for seed in range(20):
        d = simulate_tables(params, seed=100 + seed)
        rows, _ = stats_input(d["ground_truth"], d["scores"])
        t = region_stats(rows, config=StatsConfig(n_permutations=0, n_bootstrap=0))
        any_hit += bool((t["q_fdr"] < 0.05).any())
        pvals.extend(t["p_interaction"])
    assert any_hit <= 3                 # expected 1 of 20; P(> 3) < 2 %
    frac = np.mean(np.array(pvals) < 0.05)
    assert 0.01 <= frac <= 0.10         # per-test rate near 5 % (280 correlated tests)


def test_cli_stats_writes_tables_that_refit_exactly(tmp_path, rng):
    deltas, scores = _tables(rng, noise=3.0)
    deltas = pd.concat([deltas.assign(region=r) for r in STUDY_REGIONS[:2]])
    deltas.to_csv(tmp_path / "roi_deltas.tsv", sep="\t", index=False)
    scores.to_csv(tmp_path / "scores.tsv", sep="\t", index=False)
    proc = subprocess.run([sys.executable, "-m", "ketamine_nb.cli", "stats", str(tmp_path),
                           "--permutations", "200", "--bootstrap", "100"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "stats_roi.tsv", sep="\t")
    inp = pd.read_csv(tmp_path / "stats_input.tsv", sep="\t")
    assert len(table) == 4 and len(inp) == 4 * 60
    import statsmodels.formula.api as smf

    row = table.iloc[3]
    sub = inp[(inp["region"] == row["region"]) & (inp["outcome"] == row["outcome"])]
    refit = smf.ols(row["formula"], data=sub).fit()
    term = "delta_md_e6:C(arm, Treatment('saline'))[T.ketamine]"
    assert refit.params[term] == pytest.approx(row["beta_interaction"], rel=1e-8)
    assert refit.pvalues[term] == pytest.approx(row["p_interaction"], rel=1e-6)
    missing = subprocess.run([sys.executable, "-m", "ketamine_nb.cli", "stats",
                              str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert missing.returncode == 2 and "ketamine-nb run" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_fisher_ci_equals_the_formula_by_hand(rng):
    from ketamine_nb.stats import correlation_table

    deltas, scores = _tables(rng, slope_ket=0.3, slope_sal=0.1, noise=8.0)
    rows, _ = stats_input(deltas, scores, config=StatsConfig(outcomes=("madrs",)))
    t = correlation_table(rows, n_bootstrap=0).set_index("arm")
    for arm, g in rows.groupby("arm"):
        r = np.corrcoef(g["delta_md_e6"], g["delta_score"])[0, 1]
        z, se = np.arctanh(r), 1 / np.sqrt(len(g) - 3)
        assert t.loc[arm, "r"] == pytest.approx(r, rel=1e-12)
        assert t.loc[arm, "r_ci_low"] == pytest.approx(np.tanh(z - 1.959964 * se), rel=1e-6)
        assert t.loc[arm, "r_ci_high"] == pytest.approx(np.tanh(z + 1.959964 * se), rel=1e-6)


def test_reliable_change_uses_the_saline_spread():
    deltas = pd.DataFrame({
        "participant_id": [f"s{i}" for i in range(8)],
        "arm": ["saline"] * 4 + ["ketamine"] * 4, "region": "A",
        "md_pre": 0.8e-3,
        "delta_md": np.array([-2, -1, 1, 2, 10, 0.5, -6, 3]) * 1e-6})
    per, summary = reliable_change(deltas)
    sd = np.std([-2, -1, 1, 2], ddof=1) * 1e-6
    assert summary["sd_delta_reference"].iloc[0] == pytest.approx(sd)
    assert summary["sem_session"].iloc[0] == pytest.approx(sd / np.sqrt(2))
    np.testing.assert_allclose(per["rci"], deltas["delta_md"] / sd)
    assert per.loc[per.arm == "ketamine", "reliable"].tolist() == [True, False, True, False]
    assert summary["reliable_share_ketamine"].iloc[0] == pytest.approx(0.5)


def test_reliable_change_is_centred_on_the_control_mean_change():
    """A drift of +5e-6 shared by everyone is not a reliable change; the control is read."""
    base = np.array([-2, -1, 1, 2, 10, 0.5, -6, 3]) * 1e-6
    deltas = pd.DataFrame({
        "participant_id": [f"s{i}" for i in range(8)],
        "arm": ["midazolam"] * 4 + ["ketamine"] * 4, "region": "A",
        "md_pre": 0.8e-3, "delta_md": base + 5e-6})
    per, summary = reliable_change(deltas)
    sd = np.std([-2, -1, 1, 2], ddof=1) * 1e-6
    assert summary["reference_arm"].iloc[0] == "midazolam"
    assert summary["mean_delta_reference"].iloc[0] == pytest.approx(5e-6)
    np.testing.assert_allclose(per["rci"], base / sd)   # the shift is gone
    assert per.loc[per.arm == "ketamine", "reliable"].tolist() == [True, False, True, False]
