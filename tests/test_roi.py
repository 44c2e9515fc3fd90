"""Regions as per-voxel tables: thresholds and guards are filters, known means come back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ketamine_nb.regions import GLOBAL_GM
from ketamine_nb.robustness import robustness_grid
from ketamine_nb.roi import apply_coverage, classify_voxels, summarise_regions


def _voxels(md_post_shift=0.0):
    """Region A: 10 tissue voxels (p 0.8, MD 0.8e-3), 4 edge voxels (p 0.2, MD 1.0e-3),
    2 voxels that are CSF in the mean of the visits but not in this visit (md_guard)."""
    rows = [("A", 0.8, 0.8e-3 + md_post_shift, 0.8e-3, 0.1)] * 10 \
        + [("A", 0.2, 1.0e-3, 1.0e-3, 0.1)] * 4 \
        + [("A", 0.8, 1.0e-3, 2.0e-3, 0.1)] * 2
    return pd.DataFrame(rows, columns=["region", "probability", "md", "md_guard", "fa"]
                        ).assign(region=lambda d: d["region"].astype("category"))


def test_weighted_mean_thresholds_and_the_shared_guard():
    v = _voxels()
    s = summarise_regions(v, probability_threshold=0.25, csf_md_threshold=1.1e-3).iloc[0]
    # The guard is judged on md_guard: the 2 voxels with md 1.0e-3 but md_guard 2.0e-3 go.
    assert s["n_voxels"] == 10 and s["n_excluded"] == 2
    assert s["md_wmean"] == pytest.approx(0.8e-3) and s["md_median"] == pytest.approx(0.8e-3)
    # A looser threshold takes in the edge voxels, weighted by their probability.
    s = summarise_regions(v, probability_threshold=0.1, csf_md_threshold=1.1e-3).iloc[0]
    assert s["n_voxels"] == 14
    assert s["md_wmean"] == pytest.approx((10 * 0.8 * 0.8e-3 + 4 * 0.2 * 1.0e-3)
                                          / (10 * 0.8 + 4 * 0.2))
    assert s["md_mean"] == pytest.approx((10 * 0.8e-3 + 4 * 1.0e-3) / 14)
    # Guard off (None): every voxel in the region counts.
    s = summarise_regions(v, probability_threshold=0.1, csf_md_threshold=None).iloc[0]
    assert s["n_voxels"] == 16 and s["n_excluded"] == 0
    # FA guard.
    s = summarise_regions(v.assign(fa=0.9), probability_threshold=0.1, csf_md_threshold=None,
                          fa_threshold=0.5).iloc[0]
    assert s["n_voxels"] == 0 and s["n_excluded"] == 16


@pytest.mark.parametrize("threshold", [0.1, 0.25, 0.9])
@pytest.mark.parametrize("guard", [None, 1.1e-3])
def test_classify_voxels_agrees_with_summarise_regions(threshold, guard):
    v = _voxels()
    c = classify_voxels(v, probability_threshold=threshold, csf_md_threshold=guard)
    s = summarise_regions(v, probability_threshold=threshold, csf_md_threshold=guard).iloc[0]
    assert c["kept"].sum() == s["n_voxels"] and c["dropped"].sum() == s["n_excluded"]
    assert not (c["kept"] & c["dropped"]).any()


def test_robustness_grid_uses_the_same_guard_as_the_pipeline(rng):
    """The grid's configured specification reproduces summarise_regions' ΔMD."""
    n = 8
    pids = [f"sub-{i}" for i in range(n)]
    frames = []
    shifts = rng.normal(0, 10, n) * 1e-6
    for pid, shift in zip(pids, shifts, strict=True):
        for ses, d in (("pre", 0.0), ("post", shift)):
            frames.append(_voxels(d).assign(participant_id=pid, session=ses,
                                            md_ols=lambda x: x["md"]))
    voxels = pd.concat(frames, ignore_index=True)
    for c in ("participant_id", "session", "region"):
        voxels[c] = voxels[c].astype("category")
    arms = ["ketamine", "saline"] * (n // 2)
    scores = pd.DataFrame({"participant_id": pids, "arm": arms,
                           "madrs_pre": 30.0, "madrs_post": 30.0 - 1e6 * shifts})
    grid = {"fit_method": ("configured",), "probability_threshold": (0.25,),
            "csf_md_threshold": (1.1e-3,), "outcome": ("madrs",), "change": ("absolute",),
            "covariates": ((),), "global_covariate": (False,), "exclude_flagged": (False,),
            "orientation": ("score ~ md",)}
    g = robustness_grid(voxels, scores, grid=grid)
    row = g[g["region"] == "A"].iloc[0]
    # ΔMD is exactly the planted shift (the md_guard voxels are left out of both visits),
    # and Δscore = -ΔMD(1e-6): both simple slopes are -1.
    assert row["slope_ketamine"] == pytest.approx(-1.0, abs=1e-6)
    assert row["slope_saline"] == pytest.approx(-1.0, abs=1e-6)


def test_apply_coverage_blanks_a_sliver_but_never_the_global_reference():
    roi = pd.DataFrame({"region": ["A", "B", GLOBAL_GM], "md_wmean": [0.8e-3, 0.8e-3, 0.9e-3],
                        "md_mean": 0.8e-3, "md_median": 0.8e-3,
                        "coverage_fov": [1.0, 0.5, 0.6], "coverage_brain": [0.9, 0.4, 0.6]})
    out = apply_coverage(roi, min_coverage=0.8)
    assert out["flag"].tolist() == ["", "coverage_fov<0.8;coverage_brain<0.8",
                                    "coverage_fov<0.8;coverage_brain<0.8"]
    assert np.isnan(out.loc[1, "md_wmean"]) and out.loc[0, "md_wmean"] == 0.8e-3
    assert out.loc[2, "md_wmean"] == 0.9e-3          # the reference keeps its value
    assert (apply_coverage(roi, min_coverage=None)["flag"] == "").all()
    assert roi["md_wmean"].notna().all()             # the input is not modified


@pytest.mark.parametrize("region_dtype", ["category", "str", object])
def test_voxel_table_text_is_what_pandas_writes(rng, region_dtype, monkeypatch):
    """The fast writer of the per-voxel tables gives pandas' bytes, or falls back to pandas."""
    from ketamine_nb.derivatives import _voxels_tsv

    n = 400
    d = pd.DataFrame({"region": rng.choice(["BA10_L", "global_gm"], n),
                      "i": rng.integers(0, 99, n),
                      "probability": rng.uniform(0, 1, n).astype(np.float32),
                      "md": rng.normal(8e-4, 1e-4, n) * 10.0 ** rng.integers(-8, 8, n)})
    d.loc[:5, "md"] = [0.0, -0.0, np.inf, -np.inf, 1e-300, 123456789.0]
    d["region"] = d["region"].astype(region_dtype)

    def pandas_text(t):
        return t.to_csv(sep="\t", index=False, float_format="%.6g", lineterminator="\n")

    expected = pandas_text(d)

    def no_pandas(*a, **k):
        raise AssertionError("a plain table went through pandas' writer")

    with monkeypatch.context() as m:                 # the fast path, not the fallback
        m.setattr(pd.DataFrame, "to_csv", no_pandas)
        assert _voxels_tsv(d) == expected
    gap = d.assign(md=d["md"].where(d.index != 3))              # a missing value: pandas writes ""
    assert _voxels_tsv(gap) == pandas_text(gap)
    quoted = d.assign(region='a "quoted"\tname')                # pandas quotes: fall back to it
    assert _voxels_tsv(quoted) == pandas_text(quoted)


