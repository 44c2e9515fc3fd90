"""The figures a teacher asks for (issue 16.3): each checked against a known answer.

Permutation null, paired MD, Bland-Altman, colour FA and the atlas maps, and
the region palette of the registration-shift figure. Set
``KETAMINE_NB_FIGURE_DIR`` to a folder to keep a PNG of each figure for a look.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex, to_rgba
from matplotlib.figure import Figure

from ketamine_nb import plotting as kp
from ketamine_nb import stats
from ketamine_nb.exceptions import InputError

TEACHING_FIGURES = ("plot_permutation_null", "plot_paired_md", "plot_bland_altman",
                    "plot_colour_fa", "plot_atlas_maps")


def _keep(fig, name):
    folder = os.environ.get("KETAMINE_NB_FIGURE_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(folder) / f"{name}.png", dpi=100, facecolor=fig.get_facecolor())


# ------------------------------------------------------------------ permutation null

def test_permutation_p_counts_as_the_formula():
    null = np.array([-3.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    # two-sided: |s*| >= 2.5 for -3, 3, 4; one-sided: s* >= 2.5 for 3, 4
    assert stats.permutation_p(null, 2.5) == pytest.approx((1 + 3) / (1 + 7))
    assert stats.permutation_p(null, 2.5, two_sided=False) == pytest.approx((1 + 2) / (1 + 7))
    assert stats.permutation_p(null, -2.5) == pytest.approx((1 + 3) / (1 + 7))
    # a tie counts as reaching the observed value
    assert stats.permutation_p(null, 3.0) == pytest.approx((1 + 3) / (1 + 7))
    assert np.isnan(stats.permutation_p(null, np.nan))


def test_plot_permutation_null_writes_the_permutation_p():
    rng = np.random.default_rng(3)
    null = rng.normal(size=999)
    observed = 2.2
    hits = int(np.count_nonzero(np.abs(null) >= observed))
    fig = kp.plot_permutation_null(null, observed, label="v")
    _keep(fig, "permutation_null")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    text = ax.get_legend().get_title().get_text()
    m = re.fullmatch(r"p = \(1 \+ (\d+)\) / \(1 \+ (\d+)\) = (\S+)", text)
    assert m, text
    assert (int(m[1]), int(m[2])) == (hits, 999)
    p = (1 + hits) / (1 + 999)
    assert float(m[3]) == pytest.approx(p, rel=0.05)
    assert f"p = {m[3]}" in ax.get_title()
    # the orange bars are exactly the permutations at least as extreme
    extreme = [b for b in ax.patches if b.get_gid() == "extreme"]
    assert extreme and all(b.get_facecolor() == to_rgba(kp._base.HIGHLIGHT_COLOR)
                           for b in extreme)
    assert sum(b.get_height() for b in extreme) == hits
    observed_line = [ln for ln in ax.lines if ln.get_gid() == "observed"][0]
    assert observed_line.get_xdata()[0] == observed
    assert ax.get_xlabel() == "v"


def test_plot_permutation_null_needs_the_observed_value():
    with pytest.raises(InputError, match="observed"):
        kp.plot_permutation_null(np.zeros(10))


def _rows_with_a_missing_participant(memory_results):
    # One participant without BA10_R: that row has another arm pattern, so the
    # rows after it use the permutations region_stats draws second.
    rows = memory_results.stats_input
    drop = (rows["region"] == "BA10_R") & (rows["participant_id"] == "sub-01")
    return rows[~drop].reset_index(drop=True)


def test_permutation_null_reproduces_region_stats(memory_results):
    rows = _rows_with_a_missing_participant(memory_results)
    cfg = stats.StatsConfig(n_permutations=199, n_bootstrap=0, random_state=5)
    table = stats.region_stats(rows, config=cfg)
    for row in table.itertuples():
        pn = stats.permutation_null(rows, row.region, row.outcome, config=cfg)
        assert pn.null.shape == (199,)
        assert pn.observed == pytest.approx(row.v_interaction, rel=1e-9)
        assert pn.p == pytest.approx(row.p_perm_interaction, abs=1e-12)
        assert pn.p == stats.permutation_p(pn.null, pn.observed)
    # the t with free permutations too, and a dict config (as stats_config.json)
    cfg_t = {"n_permutations": 99, "n_bootstrap": 0, "statistic": "t"}
    table_t = stats.region_stats(rows, config=stats.StatsConfig(**cfg_t))
    r0 = table_t.iloc[0]
    pn = stats.permutation_null(rows, r0["region"], r0["outcome"], config=cfg_t)
    assert pn.observed == pytest.approx(r0["t_interaction"], rel=1e-9)
    assert pn.p == pytest.approx(r0["p_perm_interaction"], abs=1e-12)


def test_permutation_null_plots_in_one_line(memory_results):
    cfg = stats.StatsConfig(n_permutations=99, n_bootstrap=0)
    pn = stats.permutation_null(memory_results.stats_input, "BA10_L", "madrs", config=cfg)
    fig = kp.plot_permutation_null(pn)
    ax = fig.axes[0]
    assert "BA10_L" in ax.get_title() and "Aspin-Welch" in ax.get_xlabel()
    assert ax.get_legend().get_title().get_text().endswith(kp._base._fmt_p(pn.p))
    with pytest.raises(InputError, match="no rows"):
        stats.permutation_null(memory_results.stats_input, "nowhere", "madrs", config=cfg)
    with pytest.raises(InputError, match="n_permutations"):
        stats.permutation_null(memory_results.stats_input, "BA10_L", "madrs",
                               config=stats.StatsConfig(n_permutations=0))


# ------------------------------------------------------------------ paired MD

def test_plot_paired_md_draws_one_line_per_participant(memory_results):
    d = memory_results.roi_deltas
    fig = kp.plot_paired_md(d, "BA10_L")
    _keep(fig, "paired_md")
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split(" (")[0] for ax in axes] == ["ketamine", "saline"]
    for ax in axes:
        arm = ax.get_title().split(" (")[0]
        g = d[(d["region"] == "BA10_L") & (d["arm"] == arm)]
        lines = {ln.get_gid(): ln for ln in ax.lines}
        people = [k for k in lines if k and k.startswith("participant:")]
        assert sorted(people) == sorted(f"participant:{p}" for p in g["participant_id"])
        for pid, pre, post in g[["participant_id", "md_pre", "md_post"]].itertuples(
                index=False):
            np.testing.assert_allclose(lines[f"participant:{pid}"].get_ydata(),
                                       [pre * 1e3, post * 1e3])
        np.testing.assert_allclose(lines["mean"].get_ydata(),
                                   [g["md_pre"].mean() * 1e3, g["md_post"].mean() * 1e3])
        assert to_hex(lines["mean"].get_color()) == to_hex(kp.ARM_COLORS[arm])
        delta = (g["md_post"] - g["md_pre"]).mean() * 1e6
        assert f"{delta:+.1f}" in lines["mean"].get_label()
    assert "10⁻³ mm²/s" in axes[0].get_ylabel()


def test_plot_paired_md_asks_for_the_deltas_table(memory_results):
    with pytest.raises(InputError, match="md_pre"):
        kp.plot_paired_md(memory_results.roi_md, "BA10_L")
    with pytest.raises(InputError, match="region"):
        kp.plot_paired_md(memory_results.roi_deltas, "nowhere")


# ------------------------------------------------------------------ Bland-Altman

def _ba_table():
    pre = np.array([0.80, 0.82, 0.79, 0.85, 0.81, 0.83]) * 1e-3
    diff = np.array([3.0, -5.0, 1.0, 8.0, -2.0, 4.0]) * 1e-6
    n = len(pre)
    saline = pd.DataFrame({"participant_id": [f"s{k}" for k in range(n)], "arm": "saline",
                           "region": "BA10_L", "md_pre": pre, "md_post": pre + diff})
    ketamine = saline.assign(participant_id=lambda t: "k" + t["participant_id"],
                             arm="ketamine", md_post=saline["md_pre"] - 20e-6)
    other = saline.assign(region="vACC", md_post=saline["md_pre"] + 1e-3)
    return pd.concat([saline, ketamine, other], ignore_index=True), pre, diff


def test_bland_altman_equals_numpy():
    table, pre, diff = _ba_table()
    points, s = stats.bland_altman(table, "BA10_L")  # default: the control arm
    assert s["arm"] == "saline" and s["n"] == len(pre)
    post = pre + diff
    d = post - pre
    assert s["bias"] == pytest.approx(np.mean(d), rel=1e-9)
    assert s["sd"] == pytest.approx(np.std(d, ddof=1), rel=1e-9)
    assert s["loa_low"] == pytest.approx(np.mean(d) - 1.96 * np.std(d, ddof=1), rel=1e-9)
    assert s["loa_high"] == pytest.approx(np.mean(d) + 1.96 * np.std(d, ddof=1), rel=1e-9)
    np.testing.assert_allclose(points["mean_md"], (pre + post) / 2)
    np.testing.assert_allclose(points["difference"], d)
    k = stats.bland_altman(table, "BA10_L", arm="ketamine")[1]
    assert k["bias"] == pytest.approx(-20e-6) and k["sd"] == pytest.approx(0, abs=1e-15)
    with pytest.raises(InputError, match="at least two"):
        stats.bland_altman(table, "BA10_L", arm="placebo")


def test_plot_bland_altman_shows_the_numbers():
    table, pre, diff = _ba_table()
    fig = kp.plot_bland_altman(table, "BA10_L")
    _keep(fig, "bland_altman")
    ax = fig.axes[0]
    s = stats.bland_altman(table, "BA10_L")[1]
    lines = {ln.get_gid(): ln for ln in ax.lines}
    for gid, key in (("bias", "bias"), ("loa_low", "loa_low"), ("loa_high", "loa_high")):
        assert lines[gid].get_ydata()[0] == pytest.approx(s[key] * 1e6)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(f"= {s['bias'] * 1e6:.1f}" in t for t in labels)
    assert any(f"{s['loa_low'] * 1e6:.1f} to {s['loa_high'] * 1e6:.1f}" in t for t in labels)
    pts = [c for c in ax.collections if c.get_gid() == "points"][0].get_offsets()
    np.testing.assert_allclose(pts[:, 0], (pre + diff / 2) * 1e3)
    np.testing.assert_allclose(pts[:, 1], diff * 1e6)
    assert to_hex(ax.collections[0].get_facecolor()[0]) == to_hex(kp.ARM_COLORS["saline"])


# ------------------------------------------------------------------ colour FA

def _tensor_dwi(direction, affine, shape=(6, 7, 5)):
    """DWI of one tensor (FA about 0.8) along ``direction`` of the voxel axes."""
    from dipy.core.gradients import gradient_table

    from ketamine_nb.simulate import gradient_scheme, tensor_signal

    bvals, bvecs = gradient_scheme(30, 2, 1000.0)
    evals = np.array([1.7e-3, 0.2e-3, 0.2e-3])
    sig = 1000.0 * tensor_signal(evals, np.asarray(direction, float), bvals, bvecs)
    data = np.broadcast_to(sig, (*shape, len(bvals))).astype(np.float32)
    return nib.Nifti1Image(data, affine), gradient_table(bvals, bvecs=bvecs)


@pytest.mark.parametrize(("affine", "direction", "colour"), [
    # LAS (as dcm2niix writes): voxel axis 0 is left-right
    (np.diag([-2.0, 2.0, 2.0, 1.0]), (1, 0, 0), 0),
    # voxel axes (y, x, z): a tensor along voxel axis 0 runs anterior-posterior
    (np.array([[0, 2.0, 0, 0], [-2.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]]), (1, 0, 0), 1),
    (np.eye(4), (0, 0, 1), 2),
])
def test_colour_fa_colours_the_direction(affine, direction, colour):
    img, gtab = _tensor_dwi(direction, affine)
    rgb = np.asarray(kp.colour_fa(img, gtab).dataobj)
    ev = np.array([1.7e-3, 0.2e-3, 0.2e-3])
    fa = np.sqrt(0.5) * np.sqrt(((ev - np.roll(ev, 1)) ** 2).sum()) / np.sqrt((ev ** 2).sum())
    assert rgb.shape == (*img.shape[:3], 3) or rgb.shape[-1] == 3
    np.testing.assert_allclose(rgb[..., colour], fa, atol=0.01)  # |e1| = 1 along it
    others = [k for k in range(3) if k != colour]
    assert np.all(rgb[..., others] < 1e-3)


def test_plot_colour_fa_is_red_along_x():
    img, gtab = _tensor_dwi((1, 0, 0), np.diag([-2.0, 2.0, 2.0, 1.0]))
    mask = np.zeros(img.shape[:3], np.uint8)
    mask[1:-1, 1:-1, 1:-1] = 1
    fig = kp.plot_colour_fa(img, gtab, mask_img=nib.Nifti1Image(mask, img.affine),
                            brightness=1.0)
    _keep(fig, "colour_fa")
    images = {im.get_gid(): im.get_array() for ax in fig.axes for im in ax.images}
    assert set(images) == {"dec:sagittal", "dec:coronal", "dec:axial"}
    for arr in images.values():
        arr = np.asarray(arr)
        inside = arr.sum(-1) > 0
        assert inside.any()
        assert np.all(arr[inside][:, 0] > 0.7) and np.all(arr[inside][:, 1:] < 1e-3)
        # outside the mask: black
        assert np.all(arr[~inside] == 0)
    keys = [t.get_text() for ax in fig.axes for t in ax.texts
            if (t.get_gid() or "").startswith("key:")]
    assert keys == ["left-right", "anterior-posterior", "superior-inferior"]


# ------------------------------------------------------------------ atlas maps

def _small_region_maps():
    from ketamine_nb.regions import STUDY_REGIONS, RegionMaps

    affine = np.array([[2.0, 0, 0, -40], [0, 2.0, 0, -40], [0, 0, 2.0, -30], [0, 0, 0, 1]])
    data = np.zeros((40, 50, 30, len(STUDY_REGIONS)), np.float32)
    for k in range(len(STUDY_REGIONS)):
        data[4 + 5 * k: 8 + 5 * k, 20:28, 10:16, k] = 0.9
    table = pd.DataFrame({"region": list(STUDY_REGIONS)})
    return RegionMaps(img=nib.Nifti1Image(data, affine), names=list(STUDY_REGIONS),
                      table=table)


def test_plot_atlas_maps_has_one_legend_entry_per_region_in_the_palette():
    maps = _small_region_maps()
    fig = kp.plot_atlas_maps(maps, display_mode="z", cut_coords=(-10,))
    _keep(fig, "atlas_maps")
    legend = fig.legends[-1]
    names = [t.get_text() for t in legend.get_texts()]
    assert names == list(maps.names)
    colours = [to_hex(h.get_color()) for h in legend.legend_handles]
    palette = {to_hex(c) for c in kp.REGION_PALETTE}
    assert set(colours) <= palette
    # left and right of a structure share a colour, different structures do not
    assert colours[0] == colours[1] and len(set(colours)) == 4
    styles = [h.get_linestyle() for h in legend.legend_handles]
    assert styles[0] == "-" and styles[1] == "--"


# ------------------------------------------------------------------ palette and texts

def test_registration_shift_uses_the_region_palette():
    table = pd.DataFrame([{"shift_mm": s, "region": r, "md_change_percent": k * s}
                          for k, r in enumerate(("BA10_L", "BA10_R", "vACC"))
                          for s in (0, 2, 4)])
    fig = kp.plot_registration_shift(table)
    palette = {to_hex(c) for c in kp.REGION_PALETTE}
    lines = [ln for ln in fig.axes[0].lines if (ln.get_gid() or "").startswith("region:")]
    assert len(lines) == 3
    assert {to_hex(ln.get_color()) for ln in lines} <= palette
    assert "#000000" not in palette


def test_every_teaching_figure_is_exported_with_a_caption_and_alt_text():
    for name in (*TEACHING_FIGURES, "plot_forest", "plot_registration_shift", "plot_power"):
        assert name in kp.__all__ and callable(getattr(kp, name))
        entry = kp.ALT_TEXT[name]
        assert "\n" not in entry["caption"] and len(entry["caption"]) < 200
        assert len(entry["alt"]) > len(entry["caption"])
    assert "ALT_TEXT" in kp.__all__
    for name in ("permutation_null", "permutation_p", "bland_altman", "PermutationNull"):
        assert name in stats.__all__


def test_power_bars_are_the_rates_with_their_intervals():
    power = pd.DataFrame({"region": ["A", "B", "C"],
                          "quantity": ["power", "false_positive_rate", "rejection_rate"],
                          "rate": [0.6, 0.05, 0.1], "ci_low": [0.4, 0.01, 0.05],
                          "ci_high": [0.75, 0.2, 0.3]})
    fig = kp.plot_power(power)
    ax = fig.axes[0]
    bars = sorted(ax.patches, key=lambda b: b.get_y())
    np.testing.assert_allclose([b.get_width() for b in bars], power["rate"])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["A", "B", "C"]
    assert len({b.get_facecolor() for b in bars}) == 3  # shaded by what the rate is
    assert len(ax.get_legend().get_texts()) == 3
    with pytest.raises(InputError, match="one outcome"):
        kp.plot_power(pd.concat([power, power]))
