"""The 3D brain viewer without a browser: controls -> traitlets, the linked table, payloads.

The results are the in-memory builder's (``tests/_builders.py``: known ΔMD and
scores per region) plus template-space MD maps written to a temporary folder
with a planted change per participant ``n`` and voxel: ``ΔMD = d·w + e·(1 − w)``
(10⁻⁶ mm²/s) inside the template's brain, where ``w`` runs from 0 (back) to 1
(front), ``d = -(20 + n)`` for ketamine participants and ``+(5 + n)`` for
saline ones, and ``e = 10·sin(n)``. So the mean ΔMD map of an arm is known at
every voxel, and the t map of the Δscore × arm interaction equals, voxel by
voxel, an OLS fitted here by statsmodels.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import ipywidgets
import numpy as np
import pytest

from ketamine_nb.exceptions import InputError

pytest.importorskip("ipyniivue")

MD_PRE = 0.8e-3  # mm²/s


def planted_delta(n: int, arm: str, w=1.0):
    """The planted ΔMD of participant ``n`` where the front weight is ``w`` (10⁻⁶ mm²/s)."""
    d = -(20.0 + n) if arm == "ketamine" else 5.0 + n
    return d * w + 10.0 * np.sin(n) * (1 - w)


def front_weight(shape) -> np.ndarray:
    """``w``: 0 at the back of the grid, 1 at the front (along the second axis, y)."""
    return np.broadcast_to(np.linspace(0.0, 1.0, shape[1])[None, :, None], shape)


def brain_mask():
    """Voxels of the 3 mm template given an MD (the same rule as the maps written)."""
    from ketamine_nb.registration import load_template

    tpl = load_template(3.0)
    data = np.asarray(tpl.dataobj)
    return tpl, data > 0.2 * data.max()


def make_viewer_results(out_dir, *, random_state: int = 0):
    """The builder's results with template-space MD maps written under ``out_dir``."""
    import nibabel as nib
    from _builders import make_results

    from ketamine_nb._utils import save_nifti
    from ketamine_nb.derivatives import session_paths

    res = dataclasses.replace(make_results(random_state=random_state), out_dir=Path(out_dir))
    tpl, brain = brain_mask()
    w = front_weight(brain.shape)
    parts = res.participants
    for n, (pid, arm) in enumerate(zip(parts["participant_id"], parts["arm"], strict=True)):
        d = planted_delta(n, arm, w) * 1e-6
        for ses, md in (("pre", MD_PRE), ("post", MD_PRE + d)):
            path = session_paths(out_dir, pid, ses)["md_mni"]
            if not path.exists():
                save_nifti(nib.Nifti1Image(np.where(brain, md, 0).astype(np.float32),
                                           tpl.affine), path)
    return res


@pytest.fixture(scope="module")
def vresults(tmp_path_factory):
    return make_viewer_results(tmp_path_factory.mktemp("viewer") / "derivatives")


@pytest.fixture(scope="module")
def vdata(vresults):
    from ketamine_nb.widgets._viewer_data import ViewerData

    return ViewerData(vresults)


@pytest.fixture
def viewer(vresults, vdata):
    from ketamine_nb.widgets.viewer import BrainViewer

    return BrainViewer(vresults, data=vdata, webgl=True)


@pytest.fixture
def sent(monkeypatch):
    """Every widget update message: (widget class, state keys, buffer bytes)."""
    log = []
    orig = ipywidgets.Widget._send

    def spy(self, msg, buffers=None):
        log.append((type(self).__name__, sorted(msg.get("state", {})),
                    sum(len(b) for b in buffers or [])))
        return orig(self, msg, buffers)

    monkeypatch.setattr(ipywidgets.Widget, "_send", spy)
    return log


def decode(vol) -> np.ndarray:
    from ketamine_nb.widgets._viewer_data import decode_nifti

    return decode_nifti(bytes(vol.data))


def header(vol):
    import gzip

    import nibabel as nib

    return nib.Nifti1Image.from_bytes(gzip.decompress(bytes(vol.data))).header


# -- maps -----------------------------------------------------------------------------


