"""The ROI explorer: how the atlas threshold and the CSF guard shape one region's MD."""

from __future__ import annotations

from collections import OrderedDict

import ipywidgets as widgets
import numpy as np

from ..exceptions import InputError
from ..plotting import MD_SCALE
from ..plotting.slices import VIEWS, RegionFigure, region_session
from ._base import Explorer, RegionState
from ._controls import (
    SESSION_CACHE_SIZE,
    dropdown,
    fmt,
    html_table,
    note,
    offer_sessions,
    sessions_of,
    slider,
    subject_options,
)

__all__ = ["CSF_CHOICES", "RoiExplorer", "roi_explorer"]

#: Values of the CSF cut-off slider in mm²/s (shown in 10⁻³ mm²/s): 0.80 to
#: 3.00 in steps of 0.05, then ``inf`` ("off": no voxel is dropped; ``None``
#: inside the package).
CSF_CHOICES = tuple((f"{k / 100:.2f}", k / 1e5) for k in range(80, 301, 5)) + (
    ("off", float("inf")),)


def _md_text(value) -> str:
    return fmt(value * MD_SCALE, ".4f")


def _csf_text(value) -> str:
    return "off" if value is None or not np.isfinite(value) else f"{value * MD_SCALE:.2f}"


class SessionCache:
    """MD maps and voxel tables of the sessions shown last (``region_session``)."""

    def __init__(self, results, size: int = SESSION_CACHE_SIZE):
        self.results, self.size = results, size
        self._items: OrderedDict = OrderedDict()

    def get(self, pid: str, ses: str) -> dict:
        """One session, read on first use."""
        key = (pid, ses)
        if key not in self._items:
            self._items[key] = region_session(self.results.image(pid, ses, "md"),
                                              self.results.session_voxels(pid, ses))
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        return self._items[key]


class RoiExplorer(Explorer):
    """See :func:`roi_explorer`."""

    def __init__(self, results, *, region=None, participant_id=None, session=None,
                 view="coronal", region_state=None):
        from ..regions import DEFAULT_PROBABILITY_THRESHOLD
        from ..roi import DEFAULT_CSF_MD_THRESHOLD

        if view not in VIEWS:
            raise InputError(f"view must be one of {', '.join(VIEWS)}, not {view!r}")
        self.results = results
        subjects = subject_options(results)
        pid = participant_id or subjects[0][1]
        sessions = sessions_of(results, pid)
        if not sessions:
            raise InputError(f"{pid}: no processed session in {results.out_dir}")
        cfg = results.config or {}
        p_thr = float(cfg.get("probability_threshold") or DEFAULT_PROBABILITY_THRESHOLD)
        c_thr = cfg.get("csf_md_threshold", DEFAULT_CSF_MD_THRESHOLD)
        c_val = float("inf") if c_thr is None else min(
            (v for _, v in CSF_CHOICES), key=lambda v: abs(v - c_thr))
        self.fa_threshold = cfg.get("fa_threshold")
        regions = results.regions
        controls = {
            "region": dropdown("Region", regions, region or regions[0]),
            "view": dropdown("View", list(VIEWS), view),
            "subject": dropdown("Subject", subjects, pid),
            "session": dropdown("Session", sessions, session or sessions[0]),
            "probability_threshold": slider(
                widgets.FloatSlider, "Atlas probability ≥", value=p_thr, min=0.05, max=0.95,
                step=0.05, readout_format=".2f"),
            "csf_md_threshold": slider(widgets.SelectionSlider, "CSF cut-off (10⁻³ mm²/s)",
                                       options=CSF_CHOICES, value=c_val),
        }
        self.cache = SessionCache(results)
        super().__init__(controls, RegionFigure(), title="Region of interest: threshold "
                         "and CSF guard", name="roi", columns=2, region_state=region_state)

    def adjust(self, change):
        """Offer the sessions of the subject picked."""
        offer_sessions(self.results, self.controls, change)

    def draw(self, values):
        """Summarise and classify the cached voxels; update the figure."""
        import pandas as pd

        from ..roi import classify_voxels, summarise_regions

        pid, ses, reg = values["subject"], values["session"], values["region"]
        c_thr = values["csf_md_threshold"]
        kw = {"probability_threshold": float(values["probability_threshold"]),
              "csf_md_threshold": None if not np.isfinite(c_thr) else float(c_thr),
              "fa_threshold": self.fa_threshold}
        s = self.cache.get(pid, ses)
        summary = summarise_regions(s["voxels"], **kw)
        row = summary[summary["region"].astype(str) == reg]
        if row.empty:
            raise InputError(f"{pid} ses-{ses}: region {reg!r} has no voxels")
        row = row.iloc[0]
        self.handle.update(s, reg, classify_voxels(s["voxels"], **kw), row,
                           view=values["view"], csf_md_threshold=kw["csf_md_threshold"],
                           label=f"{pid} ses-{ses}")
        return pd.DataFrame([{
            "participant_id": pid, "session": ses, "region": reg,
            "probability_threshold": kw["probability_threshold"],
            "csf_md_threshold": np.nan if kw["csf_md_threshold"] is None
            else kw["csf_md_threshold"],
            "md_wmean": row["md_wmean"], "md_mean": row["md_mean"],
            "md_median": row["md_median"], "n_voxels": int(row["n_voxels"]),
            "n_excluded": int(row["n_excluded"]), **self.handle.shown}])

    def describe(self, table):
        """Show the summary row with units."""
        return html_table(table, {
            "subject": ("participant_id", str), "session": ("session", str),
            "region": ("region", str), "probability ≥": ("probability_threshold", ".2f"),
            "CSF cut-off": ("csf_md_threshold", _csf_text),
            "MD weighted mean": ("md_wmean", _md_text), "MD median": ("md_median", _md_text),
            "voxels kept": ("n_voxels", "d"), "dropped": ("n_excluded", "d")}) + note(
            "MD and cut-off in 10⁻³ mm²/s; kept: atlas probability ≥ threshold and MD ≤ "
            "cut-off; dropped: above the cut-off. The weighted mean (by atlas probability) "
            "is the pipeline's summary; the plain mean is in <code>w.table</code> (from "
            "<code>summarise_regions</code> on the cached voxel table)")


