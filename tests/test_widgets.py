"""Widgets, driven headless: set each control's value and check the figure and the table.

As in mpl-interactions' tests: a control's ``.value`` is set from code, as a
user's click would, and what the figure draws and the table holds is compared
with what the package's plain functions give for that choice (computed here
independently of the widget). The input is the in-memory results of
``tests/_builders.py`` (known tables and a known voxel layout); one test
checks the ROI explorer against a processed cohort's ``roi_md.tsv``.
"""

from __future__ import annotations

import dataclasses

import ipywidgets
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest
import traitlets
from _builders import MD_TISSUE, N_CSF

from ketamine_nb.exceptions import InputError
from ketamine_nb.plotting._base import DROPPED_COLOR, KEPT_COLOR
from ketamine_nb.plotting.slices import count_color
from ketamine_nb.roi import summarise_regions
from ketamine_nb.stats import StatsConfig, region_stats, stats_input
from ketamine_nb.widgets import (
    Explorer,
    RegionState,
    outcome_explorer,
    robustness_explorer,
    roi_explorer,
    slice_viewer,
)

SUB, SES = "sub-01", "pre"


# --------------------------------------------------------------------------
# helpers


def kept_pixels(w, panel="full"):
    return count_color(np.asarray(w.artists[f"overlay_{panel}"].get_array()), KEPT_COLOR)


def dropped_pixels(w, panel="full"):
    return count_color(np.asarray(w.artists[f"overlay_{panel}"].get_array()), DROPPED_COLOR)


def expected_row(results, pid, ses, region, p_thr, c_thr):
    s = summarise_regions(results.session_voxels(pid, ses), probability_threshold=p_thr,
                          csf_md_threshold=c_thr)
    return s[s["region"].astype(str) == region].iloc[0]


def kept_in_slice_by_world(results, pid, ses, region, p_thr, c_thr, axis, mm):
    """Kept voxels whose world coordinate along ``axis`` is ``mm`` (via the image affine)."""
    v = results.session_voxels(pid, ses)
    v = v[(v["region"].astype(str) == region) & (v["probability"] >= p_thr)]
    if c_thr is not None:
        v = v[v["md_guard" if "md_guard" in v else "md"] <= c_thr]   # as the pipeline
    aff = results.image(pid, ses, "md").affine
    xyz = nib.affines.apply_affine(aff, v[["i", "j", "k"]].to_numpy())
    return int(np.sum(np.isclose(xyz[:, axis], mm, atol=1e-3)))


def offsets(w, name):
    return np.asarray(w.artists[name].get_offsets())


def stats_row(results, region, outcome, change="absolute", covariates=()):
    cfg = StatsConfig(outcomes=(outcome,), covariates=covariates, change=change,
                      n_permutations=0, n_bootstrap=0)
    rows, _ = stats_input(results.roi_deltas, results.scores, config=cfg,
                          participants=results.participants)
    rows = rows[rows["region"] == region]
    return rows, region_stats(rows, config=cfg).iloc[0]


def assert_same_row(table_row, ref, arm, method="pearson"):
    corr = ref[f"rho_{arm}"] if method == "spearman" else ref[f"r_{arm}"]
    np.testing.assert_allclose(table_row["correlation"], corr, rtol=1e-9, equal_nan=True)
    for col, name in (("slope", f"slope_{arm}"), ("se_slope", f"se_slope_{arm}"),
                      ("beta_interaction", "beta_interaction"),
                      ("se_interaction", "se_interaction"), ("p_interaction", "p_interaction")):
        np.testing.assert_allclose(table_row[col], ref.get(name, np.nan), rtol=1e-9,
                                   equal_nan=True, err_msg=col)


# --------------------------------------------------------------------------
# the base class and the shared region


def test_every_explorer_is_an_explorer_with_lazy_heavy_sliders(memory_results):
    explorers = [roi_explorer(memory_results), outcome_explorer(memory_results),
                 robustness_explorer(memory_results), slice_viewer(memory_results)]
    for w in explorers:
        assert isinstance(w, Explorer) and isinstance(w, ipywidgets.VBox)
        assert w.message.value == "" and not w.table.empty
        for c in w.controls.values():
            if isinstance(c, ipywidgets.widgets.widget_int._Int | ipywidgets.FloatSlider
                          | ipywidgets.SelectionSlider):
                assert c.continuous_update is False, c.description
        assert w.figure is w.handle.figure and w.artists is w.handle.artists
    assert plt.get_fignums() == []  # never a pyplot figure


