"""Interactive explorers: ipywidgets around the package's pure functions.

Every builder returns an :class:`Explorer`, an ``ipywidgets.VBox`` that
``display(w)`` (or a cell ending in ``w``) shows in JupyterLab. Each explorer
has

* ``controls``: its widgets by name (``region``, ``probability_threshold``,
  ``csf_md_threshold``, ...); set ``.value`` from code as a user would;
* ``figure``: one matplotlib figure, made once and updated in place
  (``set_data``, ``set_offsets``, ``set_text``; contours are removed and
  redrawn); never a new figure per change;
* ``table``: the :class:`pandas.DataFrame` behind what is shown;
* ``artists``: the updated artists by name (what the tests count).

The explorers compute nothing themselves: the numbers come from
:func:`ketamine_nb.roi.summarise_regions` (regional MD for a probability
threshold and CSF guard, from the cached per-voxel tables: nothing is
refitted and no DWI is read), :func:`ketamine_nb.stats.stats_input` and
:func:`ketamine_nb.stats.region_stats` (the study's model, here without
permutations or bootstrap so that it answers at once) and the robustness grid
written by ``ketamine-nb stats --robustness``. The private helpers below only
reorient images and pick out what one slice shows.

Notes
-----
As in ipywidgets' "Using Interact" example, each explorer's update function is
called once when it is built, then on every change. Sliders that trigger a
computation have ``continuous_update=False``. In a Jupyter kernel the figure is
rendered to PNG and redisplayed in an ``ipywidgets.Output`` with
``clear_output(wait=True)`` (no flicker); outside a kernel (tests, scripts)
only the figure object is updated. Images are shown in the RAS+ orientation
(the patient's left on the left of axial and coronal slices), MD in
10⁻³ mm²/s and ΔMD in 10⁻⁶ mm²/s, the unit of the study's model.
"""

from __future__ import annotations

import html
import io
from collections import OrderedDict
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd

from .exceptions import InputError
from .plotting import ARM_COLORS, MD_LABEL, MD_SCALE

__all__ = [
    "Explorer",
    "outcome_explorer",
    "robustness_explorer",
    "roi_explorer",
    "slice_viewer",
]

#: Colours of voxels kept and dropped by the CSF guard, and of region outlines
#: (Okabe-Ito palette; the arm colours are kept for the arms).
KEPT_COLOR = "#009E73"
DROPPED_COLOR = "#CC79A7"
OUTLINE_COLOR = "#F0E442"
HIGHLIGHT_COLOR = "#E69F00"
MEAN_COLOR = "#56B4E9"

#: Slice orientations: name -> axis of the RAS+ array that is fixed.
VIEWS = {"sagittal": 0, "coronal": 1, "axial": 2}

#: Values of the CSF cut-off slider in mm²/s (shown in 10⁻³ mm²/s): 0.80 to
#: 3.00 in steps of 0.05, then ``inf`` ("off": no voxel is dropped).
CSF_CHOICES = tuple((f"{k / 100:.2f}", k / 1e5) for k in range(80, 301, 5)) + (
    ("off", float("inf")),)

#: Grey-scale range of MD maps (10⁻³ mm²/s): tissue is dark, free water bright.
MD_DISPLAY_RANGE = (0.0, 3.0)

_SESSION_CACHE_SIZE = 8
_STYLE = {"description_width": "initial"}


# ---------------------------------------------------------------------------
# Pure helpers (tested in tests/test_widgets.py)


def _in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (where the figure is redisplayed)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _canonical(img):
    """Image data and affine in RAS+ voxel order, and the orientation used.

    Returns
    -------
    data : numpy.ndarray
        float32, first three axes reordered/flipped to RAS+.
    affine : numpy.ndarray
        The 4x4 affine of ``data``.
    ornt : numpy.ndarray
        nibabel orientation (input axis -> output axis, flip).
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(img.affine)
    data = apply_orientation(np.asarray(img.dataobj, dtype=np.float32), ornt)
    affine = img.affine @ inv_ornt_aff(ornt, img.shape[:3])
    return np.ascontiguousarray(data), affine, ornt


def _ras_indices(ijk, shape, ornt) -> np.ndarray:
    """Map voxel indices of the stored grid to those of :func:`_canonical`'s array."""
    ijk = np.asarray(ijk, dtype=np.int64)
    out = np.empty_like(ijk)
    for k in range(3):
        axis, flip = int(ornt[k, 0]), ornt[k, 1]
        out[:, axis] = shape[k] - 1 - ijk[:, k] if flip < 0 else ijk[:, k]
    return out


def _slice2d(volume, axis: int, index: int) -> np.ndarray:
    """One slice of a RAS+ volume, transposed for ``imshow(origin="lower")``.

    Sagittal: anterior to the right, superior up; coronal: left on the left,
    superior up; axial: left on the left, anterior up.
    """
    return np.take(volume, index, axis=axis).T


def _plane_axes(axis: int) -> tuple[int, int]:
    """Volume axes shown horizontally and vertically in a slice along ``axis``."""
    h, v = (a for a in range(3) if a != axis)
    return h, v


def _slice_mm(affine, shape, axis: int, index: int) -> float:
    """World coordinate (mm) of a slice along ``axis`` through the volume's centre."""
    c = (np.asarray(shape[:3], float) - 1) / 2
    c[axis] = index
    return float((affine @ np.append(c, 1.0))[axis])


def _classify_voxels(probability, md, *, probability_threshold: float,
                     csf_md_threshold: float | None):
    """Split a region's cached voxels as :func:`ketamine_nb.roi.summarise_regions` does.

    Returns
    -------
    inside, kept, dropped : numpy.ndarray of bool
        In the region at this threshold; kept; dropped by the CSF guard.
    """
    inside = np.asarray(probability) >= probability_threshold
    dropped = np.zeros_like(inside)
    if csf_md_threshold is not None:
        dropped = inside & (np.asarray(md) > csf_md_threshold)
    return inside, inside & ~dropped, dropped


def _region_centre(ras_ijk, probability) -> np.ndarray:
    """Probability-weighted centroid (voxel indices, rounded) of a region's cached voxels.

    Independent of the thresholds, so the slice stays put while they move.
    """
    w = np.asarray(probability, float)
    return np.rint((np.asarray(ras_ijk, float) * w[:, None]).sum(0) / w.sum()).astype(int)


def _slice_layers(ras_ijk, shape, *, axis: int, index: int, inside, kept, dropped) -> dict:
    """2D masks of one slice: the region at this threshold, kept and dropped voxels."""
    h, v = _plane_axes(axis)
    on = ras_ijk[:, axis] == index
    out = {}
    for name, sel in (("inside", inside), ("kept", kept), ("dropped", dropped)):
        m = np.zeros((shape[v], shape[h]), dtype=bool)
        s = on & sel
        m[ras_ijk[s, v], ras_ijk[s, h]] = True
        out[name] = m
    return out


def _zoom_window(ras_ijk, shape, axis: int, *, margin: int = 4) -> tuple:
    """Square display limits around every cached voxel of a region (in slice coordinates)."""
    h, v = _plane_axes(axis)
    lo = ras_ijk[:, [h, v]].min(0) - margin
    hi = ras_ijk[:, [h, v]].max(0) + margin
    half = max(hi - lo) / 2 + 0.5
    ch, cv = (lo + hi) / 2
    return (ch - half, ch + half), (cv - half, cv + half)


