"""ROI statistics with known answers: exact relations, independent refits, BH by hand."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

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
    with pytest.raises(InputError, match="covariate") as err:
        stats_input(deltas, scores, config=StatsConfig(covariates=("height",)),
                    participants=participants)
    # what each table has, the baseline scores apart, and the fix; no outcome's post score
    assert str(err.value) == (
        "covariate(s) height not found; participants.tsv has age; baseline scores usable "
        "as covariates: madrs_pre, qids_pre; add the column to participants.tsv or choose "
        "one of these")
    # without a participants table the message says so, not "participants.tsv has nothing"
    with pytest.raises(InputError) as err:
        stats_input(deltas, scores, config=StatsConfig(covariates=("age",)))
    assert str(err.value).startswith("covariate(s) age not found; no participants table was "
                                     "given (participants=); baseline scores usable")


@pytest.fixture(scope="module")
def default_cohort_tables():
    return simulate_tables(SimulationParams.idealised(), seed=0)


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
    params = SimulationParams.idealised(effect_slope=0.0)
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


# --- issue 15: q from the permutation p, the family, the sidecar -------------------------


def _two_region_rows(rng, noise=6.0):
    deltas, scores = _tables(rng, slope_ket=0.4, slope_sal=0.0, noise=noise)
    deltas = pd.concat([deltas, deltas.assign(region="vACC",
                                              delta_md=rng.normal(0, 1e-5, len(deltas)))])
    return stats_input(deltas, scores)[0]


def test_q_values_correct_the_permutation_p_by_default_and_say_so(rng):
    from ketamine_nb.stats import column_descriptions

    rows = _two_region_rows(rng)
    t = region_stats(rows, config=StatsConfig(n_permutations=499, n_bootstrap=0))
    assert len(t) == 4
    np.testing.assert_allclose(t["q_fdr"], adjust_pvalues(t["p_perm_interaction"]))
    assert (t["q_source"] == "p_perm_interaction").all()
    assert "4 tests" in t["family"].iloc[0]
    par = region_stats(rows, config=StatsConfig(n_permutations=499, n_bootstrap=0,
                                                q_from="parametric"))
    np.testing.assert_allclose(par["q_fdr"], adjust_pvalues(par["p_welch_interaction"]))
    # Without permutations the q values fall back to the parametric p, and say so.
    off = region_stats(rows, config=StatsConfig(n_permutations=None, n_bootstrap=0,
                                                statistic="t"))
    np.testing.assert_allclose(off["q_fdr"], adjust_pvalues(off["p_interaction"]))
    assert (off["q_source"] == "p_interaction").all() and off["p_perm_interaction"].isna().all()
    cols = column_descriptions(t, StatsConfig())
    assert set(cols) == set(t.columns)
    assert cols["q_fdr"]["Inference"].startswith("corrected: interaction")
    assert cols["p_perm_interaction"]["Inference"] == "uncorrected test"
    for c in ("r_ketamine", "r_partial_saline", "slope_ketamine", "p_slope_saline"):
        assert cols[c]["Inference"].startswith("descriptive"), c


def test_welch_columns_follow_an_independent_fit_and_the_interval_is_v_based(rng):
    rows = _two_region_rows(rng)
    t = region_stats(rows, config=StatsConfig(n_permutations=None, n_bootstrap=0)).iloc[0]
    g = rows[(rows.region == t["region"]) & (rows.outcome == t["outcome"])]
    x, k = g["delta_md_e6"].to_numpy(), (g["arm"] == "ketamine").to_numpy(float)
    X = np.column_stack([np.ones_like(x), k, x, x * k, g["score_pre"]])
    y = g["delta_score"].to_numpy()
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    e = y - X @ beta
    H = X @ np.linalg.pinv(X)
    w = np.empty(len(y))
    for a in (0, 1):    # Winkler's W: tr(R_g) / residual sum of squares of group g
        m = k == a
        w[m] = (1 - np.diag(H))[m].sum() / (e[m] @ e[m])
    se = np.sqrt(np.linalg.inv((X * w[:, None]).T @ X)[3, 3])
    assert t["v_interaction"] == pytest.approx(beta[3] / se, rel=1e-8)
    half = t["interaction_ci_high"] - t["beta_interaction"]
    assert half == pytest.approx(sps.t.ppf(0.975, t["df_welch"]) * se, rel=1e-8)


# --- the global covariate -------------------------------------------------------------------


def test_global_covariate_removes_a_shared_drift_and_is_not_a_region(rng):
    """Δscore follows a drift shared by every region (both arms); the region's own ΔMD
    is unrelated: without the covariate both per-arm slopes look real, with it they vanish.
    """
    from ketamine_nb.regions import GLOBAL_GM

    n_k, n_s = 60, 30
    n = n_k + n_s
    pids = [f"sub-{i:03d}" for i in range(n)]
    arm = np.array(["ketamine"] * n_k + ["saline"] * n_s)
    drift = rng.normal(0, 5, n)                     # 10⁻⁶ mm²/s, everywhere
    own = rng.normal(0, 5, n)
    pre = rng.integers(20, 40, n).astype(float)
    delta = -1.0 * drift + rng.normal(0, 0.5, n)
    scores = pd.DataFrame({"participant_id": pids, "arm": arm, "madrs_pre": pre,
                           "madrs_post": pre + delta})
    deltas = pd.concat([
        pd.DataFrame({"participant_id": pids, "arm": arm, "region": "vACC",
                      "md_pre": 0.8e-3, "md_post": 0.8e-3 + (drift + own) * 1e-6,
                      "delta_md": (drift + own) * 1e-6}),
        pd.DataFrame({"participant_id": pids, "arm": arm, "region": GLOBAL_GM,
                      "md_pre": 0.8e-3, "md_post": 0.8e-3 + drift * 1e-6,
                      "delta_md": drift * 1e-6})])
    kw = {"n_permutations": None, "n_bootstrap": 0}
    plain = region_stats(stats_input(deltas, scores)[0], config=StatsConfig(**kw))
    assert plain["region"].tolist() == ["vACC"]            # the global row is no region
    for arm in ("ketamine", "saline"):                     # the drift passes for an effect
        assert plain[f"slope_{arm}_ci_high"].iloc[0] < 0
    cfg = StatsConfig(global_covariate=True, **kw)
    rows, _ = stats_input(deltas, scores, config=cfg)
    assert "delta_md_global" in rows
    adj = region_stats(rows, config=cfg).iloc[0]
    assert adj["formula"].endswith("+ delta_md_global")
    for arm in ("ketamine", "saline"):
        assert adj[f"slope_{arm}_ci_low"] < 0 < adj[f"slope_{arm}_ci_high"]
        assert abs(adj[f"slope_{arm}"]) < 0.1 * abs(plain[f"slope_{arm}"].iloc[0])
    with pytest.raises(InputError, match="global_gm"):
        stats_input(deltas[deltas.region != GLOBAL_GM], scores, config=cfg)


# --- the reported pattern and the verdicts -----------------------------------------------


def _pattern_rows(rng, slopes, region, outcome="madrs", noise=0.5, n_k=40, n_s=20):
    n = n_k + n_s
    pids = [f"sub-{i:03d}" for i in range(n)]
    arm = np.array(["ketamine"] * n_k + ["saline"] * n_s)
    x = rng.normal(0, 10, n)
    pre = rng.integers(20, 40, n).astype(float)
    y = np.where(arm == "ketamine", slopes[0], slopes[1]) * x + noise * rng.normal(size=n)
    return pd.DataFrame({"participant_id": pids, "arm": arm, "region": region,
                         "outcome": outcome, "delta_md": x * 1e-6, "delta_md_e6": x,
                         "score_pre": pre, "score_post": pre + y, "delta_score": y})


@pytest.mark.parametrize(("region", "outcome", "slopes", "verdict"), [
    ("BA10_R", "madrs", (0.5, 0.5), "consistent"),        # both arms, no interaction
    ("BA10_R", "madrs", (0.5, 0.0), "inconclusive"),      # the control slope is missing
    ("BA10_R", "qids", (-0.5, -0.5), "contradicts"),
    ("BA10_L", "madrs", (0.5, 0.0), "consistent"),        # carried by the treated arm
    ("BA10_L", "qids", (0.0, 0.5), "contradicts"),
    ("hippocampus_L", "madrs", (-0.5, 0.0), "consistent"),
    ("hippocampus_L", "madrs", (0.5, 0.0), "contradicts"),
    ("hippocampus_L", "qids", (0.5, 0.0), "not reported"),  # reported for MADRS only
    ("vACC", "madrs", (0.5, 0.0), "not reported"),
])
def test_verdicts_against_the_reported_pattern(rng, region, outcome, slopes, verdict):
    rows = _pattern_rows(rng, slopes, region, outcome)
    t = region_stats(rows, config=StatsConfig(n_permutations=None, n_bootstrap=0)).iloc[0]
    assert t["verdict"] == verdict
    assert "matches_study" not in t


def test_a_null_row_is_inconclusive_not_a_match(rng):
    rows = _pattern_rows(rng, (0.0, 0.0), "amygdala_L", noise=5.0)
    t = region_stats(rows, config=StatsConfig(n_permutations=None, n_bootstrap=0)).iloc[0]
    assert t["interaction_ci_low"] < 0 < t["interaction_ci_high"]
    assert t["verdict"] == "inconclusive"


def test_a_row_without_estimates_is_not_estimated_not_inconclusive():
    from ketamine_nb.stats import VERDICTS, _verdict

    nan = (np.nan, np.nan, np.nan)
    assert _verdict("BA10_L", "madrs", {"interaction": nan})[0] == "not estimated"
    assert _verdict("BA10_L", "madrs", {})[0] == "not estimated"
    assert _verdict("vACC", "madrs", {})[0] == "not reported"
    assert _verdict("BA10_L", "madrs", {"interaction": (0.1, -0.2, 0.4)})[0] == "inconclusive"
    assert "not estimated" in VERDICTS


def test_expected_pattern_is_the_one_table_of_the_paper():
    from ketamine_nb.stats import EXPECTED_PATTERN

    hip = [p for p in EXPECTED_PATTERN if p[0].startswith("hippocampus")]
    assert {p[1] for p in hip} == {"madrs"} and {p[3] for p in hip} == {-1}
    ba10r = {(p[1], p[2]) for p in EXPECTED_PATTERN if p[0] == "BA10_R"}
    assert ba10r == {(o, t) for o in ("madrs", "qids")
                     for t in ("slope_treated", "slope_control")}
    assert not any(p[0] == "vACC" for p in EXPECTED_PATTERN)


# --- partial correlations ---------------------------------------------------------------


def test_partial_correlation_removes_the_baseline_and_equals_the_formula(rng):
    from ketamine_nb.stats import partial_correlation

    n = 200
    z = rng.normal(size=n)
    x, y = z + 0.3 * rng.normal(size=n), z + 0.3 * rng.normal(size=n)
    r, p = partial_correlation(x, y, z)
    rxy, rxz, ryz = (np.corrcoef(a, b)[0, 1] for a, b in ((x, y), (x, z), (y, z)))
    assert r == pytest.approx((rxy - rxz * ryz) / np.sqrt((1 - rxz ** 2) * (1 - ryz ** 2)),
                              rel=1e-10)
    assert rxy > 0.8 and abs(r) < 0.2                    # the raw r was all baseline
    t = r * np.sqrt((n - 3) / (1 - r * r))
    assert p == pytest.approx(2 * sps.t.sf(abs(t), n - 3), rel=1e-10)


def test_region_stats_reports_partial_beside_raw_correlations(rng):
    rows = _pattern_rows(rng, (0.5, 0.0), "BA10_L", noise=3.0)
    rows["delta_md_e6"] += 0.5 * (rows["score_pre"] - 30)    # ΔMD also tracks baseline
    t = region_stats(rows, config=StatsConfig(n_permutations=None, n_bootstrap=0)).iloc[0]
    from ketamine_nb.stats import partial_correlation

    g = rows[rows.arm == "ketamine"]
    assert t["r_partial_ketamine"] == pytest.approx(
        partial_correlation(g.delta_md_e6, g.delta_score, g.score_pre)[0], rel=1e-10)
    assert t["r_ketamine"] != pytest.approx(t["r_partial_ketamine"], abs=1e-3)


# --- the design from the data ---------------------------------------------------------------


def test_control_arm_is_read_or_given_and_two_arms_are_required(rng):
    from ketamine_nb.stats import design_arms

    assert design_arms(["ketamine", "saline", "ketamine"]) == ("saline", "ketamine")
    assert design_arms(["esketamine", "Midazolam"]) == ("Midazolam", "esketamine")
    assert design_arms(["a", "b"], control="b") == ("b", "a")
    with pytest.raises(InputError, match="exactly two arms"):
        design_arms(["ketamine", "saline", "midazolam"])
    with pytest.raises(InputError, match="--control"):
        design_arms(["drug_a", "drug_b"])
    with pytest.raises(InputError, match="not in the data"):
        design_arms(["ketamine", "saline"], control="midazolam")
    rows = _pattern_rows(rng, (0.5, 0.0), "BA10_L")
    rows["arm"] = rows["arm"].replace({"saline": "midazolam"})
    t = region_stats(rows, config=StatsConfig(n_permutations=99, n_bootstrap=0)).iloc[0]
    assert t["control_arm"] == "midazolam" and t["treated_arm"] == "ketamine"
    assert t["n_midazolam"] == 20 and t["slope_midazolam"] == pytest.approx(0, abs=0.05)
    assert "Treatment('midazolam')" in t["formula"]
    flipped = region_stats(rows, config=StatsConfig(n_permutations=None, n_bootstrap=0,
                                                    control="ketamine")).iloc[0]
    assert flipped["beta_interaction"] == pytest.approx(-t["beta_interaction"], rel=1e-9)


def test_any_outcome_with_published_rules_and_a_note_without_one():
    from ketamine_nb.exceptions import StudyWarning
    from ketamine_nb.stats import OUTCOMES, clinical_summary, detect_outcomes

    scores = pd.DataFrame({"participant_id": ["a", "b", "c"], "arm": "ketamine",
                           "hamd_pre": [20, 20, 20], "hamd_post": [7, 8, 12],
                           "bdi_pre": [30, 30, 30], "bdi_post": [13, 14, 20],
                           "mood_pre": [5, 5, 5], "mood_post": [2, 3, 4]})
    assert detect_outcomes(scores) == ("hamd", "bdi", "mood")
    with pytest.warns(StudyWarning, match="'mood' has no response/remission rule"):
        c = clinical_change(scores).set_index(["outcome", "participant_id"])
    assert c.loc[("hamd", "a"), "remitter"] == 1 and c.loc[("hamd", "b"), "remitter"] == 0
    assert c.loc[("bdi", "a"), "remitter"] == 1 and c.loc[("bdi", "b"), "remitter"] == 0
    assert c.loc[("hamd", "b"), "responder"] == 1 and c.loc[("hamd", "c"), "responder"] == 0
    assert c.loc[("mood", "a"), "delta_score"] == -3 and np.isnan(c.loc[("mood", "a"),
                                                                        "responder"])
    assert all("source" in OUTCOMES[o] for o in ("madrs", "qids", "hamd", "bdi"))
    with pytest.warns(StudyWarning):
        s = clinical_summary(scores).set_index("outcome")
    assert np.isnan(s.loc["mood", "remitters_percent"])
    assert s.loc["hamd", "remitters_percent"] == pytest.approx(100 / 3)
    # A user-added rule is used.
    rules = dict(OUTCOMES, mood={"response": 0.5, "remission": 2})
    c = clinical_change(scores, ("mood",), rules=rules)
    assert c["remitter"].tolist() == [1, 0, 0]


def test_cli_stats_reads_the_design_and_writes_the_column_sidecar(tmp_path, rng):
    import json

    from ketamine_nb.regions import GLOBAL_GM

    deltas, scores = _tables(rng, noise=3.0)
    deltas["arm"] = deltas["arm"].replace({"saline": "midazolam"})
    scores["arm"] = scores["arm"].replace({"saline": "midazolam"})
    scores = scores.rename(columns={"madrs_pre": "hamd_pre", "madrs_post": "hamd_post"})
    glob = deltas.assign(region=GLOBAL_GM, delta_md=rng.normal(0, 2e-6, len(deltas)))
    pd.concat([deltas, glob]).to_csv(tmp_path / "roi_deltas.tsv", sep="\t", index=False)
    scores.to_csv(tmp_path / "scores.tsv", sep="\t", index=False)
    proc = subprocess.run([sys.executable, "-m", "ketamine_nb.cli", "stats", str(tmp_path),
                           "--permutations", "99", "--bootstrap", "0", "--global-covariate",
                           "--control", "midazolam"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "n_midazolam" in proc.stdout and "verdict" in proc.stdout
    assert "matches_study" not in proc.stdout
    table = pd.read_csv(tmp_path / "stats_roi.tsv", sep="\t")
    assert sorted(table["outcome"]) == ["hamd", "qids"]          # read from the columns
    assert set(table["region"]) == {"BA10_L"}                    # global_gm is no region
    assert table["formula"].str.contains("delta_md_global").all()
    cols = json.loads((tmp_path / "stats_roi.json").read_text())
    assert set(cols) == set(table.columns)
    assert "2 tests" in cols["q_fdr"]["Inference"]
    bad = subprocess.run([sys.executable, "-m", "ketamine_nb.cli", "stats", str(tmp_path),
                          "--control", "placebo", "--permutations", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "control arm 'placebo'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_global_covariate_removes_a_relation_carried_by_a_shared_change():
    """Region A follows Δscore only through a drift shared with the whole brain."""
    from ketamine_nb.stats import global_covariate_effect

    rng = np.random.default_rng(0)
    n = 60
    pids = [f"sub-{i:03d}" for i in range(n)]
    arm = np.array(["ketamine"] * 40 + ["saline"] * 20)
    shared = rng.normal(0, 5, n)                       # ΔMD in 1e-6 mm²/s
    pre = rng.integers(20, 40, n).astype(float)
    dscore = -1.5 * shared + rng.normal(0, 2, n)
    rows = [{"participant_id": p, "arm": arm[i], "region": reg, "md_pre": 0.8e-3,
             "md_post": 0.8e-3 + d * 1e-6, "delta_md": d * 1e-6}
            for i, p in enumerate(pids)
            for reg, d in (("global_gm", shared[i]), ("A", shared[i] + rng.normal(0, 1)))]
    deltas = pd.DataFrame(rows)
    scores = pd.DataFrame({"participant_id": pids, "arm": arm, "madrs_pre": pre,
                           "madrs_post": pre + dscore})
    t = global_covariate_effect(deltas, scores).iloc[0]
    assert t["region"] == "A"                          # the reference is not a region
    for a in ("ketamine", "saline"):
        assert t[f"p_slope_{a}"] < 1e-6 and t[f"p_slope_{a}_global"] > 0.05
    with pytest.raises(InputError, match="global_gm"):
        global_covariate_effect(deltas[deltas["region"] == "A"], scores)


def test_flagged_regional_delta_is_left_out_of_the_model_unless_kept():
    """A ΔMD the pipeline kept but flagged (visits not to be trusted) never enters silently."""
    from ketamine_nb.exceptions import StudyWarning
    from ketamine_nb.regions import GLOBAL_GM
    from ketamine_nb.stats import stats_input

    ids = [f"sub-{i:02d}" for i in range(8)]
    arms = ["ketamine"] * 4 + ["saline"] * 4
    deltas = pd.DataFrame([{"participant_id": p, "arm": a, "region": r, "md_pre": 8e-4,
                            "md_post": 8e-4 + 1e-6 * k, "delta_md": 1e-6 * k, "flag": ""}
                           for k, (p, a) in enumerate(zip(ids, arms, strict=True))
                           for r in ("BA10_L", GLOBAL_GM)])
    bad = (deltas.participant_id == "sub-03") & (deltas.region == "BA10_L")
    deltas.loc[bad, "flag"] = "visits_dissimilar"
    deltas.loc[(deltas.participant_id == "sub-05") & (deltas.region == GLOBAL_GM),
               "flag"] = "coverage_fov<0.8"
    scores = pd.DataFrame({"participant_id": ids, "arm": arms, "madrs_pre": 30.0,
                           "madrs_post": np.arange(8) + 10.0})
    cfg = StatsConfig(outcomes=("madrs",), n_permutations=None, n_bootstrap=0)
    with pytest.warns(StudyWarning, match=r"1 regional ΔMD value\(s\).*sub-03 BA10_L "
                                          r"\(visits_dissimilar\).*--keep-flagged"):
        rows, dropped = stats_input(deltas, scores, config=cfg)
    assert "sub-03" not in set(rows["participant_id"]) and len(rows) == 7
    assert dropped.set_index("region").loc["BA10_L", "participants"] == "sub-03"
    with pytest.warns(StudyWarning, match="kept in the model"):
        kept, _ = stats_input(deltas, scores, config=replace(cfg, keep_flagged=True))
    assert len(kept) == 8 and deltas.loc[bad, "delta_md"].notna().all()  # input untouched
    with pytest.warns(StudyWarning) as caught:
        glob, _ = stats_input(deltas, scores, config=replace(cfg, global_covariate=True))
    assert any("global covariate" in str(w.message) and "flagged for sub-05" in str(w.message)
               for w in caught)
    assert "sub-05" in set(glob["participant_id"])  # the reference is never blanked


def test_reliable_share_of_a_region_never_measured_is_missing_not_zero():
    ids = [f"s{i}" for i in range(6)]
    arms = ["ketamine"] * 3 + ["saline"] * 3
    d = pd.DataFrame({"participant_id": ids * 2, "arm": arms * 2, "region": ["A"] * 6 + ["B"] * 6,
                      "md_pre": 8e-4,
                      "delta_md": [1e-5, 2e-6, -3e-6, 1e-6, -1e-6, 2e-6] + [np.nan] * 6})
    _, summary = reliable_change(d, reference_arm="saline")
    s = summary.set_index("region")
    assert s.loc["A", "reliable_share_ketamine"] == pytest.approx(2 / 3)  # |RCI| > 1.96: 2 of 3
    assert np.isnan(s.loc["B", "reliable_share_ketamine"])


def _stats_folder(tmp_path, deltas, scores):
    from ketamine_nb._utils import write_tsv

    out = tmp_path / "out"
    out.mkdir()
    write_tsv(deltas, out / "roi_deltas.tsv")
    write_tsv(scores, out / "scores.tsv")
    return out


def test_run_stats_names_the_real_cause_when_a_model_cannot_be_fitted(tmp_path):
    from ketamine_nb.workflows import run_stats

    d = simulate_tables(SimulationParams(n_subjects=12), seed=1)
    deltas, scores = d["ground_truth"], d["scores"]
    # An arm whose scores are all missing: not "exactly two arms, found 1".
    saline = scores["arm"] == "saline"
    out = _stats_folder(tmp_path, deltas, scores.assign(
        madrs_pre=scores["madrs_pre"].where(~saline), qids_pre=scores["qids_pre"].where(~saline)))
    with pytest.raises(InputError, match=r"no saline participant has both a ΔMD and the "
                                         r"scores.*scores table"):
        run_stats(out, config=StatsConfig(n_permutations=None, n_bootstrap=0))
    # Every region n/a (a slab): the flags are named, not the participant ids.
    (tmp_path / "out").rename(tmp_path / "first")
    out = _stats_folder(tmp_path, deltas.assign(delta_md=np.nan, flag="coverage_fov<0.8"),
                        scores)
    with pytest.raises(InputError, match=r"no region has a ΔMD to model \(flags: "
                                         r"coverage_fov<0.8\)"):
        run_stats(out, config=StatsConfig(n_permutations=None, n_bootstrap=0))


def test_run_stats_removes_a_stale_reliability_table(tmp_path, monkeypatch):
    """Without a reliability estimate, an earlier run's reliability.tsv must not stay behind."""
    from ketamine_nb import workflows
    from ketamine_nb.workflows import run_stats

    d = simulate_tables(SimulationParams(n_subjects=12), seed=1)
    out = _stats_folder(tmp_path, d["ground_truth"], d["scores"])
    cfg = StatsConfig(n_permutations=None, n_bootstrap=0)
    first = run_stats(out, config=cfg)
    assert first.reliability is not None and (out / "reliability.tsv").is_file()

    def no_estimate(*args, **kwargs):
        raise InputError("no saline participants with ΔMD; the reference arm needs at least two")

    monkeypatch.setattr(workflows, "reliable_change", no_estimate)
    second = run_stats(out, config=cfg)
    assert second.reliability is None
    assert not (out / "reliability.tsv").exists()
    assert (out / "stats_roi.tsv").is_file()
