"""Slices of a volume in RAS+ orientation: one region's voxels, and a plain slice viewer.

Two builders, :class:`RegionFigure` (an MD slice through a region: kept and
dropped voxels, the outline, a zoom and the histogram of the region's MD)
and :class:`SliceFigure` (a slice of any map with an optional overlay),
used by :func:`plot_region_voxels`/:func:`plot_slice` and by the ROI
explorer and the slice viewer. Images are shown in RAS+ orientation (the
patient's left on the left of axial and coronal slices), MD in 10⁻³ mm²/s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..exceptions import InputError
from ._base import (
    DROPPED_COLOR,
    KEPT_COLOR,
    MD_LABEL,
    MD_SCALE,
    MEAN_COLOR,
    OUTLINE_COLOR,
    FigureHandle,
    plain_figure,
)

__all__ = [
    "MD_DISPLAY_RANGE",
    "VIEWS",
    "RegionFigure",
    "SliceFigure",
    "canonical",
    "plot_region_voxels",
    "plot_slice",
    "region_session",
]

#: Slice orientations: name -> axis of the RAS+ array that is fixed.
VIEWS = {"sagittal": 0, "coronal": 1, "axial": 2}

#: Grey-scale range of MD maps (10⁻³ mm²/s): tissue is dark, free water bright.
MD_DISPLAY_RANGE = (0.0, 3.0)

#: Histogram bins of a region's voxel MD (10⁻³ mm²/s).
_EDGES = np.arange(0.0, 3.5 + 1e-9, 0.05)


def canonical(img):
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


def ras_indices(ijk, shape, ornt) -> np.ndarray:
    """Map voxel indices of the stored grid to those of :func:`canonical`'s array."""
    ijk = np.asarray(ijk, dtype=np.int64)
    out = np.empty_like(ijk)
    for k in range(3):
        axis, flip = int(ornt[k, 0]), ornt[k, 1]
        out[:, axis] = shape[k] - 1 - ijk[:, k] if flip < 0 else ijk[:, k]
    return out


def slice2d(volume, axis: int, index: int) -> np.ndarray:
    """One slice of a RAS+ volume, transposed for ``imshow(origin="lower")``."""
    return np.take(volume, index, axis=axis).T


def plane_axes(axis: int) -> tuple[int, int]:
    """Volume axes shown horizontally and vertically in a slice along ``axis``."""
    h, v = (a for a in range(3) if a != axis)
    return h, v


def slice_mm(affine, shape, axis: int, index: int) -> float:
    """World coordinate (mm) of a slice along ``axis`` through the volume's centre."""
    c = (np.asarray(shape[:3], float) - 1) / 2
    c[axis] = index
    return float((affine @ np.append(c, 1.0))[axis])


def region_centre(ras_ijk, probability) -> np.ndarray:
    """Probability-weighted centroid (voxel indices, rounded) of a region's voxels."""
    w = np.asarray(probability, float)
    return np.rint((np.asarray(ras_ijk, float) * w[:, None]).sum(0) / w.sum()).astype(int)


def slice_layers(ras_ijk, shape, *, axis: int, index: int, **selections) -> dict:
    """2D masks of one slice, one per boolean selection of the voxels (by name)."""
    h, v = plane_axes(axis)
    on = ras_ijk[:, axis] == index
    out = {}
    for name, sel in selections.items():
        m = np.zeros((shape[v], shape[h]), dtype=bool)
        s = on & np.asarray(sel, bool)
        m[ras_ijk[s, v], ras_ijk[s, h]] = True
        out[name] = m
    return out


def zoom_window(ras_ijk, axis: int, *, margin: int = 4) -> tuple:
    """Square display limits around every voxel of a region (slice coordinates)."""
    h, v = plane_axes(axis)
    lo = ras_ijk[:, [h, v]].min(0) - margin
    hi = ras_ijk[:, [h, v]].max(0) + margin
    half = max(hi - lo) / 2 + 0.5
    ch, cv = (lo + hi) / 2
    return (ch - half, ch + half), (cv - half, cv + half)


def upsample(mask, factor: int = 4) -> np.ndarray:
    """Repeat each pixel ``factor`` x ``factor`` times, so a contour follows voxel edges."""
    return np.kron(np.asarray(mask, np.float32), np.ones((factor, factor), np.float32))


