"""Diffusion tensor fit: MD and FA maps on the DWI grid, with optional denoising."""

from __future__ import annotations

import functools

import numpy as np

from .exceptions import InputError

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
    local denoisers run many small SVDs, which were much slower on two
    OpenBLAS threads than on one.

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


#: Voxels per block of the batched fit: a block's arrays (n x volumes, float32
#: and float64) stay in the CPU caches, and blocks are what the threads share.
_BLOCK = 8192


def _packed_upper(m: int) -> dict:
    """Row of each (i, j) in an m x m symmetric matrix packed as its upper triangle."""
    pos, k = {}, 0
    for i in range(m):
        for j in range(i, m):
            pos[i, j] = pos[j, i] = k
            k += 1
    return pos


def _cholesky_solve(A, b):
    """Solve many symmetric positive-definite systems at once, one per column.

    The Cholesky factorisation written out element by element, each step one
    numpy operation over all systems (structure of arrays): for 7 x 7
    systems, faster than ``numpy.linalg.solve`` on a stack, which calls
    LAPACK once per system (see benchmarks/history/NOTES.md).

    Parameters
    ----------
    A : numpy.ndarray, shape (m (m + 1) / 2, n)
        Upper triangles, rows in the order of ``numpy.triu_indices(m)``.
    b : numpy.ndarray, shape (m, n)
        Right-hand sides.

    Returns
    -------
    x : numpy.ndarray, shape (m, n)
        Solutions; garbage where ``ok`` is False.
    ok : numpy.ndarray of bool, shape (n,)
        False where a pivot was below 1e-10 times its diagonal element, or
        not finite: the system is not (numerically) positive definite.
    """
    m, n = b.shape
    pos = _packed_upper(m)
    L = [[None] * m for _ in range(m)]
    rinv = [None] * m
    ok = np.ones(n, bool)
    tmp = np.empty(n)
    for j in range(m):
        d = A[pos[j, j]].copy()
        for k in range(j):
            d -= np.multiply(L[j][k], L[j][k], out=tmp)
        # A pivot that lost 10 of 16 digits: (nearly) singular, e.g. a
        # degenerate gradient table. False for NaN too.
        good = d > 1e-10 * A[pos[j, j]]
        ok &= good
        d[~good] = 1.0
        rinv[j] = r = np.divide(1.0, np.sqrt(d, out=d), out=d)
        for i in range(j + 1, m):
            v = A[pos[i, j]].copy()
            for k in range(j):
                v -= np.multiply(L[i][k], L[j][k], out=tmp)
            v *= r
            L[i][j] = v
    y = []
    for i in range(m):  # L y = b
        v = b[i].copy()
        for k in range(i):
            v -= np.multiply(L[i][k], y[k], out=tmp)
        v *= rinv[i]
        y.append(v)
    x = [None] * m
    for i in reversed(range(m)):  # L^T x = y
        v = y[i]
        for k in range(i + 1, m):
            v -= np.multiply(L[k][i], x[k], out=tmp)
        v *= rinv[i]
        x[i] = v
    return np.array(x), ok


def _md_fa(lt, min_diffusivity: float):
    """MD and FA from lower-triangular tensors, as dipy computes them.

    dipy takes the eigenvalues, clips them below at ``min_diffusivity`` and
    computes MD and FA from them. Where all eigenvalues exceed the clip,
    ``D - min_diffusivity I`` is positive definite (all leading principal
    minors positive, Sylvester's criterion) and MD = trace / 3,
    FA² = 3/2 ||D - MD I||² / ||D||² (Frobenius norms) are the same numbers
    without an eigendecomposition; only the other voxels go through
    ``numpy.linalg.eigvalsh``.

    Parameters
    ----------
    lt : numpy.ndarray, shape (6, n)
        Dxx, Dxy, Dyy, Dxz, Dyz, Dzz (dipy's order).
    min_diffusivity : float
        dipy's eigenvalue clip.

    Returns
    -------
    md, fa : numpy.ndarray, shape (n,)
    """
    dxx, dxy, dyy, dxz, dyz, dzz = lt
    md = (dxx + dyy + dzz) / 3.0
    a, d, f = dxx - min_diffusivity, dyy - min_diffusivity, dzz - min_diffusivity
    m2 = a * d - dxy * dxy
    det = a * (d * f - dyz * dyz) - dxy * (dxy * f - dyz * dxz) + dxz * (dxy * dyz - d * dxz)
    clip = ~((a > 0) & (m2 > 0) & (det > 0))  # also True where a value is NaN
    off2 = 2.0 * (dxy * dxy + dxz * dxz + dyz * dyz)
    num = (dxx - md) ** 2 + (dyy - md) ** 2 + (dzz - md) ** 2 + off2
    den = dxx * dxx + dyy * dyy + dzz * dzz + off2
    with np.errstate(invalid="ignore", divide="ignore"):
        fa = np.sqrt(1.5 * num / den)
    if clip.any():
        t = lt[:, clip]
        tensor = np.empty((t.shape[1], 3, 3))
        tensor[:, 0, 0], tensor[:, 1, 1], tensor[:, 2, 2] = t[0], t[2], t[5]
        tensor[:, 0, 1] = tensor[:, 1, 0] = t[1]
        tensor[:, 0, 2] = tensor[:, 2, 0] = t[3]
        tensor[:, 1, 2] = tensor[:, 2, 1] = t[4]
        finite = np.isfinite(tensor).all(axis=(1, 2))
        ev = np.full((t.shape[1], 3), np.nan)
        ev[finite] = np.linalg.eigvalsh(tensor[finite])
        ev = np.maximum(ev, min_diffusivity)
        md[clip] = ev.mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            fa[clip] = np.sqrt(0.5 * ((ev[:, 0] - ev[:, 1]) ** 2 + (ev[:, 1] - ev[:, 2]) ** 2
                                      + (ev[:, 2] - ev[:, 0]) ** 2) / (ev ** 2).sum(1))
    return md, np.nan_to_num(fa)


