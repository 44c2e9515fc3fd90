"""Widgets, driven headless: set each control's value and check the figure and the table.

As in mpl-interactions' tests: a control's ``.value`` is set from code, as a
user's click would, and what the figure draws and the table holds is compared
with what the package's plain functions give for that choice (computed here
independently of the widget).
"""

from __future__ import annotations

import dataclasses

import ipywidgets
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketamine_nb import widgets as W
from ketamine_nb.exceptions import InputError
from ketamine_nb.results import Results
from ketamine_nb.roi import summarise_regions
from ketamine_nb.stats import StatsConfig, region_stats, stats_input
from ketamine_nb.widgets import (
    outcome_explorer,
    robustness_explorer,
    roi_explorer,
    slice_viewer,
)

SUB, SES = "sub-001", "pre"


# --------------------------------------------------------------------------
# helpers


def kept_pixels(w, panel="full"):
    return W._count_color(np.asarray(w.artists[f"overlay_{panel}"].get_array()), W.KEPT_COLOR)


def dropped_pixels(w, panel="full"):
    return W._count_color(np.asarray(w.artists[f"overlay_{panel}"].get_array()),
                          W.DROPPED_COLOR)


def expected_row(results, pid, ses, region, p_thr, c_thr):
    s = summarise_regions(results.session_voxels(pid, ses), probability_threshold=p_thr,
                          csf_md_threshold=c_thr)
    return s[s["region"].astype(str) == region].iloc[0]


def kept_in_slice_by_world(results, pid, ses, region, p_thr, c_thr, axis, mm):
    """Kept voxels whose world coordinate along ``axis`` is ``mm`` (via the image affine)."""
    v = results.session_voxels(pid, ses)
    v = v[(v["region"].astype(str) == region) & (v["probability"] >= p_thr)]
    if c_thr is not None:
        v = v[v["md"] <= c_thr]
    aff = results.image(pid, ses, "md").affine
    xyz = nib.affines.apply_affine(aff, v[["i", "j", "k"]].to_numpy())
    return int(np.sum(np.isclose(xyz[:, axis], mm, atol=1e-3)))


def offsets(w, name):
    return np.asarray(w.artists[name].get_offsets())


def assert_same_row(table_row, stats_row, arm, method="pearson"):
    corr = stats_row[f"rho_{arm}"] if method == "spearman" else stats_row[f"r_{arm}"]
    np.testing.assert_allclose(table_row["correlation"], corr, rtol=1e-9, equal_nan=True)
    for col, ref in (("slope", f"slope_{arm}"), ("se_slope", f"se_slope_{arm}"),
                     ("beta_interaction", "beta_interaction"),
                     ("se_interaction", "se_interaction"), ("p_interaction", "p_interaction")):
        np.testing.assert_allclose(table_row[col], stats_row.get(ref, np.nan), rtol=1e-9,
                                   equal_nan=True, err_msg=col)


# --------------------------------------------------------------------------
# pure helpers