def test_one_region_state_moves_every_explorer(memory_results):
    state = RegionState(memory_results.regions, "BA10_L")
    roi = roi_explorer(memory_results, region_state=state)
    out = outcome_explorer(memory_results, region_state=state)
    rob = robustness_explorer(memory_results, region_state=state)
    view = slice_viewer(memory_results, region_state=state)
    assert view.controls["region"].value == "BA10_L"  # the viewer took the state's region
    state.region = "amygdala_L"
    for w in (roi, out, rob, view):
        assert w.controls["region"].value == "amygdala_L"
        assert set(w.table.get("region", ["amygdala_L"])) <= {"amygdala_L"}
    assert roi.table.iloc[0]["n_voxels"] == expected_row(
        memory_results, SUB, SES, "amygdala_L", 0.25, 1.1e-3)["n_voxels"]
    out.controls["region"].value = "BA10_R"  # a control moves the state, and the others
    assert state.region == "BA10_R" == roi.controls["region"].value == rob.values["region"]
    view.controls["region"].value = "none"  # the viewer's "no overlay" leaves the state alone
    assert state.region == "BA10_R" and roi.values["region"] == "BA10_R"
    with pytest.raises(traitlets.TraitError):
        state.region = "hippocampus_L"
    followed = []
    state.observe(lambda change: followed.append(change["new"]), names="region")
    rob.controls["region"].value = "BA10_L"  # what a 3D viewer would observe
    assert followed == ["BA10_L"]


# --------------------------------------------------------------------------
# roi_explorer


def test_roi_explorer_starts_on_the_known_layout(memory_results):
    w = roi_explorer(memory_results)
    assert {"region", "subject", "session", "probability_threshold",
            "csf_md_threshold", "view"} <= set(w.controls)
    row = w.table.iloc[0]
    assert (row["participant_id"], row["session"], row["region"]) == (SUB, SES, "BA10_L")
    assert row["probability_threshold"] == 0.25 and row["csf_md_threshold"] == 1.1e-3
    # tests/_builders.py: a 3 x 3 x 3 box at probability 0.6, N_CSF voxels of it CSF-like
    assert (row["n_voxels"], row["n_excluded"]) == (27 - N_CSF, N_CSF)
    assert row["md_wmean"] == pytest.approx(MD_TISSUE)
    n_world = kept_in_slice_by_world(memory_results, SUB, SES, "BA10_L", 0.25, 1.1e-3, 1,
                                     row["slice_mm"])
    assert kept_pixels(w) == row["n_voxels_slice"] == n_world > 0
    assert dropped_pixels(w) == row["n_excluded_slice"]
    assert sum(w.artists["hist_kept"].get_data().values) == row["n_voxels"]
    assert sum(w.artists["hist_dropped"].get_data().values) == row["n_excluded"]
    assert w.artists["mean"].get_xdata()[0] == pytest.approx(MD_TISSUE * 1e3)
    assert "BA10_L" in w.artists["title"].get_text()


def test_the_thresholds_move_the_counts_the_pixels_and_the_histogram(memory_results):
    w = roi_explorer(memory_results)
    before = w.table.iloc[0]
    w.controls["probability_threshold"].value = 0.1  # the shell joins: a 5 x 5 x 5 box
    after = w.table.iloc[0]
    assert (after["n_voxels"], after["n_excluded"]) == (125 - N_CSF, N_CSF)
    assert kept_pixels(w) == after["n_voxels_slice"] == kept_in_slice_by_world(
        memory_results, SUB, SES, "BA10_L", 0.1, 1.1e-3, 1, after["slice_mm"])
    assert after["slice_index"] == before["slice_index"]  # centred on the region, not on it
    w.controls["probability_threshold"].value = 0.7  # above every voxel
    empty = w.table.iloc[0]
    assert empty["n_voxels"] == 0 and np.isnan(empty["md_wmean"]) and kept_pixels(w) == 0
    assert not w.artists["mean"].get_visible()
    w.controls["probability_threshold"].value = 0.25
    w.controls["csf_md_threshold"].value = float("inf")  # "off": nothing is dropped
    off = w.table.iloc[0]
    assert (off["n_voxels"], off["n_excluded"]) == (27, 0) and np.isnan(off["csf_md_threshold"])
    assert dropped_pixels(w) == 0 and not w.artists["cutoff"].get_visible()
    w.controls["csf_md_threshold"].value = 2.5e-3
    assert w.table.iloc[0]["n_excluded"] == 0
    assert w.artists["cutoff"].get_xdata()[0] == pytest.approx(2.5)
    w.controls["csf_md_threshold"].value = 0.8e-3  # tissue sits exactly at the cut-off: kept
    assert w.table.iloc[0]["n_voxels"] == 27 - N_CSF