def _batched_fit(data, gtab, method: str, *, select=None, n_jobs: int = 1,
                 block: int = _BLOCK):
    """OLS or WLS tensor fit of many voxels at once; the same algorithm as dipy's.

    dipy solves each voxel's weighted problem with its own pseudo-inverse;
    here the voxels go in blocks of ``block``, and within a block each step
    is one array operation over all its voxels. Steps as in
    ``dipy.reconst.dti.wls_fit_tensor``: the signal is clipped at dipy's
    minimum positive signal and its log taken in the data's dtype (float32
    from :func:`fit_dti`, as dipy does with float32 data); the OLS fit of
    ``log(S)`` predicts the signal, whose squares weight the WLS fit (Chung
    et al. 2006). The weighted 7 x 7 normal equations are built in float64
    from their 28 distinct products, one matrix product per block, and
    solved with a vectorised Cholesky factorisation
    (:func:`_cholesky_solve`); where a system is not numerically positive
    definite, dipy's pseudo-inverse solves it. Eigenvalues below dipy's
    ``min_diffusivity`` are clipped; MD and FA come from the tensor
    invariants where none is (:func:`_md_fa`). Everything after the log is
    float64: float32 weights saved 6 % of the time but moved the MD of
    background voxels (MD ~1e-7 mm²/s) by up to 4e-4 relative.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_rows, n_volumes)
        Signal, one voxel per row. Fastest when ``data.T`` is C-contiguous
        (a NIfTI array as nibabel reads it, reshaped in Fortran order).
    gtab : dipy.core.gradients.GradientTable
        Gradients.
    method : {"OLS", "WLS"}
        Fit.
    select : numpy.ndarray of bool, shape (n_rows,), optional
        Rows to fit (default: all).
    n_jobs : int, default=1
        Threads sharing the blocks (numpy releases the GIL in its array
        operations). BLAS is held to one thread during the fit.
    block : int, default=8192
        Voxels per block.

    Returns
    -------
    md, fa : numpy.ndarray, shape (n_voxels,)
        MD (mm²/s) and FA (float64) of the fitted rows, in row order.
    """
    from dipy.reconst.dti import MIN_POSITIVE_SIGNAL, design_matrix

    X = design_matrix(gtab)                                   # (g, 7)
    P = np.linalg.pinv(X)                                     # (7, g)
    iu = np.triu_indices(7)
    XXu = np.ascontiguousarray((X[:, :, None] * X[:, None, :])[:, iu[0], iu[1]].T)  # (28, g)
    X2 = 2.0 * X                                              # OLS -> log S²
    min_diffusivity = 1e-6 / -X.min()                         # dipy's default
    rows = None if select is None else np.flatnonzero(select)
    n = data.shape[0] if rows is None else rows.size
    md = np.empty(n)
    fa = np.empty(n)
    vt = data.T                                               # (g, n_rows)

    def signal(start, stop):
        # The block's signal, volume-major (g, b): contiguous reads of NIfTI data.
        if rows is None:
            return vt[:, start:stop]
        lo, hi = rows[start], rows[stop - 1] + 1
        if vt.flags.c_contiguous:
            return np.compress(select[lo:hi], vt[:, lo:hi], axis=1)
        return np.compress(select[lo:hi], data[lo:hi], axis=0).T

    def fit(start):
        stop = min(start + block, n)
        log_s = np.maximum(signal(start, stop), MIN_POSITIVE_SIGNAL)  # data's dtype, as dipy
        np.log(log_s, out=log_s)
        beta = P @ log_s                                      # OLS, (7, b), float64
        if method == "WLS":
            # Weights: the squared predicted signal, divided by the predicted
            # S0² (a factor per voxel leaves the estimate unchanged and keeps
            # exp() in range whatever the signal's scale).
            rel = beta.copy()
            rel[6] = 0
            w2 = np.exp(X2 @ rel)                             # (g, b)
            A = XXu @ w2                                      # (28, b)
            b = X.T @ np.multiply(w2, log_s, out=w2)          # (7, b)
            wls, ok = _cholesky_solve(A, b)
            if not ok.all():  # dipy's own float64 weights and pseudo-inverse there
                w = np.exp(X @ beta[:, ~ok]).T                # (k, g)
                pinv = np.linalg.pinv(X[None] * w[:, :, None])
                wls[:, ~ok] = np.einsum("kij,kj->ik", pinv, w * log_s[:, ~ok].T)
            beta = wls
        md[start:stop], fa[start:stop] = _md_fa(beta[:6], min_diffusivity)

    starts = range(0, n, block)
    # One BLAS thread: a block's products are small, and BLAS threads on top
    # of ours (or of other work) made a one-thread fit several times slower.
    with _blas_controller().limit(limits=1, user_api="blas"):
        if n_jobs > 1 and len(starts) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(n_jobs, len(starts))) as ex:
                list(ex.map(fit, starts))
        else:
            for s in starts:
                fit(s)
    return md, fa


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # scanning the loaded libraries: once per process


