"""The slice viewer: browse the slices of a map, or of pipeline results, with an overlay."""

from __future__ import annotations

from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd

from ..exceptions import InputError
from ..plotting.slices import VIEWS, SliceFigure, region_centre
from ._base import Explorer, RegionState
from ._controls import (
    dropdown,
    html_table,
    offer_sessions,
    sessions_of,
    slider,
    subject_options,
)
from ._sources import ImageSource, ResultsSource

__all__ = ["SliceViewer", "slice_viewer"]


class SliceViewer(Explorer):
    """See :func:`slice_viewer`."""

    def __init__(self, img_or_results, *, overlay=None, participant_id=None, session=None,
                 kind=None, region=None, view="axial", overlay_threshold=0.0,
                 region_state=None):
        from ..results import Results

        if view not in VIEWS:
            raise InputError(f"view must be one of {', '.join(VIEWS)}, not {view!r}")
        self.is_results = isinstance(img_or_results, Results)
        self.overlay_threshold = overlay_threshold
        controls = {}
        if self.is_results:
            res = self.results = img_or_results
            subjects = subject_options(res)
            pid = participant_id or subjects[0][1]
            sessions = sessions_of(res, pid)
            kinds = ["md", "fa", "mask"]
            p = res.paths(pid, sessions[0])
            if p.get("md_mni") and Path(p["md_mni"]).exists():
                kinds.append("md_mni")
            if res.bids_dir is not None:
                kinds.append("dwi")
            kind = kind or "md"
            if kind not in kinds:
                raise InputError(f"kind must be one of {', '.join(kinds)}, not {kind!r}")
            controls["subject"] = dropdown("Subject", subjects, pid)
            controls["session"] = dropdown("Session", sessions, session or sessions[0])
            controls["kind"] = dropdown("Map", kinds, kind)
            controls["region"] = dropdown("Region overlay", ["none", *res.regions],
                                          region or "none")
            self.source = ResultsSource(res)
        else:
            self.source = ImageSource(img_or_results, overlay, kind)
        first = self.source.image({k: c.value for k, c in controls.items()})[1]
        n = first.shape[VIEWS[view]]
        n_vol = first.shape[3] if first.ndim == 4 else 1
        controls["view"] = dropdown("View", list(VIEWS), view)
        controls["slice"] = slider(widgets.IntSlider, "Slice", value=n // 2, min=0, max=n - 1)
        controls["volume"] = slider(widgets.IntSlider, "Volume", value=0, min=0,
                                    max=max(n_vol - 1, 0), disabled=n_vol == 1)
        start = self.region_slice({k: c.value for k, c in controls.items()}, first)
        if start is not None:
            controls["slice"].value = start
        if self.is_results or overlay is not None:
            controls["opacity"] = slider(widgets.FloatSlider, "Overlay opacity", value=0.6,
                                         min=0.0, max=1.0, step=0.05)
        super().__init__(controls, SliceFigure(), title="Slice viewer", name="slices",
                         region_state=region_state if self.is_results else None)

    def region_slice(self, values, data):
        """Index of the overlaid region's centre along the view's axis (None without)."""
        if not self.is_results or values["region"] == "none":
            return None
        ov = self.source.region_overlay(values, data.shape)
        if ov is None or not ov.any():
            return None
        return int(region_centre(np.argwhere(ov > 0), ov[ov > 0])[VIEWS[values["view"]]])

    def adjust(self, change):
        """Keep the slice and volume sliders in range; follow the region's centre."""
        c = self.controls
        if self.is_results:
            offer_sessions(self.results, c, change)
        values = self.values
        data = self.source.image(values)[1]
        n = data.shape[VIEWS[values["view"]]]
        c["slice"].max = n - 1
        nv = data.shape[3] if data.ndim == 4 else 1
        c["volume"].max = max(nv - 1, 0)
        c["volume"].disabled = nv == 1
        follow = [c["view"], *(c[k] for k in ("region", "subject", "session") if k in c)]
        if any(change["owner"] is f for f in follow):
            centre = self.region_slice(values, data)
            if centre is not None:
                c["slice"].value = centre
            elif change["owner"] is c["view"]:
                c["slice"].value = n // 2

    def draw(self, values):
        """Update the slice and the overlay; return one row describing them."""
        label, data, affine, kind = self.source.image(values)
        ov = self.source.region_overlay(values, data.shape)
        thr = self.overlay_threshold
        clim = (0.0, 1.0) if self.is_results else (
            thr, max(float(ov.max()), thr + 1e-6) if ov is not None else thr + 1)
        if self.is_results and values["region"] != "none":
            label += (f"; {values['region']} not on this grid" if ov is None else
                      f"; {values['region']} by atlas probability")
        self.handle.update(data, affine, kind=kind, view=values["view"],
                           slice_index=values["slice"], volume=values["volume"], overlay=ov,
                           overlay_range=clim, overlay_threshold=thr,
                           opacity=values.get("opacity", 0.6), label=label)
        return pd.DataFrame([{"image": label.split(";")[0], **self.handle.shown}])

    def describe(self, table):
        """Show the slice's position and content."""
        return html_table(table, {
            "image": ("image", str), "view": ("view", str), "slice": ("slice_index", "d"),
            "position (mm)": ("slice_mm", ".0f"), "volume": ("volume", "d"),
            "mean of nonzero (image units)": ("slice_mean", ".4g"),
            "overlay voxels in slice": ("n_overlay_voxels", "d")})


def slice_viewer(img_or_results, *, overlay=None, participant_id: str | None = None,
                 session: str | None = None, kind: str | None = None, region: str | None = None,
                 view: str = "axial", overlay_threshold: float = 0.0,
                 region_state: RegionState | None = None) -> SliceViewer:
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
    region_state : RegionState, optional
        With results: a region shared with other explorers.

    Returns
    -------
    SliceViewer
        Controls ``view``, ``slice`` (index in RAS+ order, starting at the
        middle; with a region overlay, at the region's centre, which the
        slice follows when the view, region, subject or session changes),
        ``volume`` (4D images), ``opacity`` (with an overlay), and
        with results ``subject``, ``session``, ``kind``, ``region``. The table
        has one row: the image, ``view``, ``slice_index``, ``slice_mm``,
        ``volume``, the mean of the slice's nonzero values (the image's units)
        and ``n_overlay_voxels`` in the slice (figure:
        :class:`ketamine_nb.plotting.SliceFigure`).
    """
    return SliceViewer(img_or_results, overlay=overlay, participant_id=participant_id,
                       session=session, kind=kind, region=region, view=view,
                       overlay_threshold=overlay_threshold, region_state=region_state)