def test_switching_region_view_and_session_reads_each_session_once(memory_results,
                                                                   monkeypatch):
    reads = {"image": 0, "voxels": 0}
    image, session_voxels = memory_results.image, memory_results.session_voxels

    def counted_image(*a, **k):
        reads["image"] += 1
        return image(*a, **k)

    def counted_voxels(*a, **k):
        reads["voxels"] += 1
        return session_voxels(*a, **k)

    monkeypatch.setattr(memory_results, "image", counted_image)
    monkeypatch.setattr(memory_results, "session_voxels", counted_voxels)
    w = roi_explorer(memory_results, region="BA10_L")
    fig, md_im, n_axes = w.figure, w.artists["md_full"], len(w.figure.axes)
    zoom_before = w.figure.axes[1].get_xlim()
    for value in (0.1, 0.4, 0.5):
        w.controls["probability_threshold"].value = value
    w.controls["region"].value = "BA10_R"
    assert reads == {"image": 1, "voxels": 1}  # thresholds and regions: the cached table
    assert w.figure.axes[1].get_xlim() != zoom_before
    # the right region lies right of the midline: drawn in the right half of the slice
    cols = np.nonzero(np.asarray(w.artists["overlay_full"].get_array())[..., 3].any(0))[0]
    assert cols.min() > image(SUB, SES, "md").shape[0] / 2
    w.controls["view"].value = "axial"
    w.controls["session"].value = "post"
    assert reads == {"image": 2, "voxels": 2}
    row = w.table.iloc[0]
    assert row["session"] == "post" and row["view"] == "axial"
    can = nib.as_closest_canonical(image(SUB, "post", "md"))
    expected = can.get_fdata()[:, :, row["slice_index"]].T * 1e3
    np.testing.assert_allclose(w.artists["md_full"].get_array(), expected, rtol=1e-6)
    assert row["slice_mm"] == pytest.approx(
        nib.affines.apply_affine(can.affine, [0, 0, row["slice_index"]])[2])
    w.controls["session"].value = "pre"
    assert reads == {"image": 2, "voxels": 2}  # cached
    w.controls["subject"].value = "sub-02"
    assert list(w.controls["session"].options) == ["pre", "post"]
    assert w.table.iloc[0]["participant_id"] == "sub-02"
    assert w.figure is fig and w.artists["md_full"] is md_im and len(fig.axes) == n_axes
    assert len(w.artists["contours"]) == 2  # replaced, not piled up
    w.controls["subject"].value = "sub-03"  # no images: a message, the last view stays
    assert "Cannot show this choice" in w.message.value
    assert w.table.iloc[0]["participant_id"] == "sub-02"


def test_roi_explorer_matches_the_pipelines_roi_md(small_results):
    """On a processed cohort, the explorer's start is what ``ketamine-nb run`` wrote."""
    w = roi_explorer(small_results)
    row = w.table.iloc[0]
    roi = small_results.roi_md
    ref = roi[(roi["participant_id"] == row["participant_id"])
              & (roi["session"] == row["session"]) & (roi["region"] == row["region"])].iloc[0]
    assert row["n_voxels"] == ref["n_voxels"] and row["n_excluded"] == ref["n_excluded"]
    assert row["md_wmean"] == pytest.approx(ref["md_wmean"], rel=1e-6)
    assert kept_pixels(w) == kept_in_slice_by_world(
        small_results, row["participant_id"], row["session"], row["region"],
        row["probability_threshold"], row["csf_md_threshold"], 1, row["slice_mm"])


# --------------------------------------------------------------------------
# outcome_explorer


