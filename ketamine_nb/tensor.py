"""Diffusion tensor fit: MD and FA maps on the DWI grid, with optional denoising."""

from __future__ import annotations

import numpy as np

from ._utils import InputError

__all__ = ["DEFAULT_FIT_METHOD", "FIT_METHODS", "compute_md_map", "denoise", "fit_dti"]

#: Tensor fit methods offered (dipy's names).
FIT_METHODS = ("OLS", "WLS", "NLLS", "RESTORE")

#: Default fit: weighted least squares on the log signal. It corrects the
#: noise amplification of the log transform that biases OLS at low signal,
#: at a fraction of the cost of non-linear fits (Basser et al. 1994; Jones &
#: Basser 2004); dipy's and MRtrix3's default too.
DEFAULT_FIT_METHOD = "WLS"


def _as_mask(mask, shape):
    if mask is None:
        return None
    data = np.asarray(mask.dataobj) if hasattr(mask, "dataobj") else np.asarray(mask)
    if data.shape != tuple(shape):
        raise InputError(f"mask has shape {data.shape} but the DWI grid is {tuple(shape)}; "
                         "use a mask on the DWI grid")
    return data > 0


def denoise(dwi_img, gtab, *, method: str = "mppca", mask=None):
    """Denoise a DWI series with dipy's MP-PCA or Patch2Self.

    BLAS is limited to one thread around the call (``threadpoolctl``): these
    local denoisers run many small SVDs, which on two OpenBLAS threads were
    17 times slower here than on one.

    Parameters
    ----------
    dwi_img : nibabel.Nifti1Image
        4D DWI.
    gtab : dipy.core.gradients.GradientTable
        Its gradients.
    method : {"mppca", "patch2self"}, default="mppca"
        Denoiser.
    mask : array-like or nibabel.Nifti1Image, optional
        Brain mask (MP-PCA only).

    Returns
    -------
    nibabel.Nifti1Image
        Denoised float32 DWI.
    """
    import nibabel as nib
    from threadpoolctl import threadpool_limits

    data = np.asarray(dwi_img.dataobj, dtype=np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        if method == "mppca":
            from dipy.denoise.localpca import mppca

            out = mppca(data, mask=_as_mask(mask, data.shape[:3]), patch_radius=2)
        elif method == "patch2self":
            from dipy.denoise.patch2self import patch2self

            out = patch2self(data, gtab.bvals, model="ols", shift_intensity=True,
                             clip_negative_vals=False, b0_threshold=50, verbose=False)
        else:
            raise InputError(f"denoising method {method!r} is unknown; use 'mppca' or "
                             "'patch2self'")
    return nib.Nifti1Image(np.asarray(out, np.float32), dwi_img.affine)


def _batched_fit(data, gtab, method: str):
    """OLS or WLS tensor fit of all voxels at once; the same algorithm as dipy's.

    dipy solves each voxel's weighted problem with its own pseudo-inverse;
    here the 7x7 normal equations of every voxel are built with one matrix
    product and solved together (``numpy.linalg.solve`` on a stack), which
    gives dipy's estimates to ~1e-10 relative at a fraction of the cost.
    Steps as in ``dipy.reconst.dti.wls_fit_tensor``: the signal is clipped
    at dipy's minimum positive signal, the OLS fit of ``log(S)`` predicts the
    signal, whose squares weight the WLS fit (Chung et al. 2006);
    eigenvalues below dipy's ``min_diffusivity`` are clipped.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_voxels, n_volumes)
        Signal.
    gtab : dipy.core.gradients.GradientTable
        Gradients.
    method : {"OLS", "WLS"}
        Fit.

    Returns
    -------
    md, fa : numpy.ndarray, shape (n_voxels,)
        MD (mm²/s) and FA.
    """
    from dipy.reconst.dti import MIN_POSITIVE_SIGNAL, design_matrix

    X = design_matrix(gtab)                                   # (g, 7)
    log_s = np.log(np.maximum(np.asarray(data, np.float64), MIN_POSITIVE_SIGNAL))
    beta = log_s @ np.linalg.pinv(X).T                        # OLS, (n, 7)
    if method == "WLS":
        w2 = np.exp(2.0 * (beta @ X.T))                       # squared predicted signal
        XX = (X[:, :, None] * X[:, None, :]).reshape(X.shape[0], -1)
        A = (w2 @ XX).reshape(-1, 7, 7)
        b = (w2 * log_s) @ X
        beta = np.linalg.solve(A, b[..., None])[..., 0]
    lt = beta[:, :6]                                          # Dxx, Dxy, Dyy, Dxz, Dyz, Dzz
    tensor = np.empty((lt.shape[0], 3, 3))
    tensor[:, 0, 0], tensor[:, 1, 1], tensor[:, 2, 2] = lt[:, 0], lt[:, 2], lt[:, 5]
    tensor[:, 0, 1] = tensor[:, 1, 0] = lt[:, 1]
    tensor[:, 0, 2] = tensor[:, 2, 0] = lt[:, 3]
    tensor[:, 1, 2] = tensor[:, 2, 1] = lt[:, 4]
    evals = np.linalg.eigvalsh(tensor)
    evals = np.maximum(evals, 1e-6 / -X.min())               # dipy's min_diffusivity
    md = evals.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fa = np.sqrt(0.5 * ((evals[:, 0] - evals[:, 1]) ** 2 + (evals[:, 1] - evals[:, 2]) ** 2
                            + (evals[:, 2] - evals[:, 0]) ** 2) / (evals ** 2).sum(1))
    return md, np.nan_to_num(fa)


def fit_dti(dwi_img, gtab, *, mask=None, fit_method: str = DEFAULT_FIT_METHOD,
            engine: str = "auto"):
    """Fit the diffusion tensor and return MD and FA maps.

    Parameters
    ----------
    dwi_img : nibabel.Nifti1Image
        4D DWI.
    gtab : dipy.core.gradients.GradientTable
        Its gradients (b-values in s/mm²).
    mask : array-like or nibabel.Nifti1Image, optional
        Voxels to fit (boolean array or image on the DWI grid); all if omitted.
    fit_method : {"OLS", "WLS", "NLLS", "RESTORE"}, default="WLS"
        dipy's tensor fit method.
    engine : {"auto", "dipy"}, default="auto"
        ``auto`` fits WLS for all voxels at once (dipy's estimates within
        1e-6, 3-4 times faster; see ``benchmarks/RESULTS.md``) and the other
        methods with dipy; ``dipy`` always uses ``dipy.reconst.dti``.

    Returns
    -------
    md : nibabel.Nifti1Image
        Mean diffusivity, float32, mm²/s; 0 outside the mask.
    fa : nibabel.Nifti1Image
        Fractional anisotropy, float32, 0-1.

    Notes
    -----
    MD = (l1 + l2 + l3) / 3, FA = sqrt(1/2) * sqrt((l1 - l2)² + (l2 - l3)² +
    (l3 - l1)²) / sqrt(l1² + l2² + l3²), from the tensor eigenvalues (dipy's
    ``mean_diffusivity`` and ``fractional_anisotropy``). With b in s/mm², MD is
    in mm²/s (grey matter about 0.8e-3, CSF 3.0e-3).
    """
    from dipy.reconst.dti import TensorModel

    method = str(fit_method).upper()
    if method not in FIT_METHODS:
        raise InputError(f"fit method {fit_method!r} is unknown; use one of "
                         f"{', '.join(FIT_METHODS)}")
    data = np.asarray(dwi_img.dataobj, dtype=np.float32)
    m = _as_mask(mask, data.shape[:3])
    if engine not in ("auto", "dipy"):
        raise InputError(f"engine {engine!r} is unknown; use 'auto' or 'dipy'")
    if engine == "auto" and method == "WLS":  # dipy's OLS is one product already
        sel = m if m is not None else np.ones(data.shape[:3], bool)
        md = np.zeros(data.shape[:3], np.float32)
        fa = np.zeros(data.shape[:3], np.float32)
        if sel.any():
            v_md, v_fa = _batched_fit(data[sel], gtab, method)
            md[sel], fa[sel] = v_md, np.clip(v_fa, 0, 1)
        return _maps(md, fa, dwi_img.affine)
    kwargs = {}
    if method == "RESTORE":
        # RESTORE needs the noise SD; estimate it from the background of the b0s.
        from dipy.denoise.noise_estimate import estimate_sigma

        kwargs["sigma"] = float(np.median(estimate_sigma(data[..., gtab.b0s_mask])))
    model = TensorModel(gtab, fit_method=method, **kwargs)
    # Per-voxel fits are small solves: more BLAS threads only add overhead
    # (1.3-1.5 s with 2 threads vs 0.9 s with 1 on a loaded 2-core machine).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        fit = model.fit(data, mask=m)
    md = np.nan_to_num(fit.md).astype(np.float32)
    fa = np.clip(np.nan_to_num(fit.fa), 0, 1).astype(np.float32)
    if m is not None:
        md[~m] = 0
        fa[~m] = 0
    return _maps(md, fa, dwi_img.affine)


def _maps(md, fa, affine):
    import nibabel as nib

    md_img = nib.Nifti1Image(md.astype(np.float32), affine)
    fa_img = nib.Nifti1Image(fa.astype(np.float32), affine)
    for img in (md_img, fa_img):
        img.header.set_xyzt_units("mm")
    return md_img, fa_img


def compute_md_map(dwi_img, gtab, *, mask=None, fit_method: str = DEFAULT_FIT_METHOD,
                   engine: str = "auto"):
    """Compute a mean-diffusivity map with a dipy tensor fit.

    Parameters
    ----------
    dwi_img : nibabel.Nifti1Image
        4D DWI.
    gtab : dipy.core.gradients.GradientTable
        Its gradients (b-values in s/mm²).
    mask : array-like or nibabel.Nifti1Image, optional
        Boolean array or image on the DWI grid.
    fit_method : {"OLS", "WLS", "NLLS", "RESTORE"}, default="WLS"
        dipy's tensor fit method.
    engine : {"auto", "dipy"}, default="auto"
        See :func:`fit_dti`.

    Returns
    -------
    nibabel.Nifti1Image
        MD in mm²/s (float32) on the DWI grid, 0 outside the mask.

    Notes
    -----
    MD = (l1 + l2 + l3) / 3. See :func:`fit_dti`.
    """
    return fit_dti(dwi_img, gtab, mask=mask, fit_method=fit_method, engine=engine)[0]
