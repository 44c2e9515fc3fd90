"""Figures: each one drawn from data whose picture we know, checked artist by artist."""

from __future__ import annotations

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure

from ketamine_nb import plotting
from ketamine_nb.exceptions import InputError
from ketamine_nb.plotting import (
    ARM_COLORS,
    DELTA_MD_LABEL,
    plot_delta_by_arm,
    plot_delta_md_map,
    plot_dwi_slices,
    plot_forest,
    plot_glass_stat,
    plot_gradients,
    plot_md_map,
    plot_registration,
    plot_robustness,
    plot_scatter,
    plot_truth_vs_measured,
)

UNITS = "10⁻³ mm²/s"  # MD
DELTA_UNITS = "10⁻⁶ mm²/s"  # ΔMD


@pytest.fixture(autouse=True)
def no_show(monkeypatch):
    """Plotting functions never call plt.show()."""
    def refuse(*args, **kwargs):
        raise AssertionError("plt.show() called")

    monkeypatch.setattr(plt, "show", refuse)


def _rgba(c):
    return tuple(np.round(to_rgba(c), 3))


def _rgb(c):
    return _rgba(c)[:3]


def _points(ax, gid_prefix=None):
    cols = [c for c in ax.collections if isinstance(c, PathCollection)
            and not isinstance(c, ContourSet)]
    if gid_prefix is not None:
        cols = [c for c in cols if (c.get_gid() or "").startswith(gid_prefix)]
    return cols


def _by_gid(ax, gid):
    (found,) = [c for c in ax.collections if c.get_gid() == gid]
    return found


# ---------------------------------------------------------------- hand-made inputs

@pytest.fixture
def gtab():
    from dipy.core.gradients import gradient_table

    bvals = np.array([0, 1000, 1000, 2000, 0])
    bvecs = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], float)
    return gradient_table(bvals, bvecs=bvecs)


@pytest.fixture
def forest_table():
    """Five regions for MADRS with known q (two below 0.05), plus QIDS rows to ignore."""
    q = [0.01, 0.2, 0.049, 0.05, 0.8]
    madrs = pd.DataFrame({"region": list("ABCDE"), "outcome": "madrs",
                          "beta_interaction": [0.8, -0.1, -0.6, 0.3, 0.0],
                          "se_interaction": [0.2, 0.3, 0.25, 0.15, 0.5], "q_fdr": q})
    qids = madrs.assign(outcome="qids", q_fdr=0.001)
    return pd.concat([madrs, qids], ignore_index=True)


@pytest.fixture
def spec_table():
    """Four specifications of one region, out of estimate order, with known choices."""
    return pd.DataFrame({
        "spec": [0, 1, 2, 3], "region": "BA10_L",
        "fit_method": ["configured", "configured", "OLS", "OLS"],
        "probability_threshold": [0.25, 0.5, 0.25, 0.5],
        "csf_md_threshold": [None, 1.1e-3, None, 1.1e-3],
        "outcome": "madrs", "change": "absolute", "covariates": "none",
        "beta_interaction": [0.5, -0.2, 1.5, 0.1], "se_interaction": [0.1, 0.2, 1.0, 0.05],
        "p_interaction": [0.001, 0.3, 0.13, 0.04]})


# ---------------------------------------------------------------- tables to pictures

