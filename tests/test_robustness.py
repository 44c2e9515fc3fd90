"""The robustness grid: the ROI model rerun over analytic choices, from cached voxels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ketamine_nb.exceptions import InputError
from ketamine_nb.robustness import (
    CHOICES,
    DEFAULT_GRID,
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
    assert pct["beta_interaction"] != pytest.approx(on["beta_interaction"])
    # Covariates enter the model: n is unchanged, the estimate moves a little.
    g = robustness_grid(voxels, scores, grid=dict(ONE_SPEC, covariates=((), ("age", "sex"))))
    cov = g[(g.region == "A") & (g.covariates == "age+sex")].iloc[0]
    assert cov["n"] == on["n"] == len(scores)
    assert cov["beta_interaction"] == pytest.approx(on["beta_interaction"], rel=0.2)


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
    with pytest.raises(InputError, match="not available"):
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