def _upsample(mask, factor: int = 4) -> np.ndarray:
    """Repeat each pixel ``factor`` x ``factor`` times, so a contour follows voxel edges."""
    return np.kron(np.asarray(mask, np.float32), np.ones((factor, factor), np.float32))


def _overlay_rgba(layers: dict) -> np.ndarray:
    """RGBA image: kept voxels in :data:`KEPT_COLOR`, dropped in :data:`DROPPED_COLOR`."""
    from matplotlib.colors import to_rgba

    rgba = np.zeros((*layers["kept"].shape, 4), dtype=np.float32)
    rgba[layers["kept"]] = to_rgba(KEPT_COLOR, 0.7)
    rgba[layers["dropped"]] = to_rgba(DROPPED_COLOR, 0.9)
    return rgba


def _count_color(rgba: np.ndarray, color: str) -> int:
    """Count the pixels of an RGBA image drawn in ``color`` (alpha > 0)."""
    from matplotlib.colors import to_rgba

    target = np.asarray(to_rgba(color)[:3], dtype=np.float32)
    drawn = rgba[..., 3] > 0
    return int(np.count_nonzero(drawn & np.all(np.isclose(rgba[..., :3], target), -1)))


def _fit_line(x, y, slope, xlim=None):
    """Two end points of a line of ``slope`` through the mean of (x, y), over x's range."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if len(x) == 0 or not np.isfinite(slope):
        return np.array([]), np.array([])
    x0, x1 = (x.min(), x.max()) if xlim is None else xlim
    xs = np.array([x0, x1])
    return xs, y.mean() + slope * (xs - x.mean())


def _padded_limits(values, *, pad: float = 0.08, include=(0.0,)):
    """Axis limits around values (and ``include``), with a margin."""
    v = np.concatenate([np.asarray(values, float).ravel(), np.asarray(include, float)])
    v = v[np.isfinite(v)]
    if v.size == 0:
        return -1.0, 1.0
    lo, hi = v.min(), v.max()
    span = hi - lo or max(abs(hi), 1.0)
    return lo - pad * span, hi + pad * span


def _fmt(value, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _p(value) -> str:
    """P-value as text: three significant digits, ``< 0.001`` below."""
    if value is None or not np.isfinite(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _p_text(value) -> str:
    """``p = 0.012`` or ``p < 0.001``."""
    text = _p(value)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _md_text(value) -> str:
    """MD in mm²/s as text in 10⁻³ mm²/s."""
    return _fmt(value * MD_SCALE, ".4f")


def _csf_text(value) -> str:
    """CSF cut-off in mm²/s as text in 10⁻³ mm²/s (``off`` for none)."""
    return "off" if value is None or not np.isfinite(value) else f"{value * MD_SCALE:.2f}"


def _html_table(table: pd.DataFrame, columns: dict) -> str:
    """HTML of a table: ``columns`` maps a header (with units) to (column, formatter)."""
    head = "".join("<th style='text-align:right;padding:2px 8px;white-space:nowrap'>"
                   f"{html.escape(h)}</th>" for h in columns)
    body = []
    for _, row in table.iterrows():
        cells = []
        for col, fmt in columns.values():
            v = row.get(col, np.nan)
            text = fmt(v) if callable(fmt) else _fmt(v, fmt)
            cells.append("<td style='text-align:right;padding:2px 8px;white-space:nowrap'>"
                         f"{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ("<table class='ketamine-nb-data' style='border-collapse:collapse;font-size:12px'>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _orientation_labels(ax):
    """Two texts in the upper corners of a slice (set to "L"/"R" or "P"/"A")."""
    kw = {"transform": ax.transAxes, "color": "w", "fontsize": 9, "weight": "bold",
          "va": "top"}
    return (ax.text(0.03, 0.97, "", ha="left", **kw), ax.text(0.97, 0.97, "", ha="right", **kw))


def _new_figure(width: float, height: float):
    """Make a matplotlib figure outside pyplot (no auto-display, no global registry)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


# ---------------------------------------------------------------------------
# The widget


class Explorer(widgets.VBox):
    """Controls, one figure updated in place, and the table behind it.

    Built by :func:`roi_explorer`, :func:`outcome_explorer`,
    :func:`slice_viewer` and :func:`robustness_explorer`; not meant to be
    made directly.

    Parameters
    ----------
    controls : dict of str -> ipywidgets.ValueWidget
        The controls, by name.
    figure : matplotlib.figure.Figure
        The figure, made once.
    draw : callable
        ``draw(values: dict) -> pandas.DataFrame``: updates the figure's
        artists for the controls' values and returns the table.
    artists : dict, optional
        The artists ``draw`` updates, by name.
    link : callable, optional
        ``link(explorer, change)``, called before ``draw`` when a control
        changes, to adjust other controls (e.g. the sessions of a subject).
    describe : callable, optional
        ``describe(table) -> str``: the HTML shown under the figure.
    dpi : int, default=80
        Resolution of the figure in the notebook.
    columns : int, default=3
        Controls per row.
    title : str, optional
        A heading above the controls.
    name : str, default="explorer"
        Added as the CSS class ``ketamine-nb-<name>`` (the browser test's handle).

    Attributes
    ----------
    controls, figure, artists : as above
    table : pandas.DataFrame
        What is shown now.
    output : ipywidgets.Output
        Where the figure is displayed in a notebook.
    table_view : ipywidgets.HTML
        The table as shown under the figure (units in the headers).
    message : ipywidgets.HTML
        Why a choice cannot be shown (empty otherwise); the figure and the
        table then keep the last choice that could be shown.
    """

    def __init__(self, controls: dict, figure, draw, *, artists=None, link=None,
                 describe=None, dpi: int = 80, columns: int = 3, title: str = "",
                 name: str = "explorer"):
        self.controls = dict(controls)
        self.figure = figure
        self.artists = artists if artists is not None else {}
        self.table = pd.DataFrame()
        self.dpi = dpi
        self.output = widgets.Output(layout=widgets.Layout(min_height="120px"))
        self.message = widgets.HTML()
        self.table_view = widgets.HTML()
        self._draw = draw
        self._link = link
        self._describe = describe
        self._busy = False
        grid = widgets.GridBox(
            list(self.controls.values()),
            layout=widgets.Layout(grid_template_columns=f"repeat({columns}, minmax(0, 1fr))",
                                  grid_gap="2px 16px", width="100%"))
        head = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        super().__init__([*head, grid, self.message, self.output, self.table_view])
        # CSS classes: a stable handle for the browser test and for custom styling
        self.add_class("ketamine-nb-explorer")
        self.add_class(f"ketamine-nb-{name}")
        self.output.add_class("ketamine-nb-figure")
        self.table_view.add_class("ketamine-nb-table")
        for c in self.controls.values():
            c.observe(self._on_change, names="value")
        self.update()

    @property
    def values(self) -> dict:
        """The controls' current values, by name."""
        return {k: c.value for k, c in self.controls.items()}

    def _on_change(self, change):
        if self._busy:
            return
        self._busy = True
        try:
            if self._link is not None:
                self._link(self, change)
        finally:
            self._busy = False
        self.update()

    def update(self):
        """Redraw for the controls' current values (called on every change)."""
        try:
            table = self._draw(self.values)
        except InputError as err:
            self.message.value = ("<span style='color:#b00'>Cannot show this choice: "
                                  f"{html.escape(str(err))}</span>")
            return
        self.message.value = ""
        self.table = table
        self.table_view.value = (self._describe(table) if self._describe is not None
                                 else table.to_html(index=False))
        self.redisplay()

    def png(self) -> bytes:
        """Render the figure as PNG bytes (what the notebook shows)."""
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=self.dpi)
        return buf.getvalue()

    def redisplay(self):
        """Show the figure again in the output area (in a Jupyter kernel only)."""
        if not _in_kernel():
            return
        from IPython.display import Image, clear_output, display

        data = self.png()
        with self.output:
            clear_output(wait=True)
            display(Image(data=data, format="png"))