def test_delta_by_arm_shows_every_delta_in_display_units(memory_results):
    d = memory_results.roi_deltas
    fig = plot_delta_by_arm(d)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert DELTA_UNITS in ax.get_ylabel()
    y = np.concatenate([c.get_offsets()[:, 1] for c in _points(ax)])
    expected = d["delta_md"].dropna().to_numpy() * 1e6
    np.testing.assert_allclose(np.sort(y), np.sort(expected), rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == memory_results.regions
    colours = {_rgb(c.get_facecolor()[0]) for c in _points(ax)}
    assert colours == {_rgb(ARM_COLORS[a]) for a in d["arm"].unique()}
    assert any(np.allclose(line.get_ydata(), 0) for line in ax.lines)  # zero line


def test_delta_by_arm_region_subset_and_given_axes(memory_results):
    d = memory_results.roi_deltas
    fig, (left, right) = plt.subplots(1, 2)
    out = plot_delta_by_arm(d, ax=right, regions=["amygdala_L", "BA10_L"])
    assert out is fig
    assert not left.collections
    assert [t.get_text() for t in right.get_xticklabels()] == ["amygdala_L", "BA10_L"]
    n = sum(len(c.get_offsets()) for c in _points(right))
    assert n == d["region"].isin(["amygdala_L", "BA10_L"]).sum()


def test_scatter_one_fit_per_arm_in_arm_colour(memory_results):
    rows = memory_results.stats_input
    rows = rows[(rows["region"] == "BA10_L") & (rows["outcome"] == "madrs")]
    fig, ax = plt.subplots()
    assert plot_scatter(memory_results.stats_input, "BA10_L", "madrs", ax=ax) is fig
    fits = [line for line in ax.lines if (line.get_gid() or "").startswith("fit:")]
    arms = sorted(rows["arm"].unique())
    assert sorted(line.get_gid()[4:] for line in fits) == arms
    for line in fits:
        arm = line.get_gid()[4:]
        assert _rgba(line.get_color()) == _rgba(ARM_COLORS[arm])
        g = rows[rows["arm"] == arm]
        slope = np.polyfit(g["delta_md"] * 1e6, g["delta_score"], 1)[0]
        x, y = line.get_xdata(), line.get_ydata()
        assert (y[-1] - y[0]) / (x[-1] - x[0]) == pytest.approx(slope)
        pts = _by_gid(ax, f"points:{arm}").get_offsets()
        assert len(pts) == len(g)
        np.testing.assert_allclose(np.sort(pts[:, 1]), np.sort(g["delta_score"]))
    assert sum(len(c.get_offsets()) for c in _points(ax, "points:")) == len(rows)
    assert DELTA_UNITS in ax.get_xlabel() and "MADRS" in ax.get_ylabel()


def test_scatter_annotates_r_from_the_stats_row(memory_results):
    row = pd.Series({"region": "BA10_L", "outcome": "madrs", "r_ketamine": 0.42,
                     "r_ketamine_ci_low": 0.10, "r_ketamine_ci_high": 0.66,
                     "r_saline": -0.05, "r_saline_ci_low": -0.4, "r_saline_ci_high": 0.3,
                     "p_interaction": 0.012, "q_fdr": 0.03})
    fig = plot_scatter(memory_results.stats_input, "BA10_L", "madrs", stats_roi=row,
                       change_label="ΔMADRS (% of baseline)")
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("ketamine") and "r = 0.42 [0.10, 0.66]" in t for t in legend)
    assert any(t.startswith("saline") and "r = -0.05 [-0.40, 0.30]" in t for t in legend)
    assert "p = 0.012" in ax.get_title() and "q = 0.03" in ax.get_title()
    # The title's p is the one the q came from: the permutation p when there is one.
    perm = pd.concat([row, pd.Series({"p_perm_interaction": 0.0042,
                                      "q_source": "p_perm_interaction"})])
    fig = plot_scatter(memory_results.stats_input, "BA10_L", "madrs", stats_roi=perm)
    assert "p (permutation) = 0.0042" in fig.axes[0].get_title()
    assert ax.get_ylabel() == "ΔMADRS (% of baseline)"
    with pytest.raises(InputError):
        plot_scatter(memory_results.stats_input, "nowhere", "madrs")


