"""Small helpers the teaching notebooks call: tidy tables and a few didactic figures.

Each notebook cell in ``notebooks/`` is a few lines calling the package; what
a cell would otherwise compute in a loop lives here, tested with known
answers in ``tests/test_teaching.py``. Nothing here is part of the analysis
pipeline: these functions restate, compare and summarise what the pipeline
and the statistics computed, or run small didactic experiments (a slice
dropout, a shifted registration, a voxel with some CSF in it).

Conventions are the package's: MD in mm²/s in tables (10⁻³ mm²/s in
figures), Δ = post − pre, one row per thing in every table.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd

from .exceptions import InputError
from .regions import STUDY_REGIONS
from .roi import DEFAULT_CSF_MD_THRESHOLD
from .stats import OUTCOMES, STUDY_DIRECTIONS
from .tensor import DEFAULT_FIT_METHOD, FIT_METHODS

__all__ = [
    "BRAIN_POINTS_MNI",
    "REPORTED_PATTERN",
    "clinical_summary",
    "cohort_table",
    "compare_fit_methods",
    "delta_summary",
    "gradients_frame",
    "mean_delta_md_map",
    "middle_slices",
    "multiple_comparisons",
    "partial_volume_md",
    "partial_volume_table",
    "md_percent_difference",
    "plot_fit_methods",
    "plot_md_difference",
    "plot_partial_volume",
    "plot_registration_shift",
    "plot_score_change",
    "registration_errors",
    "registration_shift_table",
    "regions_in_session",
    "robustness_summary",
    "session_qc_table",
    "simulate_dropout",
    "study_comparison",
    "study_pattern",
    "tissue_tensors",
    "transform_error",
    "truth_agreement",
    "voxelwise_summary",
]

#: What the paper's abstract reports per region (Kopelman et al. 2023; see
#: ``STUDY.md``). The signs are :data:`ketamine_nb.stats.STUDY_DIRECTIONS`;
#: this is the same pattern in words, with the reported p-values.
REPORTED_PATTERN = {
    "BA10_L": "MD decrease went with improvement, mainly in the ketamine arm "
              "(interaction p = 0.016-0.082)",
    "BA10_R": "MD decrease went with improvement in both arms (p = 0.007)",
    "amygdala_L": "MD decrease went with improvement, mainly in the ketamine arm "
                  "(interaction p = 0.016-0.082)",
    "amygdala_R": "not reported",
    "hippocampus_L": "MD increase went with improvement in the ketamine arm, MADRS only "
                     "(p = 0.032-0.06)",
    "hippocampus_R": "MD increase went with improvement in the ketamine arm, MADRS only "
                     "(p = 0.032-0.06)",
    "vACC": "nothing reported",
}

#: Points (MNI mm) spread over the brain where registration error is measured:
#: the centre, frontal and occipital poles' neighbourhood, the temporal lobes
#: and the vertex. A rigid error shows as a different displacement at each.
BRAIN_POINTS_MNI = np.array([[0.0, 0.0, 0.0], [0.0, 55.0, 5.0], [0.0, -85.0, 5.0],
                             [-50.0, -20.0, -15.0], [50.0, -20.0, -15.0],
                             [0.0, -20.0, 65.0]])

_AXES = {"x": 0, "y": 1, "z": 2}


def _sign(value) -> str:
    return {1: "+", -1: "−"}.get(int(value), "0")


# --------------------------------------------------------------------------
# The study


def study_pattern() -> pd.DataFrame:
    """Return the pattern the paper reports, one row per study region.

    Returns
    -------
    pandas.DataFrame
        ``region``, ``ketamine`` and ``saline`` (+1: a larger MD *decrease*
        went with a larger improvement; −1: an MD *increase* did; 0: nothing
        reported for that arm) and ``reported`` (the abstract in words, with
        its p-values). From :data:`ketamine_nb.stats.STUDY_DIRECTIONS` and
        :data:`REPORTED_PATTERN`.

    Notes
    -----
    Δ = post − pre for MD and for the scores, and a lower score is better,
    so +1 is a positive slope of Δscore on ΔMD.
    """
    rows = []
    for region in STUDY_REGIONS:
        d = STUDY_DIRECTIONS.get(region, {})
        rows.append({"region": region, "ketamine": int(d.get("ketamine", 0)),
                     "saline": int(d.get("saline", 0)),
                     "reported": REPORTED_PATTERN.get(region, "not reported")})
    return pd.DataFrame(rows)


def study_comparison(stats_roi: pd.DataFrame, *, outcome: str | None = None,
                     alpha: float = 0.05) -> pd.DataFrame:
    """Set the paper's reported pattern beside this analysis, region by region.

    Parameters
    ----------
    stats_roi : pandas.DataFrame
        ``Results.stats_roi`` (from :func:`ketamine_nb.stats.region_stats`).
    outcome : str, optional
        Keep one outcome (``"madrs"`` or ``"qids"``); default: all rows.
    alpha : float, default=0.05
        Level for ``significant`` (the corrected q of the interaction).

    Returns
    -------
    pandas.DataFrame
        ``region``, ``outcome``, ``reported`` (the abstract in words),
        ``study_direction`` (the reported signs), ``slope_ketamine``,
        ``slope_saline`` (Δscore points per 10⁻⁶ mm²/s of ΔMD),
        ``p_slope_ketamine``, ``p_slope_saline``, ``beta_interaction``,
        ``p_interaction``, ``p_perm_interaction``, ``q`` (FDR or Holm),
        ``matches_study`` (every reported sign has the same sign here),
        ``verdict`` (``"same direction"``, ``"opposite direction"``,
        ``"not reported"`` or ``"not estimated"``) and ``significant``
        (``q < alpha``).

    Notes
    -----
    A matching *direction* is not a replication: the interaction may be far
    from significant. For right BA10 the paper reports the relation in both
    arms, so no arm difference (interaction) is expected there; read the two
    simple slopes and their p-values instead.
    """
    t = stats_roi if outcome is None else stats_roi[stats_roi["outcome"] == outcome]
    if t.empty:
        raise InputError(f"no rows for outcome {outcome!r}")
    qcol = next((c for c in ("q_fdr", "q_holm") if c in t), None)
    out = pd.DataFrame({
        "region": t["region"].to_numpy(), "outcome": t["outcome"].to_numpy(),
        "reported": [REPORTED_PATTERN.get(r, "not reported") for r in t["region"]]})
    for col in ("study_direction", "slope_ketamine", "slope_saline", "p_slope_ketamine",
                "p_slope_saline", "beta_interaction", "p_interaction", "p_perm_interaction"):
        out[col] = t[col].to_numpy() if col in t else np.nan
    out["q"] = t[qcol].to_numpy(float) if qcol else np.nan
    verdicts, matches = [], []
    for region, sk, ss in zip(out["region"], out["slope_ketamine"], out["slope_saline"],
                              strict=True):
        expected = STUDY_DIRECTIONS.get(region, {})
        slopes = {"ketamine": sk, "saline": ss}
        if not expected:
            verdicts.append("not reported")
            matches.append(np.nan)
        elif not all(np.isfinite(slopes[a]) for a in expected):
            verdicts.append("not estimated")
            matches.append(np.nan)
        else:
            ok = all(np.sign(slopes[a]) == s for a, s in expected.items())
            verdicts.append("same direction" if ok else "opposite direction")
            matches.append(ok)
    out["matches_study"] = pd.array(matches, dtype="boolean")
    out["verdict"] = verdicts
    out["significant"] = out["q"].to_numpy(float) < alpha
    return out


# --------------------------------------------------------------------------
# Raw DWI and QC


def gradients_frame(gtab) -> pd.DataFrame:
    """Return the gradient table as a tidy table, one row per volume.

    Parameters
    ----------
    gtab : dipy.core.gradients.GradientTable
        Gradients (b-values in s/mm²).

    Returns
    -------
    pandas.DataFrame
        ``volume``, ``bval`` (s/mm²), ``x``, ``y``, ``z`` (the unit
        direction; 0 for b = 0) and ``b0`` (True for the b = 0 volumes).
    """
    g = np.asarray(gtab.bvecs, float)
    return pd.DataFrame({"volume": np.arange(len(gtab.bvals)),
                         "bval": np.asarray(gtab.bvals, float), "x": g[:, 0], "y": g[:, 1],
                         "z": g[:, 2], "b0": np.asarray(gtab.b0s_mask, bool)})


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


def session_qc_table(results) -> pd.DataFrame:
    """Return the QC metrics of every processed session, one row each.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        From :func:`ketamine_nb.load_results`.

    Returns
    -------
    pandas.DataFrame
        ``participant_id``, ``session``, ``snr_b0``, ``mask_volume_ml``,
        ``n_outlier_volumes``, ``n_outlier_slices`` and ``qc_flags``
        (``;``-separated, empty when all is well), read from each session's
        ``*_desc-qc_dwi.json`` (see :func:`ketamine_nb.dwi.qc_session`).
    """
    from .pipeline import session_paths

    rows = []
    for pid, ses in results.sessions.itertuples(index=False):
        doc = json.loads(session_paths(results.out_dir, pid, ses)["qc"].read_text())
        qc = doc.get("qc", {})
        rows.append({"participant_id": pid, "session": ses, "snr_b0": qc.get("snr_b0"),
                     "mask_volume_ml": qc.get("mask_volume_ml"),
                     "n_outlier_volumes": len(qc.get("outlier_volumes", [])),
                     "n_outlier_slices": len(qc.get("outlier_slices", [])),
                     "qc_flags": ";".join(qc.get("flags", []))})
    return pd.DataFrame(rows)


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
                        return_maps: bool = False):
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

    Returns
    -------
    table : pandas.DataFrame
        One row per method: ``fit_method``, ``n_voxels``, ``md_mean``,
        ``md_median``, ``md_sd`` (mm²/s), ``median_diff_percent`` (median
        over voxels of 100 × (MD − MD_reference) / MD_reference),
        ``p95_abs_diff_percent`` (95th percentile of its absolute value) and
        ``seconds`` (wall-clock time of the fit).
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
    m = np.asarray(mask.dataobj) > 0
    maps, seconds = {}, {}
    for method in methods:
        t0 = time.perf_counter()
        maps[method] = fit_dti(dwi_img, gtab, mask=mask, fit_method=method)[0]
        seconds[method] = time.perf_counter() - t0
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
                     "seconds": round(seconds[method], 3)})
    table = pd.DataFrame(rows)
    return (table, maps) if return_maps else table


def plot_fit_methods(maps: dict, mask, *, reference: str = DEFAULT_FIT_METHOD):
    """Voxel MD of each fit method against the reference method.

    Parameters
    ----------
    maps : dict of str -> nibabel.Nifti1Image
        MD maps by method (from ``compare_fit_methods(..., return_maps=True)``).
    mask : nibabel.Nifti1Image
        The voxels compared.
    reference : str, default="WLS"
        The method on the x-axis.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per other method: a point per voxel (10⁻³ mm²/s) and the
        identity line; points off the line are voxels where the methods
        disagree.
    """
    import matplotlib.pyplot as plt

    from .plotting import MD_SCALE

    if reference not in maps:
        raise InputError(f"no map for the reference {reference!r}")
    m = np.asarray(mask.dataobj) > 0
    others = [k for k in maps if k != reference]
    fig, axs = plt.subplots(1, max(len(others), 1), figsize=(3.3 * max(len(others), 1), 3.4),
                            layout="constrained", squeeze=False)
    x = np.asarray(maps[reference].dataobj, float)[m] * MD_SCALE
    for ax, name in zip(axs[0], others, strict=False):
        y = np.asarray(maps[name].dataobj, float)[m] * MD_SCALE
        ax.scatter(x, y, s=3, alpha=0.3, color="#0072B2", edgecolor="none")
        ax.plot([0, 3.5], [0, 3.5], color="0.3", lw=0.8, ls="--")
        ax.set(xlim=(0, 3.5), ylim=(0, 3.5), aspect="equal", title=name,
               xlabel=f"{reference} MD (10⁻³ mm²/s)", ylabel=f"{name} MD (10⁻³ mm²/s)")
    fig.suptitle(f"Tensor fit methods against {reference}, {int(m.sum())} voxels", fontsize=10)
    return fig


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


def plot_md_difference(md_img, reference_md, *, display_mode: str = "x", cut_coords=None,
                       vmax=None, threshold: float = 0.5, title=None):
    """Show where an MD map differs from a reference, in percent, over the reference.

    Parameters
    ----------
    md_img, reference_md : nibabel.Nifti1Image
        MD maps (mm²/s) on the same grid.
    display_mode : str, default="x"
        nilearn display mode (``"x"``: sagittal views, where a damaged axial
        slice shows as a horizontal line).
    cut_coords : sequence of float, optional
        Cut positions (world mm); default: nilearn's choice.
    vmax : float, optional
        Colour range ±vmax (%); default: the 99th percentile of |difference|
        over the voxels that differ.
    threshold : float, default=0.5
        Differences smaller than this (%, either sign) are not coloured.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        The percent difference (:func:`md_percent_difference`) in diverging
        colours (red: higher than the reference) over the reference map.
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from nilearn import plotting

    diff = md_percent_difference(md_img, reference_md)
    d = np.abs(np.asarray(diff.dataobj))
    if vmax is None:
        vmax = float(np.percentile(d[d > 0], 99)) if np.any(d > 0) else 1.0
    fig = plt.figure(figsize=(10, 4))
    plotting.plot_stat_map(diff, bg_img=reference_md, display_mode=display_mode,
                           cut_coords=cut_coords, figure=fig, axes=(0.0, 0.04, 0.88, 0.86),
                           cmap="RdBu_r", vmin=-vmax, vmax=vmax, symmetric_cbar=True,
                           threshold=threshold, colorbar=False, black_bg=True,
                           draw_cross=False)
    cax = fig.add_axes((0.9, 0.18, 0.018, 0.64))
    fig.colorbar(ScalarMappable(Normalize(-vmax, vmax), "RdBu_r"), cax=cax,
                 label="MD difference (% of the reference)")
    fig.suptitle(title or "MD difference from the reference (% of the reference)", fontsize=11)
    return fig


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


