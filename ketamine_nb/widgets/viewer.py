"""The 3D brain viewer: maps and study regions in NiiVue, linked to the region statistics.

NiiVue (WebGL2) runs in the browser through ``ipyniivue`` (an anywidget that
bundles its JavaScript, so it works offline). The maps are sent once, as
small gzipped NIfTI files on the 3 mm template grid (``int16`` with a scale
factor, regions as ``uint8``); a control change then sends only traitlets
(``cal_min``, ``opacity``, ``frame_4d``), never a volume again. Which map,
which region and the statistics beside it are computed by plain functions
(:mod:`._viewer_data`, :func:`ketamine_nb.regions.regions_on_grid`,
:func:`ketamine_nb.voxelwise.mean_delta_md_map`, ...); the scatter is the
plotting package's :class:`~ketamine_nb.plotting.ScatterFigure` and the
model's row comes from ``Results.stats_roi``.
"""

from __future__ import annotations

import base64
import html
import json
from collections import OrderedDict
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import traitlets

from ..exceptions import InputError
from ..plotting import ARM_COLORS, REGION_PALETTE, ScatterFigure
from ..plotting._base import plain_figure
from ._base import Explorer, RegionState
from ._controls import dropdown, fmt_p, html_table, note, sessions_of
from ._viewer_data import (
    MAP_CACHE_SIZE,
    MAP_LABELS,
    MAPS,
    ViewerData,
    encode_nifti,
)

__all__ = ["BrainViewer", "brain_viewer", "viewer_html"]

_OUTCOMES = {"madrs": "MADRS", "qids": "QIDS-SR"}
#: The line shown when the browser has no WebGL2.
NO_WEBGL_MESSAGE = ("WebGL2 is not available in this browser: showing the 2D slice viewer "
                    "instead.")
#: Colour of the picked region (NiiVue colormap name).
HIGHLIGHT_COLORMAP = "green"

_PROBE_ESM = """
function render({ model, el }) {
  let ok = false;
  try {
    const c = document.createElement("canvas");
    ok = !!(c.getContext("webgl2"));
  } catch (e) { ok = false; }
  model.set("webgl", ok);
  model.save_changes();
}
export default { render };
"""


def _probe_class():
    import anywidget

    class WebGLProbe(anywidget.AnyWidget):
        """An invisible widget that reports whether the browser has WebGL2."""

        _esm = _PROBE_ESM
        webgl = traitlets.Bool(None, allow_none=True).tag(sync=True)

    return WebGLProbe


def _hex_rgb(colour: str) -> list:
    colour = colour.lstrip("#")
    return [int(colour[i:i + 2], 16) for i in (0, 2, 4)]