def test_forest_marks_exactly_the_q_below_alpha(forest_table):
    fig, ax = plt.subplots()
    assert plot_forest(forest_table, outcome="madrs", ax=ax) is fig
    assert [t.get_text() for t in ax.get_yticklabels()] == list("ABCDE")
    madrs = forest_table[forest_table["outcome"] == "madrs"].reset_index(drop=True)
    sig = _by_gid(ax, "significant").get_offsets()
    assert sorted(sig[:, 1]) == [0, 2]  # A (q 0.01) and C (q 0.049); D has q = 0.05
    np.testing.assert_allclose(sorted(sig[:, 0]), sorted(madrs["beta_interaction"][[0, 2]]))
    assert len(_by_gid(ax, "not significant").get_offsets()) == 3
    stars = [t for t in ax.texts if t.get_text().endswith("*")]
    assert sorted(t.get_position()[1] for t in stars) == [0, 2]
    (bars,) = [c for c in ax.collections if c.get_gid() is None]
    half = [abs(s[1][0] - s[0][0]) / 2 for s in bars.get_segments()]
    np.testing.assert_allclose(half, 1.959964 * madrs["se_interaction"], rtol=1e-6)
    assert any(np.allclose(line.get_xdata(), 0) for line in ax.lines)  # zero line
    with pytest.raises(InputError):
        plot_forest(forest_table, outcome="hamd")
    # With the table's interval (the configured test's), the bars are that interval.
    lo, hi = [-0.1, -0.9, -1.2, 0.1, -1.0], [1.9, 0.7, -0.1, 0.5, 1.0]
    fig, ax = plt.subplots()
    plot_forest(forest_table.assign(interaction_ci_low=lo * 2, interaction_ci_high=hi * 2),
                outcome="madrs", ax=ax)
    (bars,) = [c for c in ax.collections if c.get_gid() is None]
    ends = np.array([[s[0][0], s[1][0]] for s in bars.get_segments()])
    np.testing.assert_allclose(np.sort(ends, axis=1), np.c_[lo, hi], rtol=1e-9)
    assert "95 % interval" in ax.get_xlabel()


def test_forest_of_the_pipeline_table(small_results):
    table = small_results.stats_roi
    fig = plot_forest(table, outcome="qids")
    ax = fig.axes[0]
    qids = table[table["outcome"] == "qids"]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(qids["region"])
    assert "QIDS-SR" in ax.get_title()
    missing = table.reindex(columns=["beta_interaction"])["beta_interaction"].isna()
    n_missing = int((missing & (table["outcome"] == "qids")).sum())
    assert sum(t.get_text() == "not estimated" for t in ax.texts) == n_missing


def test_robustness_curve_is_sorted_and_matrix_matches(spec_table):
    fig = plot_robustness(spec_table, "BA10_L",
                          highlight={"fit_method": "OLS", "csf_md_threshold": 1.1e-3})
    top, bottom = fig.axes
    y = _by_gid(top, "estimates").get_offsets()[:, 1]
    np.testing.assert_allclose(y, [-0.2, 0.1, 0.5, 1.5])  # specs 1, 3, 0, 2
    # Which sorted position used which choice: spec order is [1, 3, 0, 2].
    assert list(_by_gid(bottom, "fit_method=OLS").get_offsets()[:, 0]) == [1, 3]
    assert list(_by_gid(bottom, "csf_md_threshold=None").get_offsets()[:, 0]) == [2, 3]
    assert list(_by_gid(bottom, "probability_threshold=0.5").get_offsets()[:, 0]) == [0, 1]
    labels = [t.get_text() for t in bottom.get_yticklabels()]
    assert "CSF guard: none" in labels and f"CSF guard: MD ≤ 1.1×{UNITS}" in labels
    marked = list(_by_gid(top, "selected").get_offsets()[:, 0])
    assert marked == [1]  # spec 3 (OLS, 1.1e-3) sits second
    assert list(_by_gid(bottom, "matrix_selected").get_offsets()[:, 0]) == [1] * 6  # 6 choices
    for ax, gid in ((top, "marks"), (bottom, "matrix_marks")):  # a band across each panel
        assert [seg[0][0] for seg in _by_gid(ax, gid).get_segments()] == [1]
    t = plot_robustness(spec_table, "BA10_L", estimate="t").axes[0]
    ts = _by_gid(t, "estimates").get_offsets()[:, 1]
    np.testing.assert_allclose(ts, np.sort(spec_table["beta_interaction"]
                                           / spec_table["se_interaction"]))