def test_cohort_voxels_are_the_sessions_tables_one_after_another(tmp_path, rng):
    """load_cohort_voxels fills columns in place; the result is the plain concatenation.

    Sessions of different lengths and region sets, one without ``md_ols``
    (its rows are missing there), the first one much shorter than the rest
    (the columns must grow).
    """
    from ketamine_nb.derivatives import (
        load_cohort_voxels,
        load_region_voxels,
        session_paths,
        write_region_voxels,
    )

    sessions = pd.DataFrame({"participant_id": ["sub-02", "sub-02", "sub-01", "sub-01"],
                             "session": ["pre", "post", "pre", "post"]})
    sizes = [3, 400, 650, 320]
    region_sets = [["vACC"], ["vACC", GLOBAL_GM], ["BA10_L", GLOBAL_GM], ["BA10_L", "vACC"]]
    for row, n, regions in zip(sessions.itertuples(), sizes, region_sets, strict=True):
        t = pd.DataFrame({"region": pd.Categorical(rng.choice(regions, n)),
                          "i": rng.integers(0, 50, n), "j": rng.integers(0, 50, n),
                          "k": rng.integers(0, 50, n),
                          "probability": rng.uniform(0, 1, n).round(4),
                          "md": rng.uniform(5e-4, 3e-3, n), "fa": rng.uniform(0, 1, n),
                          "md_guard": rng.uniform(5e-4, 3e-3, n)})
        if row.Index != 2:
            t["md_ols"] = rng.uniform(5e-4, 3e-3, n)
        p = session_paths(tmp_path, row.participant_id, row.session)["voxels"]
        p.parent.mkdir(parents=True, exist_ok=True)
        write_region_voxels(t, p)

    got = load_cohort_voxels(tmp_path, sessions, float_dtype="float32")
    frames = []
    for row in sessions.itertuples():
        v = load_region_voxels(tmp_path, row.participant_id, row.session,
                               float_dtype="float32", indices=False)
        frames.append(v.assign(participant_id=row.participant_id, session=row.session))
    expected = pd.concat(frames, ignore_index=True)
    assert len(got) == sum(sizes)
    assert list(got.columns[:3]) == ["participant_id", "session", "region"]
    assert got["region"].cat.categories.tolist() == sorted(
        {r for rs in region_sets for r in rs})
    assert got["participant_id"].cat.categories.tolist() == ["sub-01", "sub-02"]
    for c in ("participant_id", "session", "region"):
        assert got[c].astype(str).tolist() == expected[c].astype(str).tolist(), c
    for c in ("probability", "md", "fa", "md_guard", "md_ols"):
        assert got[c].dtype == np.float32, c
        np.testing.assert_array_equal(got[c].to_numpy(), expected[c].to_numpy(np.float32))
    assert got["md_ols"].isna().sum() == sizes[2]


