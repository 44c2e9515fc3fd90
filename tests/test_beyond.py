"""Beyond the study: robustness grid, reliability of ΔMD, voxelwise inference."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketamine_nb.derivatives import session_paths
from ketamine_nb.robustness import ols_interaction, robustness_grid
from ketamine_nb.stats import StatsConfig, region_stats, reliable_change, stats_input
from ketamine_nb.voxelwise import voxelwise_inference


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
            "change": ("absolute",), "covariates": ((),)}
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


def test_voxelwise_finds_a_planted_block_and_nothing_else(tmp_path, rng):
    """ΔMD maps where one 3x3x3 block follows Δscore under ketamine only."""
    shape = (12, 12, 12)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    n_ket, n_sal = 30, 15
    n = n_ket + n_sal
    pids = [f"sub-{i:03d}" for i in range(1, n + 1)]
    arm = np.array(["ketamine"] * n_ket + ["saline"] * n_sal)
    pre = rng.integers(20, 40, n).astype(float)
    delta = rng.normal(-10, 8, n)
    block = (slice(4, 7),) * 3
    for i, pid in enumerate(pids):
        md_pre = np.full(shape, 0.8e-3) + rng.normal(0, 2e-6, shape)
        md_post = md_pre + rng.normal(0, 4e-6, shape)
        if arm[i] == "ketamine":
            md_post[block] += 2e-6 * (delta[i] - delta.mean())
        for md in (md_pre, md_post):  # outside the "brain": no MD
            md[:1], md[-1:], md[:, :1], md[:, -1:], md[:, :, :1], md[:, :, -1:] = 0, 0, 0, 0, 0, 0
        for ses, md in (("pre", md_pre), ("post", md_post)):
            p = session_paths(tmp_path, pid, ses)["md_mni"]
            p.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(md.astype(np.float32), affine), p)
    scores = pd.DataFrame({"participant_id": pids, "arm": arm, "madrs_pre": pre,
                           "madrs_post": pre + delta})
    res = voxelwise_inference(tmp_path, scores, n_permutations=500, random_state=0)
    logp = res.logp_max_t.get_fdata()
    sig = logp > -np.log10(0.05)
    inside = np.zeros(shape, bool)
    inside[block] = True
    assert sig[inside].mean() > 0.9
    assert sig[~inside].sum() <= 2            # FWE 5 %: almost never a false voxel
    assert not sig[0].any()                   # nothing outside the mask
    assert res.t.get_fdata()[inside].mean() > 5
    assert len(res.clusters) >= 1
    assert (tmp_path / "voxelwise").is_dir()
    assert res.design.columns[-2] == "delta_score_x_ketamine"
