"""The derivatives layout: where the pipeline writes, and how to read it back.

This module is the one place that knows the file names of a ketamine-nb
derivatives folder (BIDS-Derivatives, as pyAFQ and QSIPrep name theirs) and
reads its tables. Everything else (the pipeline that writes, the results
object, the statistics, the robustness grid, the voxelwise maps, the
notebooks) asks here.

Layout of ``OUT_DIR``::

    dataset_description.json        BIDS-Derivatives description (source dataset URL)
    pipeline_config.json            the processing choices
    participants.tsv, scores.tsv    copied from the raw dataset
    roi_md.tsv                      one row per participant x session x region
    roi_deltas.tsv                  one row per participant x region (Δ = post − pre)
    failures.tsv                    sessions or participants that could not be used
    stats_roi.tsv, stats_input.tsv, reliability.tsv, robustness.tsv, stats_config.json
    voxelwise/                      voxelwise maps and tables
    sub-<id>/ses-<label>/dwi/       per-session images, transform, voxel table, QC

Tables are BIDS TSV: tab-separated, ``n/a`` for a missing value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ._utils import atomic_write_bytes, gzip_bytes
from .exceptions import InputError

__all__ = [
    "MNI_MAP_RESOLUTION",
    "TABLES",
    "TEMPLATE_SPACE",
    "find_derivatives",
    "load_cohort_voxels",
    "load_region_voxels",
    "participant_paths",
    "read_session_qc",
    "read_tsv",
    "session_paths",
    "write_region_voxels",
]

#: Template space of the registration (nilearn's MNI152 2009 template), as
#: written in file names (``space-``/``from-`` entities).
TEMPLATE_SPACE = "MNI152NLin2009aSym"

#: Voxel size (mm) of the MD maps resampled to the template for voxelwise
#: statistics: the DWI's own resolution, so no detail is invented.
MNI_MAP_RESOLUTION = 3.0

#: The cohort-level tables of a derivatives folder: attribute name -> file.
TABLES = {
    "roi_md": "roi_md.tsv",
    "roi_deltas": "roi_deltas.tsv",
    "failures": "failures.tsv",
    "participants": "participants.tsv",
    "scores": "scores.tsv",
    "stats_roi": "stats_roi.tsv",
    "stats_input": "stats_input.tsv",
    "reliability": "reliability.tsv",
    "robustness": "robustness.tsv",
}


def read_tsv(path, *, missing_ok: bool = False) -> pd.DataFrame | None:
    """Read a BIDS TSV table (tab-separated, ``n/a`` is missing).

    Only ``n/a`` counts as missing: a region called ``NA`` or a participant
    called ``nan`` stays a string, as BIDS intends.

    Parameters
    ----------
    path : str or pathlib.Path
        The table.
    missing_ok : bool, default=False
        Return None for a missing file instead of raising.

    Returns
    -------
    pandas.DataFrame or None
        The table (None when it is missing and ``missing_ok``).

    Raises
    ------
    InputError
        The file is missing (without ``missing_ok``) or is not a table.
    """
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return None
        raise InputError(f"{path}: not found; run 'ketamine-nb run' (or 'ketamine-nb demo') "
                         "first")
    try:
        return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable TSV table ({str(exc).splitlines()[0]}); "
                         "rerun the step that wrote it") from None


def session_paths(out_dir, participant_id: str, session: str) -> dict:
    """Return the BIDS-Derivatives paths of one session's outputs.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Derivatives folder.
    participant_id : str
        ``sub-<label>``.
    session : str
        Session label without ``ses-``.

    Returns
    -------
    dict of str to pathlib.Path
        ``dir``, ``mask``, ``md``, ``fa`` (maps on the DWI grid; MD in
        mm²/s), ``xfm`` (template-to-DWI matrix), ``md_mni`` (MD on the
        :data:`MNI_MAP_RESOLUTION` mm template grid), ``voxels`` (the
        per-voxel region table) and ``qc`` (the QC JSON).
    """
    d = Path(out_dir) / participant_id / f"ses-{session}" / "dwi"
    p = f"{participant_id}_ses-{session}"
    return {
        "dir": d,
        "mask": d / f"{p}_space-dwi_desc-brain_mask.nii.gz",
        "md": d / f"{p}_space-dwi_model-DTI_desc-MD_dwimap.nii.gz",
        "fa": d / f"{p}_space-dwi_model-DTI_desc-FA_dwimap.nii.gz",
        "xfm": d / f"{p}_from-{TEMPLATE_SPACE}_to-dwi_mode-image_xfm.txt",
        "md_mni": d / f"{p}_space-{TEMPLATE_SPACE}_res-{MNI_MAP_RESOLUTION:g}_model-DTI"
                      "_desc-MD_dwimap.nii.gz",
        "voxels": d / f"{p}_desc-regionvoxels_dwi.tsv.gz",
        "qc": d / f"{p}_desc-qc_dwi.json",
        # Both visits of the participant in one (halfway) space; see
        # participant_paths and ketamine_nb.longitudinal.
        "voxels_halfway": d / f"{p}_space-halfway_desc-regionvoxels_dwi.tsv.gz",
        "md_halfway": d / f"{p}_space-halfway_model-DTI_desc-MD_dwimap.nii.gz",
        "xfm_halfway": d / f"{p}_from-dwi_to-halfway_mode-image_xfm.txt",
    }


def participant_paths(out_dir, participant_id: str) -> dict:
    """Return the paths of a participant's outputs shared by both visits.

    Returns
    -------
    dict of str to pathlib.Path
        ``dir``, ``md`` (mean MD of the aligned visits on the halfway grid),
        ``xfm`` (the atlas registration's affine part, MNI mm from halfway
        mm), ``coords`` (MNI mm of every voxel of the registration grid, the
        full affine + SyN mapping) and ``qc`` (the participant's QC JSON:
        registration similarities, coverage, flags; written last).
    """
    d = Path(out_dir) / participant_id / "dwi"
    p = participant_id
    return {
        "dir": d,
        "md": d / f"{p}_space-halfway_model-DTI_desc-meanMD_dwimap.nii.gz",
        "xfm": d / f"{p}_from-halfway_to-{TEMPLATE_SPACE}_mode-image_xfm.txt",
        "coords": d / f"{p}_from-halfway_to-{TEMPLATE_SPACE}_desc-coordinates_xfm.nii.gz",
        "qc": d / f"{p}_desc-longitudinal_qc.json",
    }


def write_region_voxels(voxels: pd.DataFrame, path) -> Path:
    """Write a per-voxel region table as gzipped TSV, atomically and byte-stably.

    Six significant digits keep MD (mm²/s) well below its noise; the gzip
    header has no time stamp, so the same table always gives the same bytes.
    Compressed with ISA-L at level 3 (:func:`._utils.gzip_bytes`): on a demo
    session's halfway table (5.4 MB of text) 33 ms against zlib level 6's
    416 ms, for a file 7 % larger (1.76 against 1.65 MB).
    """
    return atomic_write_bytes(Path(path), gzip_bytes(_voxels_tsv(voxels).encode(), 3))


def _voxels_tsv(voxels: pd.DataFrame) -> str:
    """Format a voxel table as ``to_csv(sep=TAB, float_format="%.6g")`` would, 4x faster.

    pandas formats a float column through a Python call per value; formatting
    a row at a time with one ``%`` template is the same text in a quarter of
    the time (the halfway tables hold ~80 000 rows per session). Columns of
    other kinds, or float columns with missing values, go through pandas.
    """
    def plain(values) -> bool:                     # pandas would quote none of them
        return all(isinstance(x, str) and not any(ch in x for ch in '\t\n\r"')
                   for x in values)

    fmts = []
    for c in voxels.columns:
        col = voxels[c]
        if col.dtype.kind == "f" and not col.isna().any():
            fmts.append("%.6g")
        elif col.dtype.kind in "iu":
            fmts.append("%d")
        elif isinstance(col.dtype, pd.CategoricalDtype) and col.notna().all() \
                and plain(col.cat.categories):
            fmts.append("%s")
        elif pd.api.types.is_string_dtype(col.dtype) and plain(pd.unique(col)):
            fmts.append("%s")
        else:
            fmts = None
            break
    names = [str(c) for c in voxels.columns]
    if fmts is None or not plain(names):
        return voxels.to_csv(sep="\t", index=False, float_format="%.6g", lineterminator="\n")
    template = "\t".join(fmts) + "\n"
    columns = [voxels[c].tolist() for c in voxels.columns]
    return "\t".join(names) + "\n" + "".join(template % row for row in zip(*columns, strict=True))


def load_region_voxels(out_dir, participant_id: str, session: str, *,
                       float_dtype: str = "float64", indices: bool = True) -> pd.DataFrame:
    """Read one session's per-voxel region table.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Pipeline output folder.
    participant_id, session : str
        ``sub-XXX`` and the session label.
    float_dtype : {"float64", "float32"}, default="float64"
        dtype of the value columns; float32 halves the memory and keeps the
        stored six significant digits.
    indices : bool, default=True
        Also read the voxel indices ``i``, ``j``, ``k``.

    Returns
    -------
    pandas.DataFrame
        ``region`` (categorical), voxel indices ``i``, ``j``, ``k``,
        ``probability``, ``md`` (mm²/s), ``fa`` and ``md_ols`` (mm²/s) where
        the pipeline stored it.
    """
    paths = session_paths(out_dir, participant_id, session)
    # Both visits in the participant's halfway space when that step ran.
    p = paths["voxels_halfway"] if paths["voxels_halfway"].is_file() else paths["voxels"]
    if not p.is_file():
        raise InputError(f"{p}: not found; rerun 'ketamine-nb run' for {participant_id} "
                         f"ses-{session}")
    dtype = {"region": "category", "probability": float_dtype, "md": float_dtype,
             "fa": float_dtype, "md_guard": float_dtype, "md_ols": float_dtype}
    usecols = None if indices else (lambda c: c not in ("i", "j", "k"))
    return pd.read_csv(p, sep="\t", dtype=dtype, usecols=usecols)


def load_cohort_voxels(out_dir, sessions: pd.DataFrame | None = None, *,
                       float_dtype: str = "float64") -> pd.DataFrame:
    """Concatenate the per-voxel region tables of every done session.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Pipeline output folder.
    sessions : pandas.DataFrame, optional
        ``participant_id`` and ``session`` to load; default: the sessions in
        ``roi_md.tsv``.
    float_dtype : {"float64", "float32"}, default="float64"
        dtype of the value columns. The demo's tables hold 15 million voxels
        (the grey-matter reference is nine tenths of them): float32 keeps
        that under 0.4 GB.

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``session``, ``region`` (categoricals), ``probability``,
        ``md``, ``md_ols`` (mm²/s), ``fa``, ``md_guard`` (mm²/s) where stored.
    """
    if sessions is None:
        roi = read_tsv(Path(out_dir) / TABLES["roi_md"])
        sessions = roi[["participant_id", "session"]].drop_duplicates()
    # Categoricals from the start (a string column per row would cost 8 bytes a
    # voxel twice over), with the categories sorted as astype("category") sorts.
    pids = sorted(set(sessions["participant_id"]))
    labels = sorted(set(sessions["session"]))
    # Each session's table is copied into columns allocated for the whole
    # cohort (sized from the first session, grown if needed), so that the
    # cohort's table is never held twice: pd.concat of the sessions' frames
    # would (the demo's 15 M rows: 0.35 GB more at the peak).
    cols: dict[str, np.ndarray] = {}
    regions: list[str] = []
    n_total = 0
    for row in sessions.itertuples():
        v = load_region_voxels(out_dir, row.participant_id, row.session,
                               float_dtype=float_dtype, indices=False)
        n = len(v)
        region = v.pop("region").array
        regions += [r for r in region.categories if r not in regions]
        codes = np.asarray(pd.Categorical(region, categories=regions).codes)
        values = {"participant_id": np.int32(pids.index(row.participant_id)),
                  "session": np.int8(labels.index(row.session)), "region": codes,
                  **{c: v[c].to_numpy() for c in v.columns}}
        if not cols:
            cap = max(n, 1) * len(sessions) + 1024
            cols = {c: np.empty(cap, np.asarray(x).dtype) for c, x in values.items()}
        elif n_total + n > len(cols["session"]):
            cap = max(n_total + n, int(len(cols["session"]) * 1.25))
            cols = {c: np.resize(a, cap) for c, a in cols.items()}
        for c, x in values.items():
            if c not in cols:    # a column this session has and the earlier ones lack
                cols[c] = np.full(len(cols["session"]), np.nan, np.asarray(x).dtype)
            cols[c][n_total:n_total + n] = x
        for c in set(cols) - set(values):
            cols[c][n_total:n_total + n] = np.nan
        n_total += n
        del v, values
    order = sorted(regions)        # categories sorted as astype("category") sorts
    remap = np.array([order.index(r) for r in regions], np.int8)
    data = {}
    for c in list(cols):
        a = cols.pop(c)
        # Trim the slack one column at a time (a copy of one column at most).
        a = a[:n_total].copy() if len(a) != n_total else a
        if c == "region":
            a = pd.Categorical.from_codes(remap[a], categories=order)
        elif c in ("participant_id", "session"):
            a = pd.Categorical.from_codes(a, categories=pids if c == "participant_id"
                                          else labels)
        data[c] = a
    out = pd.DataFrame(data, copy=False)
    del data
    if "md_ols" not in out:
        out["md_ols"] = np.nan
    return out


def find_derivatives(path) -> Path:
    """Return the derivatives folder at or below ``path``.

    ``path`` may be the derivatives folder itself, the folder the demo was
    made in (``ketamine-nb demo --out DIR`` puts the tables in
    ``DIR/derivatives``) or any folder with exactly one derivatives folder
    below it.

    Parameters
    ----------
    path : str or pathlib.Path
        A folder.

    Returns
    -------
    pathlib.Path
        The folder holding ``roi_md.tsv`` and ``roi_deltas.tsv``.

    Raises
    ------
    InputError
        No such folder, or none (or several) with the tables at or below it.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: no such folder; give the folder 'ketamine-nb run' wrote "
                         "(or the demo's folder)")

    def has_tables(d: Path) -> bool:
        return (d / TABLES["roi_md"]).is_file() and (d / TABLES["roi_deltas"]).is_file()

    if has_tables(root):
        return root
    if has_tables(root / "derivatives"):
        return root / "derivatives"
    found = sorted({p.parent for p in root.glob("*/roi_deltas.tsv")}
                   | {p.parent for p in root.glob("*/*/roi_deltas.tsv")})
    found = [d for d in found if has_tables(d)]
    if len(found) == 1:
        return found[0]
    if found:
        raise InputError(f"{root}: several result folders below it ("
                         f"{', '.join(str(d) for d in found[:4])}); give one of them")
    raise InputError(f"{root}: no roi_md.tsv/roi_deltas.tsv here or below; run "
                     f"'ketamine-nb run BIDS_DIR {root}' (or 'ketamine-nb demo') first")