def plot_partial_volume(table: pd.DataFrame | None = None, *,
                        csf_md_threshold=DEFAULT_CSF_MD_THRESHOLD, ax=None):
    """Apparent MD against the CSF fraction, with the CSF guard.

    Parameters
    ----------
    table : pandas.DataFrame, optional
        From :func:`partial_volume_table`; default: its defaults.
    csf_md_threshold : float or None, default=1.1e-3
        Guard drawn as a horizontal line (mm²/s).
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.

    Returns
    -------
    matplotlib.figure.Figure
        The curve in 10⁻³ mm²/s: points kept by the guard filled, dropped
        open.
    """
    import matplotlib.pyplot as plt

    from .plotting import MD_SCALE

    t = partial_volume_table(csf_md_threshold=csf_md_threshold) if table is None else table
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.2, 3.8), layout="constrained")
    else:
        fig = ax.figure
    x, y = 100 * t["csf_fraction"].to_numpy(), t["apparent_md"].to_numpy() * MD_SCALE
    kept = t["kept_by_guard"].to_numpy(bool)
    ax.plot(x, y, color="0.5", lw=1)
    ax.scatter(x[kept], y[kept], color="#009E73", zorder=3, label="kept by the CSF guard")
    ax.scatter(x[~kept], y[~kept], facecolor="white", edgecolor="#CC79A7", zorder=3,
               label="dropped by the CSF guard")
    if csf_md_threshold is not None:
        ax.axhline(csf_md_threshold * MD_SCALE, color="#CC79A7", ls="--", lw=1,
                   label=f"guard: MD ≤ {csf_md_threshold * MD_SCALE:g}")
    ax.set(xlabel="CSF in the voxel (% of its volume)", ylabel="apparent MD (10⁻³ mm²/s)",
           title="Partial volume: a little CSF raises MD a lot")
    ax.legend(fontsize=8, loc="upper left")
    return fig


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
    if results.bids_dir is None:
        raise InputError("the raw dataset of these results is unknown")
    path = results.bids_dir / "derivatives" / "simulation" / "head_motion.tsv"
    if not path.is_file():
        raise InputError(f"{path}: not found; only the simulated cohort knows the true head "
                         "positions. Check real data by eye with plot_registration")
    motion = pd.read_csv(path, sep="\t")
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


