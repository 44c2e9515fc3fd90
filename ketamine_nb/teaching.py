"""Didactic experiments the teaching notebooks run: what goes wrong, and how much.

Each function is a small experiment with a known answer (tested in
``tests/test_teaching.py``): a slice dropout planted in a DWI series, the
tensor fitted by several methods, a voxel with some CSF in it, a
registration moved on purpose, the registration error against the planted
head position. None is part of the analysis pipeline. Their figures are in
:mod:`ketamine_nb.plotting` (``plot_fit_methods``, ``plot_md_difference``,
``plot_partial_volume``, ``plot_registration_shift``); the summaries of the
results are in their own modules (:func:`ketamine_nb.stats.cohort_table`,
:func:`ketamine_nb.stats.study_comparison`,
:func:`ketamine_nb.robustness.robustness_summary`,
:func:`ketamine_nb.voxelwise.voxelwise_summary`, ...).

Conventions are the package's: MD in mm²/s in tables, Δ = post − pre, one
row per thing in every table.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd

from .exceptions import InputError
from .roi import DEFAULT_CSF_MD_THRESHOLD
from .tensor import DEFAULT_FIT_METHOD, FIT_METHODS

__all__ = [
    "BRAIN_POINTS_MNI",
    "compare_fit_methods",
    "md_percent_difference",
    "middle_slices",
    "partial_volume_md",
    "partial_volume_table",
    "planted_head_positions",
    "registration_errors",
    "visit_registration_errors",
    "registration_shift_table",
    "regions_in_session",
    "simulate_dropout",
    "tissue_tensors",
    "transform_error",
]

#: Points (MNI mm) spread over the brain where registration error is measured:
#: the centre, frontal and occipital poles' neighbourhood, the temporal lobes
#: and the vertex. A rigid error shows as a different displacement at each.
BRAIN_POINTS_MNI = np.array([[0.0, 0.0, 0.0], [0.0, 55.0, 5.0], [0.0, -85.0, 5.0],
                             [-50.0, -20.0, -15.0], [50.0, -20.0, -15.0],
                             [0.0, -20.0, 65.0]])

_AXES = {"x": 0, "y": 1, "z": 2}


# --------------------------------------------------------------------------
# Raw DWI and QC


def simulate_dropout(dwi_img, gtab, *, volume=None, slice_index=None, factor: float = 0.3):
    """Copy a DWI series with one slice of one volume darkened, as motion does.

    In 2D echo-planar imaging each slice is read out in tens of
    milliseconds; if the head moves while the diffusion gradients are on,
    the phase of the signal is scrambled and that slice of that volume
    loses much of its signal ("slice dropout"). A tensor fit reads the
    loss as fast diffusion along that gradient, so MD rises in that slice.

    Parameters
    ----------
    dwi_img : nibabel.Nifti1Image
        4D DWI (left unchanged).
    gtab : dipy.core.gradients.GradientTable
        Its gradients.
    volume : int, optional
        Volume to damage; default: the sixth diffusion-weighted volume (or
        the last one when there are fewer).
    slice_index : int, optional
        Slice along the third voxel axis; default: the middle one.
    factor : float, default=0.3
        Fraction of the signal kept in that slice (0-1).

    Returns
    -------
    nibabel.Nifti1Image
        float32 copy with ``data[:, :, slice_index, volume] *= factor``.
    """
    import nibabel as nib

    if not 0 <= factor <= 1:
        raise InputError("factor is the fraction of signal kept, between 0 and 1")
    data = np.array(dwi_img.dataobj, dtype=np.float32)
    if data.ndim != 4:
        raise InputError(f"a 4D DWI is needed, got shape {data.shape}")
    if volume is None:
        dw = np.flatnonzero(~np.asarray(gtab.b0s_mask))
        volume = int(dw[min(5, len(dw) - 1)])
    k = data.shape[2] // 2 if slice_index is None else int(slice_index)
    data[:, :, k, int(volume)] *= np.float32(factor)
    out = nib.Nifti1Image(data, dwi_img.affine)
    out.header.set_xyzt_units("mm", "sec")
    return out


# --------------------------------------------------------------------------
# The tensor


def middle_slices(mask_img, *, n_slices: int = 3):
    """Keep the mask in a few slices through the middle of the image.

    The slow tensor fits (NLLS, RESTORE) are compared on these voxels only,
    so that the comparison takes seconds. The slices are centred on the
    image's middle slice, the slice :func:`simulate_dropout` damages by
    default.

    Parameters
    ----------
    mask_img : nibabel.Nifti1Image
        3D brain mask.
    n_slices : int, default=3
        Number of slices kept (along the third voxel axis, the slice
        direction of an axial acquisition), centred on slice
        ``shape[2] // 2``.

    Returns
    -------
    nibabel.Nifti1Image
        uint8 mask, on the same grid.
    """
    import nibabel as nib

    m = np.asarray(mask_img.dataobj) > 0
    lo = max(m.shape[2] // 2 - (n_slices - 1) // 2, 0)
    out = np.zeros_like(m)
    out[:, :, lo:lo + n_slices] = m[:, :, lo:lo + n_slices]
    if not out.any():
        raise InputError("the mask has no voxel in the middle slices")
    return nib.Nifti1Image(out.astype(np.uint8), mask_img.affine)


def _fit(dwi_img, gtab, mask, method):
    """Tensor fit of the voxels of ``mask`` (dipy), one BLAS thread."""
    from dipy.reconst.dti import TensorModel
    from threadpoolctl import threadpool_limits

    data = np.asarray(dwi_img.dataobj, dtype=np.float32)
    m = np.asarray(mask.dataobj if hasattr(mask, "dataobj") else mask) > 0
    kwargs = {}
    if method == "RESTORE":
        from dipy.denoise.noise_estimate import estimate_sigma

        kwargs["sigma"] = float(np.median(estimate_sigma(data[..., gtab.b0s_mask])))
    with threadpool_limits(limits=1, user_api="blas"):
        fit = TensorModel(gtab, fit_method=method, **kwargs).fit(data[m])
    return m, fit


def tissue_tensors(dwi_img, gtab, mask, *, fit_method: str = DEFAULT_FIT_METHOD
                   ) -> pd.DataFrame:
    """One typical voxel of grey matter, white matter and CSF, with its tensor.

    The tensor is fitted in the mask; then, per tissue, the voxel with the
    median MD among those that look like the tissue is picked: white matter
    FA > 0.5; grey matter FA < 0.2 and 0.6 ≤ MD ≤ 1.0 (10⁻³ mm²/s); CSF
    MD > 2.5 (10⁻³ mm²/s). A tissue with no such voxel has no row.

    Parameters
    ----------
    dwi_img : nibabel.Nifti1Image
        4D DWI.
    gtab : dipy.core.gradients.GradientTable
        Its gradients (b in s/mm²).
    mask : nibabel.Nifti1Image or array-like
        Voxels fitted.
    fit_method : {"OLS", "WLS", "NLLS", "RESTORE"}, default="WLS"
        dipy's tensor fit.

    Returns
    -------
    pandas.DataFrame
        ``tissue``, ``i``, ``j``, ``k`` (voxel indices), ``l1``, ``l2``,
        ``l3`` (eigenvalues, largest first, mm²/s), ``md``, ``fa``.

    Notes
    -----
    MD = (l1 + l2 + l3) / 3: the mean of the diffusivities along the three
    axes of the tensor, the same whatever the fibres' orientation. FA measures
    how unequal they are (0 = the same in every direction, 1 = along one
    axis only).
    """
    method = str(fit_method).upper()
    m, fit = _fit(dwi_img, gtab, mask, method)
    evals = np.asarray(fit.evals, float)
    md, fa = np.asarray(fit.md, float), np.nan_to_num(np.asarray(fit.fa, float))
    ijk = np.argwhere(m)
    classes = {"white matter": fa > 0.5,
               "grey matter": (fa < 0.2) & (md >= 0.6e-3) & (md <= 1.0e-3),
               "CSF": md > 2.5e-3}
    rows = []
    for tissue, sel in classes.items():
        idx = np.flatnonzero(sel & np.isfinite(md))
        if idx.size == 0:
            continue
        pick = idx[np.argsort(md[idx], kind="stable")[(idx.size - 1) // 2]]
        rows.append({"tissue": tissue, "i": int(ijk[pick, 0]), "j": int(ijk[pick, 1]),
                     "k": int(ijk[pick, 2]), "l1": evals[pick, 0], "l2": evals[pick, 1],
                     "l3": evals[pick, 2], "md": md[pick], "fa": fa[pick]})
    return pd.DataFrame(rows, columns=["tissue", "i", "j", "k", "l1", "l2", "l3", "md", "fa"])


def compare_fit_methods(dwi_img, gtab, mask, *, methods=FIT_METHODS,
                        reference: str = DEFAULT_FIT_METHOD, reference_md=None,
                        return_maps: bool = False, repeats: int = 1):
    """Fit the tensor with several methods on the same voxels; MD and time of each.

    Parameters
    ----------
    dwi_img : nibabel.Nifti1Image
        4D DWI.
    gtab : dipy.core.gradients.GradientTable
        Its gradients.
    mask : nibabel.Nifti1Image
        Voxels fitted (keep it small for NLLS and RESTORE, e.g.
        :func:`middle_slices`).
    methods : sequence of str, default=("OLS", "WLS", "NLLS", "RESTORE")
        Fit methods (:data:`ketamine_nb.tensor.FIT_METHODS`).
    reference : str, default="WLS"
        Method the others are compared with (the pipeline's default fit);
        it must be in ``methods`` unless ``reference_md`` is given.
    reference_md : nibabel.Nifti1Image, optional
        An MD map (mm²/s, same grid) to compare with instead, e.g. the fit
        of the same session before it was damaged.
    return_maps : bool, default=False
        Also return the MD maps.
    repeats : int, default=1
        Fit each method this many times and keep the fastest time (as
        :mod:`timeit` advises: the minimum is the least disturbed by other
        work on the machine, and a first call's warm-up drops out). Use 3 or
        more when the times themselves are the question.

    Returns
    -------
    table : pandas.DataFrame
        One row per method: ``fit_method``, ``n_voxels``, ``md_mean``,
        ``md_median``, ``md_sd`` (mm²/s), ``median_diff_percent`` (median
        over voxels of 100 × (MD − MD_reference) / MD_reference),
        ``p95_abs_diff_percent`` (95th percentile of its absolute value) and
        ``seconds`` (wall-clock time of the fit, the fastest of
        ``repeats``) and ``us_per_voxel`` (that time per voxel, µs).
    maps : dict of str -> nibabel.Nifti1Image
        With ``return_maps``: the MD map (mm²/s) of each method.
    """
    from .tensor import fit_dti

    methods = [str(m).upper() for m in methods]
    unknown = [m for m in methods if m not in FIT_METHODS]
    if unknown:
        raise InputError(f"fit method(s) {unknown} unknown; use {', '.join(FIT_METHODS)}")
    reference = str(reference).upper()
    if reference_md is None and reference not in methods:
        raise InputError(f"the reference {reference!r} must be one of the methods compared")
    if int(repeats) < 1:
        raise InputError(f"repeats={repeats!r}: fit each method at least once (repeats >= 1)")
    m = np.asarray(mask.dataobj) > 0
    maps, seconds = {}, {}
    for method in methods:
        times = []
        for _ in range(int(repeats)):
            t0 = time.perf_counter()
            maps[method] = fit_dti(dwi_img, gtab, mask=mask, fit_method=method)[0]
            times.append(time.perf_counter() - t0)
        seconds[method] = min(times)
    ref_img = maps[reference] if reference_md is None else reference_md
    if ref_img.shape != m.shape:
        raise InputError(f"reference_md has shape {ref_img.shape}, the mask {m.shape}")
    ref = np.asarray(ref_img.dataobj, float)[m]
    rows = []
    for method in methods:
        v = np.asarray(maps[method].dataobj, float)[m]
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = 100.0 * (v - ref) / ref
        diff = diff[np.isfinite(diff)]
        rows.append({"fit_method": method, "n_voxels": int(m.sum()), "md_mean": v.mean(),
                     "md_median": float(np.median(v)), "md_sd": v.std(ddof=1),
                     "median_diff_percent": float(np.median(diff)) if diff.size else np.nan,
                     "p95_abs_diff_percent": float(np.percentile(np.abs(diff), 95))
                     if diff.size else np.nan,
                     "seconds": round(seconds[method], 3),
                     "us_per_voxel": round(1e6 * seconds[method] / max(int(m.sum()), 1), 2)})
    table = pd.DataFrame(rows)
    return (table, maps) if return_maps else table


def md_percent_difference(md_img, reference_md):
    """Voxelwise difference between two MD maps, in percent of the reference.

    Parameters
    ----------
    md_img, reference_md : nibabel.Nifti1Image
        MD maps (mm²/s) on the same grid.

    Returns
    -------
    nibabel.Nifti1Image
        float32 map of 100 × (MD − MD_reference) / MD_reference where both
        maps are positive (fitted), 0 elsewhere.
    """
    import nibabel as nib

    a = np.asarray(md_img.dataobj, np.float64)
    b = np.asarray(reference_md.dataobj, np.float64)
    if a.shape != b.shape:
        raise InputError(f"the maps have different shapes: {a.shape} and {b.shape}")
    out = np.zeros(a.shape, np.float32)
    ok = (a > 0) & (b > 0)
    out[ok] = 100.0 * (a[ok] - b[ok]) / b[ok]
    return nib.Nifti1Image(out, reference_md.affine)


# --------------------------------------------------------------------------
# Partial volume


def partial_volume_md(csf_fraction, *, tissue_md: float = 0.8e-3, csf_md: float = 3.0e-3,
                      bval: float = 1000.0, csf_s0_ratio: float = 1.0):
    """Apparent MD of a voxel that mixes tissue and CSF.

    Parameters
    ----------
    csf_fraction : float or array-like
        Volume fraction of CSF in the voxel (0-1).
    tissue_md : float, default=0.8e-3
        MD of the tissue (mm²/s; grey matter is about 0.7-0.9e-3).
    csf_md : float, default=3.0e-3
        Diffusivity of CSF, free water at body temperature (mm²/s).
    bval : float, default=1000.0
        b-value (s/mm²).
    csf_s0_ratio : float, default=1.0
        b = 0 signal of CSF relative to tissue. CSF is brighter on a
        T2-weighted b0 (the simulated cohort uses 1.6), which gives it more
        weight than its volume.

    Returns
    -------
    float or numpy.ndarray
        Apparent MD (mm²/s).

    Notes
    -----
    Each compartment decays on its own, S(b) = (1 − f)·e^(−b·D_tissue) +
    f·r·e^(−b·D_CSF), with S(0) = (1 − f) + f·r; the tensor fit assumes one
    compartment and reports MD = −ln(S(b)/S(0)) / b. Because the CSF term
    has almost vanished at b = 1000 s/mm², a little CSF raises MD a lot:
    20 % CSF reads about 1.0e-3 mm²/s instead of 0.8e-3.
    """
    f = np.asarray(csf_fraction, float)
    if np.any((f < 0) | (f > 1)):
        raise InputError("csf_fraction is a volume fraction between 0 and 1")
    s0 = (1 - f) + f * csf_s0_ratio
    s = (1 - f) * np.exp(-bval * tissue_md) + f * csf_s0_ratio * np.exp(-bval * csf_md)
    out = -np.log(s / s0) / bval
    return float(out) if out.ndim == 0 else out


def partial_volume_table(csf_fractions=None, *, csf_md_threshold=DEFAULT_CSF_MD_THRESHOLD,
                         **kwargs) -> pd.DataFrame:
    """Apparent MD over a range of CSF fractions, and what the CSF guard keeps.

    Parameters
    ----------
    csf_fractions : array-like, optional
        CSF volume fractions; default 0 to 1 in steps of 0.05.
    csf_md_threshold : float or None, default=1.1e-3
        The pipeline's partial-volume guard (mm²/s,
        :data:`ketamine_nb.roi.DEFAULT_CSF_MD_THRESHOLD`).
    **kwargs
        Passed to :func:`partial_volume_md` (``tissue_md``, ``csf_md``,
        ``bval``, ``csf_s0_ratio``).

    Returns
    -------
    pandas.DataFrame
        ``csf_fraction``, ``apparent_md`` (mm²/s), ``md_bias_percent``
        (relative to the pure tissue) and ``kept_by_guard`` (MD at or below
        the threshold; always True with ``None``).
    """
    f = np.round(np.arange(0, 1.0001, 0.05), 4) if csf_fractions is None \
        else np.asarray(csf_fractions, float)
    md = np.atleast_1d(partial_volume_md(f, **kwargs))
    tissue = partial_volume_md(0.0, **kwargs)
    kept = np.ones(md.shape, bool) if csf_md_threshold is None else md <= csf_md_threshold
    return pd.DataFrame({"csf_fraction": np.atleast_1d(f), "apparent_md": md,
                         "md_bias_percent": 100 * (md - tissue) / tissue,
                         "kept_by_guard": kept})


# --------------------------------------------------------------------------
# Registration and regions


def transform_error(estimated, true, points=BRAIN_POINTS_MNI) -> np.ndarray:
    """Distance (mm) between where two transforms put the same points.

    Parameters
    ----------
    estimated, true : array-like, shape (4, 4)
        MNI-to-native matrices (``x_native = A @ x_mni``).
    points : array-like, shape (n, 3), default=BRAIN_POINTS_MNI
        Points in MNI mm.

    Returns
    -------
    numpy.ndarray, shape (n,)
        ``|A_estimated x − A_true x|`` per point, in mm.
    """
    A, T = np.asarray(estimated, float), np.asarray(true, float)
    p = np.asarray(points, float)
    return np.linalg.norm(p @ A[:3, :3].T + A[:3, 3] - (p @ T[:3, :3].T + T[:3, 3]), axis=1)


def registration_errors(results, *, points=BRAIN_POINTS_MNI) -> pd.DataFrame:
    """Registration error of every session against the planted head position.

    Only the simulated cohort knows where each head really was
    (``derivatives/simulation/head_motion.tsv`` in the raw dataset); real
    data do not, and are checked by eye (:func:`ketamine_nb.plotting.plot_registration`).

    Parameters
    ----------
    results : ketamine_nb.results.Results
        Results of a simulated cohort.
    points : array-like, shape (n, 3), default=BRAIN_POINTS_MNI
        Where the error is measured (MNI mm).

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``session``, ``planted_rotation_deg`` (largest
        planted rotation about an axis), ``planted_translation_mm`` (length
        of the planted translation), ``mean_error_mm`` and ``max_error_mm``
        (over the points).
    """
    motion = _planted_positions(results)
    done = set(map(tuple, results.sessions.to_numpy()))
    rows = []
    for r in motion.itertuples():
        if (r.participant_id, str(r.session)) not in done:
            continue
        err = transform_error(results.transform(r.participant_id, str(r.session)),
                              np.array(json.loads(r.mni_to_scanner)), points)
        rows.append({"participant_id": r.participant_id, "session": str(r.session),
                     "planted_rotation_deg": float(np.max(np.abs(
                         [r.rot_x_deg, r.rot_y_deg, r.rot_z_deg]))),
                     "planted_translation_mm": float(np.linalg.norm(
                         [r.trans_x_mm, r.trans_y_mm, r.trans_z_mm])),
                     "mean_error_mm": float(err.mean()), "max_error_mm": float(err.max())})
    return pd.DataFrame(rows)


def _planted_positions(results) -> pd.DataFrame:
    """Read the simulator's ``head_motion.tsv`` of these results' raw dataset."""
    if results.bids_dir is None:
        raise InputError("the raw dataset of these results is unknown")
    path = results.bids_dir / "derivatives" / "simulation" / "head_motion.tsv"
    if not path.is_file():
        raise InputError(f"{path}: not found; only the simulated cohort knows the true head "
                         "positions. Check real data by eye with plot_registration")
    return pd.read_csv(path, sep="\t")


def planted_head_positions(results) -> pd.Series:
    """Where the simulator placed each session's head: the true template-to-scanner maps.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        Results of a simulated cohort (its raw dataset holds
        ``derivatives/simulation/head_motion.tsv``).

    Returns
    -------
    pandas.Series
        Indexed by (``participant_id``, ``session``); each value a 4 x 4
        array mapping template (MNI) mm to the session's scanner mm.
    """
    motion = _planted_positions(results)
    return pd.Series([np.array(json.loads(m)) for m in motion["mni_to_scanner"]],
                     index=pd.MultiIndex.from_arrays(
                         [motion["participant_id"], motion["session"].astype(str)],
                         names=["participant_id", "session"]), name="mni_to_scanner")


def visit_registration_errors(results, *, pre: str = "pre", post: str = "post",
                              points=BRAIN_POINTS_MNI) -> pd.DataFrame:
    """Error of each participant's post-to-pre registration against the planted positions.

    Both visits of a participant show the same brain, so the true
    post-to-pre map is known exactly on the simulated cohort: ``P_post
    P_pre^-1`` with ``P`` each session's planted template-to-scanner
    transform. The estimate is the pipeline's: ``M_post M_pre^-1`` with
    ``M`` each visit's transform from the halfway space
    (``xfm_halfway``, x_visit = M x_halfway). The error is measured where the
    two maps put the ``points`` of the pre visit's head, i.e. between
    ``M_post M_pre^-1 P_pre`` and ``P_post`` applied to the template points.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        Results of a simulated cohort.
    pre, post : str, default="pre", "post"
        Session labels.
    points : array-like, shape (n, 3), default=BRAIN_POINTS_MNI
        Where the error is measured (MNI mm).

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``mean_error_mm`` and ``max_error_mm`` (over the
        points), for every participant with both visits done.
    """
    from .registration import read_transform

    planted = planted_head_positions(results)
    done = results.sessions.groupby("participant_id")["session"].agg(set)
    rows = []
    for pid, sessions in done.items():
        if not {pre, post} <= sessions:
            continue
        m_pre, m_post = (read_transform(results.paths(pid, ses)["xfm_halfway"])
                         for ses in (pre, post))
        err = transform_error(m_post @ np.linalg.inv(m_pre) @ planted[(pid, pre)],
                              planted[(pid, post)], points)
        rows.append({"participant_id": pid, "mean_error_mm": float(err.mean()),
                     "max_error_mm": float(err.max())})
    return pd.DataFrame(rows, columns=["participant_id", "mean_error_mm", "max_error_mm"])


def _shift(vector) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = np.asarray(vector, float)
    return t


def regions_in_session(results, participant_id: str, session: str, *, shift_mm=(0, 0, 0)):
    """Bring the study regions to one session's DWI grid with its affine transform.

    The pipeline's own regions are also refined by a nonlinear (SyN)
    registration; this affine version is what the registration-error
    experiment (:func:`registration_shift_table`) moves on purpose.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        Pipeline results.
    participant_id, session : str
        The session.
    shift_mm : sequence of 3 float, default=(0, 0, 0)
        Move the regions by this much in template space (x: left to right,
        y: back to front, z: bottom to top, mm) before bringing them over:
        a registration error made on purpose.

    Returns
    -------
    img : nibabel.Nifti1Image
        4D probabilities (0-1), one volume per region, on the DWI grid.
    names : list of str
        Region names, in volume order.
    """
    from .regions import load_region_maps
    from .registration import apply_transform

    maps = load_region_maps(table=results.config.get("regions"))
    A = results.transform(participant_id, session) @ _shift(shift_mm)
    md = results.image(participant_id, session, "md")
    return apply_transform(maps.img, A, target=md, direction="to_native"), list(maps.names)


def registration_shift_table(results, participant_id: str, session: str, *,
                             shifts_mm=(0, 2, 4, 6), axis: str = "z",
                             probability_threshold=None,
                             csf_md_threshold="configured") -> pd.DataFrame:
    """Regional MD of one session when the regions are misplaced on purpose.

    The regions are moved by each shift along ``axis`` in template space
    (:func:`regions_in_session`), their voxels collected from the session's
    MD map and summarised as the pipeline does. The regions are brought with
    the session's affine transform only; the pipeline refines the atlas
    registration (SyN, once per participant), so shift 0 is close to
    ``Results.roi_md`` (within a few percent) but not equal to it. What the
    experiment shows is the change with the shift, relative to its own shift 0.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        Pipeline results.
    participant_id, session : str
        The session.
    shifts_mm : sequence of float, default=(0, 2, 4, 6)
        Shifts (mm); 0 should be among them, as the reference.
    axis : {"x", "y", "z"}, default="z"
        Direction of the shift (template space).
    probability_threshold : float, optional
        Atlas probability threshold; default: the pipeline's.
    csf_md_threshold : float, None or "configured", default="configured"
        CSF guard (mm²/s); ``None`` switches it off; ``"configured"`` is the
        pipeline's.

    Returns
    -------
    pandas.DataFrame
        ``shift_mm``, ``region``, ``md_mean`` (mm²/s), ``n_voxels``,
        ``n_excluded`` and ``md_change_percent`` (relative to shift 0, NaN
        without a 0 shift).
    """
    from .pipeline import PipelineConfig
    from .roi import extract_region_voxels, summarise_regions

    if axis not in _AXES:
        raise InputError(f"axis must be x, y or z, not {axis!r}")
    default = PipelineConfig()
    cfg = results.config or {}
    pthr = cfg.get("probability_threshold", default.probability_threshold) \
        if probability_threshold is None else probability_threshold
    cthr = cfg.get("csf_md_threshold", default.csf_md_threshold) \
        if csf_md_threshold == "configured" else csf_md_threshold
    md = results.image(participant_id, session, "md")
    fa = results.image(participant_id, session, "fa")
    mask = results.image(participant_id, session, "mask")
    frames = []
    for s in shifts_mm:
        vec = np.zeros(3)
        vec[_AXES[axis]] = float(s)
        img, names = regions_in_session(results, participant_id, session, shift_mm=vec)
        vox = extract_region_voxels(md, fa, mask, img, names)
        t = summarise_regions(vox, probability_threshold=pthr, csf_md_threshold=cthr)
        t.insert(0, "shift_mm", float(s))
        frames.append(t.drop(columns=["md_median"]))
    out = pd.concat(frames, ignore_index=True)
    out["region"] = out["region"].astype(str)
    base = out[out["shift_mm"] == 0].set_index("region")["md_mean"]
    out["md_change_percent"] = 100 * (out["md_mean"] / out["region"].map(base) - 1)
    return out