@pytest.mark.parametrize("arm", ["ketamine", "saline", "both"])
def test_mean_delta_md_map_is_the_planted_mean_of_the_arm(vresults, viewer, arm):
    parts = vresults.participants
    _, brain = brain_mask()
    w = front_weight(brain.shape)
    expected = np.mean([planted_delta(n, a, w) for n, a in enumerate(parts["arm"])
                        if arm in ("both", a)], axis=0)
    viewer.controls["map"].value = "mean_delta_md"
    viewer.controls["arm"].value = arm
    got = decode(viewer.map_volume)
    slope = float(header(viewer.map_volume).get_slope_inter()[0] or 1.0)
    assert np.allclose(got[brain], expected[brain], atol=slope)
    assert np.ptp(got[brain]) > 1.0  # the map varies: the check is not one number
    assert np.allclose(got[~brain], 0, atol=slope)
    assert viewer.shown.unit == "10⁻⁶ mm²/s"


def test_participant_md_is_the_written_map_in_display_units(vresults, viewer):
    parts = vresults.participants
    n = 3
    pid, arm = parts["participant_id"][n], parts["arm"][n]
    viewer.controls["map"].value = "md"
    viewer.controls["participant"].value = pid
    viewer.controls["session"].value = "post"
    got = decode(viewer.map_volume)
    _, brain = brain_mask()
    expected = (MD_PRE + planted_delta(n, arm, front_weight(brain.shape)) * 1e-6) * 1e3
    assert np.allclose(got[brain], expected[brain], atol=1e-4)  # 10⁻³ mm²/s
    assert not viewer.controls["participant"].disabled