def test_canonical_and_ras_indices_agree_with_nibabel(rng):
    data = rng.random((5, 6, 7)).astype(np.float32)
    # LAS voxel order with swapped j/k axes: a grid that is not RAS+ in two ways
    affine = np.array([[-3.0, 0, 0, 60], [0, 0, 3, -100], [0, 3, 0, -40], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, affine)
    can, can_aff, ornt = W._canonical(img)
    ref = nib.as_closest_canonical(img)
    np.testing.assert_array_equal(can, ref.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(can_aff, ref.affine)
    ijk = np.argwhere(np.ones(data.shape, bool))
    ras = W._ras_indices(ijk, data.shape, ornt)
    np.testing.assert_array_equal(can[ras[:, 0], ras[:, 1], ras[:, 2]],
                                  data[ijk[:, 0], ijk[:, 1], ijk[:, 2]])
    # the world position of a voxel is the same in both grids
    np.testing.assert_allclose(nib.affines.apply_affine(can_aff, ras),
                               nib.affines.apply_affine(affine, ijk))


def test_classify_voxels_counts_as_summarise_regions(small_results):
    v = small_results.session_voxels(SUB, SES)
    for p_thr in (0.05, 0.25, 0.6):
        for c_thr in (None, 0.9e-3, 1.1e-3, 2e-3):
            ref = summarise_regions(v, probability_threshold=p_thr, csf_md_threshold=c_thr)
            for region, g in v.groupby("region", observed=True):
                inside, kept, dropped = W._classify_voxels(
                    g["probability"], g["md"], probability_threshold=p_thr,
                    csf_md_threshold=c_thr)
                r = ref[ref["region"] == region].iloc[0]
                assert kept.sum() == r["n_voxels"] and dropped.sum() == r["n_excluded"]
                assert inside.sum() == kept.sum() + dropped.sum()


def test_slice_layers_partition_the_region(rng):
    shape = (8, 9, 10)
    ijk = np.unique(rng.integers(0, 8, (200, 3)), axis=0)
    kept = rng.random(len(ijk)) < 0.6
    dropped = ~kept & (rng.random(len(ijk)) < 0.5)
    inside = kept | dropped
    for axis in range(3):
        total = np.zeros(3, int)
        for index in range(shape[axis]):
            lay = W._slice_layers(ijk, shape, axis=axis, index=index, inside=inside,
                                  kept=kept, dropped=dropped)
            h, v = W._plane_axes(axis)
            assert lay["kept"].shape == (shape[v], shape[h])
            assert not (lay["kept"] & lay["dropped"]).any()
            total += [lay["inside"].sum(), lay["kept"].sum(), lay["dropped"].sum()]
        assert list(total) == [inside.sum(), kept.sum(), dropped.sum()]


def test_fit_line_has_the_slope_and_passes_through_the_means():
    x, y = np.array([-3.0, 1.0, 4.0]), np.array([2.0, 0.0, 7.0])
    lx, ly = W._fit_line(x, y, 0.5)
    assert list(lx) == [-3.0, 4.0]
    assert (ly[1] - ly[0]) / (lx[1] - lx[0]) == pytest.approx(0.5)
    assert np.interp(x.mean(), lx, ly) == pytest.approx(y.mean())
    assert len(W._fit_line(x, y, np.nan)[0]) == 0


def test_spec_matches_treats_all_and_off():
    t = pd.DataFrame({"csf_md_threshold": [np.nan, 1.1e-3, 1e-3, np.nan],
                      "outcome": ["madrs", "madrs", "qids", "qids"]})
    assert W._spec_matches(t, {"csf_md_threshold": "all", "outcome": "all"}).sum() == 4
    assert list(W._spec_matches(t, {"csf_md_threshold": float("inf"), "outcome": "all"})) == [
        True, False, False, True]
    assert list(W._spec_matches(t, {"csf_md_threshold": 1.1e-3, "outcome": "madrs"})) == [
        False, True, False, False]


# --------------------------------------------------------------------------
# roi_explorer


def test_roi_explorer_starts_on_the_pipelines_numbers(small_results):
    w = roi_explorer(small_results)
    assert isinstance(w, ipywidgets.VBox)
    assert {"region", "subject", "session", "probability_threshold",
            "csf_md_threshold", "view"} <= set(w.controls)
    for name in ("probability_threshold", "csf_md_threshold"):
        assert w.controls[name].continuous_update is False
    row = w.table.iloc[0]
    assert (row["participant_id"], row["session"], row["region"]) == (SUB, SES, "BA10_L")
    assert row["probability_threshold"] == 0.25 and row["csf_md_threshold"] == 1.1e-3
    # the pipeline wrote the same numbers for its default thresholds
    roi = small_results.roi_md
    ref = roi[(roi["participant_id"] == SUB) & (roi["session"] == SES)
              & (roi["region"] == "BA10_L")].iloc[0]
    assert row["n_voxels"] == ref["n_voxels"] and row["n_excluded"] == ref["n_excluded"]
    assert row["md_mean"] == pytest.approx(ref["md_mean"], rel=1e-6)
    # what is drawn: the kept voxels of the slice, found independently through the affine
    n_world = kept_in_slice_by_world(small_results, SUB, SES, "BA10_L", 0.25, 1.1e-3, 1,
                                     row["slice_mm"])
    assert kept_pixels(w) == row["n_voxels_slice"] == n_world > 0
    assert dropped_pixels(w) == row["n_excluded_slice"]
    assert sum(w.artists["hist_kept"].get_data().values) == row["n_voxels"]
    assert sum(w.artists["hist_dropped"].get_data().values) == row["n_excluded"]
    assert "BA10_L" in w.artists["title"].get_text()


def test_raising_the_probability_threshold_lowers_the_voxel_count(small_results):
    w = roi_explorer(small_results)
    before = w.table.iloc[0]
    w.controls["probability_threshold"].value = 0.5
    after = w.table.iloc[0]
    ref = expected_row(small_results, SUB, SES, "BA10_L", 0.5, 1.1e-3)
    assert after["n_voxels"] == ref["n_voxels"] < before["n_voxels"]
    assert after["md_mean"] == pytest.approx(ref["md_mean"], rel=1e-9)
    assert after["probability_threshold"] == 0.5
    assert kept_pixels(w) == after["n_voxels_slice"] < before["n_voxels_slice"]
    assert kept_pixels(w) == kept_in_slice_by_world(small_results, SUB, SES, "BA10_L", 0.5,
                                                    1.1e-3, 1, after["slice_mm"])
    assert sum(w.artists["hist_kept"].get_data().values) == after["n_voxels"]
    # the slice stays where it was: it is centred on the region, not on the threshold
    assert after["slice_index"] == before["slice_index"]


def test_lowering_the_csf_cutoff_drops_more_and_keeps_the_total(small_results):
    w = roi_explorer(small_results)
    before = w.table.iloc[0]
    w.controls["csf_md_threshold"].value = 0.9e-3
    after = w.table.iloc[0]
    ref = expected_row(small_results, SUB, SES, "BA10_L", 0.25, 0.9e-3)
    assert after["n_excluded"] == ref["n_excluded"] > before["n_excluded"]
    assert after["n_voxels"] + after["n_excluded"] == before["n_voxels"] + before["n_excluded"]
    assert after["md_mean"] < before["md_mean"]
    assert dropped_pixels(w) == after["n_excluded_slice"] > before["n_excluded_slice"]
    assert w.artists["cutoff"].get_xdata()[0] == pytest.approx(0.9)
    # "off": nothing is dropped, the cut-off line disappears
    w.controls["csf_md_threshold"].value = float("inf")
    off = w.table.iloc[0]
    assert off["n_excluded"] == 0 and np.isnan(off["csf_md_threshold"])
    assert off["n_voxels"] == before["n_voxels"] + before["n_excluded"]
    assert dropped_pixels(w) == 0 and not w.artists["cutoff"].get_visible()


def test_switching_region_changes_the_table_and_the_voxels_drawn(small_results):
    w = roi_explorer(small_results)
    before = w.table.iloc[0]
    zoom_before = w.figure.axes[1].get_xlim()
    w.controls["region"].value = "amygdala_R"
    after = w.table.iloc[0]
    ref = expected_row(small_results, SUB, SES, "amygdala_R", 0.25, 1.1e-3)
    assert after["region"] == "amygdala_R" and after["n_voxels"] == ref["n_voxels"]
    assert kept_pixels(w) == after["n_voxels_slice"] != before["n_voxels_slice"]
    assert kept_pixels(w) == kept_in_slice_by_world(small_results, SUB, SES, "amygdala_R",
                                                    0.25, 1.1e-3, 1, after["slice_mm"])
    assert kept_pixels(w, "zoom") == kept_pixels(w)
    assert w.figure.axes[1].get_xlim() != zoom_before
    assert "amygdala_R" in w.artists["title"].get_text()
    # the right amygdala lies right of the midline: drawn in the right half of the slice
    shape = small_results.image(SUB, SES, "md").shape
    cols = np.nonzero(np.asarray(w.artists["overlay_full"].get_array())[..., 3].any(0))[0]
    assert cols.min() > shape[0] / 2


def test_view_and_session_switch_show_the_right_md_slice(small_results, monkeypatch):
    reads = {"image": 0, "voxels": 0}
    image, session_voxels = small_results.image, small_results.session_voxels

    def counted_image(*a, **k):
        reads["image"] += 1
        return image(*a, **k)

    def counted_voxels(*a, **k):
        reads["voxels"] += 1
        return session_voxels(*a, **k)

    monkeypatch.setattr(small_results, "image", counted_image)
    monkeypatch.setattr(small_results, "session_voxels", counted_voxels)
    w = roi_explorer(small_results, region="hippocampus_L")
    assert reads == {"image": 1, "voxels": 1}
    for value in (0.1, 0.4, 0.5):
        w.controls["probability_threshold"].value = value
    for value in (0.8e-3, 1.5e-3, float("inf")):
        w.controls["csf_md_threshold"].value = value
    w.controls["region"].value = "vACC"
    assert reads == {"image": 1, "voxels": 1}  # thresholds and regions: the cached table

    w.controls["view"].value = "axial"
    w.controls["session"].value = "post"
    assert reads == {"image": 2, "voxels": 2}
    row = w.table.iloc[0]
    assert row["session"] == "post" and row["view"] == "axial"
    can = nib.as_closest_canonical(image(SUB, "post", "md"))
    expected = can.get_fdata()[:, :, row["slice_index"]].T * 1e3
    np.testing.assert_allclose(w.artists["md_full"].get_array(), expected, rtol=1e-6)
    z = nib.affines.apply_affine(can.affine, [0, 0, row["slice_index"]])[2]
    assert row["slice_mm"] == pytest.approx(z)
    w.controls["session"].value = "pre"
    assert reads == {"image": 2, "voxels": 2}  # cached
    w.controls["subject"].value = "sub-004"
    assert list(w.controls["session"].options) == ["pre", "post"]
    assert w.table.iloc[0]["participant_id"] == "sub-004"
    assert reads == {"image": 3, "voxels": 3}
    monkeypatch.undo()
    w.controls["subject"].value = SUB
    w.controls["session"].value = "post"
    assert kept_pixels(w) == kept_in_slice_by_world(small_results, SUB, "post", "vACC", 0.5,
                                                    None, 2, row["slice_mm"])
    w.controls["subject"].value = "sub-004"
    ref = expected_row(small_results, "sub-004", w.table.iloc[0]["session"], "vACC", 0.5, None)
    assert w.table.iloc[0]["n_voxels"] == ref["n_voxels"]


def test_updates_reuse_one_figure_and_its_artists(small_results):
    w = roi_explorer(small_results)
    fig, md_im, n_axes = w.figure, w.artists["md_full"], len(w.figure.axes)
    n_collections = [len(ax.collections) for ax in fig.axes]
    for region in small_results.regions:
        w.controls["region"].value = region
    w.controls["view"].value = "sagittal"
    assert w.figure is fig and w.artists["md_full"] is md_im and len(fig.axes) == n_axes
    assert [len(ax.collections) for ax in fig.axes] == n_collections  # contours replaced
    assert plt.get_fignums() == []  # never a pyplot figure
    assert len(w.artists["contours"]) == 2


# --------------------------------------------------------------------------
# outcome_explorer


def stats_row(rows_results, region, outcome, change="absolute", covariates=()):
    cfg = StatsConfig(outcomes=(outcome,), covariates=covariates, change=change,
                      n_permutations=0, n_bootstrap=0)
    rows, _ = stats_input(rows_results.roi_deltas, rows_results.scores, config=cfg,
                          participants=rows_results.participants)
    rows = rows[rows["region"] == region]
    return rows, region_stats(rows, config=cfg).iloc[0]


def test_outcome_explorer_shows_the_files_correlations(small_results):
    w = outcome_explorer(small_results)
    assert {"region", "outcome", "change", "arm", "method", "covariates"} <= set(w.controls)
    t = w.table.set_index("arm")
    assert list(t.index) == ["ketamine", "saline"]
    ref = small_results.stats_roi.set_index(["region", "outcome"]).loc[("BA10_L", "madrs")]
    assert t.loc["ketamine", "n"] == ref["n_ketamine"] == len(offsets(w, "points_ketamine"))
    assert t.loc["saline", "n"] == ref["n_saline"] == len(offsets(w, "points_saline"))
    assert t.loc["ketamine", "correlation"] == pytest.approx(ref["r_ketamine"], rel=1e-9)
    # the points are the participants' ΔMD (10⁻⁶ mm²/s) and ΔMADRS
    d = small_results.roi_deltas
    d = d[(d["region"] == "BA10_L") & (d["arm"] == "ketamine")]
    s = small_results.scores.set_index("participant_id").loc[d["participant_id"]]
    expected = np.column_stack([d["delta_md"] * 1e6, s["madrs_post"] - s["madrs_pre"]])
    np.testing.assert_allclose(np.sort(offsets(w, "points_ketamine"), 0),
                               np.sort(expected, 0), rtol=1e-9)

    w.controls["method"].value = "spearman"
    rho = w.table.set_index("arm").loc["ketamine", "correlation"]
    assert rho == pytest.approx(ref["rho_ketamine"], rel=1e-9)
    assert rho != pytest.approx(ref["r_ketamine"])
    assert "ρ" in w.artists["stats"].get_text()

    w.controls["outcome"].value = "qids"
    qref = small_results.stats_roi.set_index(["region", "outcome"]).loc[("BA10_L", "qids")]
    assert w.table["outcome"].eq("qids").all()
    assert w.table.set_index("arm").loc["ketamine", "correlation"] == pytest.approx(
        qref["rho_ketamine"], rel=1e-9)
    expected[:, 1] = (s["qids_post"] - s["qids_pre"]).to_numpy()
    np.testing.assert_allclose(np.sort(offsets(w, "points_ketamine"), 0),
                               np.sort(expected, 0), rtol=1e-9)
    assert "QIDS" in w.artists["ylabel"].get_text()


def test_arm_filter_and_region_switch(small_results):
    w = outcome_explorer(small_results)
    w.controls["arm"].value = "ketamine"
    n_ket = int(small_results.stats_roi["n_ketamine"].iloc[0])
    assert len(offsets(w, "points_ketamine")) == n_ket and len(offsets(w, "points_saline")) == 0
    assert list(w.table["arm"]) == ["ketamine"]
    assert len(w.artists["fit_saline"].get_xdata()) == 0
    w.controls["arm"].value = "saline"
    assert len(offsets(w, "points_ketamine")) == 0
    assert len(offsets(w, "points_saline")) == int(small_results.stats_roi["n_saline"].iloc[0])
    w.controls["arm"].value = "both"

    x_before = np.sort(offsets(w, "points_ketamine")[:, 0])
    w.controls["region"].value = "hippocampus_R"
    assert w.table["region"].eq("hippocampus_R").all()
    d = small_results.roi_deltas
    d = d[(d["region"] == "hippocampus_R") & (d["arm"] == "ketamine")]
    x_after = np.sort(offsets(w, "points_ketamine")[:, 0])
    np.testing.assert_allclose(x_after, np.sort(d["delta_md"] * 1e6), rtol=1e-9)
    assert not np.allclose(x_after, x_before)
    ref = small_results.stats_roi.set_index(["region", "outcome"]).loc[("hippocampus_R",
                                                                        "madrs")]
    assert w.table.set_index("arm").loc["ketamine", "correlation"] == pytest.approx(
        ref["r_ketamine"], rel=1e-9)


@pytest.fixture(scope="module")
def table_results(tmp_path_factory):
    """A 40-participant cohort as tables only (no images): enough per arm to fit the model."""
    from ketamine_nb.simulate import SimulationParams, simulate_tables

    d = simulate_tables(SimulationParams(n_subjects=40), seed=4)
    truth = d["ground_truth"]
    roi_md = pd.concat([truth[["participant_id", "region"]].assign(session=s)
                        for s in ("pre", "post")])
    deltas = truth[["participant_id", "arm", "region", "md_pre", "md_post", "delta_md"]]
    scores = d["scores"].merge(d["participants"][["participant_id", "age", "sex"]],
                               on="participant_id")
    return Results(out_dir=tmp_path_factory.mktemp("tables"), bids_dir=None, roi_md=roi_md,
                   roi_deltas=deltas, participants=d["participants"], scores=scores)


def test_outcome_model_table_follows_every_choice(table_results):
    r = table_results
    w = outcome_explorer(r, region="BA10_L")
    _, ref = stats_row(r, "BA10_L", "madrs")
    t = w.table.set_index("arm")
    for arm in ("ketamine", "saline"):
        assert_same_row(t.loc[arm], ref, arm)
    assert np.isfinite(t.loc["ketamine", "beta_interaction"])
    lx, ly = w.artists["fit_ketamine"].get_data()
    assert (ly[1] - ly[0]) / (lx[1] - lx[0]) == pytest.approx(ref["slope_ketamine"])
    beta_madrs = t.loc["ketamine", "beta_interaction"]

    w.controls["outcome"].value = "qids"
    _, qref = stats_row(r, "BA10_L", "qids")
    t = w.table.set_index("arm")
    for arm in ("ketamine", "saline"):
        assert_same_row(t.loc[arm], qref, arm)
    assert t.loc["ketamine", "beta_interaction"] != pytest.approx(beta_madrs)

    w.controls["change"].value = "percent"
    rows, pref = stats_row(r, "BA10_L", "qids", change="percent")
    assert_same_row(w.table.set_index("arm").loc["ketamine"], pref, "ketamine")
    ys = np.sort(np.concatenate([offsets(w, "points_ketamine")[:, 1],
                                 offsets(w, "points_saline")[:, 1]]))
    np.testing.assert_allclose(ys, np.sort(rows["delta_score"]), rtol=1e-9)
    assert "%" in w.artists["ylabel"].get_text()

    w.controls["covariates"].value = "age+sex"
    _, cref = stats_row(r, "BA10_L", "qids", change="percent", covariates=("age", "sex"))
    t = w.table.set_index("arm")
    assert t.loc["ketamine", "formula"].endswith("+ score_pre + age + sex")
    for arm in ("ketamine", "saline"):
        assert_same_row(t.loc[arm], cref, arm)
    assert t.loc["ketamine", "beta_interaction"] != pytest.approx(
        pref["beta_interaction"], rel=1e-6)

    w.controls["method"].value = "spearman"
    w.controls["arm"].value = "saline"
    assert list(w.table["arm"]) == ["saline"]
    assert_same_row(w.table.iloc[0], cref, "saline", method="spearman")
    assert len(offsets(w, "points_saline")) == cref["n_saline"]


# --------------------------------------------------------------------------
# slice_viewer


def test_slice_viewer_on_an_image_with_an_overlay(small_results):
    md = small_results.image(SUB, SES, "md")
    mask = small_results.image(SUB, SES, "mask")
    w = slice_viewer(md, overlay=mask, view="coronal")
    assert {"view", "slice", "opacity"} <= set(w.controls)
    can = nib.as_closest_canonical(md)
    cmask = nib.as_closest_canonical(mask).get_fdata() > 0
    ny = can.shape[1]
    assert w.controls["slice"].max == ny - 1 and w.table.iloc[0]["slice_index"] == ny // 2
    w.controls["slice"].value = 20
    np.testing.assert_allclose(w.artists["image"].get_array(),
                               can.get_fdata()[:, 20, :].T * 1e3, rtol=1e-6)
    assert w.table.iloc[0]["n_overlay_voxels"] == cmask[:, 20, :].sum() > 0
    assert w.table.iloc[0]["slice_mm"] == pytest.approx(
        nib.affines.apply_affine(can.affine, [0, 20, 0])[1])
    w.controls["view"].value = "sagittal"
    assert w.controls["slice"].max == can.shape[0] - 1
    assert w.table.iloc[0]["slice_index"] == can.shape[0] // 2
    assert w.artists["image"].get_array().shape == (can.shape[2], can.shape[1])
    w.controls["opacity"].value = 0.25
    assert w.artists["overlay"].get_alpha() == 0.25


def test_slice_viewer_on_results(small_results):
    w = slice_viewer(small_results)
    assert {"subject", "session", "kind", "region", "view", "slice", "volume"} <= set(
        w.controls)
    assert w.controls["volume"].disabled
    w.controls["kind"].value = "fa"
    fa = nib.as_closest_canonical(small_results.image(SUB, SES, "fa")).get_fdata()
    index = w.table.iloc[0]["slice_index"]
    np.testing.assert_allclose(w.artists["image"].get_array(), fa[:, :, index].T, rtol=1e-6)
    assert w.table.iloc[0]["n_overlay_voxels"] == 0
    w.controls["region"].value = "amygdala_L"
    row = w.table.iloc[0]
    assert row["slice_index"] != index  # jumped to the region's centre
    v = small_results.session_voxels(SUB, SES)
    v = v[v["region"] == "amygdala_L"]
    xyz = nib.affines.apply_affine(small_results.image(SUB, SES, "md").affine,
                                   v[["i", "j", "k"]].to_numpy())
    assert row["n_overlay_voxels"] == np.isclose(xyz[:, 2], row["slice_mm"], atol=1e-3).sum()
    w.controls["view"].value = "coronal"  # the slice follows the region
    row = w.table.iloc[0]
    assert row["n_overlay_voxels"] == np.isclose(xyz[:, 1], row["slice_mm"], atol=1e-3).sum() > 0
    w.controls["kind"].value = "dwi"
    assert not w.controls["volume"].disabled
    first = np.array(w.artists["image"].get_array())
    w.controls["volume"].value = 5
    assert w.table.iloc[0]["volume"] == 5
    assert not np.allclose(w.artists["image"].get_array(), first)


# --------------------------------------------------------------------------
# robustness_explorer


def test_robustness_filters_select_specifications(small_results):
    w = robustness_explorer(small_results)
    grid = small_results.robustness
    n_specs = grid["spec"].nunique()
    assert len(w.table) == 1  # the configured analysis
    row = w.table.iloc[0]
    assert (row["fit_method"], row["probability_threshold"], row["csf_md_threshold"],
            row["outcome"], row["change"], row["covariates"]) == (
        "configured", 0.25, 1.1e-3, "madrs", "absolute", "none")
    sel = offsets(w, "selected")
    assert len(sel) == 1 and len(offsets(w, "all")) == n_specs - 1
    assert sel[0, 1] == pytest.approx(row["beta_interaction"] / row["se_interaction"])
    assert sel[0, 0] == row["rank"]

    w.controls["csf_md_threshold"].value = "all"
    assert len(w.table) == 4 == len(offsets(w, "selected"))
    assert w.table["csf_md_threshold"].isna().sum() == 1
    w.controls["outcome"].value = "all"
    assert len(w.table) == 8 and set(w.table["outcome"]) == {"madrs", "qids"}
    assert len(offsets(w, "dash_selected")) == 8 * 6  # one mark per choice of each spec
    w.controls["csf_md_threshold"].value = float("inf")
    assert len(w.table) == 2 and w.table["csf_md_threshold"].isna().all()

    w.controls["region"].value = "vACC"
    assert w.table["region"].eq("vACC").all()
    ref = grid[(grid["region"] == "vACC") & grid["csf_md_threshold"].isna()
               & (grid["fit_method"] == "configured") & (grid["probability_threshold"] == 0.25)
               & (grid["change"] == "absolute") & (grid["covariates"] == "none")]
    np.testing.assert_allclose(np.sort(w.table["beta_interaction"]),
                               np.sort(ref["beta_interaction"]))
    assert "vACC" in w.artists["title"].get_text()


def test_missing_tables_say_what_to_run(small_results):
    with pytest.raises(InputError, match="--robustness"):
        robustness_explorer(dataclasses.replace(small_results, robustness=None))
    with pytest.raises(InputError, match="scores"):
        outcome_explorer(dataclasses.replace(small_results, scores=None))
    with pytest.raises(InputError, match="view"):
        roi_explorer(small_results, view="oblique")