def _n_jobs(n_jobs) -> int:
    """Threads for the batched fit: ``n_jobs``, else the BLAS thread limit in force."""
    if n_jobs is not None:
        if isinstance(n_jobs, bool) or int(n_jobs) != n_jobs or n_jobs < 1:
            raise InputError(f"n_jobs must be a positive integer, not {n_jobs!r}")
        return int(n_jobs)
    # Dask counts the CPUs this process may use, CPU affinity and container
    # (cgroup) quotas included, e.g. on Binder.
    from dask.system import cpu_count

    cpus = cpu_count()
    blas = [lib.num_threads for lib in _blas_controller().select(user_api="blas").lib_controllers]
    return max(1, min([cpus, *blas]))


def fit_dti(dwi_img, gtab, *, mask=None, fit_method: str = DEFAULT_FIT_METHOD,
            engine: str = "auto", n_jobs: int | None = None):
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
        ``auto`` fits WLS with dipy's algorithm in blocks of voxels, each
        step one array operation (MD within 2e-7 relative of dipy's, i.e.
        float32 rounding; much faster than dipy, timings in
        ``benchmarks/RESULTS.md``) and the other methods with dipy;
        ``dipy`` always uses ``dipy.reconst.dti``.
    n_jobs : int, optional
        Threads for the ``auto`` WLS fit (numpy releases the GIL in its array
        operations, so they run in parallel). Default: the BLAS thread limit
        in force (``threadpoolctl``), at most the CPUs this process may use:
        every CPU when called on its own, one inside ``process_session``,
        which limits BLAS to one thread because sessions run in parallel.
        dipy's fits ignore it.

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
    if engine not in ("auto", "dipy"):
        raise InputError(f"engine {engine!r} is unknown; use 'auto' or 'dipy'")
    if n_jobs is not None:
        _n_jobs(n_jobs)  # a bad value fails here, whatever the engine
    data = np.asarray(dwi_img.dataobj, dtype=np.float32)
    m = _as_mask(mask, data.shape[:3])
    if engine == "auto" and method == "WLS":  # dipy's OLS is one product already
        # Voxels as rows of a view in the array's own memory order (nibabel
        # reads NIfTI in Fortran order): no copy of the 4D array.
        order = "F" if data.flags.f_contiguous else "C"
        flat = data.reshape(-1, data.shape[-1], order=order)
        sel = None if m is None else m.ravel(order=order)
        md = np.zeros(flat.shape[0], np.float32)
        fa = np.zeros(flat.shape[0], np.float32)
        if sel is None or sel.any():
            v_md, v_fa = _batched_fit(flat, gtab, method, select=sel,
                                      n_jobs=_n_jobs(n_jobs))
            where = slice(None) if sel is None else sel
            md[where], fa[where] = np.nan_to_num(v_md), np.clip(v_fa, 0, 1)
        shape = data.shape[:3]
        return _maps(md.reshape(shape, order=order), fa.reshape(shape, order=order),
                     dwi_img.affine)
    kwargs = {}
    if method == "RESTORE":
        # RESTORE needs the noise SD; estimate it from the background of the b0s.
        from dipy.denoise.noise_estimate import estimate_sigma

        kwargs["sigma"] = float(np.median(estimate_sigma(data[..., gtab.b0s_mask])))
    model = TensorModel(gtab, fit_method=method, **kwargs)
    # Per-voxel fits are small solves: more BLAS threads only add overhead
    # (slower with 2 threads than with 1 on a 2-core machine).
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
                   engine: str = "auto", n_jobs: int | None = None):
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
    n_jobs : int, optional
        Threads of the ``auto`` WLS fit; see :func:`fit_dti`.

    Returns
    -------
    nibabel.Nifti1Image
        MD in mm²/s (float32) on the DWI grid, 0 outside the mask.

    Notes
    -----
    MD = (l1 + l2 + l3) / 3. See :func:`fit_dti`.
    """
    return fit_dti(dwi_img, gtab, mask=mask, fit_method=fit_method, engine=engine,
                   n_jobs=n_jobs)[0]