def overlay_rgba(kept, dropped) -> np.ndarray:
    """RGBA image: kept voxels in :data:`KEPT_COLOR`, dropped in :data:`DROPPED_COLOR`."""
    from matplotlib.colors import to_rgba

    rgba = np.zeros((*np.shape(kept), 4), dtype=np.float32)
    rgba[kept] = to_rgba(KEPT_COLOR, 0.7)
    rgba[dropped] = to_rgba(DROPPED_COLOR, 0.9)
    return rgba


def count_color(rgba: np.ndarray, color: str) -> int:
    """Count the pixels of an RGBA image drawn in ``color`` (alpha > 0)."""
    from matplotlib.colors import to_rgba

    target = np.asarray(to_rgba(color)[:3], dtype=np.float32)
    drawn = rgba[..., 3] > 0
    return int(np.count_nonzero(drawn & np.all(np.isclose(rgba[..., :3], target), -1)))


def _orientation_labels(ax):
    """Two texts in the upper corners of a slice (set to "L"/"R" or "P"/"A")."""
    kw = {"transform": ax.transAxes, "color": "w", "fontsize": 9, "weight": "bold",
          "va": "top"}
    return ax.text(0.03, 0.97, "", ha="left", **kw), ax.text(0.97, 0.97, "", ha="right", **kw)


def _set_orientation(artists, axis):
    left, right = ("P", "A") if axis == 0 else ("L", "R")
    artists["left_label"].set_text(left)
    artists["right_label"].set_text(right)


def region_session(md_img, voxels: pd.DataFrame) -> dict:
    """One session's MD map and region voxels, ready to draw (RAS+, 10⁻³ mm²/s).

    Parameters
    ----------
    md_img : nibabel.Nifti1Image
        The session's MD map (mm²/s).
    voxels : pandas.DataFrame
        Its per-voxel region table (``Results.session_voxels``: ``i``, ``j``,
        ``k``, ``region``, ``probability``, ``md``, ``fa``).

    Returns
    -------
    dict
        ``md`` (RAS+ array, 10⁻³ mm²/s), ``affine``, ``shape``, ``voxels``
        and ``ras`` (each voxel's RAS+ indices, in the table's order).
    """
    data, affine, ornt = canonical(md_img)
    ras = ras_indices(voxels[["i", "j", "k"]].to_numpy(), md_img.shape[:3], ornt)
    return {"md": data * MD_SCALE, "affine": affine, "shape": data.shape[:3],
            "voxels": voxels.reset_index(drop=True), "ras": ras}