def test_robustness_region_means_in_blocks_are_the_weighted_means(rng, monkeypatch):
    """_region_means sums a block of rows at a time; the answer is the plain weighted mean."""
    import ketamine_nb.robustness as R

    n = 1000
    v = pd.DataFrame({"probability": rng.uniform(0, 1, n).astype(np.float32),
                      "md": rng.uniform(5e-4, 3e-3, n).astype(np.float32),
                      "md_guard": rng.uniform(5e-4, 3e-3, n).astype(np.float32)})
    v.loc[5, "md"] = np.nan
    codes = rng.integers(0, 6, n).astype(np.int32)
    keep = (v["probability"] >= np.float32(0.25)) & (v["md_guard"] <= np.float32(1.1e-3)) \
        & v["md"].notna()
    d = v[keep].assign(g=codes[keep.to_numpy()], p=lambda x: x["probability"].astype(float))
    expected = (d["md"].astype(float) * d["p"]).groupby(d["g"]).sum() / d["p"].groupby(
        d["g"]).sum()
    for block in (7, 64, 1 << 21):
        monkeypatch.setattr(R, "_BLOCK_ROWS", block)
        got = R._region_means(v, "md", 0.25, 1.1e-3, codes, 6)
        np.testing.assert_allclose(got, expected.reindex(range(6)).to_numpy(), rtol=1e-12)