def roi_explorer(results, *, region: str | None = None, participant_id: str | None = None,
                 session: str | None = None, view: str = "coronal",
                 region_state: RegionState | None = None) -> RoiExplorer:
    """Explore how the atlas threshold and the CSF guard shape one region's MD.

    Shows one session's MD map on a slice through the region's centre: the
    voxels kept in green, those dropped by the CSF guard in purple, the
    region's outline (atlas probability at or above the threshold) in yellow,
    a zoom on the region, and the histogram of the region's voxel MD with the
    cut-off (figure: :class:`ketamine_nb.plotting.RegionFigure`). The table is
    :func:`ketamine_nb.roi.summarise_regions`'s row for this session, region
    and thresholds, plus the counts in the slice shown.

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
    region_state : RegionState, optional
        A region shared with other explorers.

    Returns
    -------
    RoiExplorer
        Controls ``region``, ``view``, ``subject``, ``session``,
        ``probability_threshold`` (fraction, 0.05-0.95) and
        ``csf_md_threshold`` (mm²/s, shown in 10⁻³ mm²/s: 0.8e-3 to 3.0e-3
        in steps of 0.05e-3, or ``inf`` for "off"). Its ``cache`` holds the
        sessions read so far. Table columns: ``participant_id``,
        ``session``, ``region``, the two thresholds (NaN: guard off),
        ``md_wmean``, ``md_mean``, ``md_median`` (mm²/s), ``n_voxels``,
        ``n_excluded``, and for the slice shown ``view``, ``slice_index``,
        ``slice_mm``, ``n_voxels_slice``, ``n_excluded_slice``.

    Notes
    -----
    The MD map and voxel table of a session are read once and kept (the
    last eight sessions); moving a threshold only filters the cached table,
    exactly as ``ketamine-nb run`` does: no tensor is refitted and no DWI
    is read.
    """
    return RoiExplorer(results, region=region, participant_id=participant_id,
                       session=session, view=view, region_state=region_state)