class RegionFigure(FigureHandle):
    """An MD slice through one region: kept and dropped voxels, outline, zoom, histogram.

    Attributes
    ----------
    artists : dict
        ``md_full``/``md_zoom`` and ``overlay_full``/``overlay_zoom`` (images),
        ``contours`` (list, redrawn), ``zoom_box``, ``hist_kept``,
        ``hist_dropped``, ``cutoff``, ``mean``, ``title``, ``subtitle``,
        ``hist_title``, ``left_label``, ``right_label``.
    shown : dict
        What the last update drew: ``view``, ``slice_index``, ``slice_mm``,
        ``n_voxels_slice``, ``n_excluded_slice``.
    """

    def __init__(self, *, figure=None):
        fig = plain_figure(10.5, 3.7) if figure is None else figure
        super().__init__(fig)
        self.ax_full = fig.add_axes((0.01, 0.2, 0.29, 0.66))
        self.ax_zoom = fig.add_axes((0.33, 0.2, 0.22, 0.66))
        self.ax_hist = fig.add_axes((0.63, 0.2, 0.35, 0.63))
        cax = fig.add_axes((0.04, 0.13, 0.23, 0.025))
        a = self.artists
        for name, ax in (("full", self.ax_full), ("zoom", self.ax_zoom)):
            a[f"md_{name}"] = ax.imshow(np.zeros((2, 2), np.float32), origin="lower",
                                        cmap="gray", vmin=MD_DISPLAY_RANGE[0],
                                        vmax=MD_DISPLAY_RANGE[1], interpolation="nearest")
            a[f"overlay_{name}"] = ax.imshow(np.zeros((2, 2, 4), np.float32), origin="lower",
                                             interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("k")
        cb = fig.colorbar(a["md_full"], cax=cax, orientation="horizontal")
        cb.set_label(MD_LABEL, fontsize=8)
        cb.ax.tick_params(labelsize=7)
        a["left_label"], a["right_label"] = _orientation_labels(self.ax_full)
        a["zoom_box"] = self.ax_full.plot([], [], color="w", lw=0.8, ls=":")[0]
        zeros = np.zeros(len(_EDGES) - 1)
        h = self.ax_hist
        a["hist_kept"] = h.stairs(zeros, _EDGES, fill=True, color=KEPT_COLOR, alpha=0.8,
                                  label="kept")
        a["hist_dropped"] = h.stairs(zeros, _EDGES, fill=True, color=DROPPED_COLOR,
                                     alpha=0.8, label="dropped (CSF guard)")
        a["cutoff"] = h.axvline(1.1, color="k", ls="--", lw=1.2, label="CSF cut-off")
        a["mean"] = h.axvline(0.8, color=MEAN_COLOR, lw=1.5,
                              label="weighted mean of kept (md_wmean)")
        h.set_xlabel(MD_LABEL + " of the region's voxels", fontsize=9)
        h.set_ylabel("voxels", fontsize=9)
        h.set_xlim(_EDGES[0], _EDGES[-1])
        h.tick_params(labelsize=8)
        h.legend(fontsize=7, loc="upper right", frameon=False)
        a["title"] = fig.text(0.01, 0.965, "", fontsize=10, va="top", weight="bold")
        a["subtitle"] = fig.text(0.01, 0.90, "", fontsize=8.5, va="top")
        a["hist_title"] = h.set_title("", fontsize=9)
        a["contours"] = []
        self.shown = {}

    def update(self, session: dict, region: str, status: pd.DataFrame, summary: pd.Series, *,
               view: str = "coronal", csf_md_threshold=None, label: str = ""):
        """Draw one region of one session for given thresholds.

        Parameters
        ----------
        session : dict
            From :func:`region_session`.
        region : str
            The region.
        status : pandas.DataFrame
            :func:`ketamine_nb.roi.classify_voxels` of ``session["voxels"]``.
        summary : pandas.Series
            The region's row of :func:`ketamine_nb.roi.summarise_regions`
            for the same thresholds (``md_wmean``, ``md_median`` in mm²/s,
            ``n_voxels``, ``n_excluded``).
        view : {"coronal", "axial", "sagittal"}, default="coronal"
            Slice orientation (through the region's centre).
        csf_md_threshold : float or None
            The CSF cut-off drawn on the histogram (mm²/s; None: off).
        label : str
            Names the session in the title.

        Returns
        -------
        RegionFigure
            ``self``.
        """
        if view not in VIEWS:
            raise InputError(f"view must be one of {', '.join(VIEWS)}, not {view!r}")
        sel = (session["voxels"]["region"].astype(str) == region).to_numpy()
        if not sel.any():
            raise InputError(f"{label}: region {region!r} has no voxels")
        ijk, v = session["ras"][sel], session["voxels"][sel]
        st = status[sel]
        axis, shape = VIEWS[view], session["shape"]
        index = int(region_centre(ijk, v["probability"])[axis])
        layers = slice_layers(ijk, shape, axis=axis, index=index, inside=st["inside"],
                              kept=st["kept"], dropped=st["dropped"])
        h, vv = plane_axes(axis)
        extent = (-0.5, shape[h] - 0.5, -0.5, shape[vv] - 0.5)
        self._images(slice2d(session["md"], axis, index),
                     overlay_rgba(layers["kept"], layers["dropped"]), extent)
        self._zoom(zoom_window(ijk, axis))
        self._outline(layers["inside"], extent)
        _set_orientation(self.artists, axis)
        self._histogram(v["md"].to_numpy() * MD_SCALE, st, csf_md_threshold, summary)
        mm = slice_mm(session["affine"], shape, axis, index)
        self.artists["title"].set_text(f"{label} · {region} · {view} slice "
                                       f"{'xyz'[axis]} = {mm:.0f} mm")
        self.artists["subtitle"].set_text(
            f"kept {int(summary['n_voxels'])} voxels (green), dropped "
            f"{int(summary['n_excluded'])} by the guards (purple); in this slice "
            f"{int(layers['kept'].sum())} / {int(layers['dropped'].sum())}")
        self.shown = {"view": view, "slice_index": index, "slice_mm": mm,
                      "n_voxels_slice": int(layers["kept"].sum()),
                      "n_excluded_slice": int(layers["dropped"].sum())}
        return self

    def _images(self, md_slice, rgba, extent):
        for name in ("full", "zoom"):
            for layer, data in (("md", md_slice), ("overlay", rgba)):
                im = self.artists[f"{layer}_{name}"]
                im.set_data(data)
                im.set_extent(extent)
        self.ax_full.set_xlim(extent[:2])
        self.ax_full.set_ylim(extent[2:])

    def _zoom(self, window):
        (x0, x1), (y0, y1) = window
        self.ax_zoom.set_xlim(x0, x1)
        self.ax_zoom.set_ylim(y0, y1)
        self.artists["zoom_box"].set_data([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0])

    def _outline(self, inside, extent):
        for cs in self.artists["contours"]:
            cs.remove()
        self.artists["contours"].clear()
        if inside.any():
            for ax in (self.ax_full, self.ax_zoom):
                self.artists["contours"].append(ax.contour(
                    upsample(inside), levels=[0.5], colors=OUTLINE_COLOR, linewidths=1.0,
                    origin="lower", extent=extent))

    def _histogram(self, md, status, csf_md_threshold, summary):
        inside = status["inside"].to_numpy()
        md_in = np.clip(md[inside], _EDGES[0], _EDGES[-1] - 1e-9)
        keep = status["kept"].to_numpy()[inside]
        hk, _ = np.histogram(md_in[keep], _EDGES)
        hd, _ = np.histogram(md_in[~keep], _EDGES)
        self.artists["hist_kept"].set_data(hk, _EDGES)
        self.artists["hist_dropped"].set_data(hd, _EDGES)
        self.ax_hist.set_ylim(0, max(hk.max(initial=0), hd.max(initial=0), 1) * 1.15)
        cut, mean = self.artists["cutoff"], self.artists["mean"]
        cut.set_visible(csf_md_threshold is not None)
        if csf_md_threshold is not None:
            cut.set_xdata([csf_md_threshold * MD_SCALE] * 2)
        wmean = float(summary["md_wmean"])
        mean.set_visible(bool(np.isfinite(wmean)))
        if np.isfinite(wmean):
            mean.set_xdata([wmean * MD_SCALE] * 2)
        cut_text = "off" if csf_md_threshold is None else f"{csf_md_threshold * MD_SCALE:.2f}"
        self.artists["hist_title"].set_text(
            f"weighted mean {wmean * MD_SCALE:.3f}, median {summary['md_median'] * MD_SCALE:.3f}"
            f" (10⁻³ mm²/s); cut-off {cut_text}")


def plot_region_voxels(md_img, voxels: pd.DataFrame, region: str, *,
                       probability_threshold=None, csf_md_threshold="default",
                       fa_threshold=None, view: str = "coronal", label: str = ""):
    """Show which voxels of a region the pipeline keeps, on one session's MD map.

    Parameters
    ----------
    md_img : nibabel.Nifti1Image
        The session's MD map (mm²/s).
    voxels : pandas.DataFrame
        Its per-voxel region table (``Results.session_voxels(pid, ses)``).
    region : str
        The region.
    probability_threshold : float, optional
        Atlas probability threshold; default the pipeline's.
    csf_md_threshold : float, None or "default", default="default"
        CSF guard (mm²/s); ``None`` switches it off; ``"default"`` is
        :data:`ketamine_nb.roi.DEFAULT_CSF_MD_THRESHOLD`.
    fa_threshold : float, optional
        FA guard (off by default, as in the pipeline).
    view : {"coronal", "axial", "sagittal"}, default="coronal"
        Slice orientation.
    label : str
        Names the session in the title.

    Returns
    -------
    matplotlib.figure.Figure
        The MD slice through the region's centre with kept voxels in green
        and dropped in purple, the region's outline, a zoom and the
        histogram of the region's voxel MD with the cut-off and the
        probability-weighted mean (the pipeline's ``md_wmean``).
    """
    import matplotlib.pyplot as plt

    from ..regions import DEFAULT_PROBABILITY_THRESHOLD
    from ..roi import DEFAULT_CSF_MD_THRESHOLD, classify_voxels, summarise_regions

    p = DEFAULT_PROBABILITY_THRESHOLD if probability_threshold is None else probability_threshold
    c = DEFAULT_CSF_MD_THRESHOLD if csf_md_threshold == "default" else csf_md_threshold
    kw = {"probability_threshold": p, "csf_md_threshold": c, "fa_threshold": fa_threshold}
    session = region_session(md_img, voxels)
    summary = summarise_regions(session["voxels"], **kw)
    row = summary[summary["region"].astype(str) == region]
    if row.empty:
        raise InputError(f"region {region!r} is not in the voxel table")
    handle = RegionFigure(figure=plt.figure(figsize=(10.5, 3.7)))
    handle.update(session, region, classify_voxels(session["voxels"], **kw), row.iloc[0],
                  view=view, csf_md_threshold=c, label=label)
    return handle.figure


def display_scale(kind: str, data):
    """Scale, colour range (display units) and colour-bar label of a map kind."""
    if kind in ("md", "md_mni"):
        return MD_SCALE, MD_DISPLAY_RANGE, MD_LABEL
    if kind == "fa":
        return 1.0, (0.0, 1.0), "FA (unitless, 0-1)"
    if kind == "mask":
        return 1.0, (0.0, 1.0), "brain mask"
    finite = data[np.isfinite(data)]
    nz = finite[finite != 0]
    lo, hi = (np.percentile(nz, [1, 99]) if nz.size else (0.0, 1.0))
    return 1.0, (float(min(lo, 0.0)), float(hi if hi > lo else lo + 1)), (
        "signal (a.u.)" if kind == "dwi" else "value")


class SliceFigure(FigureHandle):
    """One slice of a 3D/4D map with an optional overlay, a colour bar and its position.

    Attributes
    ----------
    artists : dict
        ``image``, ``overlay``, ``title``, ``left_label``, ``right_label``.
    shown : dict
        What the last update drew: ``view``, ``slice_index``, ``slice_mm``,
        ``volume``, ``slice_mean`` (of the nonzero pixels, image units) and
        ``n_overlay_voxels``.
    """

    def __init__(self, *, figure=None):
        fig = plain_figure(6.0, 5.2) if figure is None else figure
        super().__init__(fig)
        self.ax = ax = fig.add_axes((0.04, 0.13, 0.92, 0.78))
        cax = fig.add_axes((0.2, 0.07, 0.6, 0.025))
        a = self.artists
        a["image"] = ax.imshow(np.zeros((2, 2), np.float32), origin="lower", cmap="gray",
                               interpolation="nearest")
        a["overlay"] = ax.imshow(np.ma.masked_all((2, 2)), origin="lower", cmap="autumn",
                                 vmin=0, vmax=1, interpolation="nearest")
        a["title"] = ax.set_title("", fontsize=9)
        a["left_label"], a["right_label"] = _orientation_labels(ax)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_facecolor("k")
        self.colorbar = fig.colorbar(a["image"], cax=cax, orientation="horizontal")
        self.colorbar.ax.tick_params(labelsize=7)
        self.shown = {}

    def update(self, data, affine, *, kind: str = "image", view: str = "axial",
               slice_index=None, volume: int = 0, overlay=None, overlay_range=(0.0, 1.0),
               overlay_threshold: float = 0.0, opacity: float = 0.6, label: str = ""):
        """Draw one slice.

        Parameters
        ----------
        data : numpy.ndarray
            3D or 4D RAS+ array (:func:`canonical`), in the image's units.
        affine : numpy.ndarray
            Its affine.
        kind : str, default="image"
            ``md`` (shown in 10⁻³ mm²/s), ``fa``, ``mask`` or anything else
            (1st-99th percentile).
        view : {"axial", "coronal", "sagittal"}, default="axial"
            Slice orientation.
        slice_index : int, optional
            Slice along the view's axis (RAS+ index); default the middle.
        volume : int, default=0
            Volume of a 4D array.
        overlay : numpy.ndarray, optional
            3D RAS+ array on the same grid, drawn where above ``overlay_threshold``.
        overlay_range : tuple of float, default=(0, 1)
            Colour range of the overlay.
        overlay_threshold : float, default=0.0
            Overlay voxels above this are drawn.
        opacity : float, default=0.6
            Overlay opacity.
        label : str
            Names the image in the title.

        Returns
        -------
        SliceFigure
            ``self``.
        """
        axis = VIEWS[view]
        d3 = data[..., min(int(volume), data.shape[3] - 1)] if data.ndim == 4 else data
        index = d3.shape[axis] // 2 if slice_index is None else int(
            np.clip(slice_index, 0, d3.shape[axis] - 1))
        scale, (lo, hi), unit = display_scale(kind, d3)
        sl = slice2d(d3, axis, index)
        h, v = plane_axes(axis)
        extent = (-0.5, d3.shape[h] - 0.5, -0.5, d3.shape[v] - 0.5)
        im = self.artists["image"]
        im.set_data(sl * scale)
        im.set_clim(lo, hi)
        im.set_extent(extent)
        self.colorbar.set_label(unit, fontsize=8)
        n_ov = self._overlay(overlay, axis, index, sl.shape, extent, overlay_range,
                             overlay_threshold, opacity)
        self.ax.set_xlim(extent[:2])
        self.ax.set_ylim(extent[2:])
        _set_orientation(self.artists, axis)
        mm = slice_mm(affine, d3.shape, axis, index)
        extra = f", volume {int(volume)}" if data.ndim == 4 else ""
        self.artists["title"].set_text(f"{label}: {view} slice {index} "
                                       f"({'xyz'[axis]} = {mm:.0f} mm){extra}")
        nz = sl[np.isfinite(sl) & (sl != 0)]
        self.shown = {"view": view, "slice_index": index, "slice_mm": mm,
                      "volume": int(volume) if data.ndim == 4 else 0,
                      "slice_mean": float(nz.mean()) if nz.size else np.nan,
                      "n_overlay_voxels": n_ov}
        return self

    def _overlay(self, overlay, axis, index, shape, extent, clim, threshold, opacity):
        art = self.artists["overlay"]
        art.set_extent(extent)
        if overlay is None:
            art.set_data(np.ma.masked_all(shape))
            return 0
        osl = slice2d(overlay, axis, index)
        on = osl > threshold
        art.set_data(np.ma.masked_where(~on, osl))
        art.set_clim(*clim)
        art.set_alpha(float(opacity))
        return int(on.sum())