class BrainViewer(Explorer):
    """See :func:`brain_viewer`."""

    def __init__(self, results, *, map="mean_delta_md", participant_id=None, session=None,
                 arm="both", region=None, outcome="madrs", threshold=None,
                 region_state: RegionState | None = None, webgl: bool | None = None,
                 height: int = 420, data: ViewerData | None = None):
        from ipyniivue import NiiVue, ShowRender, SliceType

        if map not in MAPS:
            raise InputError(f"map must be one of {', '.join(MAPS)}, not {map!r}")
        if outcome not in _OUTCOMES:
            raise InputError(f"outcome must be one of {', '.join(_OUTCOMES)}, not {outcome!r}")
        if arm not in ("both", *ARM_COLORS):
            raise InputError(f"arm must be one of both, {', '.join(ARM_COLORS)}, not {arm!r}")
        self.results = results
        self.data = data or ViewerData(results)
        regions = [r for r in self.data.regions]
        if region is not None and region not in regions:
            raise InputError(f"region {region!r} is not one of {', '.join(regions)}")
        people = self.data.participants()
        arms = {}
        if results.participants is not None and "arm" in results.participants:
            arms = dict(zip(results.participants["participant_id"],
                            results.participants["arm"], strict=False))
        pid = participant_id or (people[0] if people else None)
        sessions = sessions_of(results, pid) if pid else []
        controls = {
            "map": dropdown("Map", [(MAP_LABELS[m], m) for m in MAPS], map),
            "participant": dropdown("Participant", [(f"{p} ({arms[p]})" if p in arms else p, p)
                                                    for p in people], pid),
            "session": dropdown("Session", sessions, session or (sessions[0] if sessions
                                                                  else None)),
            "arm": dropdown("Arm", ["both", *ARM_COLORS], arm),
            "region": dropdown("Region", regions, region or regions[0]),
            "outcome": dropdown("Outcome", [(v, k) for k, v in _OUTCOMES.items()], outcome),
            "threshold": widgets.FloatSlider(description="Threshold", value=0.0, min=0.0,
                                             max=1.0, step=0.01, continuous_update=True,
                                             readout_format=".3g",
                                             style={"description_width": "initial"},
                                             layout=widgets.Layout(width="auto")),
            "opacity": widgets.FloatSlider(description="Region opacity", value=0.7, min=0.0,
                                           max=1.0, step=0.05, continuous_update=True,
                                           style={"description_width": "initial"},
                                           layout=widgets.Layout(width="auto")),
        }
        self._threshold_given = threshold
        self.nv = NiiVue(height=height, slice_type=SliceType.MULTIPLANAR,
                         multiplanar_show_render=ShowRender.ALWAYS, is_colorbar=True,
                         show_3d_crosshair=True)
        self._volumes: OrderedDict = OrderedDict()
        self._template = None
        self._map_volume = None
        self._highlight, self._labels = self._region_volumes()
        self.shown = None
        self.location: dict = {}
        self.hover_region: str | None = None
        self.fallback = None
        self._shown_region = None
        self._stats_key = self._shown_stats = None
        self._clicked = False
        self.info = widgets.HTML("<span style='font-size:12px;color:#555'>Click in the view: "
                                 "position, region and value appear here.</span>")
        self.info.add_class("ketamine-nb-viewer-info")
        self.hover_info = widgets.HTML()
        self.hover_info.add_class("ketamine-nb-viewer-hover")
        self.view_box = widgets.VBox([self.nv], layout=widgets.Layout(width="58%"))
        self.view_box.add_class("ketamine-nb-viewer-view")
        self.nv.on_location_change(self._on_location)
        self.nv.on_hover_idx_change(self._on_hover)
        handle = ScatterFigure(figure=plain_figure(5.2, 4.0), arms=tuple(ARM_COLORS))
        self._prepare(controls, first=True)
        super().__init__(controls, handle, title="Brain viewer: maps and regions (NiiVue), "
                         "with the region's ΔMD against Δscore", name="viewer", columns=4,
                         region_state=region_state)
        stats = widgets.VBox([self.output, self.table_view],
                             layout=widgets.Layout(width="42%", overflow="auto"))
        head, grid = self.children[0], self.children[1]
        self.probe = None
        extra = []
        if webgl is None:
            self.probe = _probe_class()()
            self.probe.observe(self._on_probe, names="webgl")
            extra = [self.probe]
        self.children = [head, grid, self.message,
                         widgets.HBox([self.view_box, stats]), self.info, self.hover_info,
                         *extra]
        if webgl is False:
            self.use_fallback()

    # -- volumes ---------------------------------------------------------------

    def _region_volumes(self):
        from ipyniivue import Volume

        prob = np.asarray(self.data.probability.dataobj, np.float32) * 100
        hb = encode_nifti(prob, self.data.affine, dtype="uint8")
        thr = float(self.results.config.get("probability_threshold") or 0.25) * 100
        highlight = Volume(data=hb, name="region_probability.nii.gz",
                           colormap=HIGHLIGHT_COLORMAP, opacity=0.7, cal_min=thr,
                           cal_max=100.0, colorbar_visible=False)
        lb = encode_nifti(np.asarray(self.data.labels.dataobj), self.data.affine,
                             dtype="uint8")
        labels = Volume(data=lb, name="regions.nii.gz", opacity=0.25, colorbar_visible=False)
        n = len(self.data.regions)
        rgb = [[0, 0, 0]] + [_hex_rgb(REGION_PALETTE[k % len(REGION_PALETTE)])
                             for k in range(n)]
        labels.set_colormap_label({"R": [c[0] for c in rgb], "G": [c[1] for c in rgb],
                                   "B": [c[2] for c in rgb], "A": [0] + [255] * n,
                                   "I": list(range(n + 1)),
                                   "labels": ["", *self.data.regions]})
        self.payload_bytes = {"region_probability": len(hb), "regions": len(lb)}
        return highlight, labels

    def _volume(self, m):
        """Return the NiiVue volume of a map (made and sent once while cached)."""
        from ipyniivue import Volume

        if m.key not in self._volumes:
            payload = encode_nifti(m.data, self.data.affine)
            self.payload_bytes[m.key] = len(payload)
            vol = Volume(data=payload, name=m.name.replace(" ", "_") + ".nii.gz",
                         colormap="warm" if m.overlay else "gray",
                         colormap_negative="winter" if m.overlay else "",
                         cal_min=m.threshold, cal_max=m.cal_max,
                         colorbar_visible=m.key[0] != "template",  # a.u.: no scale
                         opacity=0.9 if m.overlay else 1.0)
            self._volumes[m.key] = vol
            while len(self._volumes) > MAP_CACHE_SIZE:
                key, old = self._volumes.popitem(last=False)
                if old is not self._template and old is not self._map_volume:
                    old.close()
        self._volumes.move_to_end(m.key)
        return self._volumes[m.key]

    def _template_volume(self):
        if self._template is None:
            self._template = self._volume(self.data.get("template"))
        return self._template

    @property
    def map_volume(self):
        """The NiiVue volume of the map shown (its ``cal_min`` is the threshold)."""
        return self._map_volume

    @property
    def highlight_volume(self):
        """The volume of the picked region (4D probabilities, one frame per region)."""
        return self._highlight

    @property
    def labels_volume(self):
        """All regions as labels (what the hover reports)."""
        return self._labels

    # -- controls --------------------------------------------------------------

    def _map_of(self, values):
        return self.data.get(values["map"], participant_id=values["participant"],
                             session=values["session"], arm=values["arm"],
                             outcome=values["outcome"])

    def _prepare(self, controls, *, first=False, owner=None):
        """Enable the controls that apply; fit the threshold slider to the map."""
        values = {k: c.value for k, c in controls.items()}
        per_person = values["map"] in ("md", "fa")
        controls["participant"].disabled = not per_person
        controls["session"].disabled = not per_person
        if owner is controls["participant"]:
            opts = sessions_of(self.results, values["participant"])
            old = controls["session"].value
            controls["session"].options = opts
            controls["session"].value = old if old in opts else (opts[0] if opts else None)
            values["session"] = controls["session"].value
        if not (first or owner in (controls["map"], controls["participant"],
                                   controls["session"], controls["arm"],
                                   controls["outcome"])):
            return
        try:
            m = self._map_of(values)
        except InputError:
            return
        t = controls["threshold"]
        top = max(m.cal_max, 1e-6)
        value = m.threshold
        if first and self._threshold_given is not None:
            value = float(self._threshold_given)
            top = max(top, value)
        if self.shown is not None and self.shown.key[0] == m.key[0] and not first:
            value = min(t.value, top)  # same kind of map: keep the user's threshold
        t.max = max(t.max, top)
        t.min = 0.0
        t.step = float(10.0 ** np.floor(np.log10(top / 100)))  # a round step: 0.1, 0.01, ...
        t.value = value
        t.max = top
        t.description = f"Threshold ({m.unit})"

    def adjust(self, change):
        """Offer the participant's sessions; fit the threshold to a new map."""
        self._prepare(self.controls, owner=change["owner"])

    def _on_change(self, change):
        c = self.controls
        if not self._busy and change["owner"] in (c["threshold"], c["opacity"]):
            self.set_display()
            return
        super()._on_change(change)

    def set_display(self):
        """Send the threshold (``cal_min``) and the region opacity: traitlets only."""
        vol = self.map_volume
        if vol is not None:
            vol.cal_min = float(self.controls["threshold"].value)
        self._highlight.opacity = float(self.controls["opacity"].value)
        if self.fallback is not None:
            self._redraw_fallback()

    # -- drawing ---------------------------------------------------------------

    def draw(self, values):
        """Show the map and the region; update the scatter; return the model's row."""
        m = self._map_of(values)
        vol = self._volume(m)
        layers = ([self._template_volume(), vol] if m.overlay else [vol])
        layers += [self._highlight, self._labels]
        self.shown, self._map_volume = m, vol
        if [v.id for v in self.nv.volumes] != [v.id for v in layers]:
            self.nv.volumes = layers
        region = values["region"]
        self._highlight.frame_4d = self.data.regions.index(region)
        if region != self._shown_region and not self._clicked:
            self.nv.scene.crosshair_pos = self.data.centre_frac(region)  # go to the region
        self._shown_region = region
        self.set_display()
        key = (region, values["outcome"], values["arm"])
        if key == self._stats_key and not self.table.empty:
            return self.table  # only the view changed: the scatter and the table stay
        rows, row = self.region_model(region, values["outcome"])
        arms = list(ARM_COLORS) if values["arm"] == "both" else [values["arm"]]
        self.handle.update(rows, region=region, outcome=values["outcome"], stats_row=row,
                           arms=arms)
        self._stats_key = key
        return row.to_frame().T.reset_index(drop=True)

    def redisplay(self):
        """Show the scatter again in a kernel, only when it changed."""
        if self._shown_stats == self._stats_key:
            return
        self._shown_stats = self._stats_key
        super().redisplay()

    def region_model(self, region: str, outcome: str):
        """Rows of ``stats_input`` and the ``stats_roi`` row of one region and outcome."""
        res = self.results
        rows = res.stats_input
        if rows is None:
            from ..stats import StatsConfig, stats_input

            if res.scores is None:
                raise InputError(f"{res.out_dir}: no scores.tsv; the statistics need scores")
            rows = stats_input(res.roi_deltas, res.scores, participants=res.participants,
                               config=StatsConfig(n_permutations=0, n_bootstrap=0))[0]
            res.stats_input = rows
        sub = rows[(rows["region"] == region) & (rows["outcome"] == outcome)]
        if sub.empty:
            raise InputError(f"{region}: no participant has both ΔMD and {outcome} scores")
        table = res.stats_roi
        sel = None if table is None else table[(table["region"] == region)
                                               & (table["outcome"] == outcome)]
        if sel is None or sel.empty:
            from ..stats import StatsConfig, region_stats

            row = region_stats(sub, config=StatsConfig(outcomes=(outcome,), n_permutations=0,
                                                       n_bootstrap=0)).iloc[0]
        else:
            row = sel.iloc[0]
        return sub, row

    def describe(self, table):
        """Show the region's model: per-arm r and slope, the interaction."""
        r = table.iloc[0]
        cols = {"region": ("region", str), "outcome": ("outcome", str),
                "n ket.": ("n_ketamine", "d"), "n sal.": ("n_saline", "d"),
                "r ket.": ("r_ketamine", ".2f"), "r sal.": ("r_saline", ".2f"),
                "slope ket.": ("slope_ketamine", ".3f"), "slope sal.": ("slope_saline", ".3f"),
                "interaction β": ("beta_interaction", ".3f"), "SE": ("se_interaction", ".3f"),
                "p": ("p_interaction", fmt_p)}
        if "q_fdr" in table:
            cols["q (FDR)"] = ("q_fdr", fmt_p)
        formula = html.escape(str(r.get("formula", "")))
        return html_table(table, cols) + note(
            f"{formula} (OLS; Δ = post − pre; ΔMD in 10⁻⁶ mm²/s; slopes in score points per "
            "10⁻⁶ mm²/s; from stats_roi when 'ketamine-nb stats' ran)")

    # -- browser events ----------------------------------------------------------

    def _on_location(self, data):
        mm = data.get("mm") if isinstance(data, dict) else None
        if not mm or self.shown is None:
            return
        info = self.data.describe_position(mm, self.shown)
        self.location = info
        where = "outside the grid" if info["voxel"] is None else (
            f"value {info['value']:.4g} {html.escape(info['unit'])}")
        reg = info["region"] or "no study region"
        self.info.value = (f"<span style='font-size:12px'>({info['x_mm']:.0f}, "
                           f"{info['y_mm']:.0f}, {info['z_mm']:.0f}) mm MNI · "
                           f"<b>{html.escape(reg)}</b> · {html.escape(info['map'])}: "
                           f"{where}</span>")
        if info["region"] and info["region"] != self.controls["region"].value:
            self._clicked = True  # the view is already there: do not move the crosshair
            try:
                self.controls["region"].value = info["region"]
            finally:
                self._clicked = False

    def _on_hover(self, data):
        values = data.get("idxValues", data.get("idx_values", [])) if isinstance(
            data, dict) else []
        for v in values:
            if v.get("id") == self._labels.id:
                k = v.get("idx")
                region = (self.data.regions[k - 1]
                          if isinstance(k, int) and 0 < k <= len(self.data.regions) else None)
                if region != self.hover_region:  # a message only when it changes
                    self.hover_region = region
                    self.hover_info.value = (
                        f"<span style='font-size:12px;color:#555'>Under the cursor: "
                        f"<b>{html.escape(region or 'no study region')}</b></span>")

    def _on_probe(self, change):
        if change["new"] is False and self.fallback is None:
            self.use_fallback()

    # -- fallback and export -------------------------------------------------------

    def use_fallback(self):
        """Replace the NiiVue view by the 2D slice viewer (no WebGL2), with one line."""
        msg = widgets.HTML(f"<span style='color:#b00'>{html.escape(NO_WEBGL_MESSAGE)}</span>")
        msg.add_class("ketamine-nb-viewer-fallback")
        self.fallback = widgets.VBox([msg])
        self.view_box.children = [self.fallback]
        self.info.value = ""
        for name in ("threshold", "opacity"):  # each change redraws a figure: on release
            self.controls[name].continuous_update = False
        self._redraw_fallback()

    def _redraw_fallback(self):
        import nibabel as nib

        from .slices import slice_viewer

        if self.shown is None:
            return
        k = self.data.regions.index(self.controls["region"].value)
        prob = np.asarray(self.data.probability.dataobj[..., k], np.float32)
        base = self.shown.data
        if self.shown.overlay:
            base = np.where(np.abs(base) >= self.controls["threshold"].value, base, 0)
        sv = slice_viewer(nib.Nifti1Image(base, self.data.affine),
                          overlay=nib.Nifti1Image(prob, self.data.affine), kind="image",
                          overlay_threshold=float(self.results.config.get(
                              "probability_threshold") or 0.25))
        self.fallback.children = [self.fallback.children[0], sv]

    def html(self, *, title: str | None = None) -> str:
        """Return the view as a standalone HTML page (see :func:`viewer_html`)."""
        return _standalone_html(self, title=title)

    def save_html(self, path) -> Path:
        """Write :meth:`html` to ``path`` (atomically); return the path."""
        from .._utils import atomic_write_bytes

        return atomic_write_bytes(Path(path), self.html().encode("utf-8"))