def read_session_qc(out_dir, sessions) -> pd.DataFrame:
    """Read the QC JSON of every session, one row each.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Derivatives folder.
    sessions : pandas.DataFrame
        ``participant_id`` and ``session`` of the sessions to read.

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``session``, ``snr_b0``, ``mask_volume_ml``,
        ``n_outlier_volumes``, ``n_outlier_slices``, the within-scan motion
        (``mean_fd_mm``, ``max_fd_mm``: framewise displacement in mm;
        ``n_excluded_volumes``; n/a when the series was not realigned) and
        ``qc_flags`` (``;``-separated, empty when all is well), from each
        session's ``*_desc-qc_dwi.json``.
    """
    import json

    rows = []
    for pid, ses in sessions[["participant_id", "session"]].itertuples(index=False):
        path = session_paths(out_dir, pid, ses)["qc"]
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read the QC file ({exc.__class__.__name__}); "
                             f"rerun 'ketamine-nb run' for {pid} ses-{ses}") from None
        qc = doc.get("qc", {})
        motion = qc.get("motion") or {}
        rows.append({"participant_id": pid, "session": ses, "snr_b0": qc.get("snr_b0"),
                     "mask_volume_ml": qc.get("mask_volume_ml"),
                     "n_outlier_volumes": len(qc.get("outlier_volumes", [])),
                     "n_outlier_slices": len(qc.get("outlier_slices", [])),
                     "mean_fd_mm": motion.get("mean_fd", np.nan),
                     "max_fd_mm": motion.get("max_fd", np.nan),
                     "n_excluded_volumes": len(motion.get("excluded_volumes", []))
                     if motion else np.nan,
                     "qc_flags": ";".join(qc.get("flags", []))})
    return pd.DataFrame(rows)