def test_t_map_is_the_ols_t_of_the_interaction(vresults, viewer):
    import pandas as pd
    import statsmodels.formula.api as smf

    viewer.controls["outcome"].value = "madrs"
    viewer.controls["map"].value = "t"
    got = decode(viewer.map_volume)
    _, brain = brain_mask()
    s = pd.DataFrame(vresults.scores).copy()
    s["d_score"] = s["madrs_post"] - s["madrs_pre"]
    s["ket"] = (s["arm"] == "ketamine").astype(float)
    ijk = np.argwhere(brain)
    picks = [ijk[np.argmin(ijk[:, 1])], ijk[len(ijk) // 2], ijk[np.argmax(ijk[:, 1])]]
    ts = []
    for i, j, k in picks:
        w = j / (brain.shape[1] - 1)
        s["d_md"] = [planted_delta(n, a, w) for n, a in enumerate(s["arm"])]
        t_expected = smf.ols("d_md ~ d_score * ket + madrs_pre", data=s).fit().tvalues[
            "d_score:ket"]
        assert got[i, j, k] == pytest.approx(t_expected, rel=1e-3, abs=1e-3)
        ts.append(t_expected)
    assert np.ptp(ts) > 0.5  # different voxels, different t
    assert viewer.shown.overlay and viewer.nv.volumes[0] is viewer._template_volume()


def test_payloads_are_small_compact_and_on_the_3mm_grid(viewer):
    for m in ("template", "md", "mean_delta_md", "t"):
        viewer.controls["map"].value = m
    assert len(viewer.payload_bytes) >= 6
    assert max(viewer.payload_bytes.values()) <= 5e6
    for vol in viewer.nv.volumes:
        h = header(vol)
        assert np.allclose(h.get_zooms()[:3], 3.0)
        assert h.get_data_dtype() in (np.dtype(np.int16), np.dtype(np.uint8))
    assert header(viewer.highlight_volume).get_data_shape()[3] == len(viewer.data.regions)


# -- controls -> traitlets ----------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_threshold_sets_cal_min_and_sends_nothing_else(viewer, sent, fraction):
    viewer.controls["map"].value = "mean_delta_md"
    t = viewer.controls["threshold"]
    value = round(fraction * t.max, 2)
    assert value != t.value
    n_payloads, ids = len(viewer.payload_bytes), [v.id for v in viewer.nv.volumes]
    sent.clear()
    viewer.controls["threshold"].value = value
    assert viewer.map_volume.cal_min == viewer.controls["threshold"].value
    assert viewer.map_volume.cal_min == pytest.approx(value, abs=viewer.controls["threshold"].step)
    others = [s for s in sent if s[0] != "FloatSlider"]
    assert others == [("Volume", ["cal_min"], 0)]
    assert len(viewer.payload_bytes) == n_payloads
    assert [v.id for v in viewer.nv.volumes] == ids


def test_opacity_sets_the_region_opacity(viewer, sent):
    sent.clear()
    viewer.controls["opacity"].value = 0.35
    assert viewer.highlight_volume.opacity == pytest.approx(0.35)
    assert [s for s in sent if s[0] != "FloatSlider"] == [("Volume", ["opacity"], 0)]


def test_threshold_follows_a_new_map_and_a_given_threshold(vresults, vdata):
    from ketamine_nb.widgets.viewer import BrainViewer

    v = BrainViewer(vresults, data=vdata, webgl=True, map="t", threshold=1.5)
    assert v.controls["threshold"].value == pytest.approx(1.5)
    assert v.map_volume.cal_min == pytest.approx(1.5)
    v.controls["map"].value = "mean_delta_md"
    assert v.controls["threshold"].description.endswith("(10⁻⁶ mm²/s)")
    assert v.map_volume.cal_min == pytest.approx(v.controls["threshold"].value)
    assert v.controls["threshold"].max == pytest.approx(v.shown.cal_max)


def test_picking_a_region_changes_the_table_to_its_stats_row_and_the_frame(vresults, viewer,
                                                                           sent):
    stats = vresults.stats_roi
    for region in ("amygdala_L", "BA10_R", "BA10_L"):
        sent.clear()
        viewer.controls["region"].value = region
        expected = stats[(stats["region"] == region) & (stats["outcome"] == "madrs")].iloc[0]
        row = viewer.table.iloc[0]
        assert row["region"] == region
        for col in ("beta_interaction", "p_interaction", "slope_ketamine", "r_saline"):
            assert row[col] == pytest.approx(expected[col])
        assert region in viewer.table_view.value
        assert viewer.highlight_volume.frame_4d == viewer.data.regions.index(region)
        assert not [s for s in sent if s[0] == "Volume" and s[1] != ["frame_4d"]]
        assert not [s for s in sent if s[2] > 0]  # no volume resent


def test_picking_a_region_moves_the_crosshair_into_it_but_a_click_does_not(viewer):
    from ketamine_nb.regions import load_region_maps

    for region in ("amygdala_L", "BA10_R"):
        viewer.controls["region"].value = region
        frac = np.asarray(viewer.nv.scene.crosshair_pos)
        ijk = frac * np.asarray(viewer.data.grid.shape[:3]) - 0.5
        mm = (viewer.data.affine @ [*ijk, 1])[:3]
        atlas = load_region_maps([region]).get(region)  # 1 mm, independent of the 3 mm grid
        a_ijk = np.rint(np.linalg.solve(atlas.affine, [*mm, 1])[:3]).astype(int)
        assert np.asarray(atlas.dataobj)[tuple(a_ijk)] >= 0.25
    before = list(viewer.nv.scene.crosshair_pos)
    _click(viewer, _peak_mm("BA10_L"))
    assert viewer.controls["region"].value == "BA10_L"
    assert list(viewer.nv.scene.crosshair_pos) == before


def test_the_scatter_shows_the_region_rows_per_arm(vresults, viewer):
    rows = vresults.stats_input
    viewer.controls["outcome"].value = "qids"
    viewer.controls["region"].value = "BA10_R"
    viewer.controls["arm"].value = "saline"
    pts = viewer.artists["points:saline"].get_offsets()
    sel = rows[(rows["region"] == "BA10_R") & (rows["outcome"] == "qids")
               & (rows["arm"] == "saline")]
    assert np.allclose(np.sort(pts[:, 0]), np.sort(sel["delta_md"] * 1e6))
    assert np.allclose(np.sort(pts[:, 1]), np.sort(sel["delta_score"]))
    assert len(viewer.artists["points:ketamine"].get_offsets()) == 0
    assert viewer.table.iloc[0]["outcome"] == "qids"


def _peak_mm(region: str):
    """MNI mm of the atlas voxel where the region is most probable (independent of the grid)."""
    from ketamine_nb.regions import load_region_maps

    img = load_region_maps([region]).get(region)
    p = np.asarray(img.dataobj)
    ijk = np.unravel_index(np.argmax(p), p.shape)
    return (img.affine @ [*ijk, 1])[:3]


def _click(viewer, mm):
    """What ipyniivue delivers when the crosshair moves (a click in the view)."""
    viewer.nv._handle_custom_msg({"event": "location_change",
                                  "data": {"mm": [float(v) for v in mm], "vox": [0, 0, 0],
                                           "string": "", "values": []}}, [])


def test_clicking_inside_a_region_picks_it_and_reports_position_and_value(viewer):
    viewer.controls["map"].value = "mean_delta_md"
    viewer.controls["region"].value = "BA10_L"
    mm = _peak_mm("amygdala_L")
    _click(viewer, mm)
    assert viewer.controls["region"].value == "amygdala_L"
    assert viewer.table.iloc[0]["region"] == "amygdala_L"
    loc = viewer.location
    assert loc["region"] == "amygdala_L"
    ijk = np.rint(np.linalg.solve(viewer.data.affine, [*mm, 1]))[:3].astype(int)
    assert loc["value"] == pytest.approx(float(viewer.shown.data[tuple(ijk)]))
    assert "amygdala_L" in viewer.info.value and "mm MNI" in viewer.info.value


def test_clicking_outside_every_region_keeps_the_region(viewer):
    viewer.controls["region"].value = "BA10_R"
    _click(viewer, [0.0, -100.0, 60.0])  # parietal midline, far from the regions
    assert viewer.controls["region"].value == "BA10_R"
    assert viewer.location["region"] is None
    assert "no study region" in viewer.info.value


def test_hover_reports_the_region_under_the_cursor(viewer):
    k = viewer.data.regions.index("BA10_R") + 1
    viewer.nv._handle_custom_msg({"event": "hover_idx_change", "data": {"idxValues": [
        {"id": viewer.labels_volume.id, "idx": k}]}}, [])
    assert viewer.hover_region == "BA10_R"
    assert "BA10_R" in viewer.hover_info.value


def test_one_region_state_links_the_viewer_and_the_outcome_explorer(vresults, vdata):
    from ketamine_nb.widgets import RegionState, outcome_explorer
    from ketamine_nb.widgets.viewer import BrainViewer

    state = RegionState(vdata.regions)
    v = BrainViewer(vresults, data=vdata, webgl=True, region_state=state)
    oe = outcome_explorer(vresults, region_state=state)
    oe.controls["region"].value = "amygdala_L"
    assert state.region == "amygdala_L" and v.controls["region"].value == "amygdala_L"
    assert v.table.iloc[0]["region"] == "amygdala_L"
    assert v.highlight_volume.frame_4d == vdata.regions.index("amygdala_L")
    _click(v, _peak_mm("BA10_R"))
    assert state.region == "BA10_R" and oe.controls["region"].value == "BA10_R"
    assert oe.table["region"].iloc[0] == "BA10_R"


# -- fallback, export, errors -----------------------------------------------------------------


def test_without_webgl_the_slice_viewer_is_shown_with_one_line(vresults, vdata):
    from ketamine_nb.widgets.slices import SliceViewer
    from ketamine_nb.widgets.viewer import NO_WEBGL_MESSAGE, BrainViewer

    v = BrainViewer(vresults, data=vdata, webgl=None)
    assert v.probe is not None and v.fallback is None
    assert v.nv in v.view_box.children
    v.probe.webgl = False  # what the browser reports without WebGL2
    assert v.nv not in v.view_box.children
    msg, sv = v.fallback.children
    assert NO_WEBGL_MESSAGE in msg.value and isinstance(sv, SliceViewer)
    assert not v.controls["threshold"].continuous_update
    v.controls["region"].value = "amygdala_L"
    assert v.fallback.children[1] is not sv  # follows the region
    forced = BrainViewer(vresults, data=vdata, webgl=False)
    assert forced.fallback is not None and forced.probe is None


def test_standalone_html_holds_niivue_the_volumes_and_every_region(vresults, vdata, viewer,
                                                                   tmp_path):
    import base64

    viewer.controls["region"].value = "BA10_R"
    page = viewer.html(title="ΔMD")
    assert page.startswith("<!DOCTYPE html>") and "<title>ΔMD</title>" in page
    assert page.count("</script>") == 2  # the bundle did not close its script early
    cfg = json.loads(re.search(r"const CFG = (\{.*?\});\n", page, re.S).group(1)
                     .replace("Infinity", "1e999").replace("NaN", "null"))
    assert set(cfg["panels"]) == set(vdata.regions) and cfg["region"] == "BA10_R"
    shown = base64.b64decode(cfg["volumes"][viewer.map_volume.model_id]["data"])
    assert shown == bytes(viewer.map_volume.data)
    assert cfg["threshold"]["value"] == pytest.approx(viewer.controls["threshold"].value)
    assert viewer.controls["region"].value == "BA10_R"  # put back after rendering panels
    path = viewer.save_html(tmp_path / "viewer.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert all(f"<option value='{r}'" in text for r in vdata.regions)


def test_bad_choices_are_one_line_errors(vresults, vdata):
    from ketamine_nb.widgets.viewer import BrainViewer

    for kw in ({"map": "bold"}, {"outcome": "hamd"}, {"arm": "placebo"},
               {"region": "thalamus"}):
        with pytest.raises(InputError) as err:
            BrainViewer(vresults, data=vdata, webgl=True, **kw)
        assert "\n" not in str(err.value)


def test_a_missing_map_is_a_message_not_a_crash(vresults, vdata):
    from ketamine_nb.widgets.viewer import BrainViewer

    v = BrainViewer(vresults, data=vdata, webgl=True)
    v.controls["map"].value = "fa"  # the builder has no transforms
    assert "Cannot show this choice" in v.message.value
    v.controls["map"].value = "template"
    assert v.message.value == "" and v.shown.key[0] == "template"


def test_brain_viewer_is_public(vresults):
    import ketamine_nb
    from ketamine_nb.widgets import brain_viewer

    assert ketamine_nb.brain_viewer is brain_viewer


def test_regions_on_grid_matches_nilearn_and_labels_the_most_probable(vdata):
    from nilearn.image import resample_img

    from ketamine_nb.regions import load_region_maps, region_at, regions_on_grid

    maps = load_region_maps(vdata.regions)
    prob, labels = regions_on_grid(maps, vdata.grid, probability_threshold=0.3)
    ref = resample_img(maps.img, target_affine=vdata.grid.affine,
                       target_shape=vdata.grid.shape[:3], interpolation="linear",
                       force_resample=True, copy_header=True)
    p = np.asarray(prob.dataobj)
    assert np.allclose(p, np.asarray(ref.dataobj), atol=1e-6)
    lab = np.asarray(labels.dataobj)
    expected = np.where(p.max(-1) >= 0.3, p.argmax(-1) + 1, 0)
    assert np.array_equal(lab, expected) and lab.max() == len(maps.names)
    i, j, k = np.argwhere(lab == 2)[0]
    assert region_at(labels, maps.names, (labels.affine @ [i, j, k, 1])[:3]) == maps.names[1]
    assert region_at(labels, maps.names, [500.0, 0.0, 0.0]) is None


def test_a_map_change_keeps_the_scatter_and_the_table(viewer, sent):
    table, title = viewer.table, viewer.artists["title"].get_text()
    sent.clear()
    viewer.controls["map"].value = "template"
    assert viewer.table is table and viewer.artists["title"].get_text() == title
    assert not [s for s in sent if s[0] == "HTML"]  # the table is not sent again
    viewer.controls["arm"].value = "saline"
    assert viewer.table is not table