def _subject_options(results):
    arms = {}
    if results.participants is not None and "arm" in results.participants:
        arms = dict(zip(results.participants["participant_id"], results.participants["arm"],
                        strict=False))
    pids = list(pd.unique(results.sessions["participant_id"]))
    return [(f"{p} ({arms[p]})" if p in arms else p, p) for p in pids]


def _sessions_of(results, pid):
    s = results.sessions
    return list(s.loc[s["participant_id"] == pid, "session"])


def _dropdown(description, options, value=None, **kw):
    d = widgets.Dropdown(description=description, options=options, style=_STYLE,
                         layout=widgets.Layout(width="auto"), **kw)
    if value is not None:
        d.value = value
    return d


# ---------------------------------------------------------------------------
# ROI explorer


class _SessionCache:
    """MD maps (RAS+, 10⁻³ mm²/s) and voxel tables of recently shown sessions."""

    def __init__(self, results, size: int = _SESSION_CACHE_SIZE):
        self.results = results
        self.size = size
        self._items: OrderedDict = OrderedDict()

    def get(self, pid: str, ses: str) -> dict:
        key = (pid, ses)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        img = self.results.image(pid, ses, "md")
        data, affine, ornt = _canonical(img)
        voxels = self.results.session_voxels(pid, ses)
        ras = _ras_indices(voxels[["i", "j", "k"]].to_numpy(), img.shape[:3], ornt)
        regions = {}
        codes = voxels["region"].astype(str).to_numpy()
        for name in pd.unique(codes):
            sel = codes == name
            regions[name] = {"ijk": ras[sel], "probability": voxels["probability"].to_numpy()[sel],
                             "md": voxels["md"].to_numpy()[sel]}
        item = {"md": data * MD_SCALE, "affine": affine, "shape": data.shape[:3],
                "voxels": voxels, "regions": regions}
        self._items[key] = item
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return item