def test_robustness_of_the_pipeline_grid(small_results):
    rob = small_results.robustness
    one_scale = rob[(rob["outcome"] == "madrs") & (rob["change"] == "absolute")]
    fig = plot_robustness(one_scale, "hippocampus_L")
    y = _by_gid(fig.axes[0], "estimates").get_offsets()[:, 1]
    assert len(y) == (one_scale["region"] == "hippocampus_L").sum()
    finite = y[np.isfinite(y)]
    assert np.all(np.diff(finite) >= 0)
    assert not np.isfinite(y[len(finite):]).any()  # missing estimates last
    with pytest.warns(UserWarning, match="different scales"):
        plot_robustness(rob, "hippocampus_L")


def test_truth_vs_measured(small_results, tmp_path):
    d, gt = small_results.roi_deltas, small_results.ground_truth
    fig, ax = plt.subplots()
    assert plot_truth_vs_measured(d, gt, ax=ax) is fig
    m = d.merge(gt, on=["participant_id", "region"], suffixes=("", "_truth"))
    r = np.corrcoef(m["delta_md"], m["delta_md_truth"])[0, 1]
    assert f"r = {r:.3f}" in ax.get_title()
    assert sum(len(c.get_offsets()) for c in _points(ax, "points:")) == len(m)
    (identity,) = [line for line in ax.lines if line.get_gid() == "identity"]
    np.testing.assert_allclose(identity.get_xdata(), identity.get_ydata())
    assert DELTA_UNITS in ax.get_xlabel() and DELTA_UNITS in ax.get_ylabel()
    png = tmp_path / "truth.png"
    fig.savefig(png, dpi=60)
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- raw data

def test_dwi_slices_titles_and_pixels(gtab, rng):
    data = rng.random((10, 12, 8, 5)).astype(np.float32)
    fig = plot_dwi_slices(nib.Nifti1Image(data, np.eye(4)), gtab)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4  # first b0 + three diffusion-weighted
    assert titles[0].startswith("volume 0: b = 0 s/mm²")
    assert "volume 3: b = 2000 s/mm²" in titles[3] and "g = (0.00, 0.00, 1.00)" in titles[3]
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), data[:, :, 4, 1].T)
    cor = plot_dwi_slices(nib.Nifti1Image(data, np.eye(4)), gtab, volumes=[4],
                          axis="coronal", slice_index=3)
    np.testing.assert_array_equal(cor.axes[0].images[0].get_array(), data[:, 3, :, 4].T)
    with pytest.raises(InputError):
        plot_dwi_slices(nib.Nifti1Image(data, np.eye(4)), gtab, axis="oblique")


def test_gradients_both_signs_coloured_by_b(gtab):
    fig = plt.figure()
    ax = fig.add_subplot(projection="3d")
    assert plot_gradients(gtab, ax=ax) is fig
    plus, minus = (c for c in ax.collections if c.get_label() in ("+g", "−g"))
    pts = np.array(plus._offsets3d).T  # the scatter's 3D data
    np.testing.assert_allclose(pts, gtab.bvecs[~gtab.b0s_mask])
    np.testing.assert_allclose(np.array(minus._offsets3d).T, -pts)
    np.testing.assert_allclose(plus.get_array(), [1000, 1000, 2000])
    assert any("b-value (s/mm²)" in a.get_ylabel() for a in fig.axes)
    with pytest.raises(InputError):
        plot_gradients(gtab, ax=plt.figure().add_subplot())