def brain_viewer(results, *, map: str = "mean_delta_md", participant_id: str | None = None,
                 session: str | None = None, arm: str = "both", region: str | None = None,
                 outcome: str = "madrs", threshold: float | None = None,
                 region_state: RegionState | None = None, webgl: bool | None = None,
                 height: int = 420) -> BrainViewer:
    """View the maps and the study regions in 3D (NiiVue), linked to the region statistics.

    Left, NiiVue (``ipyniivue``, WebGL2): three planes and a 3D rendering of
    one map on the 3 mm template grid, the study regions in colour (all of
    them faintly, the picked one strongly). Right, the picked region's ΔMD
    (post − pre, 10⁻⁶ mm²/s) against the change in score per arm
    (:class:`ketamine_nb.plotting.ScatterFigure`) and its row of the model
    (``Results.stats_roi``). Clicking in the view shows the position (MNI
    mm), the region there and the map's value under the view; clicking
    inside a region picks it.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        From :func:`ketamine_nb.load_results`; the template-space MD maps
        (``*_space-MNI152NLin2009aSym_res-3_*_desc-MD_dwimap.nii.gz``) give the
        participant MD, the mean ΔMD and the t map.
    map : {"template", "md", "fa", "mean_delta_md", "t"}, default="mean_delta_md"
        The map shown first: the MNI152 template; one participant's MD
        (10⁻³ mm²/s) or FA (brought to the template by the session's
        registration); the mean ΔMD of an arm (10⁻⁶ mm²/s) or the t map of
        the Δscore x arm interaction (:func:`ketamine_nb.voxelwise.interaction_t_map`,
        or the t map ``ketamine-nb`` voxelwise wrote), both over the template.
    participant_id, session : str, optional
        The participant and session of ``md``/``fa`` (default: the first).
    arm : {"both", "ketamine", "saline"}, default="both"
        Whose mean ΔMD, and the arms drawn in the scatter.
    region : str, optional
        The region picked first.
    outcome : {"madrs", "qids"}, default="madrs"
        The score of the scatter, the model row and the t map.
    threshold : float, optional
        The map's threshold (its ``cal_min``, in the map's unit; statistical
        maps are drawn where ``|value|`` reaches it). Default: 2 for t, a
        quarter of the top of the scale for ΔMD, 0 otherwise.
    region_state : RegionState, optional
        A region shared with other explorers (e.g. ``outcome_explorer``,
        ``roi_explorer``): picking a region in one moves the others.
    webgl : bool, optional
        ``None``: ask the browser, and fall back to the 2D slice viewer with
        a one-line message when it has no WebGL2; ``False``: the fallback at
        once; ``True``: never.
    height : int, default=420
        Height of the view (pixels).

    Returns
    -------
    BrainViewer
        Controls ``map``, ``participant``, ``session``, ``arm``, ``region``,
        ``outcome``, ``threshold`` (live: sends the map volume's ``cal_min``
        only) and ``opacity`` (of the picked region). ``nv`` is the
        ``ipyniivue.NiiVue`` widget; ``map_volume``, ``highlight_volume``
        (one frame per region: picking a region sends ``frame_4d`` only)
        and ``labels_volume`` its volumes; ``table`` the model's row;
        ``location`` what the last click found; ``payload_bytes`` the size of
        each volume sent. :meth:`BrainViewer.save_html` writes the view as a
        standalone page.
    """
    return BrainViewer(results, map=map, participant_id=participant_id, session=session,
                       arm=arm, region=region, outcome=outcome, threshold=threshold,
                       region_state=region_state, webgl=webgl, height=height)