def test_outcome_explorer_draws_the_model_per_arm(memory_results):
    r = memory_results
    w = outcome_explorer(r)
    assert {"region", "outcome", "change", "arm", "method", "covariates"} <= set(w.controls)
    rows, ref = stats_row(r, "BA10_L", "madrs")
    t = w.table.set_index("arm")
    assert list(t.index) == ["ketamine", "saline"]
    for arm in ("ketamine", "saline"):
        assert_same_row(t.loc[arm], ref, arm)
        assert t.loc[arm, "n"] == ref[f"n_{arm}"] == len(offsets(w, f"points:{arm}"))
        lx, ly = w.artists[f"fit:{arm}"].get_data()
        assert (ly[1] - ly[0]) / (lx[1] - lx[0]) == pytest.approx(ref[f"slope_{arm}"])
    # the points are the participants' ΔMD (10⁻⁶ mm²/s) and ΔMADRS
    d = r.roi_deltas[(r.roi_deltas["region"] == "BA10_L") & (r.roi_deltas["arm"] == "ketamine")]
    s = r.scores.set_index("participant_id").loc[d["participant_id"]]
    expected = np.column_stack([d["delta_md"] * 1e6, s["madrs_post"] - s["madrs_pre"]])
    np.testing.assert_allclose(np.sort(offsets(w, "points:ketamine"), 0),
                               np.sort(expected, 0), rtol=1e-9)
    assert "10⁻⁶ mm²/s" in w.handle.ax.get_xlabel()  # the unit of plot_scatter too
    legend = [x.get_text() for x in w.handle.ax.get_legend().get_texts()]
    assert f"r = {ref['r_ketamine']:.2f}" in legend[0]

    w.controls["method"].value = "spearman"
    rho = w.table.set_index("arm").loc["ketamine", "correlation"]
    assert rho == pytest.approx(ref["rho_ketamine"], rel=1e-9) != ref["r_ketamine"]
    assert "ρ" in w.handle.ax.get_legend().get_title().get_text()


def test_outcome_model_table_follows_every_choice(memory_results):
    r = memory_results
    w = outcome_explorer(r, region="BA10_R")
    w.controls["outcome"].value = "qids"
    _, qref = stats_row(r, "BA10_R", "qids")
    for arm in ("ketamine", "saline"):
        assert_same_row(w.table.set_index("arm").loc[arm], qref, arm)
    assert "QIDS" in w.artists["ylabel"].get_text()

    w.controls["change"].value = "percent"
    rows, pref = stats_row(r, "BA10_R", "qids", change="percent")
    assert_same_row(w.table.set_index("arm").loc["ketamine"], pref, "ketamine")
    ys = np.sort(np.concatenate([offsets(w, "points:ketamine")[:, 1],
                                 offsets(w, "points:saline")[:, 1]]))
    np.testing.assert_allclose(ys, np.sort(rows["delta_score"]), rtol=1e-9)
    assert "%" in w.artists["ylabel"].get_text()

    w.controls["covariates"].value = "age+sex"
    _, cref = stats_row(r, "BA10_R", "qids", change="percent", covariates=("age", "sex"))
    t = w.table.set_index("arm")
    assert t.loc["ketamine", "formula"].endswith("+ score_pre + age + sex")
    for arm in ("ketamine", "saline"):
        assert_same_row(t.loc[arm], cref, arm)
    assert t.loc["ketamine", "beta_interaction"] != pytest.approx(pref["beta_interaction"])

    w.controls["method"].value = "spearman"
    w.controls["arm"].value = "saline"
    assert list(w.table["arm"]) == ["saline"]
    assert_same_row(w.table.iloc[0], cref, "saline", method="spearman")
    assert len(offsets(w, "points:saline")) == cref["n_saline"]
    assert len(offsets(w, "points:ketamine")) == 0
    assert len(w.artists["fit:ketamine"].get_xdata()) == 0


# --------------------------------------------------------------------------
# slice_viewer


def test_slice_viewer_on_an_image_with_an_overlay(memory_results):
    md = memory_results.image(SUB, SES, "md")
    mask = memory_results.image(SUB, SES, "mask")
    w = slice_viewer(md, overlay=mask, view="coronal", kind="md")  # in memory: no file name
    assert {"view", "slice", "opacity"} <= set(w.controls)
    can = nib.as_closest_canonical(md)
    cmask = nib.as_closest_canonical(mask).get_fdata() > 0
    ny = can.shape[1]
    assert w.controls["slice"].max == ny - 1 and w.table.iloc[0]["slice_index"] == ny // 2
    w.controls["slice"].value = 5
    np.testing.assert_allclose(w.artists["image"].get_array(),
                               can.get_fdata()[:, 5, :].T * 1e3, rtol=1e-6)
    assert w.table.iloc[0]["n_overlay_voxels"] == cmask[:, 5, :].sum() > 0
    assert w.table.iloc[0]["slice_mm"] == pytest.approx(
        nib.affines.apply_affine(can.affine, [0, 5, 0])[1])
    w.controls["view"].value = "sagittal"
    assert w.controls["slice"].max == can.shape[0] - 1
    assert w.table.iloc[0]["slice_index"] == can.shape[0] // 2
    assert w.artists["image"].get_array().shape == (can.shape[2], can.shape[1])
    w.controls["opacity"].value = 0.25
    assert w.artists["overlay"].get_alpha() == 0.25


