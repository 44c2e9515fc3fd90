"""One object with everything ``run``/``stats``/``demo`` wrote: what a notebook starts from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .exceptions import InputError

__all__ = ["Results", "demo_results", "load_results"]


def _read(path: Path):
    if not path.is_file():
        return None
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


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
        The pipeline's processing choices.
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
    _voxels: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def regions(self) -> list:
        """Region names, in table order."""
        return list(pd.unique(self.roi_md["region"]))

    @property
    def sessions(self) -> pd.DataFrame:
        """Done sessions: ``participant_id``, ``session``."""
        return self.roi_md[["participant_id", "session"]].drop_duplicates().reset_index(
            drop=True)

    @property
    def voxels(self) -> pd.DataFrame:
        """The cohort's per-voxel region table (loaded on first use, then kept)."""
        if self._voxels is None:
            from .robustness import load_cohort_voxels

            self._voxels = load_cohort_voxels(self.out_dir, self.sessions)
        return self._voxels

    def session_voxels(self, participant_id: str, session: str) -> pd.DataFrame:
        """One session's per-voxel table, with voxel indices (``i``, ``j``, ``k``)."""
        from .pipeline import load_region_voxels

        return load_region_voxels(self.out_dir, participant_id, session)

    def paths(self, participant_id: str, session: str) -> dict:
        """Paths of one session's derivatives (and its raw DWI when known)."""
        from .pipeline import session_paths

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


def load_results(out_dir) -> Results:
    """Load what ``ketamine-nb run``/``stats``/``demo`` wrote into ``out_dir``.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Derivatives folder (for the demo: ``<data home>/demo/derivatives``).

    Returns
    -------
    Results
        Tables, paths and (for the simulated cohort) the ground truth.
    """
    out = Path(out_dir).expanduser()
    roi_md = _read(out / "roi_md.tsv")
    roi_deltas = _read(out / "roi_deltas.tsv")
    if roi_md is None or roi_deltas is None:
        raise InputError(f"{out}: no roi_md.tsv/roi_deltas.tsv; run 'ketamine-nb run "
                         f"BIDS_DIR {out}' (or 'ketamine-nb demo') first")
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
    config = {}
    if (out / "pipeline_config.json").is_file():
        config = json.loads((out / "pipeline_config.json").read_text())
    truth = None
    if bids is not None:
        truth = _read(bids / "derivatives" / "simulation" / "ground_truth_roi.tsv")
    return Results(out_dir=out, bids_dir=bids, roi_md=roi_md, roi_deltas=roi_deltas,
                   participants=_read(out / "participants.tsv"), scores=_read(out / "scores.tsv"),
                   stats_roi=_read(out / "stats_roi.tsv"),
                   stats_input=_read(out / "stats_input.tsv"),
                   reliability=_read(out / "reliability.tsv"),
                   robustness=_read(out / "robustness.tsv"), config=config,
                   ground_truth=truth)


def _add_robustness_grid(deriv: Path) -> None:
    """Add ``robustness.tsv`` to a demo prepared without it (by an earlier ketamine-nb).

    Only the grid is computed: the other statistics, possibly made with the
    user's own settings, are left as they are. A demo that cannot be written
    (shared read-only) stays without the grid, with a warning.
    """
    import warnings

    from ._utils import write_tsv
    from .robustness import load_cohort_voxels, robustness_grid

    scores = pd.read_csv(deriv / "scores.tsv", sep="\t", na_values="n/a",
                         keep_default_na=False)
    pp = deriv / "participants.tsv"
    participants = pd.read_csv(pp, sep="\t", na_values="n/a", keep_default_na=False) \
        if pp.is_file() else None
    grid = robustness_grid(load_cohort_voxels(deriv), scores, participants=participants)
    try:
        write_tsv(grid, deriv / "robustness.tsv")
    except OSError as exc:
        warnings.warn(f"{deriv}: cannot write robustness.tsv ({exc}); notebook 06's "
                      "robustness part needs it: run 'ketamine-nb demo' where you can write",
                      stacklevel=3)


def demo_results(data_dir=None, *, prepare: bool = True, n_subjects: int = 98,
                 workers: int = 2) -> Results:
    """Load the demo's results, preparing the demo first when it is missing.

    The notebooks start here. The demo lives in the data home
    (``data_dir``, else ``KETAMINE_NB_DATA``, else ``~/ketamine_nb_data``);
    when it is missing it is simulated and processed with progress bars
    (about two minutes on 2 cores; Binder's postBuild does it at build time).

    Parameters
    ----------
    data_dir : str or pathlib.Path, optional
        Data home.
    prepare : bool, default=True
        Build the demo when missing; with False a missing demo is an error.
    n_subjects : int, default=98
        Cohort size when building.
    workers : int, default=2
        Processes for the pipeline when building.

    Returns
    -------
    Results
        The demo's results.
    """
    from .datasets import get_demo_dir

    demo = get_demo_dir(data_dir)
    deriv = demo / "derivatives"
    if prepare and (deriv / "stats_roi.tsv").is_file() \
            and not (deriv / "robustness.tsv").is_file():
        _add_robustness_grid(deriv)
    if not (deriv / "stats_roi.tsv").is_file():
        if not prepare:
            raise InputError(f"{deriv}: the demo is not prepared; run 'ketamine-nb demo'")
        from .pipeline import run_pipeline
        from .simulate import SimulationParams, simulate_cohort
        from .stats import run_stats

        bids = demo / "bids"
        if not (bids / "dataset_description.json").is_file():
            simulate_cohort(bids, params=SimulationParams(n_subjects=n_subjects),
                            n_jobs=workers, overwrite=True)
        run_pipeline(bids, deriv, workers=workers)
        run_stats(deriv, robustness=True)
    return load_results(deriv)