def viewer_html(results, *, map: str = "mean_delta_md", region: str | None = None,
                outcome: str = "madrs", arm: str = "both", threshold: float | None = None,
                title: str | None = None) -> str:
    """Return the brain viewer as one standalone HTML page (for the report).

    The page holds NiiVue (the JavaScript bundled with ``ipyniivue``, so it
    works offline), the map and region volumes, a region menu and a
    threshold slider that act in the page, and per region the scatter
    (PNG) and the model's row. It needs no kernel; it is about 5 MB, mostly
    NiiVue itself. A report can embed it in an ``<iframe srcdoc="...">``
    (the page escaped with ``html.escape(page, quote=True)``) and stay one
    file.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        As for :func:`brain_viewer`.
    map, region, outcome, arm, threshold : optional
        What is shown first (as for :func:`brain_viewer`).
    title : str, optional
        The page's heading.

    Returns
    -------
    str
        The HTML page.
    """
    v = BrainViewer(results, map=map, region=region, outcome=outcome, arm=arm,
                    threshold=threshold, webgl=True)
    return v.html(title=title)


# -- the standalone page ---------------------------------------------------------------


def _state(widget) -> tuple[dict, str | None]:
    state = widget.get_state()
    data = state.pop("data", None)
    for k in list(state):
        if k.startswith("_") or k in ("layout", "img", "draw_bitmap"):
            state.pop(k)
    if isinstance(data, memoryview | bytes):
        return state, base64.b64encode(bytes(data)).decode("ascii")
    return state, None