def test_framewise_displacement_draws_estimate_truth_excluded_and_threshold():
    from ketamine_nb.plotting import plot_framewise_displacement

    motion = pd.DataFrame({"volume": range(5), "fd": [0, 0.3, 3.1, 0.4, 0.2],
                           "excluded": [False, False, True, False, False]})
    truth = pd.DataFrame({"volume": range(5),
                          "framewise_displacement_mm": [0, 0.2, 2.9, 0.3, 0.1]})
    fig = plot_framewise_displacement(motion, truth, threshold=2.0, title="sub-001")
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    np.testing.assert_allclose(lines["estimated by the realignment"].get_ydata(), motion["fd"])
    np.testing.assert_allclose(lines["true (simulator)"].get_ydata(), [0, 0.2, 2.9, 0.3, 0.1])
    np.testing.assert_allclose(lines["left out of the fit"].get_xdata(), [2])
    np.testing.assert_allclose(lines["outlier threshold"].get_ydata(), [2.0, 2.0])
    assert ax.get_ylabel() == "framewise displacement (mm)" and ax.get_title() == "sub-001"
    bare = plot_framewise_displacement(motion.drop(columns="excluded"), threshold=False)
    assert [ln.get_label() for ln in bare.axes[0].get_lines()] == [
        "estimated by the realignment"]
    with pytest.raises(InputError, match="fd"):
        plot_framewise_displacement(truth)


# ---------------------------------------------------------------- maps

def test_md_map_has_a_contour_per_region_and_cut(small_results):
    from ketamine_nb.regions import load_region_maps
    from ketamine_nb.registration import apply_transform

    pid = small_results.sessions["participant_id"][0]
    md = small_results.image(pid, "pre", "md")
    names = ["BA10_L", "amygdala_L", "hippocampus_R"]
    maps = load_region_maps(names)
    regions = apply_transform(maps.img, small_results.transform(pid, "pre"), target=md,
                              direction="to_native")
    fig = plot_md_map(md, regions_img=regions, region_names=names)
    contours = [c for ax in fig.axes for c in ax.collections if isinstance(c, ContourSet)]
    assert len(contours) == 3 * len(names)  # ortho: three cuts, one contour set each
    colours = {_rgba(c.get_edgecolor()[0]) for c in contours}
    assert colours == {_rgba(c) for c, _ in plotting._base._region_styles(names).values()}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == names
    assert any(UNITS in ax.get_ylabel() for ax in fig.axes)  # the colour bar
    top = max(float(np.nanmax(im.get_array())) for ax in fig.axes for im in ax.images)
    assert 0.5 < top <= float(np.nanmax(np.asarray(md.dataobj))) * 1e3 + 1e-6


def test_registration_draws_template_edges(small_results):
    from ketamine_nb.dwi import load_dwi, mean_b0

    pid = small_results.sessions["participant_id"][0]
    img, gt = load_dwi(small_results.paths(pid, "post")["dwi"])
    fig = plot_registration(mean_b0(img, gt), small_results.transform(pid, "post"))
    cuts = [ax for ax in fig.axes if len(ax.images) >= 2]
    assert len(cuts) == 3  # sagittal, coronal, axial: the b0 and the edge map
    edge = cuts[0].images[-1]
    assert _rgba(edge.get_cmap()(1.0)) == _rgba("#E69F00")
    with pytest.raises(InputError):
        plot_registration(img, small_results.transform(pid, "post"))


def _mni_blobs(values):
    from ketamine_nb.registration import load_template

    t = load_template(3.0)
    data = np.zeros(t.shape, np.float32)
    for (i, j, k), v in values.items():
        data[i:i + 3, j:j + 3, k:k + 3] = v
    return nib.Nifti1Image(data, t.affine)


def test_delta_md_map_symmetric_in_display_units():
    img = _mni_blobs({(20, 40, 30): -2e-5, (40, 40, 30): 1e-5})
    given = plt.figure()
    fig = plot_delta_md_map(img, vmax=30, figure=given)
    assert fig is given
    cbar = fig.axes[-1]
    assert cbar.get_ylabel() == DELTA_MD_LABEL
    assert cbar.get_ylim() == pytest.approx((-30, 30))
    auto = plot_delta_md_map(img).axes[-1]
    assert auto.get_ylim() == pytest.approx((-20, 20))  # 99th pct of |ΔMD| × 1e6