def test_slice_viewer_on_results_follows_the_region(memory_results):
    w = slice_viewer(memory_results)
    assert {"subject", "session", "kind", "region", "view", "slice", "volume"} <= set(
        w.controls)
    assert w.controls["volume"].disabled
    w.controls["kind"].value = "fa"
    fa = nib.as_closest_canonical(memory_results.image(SUB, SES, "fa")).get_fdata()
    index = w.table.iloc[0]["slice_index"]
    np.testing.assert_allclose(w.artists["image"].get_array(), fa[:, :, index].T, rtol=1e-6)
    assert w.table.iloc[0]["n_overlay_voxels"] == 0
    w.controls["region"].value = "amygdala_L"
    row = w.table.iloc[0]
    assert row["slice_index"] != index  # jumped to the region's centre
    v = memory_results.session_voxels(SUB, SES)
    v = v[v["region"] == "amygdala_L"]
    xyz = nib.affines.apply_affine(memory_results.image(SUB, SES, "md").affine,
                                   v[["i", "j", "k"]].to_numpy())
    assert row["n_overlay_voxels"] == np.isclose(xyz[:, 2], row["slice_mm"], atol=1e-3).sum()
    assert row["n_overlay_voxels"] == 25  # the centre slice of the 5 x 5 x 5 box with shell
    w.controls["view"].value = "coronal"  # the slice follows the region
    row = w.table.iloc[0]
    assert row["n_overlay_voxels"] == np.isclose(xyz[:, 1], row["slice_mm"], atol=1e-3).sum()


# --------------------------------------------------------------------------
# robustness_explorer


def test_robustness_filters_select_specifications(memory_results):
    grid = memory_results.robustness
    w = robustness_explorer(memory_results)
    assert len(w.table) == 1  # the configured analysis
    row = w.table.iloc[0]
    assert (row["fit_method"], row["probability_threshold"], row["csf_md_threshold"],
            row["outcome"], row["change"], row["covariates"]) == (
        "configured", 0.25, 1.1e-3, "madrs", "absolute", "none")
    sel = offsets(w, "selected")
    assert len(sel) == 1 and len(offsets(w, "estimates")) == 8
    assert sel[0] == pytest.approx([row["rank"], row["beta_interaction"]
                                    / row["se_interaction"]])
    w.controls["csf_md_threshold"].value = "all"
    assert len(w.table) == 2 == len(offsets(w, "selected"))
    assert w.table["csf_md_threshold"].isna().sum() == 1
    w.controls["fit_method"].value = "all"
    assert len(w.table) == 4
    assert w.controls["global_covariate"].value is False  # a boolean choice, configured: off
    assert len(offsets(w, "matrix_selected")) == 4 * 7  # one mark per choice of each spec
    w.controls["csf_md_threshold"].value = float("inf")
    assert len(w.table) == 2 and w.table["csf_md_threshold"].isna().all()
    w.controls["estimate"].value = "beta"
    g = grid[grid["region"] == "BA10_L"]
    np.testing.assert_allclose(offsets(w, "estimates")[:, 1], np.sort(g["beta_interaction"]))
    w.controls["region"].value = "amygdala_L"
    ref = grid[(grid["region"] == "amygdala_L") & grid["csf_md_threshold"].isna()
               & (grid["probability_threshold"] == 0.25)]
    np.testing.assert_allclose(np.sort(w.table["beta_interaction"]),
                               np.sort(ref["beta_interaction"]))
    assert "amygdala_L" in w.artists["title"].get_text()


def test_missing_tables_say_what_to_run(memory_results):
    with pytest.raises(InputError, match="--robustness"):
        robustness_explorer(dataclasses.replace(memory_results, robustness=None))
    with pytest.raises(InputError, match="scores"):
        outcome_explorer(dataclasses.replace(memory_results, scores=None))
    with pytest.raises(InputError, match="view"):
        roi_explorer(memory_results, view="oblique")