def _standalone_html(viewer: BrainViewer, *, title=None) -> str:
    nv = viewer.nv
    esm = nv.get_state()["_esm"]
    nv_state, _ = _state(nv)
    vols = {}
    for vol in nv.volumes:
        st, b64 = _state(vol)
        vols[vol.model_id] = {"state": st, "data": b64}
    region0 = viewer.controls["region"].value
    panels = {}
    for reg in viewer.data.regions:
        viewer.controls["region"].value = reg
        panels[reg] = {"png": base64.b64encode(viewer.png()).decode("ascii"),
                       "table": viewer.table_view.value,
                       "frame": viewer.data.regions.index(reg),
                       "frac": viewer.data.centre_frac(reg)}
    viewer.controls["region"].value = region0
    t = viewer.controls["threshold"]
    page_title = title or f"Brain viewer: {viewer.shown.name}"
    config = {"nv_id": nv.model_id, "nv": nv_state, "volumes": vols,
              "map_id": viewer.map_volume.model_id,
              "highlight_id": viewer.highlight_volume.model_id,
              "panels": panels, "region": region0,
              "threshold": {"min": t.min, "max": t.max, "step": t.step, "value": t.value,
                            "unit": viewer.shown.unit}}
    options = "".join(f"<option value='{html.escape(r)}'{' selected' if r == region0 else ''}>"
                      f"{html.escape(r)}</option>" for r in viewer.data.regions)
    cfg = json.dumps(config, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    m = viewer.shown
    caption = (f"{html.escape(m.name)} ({html.escape(m.unit)}) on the MNI152 template, 3 mm. "
               + ("Shown where |value| reaches the threshold. " if m.overlay else "")
               + "All study regions in faint colours, the picked one in green. Drag to rotate "
               "the 3D view, click to move the crosshair, scroll to change the slice.")
    return _PAGE.format(title=html.escape(page_title), options=options, caption=caption,
                        unit=html.escape(m.unit), esm=esm, config=cfg)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 12px; }}
