"""The pipeline: raw DWI -> QC -> mask -> DTI -> registration -> regions -> ROI tables.

:func:`process_session` does one session (load, realign within the scan,
mask, fit, QC, registration to the template for the voxelwise maps) and is
what a notebook calls; :func:`process_participant` then brings both visits of
a participant into one halfway space with the atlas registered once
(:mod:`ketamine_nb.longitudinal`), so that a region has the same voxels in
both visits. :func:`run_pipeline` runs a whole BIDS study (serially, or on
Dask: sessions first, then participants) into a BIDS-Derivatives folder,
reusing what is already done with the same parameters and raw files, and
writes the cohort tables ``roi_md.tsv`` (with each region's coverage) and
``roi_deltas.tsv`` (n/a with the reason for a region a visit does not cover).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._utils import die_with_parent, save_nifti, write_json, write_tsv
from .derivatives import (
    MNI_MAP_RESOLUTION,
    TEMPLATE_SPACE,
    load_region_voxels,
    participant_paths,
    session_paths,
    write_region_voxels,
)
from .dwi import DEFAULT_MAX_BVAL
from .exceptions import InputError, KetamineNBError
from .longitudinal import ATLAS_REGISTRATIONS, DEFAULT_ATLAS_REGISTRATION
from .motion import MOTION_MODELS
from .regions import DEFAULT_PROBABILITY_THRESHOLD
from .roi import DEFAULT_CSF_MD_THRESHOLD, DEFAULT_FA_THRESHOLD, DEFAULT_MIN_COVERAGE
from .tensor import DEFAULT_FIT_METHOD, FIT_METHODS

__all__ = [
    "ATLAS_REGISTRATIONS",
    "DENOISE_METHODS",
    "REALIGN_MODELS",
    "SPACES",
    "REGION_SUMMARIES",
    "TRANSFORMS",
    "PipelineConfig",
    "PipelineResult",
    "check_out_dir",
    "process_participant",
    "process_session",
    "roi_tables",
    "run_pipeline",
]

PIPELINE_VERSION = "12"  # bump when per-session outputs change meaning

#: Within-scan realignment models (:func:`ketamine_nb.motion.realign_series`);
#: ``None`` (CLI ``none``) leaves the series as acquired.
REALIGN_MODELS = MOTION_MODELS

#: Optional denoisers before the tensor fit (dipy's MP-PCA and Patch2Self).
DENOISE_METHODS = ("mppca", "patch2self")

#: Registration models of a session to the template.
TRANSFORMS = ("rigid", "affine")

#: Where MD meets the regions: on the DWI grid (regions move, MD is never
#: interpolated) or on the template grid.
SPACES = ("native", "MNI")

#: Regional summaries that can go into ``roi_deltas.tsv``.
REGION_SUMMARIES = ("wmean", "mean", "median")


@dataclass(frozen=True)
class PipelineConfig:
    """Every processing choice, in one place.

    Attributes
    ----------
    fit_method : {"OLS", "WLS", "NLLS", "RESTORE"}, default="WLS"
        Tensor fit (see :data:`ketamine_nb.tensor.DEFAULT_FIT_METHOD`).
    denoise : {None, "mppca", "patch2self"}, default=None
        Optional denoising before the fit (off by default, as in the study's
        unknown preprocessing; it changes MD at low SNR).
    transform : {"rigid", "affine"}, default="rigid"
        Registration model to the MNI template.
    space : {"native", "MNI"}, default="native"
        Where MD meets the regions (see :mod:`ketamine_nb.registration`).
    probability_threshold : float, default=0.25
        Atlas probability threshold for the cohort tables.
    csf_md_threshold : float or None, default=1.1e-3
        Partial-volume guard for the cohort tables (mm²/s).
    fa_threshold : float or None, default=None
        Optional white-matter guard for the cohort tables.
    statistic : {"wmean", "mean", "median"}, default="wmean"
        Which regional summary goes into ``roi_deltas.tsv``: the mean
        weighted by atlas probability (default; on the simulated cohort it
        follows the planted ΔMD at r = 0.93 against 0.92 for the plain mean
        and 0.90 for the median), the plain mean or the median.
    regions : str or None, default=None
        Path of a region table (default: the study's seven regions).
    realign : {"rigid", "affine", None}, default="rigid"
        Within-scan realignment of every volume to the b0 reference
        (:mod:`ketamine_nb.motion`; affine also corrects eddy-current
        distortion). Preprocessed input (QSIPrep) is never realigned again.
    exclude_volumes : bool, default=True
        Leave outlier volumes out of the fit (``ketamine_nb.motion``'s
        threshold).
    max_bval : float or None, default=1500.0
        Fit only volumes with b <= this (s/mm²); ``None`` keeps every shell
        (:data:`ketamine_nb.dwi.DEFAULT_MAX_BVAL`).
    atlas_registration : {"syn", "affine", None}, default="syn"
        Both visits of a participant in one halfway space with the atlas
        registered once to it, affine then SyN (``syn``) or affine only
        (:mod:`ketamine_nb.longitudinal`); ``None`` keeps the earlier
        design (each session rigidly to the template on its own).
    min_coverage : float or None, default=0.8
        Regions with less of their atlas mass inside a visit's field of view
        or brain mask are ``n/a`` with the reason
        (:data:`ketamine_nb.roi.DEFAULT_MIN_COVERAGE`); ``None`` reports all.
    """

    fit_method: str = DEFAULT_FIT_METHOD
    denoise: str | None = None
    transform: str = "rigid"
    space: str = "native"
    probability_threshold: float = DEFAULT_PROBABILITY_THRESHOLD
    csf_md_threshold: float | None = DEFAULT_CSF_MD_THRESHOLD
    fa_threshold: float | None = DEFAULT_FA_THRESHOLD
    statistic: str = "wmean"
    regions: str | None = None
    realign: str | None = "rigid"
    exclude_volumes: bool = True
    max_bval: float | None = DEFAULT_MAX_BVAL
    atlas_registration: str | None = DEFAULT_ATLAS_REGISTRATION
    min_coverage: float | None = DEFAULT_MIN_COVERAGE

    def __post_init__(self):
        if self.fit_method.upper() not in FIT_METHODS:
            raise InputError(f"fit method {self.fit_method!r} is unknown; use one of "
                             f"{', '.join(FIT_METHODS)}")
        object.__setattr__(self, "fit_method", self.fit_method.upper())
        for name, allowed in (("denoise", (None, *DENOISE_METHODS)), ("transform", TRANSFORMS),
                              ("space", SPACES), ("statistic", REGION_SUMMARIES),
                              ("realign", (None, *REALIGN_MODELS)),
                              ("atlas_registration", (None, *ATLAS_REGISTRATIONS))):
            value = getattr(self, name)
            if value not in allowed:
                raise InputError(f"{name} {value!r} is unknown; use one of "
                                 f"{', '.join(str(a) for a in allowed if a is not None)}")
        if not 0 <= self.probability_threshold <= 1:
            raise InputError("probability threshold is a fraction between 0 and 1")
        if self.min_coverage is not None and not 0 <= self.min_coverage <= 1:
            raise InputError(f"min_coverage {self.min_coverage!r} is not a fraction between 0 "
                             "and 1; use None to report every region")
        if self.max_bval is not None and not (np.isfinite(self.max_bval)
                                              and self.max_bval > 0):
            raise InputError(f"max_bval {self.max_bval!r} is not a positive b-value (s/mm²); "
                             "use None to keep every shell")
        # "Off" is None inside the package; the command line and the files
        # convert their own spellings (0, n/a) at the edge.
        for name in ("csf_md_threshold", "fa_threshold"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise InputError(f"{name} {value!r} is not a positive number; use None to "
                                 "switch the guard off")

    def processing_key(self) -> str:
        """Hash of the choices that change per-session outputs (not the thresholds)."""
        d = {k: getattr(self, k) for k in ("fit_method", "denoise", "transform", "space",
                                           "realign", "exclude_volumes", "max_bval")}
        if self.regions:
            d["regions"] = Path(self.regions).read_text()
        d["version"] = PIPELINE_VERSION
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def participant_key(self) -> str:
        """Hash of the choices that change the per-participant (halfway) outputs."""
        d = {"session": self.processing_key(), "atlas": self.atlas_registration}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _load_series(dwi_path, bval, bvec, config: PipelineConfig, *, preprocessed: bool = False):
    """Load a series as the fit sees it: b <= max_bval, realigned within the scan.

    Returns
    -------
    img, gtab, notes, motion, realignment
        The series, its gradients, the loader's notes (list of str), the
        motion QC (dict; empty when not realigned) and the realignment itself
        (``{"transforms": [4 x 4 per volume], "excluded_volumes": [...]}``,
        ``x_volume = T @ x_reference`` in mm; None when not realigned), which
        the halfway step composes with its own resampling.
    """
    from .dwi import brain_mask, load_dwi

    img, gtab, notes = load_dwi(dwi_path, bval, bvec, max_bval=config.max_bval,
                                return_notes=True)
    motion, realignment = {}, None
    if config.realign is not None and not preprocessed:
        from .motion import motion_qc, realign_series

        img, gtab, table = realign_series(img, gtab, model=config.realign,
                                          mask=brain_mask(img, gtab),
                                          exclude_volumes=config.exclude_volumes)
        motion = motion_qc(table)
        realignment = {"transforms": table.attrs["transforms"],
                       "excluded_volumes": motion["excluded_volumes"]}
    return img, gtab, list(notes), motion, realignment


def _raw_with_realignment(dwi_path, bval, bvec, config: PipelineConfig, qc_path):
    """Load the raw series and the session's realignment, to resample once (halfway step).

    Returns ``(img, gtab, transforms)`` with the excluded volumes left out, or
    None when the session was not realigned (preprocessed input, ``realign``
    off, or a QC JSON without the realignment).
    """
    from .dwi import load_dwi
    from .motion import drop_volumes

    qc_path = Path(qc_path)
    realignment = json.loads(qc_path.read_text()).get("realignment") if qc_path.is_file() \
        else None
    if not realignment:
        return None
    img, gtab = load_dwi(dwi_path, bval, bvec, max_bval=config.max_bval)
    T = np.asarray(realignment["transforms"], float)
    excluded = [int(v) for v in realignment["excluded_volumes"]]
    if T.shape != (len(gtab.bvals), 4, 4):
        return None                      # not this series: realign it again
    if excluded:
        img, gtab = drop_volumes(img, gtab, excluded)
        T = np.delete(T, excluded, axis=0)
    return img, gtab, T


def process_session(dwi_path, out_dir, participant_id: str, session: str, *,
                    config: PipelineConfig | None = None, bval=None, bvec=None,
                    force: bool = False, preprocessed: bool = False) -> dict:
    """Process one DWI session and write its derivatives.

    Steps: load and check the gradients, brain mask, optional denoising,
    tensor fit (MD, FA), rigid registration of the mean b0 to the MNI
    template, regions brought to the DWI grid, per-voxel region table, QC.
    The QC JSON is written last and marks the session as done; a session
    whose QC JSON holds the same processing key is reused unless ``force``.

    Parameters
    ----------
    dwi_path : str or pathlib.Path
        The 4D DWI.
    out_dir : str or pathlib.Path
        Derivatives root.
    participant_id, session : str
        ``sub-XXX`` and the session label (without ``ses-``).
    config : PipelineConfig, optional
        Processing choices.
    bval, bvec : str or pathlib.Path, optional
        Gradient files (default: beside the DWI).
    force : bool, default=False
        Recompute even if done.
    preprocessed : bool, default=False
        The series is already motion and eddy-current corrected (QSIPrep):
        no realignment.

    Returns
    -------
    dict
        ``participant_id``, ``session``, ``status`` (``processed`` or
        ``reused``), ``seconds`` and the QC metrics.
    """
    import nibabel as nib
    from threadpoolctl import threadpool_limits

    from .dwi import brain_mask, mean_b0, qc_session
    from .regions import load_region_maps
    from .registration import apply_transform, register_to_template, write_transform
    from .roi import extract_region_voxels
    from .tensor import denoise, fit_dti

    config = config or PipelineConfig()
    paths = session_paths(out_dir, participant_id, session)
    key = config.processing_key()
    inputs = _fingerprint(dwi_path, bval, bvec)
    if not force:
        reused = _reused(dwi_path, out_dir, participant_id, session, config, bval, bvec)
        if reused is not None:
            return reused

    t0 = time.perf_counter()
    paths["dir"].mkdir(parents=True, exist_ok=True)
    paths["qc"].unlink(missing_ok=True)  # not done until the QC JSON is back
    for k in ("voxels_halfway", "md_halfway", "xfm_halfway"):  # the halfway step redoes them
        paths[k].unlink(missing_ok=True)
    # One BLAS thread per session: sessions run in parallel, not inside.
    with threadpool_limits(limits=1, user_api="blas"):
        img, gtab, notes, motion, realignment = _load_series(dwi_path, bval, bvec, config,
                                                             preprocessed=preprocessed)
        mask = brain_mask(img, gtab)
        if not np.asarray(mask.dataobj).any():
            raise InputError(f"{dwi_path}: no brain found in the b0 volumes; check the "
                             "image (is it empty or all background?)")
        fit_img = denoise(img, gtab, method=config.denoise, mask=mask) if config.denoise \
            else img
        md, fa = fit_dti(fit_img, gtab, mask=mask, fit_method=config.fit_method)
        qc = qc_session(img, gtab, mask)
        if motion:
            qc["motion"] = motion
            qc["flags"] = [*qc.get("flags", []), *motion.get("flags", [])]
        if notes:
            qc["notes"] = notes
        b0 = mean_b0(img, gtab)
        A = register_to_template(b0, transform=config.transform)
        maps = load_region_maps(table=config.regions)
        if config.space == "native":
            regions_native = apply_transform(maps.img, A, target=b0, direction="to_native")
            voxels = extract_region_voxels(md, fa, mask, regions_native, maps.names)
            # OLS MD of the same voxels, for the robustness grid (fit method as a choice).
            voxels["md_ols"] = _md_at(fit_img, gtab, voxels, "OLS") \
                if config.fit_method != "OLS" else voxels["md"]
        else:
            from .registration import load_template

            grid = load_template(2.0)
            md_mni = apply_transform(md, A, target=grid, direction="to_mni")
            fa_mni = apply_transform(fa, A, target=grid, direction="to_mni")
            mask_mni = apply_transform(mask, A, target=grid, direction="to_mni", order=0)
            regions_mni = apply_transform(maps.img, np.eye(4), target=grid,
                                          direction="to_native")
            voxels = extract_region_voxels(md_mni, fa_mni, mask_mni, regions_mni, maps.names)
            voxels["md_ols"] = np.nan
        md_on_grid = _md_on_template_grid(md, mask, A)
        coverage = _session_coverage(maps, A, mask)
    del img, fit_img

    save_nifti(mask, paths["mask"])
    save_nifti(md, paths["md"])
    save_nifti(fa, paths["fa"])
    save_nifti(md_on_grid, paths["md_mni"])
    write_transform(A, paths["xfm"])
    write_region_voxels(voxels, paths["voxels"])
    for name, desc in (("md", "Mean diffusivity (mm^2/s)"), ("fa", "Fractional anisotropy")):
        write_json({"Description": desc, "Units": "mm^2/s" if name == "md" else "arbitrary",
                    "Model": "DTI", "FitMethod": config.fit_method,
                    "Sources": [f"bids:raw:{Path(dwi_path).name}"]},
                   Path(str(paths[name]).removesuffix(".nii.gz") + ".json"))
    qc_doc = {"participant_id": participant_id, "session": session,
              "source": str(dwi_path), "processing_key": key, "inputs": inputs,
              "config": asdict(config),
              "qc": qc, "coverage": coverage, "mni_to_native": np.round(A, 10).tolist(),
              "realignment": realignment,
              "nib_version": nib.__version__}
    write_json(qc_doc, paths["qc"])
    return {"participant_id": participant_id, "session": session, "status": "processed",
            "seconds": round(time.perf_counter() - t0, 2), **qc}


def process_participant(out_dir, participant_id: str, visits: dict, *,
                        config: PipelineConfig | None = None, force: bool = False) -> dict:
    """Bring both visits of a participant into one halfway space, with the atlas.

    Runs after :func:`process_session` has done both sessions (their brain
    masks and QC are reused). Steps (:func:`ketamine_nb.longitudinal.align_visits`):
    post registered rigidly to pre, both resampled once into the halfway
    space and fitted there, the atlas registered once (affine + SyN) to their
    mean MD, one per-voxel region table per session on the same voxels (the
    CSF guard judged on the mean MD), coverage of every region per visit.
    The participant's QC JSON is written last and marks the step as done.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Derivatives root.
    participant_id : str
    visits : dict
        ``{"pre": (label, dwi, bval, bvec, preprocessed), "post": (...)}``.
    config : PipelineConfig, optional
    force : bool, default=False

    Returns
    -------
    dict
        ``participant_id``, ``status`` (``processed``, ``reused``), ``seconds``,
        ``visit_similarity``, ``atlas_similarity``, ``flags``.
    """
    import nibabel as nib
    from threadpoolctl import threadpool_limits

    from .longitudinal import Visit, align_visits
    from .regions import load_region_maps
    from .roi import extract_region_voxels

    config = config or PipelineConfig()
    ppaths = participant_paths(out_dir, participant_id)
    spaths = {v: session_paths(out_dir, participant_id, visits[v][0]) for v in visits}
    if not force:
        reused = _participant_reused(out_dir, participant_id, visits, config)
        if reused is not None:
            return reused
    inputs = _participant_inputs(spaths)
    key = config.participant_key()
    t0 = time.perf_counter()
    ppaths["dir"].mkdir(parents=True, exist_ok=True)
    ppaths["qc"].unlink(missing_ok=True)
    # One thread (BLAS and dipy's OpenMP): participants run in parallel, and
    # one thread gives the same bytes whatever the number of workers.
    with threadpool_limits(limits=1):
        loaded = {}
        for v, (_label, dwi, bval, bvec, prep) in visits.items():
            mask = nib.load(spaths[v]["mask"])
            # The session's own realignment, composed with the halfway
            # resampling: each volume is interpolated once, not twice.
            raw = None if prep else _raw_with_realignment(dwi, bval, bvec, config,
                                                          spaths[v]["qc"])
            if raw is not None:
                loaded[v] = Visit(img=raw[0], gtab=raw[1], mask=mask, volume_transforms=raw[2])
            else:
                img, gtab, _, _, _ = _load_series(dwi, bval, bvec, config, preprocessed=prep)
                loaded[v] = Visit(img=img, gtab=gtab, mask=mask)
        maps = load_region_maps(table=config.regions)
        al = align_visits(loaded["pre"], loaded["post"], maps, fit_method=config.fit_method,
                          atlas_registration=config.atlas_registration)
        del loaded
        common = al.common_mask
        guard = al.mean_md
        tables = {}
        for v in visits:
            t = extract_region_voxels(al.md[v], al.fa[v], common, al.regions, al.names,
                                      guard_md=guard)
            t["md_ols"] = _md_at(al.dwi[v], al.gtab[v], t, "OLS") \
                if config.fit_method != "OLS" else t["md"]
            tables[v] = t
    for v in visits:
        write_region_voxels(tables[v], spaths[v]["voxels_halfway"])
        save_nifti(al.md[v], spaths[v]["md_halfway"])
        _write_matrix(al.to_visit[v], spaths[v]["xfm_halfway"],
                      f"x_ses-{visits[v][0]} = A @ x_halfway (world mm)")
    save_nifti(nib.Nifti1Image(guard, al.affine), ppaths["md"])
    _write_matrix(al.mapping.affine, ppaths["xfm"],
                  f"x_{TEMPLATE_SPACE} = A @ x_halfway (world mm; the affine part)")
    if al.mapping.coords is not None:
        save_nifti(nib.Nifti1Image(np.moveaxis(al.mapping.coords, 0, -1).astype(np.float32),
                                   al.mapping.grid_affine), ppaths["coords"])
    summary = {"visit_similarity": round(float(al.visit_similarity), 4),
               "atlas_similarity": round(float(al.mapping.similarity), 4),
               "brain_in_fov": round(float(al.mapping.extra.get("brain_in_fov", 1.0)), 4),
               "flags": al.flags}
    coverage = {visits[v][0]: {k: {r: round(x, 4) for r, x in c.items()}
                               for k, c in al.coverage[v].items()} for v in visits}
    write_json({"participant_id": participant_id, "processing_key": key, "inputs": inputs,
                "config": asdict(config), "summary": summary, "coverage": coverage,
                "post_to_pre": np.round(al.post_to_pre, 10).tolist(),
                "halfway_affine": np.round(al.affine, 10).tolist(),
                "halfway_shape": list(al.shape), "atlas_registration": al.mapping.method},
               ppaths["qc"])
    return {"participant_id": participant_id, "status": "processed",
            "seconds": round(time.perf_counter() - t0, 2), **summary}


def _table_coverage(out_dir, participant_id: str, session: str, participant_qc: dict) -> dict:
    """Coverage of the regions in the voxel table a session's row is summarised from.

    The halfway table's (the participant QC) when the halfway step ran, else
    the session's own (its QC JSON); ``{}`` when neither recorded it.
    """
    paths = session_paths(out_dir, participant_id, session)
    if paths["voxels_halfway"].is_file():
        return participant_qc.get("coverage", {}).get(session, {})
    try:
        return json.loads(paths["qc"].read_text()).get("coverage", {})
    except (OSError, ValueError):
        return {}


def _session_coverage(maps, A, mask_img) -> dict:
    """Share of each region's atlas mass inside one session's field of view and brain mask.

    The session's own registration (``x_native = A @ x_mni``) places the
    atlas; this is the coverage a session reports when no halfway step runs
    (a participant with one visit, or ``--atlas-registration none``).
    """
    from .longitudinal import AtlasMapping, region_coverage

    mask = np.asarray(mask_img.dataobj) > 0
    mapping = AtlasMapping(affine=np.linalg.inv(A), coords=None, grid_affine=mask_img.affine,
                           grid_shape=mask.shape, similarity=float("nan"), method="rigid")
    cov = region_coverage(maps.img, maps.names, mapping, mask_img.affine,
                          {"fov": np.ones(mask.shape, bool), "brain": mask})
    return {k: {r: round(x, 4) for r, x in c.items()} for k, c in cov.items()}


def _participant_inputs(spaths: dict) -> dict:
    """Return the sessions' processing keys and raw-file fingerprints (their QC JSON)."""
    out = {}
    for v, p in spaths.items():
        doc = json.loads(p["qc"].read_text())
        out[v] = {"key": doc.get("processing_key"), "inputs": doc.get("inputs")}
    return out


def _participant_reused(out_dir, participant_id: str, visits: dict,
                        config: PipelineConfig) -> dict | None:
    """Return the result of a halfway step done before on the same sessions and choices."""
    ppaths = participant_paths(out_dir, participant_id)
    spaths = {v: session_paths(out_dir, participant_id, visits[v][0]) for v in visits}
    try:
        done = json.loads(ppaths["qc"].read_text())
        inputs = _participant_inputs(spaths)
    except (OSError, ValueError):
        return None
    if (done.get("processing_key") == config.participant_key() and done.get("inputs") == inputs
            and all(spaths[v]["voxels_halfway"].is_file() for v in visits)):
        return {"participant_id": participant_id, "status": "reused", "seconds": 0.0,
                **done.get("summary", {})}
    return None


def _write_matrix(matrix, path, what: str):
    from ._utils import atomic_write_text

    rows = "\n".join(" ".join(f"{v:.10f}" for v in row) for row in np.asarray(matrix))
    return atomic_write_text(path, f"# 4x4 affine: {what}\n{rows}\n")


def _participant_task(args):
    out_dir, pid, visits, config, force = args
    try:
        return process_participant(out_dir, pid, visits, config=config, force=force)
    except KetamineNBError as exc:
        return {"participant_id": pid, "status": "failed", "error": str(exc)}
    except Exception as exc:  # keep the other participants going
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return {"participant_id": pid, "status": "failed",
                "error": f"{pid}: halfway space: unexpected {type(exc).__name__}: {exc} (at "
                         f"{Path(last.filename).name}:{last.lineno}); rerun with --debug "
                         "and report it"}


def _md_on_template_grid(md_img, mask_img, mni_to_native):
    """MD on the 3 mm template grid, for voxelwise statistics.

    Trilinear interpolation of the MD map, set to 0 outside the brain mask
    brought over by nearest neighbour.

    Parameters
    ----------
    md_img, mask_img : nibabel.Nifti1Image
        MD map (mm²/s) and brain mask on the DWI grid.
    mni_to_native : numpy.ndarray, shape (4, 4)
        The session's registration (:func:`~ketamine_nb.registration.register_to_template`).

    Returns
    -------
    nibabel.Nifti1Image
        float32 MD (mm²/s) on the :data:`MNI_MAP_RESOLUTION` mm template grid.
    """
    import nibabel as nib

    from .registration import apply_transform, load_template

    grid = load_template(MNI_MAP_RESOLUTION)
    md = apply_transform(md_img, mni_to_native, target=grid, direction="to_mni")
    inside = apply_transform(mask_img, mni_to_native, target=grid, direction="to_mni", order=0)
    data = np.where(np.asarray(inside.dataobj) > 0, np.asarray(md.dataobj), 0)
    return nib.Nifti1Image(data.astype(np.float32), grid.affine)


def _reused(dwi_path, out_dir, participant_id: str, session: str, config: PipelineConfig,
            bval=None, bvec=None) -> dict | None:
    """Return the result of a session done before with the same parameters and raw files."""
    paths = session_paths(out_dir, participant_id, session)
    if not paths["qc"].exists():
        return None
    try:
        done = json.loads(paths["qc"].read_text())
    except (OSError, ValueError):
        return None
    outputs = [paths[k] for k in ("mask", "md", "fa", "xfm", "voxels", "md_mni")]
    if (done.get("processing_key") == config.processing_key()
            and done.get("inputs") == _fingerprint(dwi_path, bval, bvec)
            and all(p.exists() for p in outputs)):
        return {"participant_id": participant_id, "session": session, "status": "reused",
                "seconds": 0.0, **done.get("qc", {})}
    return None


def _fingerprint(dwi_path, bval=None, bvec=None) -> dict:
    """Name, size and modification time of a session's raw files.

    A changed raw file (re-exported, replaced) makes its session recompute
    even when the processing parameters are the same.
    """
    dwi_path = Path(dwi_path)
    stem = dwi_path.name.removesuffix(".gz").removesuffix(".nii")
    files = [dwi_path, Path(bval) if bval else dwi_path.with_name(stem + ".bval"),
             Path(bvec) if bvec else dwi_path.with_name(stem + ".bvec")]
    out = {}
    for f in files:
        try:
            st = f.stat()
            out[f.name] = [st.st_size, st.st_mtime_ns]
        except OSError:
            out[f.name] = None
    return out


def _md_at(dwi_img, gtab, voxels: pd.DataFrame, method: str):
    """MD of a tensor fit with ``method`` at the voxels of a region table (mm²/s)."""
    from dipy.reconst.dti import TensorModel

    data = np.asarray(dwi_img.dataobj, dtype=np.float32)
    ijk = voxels[["i", "j", "k"]].to_numpy()
    uniq, inverse = np.unique(ijk, axis=0, return_inverse=True)
    if len(uniq) == 0:
        return np.zeros(0, np.float32)
    sig = data[uniq[:, 0], uniq[:, 1], uniq[:, 2]]
    md = TensorModel(gtab, fit_method=method).fit(sig).md
    return np.nan_to_num(md).astype(np.float32)[inverse.ravel()]


def check_out_dir(bids_dir, out_dir) -> Path:
    """Refuse an output folder that is the raw dataset or inside it."""
    bids = Path(bids_dir).resolve()
    out = Path(out_dir).resolve()
    if out == bids or bids in out.parents:
        raise InputError(f"{out_dir}: the output folder is inside the raw dataset {bids_dir}; "
                         "the raw data are never written to, choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; choose a folder name")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), None)
    if probe is not None and not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{out_dir}: not writable ({probe} is read-only); choose a folder "
                         "you can write to or fix its permissions")
    return out


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` did.

    Attributes
    ----------
    out_dir : pathlib.Path
        Derivatives root.
    sessions : pandas.DataFrame
        One row per session: status (processed, reused, failed), seconds, QC.
    failures : pandas.DataFrame
        ``participant_id``, ``session``, ``error`` (one line each). ``session``
        is the session label at fault: the one that failed, or the one that is
        missing or unusable when the other visit is fine; ``n/a`` when the
        participant as a whole failed (both visits missing, or the halfway step).
    roi_md, roi_deltas : pandas.DataFrame
        The cohort tables (also written as TSV).
    """

    out_dir: Path
    sessions: pd.DataFrame
    failures: pd.DataFrame
    roi_md: pd.DataFrame
    roi_deltas: pd.DataFrame
    problems: list = field(default_factory=list)
    participants: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def exit_code(self) -> int:
        """0 when everything worked, 1 when some sessions failed, 2 when no participant is left."""
        if not len(self.failures):
            return 0
        return 1 if self._n_done() else 2

    def _n_done(self) -> int:
        d = self.roi_deltas
        return int(d["participant_id"].nunique()) if len(d) else 0

    def summary(self) -> str:
        """Return a short human summary."""
        c = self.sessions["status"].value_counts() if len(self.sessions) else {}
        lines = [f"sessions: {c.get('processed', 0)} processed, {c.get('reused', 0)} reused, "
                 f"{c.get('failed', 0)} failed"]
        for row in self.failures.itertuples():
            ses = "" if str(row.session) in ("n/a", "", "nan") else f" ses-{row.session}"
            lines.append(f"  failed {row.participant_id}{ses}: {row.error}")
        if len(self.failures):
            left_out = self.failures["participant_id"].nunique()
            done = self._n_done()
            where = f"listed in {self.out_dir / 'failures.tsv'}"
            lines.append(
                f"{left_out} participant(s) left out ({where}); the tables are complete and "
                f"usable for the other {done} participant(s). Exit code 1 means exactly "
                "this: some participants failed, the rest completed." if done else
                f"{left_out} participant(s) left out ({where}) and none completed: fix the "
                "inputs named above and run again (exit code 2).")
        d = self.roi_deltas
        if len(d) and "flag" in d:
            flagged = d[(d["flag"].fillna("").astype(str) != "") & d["delta_md"].isna()]
            if len(flagged):
                lines.append(f"{len(flagged)} participant x region value(s) are n/a, the "
                             "region not covered (coverage below --min-coverage) or left "
                             "without voxels (no_voxels):")
                for (region, flag), g in flagged.groupby(["region", "flag"], sort=False):
                    who = ", ".join(g["participant_id"].astype(str).head(6))
                    more = f" and {len(g) - 6} more" if len(g) > 6 else ""
                    lines.append(f"  {region}: {flag} ({who}{more})")
        p = self.participants
        if len(p) and "flags" in p:
            warn = p[p["flags"].map(lambda f: bool(f) if isinstance(f, list) else False)]
            for row in warn.itertuples():
                lines.append(f"  registration check {row.participant_id}: "
                             f"{';'.join(row.flags)} (see its *_desc-longitudinal_qc.json)")
        lines.append(f"tables: {self.out_dir / 'roi_md.tsv'}")
        lines.append(f"        {self.out_dir / 'roi_deltas.tsv'}")
        return "\n".join(lines)


def _task(args):
    dwi, bval, bvec, out_dir, pid, ses, config, force, *rest = args
    try:
        return process_session(dwi, out_dir, pid, ses, config=config, bval=bval, bvec=bvec,
                               force=force, preprocessed=bool(rest and rest[0]))
    except KetamineNBError as exc:
        return {"participant_id": pid, "session": ses, "status": "failed", "error": str(exc)}
    except Exception as exc:  # keep the other subjects going; the note says where
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return {"participant_id": pid, "session": ses, "status": "failed",
                "error": f"{dwi}: unexpected {type(exc).__name__}: {exc} (at "
                         f"{Path(last.filename).name}:{last.lineno}); rerun with --debug "
                         "and report it"}


def _show(bar, res):
    bar.update()
    where = f" ses-{res['session']}" if "session" in res else ""
    bar.set_postfix_str(f"{res['participant_id']}{where}: {res['status']}")


def _warm_up(config: PipelineConfig):
    """Import and cache here what every session needs, before workers are forked.

    Forked workers inherit the imports (dipy, nilearn), the registration
    template and the region maps, so none of them pays the first-session cost
    again.
    """
    import dipy.align.imaffine  # noqa: F401
    import dipy.reconst.dti  # noqa: F401
    from dipy.core.gradients import gradient_table  # noqa: F401

    from .regions import load_region_maps
    from .registration import REGISTRATION_PARAMS, load_template

    load_template(REGISTRATION_PARAMS["template_resolution"], crop=True)
    load_template(MNI_MAP_RESOLUTION)
    if config.space != "native":
        load_template(2.0)
    load_region_maps(table=config.regions)


def _start_method() -> str:
    """``fork`` on Linux when this process runs no other Python thread, else ``spawn``.

    Forked workers start warm (see :func:`_warm_up`). A process with other
    threads, such as a Jupyter kernel (its I/O threads hold locks that a
    forked child could inherit held), gets spawned workers, which import
    and load what they need themselves.
    """
    import multiprocessing
    import sys
    import threading

    if (sys.platform.startswith("linux") and threading.active_count() == 1
            and "fork" in multiprocessing.get_all_start_methods()):
        return "fork"
    return "spawn"


def _run_local(tasks, n_jobs: int, new_bar, config: PipelineConfig, fn=None,
               lost=None) -> list:
    """Run the sessions on Dask's local multiprocessing scheduler with ``n_jobs`` processes.

    The sessions are independent and each is a short piece of numpy work,
    so the lightest Dask scheduler fits: a pool of plain worker processes,
    one session per task (``chunksize=1``). On two CPUs it ran the run stage
    faster than a ``dask.distributed`` ``LocalCluster`` of two workers, whose
    nanny sets ``MALLOC_TRIM_THRESHOLD_`` (more page faults, slower sessions)
    and whose spawned workers each import everything again
    (``benchmarks/bench_dask.py``; figures in benchmarks/RESULTS.md). A cluster is still one
    option away: ``--scheduler ADDRESS``.

    A worker process that dies (killed for memory, a crash in a C library)
    breaks the pool: the sessions not finished by then are reported as
    failed, with what to do, instead of waiting for them forever.
    """
    import multiprocessing
    import warnings
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    import dask
    from dask.callbacks import Callback

    method = _start_method()
    if method == "fork":
        _warm_up(config)
    done = {}
    bar = None

    def posttask(key, result, dsk, state, worker_id):
        done[key] = result
        _show(bar, result)

    fn = fn or _task
    keys = [f"task-{i}" for i in range(len(tasks))]
    jobs = [dask.delayed(fn, pure=False)(t, dask_key_name=k)
            for k, t in zip(keys, tasks, strict=True)]
    with warnings.catch_warnings():
        # Python >= 3.12 warns on fork whenever the process has other OS
        # threads; here those are OpenBLAS's idle pool, which is fork-safe.
        warnings.filterwarnings("ignore", message=".*use of fork", category=DeprecationWarning)
        # Workers end with this process, even when it is killed (no orphans
        # holding memory).
        pool = ProcessPoolExecutor(min(n_jobs, len(tasks)),
                                   mp_context=multiprocessing.get_context(method),
                                   initializer=die_with_parent, initargs=(os.getpid(),))
        # With fork, the first task starts every worker (before the pool's
        # own thread); the progress bar and its thread come after.
        pool.submit(int).result()
    broken = False
    try:
        bar = new_bar()
        with bar, Callback(posttask=posttask):
            dask.compute(*jobs, scheduler="processes", pool=pool, chunksize=1)
    except BrokenProcessPool:
        broken = True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    results = []
    for key, t in zip(keys, tasks, strict=True):
        if key in done:
            results.append(done[key])
        elif lost is not None:
            results.append(lost(t, broken))
        else:
            results.append({
                "participant_id": t[4], "session": t[5], "status": "failed",
                "error": f"{t[0]}: not processed: a worker process died"
                         f"{' (killed for memory?)' if broken else ''} while this session "
                         "was running or waiting; rerun (done sessions are reused), with "
                         "fewer --n-jobs if memory is short"})
    return results


def _run_on_cluster(tasks, address: str, new_bar, fn=None) -> list:
    """Run the sessions on a running Dask cluster (``dask.distributed``)."""
    from dask.distributed import Client, as_completed

    results = []
    with Client(address) as client, new_bar() as bar:
        futures = client.map(fn or _task, tasks, pure=False)
        for fut in as_completed(futures):
            results.append(fut.result())
            _show(bar, results[-1])
    return results


def roi_tables(out_dir, sessions: pd.DataFrame, participants: pd.DataFrame, *,
               pre: str, post: str, config: PipelineConfig | None = None):
    """Build ``roi_md`` and ``roi_deltas`` from the per-session voxel tables.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Derivatives root.
    sessions : pandas.DataFrame
        Done sessions: ``participant_id``, ``session`` (+ QC columns).
    participants : pandas.DataFrame
        ``participant_id``, ``arm``.
    pre, post : str
        Session labels.
    config : PipelineConfig, optional
        Thresholds and statistic.

    Returns
    -------
    roi_md, roi_deltas : pandas.DataFrame
        Per session x region MD (mm²/s) and per participant x region
        ``delta_md = md_post - md_pre`` with ``pct_delta_md`` (percent of pre).
    """
    from .roi import apply_coverage, summarise_regions

    config = config or PipelineConfig()
    frames = []
    coverage = {}
    for pid in (pd.unique(sessions["participant_id"]) if len(sessions) else []):
        try:
            coverage[pid] = json.loads(participant_paths(out_dir, pid)["qc"].read_text())
        except (OSError, ValueError):
            coverage[pid] = {}
    for row in sessions.itertuples():
        v = load_region_voxels(out_dir, row.participant_id, row.session)
        s = summarise_regions(v, probability_threshold=config.probability_threshold,
                              csf_md_threshold=config.csf_md_threshold,
                              fa_threshold=config.fa_threshold)
        s.insert(0, "session", row.session)
        s.insert(0, "participant_id", row.participant_id)
        cov = _table_coverage(out_dir, row.participant_id, row.session,
                              coverage.get(row.participant_id, {}))
        missing = [r for r in cov.get("fov", {}) if r not in set(s["region"].astype(str))]
        if missing:  # no voxel at all (outside the field of view): still a row, flagged
            s = pd.concat([s.astype({"region": str}),
                           pd.DataFrame({"participant_id": row.participant_id,
                                         "session": row.session, "region": missing,
                                         "n_voxels": 0, "n_excluded": 0})],
                          ignore_index=True)
        regions = s["region"].astype(str)
        s["coverage_fov"] = regions.map(cov.get("fov", {})).astype(float)
        s["coverage_brain"] = regions.map(cov.get("brain", {})).astype(float)
        for col in ("snr_b0", "flags"):
            if hasattr(row, col):
                val = getattr(row, col)
                s[f"qc_{col}"] = ";".join(val) if isinstance(val, list) else val
        frames.append(s)
    cols = ["participant_id", "session", "region", "md_mean", "md_median", "md_wmean",
            "n_voxels", "n_excluded", "coverage_fov", "coverage_brain", "qc_snr_b0",
            "qc_flags", "flag"]
    roi_md = (pd.concat(frames, ignore_index=True) if frames
              else pd.DataFrame(columns=cols))
    if len(roi_md):
        roi_md = apply_coverage(roi_md, min_coverage=config.min_coverage)
        # A region with no voxel left (a high probability threshold, a guard)
        # has no MD: say so, also when coverage is not checked.
        empty = (pd.to_numeric(roi_md["n_voxels"], errors="coerce").fillna(0).eq(0)
                 & roi_md["flag"].fillna("").astype(str).eq(""))
        roi_md.loc[empty, "flag"] = "no_voxels"
    if len(roi_md):
        roi_md["region"] = roi_md["region"].astype(str)
        roi_md = roi_md.sort_values(["participant_id", "session", "region"],
                                    key=_session_order(pre, post)).reset_index(drop=True)
    value = f"md_{config.statistic}"
    wide = (roi_md.set_index(["participant_id", "region", "session"])[value]
            .unstack("session") if len(roi_md) else pd.DataFrame())
    if len(wide) and pre in wide.columns and post in wide.columns:
        # A region a visit does not cover stays, with n/a values and the reason.
        flags = (roi_md.set_index(["participant_id", "region", "session"])["flag"]
                 .unstack("session").reindex(wide.index))
        why = [";".join(dict.fromkeys(x for ses in (pre, post)
                                      for x in str(flags.at[ix, ses] if ses in flags
                                                   else "").split(";")
                                      if x and x != "nan"))
               for ix in wide.index]
        # A participant whose registration cannot be trusted keeps its
        # numbers, flagged (the statistics can leave flagged rows out).
        reg = {pid: [f for f in doc.get("summary", {}).get("flags", [])
                     if f != "atlas_partial_fov"] for pid, doc in coverage.items()}
        why = [";".join(filter(None, [w, *reg.get(ix[0], [])]))
               for w, ix in zip(why, wide.index, strict=True)]
        d = wide[[pre, post]].assign(flag=why)
        # Only participants with both visits processed have a ΔMD row; one
        # with a single visit is listed by load_study (and the run summary),
        # not given flags of the visit it has.
        ses_of = roi_md.groupby("participant_id")["session"].agg(set)
        both = {p for p, s in ses_of.items() if {pre, post} <= s}
        d = d[d.index.get_level_values("participant_id").isin(both)]
        d = d[d[[pre, post]].notna().all(axis=1) | (d["flag"] != "")].reset_index()
        d.columns = ["participant_id", "region", "md_pre", "md_post", "flag"]
        d["delta_md"] = d["md_post"] - d["md_pre"]
        d["pct_delta_md"] = 100.0 * d["delta_md"] / d["md_pre"]
        d = d[["participant_id", "region", "md_pre", "md_post", "delta_md", "pct_delta_md",
               "flag"]]
        arms = participants.set_index("participant_id")["arm"]
        d.insert(1, "arm", d["participant_id"].map(arms))
        order = {r: i for i, r in enumerate(pd.unique(roi_md["region"]))}
        d = d.sort_values(["participant_id", "region"],
                          key=lambda c: c.map(order) if c.name == "region" else c)
        roi_deltas = d.reset_index(drop=True)
    else:
        roi_deltas = pd.DataFrame(columns=["participant_id", "arm", "region", "md_pre",
                                           "md_post", "delta_md", "pct_delta_md", "flag"])
    return roi_md, roi_deltas


def _session_order(pre, post):
    order = {pre: 0, post: 1}

    def key(col):
        if col.name == "session":
            return col.map(lambda s: order.get(s, 2))
        return col
    return key


def run_pipeline(bids_dir, out_dir, *, pre: str = "pre", post: str = "post",
                 config: PipelineConfig | None = None, n_jobs: int = 1,
                 scheduler: str | None = None, participant_label=None, force: bool = False,
                 acq: str | None = None, run: str | None = None,
                 progress: bool = True, raw_dir=None) -> PipelineResult:
    """Run the pipeline on a BIDS study and write the cohort tables.

    Parameters
    ----------
    bids_dir : str or pathlib.Path
        Raw BIDS dataset (never written to).
    out_dir : str or pathlib.Path
        Derivatives folder (created; refused if inside ``bids_dir``).
    pre, post : str, default="pre", "post"
        Session labels.
    config : PipelineConfig, optional
        Processing choices.
    n_jobs : int, default=1
        ``1`` runs in this process without Dask; ``N > 1`` runs the
        sessions on Dask's local multiprocessing scheduler with N worker
        processes (one BLAS thread each).
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``), e.g. one
        started by dask-jobqueue on a cluster; overrides ``n_jobs``.
    participant_label : list of str, optional
        Only these participants (with or without ``sub-``).
    force : bool, default=False
        Recompute every session.
    acq, run : str, optional
        Select a DWI series when a session has several.
    progress : bool, default=True
        Show a progress bar.
    raw_dir : str or pathlib.Path, optional
        The raw BIDS dataset holding ``participants.tsv`` and the scores,
        when ``bids_dir`` is a derivatives folder (QSIPrep's) without them
        (never written to either).

    Returns
    -------
    PipelineResult
        Per-session status, failures and the cohort tables.
    """
    from tqdm.auto import tqdm

    from . import __version__
    from .study import load_study

    config = config or PipelineConfig()
    out = check_out_dir(bids_dir, out_dir)
    if raw_dir is not None:
        check_out_dir(raw_dir, out_dir)
    study = load_study(bids_dir, pre=pre, post=post, acq=acq, run=run, raw_dir=raw_dir)
    sessions = study.sessions
    if participant_label:
        wanted = {p if str(p).startswith("sub-") else f"sub-{p}" for p in participant_label}
        unknown = wanted - set(study.participants["participant_id"])
        if unknown:
            raise InputError(f"--participant-label: {sorted(unknown)} not in "
                             f"{Path(bids_dir) / 'participants.tsv'}; check the labels")
        sessions = sessions[sessions["participant_id"].isin(wanted)]
    out.mkdir(parents=True, exist_ok=True)
    write_json({"Name": "ketamine-nb derivatives: DTI MD maps and study-region tables",
                "BIDSVersion": "1.10.0", "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "ketamine-nb", "Version": __version__,
                                 "Description": "load, mask, DTI fit (dipy), registration "
                                                f"to {TEMPLATE_SPACE} (dipy), study regions"}],
                "SourceDatasets": [{"URL": Path(bids_dir).resolve().as_uri()}]},
               out / "dataset_description.json")
    write_json(asdict(config), out / "pipeline_config.json")

    tasks = [(r.dwi, r.bval, r.bvec, str(out), r.participant_id, r.session, config, force)
             for r in sessions.itertuples()]
    # Sessions done before with the same parameters are settled here, so a
    # rerun starts no worker for them.
    reused = [] if force else [_reused(t[0], out, t[4], t[5], config, t[1], t[2])
                               for t in tasks]
    results = [r for r in reused if r is not None]
    todo = [t for t, r in zip(tasks, reused, strict=True) if r is None] if not force else tasks

    def new_bar():
        return tqdm(total=len(todo), desc="processing sessions", unit="session",
                    disable=not progress or not todo)

    if scheduler and todo:
        results += _run_on_cluster(todo, scheduler, new_bar)
    elif n_jobs > 1 and len(todo) > 1:
        results += _run_local(todo, n_jobs, new_bar, config)
    else:
        with new_bar() as bar:
            for t in todo:
                results.append(_task(t))
                _show(bar, results[-1])

    participants_done = _halfway_stage(out, sessions, results, config, pre=pre, post=post,
                                       n_jobs=n_jobs, scheduler=scheduler, force=force,
                                       progress=progress)
    halfway_failed = [r for r in participants_done if r["status"] == "failed"]

    status = pd.DataFrame(results)
    if len(status):
        status = status.sort_values(["participant_id", "session"],
                                    key=_session_order(pre, post)).reset_index(drop=True)
    else:
        status = pd.DataFrame(columns=["participant_id", "session", "status"])
    failed = status[status["status"] == "failed"] if len(status) else status
    rows = failed[["participant_id", "session", "error"]].to_dict("records") if len(failed) \
        else []
    # Participants who cannot get a pre/post delta (missing session, unusable
    # gradient files...) are failures too, with the loader's reason.
    wanted_ids = set(sessions["participant_id"]) | (
        {p if str(p).startswith("sub-") else f"sub-{p}" for p in participant_label}
        if participant_label else set(study.participants["participant_id"]))
    complete = set(study.complete_participants())
    problems = list(getattr(study, "problems", []))
    have = study.sessions.groupby("participant_id")["timepoint"].agg(set) \
        if len(study.sessions) else pd.Series(dtype=object)
    for pid in sorted(wanted_ids - complete):
        why = [p for p in problems if re.search(rf"\b{re.escape(pid)}\b", p)]
        # The session that is missing or unusable, when only one of the two is.
        lacking = [lab for lab, tp in ((pre, "pre"), (post, "post"))
                   if tp not in have.get(pid, set())]
        rows.append({"participant_id": pid,
                     "session": lacking[0] if len(lacking) == 1 else "n/a",
                     "error": "; ".join(why) or f"{pid}: no usable ses-{pre} and ses-{post} "
                                                "DWI pair; left out of the deltas"})
    for r in halfway_failed:
        rows.append({"participant_id": r["participant_id"], "session": "n/a",
                     "error": r["error"]})
    failures = pd.DataFrame(rows, columns=["participant_id", "session", "error"])
    write_tsv(failures, out / "failures.tsv")
    ok = status[status["status"] != "failed"] if len(status) else status
    if halfway_failed and len(ok):
        ok = ok[~ok["participant_id"].isin({r["participant_id"] for r in halfway_failed})]
    roi_md, roi_deltas = roi_tables(out, ok, study.participants, pre=pre, post=post,
                                    config=config)
    write_tsv(roi_md, out / "roi_md.tsv")
    write_tsv(roi_deltas, out / "roi_deltas.tsv")
    write_tsv(study.participants, out / "participants.tsv")
    if hasattr(study, "scores"):
        write_tsv(study.scores, out / "scores.tsv")
    return PipelineResult(out_dir=out, sessions=status, failures=failures, roi_md=roi_md,
                          roi_deltas=roi_deltas, problems=list(getattr(study, "problems", [])),
                          participants=pd.DataFrame(participants_done))


def _halfway_stage(out, sessions: pd.DataFrame, results: list, config: PipelineConfig, *,
                   pre: str, post: str, n_jobs: int, scheduler, force: bool,
                   progress: bool) -> list:
    """Run :func:`process_participant` for every participant with both sessions done."""
    from tqdm.auto import tqdm

    if config.atlas_registration is None:
        return []
    ok = {(r["participant_id"], r["session"]) for r in results if r.get("status") != "failed"}
    by_pid: dict = {}
    for r in sessions.itertuples():
        by_pid.setdefault(r.participant_id, {})[r.session] = (
            r.session, r.dwi, r.bval, r.bvec, bool(getattr(r, "preprocessed", False)))
    tasks = [(str(out), pid, {"pre": ss[pre], "post": ss[post]}, config, force)
             for pid, ss in sorted(by_pid.items())
             if pre in ss and post in ss and (pid, pre) in ok and (pid, post) in ok]
    reused = [] if force else [_participant_reused(t[0], t[1], t[2], config) for t in tasks]
    done = [r for r in reused if r is not None]
    todo = tasks if force else [t for t, r in zip(tasks, reused, strict=True) if r is None]

    def new_bar():
        return tqdm(total=len(todo), desc="both visits in one space", unit="participant",
                    disable=not progress or not todo)

    def lost(t, broken):
        return {"participant_id": t[1], "status": "failed",
                "error": f"{t[1]}: halfway space not done: a worker process died"
                         f"{' (killed for memory?)' if broken else ''}; rerun (done "
                         "participants are reused), with fewer --n-jobs if memory is short"}

    if scheduler and todo:
        done += _run_on_cluster(todo, scheduler, new_bar, fn=_participant_task)
    elif n_jobs > 1 and len(todo) > 1:
        done += _run_local(todo, n_jobs, new_bar, config, fn=_participant_task, lost=lost)
    else:
        with new_bar() as bar:
            for t in todo:
                done.append(_participant_task(t))
                _show(bar, done[-1])
    return sorted(done, key=lambda r: r["participant_id"])