def roi_explorer(results, *, region: str | None = None, participant_id: str | None = None,
                 session: str | None = None, view: str = "coronal") -> Explorer:
    """Explore how the atlas threshold and the CSF guard shape one region's MD.

    Shows one session's MD map on a slice through the region's centre: the
    voxels kept in green, those dropped by the CSF guard in purple, the
    region's outline (atlas probability at or above the threshold) in yellow,
    a zoom on the region, and the histogram of the region's voxel MD with the
    cut-off. The table is :func:`ketamine_nb.roi.summarise_regions`'s row for
    this session, region and thresholds, plus the counts in the slice shown.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        From :func:`ketamine_nb.load_results`.
    region : str, optional
        Region shown first (default: the first).
    participant_id, session : str, optional
        Session shown first (default: the first done session).
    view : {"coronal", "axial", "sagittal"}, default="coronal"
        Slice orientation.

    Returns
    -------
    Explorer
        Controls ``region``, ``view``, ``subject``, ``session``,
        ``probability_threshold`` (fraction, 0.05-0.95) and
        ``csf_md_threshold`` (mm²/s, shown in 10⁻³ mm²/s: 0.8e-3 to 3.0e-3
        in steps of 0.05e-3, or ``inf`` for "off"). Its ``cache`` holds the
        sessions read so far. Table columns: ``participant_id``,
        ``session``, ``region``, the two thresholds (NaN: guard off),
        ``md_mean``, ``md_median`` (mm²/s), ``n_voxels``, ``n_excluded``,
        and for the slice shown ``view``, ``slice_index``, ``slice_mm``,
        ``n_voxels_slice``, ``n_excluded_slice``.

    Notes
    -----
    The MD map and voxel table of a session are read once and kept (the
    last eight sessions); moving a threshold only filters the cached table,
    exactly as ``ketamine-nb run`` does: no tensor is refitted and no DWI
    is read. Kept voxels: probability >= threshold and MD <= cut-off;
    dropped: probability >= threshold and MD > cut-off.
    """
    from .regions import DEFAULT_PROBABILITY_THRESHOLD
    from .roi import DEFAULT_CSF_MD_THRESHOLD, summarise_regions

    if view not in VIEWS:
        raise InputError(f"view must be one of {', '.join(VIEWS)}, not {view!r}")
    regions = results.regions
    subjects = _subject_options(results)
    pid = participant_id or subjects[0][1]
    sessions = _sessions_of(results, pid)
    if not sessions:
        raise InputError(f"{pid}: no processed session in {results.out_dir}")
    ses = session or sessions[0]
    p_thr = float(results.config.get("probability_threshold") or DEFAULT_PROBABILITY_THRESHOLD)
    c_thr = results.config.get("csf_md_threshold", DEFAULT_CSF_MD_THRESHOLD)
    c_val = float("inf") if c_thr is None else min(
        (v for _, v in CSF_CHOICES), key=lambda v: abs(v - c_thr))

    controls = {
        "region": _dropdown("Region", regions, region or regions[0]),
        "view": _dropdown("View", list(VIEWS), view),
        "subject": _dropdown("Subject", subjects, pid),
        "session": _dropdown("Session", sessions, ses),
        "probability_threshold": widgets.FloatSlider(
            value=p_thr, min=0.05, max=0.95, step=0.05, readout_format=".2f",
            description="Atlas probability ≥", continuous_update=False, style=_STYLE,
            layout=widgets.Layout(width="auto")),
        "csf_md_threshold": widgets.SelectionSlider(
            options=CSF_CHOICES, value=c_val, description="CSF cut-off (10⁻³ mm²/s)",
            continuous_update=False, style=_STYLE, layout=widgets.Layout(width="auto")),
    }
    cache = _SessionCache(results)

    fig = _new_figure(10.5, 3.7)
    ax_full = fig.add_axes((0.01, 0.2, 0.29, 0.66))
    ax_zoom = fig.add_axes((0.33, 0.2, 0.22, 0.66))
    ax_hist = fig.add_axes((0.63, 0.2, 0.35, 0.63))
    cax = fig.add_axes((0.04, 0.13, 0.23, 0.025))
    empty = np.zeros((2, 2), np.float32)
    artists = {}
    for name, ax in (("full", ax_full), ("zoom", ax_zoom)):
        artists[f"md_{name}"] = ax.imshow(empty, origin="lower", cmap="gray",
                                          vmin=MD_DISPLAY_RANGE[0], vmax=MD_DISPLAY_RANGE[1],
                                          interpolation="nearest")
        artists[f"overlay_{name}"] = ax.imshow(np.zeros((2, 2, 4), np.float32), origin="lower",
                                               interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_facecolor("k")
    cb = fig.colorbar(artists["md_full"], cax=cax, orientation="horizontal")
    cb.set_label(MD_LABEL, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    artists["left_label"], artists["right_label"] = _orientation_labels(ax_full)
    artists["zoom_box"] = ax_full.plot([], [], color="w", lw=0.8, ls=":")[0]
    edges = np.arange(0.0, 3.5 + 1e-9, 0.05)
    zeros = np.zeros(len(edges) - 1)
    artists["hist_kept"] = ax_hist.stairs(zeros, edges, fill=True, color=KEPT_COLOR,
                                          alpha=0.8, label="kept")
    artists["hist_dropped"] = ax_hist.stairs(zeros, edges, fill=True, color=DROPPED_COLOR,
                                             alpha=0.8, label="dropped (CSF guard)")
    artists["cutoff"] = ax_hist.axvline(1.1, color="k", ls="--", lw=1.2, label="CSF cut-off")
    artists["mean"] = ax_hist.axvline(0.8, color=MEAN_COLOR, lw=1.5, label="mean of kept")
    ax_hist.set_xlabel(MD_LABEL + " of the region's voxels", fontsize=9)
    ax_hist.set_ylabel("voxels", fontsize=9)
    ax_hist.set_xlim(edges[0], edges[-1])
    ax_hist.tick_params(labelsize=8)
    ax_hist.legend(fontsize=7, loc="upper right", frameon=False)
    artists["title"] = fig.text(0.01, 0.965, "", fontsize=10, va="top", weight="bold")
    artists["subtitle"] = fig.text(0.01, 0.90, "", fontsize=8.5, va="top")
    artists["hist_title"] = ax_hist.set_title("", fontsize=9)
    artists["contours"] = []

    def link(w, change):
        if change["owner"] is w.controls["subject"]:
            opts = _sessions_of(results, change["new"])
            old = w.controls["session"].value
            w.controls["session"].options = opts
            w.controls["session"].value = old if old in opts else opts[0]

    def draw(values):
        pid, ses, reg = values["subject"], values["session"], values["region"]
        p_thr = float(values["probability_threshold"])
        c_thr = values["csf_md_threshold"]
        c_thr = None if not np.isfinite(c_thr) else float(c_thr)
        axis = VIEWS[values["view"]]
        s = cache.get(pid, ses)
        if reg not in s["regions"]:
            raise InputError(f"{pid} ses-{ses}: region {reg!r} has no voxels")
        rv = s["regions"][reg]
        shape = s["shape"]
        summary = summarise_regions(s["voxels"], probability_threshold=p_thr,
                                    csf_md_threshold=c_thr)
        row = summary[summary["region"].astype(str) == reg].iloc[0]
        inside, kept, dropped = _classify_voxels(rv["probability"], rv["md"],
                                                 probability_threshold=p_thr,
                                                 csf_md_threshold=c_thr)
        centre = _region_centre(rv["ijk"], rv["probability"])
        index = int(centre[axis])
        layers = _slice_layers(rv["ijk"], shape, axis=axis, index=index, inside=inside,
                               kept=kept, dropped=dropped)
        sl = _slice2d(s["md"], axis, index)
        rgba = _overlay_rgba(layers)
        h, v = _plane_axes(axis)
        extent = (-0.5, shape[h] - 0.5, -0.5, shape[v] - 0.5)
        for name in ("full", "zoom"):
            for layer, data in (("md", sl), ("overlay", rgba)):
                im = artists[f"{layer}_{name}"]
                im.set_data(data)
                im.set_extent(extent)
        ax_full.set_xlim(extent[:2])
        ax_full.set_ylim(extent[2:])
        (x0, x1), (y0, y1) = _zoom_window(rv["ijk"], shape, axis)
        ax_zoom.set_xlim(x0, x1)
        ax_zoom.set_ylim(y0, y1)
        artists["zoom_box"].set_data([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0])
        for cs in artists["contours"]:
            cs.remove()
        artists["contours"].clear()
        if layers["inside"].any():
            for ax in (ax_full, ax_zoom):
                artists["contours"].append(ax.contour(
                    _upsample(layers["inside"]), levels=[0.5], colors=OUTLINE_COLOR,
                    linewidths=1.0, origin="lower", extent=extent))
        left, right = ("P", "A") if axis == 0 else ("L", "R")
        artists["left_label"].set_text(left)
        artists["right_label"].set_text(right)
        # histogram of the region's voxels at this probability threshold
        md_in = np.clip(rv["md"][inside] * MD_SCALE, edges[0], edges[-1] - 1e-9)
        keep_in = kept[inside]
        hk, _ = np.histogram(md_in[keep_in], edges)
        hd, _ = np.histogram(md_in[~keep_in], edges)
        artists["hist_kept"].set_data(hk, edges)
        artists["hist_dropped"].set_data(hd, edges)
        ax_hist.set_ylim(0, max(hk.max(initial=0), hd.max(initial=0), 1) * 1.15)
        cut = artists["cutoff"]
        cut.set_visible(c_thr is not None)
        if c_thr is not None:
            cut.set_xdata([c_thr * MD_SCALE] * 2)
        mean = artists["mean"]
        mean.set_visible(bool(np.isfinite(row["md_mean"])))
        if np.isfinite(row["md_mean"]):
            mean.set_xdata([row["md_mean"] * MD_SCALE] * 2)
        mm = _slice_mm(s["affine"], shape, axis, index)
        coord = "xyz"[axis]
        artists["title"].set_text(f"{pid} ses-{ses} · {reg} · {values['view']} slice "
                                  f"{coord} = {mm:.0f} mm")
        cut_text = "off" if c_thr is None else f"{c_thr * MD_SCALE:.2f}"
        artists["subtitle"].set_text(
            f"kept {int(row['n_voxels'])} voxels (green), dropped {int(row['n_excluded'])} "
            f"by the CSF guard (purple); in this slice {int(layers['kept'].sum())} / "
            f"{int(layers['dropped'].sum())}")
        artists["hist_title"].set_text(
            f"mean {_fmt(row['md_mean'] * MD_SCALE, '.3f')}, median "
            f"{_fmt(row['md_median'] * MD_SCALE, '.3f')} (10⁻³ mm²/s); cut-off {cut_text}")
        return pd.DataFrame([{
            "participant_id": pid, "session": ses, "region": reg,
            "probability_threshold": p_thr,
            "csf_md_threshold": np.nan if c_thr is None else c_thr,
            "md_mean": row["md_mean"], "md_median": row["md_median"],
            "n_voxels": int(row["n_voxels"]), "n_excluded": int(row["n_excluded"]),
            "view": values["view"], "slice_index": index, "slice_mm": mm,
            "n_voxels_slice": int(layers["kept"].sum()),
            "n_excluded_slice": int(layers["dropped"].sum())}])

    def describe(t):
        return _html_table(t, {
            "subject": ("participant_id", str), "session": ("session", str),
            "region": ("region", str), "probability ≥": ("probability_threshold", ".2f"),
            "CSF cut-off": ("csf_md_threshold", _csf_text),
            "MD mean": ("md_mean", _md_text), "MD median": ("md_median", _md_text),
            "voxels kept": ("n_voxels", "d"), "dropped by guard": ("n_excluded", "d")}) + (
            "<div style='font-size:11px;color:#555'>MD and cut-off in 10⁻³ mm²/s; kept: "
            "atlas probability ≥ threshold and MD ≤ cut-off; dropped: above the cut-off "
            "(from <code>summarise_regions</code> on the cached voxel table)</div>")
    w = Explorer(controls, fig, draw, artists=artists, link=link, describe=describe,
                 title="Region of interest: threshold and CSF guard", name="roi", columns=2)
    w.cache = cache
    return w


# ---------------------------------------------------------------------------
# Outcome explorer

_OUTCOME_LABELS = {"madrs": "MADRS", "qids": "QIDS-SR"}
_COVARIATES = {"none": (), "age+sex": ("age", "sex")}


def outcome_explorer(results, *, region: str | None = None) -> Explorer:
    """Explore ΔMD against the change in depression score, per arm.

    The scatter shows, per participant, ΔMD (post − pre, 10⁻⁶ mm²/s) of the
    region against the change in MADRS or QIDS-SR (post − pre, points or
    percent of baseline), one colour per arm, with each arm's slope from the
    study's model (adjusted for the baseline score and the covariates) drawn
    through the arm's means. The table has one row per arm shown: the
    correlation (Pearson r or Spearman ρ), the model's simple slope, and the
    arm x ΔMD interaction (β, SE, p), all from
    :func:`ketamine_nb.stats.region_stats` on
    :func:`ketamine_nb.stats.stats_input`'s rows.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        From :func:`ketamine_nb.load_results` (needs the scores).
    region : str, optional
        Region shown first.

    Returns
    -------
    Explorer
        Controls ``region``, ``outcome`` (``madrs``/``qids``), ``change``
        (``absolute``/``percent``), ``arm`` (``both``/``ketamine``/``saline``),
        ``method`` (``pearson``/``spearman``), ``covariates``
        (``none``/``age+sex``).

    Notes
    -----
    The model is fitted without permutations or bootstrap so that it answers
    at once; its estimates equal ``stats_roi.tsv``'s, whose permutation p
    and bootstrap CIs need ``ketamine-nb stats``.
    """
    from .stats import StatsConfig, region_stats, stats_input

    if results.scores is None:
        raise InputError(f"{results.out_dir}: no scores.tsv; rerun 'ketamine-nb run' on a "
                         "dataset with MADRS/QIDS-SR scores")
    regions = results.regions
    controls = {
        "region": _dropdown("Region", regions, region or regions[0]),
        "outcome": _dropdown("Outcome", [(v, k) for k, v in _OUTCOME_LABELS.items()], "madrs"),
        "change": _dropdown("Score change", [("points (post − pre)", "absolute"),
                                             ("percent of baseline", "percent")], "absolute"),
        "arm": _dropdown("Arm", [("both", "both"), ("ketamine", "ketamine"),
                                 ("saline", "saline")], "both"),
        "method": _dropdown("Correlation", [("Pearson r", "pearson"),
                                            ("Spearman ρ", "spearman")], "pearson"),
        "covariates": _dropdown("Covariates", [("none", "none"), ("age + sex", "age+sex")],
                                "none"),
    }
    rows_cache: dict = {}
    stats_cache: dict = {}

    def model(reg, outcome, change, covariates):
        cfg = StatsConfig(outcomes=(outcome,), covariates=_COVARIATES[covariates],
                          change=change, n_permutations=0, n_bootstrap=0)
        key = (outcome, change, covariates)
        if key not in rows_cache:
            rows_cache[key] = stats_input(results.roi_deltas, results.scores, config=cfg,
                                          participants=results.participants)[0]
        rows = rows_cache[key]
        sub = rows[rows["region"] == reg]
        if key + (reg,) not in stats_cache:
            if sub.empty:
                raise InputError(f"{reg}: no participant has both ΔMD and {outcome} scores")
            stats_cache[key + (reg,)] = region_stats(sub, config=cfg).iloc[0]
        return sub, stats_cache[key + (reg,)]

    fig = _new_figure(7.5, 4.6)
    ax = fig.add_axes((0.11, 0.12, 0.6, 0.78))
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.axvline(0, color="0.8", lw=0.8, zorder=0)
    artists = {}
    for arm, color in ARM_COLORS.items():
        artists[f"points_{arm}"] = ax.scatter(np.empty(0), np.empty(0), s=22, color=color,
                                              alpha=0.8, edgecolor="none", label=arm)
        artists[f"fit_{arm}"] = ax.plot([], [], color=color, lw=2)[0]
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              title="arm", title_fontsize=8)
    ax.set_xlabel("ΔMD = post − pre (10⁻⁶ mm²/s)", fontsize=9)
    ax.tick_params(labelsize=8)
    artists["ylabel"] = ax.set_ylabel("", fontsize=9)
    artists["title"] = ax.set_title("", fontsize=10, loc="left")
    artists["stats"] = fig.text(0.73, 0.72, "", fontsize=8, va="top", family="monospace",
                                linespacing=1.4)

    def draw(values):
        reg, outcome, change = values["region"], values["outcome"], values["change"]
        sub, rec = model(reg, outcome, change, values["covariates"])
        arms = ["ketamine", "saline"] if values["arm"] == "both" else [values["arm"]]
        spearman = values["method"] == "spearman"
        shown_x, shown_y = [], []
        for arm in ARM_COLORS:
            g = sub[sub["arm"] == arm]
            x, y = g["delta_md_e6"].to_numpy(float), g["delta_score"].to_numpy(float)
            on = arm in arms
            artists[f"points_{arm}"].set_offsets(np.column_stack([x, y]) if on
                                                 else np.empty((0, 2)))
            lx, ly = _fit_line(x, y, rec.get(f"slope_{arm}", np.nan)) if on else ([], [])
            artists[f"fit_{arm}"].set_data(lx, ly)
            if on:
                shown_x.append(x)
                shown_y.append(y)
        xs = np.concatenate(shown_x) if shown_x else np.empty(0)
        ys = np.concatenate(shown_y) if shown_y else np.empty(0)
        ax.set_xlim(*_padded_limits(xs))
        ax.set_ylim(*_padded_limits(ys))
        label = _OUTCOME_LABELS[outcome]
        unit = "points" if change == "absolute" else "% of baseline"
        artists["ylabel"].set_text(f"Δ{label} = post − pre ({unit})")
        artists["title"].set_text(f"{reg}: Δ{label} vs ΔMD")
        table = []
        for arm in arms:
            table.append({
                "region": reg, "outcome": outcome, "change": change,
                "covariates": values["covariates"], "arm": arm,
                "n": int(rec[f"n_{arm}"]), "method": values["method"],
                "correlation": rec[f"rho_{arm}" if spearman else f"r_{arm}"],
                "p_correlation": rec[f"p_rho_{arm}" if spearman else f"p_r_{arm}"],
                "slope": rec.get(f"slope_{arm}", np.nan),
                "se_slope": rec.get(f"se_slope_{arm}", np.nan),
                "p_slope": rec.get(f"p_slope_{arm}", np.nan),
                "beta_interaction": rec.get("beta_interaction", np.nan),
                "se_interaction": rec.get("se_interaction", np.nan),
                "p_interaction": rec.get("p_interaction", np.nan),
                "formula": rec["formula"]})
        table = pd.DataFrame(table)
        sym = "ρ" if spearman else "r"
        lines = []
        for r in table.itertuples():
            lines += [f"{r.arm} (n = {r.n})", f"  {sym} = {_fmt(r.correlation, '.2f')}, "
                      f"{_p_text(r.p_correlation)}",
                      f"  slope {_fmt(r.slope, '.2f')} ± {_fmt(r.se_slope, '.2f')}"]
        lines += ["arm × ΔMD interaction", f"  β = {_fmt(rec.get('beta_interaction'), '.2f')}"
                  f" ± {_fmt(rec.get('se_interaction'), '.2f')}",
                  f"  {_p_text(rec.get('p_interaction', np.nan))}",
                  f"covariates: {values['covariates']}"]
        artists["stats"].set_text("\n".join(lines))
        return table

    def describe(t):
        r = t.iloc[0]
        caption = (f"<div style='font-size:12px'><b>{html.escape(str(r['region']))}</b> · "
                   f"{_OUTCOME_LABELS[r['outcome']]} · change: {html.escape(r['change'])} · "
                   f"covariates: {html.escape(r['covariates'])} · {r['method']}</div>")
        return caption + _html_table(t, {
            "arm": ("arm", str), "n": ("n", "d"),
            "correlation": ("correlation", ".3f"), "p": ("p_correlation", _p),
            "slope (per 10⁻⁶ mm²/s)": ("slope", ".3f"), "SE": ("se_slope", ".3f"),
            "p ": ("p_slope", _p), "interaction β": ("beta_interaction", ".3f"),
            "SE ": ("se_interaction", ".3f"), "p  ": ("p_interaction", _p)}) + (
            f"<div style='font-size:11px;color:#555'>{html.escape(t['formula'].iloc[0])} "
            "(OLS; Δ = post − pre; slopes in score units per 10⁻⁶ mm²/s)</div>")
    return Explorer(controls, fig, draw, artists=artists, describe=describe,
                    title="Outcome: ΔMD against the change in depression score",
                    name="outcome")


# ---------------------------------------------------------------------------
# Slice viewer


def _load_image(img):
    import nibabel as nib

    if isinstance(img, str | Path):
        return nib.load(str(img))
    if not hasattr(img, "affine") or not hasattr(img, "dataobj"):
        raise InputError("slice_viewer needs a nibabel image, a path to one, or a Results")
    return img


def _display_scale(kind: str, data):
    """Scale, colour range and label of a map kind."""
    if kind in ("md", "md_mni"):
        return MD_SCALE, MD_DISPLAY_RANGE, MD_LABEL
    if kind == "fa":
        return 1.0, (0.0, 1.0), "FA"
    if kind == "mask":
        return 1.0, (0.0, 1.0), "brain mask"
    finite = data[np.isfinite(data)]
    nz = finite[finite != 0]
    lo, hi = (np.percentile(nz, [1, 99]) if nz.size else (0.0, 1.0))
    return 1.0, (float(min(lo, 0.0)), float(hi if hi > lo else lo + 1)), (
        "signal (a.u.)" if kind == "dwi" else "value")


def slice_viewer(img_or_results, *, overlay=None, participant_id: str | None = None,
                 session: str | None = None, kind: str | None = None, region: str | None = None,
                 view: str = "axial", overlay_threshold: float = 0.0) -> Explorer:
    """Browse the slices of a map, optionally with an overlay.

    Parameters
    ----------
    img_or_results : nibabel.Nifti1Image, str, pathlib.Path or Results
        A 3D/4D image (or its path), or pipeline results: then the subject,
        session and map (``md``, ``fa``, ``mask``, ``md_mni``, and the raw
        ``dwi`` when the dataset is known) are controls too, and the overlay
        is a study region (its cached voxels, by atlas probability).
    overlay : nibabel.Nifti1Image or str, optional
        With an image: a map drawn in colour where it exceeds
        ``overlay_threshold`` (resampled to the image's grid, nearest
        neighbour, when the grids differ).
    participant_id, session, region : str, optional
        With results: what is shown first.
    kind : str, optional
        The map: with results, what is shown first (default ``md``); with an
        image, how to scale it (``md``: 10⁻³ mm²/s from mm²/s; ``fa``;
        ``mask``; anything else: the 1st-99th percentile), guessed from a
        BIDS file name (``desc-MD``, ``desc-FA``, ``mask``) when omitted.
    view : {"axial", "coronal", "sagittal"}, default="axial"
        Slice orientation.
    overlay_threshold : float, default=0.0
        Overlay voxels above this are drawn.

    Returns
    -------
    Explorer
        Controls ``view``, ``slice`` (index in RAS+ order, starting at the
        middle; with a region overlay, at the region's centre, which the
        slice follows when the view, region, subject or session changes),
        ``volume`` (4D images), ``opacity`` (with an overlay), and
        with results ``subject``, ``session``, ``kind``, ``region``. The table
        has one row: the image, ``view``, ``slice_index``, ``slice_mm``,
        ``volume``, the mean of the slice's nonzero values (the image's units)
        and ``n_overlay_voxels`` in the slice.
    """
    from .results import Results

    if view not in VIEWS:
        raise InputError(f"view must be one of {', '.join(VIEWS)}, not {view!r}")
    is_results = isinstance(img_or_results, Results)
    cache: OrderedDict = OrderedDict()
    region_cache: OrderedDict = OrderedDict()

    def remember(store, key, make):
        if key not in store:
            store[key] = make()
            while len(store) > _SESSION_CACHE_SIZE:
                store.popitem(last=False)
        store.move_to_end(key)
        return store[key]

    controls = {}
    if is_results:
        results = img_or_results
        subjects = _subject_options(results)
        pid = participant_id or subjects[0][1]
        sessions = _sessions_of(results, pid)
        kinds = ["md", "fa", "mask"]
        if results.paths(pid, sessions[0]).get("md_mni") and Path(
                results.paths(pid, sessions[0])["md_mni"]).exists():
            kinds.append("md_mni")
        if results.bids_dir is not None:
            kinds.append("dwi")
        kind = kind or "md"
        if kind not in kinds:
            raise InputError(f"kind must be one of {', '.join(kinds)}, not {kind!r}")
        controls["subject"] = _dropdown("Subject", subjects, pid)
        controls["session"] = _dropdown("Session", sessions, session or sessions[0])
        controls["kind"] = _dropdown("Map", kinds, kind)
        controls["region"] = _dropdown("Region overlay", ["none", *results.regions],
                                       region or "none")

        def image_for(values):
            key = (values["subject"], values["session"], values["kind"])
            return remember(cache, key, lambda: (
                f"{key[0]} ses-{key[1]} {key[2]}",
                *_canonical(results.image(*key)), key[2]))

        def overlay_for(values, base):
            reg = values["region"]
            if reg == "none" or values["kind"] == "md_mni":
                return None
            key = (values["subject"], values["session"], reg)

            def make():
                md_img = results.image(values["subject"], values["session"], "md")
                v = results.session_voxels(values["subject"], values["session"])
                v = v[v["region"].astype(str) == reg]
                ornt = _canonical_ornt(md_img)
                ijk = _ras_indices(v[["i", "j", "k"]].to_numpy(), md_img.shape[:3], ornt)
                vol = np.zeros(base.shape[:3], np.float32)
                vol[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = v["probability"].to_numpy()
                return vol
            return remember(region_cache, key, make)
    else:
        img = _load_image(img_or_results)
        name = Path(img.get_filename()).name if img.get_filename() else "image"
        if kind is None:
            low = name.lower()
            kind = ("md" if "desc-md_" in low else "fa" if "desc-fa_" in low
                    else "mask" if "mask" in low else "image")
        base = (name, *_canonical(img), kind)
        ov = None
        if overlay is not None:
            ov_img = _load_image(overlay)
            if ov_img.shape[:3] != img.shape[:3] or not np.allclose(ov_img.affine, img.affine,
                                                                    atol=1e-3):
                from nilearn.image import resample_to_img

                ov_img = resample_to_img(ov_img, img.slicer[..., 0] if img.ndim == 4 else img,
                                         interpolation="nearest", force_resample=True,
                                         copy_header=True)
            ov = _canonical(ov_img)[0]
            if ov.ndim == 4:
                ov = ov[..., 0]

        def image_for(values):
            return base

        def overlay_for(values, data):
            return ov

    def region_slice(values, data, axis):
        """Index of the overlaid region's centre along ``axis`` (None without a region)."""
        if not is_results or values["region"] == "none":
            return None
        ov = overlay_for(values, data)
        if ov is None or not ov.any():
            return None
        return int(_region_centre(np.argwhere(ov > 0), ov[ov > 0])[axis])

    first = image_for({k: c.value for k, c in controls.items()})
    shape0 = first[1].shape
    controls["view"] = _dropdown("View", list(VIEWS), view)
    controls["slice"] = widgets.IntSlider(
        value=shape0[VIEWS[view]] // 2, min=0, max=shape0[VIEWS[view]] - 1,
        description="Slice", continuous_update=False, style=_STYLE,
        layout=widgets.Layout(width="auto"))
    n_vol = shape0[3] if len(shape0) == 4 else 1
    controls["volume"] = widgets.IntSlider(
        value=0, min=0, max=max(n_vol - 1, 0), description="Volume",
        continuous_update=False, disabled=n_vol == 1, style=_STYLE,
        layout=widgets.Layout(width="auto"))
    start = region_slice({k: c.value for k, c in controls.items()}, first[1], VIEWS[view])
    if start is not None:
        controls["slice"].value = start
    has_overlay = is_results or overlay is not None
    if has_overlay:
        controls["opacity"] = widgets.FloatSlider(
            value=0.6, min=0.0, max=1.0, step=0.05, description="Overlay opacity",
            continuous_update=False, style=_STYLE, layout=widgets.Layout(width="auto"))

    fig = _new_figure(6.0, 5.2)
    ax = fig.add_axes((0.04, 0.13, 0.92, 0.78))
    cax = fig.add_axes((0.2, 0.07, 0.6, 0.025))
    artists = {
        "image": ax.imshow(np.zeros((2, 2), np.float32), origin="lower", cmap="gray",
                           interpolation="nearest"),
        "overlay": ax.imshow(np.ma.masked_all((2, 2)), origin="lower", cmap="autumn",
                             vmin=0, vmax=1, interpolation="nearest"),
        "title": ax.set_title("", fontsize=9),
    }
    artists["left_label"], artists["right_label"] = _orientation_labels(ax)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("k")
    cb = fig.colorbar(artists["image"], cax=cax, orientation="horizontal")
    cb.ax.tick_params(labelsize=7)

    def link(w, change):
        c = w.controls
        owner = change["owner"]
        if "subject" in c and owner is c["subject"]:
            opts = _sessions_of(img_or_results, change["new"])
            old = c["session"].value
            c["session"].options = opts
            c["session"].value = old if old in opts else opts[0]
        values = w.values
        data = image_for(values)[1]
        axis = VIEWS[values["view"]]
        n = data.shape[axis]
        c["slice"].max = n - 1
        nv = data.shape[3] if data.ndim == 4 else 1
        c["volume"].max = max(nv - 1, 0)
        c["volume"].disabled = nv == 1
        follow = [c["view"], *(c[k] for k in ("region", "subject", "session") if k in c)]
        if any(owner is f for f in follow):
            centre = region_slice(values, data, axis)
            if centre is not None:
                c["slice"].value = centre
            elif owner is c["view"]:
                c["slice"].value = n // 2

    def draw(values):
        label, data, affine, _ornt, kind_ = image_for(values)
        axis = VIEWS[values["view"]]
        index = int(np.clip(values["slice"], 0, data.shape[axis] - 1))
        vol = int(values["volume"]) if data.ndim == 4 else 0
        d3 = data[..., min(vol, data.shape[3] - 1)] if data.ndim == 4 else data
        scale, (lo, hi), unit = _display_scale(kind_, d3)
        sl = _slice2d(d3, axis, index)
        im = artists["image"]
        im.set_data(sl * scale)
        im.set_clim(lo, hi)
        h, v = _plane_axes(axis)
        extent = (-0.5, d3.shape[h] - 0.5, -0.5, d3.shape[v] - 0.5)
        im.set_extent(extent)
        cb.set_label(unit, fontsize=8)
        ov = overlay_for(values, data)
        n_ov = 0
        if ov is not None:
            osl = _slice2d(ov, axis, index)
            shown = osl > overlay_threshold
            n_ov = int(shown.sum())
            artists["overlay"].set_data(np.ma.masked_where(~shown, osl))
            artists["overlay"].set_clim(*((0, 1) if is_results else
                                          (overlay_threshold, max(float(ov.max()),
                                                                  overlay_threshold + 1e-6))))
            artists["overlay"].set_alpha(float(values.get("opacity", 0.6)))
        else:
            artists["overlay"].set_data(np.ma.masked_all(sl.shape))
        artists["overlay"].set_extent(extent)
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
        mm = _slice_mm(affine, d3.shape, axis, index)
        left, right = ("P", "A") if axis == 0 else ("L", "R")
        artists["left_label"].set_text(left)
        artists["right_label"].set_text(right)
        extra = f", volume {vol}" if data.ndim == 4 else ""
        ov_text = ""
        if is_results and values["region"] != "none":
            ov_text = (f"; {values['region']} (atlas probability) not on this grid"
                       if ov is None else f"; {values['region']} by atlas probability")
        artists["title"].set_text(f"{label}: {values['view']} slice {index} "
                                  f"({'xyz'[axis]} = {mm:.0f} mm){extra}{ov_text}")
        nz = sl[np.isfinite(sl) & (sl != 0)]
        return pd.DataFrame([{"image": label, "view": values["view"], "slice_index": index,
                              "slice_mm": mm, "volume": vol,
                              "slice_mean": float(nz.mean()) if nz.size else np.nan,
                              "n_overlay_voxels": n_ov}])

    def describe(t):
        return _html_table(t, {
            "image": ("image", str), "view": ("view", str), "slice": ("slice_index", "d"),
            "position (mm)": ("slice_mm", ".0f"), "volume": ("volume", "d"),
            "mean of nonzero (image units)": ("slice_mean", ".4g"),
            "overlay voxels in slice": ("n_overlay_voxels", "d")})
    return Explorer(controls, fig, draw, artists=artists, link=link, describe=describe,
                    title="Slice viewer", name="slices")


def _canonical_ornt(img):
    from nibabel.orientations import io_orientation

    return io_orientation(img.affine)


# ---------------------------------------------------------------------------
# Robustness explorer

#: The choices of the robustness grid, in the order of its columns.
_CHOICES = ("fit_method", "probability_threshold", "csf_md_threshold", "outcome", "change",
            "covariates")
_CHOICE_LABELS = {"fit_method": "Tensor fit", "probability_threshold": "Atlas probability ≥",
                  "csf_md_threshold": "CSF cut-off", "outcome": "Outcome",
                  "change": "Score change", "covariates": "Covariates"}


def _choice_label(choice: str, value) -> str:
    if choice == "csf_md_threshold":
        return "off" if not np.isfinite(value) else f"{value * MD_SCALE:.2f}×10⁻³"
    if choice == "probability_threshold":
        return f"{value:g}"
    if choice == "outcome":
        return _OUTCOME_LABELS.get(value, str(value))
    return str(value)


def _spec_matches(table: pd.DataFrame, filters: dict) -> np.ndarray:
    """Rows of a robustness table matching ``filters`` (``"all"`` matches everything)."""
    ok = np.ones(len(table), dtype=bool)
    for choice, value in filters.items():
        if isinstance(value, str) and value == "all":
            continue
        col = table[choice]
        if choice in ("probability_threshold", "csf_md_threshold"):
            x = col.to_numpy(float)
            ok &= (np.isinf(value) & np.isnan(x)) | np.isclose(x, value, rtol=1e-6, atol=0)
        else:
            ok &= (col.astype(str) == str(value)).to_numpy()
    return ok


def robustness_explorer(results) -> Explorer:
    """Explore the specification curve of the robustness grid.

    For one region, every specification of ``robustness.tsv`` (written by
    ``ketamine-nb stats --robustness`` and by the demo) is a point: the
    interaction's t value (β / SE, comparable across outcomes and score
    units), sorted. Below, each column marks the choices of that
    specification. The choices set with the dropdowns (``all`` = any value)
    select specifications, drawn in orange; the table holds those rows. At
    the start the dropdowns hold the configured analysis (the pipeline's
    thresholds and fit, MADRS, absolute change, no covariates), so exactly
    that specification is highlighted.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        From :func:`ketamine_nb.load_results`, with ``robustness``.

    Returns
    -------
    Explorer
        Controls ``region`` and one per choice: ``fit_method``,
        ``probability_threshold``, ``csf_md_threshold`` (mm²/s; ``inf`` =
        off), ``outcome``, ``change``, ``covariates``.
    """
    grid = results.robustness
    if grid is None or grid.empty:
        raise InputError(f"{results.out_dir}: no robustness.tsv; run 'ketamine-nb stats "
                         f"{results.out_dir} --robustness' (the demo does)")
    grid = grid.copy()
    grid["csf_md_threshold"] = pd.to_numeric(grid["csf_md_threshold"], errors="coerce")
    grid["t_interaction"] = grid["beta_interaction"] / grid["se_interaction"]
    regions = [r for r in results.regions if r in set(grid["region"])] or list(
        pd.unique(grid["region"]))
    values_of = {}
    for choice in _CHOICES:
        vals = list(pd.unique(grid[choice]))
        if choice in ("probability_threshold", "csf_md_threshold"):
            vals = [float("inf") if pd.isna(v) else float(v) for v in vals]
        values_of[choice] = vals
    default = {"fit_method": "configured",
               "probability_threshold": results.config.get("probability_threshold", 0.25),
               "csf_md_threshold": results.config.get("csf_md_threshold", 1.1e-3),
               "outcome": "madrs", "change": "absolute", "covariates": "none"}
    if default["csf_md_threshold"] is None:
        default["csf_md_threshold"] = float("inf")
    controls = {"region": _dropdown("Region", regions, regions[0])}
    for choice in _CHOICES:
        opts = [("all", "all")] + [(_choice_label(choice, v), v) for v in values_of[choice]]
        want = default[choice]
        match = [v for _, v in opts[1:] if (v == want if isinstance(v, str) else
                                            isinstance(want, int | float)
                                            and np.isclose(v, want))]
        controls[choice] = _dropdown(_CHOICE_LABELS[choice], opts,
                                     match[0] if match else "all")

    rows_dash = [(c, v) for c in _CHOICES for v in values_of[c]]
    n_specs = grid["spec"].nunique()
    fig = _new_figure(10.0, 5.8)
    ax = fig.add_axes((0.22, 0.54, 0.76, 0.39))
    axd = fig.add_axes((0.22, 0.09, 0.76, 0.42), sharex=ax)
    for y in (-1.96, 1.96):
        ax.axhline(y, color="0.6", ls="--", lw=0.8)
    ax.axhline(0, color="0.3", lw=0.8)
    artists = {
        "all": ax.scatter(np.empty(0), np.empty(0), s=10, color="0.65", edgecolor="none",
                          label="all specifications"),
        "selected": ax.scatter(np.empty(0), np.empty(0), s=28, color=HIGHLIGHT_COLOR,
                               edgecolor="k", linewidth=0.4, zorder=3, label="selected"),
        "dash_all": axd.scatter(np.empty(0), np.empty(0), s=4, marker="s", color="0.8",
                                edgecolor="none"),
        "dash_selected": axd.scatter(np.empty(0), np.empty(0), s=16, marker="s",
                                     color=HIGHLIGHT_COLOR, edgecolor="none"),
        "title": ax.set_title("", fontsize=10, loc="left"),
    }
    ax.set_ylabel("interaction t = β / SE", fontsize=9)
    ax.tick_params(labelsize=8, labelbottom=False)
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    ax.set_xlim(-1, n_specs)
    axd.set_yticks(range(len(rows_dash)))
    axd.set_yticklabels([f"{_CHOICE_LABELS[c]}: {_choice_label(c, v)}" for c, v in rows_dash],
                        fontsize=7)
    axd.set_ylim(len(rows_dash) - 0.5, -0.5)
    axd.set_xlabel("specifications, sorted by t", fontsize=9)
    axd.tick_params(labelsize=8)
    row_of = {(c, _choice_label(c, v)): i for i, (c, v) in enumerate(rows_dash)}

    def draw(values):
        g = grid[grid["region"].astype(str) == values["region"]].copy()
        if g.empty:
            raise InputError(f"{values['region']}: not in robustness.tsv")
        g = g.sort_values(["t_interaction", "spec"], na_position="last").reset_index(drop=True)
        g["rank"] = np.arange(len(g))
        sel = _spec_matches(g, {c: values[c] for c in _CHOICES})
        pts = np.column_stack([g["rank"], g["t_interaction"]])
        artists["all"].set_offsets(pts[~sel])
        artists["selected"].set_offsets(pts[sel])
        dash = []
        for c in _CHOICES:
            col = g[c].to_numpy()
            labels = [_choice_label(c, (float("inf") if pd.isna(v) else v)
                                    if c == "csf_md_threshold" else v) for v in col]
            dash.append(np.column_stack([g["rank"], [row_of[(c, lab)] for lab in labels]]))
        dash = np.stack(dash, axis=1)  # spec x choice x 2
        artists["dash_all"].set_offsets(dash[~sel].reshape(-1, 2))
        artists["dash_selected"].set_offsets(dash[sel].reshape(-1, 2))
        t = g["t_interaction"].to_numpy(float)
        ax.set_ylim(*_padded_limits(t, include=(-2.5, 2.5)))
        ax.set_xlim(-1, len(g))
        n_sig = int(np.sum(np.abs(t) > 1.96))
        artists["title"].set_text(
            f"{values['region']}: {int(sel.sum())} of {len(g)} specifications selected; "
            f"|t| > 1.96 in {n_sig} of {len(g)}")
        cols = ["spec", "rank", "region", *_CHOICES, "n", "beta_interaction",
                "se_interaction", "t_interaction", "p_interaction", "slope_ketamine",
                "slope_saline"]
        return g.loc[sel, [c for c in cols if c in g]].sort_values("spec").reset_index(
            drop=True)

    def describe(t):
        head = t.head(20)
        more = (f"<div style='font-size:11px;color:#555'>first 20 of {len(t)} selected "
                "specifications (all of them in <code>w.table</code>)</div>"
                if len(t) > 20 else "")
        return _html_table(head, {
            "spec": ("spec", "d"), "fit": ("fit_method", str),
            "probability ≥": ("probability_threshold", ".2f"),
            "CSF cut-off (10⁻³ mm²/s)": ("csf_md_threshold", _csf_text),
            "outcome": ("outcome", str), "change": ("change", str),
            "covariates": ("covariates", str), "n": ("n", "d"),
            "β": ("beta_interaction", ".3f"), "SE": ("se_interaction", ".3f"),
            "t": ("t_interaction", ".2f"), "p": ("p_interaction", _p)}) + more

    return Explorer(controls, fig, draw, artists=artists, describe=describe, columns=4,
                    title="Robustness: the specification curve", name="robustness")