def plot_slice(img, *, view: str = "axial", slice_index=None, volume: int = 0,
               overlay=None, overlay_threshold: float = 0.0, kind: str = "image",
               label: str = ""):
    """Show one slice of a map (RAS+), optionally with an overlay on the same grid.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3D or 4D map.
    view : {"axial", "coronal", "sagittal"}, default="axial"
        Slice orientation.
    slice_index : int, optional
        RAS+ slice index; default the middle.
    volume : int, default=0
        Volume of a 4D image.
    overlay : nibabel.Nifti1Image, optional
        3D map on the same grid, drawn where above ``overlay_threshold``.
    overlay_threshold : float, default=0.0
        Overlay voxels above this are drawn.
    kind : str, default="image"
        ``md`` (shown in 10⁻³ mm²/s), ``fa``, ``mask`` or ``image``.
    label : str
        Title prefix.

    Returns
    -------
    matplotlib.figure.Figure
        The slice with a colour bar in the map's units.
    """
    import matplotlib.pyplot as plt

    if view not in VIEWS:
        raise InputError(f"view must be one of {', '.join(VIEWS)}, not {view!r}")
    data, affine, _ = canonical(img)
    ov = None
    if overlay is not None:
        ov = canonical(overlay)[0]
        ov = ov[..., 0] if ov.ndim == 4 else ov
        if ov.shape != data.shape[:3]:
            raise InputError(f"the overlay's grid {ov.shape} is not the image's "
                             f"{data.shape[:3]}; resample it first")
    handle = SliceFigure(figure=plt.figure(figsize=(6.0, 5.2)))
    return handle.update(data, affine, kind=kind, view=view, slice_index=slice_index,
                         volume=volume, overlay=ov, overlay_threshold=overlay_threshold,
                         overlay_range=(overlay_threshold, float(np.nanmax(ov)) if ov is not None
                                        and np.nanmax(ov) > overlay_threshold
                                        else overlay_threshold + 1e-6),
                         label=label or "image").figure