def _shift(vector) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = np.asarray(vector, float)
    return t


def regions_in_session(results, participant_id: str, session: str, *, shift_mm=(0, 0, 0)):
    """Bring the study regions to one session's DWI grid, as the pipeline does.

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
    MD map and summarised as the pipeline does. Shift 0 gives the pipeline's
    own numbers (``Results.roi_md``).

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


def plot_registration_shift(table: pd.DataFrame, *, ax=None):
    """Percent change of each region's MD against a deliberate registration shift.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`registration_shift_table`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.

    Returns
    -------
    matplotlib.figure.Figure
        One line per region (left solid, right dashed).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(5.8, 3.8), layout="constrained")
    else:
        fig = ax.figure
    for region, g in table.groupby("region", sort=False):
        ax.plot(g["shift_mm"], g["md_change_percent"], marker="o",
                ls="--" if str(region).endswith("_R") else "-", label=region)
    ax.axhline(0, color="0.5", lw=0.8, ls=":")
    ax.set(xlabel="regions shifted by (mm)", ylabel="change in regional MD (%)",
           title="What a registration error does to regional MD")
    ax.legend(fontsize=8, ncol=2)
    return fig


# --------------------------------------------------------------------------
# The cohort, the deltas, the truth


def cohort_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Who is in the cohort, per arm (a "table 1").

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per participant: ``arm``, optionally ``age``, ``sex`` and
        ``<outcome>_pre``/``_post`` (``Results.scores``).

    Returns
    -------
    pandas.DataFrame
        One row per arm: ``n``; ``age_mean``, ``age_sd`` and
        ``female_percent`` when the columns exist; the mean of every score
        column present (``madrs_pre``, ``madrs_post``, ``qids_pre``...).
    """
    if "arm" not in scores:
        raise InputError("the scores table needs an 'arm' column")
    g = scores.groupby("arm", sort=True)
    out = pd.DataFrame({"n": g.size()})
    if "age" in scores:
        out["age_mean"] = g["age"].mean()
        out["age_sd"] = g["age"].std(ddof=1)
    if "sex" in scores:
        out["female_percent"] = g["sex"].apply(lambda s: 100 * (s == "F").mean())
    for o in OUTCOMES:
        for ses in ("pre", "post"):
            col = f"{o}_{ses}"
            if col in scores:
                out[f"{col}_mean"] = g[col].mean()
    return out.reset_index()


def clinical_summary(scores: pd.DataFrame, *, outcomes=("madrs", "qids")) -> pd.DataFrame:
    """Score change, response and remission per arm and outcome.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per participant (``Results.scores``).
    outcomes : sequence of str, default=("madrs", "qids")
        Outcomes.

    Returns
    -------
    pandas.DataFrame
        ``outcome``, ``arm``, ``n`` (with both scores), ``pre_mean``,
        ``post_mean``, ``delta_mean`` and ``delta_sd`` (post − pre, points;
        negative = better), ``responders_percent`` (a reduction of at least
        50 %) and ``remitters_percent`` (post at or below the cut-off), from
        :func:`ketamine_nb.stats.clinical_change`.
    """
    from .stats import clinical_change

    c = clinical_change(scores, outcomes).dropna(subset=["delta_score"])
    g = c.groupby(["outcome", "arm"], sort=False)
    out = pd.DataFrame({"n": g.size(), "pre_mean": g["score_pre"].mean(),
                        "post_mean": g["score_post"].mean(),
                        "delta_mean": g["delta_score"].mean(),
                        "delta_sd": g["delta_score"].std(ddof=1),
                        "responders_percent": 100 * g["responder"].mean(),
                        "remitters_percent": 100 * g["remitter"].mean()})
    return out.reset_index()


def plot_score_change(scores: pd.DataFrame, *, outcome: str = "madrs", figure=None):
    """Each participant's score before and 24 h after the infusion, per arm.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per participant with ``arm`` and ``<outcome>_pre``/``_post``.
    outcome : {"madrs", "qids"}, default="madrs"
        Outcome shown.
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per arm: a thin line per participant, the arm's mean in
        bold, on the scale's full range.
    """
    import matplotlib.pyplot as plt

    from .plotting import ARM_COLORS

    if outcome not in OUTCOMES:
        raise InputError(f"outcome must be one of {', '.join(OUTCOMES)}")
    pre, post = f"{outcome}_pre", f"{outcome}_post"
    d = scores.dropna(subset=[pre, post])
    arms = [a for a in ARM_COLORS if a in set(d["arm"])] + \
        sorted(set(d["arm"]) - set(ARM_COLORS))
    fig = plt.figure(figsize=(3.2 * max(len(arms), 1) + 0.6, 3.8), layout="constrained") \
        if figure is None else figure
    fig.clf()
    axs = fig.subplots(1, max(len(arms), 1), sharey=True, squeeze=False)[0]
    label, top = OUTCOMES[outcome]["label"], OUTCOMES[outcome]["max"]
    for ax, arm in zip(axs, arms, strict=False):
        g = d[d["arm"] == arm]
        colour = ARM_COLORS.get(arm, "#999999")
        ax.plot([0, 1], g[[pre, post]].to_numpy(float).T, color=colour, alpha=0.25, lw=0.8)
        ax.plot([0, 1], g[[pre, post]].mean().to_numpy(float), color=colour, lw=3,
                marker="o", label="mean")
        ax.set(xticks=[0, 1], xticklabels=["pre", "24 h post"], xlim=(-0.2, 1.2),
               ylim=(0, top), title=f"{arm} (n = {len(g)})")
        ax.legend(fontsize=8, loc="lower left")
    axs[0].set_ylabel(f"{label} (0-{top}; lower = better)")
    fig.suptitle(f"{label} before and 24 h after the infusion", fontsize=11)
    return fig


def delta_summary(roi_deltas: pd.DataFrame) -> pd.DataFrame:
    """Mean ΔMD per region and arm.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``Results.roi_deltas`` (``region``, ``arm``, ``delta_md`` in mm²/s,
        ``pct_delta_md``).

    Returns
    -------
    pandas.DataFrame
        ``region``, ``arm``, ``n``, ``delta_md_mean``, ``delta_md_sd``
        (mm²/s), ``pct_delta_md_mean`` (percent of the pre value) and
        ``share_decreased`` (fraction of participants whose MD went down).
    """
    d = roi_deltas.dropna(subset=["delta_md"])
    g = d.groupby(["region", "arm"], sort=False)
    out = pd.DataFrame({"n": g.size(), "delta_md_mean": g["delta_md"].mean(),
                        "delta_md_sd": g["delta_md"].std(ddof=1),
                        "pct_delta_md_mean": g["pct_delta_md"].mean(),
                        "share_decreased": g["delta_md"].apply(lambda s: (s < 0).mean())})
    return out.reset_index()


def truth_agreement(roi_deltas: pd.DataFrame, ground_truth: pd.DataFrame) -> pd.DataFrame:
    """How close the measured ΔMD comes to the planted ΔMD, per region.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``Results.roi_deltas``.
    ground_truth : pandas.DataFrame
        ``Results.ground_truth`` (the simulation's ``ground_truth_roi.tsv``:
        ``delta_md`` is what a perfect measurement with the pipeline's CSF
        guard would report).

    Returns
    -------
    pandas.DataFrame
        ``region``, ``n``, ``r`` (Pearson, measured vs planted ΔMD; NaN
        below 3 participants), ``bias`` (mean measured − planted, mm²/s),
        ``rmse`` (mm²/s) and ``md_pre_error_percent`` (mean relative error
        of the pre-infusion MD itself).
    """
    if ground_truth is None:
        raise InputError("no ground truth: only the simulated cohort has one")
    d = roi_deltas[["participant_id", "region", "md_pre", "delta_md"]].merge(
        ground_truth[["participant_id", "region", "md_pre", "delta_md"]],
        on=["participant_id", "region"], suffixes=("", "_true")).dropna()
    rows = []
    for region, g in d.groupby("region", sort=False):
        x, y = g["delta_md_true"].to_numpy(float), g["delta_md"].to_numpy(float)
        r = np.corrcoef(x, y)[0, 1] if len(g) >= 3 and np.std(x) > 0 and np.std(y) > 0 \
            else np.nan
        rows.append({"region": region, "n": len(g), "r": r, "bias": float(np.mean(y - x)),
                     "rmse": float(np.sqrt(np.mean((y - x) ** 2))),
                     "md_pre_error_percent": float(100 * np.mean(
                         g["md_pre"] / g["md_pre_true"] - 1))})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------
# Beyond the study


def multiple_comparisons(stats_roi: pd.DataFrame, *, column: str = "p_interaction",
                         alpha: float = 0.05) -> pd.DataFrame:
    """How many tests pass at ``alpha`` with no correction, Bonferroni, Holm and FDR.

    Parameters
    ----------
    stats_roi : pandas.DataFrame
        A table with one p-value per test (``Results.stats_roi``).
    column : str, default="p_interaction"
        The p-value column (e.g. ``"p_perm_interaction"``).
    alpha : float, default=0.05
        Level; a test passes when its adjusted p is below it.

    Returns
    -------
    pandas.DataFrame
        One row per correction (``none``, ``bonferroni``, ``holm``,
        ``fdr_bh``): ``n_tests`` (finite p-values), ``n_significant``,
        ``controls`` (what the correction keeps at ``alpha``) and ``tests``
        (the region/outcome of each passing test, when the table has them).
    """
    from statsmodels.stats.multitest import multipletests

    if column not in stats_roi:
        raise InputError(f"no column {column!r} in the table")
    p = stats_roi[column].to_numpy(float)
    ok = np.isfinite(p)
    names = (stats_roi["region"].astype(str) + "/" + stats_roi["outcome"].astype(str)
             ).to_numpy() if {"region", "outcome"} <= set(stats_roi) \
        else np.arange(len(p)).astype(str)
    controls = {"none": "nothing: each test alone at alpha",
                "bonferroni": "family-wise error (any false positive)",
                "holm": "family-wise error, uniformly more powerful than Bonferroni",
                "fdr_bh": "false discovery rate (expected share of false positives)"}
    rows = []
    for method, what in controls.items():
        adj = np.full(p.shape, np.nan)
        if ok.any():
            adj[ok] = p[ok] if method == "none" else multipletests(p[ok], method=method)[1]
        sig = ok & (adj < alpha)
        rows.append({"correction": method, "n_tests": int(ok.sum()),
                     "n_significant": int(sig.sum()), "controls": what,
                     "tests": ", ".join(names[sig])})
    return pd.DataFrame(rows)


def mean_delta_md_map(results, *, arm: str = "ketamine", pre: str = "pre",
                      post: str = "post"):
    """Mean ΔMD map (template space) of one arm's participants.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        Pipeline results.
    arm : str, default="ketamine"
        Arm averaged.
    pre, post : str
        Session labels.

    Returns
    -------
    nibabel.Nifti1Image
        3D mean of MD(post) − MD(pre) (mm²/s) over the arm's participants,
        0 outside the voxels :func:`ketamine_nb.voxelwise.delta_md_maps`
        keeps (tissue with MD in every session).
    """
    import nibabel as nib

    from .voxelwise import delta_md_maps

    p = results.participants
    ids = list(p.loc[p["arm"] == arm, "participant_id"])
    if not ids:
        raise InputError(f"no participants in arm {arm!r}")
    img, _, mask = delta_md_maps(results.out_dir, ids, pre=pre, post=post)
    mean = np.asarray(img.dataobj, np.float32).mean(axis=-1)
    mean[np.asarray(mask.dataobj) == 0] = 0
    return nib.Nifti1Image(mean.astype(np.float32), img.affine)


def voxelwise_summary(result: dict, *, alpha: float = 0.05,
                      t_threshold: float = 3.0) -> pd.DataFrame:
    """Summarise what the voxelwise test found, in one row.

    Parameters
    ----------
    result : dict
        From :func:`ketamine_nb.voxelwise.voxelwise_inference`.
    alpha : float, default=0.05
        Family-wise error level.
    t_threshold : float, default=3.0
        Uncorrected |t| threshold counted for comparison.

    Returns
    -------
    pandas.DataFrame
        ``n_participants``, ``n_voxels`` (tested: non-zero t), ``peak_abs_t``,
        ``n_voxels_t_above`` (|t| ≥ ``t_threshold``, uncorrected),
        ``min_p_fwe`` (smallest max-t FWE p) and ``n_voxels_fwe`` (FWE p <
        ``alpha``).
    """
    t = np.asarray(result["t"].dataobj, float)
    logp = np.asarray(result["logp_max_t"].dataobj, float)
    tested = t != 0
    p = np.power(10.0, -logp[tested]) if tested.any() else np.array([np.nan])
    return pd.DataFrame([{
        "n_participants": len(result.get("ids", [])), "n_voxels": int(tested.sum()),
        "peak_abs_t": float(np.abs(t).max()),
        "n_voxels_t_above": int((np.abs(t) >= t_threshold).sum()),
        "min_p_fwe": float(np.nanmin(p)), "n_voxels_fwe": int((p < alpha).sum())}])


def robustness_summary(robustness: pd.DataFrame, *, alpha: float = 0.05) -> pd.DataFrame:
    """Across the specifications of the robustness grid, per region.

    Parameters
    ----------
    robustness : pandas.DataFrame
        ``Results.robustness`` (one row per specification × region).
    alpha : float, default=0.05
        Uncorrected level counted.

    Returns
    -------
    pandas.DataFrame
        ``region``, ``n_specifications`` (with an estimate), ``t_median``,
        ``t_min``, ``t_max`` (interaction t = β / SE, unitless),
        ``share_positive`` (fraction with t > 0) and ``share_significant``
        (fraction with p < ``alpha``, uncorrected).
    """
    d = robustness.assign(t=robustness["beta_interaction"] / robustness["se_interaction"])
    d = d[np.isfinite(d["t"])]
    g = d.groupby("region", sort=False)
    out = pd.DataFrame({"n_specifications": g.size(), "t_median": g["t"].median(),
                        "t_min": g["t"].min(), "t_max": g["t"].max(),
                        "share_positive": g["t"].apply(lambda s: (s > 0).mean()),
                        "share_significant": g["p_interaction"].apply(
                            lambda s: (s < alpha).mean())})
    return out.reset_index()