def test_glass_stat_threshold_and_label():
    img = _mni_blobs({(20, 40, 30): 5.0, (40, 40, 30): -2.0})
    fig = plot_glass_stat(img, threshold=3.0, stat_label="t (interaction)")
    assert fig.axes[-1].get_ylabel() == "t (interaction)"
    assert "(27 voxels)" in fig.get_suptitle()  # one 3x3x3 blob above |t| = 3
    assert fig.axes[-1].get_ylim() == pytest.approx((-5, 5))


# ---------------------------------------------------------------- conventions and builders

def _luminance(colour):
    """WCAG relative luminance of an sRGB colour."""
    rgb = np.array(to_rgba(colour)[:3])
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(lin @ [0.2126, 0.7152, 0.0722])


def test_region_palette_is_visible_on_black_and_spares_the_arms():
    assert len(set(plotting.REGION_PALETTE)) == len(plotting.REGION_PALETTE) >= 4
    for colour in plotting.REGION_PALETTE:
        # contrast with black (L = 0) at least 3:1, the WCAG minimum for graphics
        assert (_luminance(colour) + 0.05) / 0.05 >= 3, colour
    assert not set(plotting.REGION_PALETTE) & set(ARM_COLORS.values())
    styles = plotting._base._region_styles(["BA10_L", "BA10_R", "vACC"])
    assert styles["BA10_L"][0] == styles["BA10_R"][0] != styles["vACC"][0]
    assert (styles["BA10_L"][1], styles["BA10_R"][1]) == ("-", "--")


def test_one_choice_label_for_every_spelling_of_off():
    from ketamine_nb.plotting import choice_label

    for off in (None, float("nan"), float("inf"), "n/a", ""):
        assert choice_label("csf_md_threshold", off) == "CSF guard: none"
    assert choice_label("csf_md_threshold", "0.0011") == f"CSF guard: MD ≤ 1.1×{UNITS}"
    assert choice_label("probability_threshold", 0.25) == "atlas probability ≥ 0.25"
    assert choice_label("covariates", ("age", "sex")) == "covariates: age+sex"
    assert choice_label("covariates", "none") == "covariates: none"
    for yes in (True, "True", np.True_):
        assert choice_label("global_covariate", yes) == "global covariate: yes"
    assert choice_label("global_covariate", "False") == "global covariate: no"


def test_scatter_figure_updates_its_artists_in_place(memory_results):
    from ketamine_nb.plotting import ScatterFigure

    rows = memory_results.stats_input
    stats = memory_results.stats_roi.set_index(["region", "outcome"])
    handle = ScatterFigure()
    before = dict(handle.artists)
    for region in ("BA10_L", "amygdala_L"):
        g = rows[(rows["region"] == region) & (rows["outcome"] == "madrs")]
        row = stats.loc[(region, "madrs")]
        assert handle.update(g, region=region, outcome="madrs", stats_row=row,
                             line="model") is handle
        assert handle.artists == before  # the same artists, new data
        for arm in ("ketamine", "saline"):
            a = g[g["arm"] == arm]
            pts = handle.artists[f"points:{arm}"].get_offsets()
            np.testing.assert_allclose(np.sort(pts[:, 0]), np.sort(a["delta_md"] * 1e6))
            x, y = handle.artists[f"fit:{arm}"].get_data()
            assert (y[1] - y[0]) / (x[1] - x[0]) == pytest.approx(row[f"slope_{arm}"])
            # the model's line passes through the arm's means
            xm, ym = a["delta_md"].mean() * 1e6, a["delta_score"].mean()
            assert np.interp(xm, x, y) == pytest.approx(ym)
        assert region in handle.artists["title"].get_text()
    # BA10_L's planted slopes (tests/_builders.py) are recovered by the model
    from _builders import SLOPES

    for arm, slope in SLOPES.items():
        assert stats.loc[("BA10_L", "madrs"), f"slope_{arm}"] == pytest.approx(slope, abs=0.15)
    handle.update(g, region="amygdala_L", outcome="madrs", arms=["saline"])
    assert len(handle.artists["points:ketamine"].get_offsets()) == 0
    assert [t.get_text()[:6] for t in handle.ax.get_legend().get_texts()] == ["saline"]