#row {{ display: flex; gap: 16px; align-items: flex-start; }}
#view {{ width: 58%; min-width: 420px; }} #stats {{ width: 42%; }}
#stats img {{ max-width: 100%; }} label {{ margin-right: 12px; font-size: 13px; }}
#info {{ font-size: 12px; color: #333; margin-top: 4px; }}
</style></head><body class="ketamine-nb-viewer-page">
<h3>{title}</h3>
<p style="font-size:12px;color:#555">{caption}</p>
<div><label>Region <select id="region">{options}</select></label>
<label>Threshold ({unit}) <input id="threshold" type="range"><span id="thr-value"></span>
</label></div>
<div id="row"><div id="view"></div><div id="stats"><img id="scatter" alt="scatter">
<div id="table"></div></div></div>
<div id="info"></div>
<script type="text/plain" id="niivue-widget-js">{esm}</script>
<script type="module">
const CFG = {config};
const WM = {{ models: {{}}, async get_model(id) {{ return this.models[id]; }} }};
class Model {{
  constructor(id, state) {{ this.id = id; this.s = state; this.h = {{}};
    this.widget_manager = WM; WM.models[id] = this; }}
  get(k) {{ return this.s[k]; }}
  set(k, v) {{ this.s[k] = v; }}
  save_changes() {{}}
  send() {{}}
  onChange() {{}}
  on(ev, f) {{ (this.h[ev] = this.h[ev] || []).push(f); }}
  off(ev, f) {{ if (!f) delete this.h[ev];
    else this.h[ev] = (this.h[ev] || []).filter(g => g !== f); }}
  update(k, v) {{ this.s[k] = v; for (const f of (this.h["change:" + k] || [])) f(this, v); }}
}}
function bytes(b64) {{ const s = atob(b64); const a = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i); return a; }}
for (const [id, v] of Object.entries(CFG.volumes)) {{
  const st = Object.assign({{}}, v.state);
  st.data = v.data ? bytes(v.data) : null;
  new Model(id, st);
}}
const nv = new Model(CFG.nv_id, CFG.nv);
const src = document.getElementById("niivue-widget-js").textContent;
const url = URL.createObjectURL(new Blob([src], {{ type: "text/javascript" }}));
const widget = (await import(url)).default;
await widget.initialize({{ model: nv }});
await widget.render({{ model: nv, el: document.getElementById("view") }});
const thr = document.getElementById("threshold"), out = document.getElementById("thr-value");
Object.assign(thr, {{ min: CFG.threshold.min, max: CFG.threshold.max,
  step: CFG.threshold.step, value: CFG.threshold.value }});
out.textContent = " " + Number(thr.value).toPrecision(3);
thr.addEventListener("input", () => {{
  WM.models[CFG.map_id].update("cal_min", Number(thr.value));
  out.textContent = " " + Number(thr.value).toPrecision(3); }});
const sel = document.getElementById("region");
function showRegion(r) {{
  const p = CFG.panels[r];
  WM.models[CFG.highlight_id].update("frame_4d", p.frame);
  nv.update("scene", Object.assign({{}}, nv.get("scene"), {{ crosshairPos: p.frac }}));
  for (const f of (nv.h["msg:custom"] || [])) f({{ type: "draw_scene", data: [] }}, []);
  document.getElementById("scatter").src = "data:image/png;base64," + p.png;
  document.getElementById("table").innerHTML = p.table; }}
sel.addEventListener("change", () => showRegion(sel.value));
showRegion(CFG.region);
document.body.dataset.ready = "1";
</script></body></html>
"""
