"""The robustness grid: the ROI model rerun over analytic choices, from cached voxels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ketamine_nb.exceptions import InputError
from ketamine_nb.robustness import (
    CHOICES,
    DEFAULT_GRID,
    configured_specification,
    ols_interaction,
    robustness_grid,
    robustness_summary,
)
from ketamine_nb.stats import MIN_PER_ARM, StatsConfig, region_stats, stats_input

#: The new choices at their plain values (no global covariate, no QC exclusion,
#: the ROI orientation, least squares).
PLAIN = {"global_covariate": (False,), "exclude_flagged": (False,),
         "orientation": ("score ~ md",), "estimator": ("OLS",)}


def _cohort_voxels(rng, n_ket=30, n_sal=15, slope_ket=2.0):
    """Voxel tables with known regional means: region A carries the planted relation."""
    n = n_ket + n_sal
    pids = [f"sub-{i:03d}" for i in range(1, n + 1)]
    arm = np.array(["ketamine"] * n_ket + ["saline"] * n_sal)
    d_e6 = rng.normal(0, 10, n)
    pre_score = rng.integers(20, 40, n).astype(float)
    delta = np.where(arm == "ketamine", slope_ket, 0.0) * d_e6 + rng.normal(0, 2, n)
    scores = pd.DataFrame({"participant_id": pids, "arm": arm, "madrs_pre": pre_score,
                           "madrs_post": pre_score + delta, "qids_pre": pre_score / 2,
                           "qids_post": (pre_score + delta) / 2,
                           "age": rng.integers(20, 60, n), "sex": rng.choice(["F", "M"], n)})
    rows = []
    for i, pid in enumerate(pids):
        for ses, shift in (("pre", 0.0), ("post", d_e6[i] * 1e-6)):
            for region in ("A", "B"):
                # 20 tissue voxels at probability 0.6 with MD 0.8e-3 (+ the change in A),
                # 5 edge voxels at probability 0.15 with MD 0.9e-3, 3 CSF-like voxels.
                md_core = 0.8e-3 + (shift if region == "A" else 0.0)
                for prob, md, k in ((0.6, md_core, 20), (0.15, 0.9e-3, 5), (0.6, 2.5e-3, 3)):
                    rows.append(pd.DataFrame({"participant_id": pid, "session": ses,
                                              "region": region, "probability": [prob] * k,
                                              "md": md, "md_ols": md * 1.01, "fa": 0.1}))
    v = pd.concat(rows, ignore_index=True)
    for c in ("participant_id", "session", "region"):
        v[c] = v[c].astype("category")
    return v, scores, d_e6


def test_robustness_grid_recovers_known_means_and_matches_region_stats(rng):
    voxels, scores, d_e6 = _cohort_voxels(rng)
    grid = {"fit_method": ("configured",), "probability_threshold": (0.1, 0.5),
            "csf_md_threshold": (None, 1.1e-3), "outcome": ("madrs",),
            "change": ("absolute",), "covariates": ((),), **PLAIN}
    g = robustness_grid(voxels, scores, grid=grid)
    assert g["spec"].nunique() == 4 and len(g) == 8
    # Strict probability + CSF guard: region A's ΔMD is exactly the planted one, so
    # the fit equals a statsmodels fit on the exact deltas.
    best = g[(g.probability_threshold == 0.5) & (g.csf_md_threshold == 1.1e-3)
             & (g.region == "A")].iloc[0]
    deltas = pd.DataFrame({"participant_id": scores["participant_id"], "arm": scores["arm"],
                           "region": "A", "md_pre": 0.8e-3, "md_post": 0.8e-3 + d_e6 * 1e-6,
                           "delta_md": d_e6 * 1e-6})
    rows, _ = stats_input(deltas, scores, config=StatsConfig(outcomes=("madrs",)))
    ref = region_stats(rows, config=StatsConfig(outcomes=("madrs",), n_permutations=0,
                                                n_bootstrap=0)).iloc[0]
    assert best["beta_interaction"] == pytest.approx(ref["beta_interaction"], rel=1e-6)
    assert best["p_interaction"] == pytest.approx(ref["p_interaction"], rel=1e-5)
    assert best["slope_ketamine"] == pytest.approx(2.0, abs=0.1)
    # The looser threshold mixes in unchanged edge voxels (probability 0.15) into the
    # probability-weighted mean: ΔMD shrinks by 20*0.6 / (20*0.6 + 5*0.15), the slope
    # of Δscore on ΔMD grows by the inverse.
    loose = g[(g.probability_threshold == 0.1) & (g.csf_md_threshold == 1.1e-3)
              & (g.region == "A")].iloc[0]
    assert loose["slope_ketamine"] == pytest.approx(
        best["slope_ketamine"] * (20 * 0.6 + 5 * 0.15) / (20 * 0.6), rel=0.02)
    # Region B never changes: ΔMD has no variance and the model is undefined (NaN).
    assert g[g.region == "B"]["p_interaction"].isna().all()


def test_float32_voxel_tables_give_the_float64_grid(rng):
    # The demo loads its 15 M voxels as float32 (load_cohort_voxels(float_dtype=)):
    # voxels exactly at a threshold (as stored with 6 digits) must be kept or
    # dropped as in float64. float32(0.35) < 0.35 and float32(0.0012) > 0.0012:
    # compared with the float64 thresholds, both would be dropped.
    voxels, scores, _ = _cohort_voxels(rng)
    n = len(voxels)
    voxels["probability"] = np.resize([0.35, 0.6, 0.15, 0.3499], n)
    voxels["md"] = np.where(np.arange(n) % 7 == 0, 1.2e-3, voxels["md"])
    # numpy float64 thresholds, as read from a table (a Python float would be
    # cast to the array's float32 by numpy 2 anyway)
    grid = {"fit_method": ("configured",), "probability_threshold": (np.float64(0.35),),
            "csf_md_threshold": (np.float64(1.2e-3),), "outcome": ("madrs",),
            "change": ("absolute",),
            "covariates": ((),), **PLAIN}
    g64 = robustness_grid(voxels, scores, grid=grid)
    v32 = voxels.astype({c: np.float32 for c in ("probability", "md", "md_ols", "fa")})
    g32 = robustness_grid(v32, scores, grid=grid)
    assert (g32["n"].to_numpy() == g64["n"].to_numpy()).all()
    np.testing.assert_allclose(g32["beta_interaction"], g64["beta_interaction"], rtol=1e-5)


def test_ols_interaction_equals_statsmodels(rng):
    import statsmodels.formula.api as smf

    n = 50
    df = pd.DataFrame({"x": rng.normal(size=n), "k": rng.integers(0, 2, n).astype(float),
                       "pre": rng.normal(30, 5, n), "age": rng.normal(40, 10, n)})
    df["y"] = 1.5 * df.x * df.k + 0.3 * df.pre + rng.normal(size=n)
    fit = smf.ols("y ~ x * k + pre + age", data=df).fit()
    res = ols_interaction(df.x.to_numpy(), df.k.to_numpy(), df.y.to_numpy(),
                          df.pre.to_numpy(), df[["age"]].to_numpy())
    assert res["beta_interaction"] == pytest.approx(fit.params["x:k"], rel=1e-9)
    assert res["se_interaction"] == pytest.approx(fit.bse["x:k"], rel=1e-9)
    assert res["p_interaction"] == pytest.approx(fit.pvalues["x:k"], rel=1e-7)


ONE_SPEC = {"fit_method": ("configured",), "probability_threshold": (0.5,),
            "csf_md_threshold": (1.1e-3,), "outcome": ("madrs",), "change": ("absolute",),
            "covariates": ((),), **PLAIN}


def test_default_grid_size_and_choices():
    assert CHOICES == tuple(DEFAULT_GRID)
    n = np.prod([len(v) for v in DEFAULT_GRID.values()])
    assert n == 2048


def test_grid_choices_change_the_answer_as_they_should(rng):
    voxels, scores, d_e6 = _cohort_voxels(rng)
    # The OLS-fitted MD is 1 % higher in every voxel: ΔMD 1 % larger, slope 1 % smaller.
    g = robustness_grid(voxels, scores, grid=dict(ONE_SPEC, fit_method=("configured", "OLS")))
    a = g[(g.region == "A") & (g.fit_method == "configured")].iloc[0]
    b = g[(g.region == "A") & (g.fit_method == "OLS")].iloc[0]
    assert b["slope_ketamine"] == pytest.approx(a["slope_ketamine"] / 1.01, rel=1e-6)
    assert b["p_interaction"] == pytest.approx(a["p_interaction"], rel=1e-6)
    # Without the CSF guard the CSF-like voxels (MD 2.5e-3, unchanged) dilute ΔMD:
    # weights 20*0.6 tissue vs 3*0.6 CSF.
    g = robustness_grid(voxels, scores, grid=dict(ONE_SPEC, csf_md_threshold=(None, 1.1e-3)))
    off = g[(g.region == "A") & g.csf_md_threshold.isna()].iloc[0]
    on = g[(g.region == "A") & (g.csf_md_threshold == 1.1e-3)].iloc[0]
    assert off["slope_ketamine"] == pytest.approx(on["slope_ketamine"] * 23 / 20, rel=0.02)
    # Percent change of the score: the model sees 100 * Δ / pre.
    g = robustness_grid(voxels, scores, grid=dict(ONE_SPEC, change=("absolute", "percent")))
    assert set(g["change"]) == {"absolute", "percent"}
    pct = g[(g.region == "A") & (g.change == "percent")].iloc[0]
    deltas = pd.DataFrame({"participant_id": scores["participant_id"], "arm": scores["arm"],
                           "region": "A", "md_pre": 0.8e-3, "md_post": 0.8e-3 + d_e6 * 1e-6,
                           "delta_md": d_e6 * 1e-6})

    def reference(**kw):
        cfg = StatsConfig(outcomes=("madrs",), n_permutations=0, n_bootstrap=0, **kw)
        rows, _ = stats_input(deltas, scores, config=cfg)
        return region_stats(rows, config=cfg).iloc[0]

    assert pct["beta_interaction"] == pytest.approx(
        reference(change="percent")["beta_interaction"], rel=1e-6)
    # Covariates enter the model exactly as in region_stats (sex as an indicator).
    g = robustness_grid(voxels, scores, grid=dict(ONE_SPEC, covariates=((), ("age", "sex"))))
    cov = g[(g.region == "A") & (g.covariates == "age+sex")].iloc[0]
    assert cov["n"] == on["n"] == len(scores)
    assert cov["beta_interaction"] == pytest.approx(
        reference(covariates=("age", "sex"))["beta_interaction"], rel=1e-6)


def test_grid_leaves_an_arm_with_too_few_participants_empty(rng):
    voxels, scores, _ = _cohort_voxels(rng, n_ket=10, n_sal=MIN_PER_ARM - 1)
    g = robustness_grid(voxels, scores, grid=ONE_SPEC)
    assert g["p_interaction"].isna().all() and (g["n"] == 10 + MIN_PER_ARM - 1).all()


def test_grid_refuses_unknown_choices_with_one_line(rng):
    voxels, scores, _ = _cohort_voxels(rng, n_ket=6, n_sal=4)
    with pytest.raises(InputError, match="not cached"):
        robustness_grid(voxels, scores, grid=dict(ONE_SPEC, fit_method=("NLLS",)))
    with pytest.raises(InputError, match="not in the voxel tables"):
        robustness_grid(voxels, scores, pre="baseline", grid=ONE_SPEC)
    with pytest.raises(InputError, match=r"covariate\(s\) bmi not found; no participants "
                                         r"table was given \(participants=\)"):
        robustness_grid(voxels, scores, grid=dict(ONE_SPEC, covariates=(("bmi",),)))


def test_robustness_summary_counts_known_specifications():
    grid = pd.DataFrame({"region": ["A"] * 4 + ["B"] * 2,
                         "beta_interaction": [1.0, 2.0, -1.0, np.nan, 3.0, 1.0],
                         "se_interaction": [0.5, 0.5, 1.0, 1.0, 1.0, 2.0],
                         "p_interaction": [0.04, 0.001, 0.3, np.nan, 0.01, 0.6]})
    s = robustness_summary(grid).set_index("region")
    assert s.loc["A", "n_specifications"] == 3          # the NaN row has no estimate
    assert s.loc["A", "t_median"] == pytest.approx(2.0)
    assert s.loc["A", "t_min"] == pytest.approx(-1.0) and s.loc["A", "t_max"] == 4.0
    assert s.loc["A", "share_positive"] == pytest.approx(2 / 3)
    assert s.loc["A", "share_significant"] == pytest.approx(2 / 3)
    assert s.loc["B", "share_significant"] == pytest.approx(0.5)


# --- issue 15: missing covariates, global covariate, QC exclusion, orientation, Huber -----


def _region_table(voxels, scores, region="A"):
    """The exact regional ΔMD of the strict specification (probability 0.5, CSF guard)."""
    v = voxels[(voxels.probability >= 0.5) & (voxels.md <= 1.1e-3)
               & (voxels.region == region)]
    m = v.groupby(["participant_id", "session"], observed=True)["md"].mean().unstack()
    return pd.DataFrame({"participant_id": m.index.astype(str), "region": region,
                         "md_pre": m["pre"].to_numpy(), "md_post": m["post"].to_numpy(),
                         "delta_md": (m["post"] - m["pre"]).to_numpy()}).merge(
        scores[["participant_id", "arm"]], on="participant_id")


def test_a_missing_covariate_drops_the_row_as_region_stats_does(rng):
    voxels, scores, _ = _cohort_voxels(rng)
    scores.loc[3, "sex"] = np.nan
    g = robustness_grid(voxels, scores, grid=dict(ONE_SPEC, covariates=((), ("age", "sex"))))
    a = g[g.region == "A"].set_index("covariates")
    assert a.loc["none", "n"] == len(scores) and a.loc["age+sex", "n"] == len(scores) - 1
    cfg = StatsConfig(outcomes=("madrs",), covariates=("age", "sex"), n_permutations=None,
                      n_bootstrap=0, statistic="t")
    rows, dropped = stats_input(_region_table(voxels, scores), scores, config=cfg)
    ref = region_stats(rows, config=cfg).iloc[0]
    assert dropped["n_dropped"].tolist() == [1]
    assert a.loc["age+sex", "beta_interaction"] == pytest.approx(ref["beta_interaction"],
                                                                 rel=1e-6)
    assert a.loc["age+sex", "p_interaction"] == pytest.approx(ref["p_interaction"], rel=1e-5)


def _with_global(voxels, drift):
    """Add a global_gm region whose ΔMD is ``drift`` (10⁻⁶ mm²/s) per participant."""
    from ketamine_nb.regions import GLOBAL_GM

    pids = list(voxels["participant_id"].cat.categories)
    rows = [pd.DataFrame({"participant_id": pid, "session": ses, "region": GLOBAL_GM,
                          "probability": [0.9] * 4,
                          "md": 0.8e-3 + (drift[i] * 1e-6 if ses == "post" else 0.0),
                          "md_ols": 0.0, "fa": 0.1})
            for i, pid in enumerate(pids) for ses in ("pre", "post")]
    v = pd.concat([voxels.astype({c: str for c in ("participant_id", "session", "region")}),
                   *rows], ignore_index=True)
    v["md_ols"] = v["md"] * 1.01
    for c in ("participant_id", "session", "region"):
        v[c] = v[c].astype("category")
    return v


def test_global_covariate_choice_equals_region_stats_with_the_global_row(rng):
    from ketamine_nb.regions import GLOBAL_GM

    voxels, scores, d_e6 = _cohort_voxels(rng)
    drift = rng.normal(0, 4, len(scores))
    v = _with_global(voxels, drift)
    g = robustness_grid(v, scores, grid=dict(ONE_SPEC, global_covariate=(False, True)))
    assert GLOBAL_GM not in set(g["region"]) and set(g["region"]) == {"A", "B"}
    on = g[(g.region == "A") & g.global_covariate].iloc[0]
    table = _region_table(voxels, scores)
    glob = table.assign(region=GLOBAL_GM, md_post=table["md_pre"] + drift * 1e-6,
                        delta_md=drift * 1e-6)
    cfg = StatsConfig(outcomes=("madrs",), global_covariate=True, n_permutations=None,
                      n_bootstrap=0, statistic="t")
    rows, _ = stats_input(pd.concat([table, glob]), scores, config=cfg)
    ref = region_stats(rows, config=cfg).iloc[0]
    assert on["beta_interaction"] == pytest.approx(ref["beta_interaction"], rel=1e-6)
    assert on["p_interaction"] == pytest.approx(ref["p_interaction"], rel=1e-5)
    off = g[(g.region == "A") & ~g.global_covariate].iloc[0]
    assert off["beta_interaction"] != pytest.approx(on["beta_interaction"], rel=1e-9)
    # Asked for explicitly without a global region: an error; by default: a warning.
    with pytest.raises(InputError, match="global_covariate"):
        robustness_grid(voxels, scores, grid=dict(ONE_SPEC, global_covariate=(True,)))


def test_qc_exclusion_drops_flagged_sessions_everywhere_and_flagged_regions_there(rng):
    voxels, scores, _ = _cohort_voxels(rng)
    pids = scores["participant_id"].tolist()
    qc = pd.DataFrame([{"participant_id": p, "session": s, "region": r, "qc_flags": "",
                        "flag": ""} for p in pids for s in ("pre", "post") for r in "AB"])
    qc.loc[(qc.participant_id == pids[0]) & (qc.session == "post"), "qc_flags"] = "high_motion"
    qc.loc[(qc.participant_id == pids[1]) & (qc.region == "A"), "flag"] = "coverage_fov 0.6"
    # Outlier volumes found and left out: advisory, the session stays.
    qc.loc[(qc.participant_id == pids[2]) & (qc.session == "pre"), "qc_flags"] = \
        "motion_outliers"
    qc.loc[(qc.participant_id == pids[3]) & (qc.session == "pre"), "qc_flags"] = \
        "motion_outliers;outliers_kept"
    g = robustness_grid(voxels, scores, qc=qc,
                        grid=dict(ONE_SPEC, exclude_flagged=(False, True)))
    n = g.set_index(["region", "exclude_flagged"])["n"]
    assert n[("A", False)] == n[("B", False)] == len(pids)
    assert n[("A", True)] == len(pids) - 3 and n[("B", True)] == len(pids) - 2
    with pytest.raises(InputError, match="exclude_flagged"):
        robustness_grid(voxels, scores, grid=dict(ONE_SPEC, exclude_flagged=(True,)))


def test_reversed_orientation_is_the_voxelwise_model(rng):
    import statsmodels.formula.api as smf

    voxels, scores, d_e6 = _cohort_voxels(rng)
    g = robustness_grid(voxels, scores, grid=dict(ONE_SPEC, orientation=("score ~ md",
                                                                        "md ~ score")))
    rev = g[(g.region == "A") & (g.orientation == "md ~ score")].iloc[0]
    roi = g[(g.region == "A") & (g.orientation == "score ~ md")].iloc[0]
    df = scores.assign(x=d_e6, y=scores["madrs_post"] - scores["madrs_pre"],
                       k=(scores["arm"] == "ketamine").astype(float))
    fit = smf.ols("x ~ y * k + madrs_pre", data=df).fit()
    assert rev["beta_interaction"] == pytest.approx(fit.params["y:k"], rel=1e-6)
    assert rev["p_interaction"] == pytest.approx(fit.pvalues["y:k"], rel=1e-5)
    # The planted relation (treated arm: Δscore = 2 ΔMD + noise of SD 2, ΔMD of SD 10)
    # read the other way round: ΔMD per point = 2 * 100 / (4 * 100 + 4), about 0.495.
    assert roi["slope_ketamine"] == pytest.approx(2.0, abs=0.1)
    assert rev["slope_ketamine"] == pytest.approx(2 * 100 / 404, abs=0.03)


def test_huber_equals_statsmodels_rlm_and_resists_an_outlier(rng):
    import statsmodels.api as sm

    n = 60
    x, k = rng.normal(0, 10, n), np.r_[np.ones(40), np.zeros(20)]
    pre = rng.normal(30, 5, n)
    y = 1.0 * x * k + rng.normal(0, 1, n)
    x[0], y[0] = 30.0, -200.0                            # one wild treated participant
    hub = ols_interaction(x, k, y, pre, estimator="Huber")
    X = np.column_stack([np.ones(n), k, x, x * k, pre])
    ref = sm.RLM(y, X, M=sm.robust.norms.HuberT()).fit()
    assert hub["beta_interaction"] == pytest.approx(ref.params[3], rel=1e-9)
    assert hub["p_interaction"] == pytest.approx(ref.pvalues[3], rel=1e-9)
    ols = ols_interaction(x, k, y, pre)
    assert abs(hub["beta_interaction"] - 1.0) < 0.1 < abs(ols["beta_interaction"] - 1.0)
    with pytest.raises(InputError, match="estimator"):
        ols_interaction(x, k, y, pre, estimator="LAD")


def test_grid_reads_the_control_arm(rng):
    voxels, scores, _ = _cohort_voxels(rng)
    scores["arm"] = scores["arm"].replace({"saline": "midazolam"})
    g = robustness_grid(voxels, scores, grid=ONE_SPEC)
    a = g[g.region == "A"].iloc[0]
    assert a["slope_ketamine"] == pytest.approx(2.0, abs=0.1)
    assert a["slope_midazolam"] == pytest.approx(0.0, abs=0.1)


def test_configured_specification_is_the_one_run_and_one_row_of_the_default_grid():
    import itertools

    spec = configured_specification()  # the package's defaults
    assert tuple(spec) == CHOICES
    assert spec == {"fit_method": "configured", "probability_threshold": 0.25,
                    "csf_md_threshold": 1.1e-3, "outcome": "madrs", "change": "absolute",
                    "covariates": "none", "global_covariate": False, "exclude_flagged": False,
                    "orientation": "score ~ md", "estimator": "OLS"}
    # From a run's configuration files (as Results.config / Results.stats_config hold them).
    run = configured_specification(
        {"probability_threshold": 0.4, "csf_md_threshold": None},
        {"outcomes": ["qids"], "change": "percent", "covariates": ["age", "sex"],
         "global_covariate": True})
    assert run["probability_threshold"] == 0.4 and run["csf_md_threshold"] is None
    assert (run["outcome"], run["change"], run["covariates"], run["global_covariate"]) == \
        ("qids", "percent", "age+sex", True)
    # Exactly one specification of the default grid, as the grid writes its values.
    def written(choice, v):
        return "+".join(v) or "none" if choice == "covariates" else v

    for s in (spec, run):
        hits = [combo for combo in itertools.product(*DEFAULT_GRID.values())
                if all(written(c, v) == s[c] for c, v in zip(CHOICES, combo, strict=True))]
        assert len(hits) == 1, s