def test_spec_curve_figure_selects_and_resorts(memory_results):
    from ketamine_nb.plotting import SpecCurveFigure, select_specifications
    from ketamine_nb.plotting.specification import spec_levels

    grid = memory_results.robustness
    handle = SpecCurveFigure(spec_levels(grid))
    handle.update(grid, "BA10_R", estimate="beta", selected={"fit_method": "OLS"})
    g = grid[grid["region"] == "BA10_R"]
    y = handle.artists["estimates"].get_offsets()[:, 1]
    np.testing.assert_allclose(y, np.sort(g["beta_interaction"]))
    sel = handle.artists["selected"].get_offsets()
    assert len(sel) == (g["fit_method"] == "OLS").sum() == 4
    np.testing.assert_allclose(np.sort(sel[:, 1]),
                               np.sort(g.loc[g["fit_method"] == "OLS", "beta_interaction"]))
    handle.update(grid, "amygdala_L", estimate="t", selected={"csf_md_threshold": None})
    t = handle.shown
    assert t["selected"].sum() == g["csf_md_threshold"].isna().sum() == 4
    assert select_specifications(grid, {"csf_md_threshold": float("inf")}).sum() == 12
    assert select_specifications(grid, {"csf_md_threshold": "all"}).all()
    with pytest.raises(InputError):
        handle.update(grid, "nowhere")


def test_region_voxels_figure_draws_the_known_layout(memory_results):
    from _builders import N_CSF

    from ketamine_nb.plotting import plot_region_voxels
    from ketamine_nb.plotting._base import DROPPED_COLOR, KEPT_COLOR
    from ketamine_nb.plotting.slices import count_color

    md = memory_results.image("sub-01", "pre", "md")
    vox = memory_results.session_voxels("sub-01", "pre")
    fig = plot_region_voxels(md, vox, "BA10_L", probability_threshold=0.25,
                             csf_md_threshold=1.1e-3, view="axial")
    full = next(ax for ax in fig.axes if ax.images)
    rgba = np.asarray(full.images[1].get_array())
    # the slice through the box's centre: 9 voxels, of which the CSF ones in that slice dropped
    assert count_color(rgba, KEPT_COLOR) + count_color(rgba, DROPPED_COLOR) == 9
    assert "kept 23 voxels" in fig.texts[1].get_text() and f"dropped {N_CSF}" in \
        fig.texts[1].get_text()
    low = plot_region_voxels(md, vox, "BA10_L", probability_threshold=0.1,
                             csf_md_threshold=None, view="axial")
    assert "kept 125 voxels" in low.texts[1].get_text()  # the 5 × 5 × 5 box with its shell


def test_slice_figure_in_ras_orientation(memory_results):
    from ketamine_nb.plotting import plot_slice

    md = memory_results.image("sub-01", "pre", "md")
    fig = plot_slice(md, view="axial", slice_index=7, kind="md")
    ax = fig.axes[0]
    shown = np.asarray(ax.images[0].get_array())
    data = np.asarray(md.dataobj)[::-1, :, 7].T * 1e3  # stored LAS: flip x for RAS+
    np.testing.assert_allclose(shown, data, rtol=1e-6)
    assert [t.get_text() for t in ax.texts] == ["L", "R"]
    assert UNITS in fig.axes[1].get_xlabel()
