"""One object with everything ``run``/``stats``/``demo`` wrote: what a notebook starts from.

A pure reader: it computes nothing and writes nothing. The file names come
from :mod:`ketamine_nb.derivatives`; the demo is built by
:func:`ketamine_nb.workflows.demo_results`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .derivatives import (
    TABLES,
    find_derivatives,
    load_cohort_voxels,
    load_region_voxels,
    read_session_qc,
    read_tsv,
    session_paths,
)
from .exceptions import InputError

__all__ = ["Results", "load_results"]


def _read(path: Path):
    return read_tsv(path, missing_ok=True)


@dataclass
class Results:
    """Tables and paths of a pipeline output folder.

    Attributes
    ----------
    out_dir : pathlib.Path
        The derivatives folder.
    bids_dir : pathlib.Path or None
        The raw dataset it came from (from ``dataset_description.json``).
    roi_md, roi_deltas : pandas.DataFrame
        Regional MD per session and pre/post deltas (mm²/s).
    participants, scores : pandas.DataFrame
        Participants (arm, age, sex) and scores (one row per participant).
    stats_roi, stats_input, reliability, robustness : pandas.DataFrame or None
        Written by ``ketamine-nb stats`` (None when not run).
    config : dict
        The pipeline's processing choices (``pipeline_config.json``).
    stats_config : dict
        The statistics' choices (``stats_config.json``; empty when
        ``ketamine-nb stats`` has not run).
    ground_truth : pandas.DataFrame or None
        The simulated cohort's planted truth, when the raw dataset has one.
    """

    out_dir: Path
    bids_dir: Path | None
    roi_md: pd.DataFrame
    roi_deltas: pd.DataFrame
    participants: pd.DataFrame | None
    scores: pd.DataFrame | None
    stats_roi: pd.DataFrame | None = None
    stats_input: pd.DataFrame | None = None
    reliability: pd.DataFrame | None = None
    robustness: pd.DataFrame | None = None
    config: dict = field(default_factory=dict)
    ground_truth: pd.DataFrame | None = None
    stats_config: dict = field(default_factory=dict)
    _voxels: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def regions(self) -> list:
        """Region names, in table order, without the whole-brain grey-matter reference.

        The reference (:data:`ketamine_nb.regions.GLOBAL_GM`) is a covariate, not a
        region to pick: its rows stay in :attr:`roi_md` and :attr:`roi_deltas`.
        """
        from .regions import GLOBAL_GM

        return [r for r in pd.unique(self.roi_md["region"]) if r != GLOBAL_GM]

    @property
    def sessions(self) -> pd.DataFrame:
        """Done sessions: ``participant_id``, ``session``."""
        return self.roi_md[["participant_id", "session"]].drop_duplicates().reset_index(
            drop=True)

    @property
    def voxels(self) -> pd.DataFrame:
        """The cohort's per-voxel region table (loaded on first use, then kept)."""
        if self._voxels is None:
            self._voxels = load_cohort_voxels(self.out_dir, self.sessions)
        return self._voxels

    def qc_table(self) -> pd.DataFrame:
        """Return the QC metrics of every done session, one row each.

        See :func:`ketamine_nb.derivatives.read_session_qc` for the columns
        (SNR, mask volume, outlier volumes and slices, framewise displacement
        in mm, QC flags).
        """
        return read_session_qc(self.out_dir, self.sessions)

    def session_voxels(self, participant_id: str, session: str) -> pd.DataFrame:
        """One session's per-voxel table, with voxel indices (``i``, ``j``, ``k``)."""
        return load_region_voxels(self.out_dir, participant_id, session)

    def paths(self, participant_id: str, session: str) -> dict:
        """Paths of one session's derivatives (and its raw DWI when known)."""
        p = session_paths(self.out_dir, participant_id, session)
        if self.bids_dir is not None:
            d = self.bids_dir / participant_id / f"ses-{session}" / "dwi"
            found = sorted(d.glob(f"{participant_id}_ses-{session}*_dwi.nii*"))
            p["dwi"] = found[0] if found else None
        return p

    def image(self, participant_id: str, session: str, kind: str = "md"):
        """Load one derivative image (``md``, ``fa``, ``mask``, ``md_mni``) or ``dwi``."""
        import nibabel as nib

        p = self.paths(participant_id, session).get(kind)
        if p is None or not Path(p).exists():
            raise InputError(f"{participant_id} ses-{session}: no {kind!r} image in "
                             f"{self.out_dir}; rerun 'ketamine-nb run'")
        return nib.load(p)

    def transform(self, participant_id: str, session: str):
        """Return the session's 4x4 MNI-to-native matrix."""
        from .registration import read_transform

        return read_transform(self.paths(participant_id, session)["xfm"])

    def true_motion(self, participant_id: str, session: str) -> pd.DataFrame:
        """Return the simulator's per-volume truth of one session (simulated cohorts only).

        Returns
        -------
        pandas.DataFrame
            One row per volume, as written to
            ``derivatives/simulation/<sub>_ses-<session>_motion.tsv``: rotation
            (degrees) and translation (mm) of the head from its session
            position, ``framewise_displacement_mm`` (mm), the eddy-current
            terms and the signal drift.

        Raises
        ------
        InputError
            When the raw dataset is not a simulated cohort (no truth).
        """
        path = None if self.bids_dir is None else (
            self.bids_dir / "derivatives" / "simulation"
            / f"{participant_id}_ses-{session}_motion.tsv")
        if path is None or not path.exists():
            raise InputError(f"{participant_id} ses-{session}: no simulated motion "
                             f"({path or 'the raw dataset is unknown'}); only a cohort made "
                             "by 'ketamine-nb simulate' knows its true motion")
        return _read(path)


def load_results(out_dir) -> Results:
    """Load what ``ketamine-nb run``/``stats``/``demo`` wrote.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        The derivatives folder, or the folder the demo was made in
        (``ketamine-nb demo --out DIR``; for the data home's demo:
        ``<data home>/demo``), or any folder with exactly one derivatives
        folder below it.

    Returns
    -------
    Results
        Tables, paths and (for the simulated cohort) the ground truth.
    """
    out = find_derivatives(out_dir)
    roi_md = read_tsv(out / TABLES["roi_md"])
    roi_deltas = read_tsv(out / TABLES["roi_deltas"])
    bids = None
    desc = out / "dataset_description.json"
    if desc.is_file():
        try:
            src = json.loads(desc.read_text()).get("SourceDatasets", [])
            if src and src[0].get("URL", "").startswith("file://"):
                from urllib.parse import unquote, urlparse

                bids = Path(unquote(urlparse(src[0]["URL"]).path))
        except (ValueError, KeyError, AttributeError):
            bids = None
    config, stats_config = (json.loads(p.read_text()) if p.is_file() else {}
                            for p in (out / "pipeline_config.json", out / "stats_config.json"))
    truth = None
    if bids is not None:
        truth = _read(bids / "derivatives" / "simulation" / "ground_truth_roi.tsv")
    return Results(out_dir=out, bids_dir=bids, roi_md=roi_md, roi_deltas=roi_deltas,
                   participants=_read(out / TABLES["participants"]),
                   scores=_read(out / TABLES["scores"]),
                   stats_roi=_read(out / TABLES["stats_roi"]),
                   stats_input=_read(out / TABLES["stats_input"]),
                   reliability=_read(out / TABLES["reliability"]),
                   robustness=_read(out / TABLES["robustness"]), config=config,
                   ground_truth=truth, stats_config=stats_config)
