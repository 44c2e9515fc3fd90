"""The batched WLS tensor fit against dipy, voxel kind by voxel kind."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel, design_matrix
from threadpoolctl import threadpool_limits

from ketamine_nb import tensor
from ketamine_nb.exceptions import InputError
from ketamine_nb.simulate import gradient_scheme
from ketamine_nb.tensor import compute_md_map, fit_dti


def _rotations(n, rng):
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


def _volume(shape=(10, 9, 8), seed=0):
    """Float32 DWI mixing every kind of voxel the fit meets; returns (data, gtab, kinds).

    Kinds: 1 tissue (tensors of brain, CSF and WM, Rician noise), 2 pure noise
    (background: non-positive-definite tensors, clipped eigenvalues), 3 an
    all-zero series, 4 a tensor with a negative eigenvalue (signal rises
    with b along it), 5 a huge signal (S0 = 1e30).
    """
    rng = np.random.default_rng(seed)
    bvals, bvecs = gradient_scheme(30, 3, 1000.0)
    gtab = gradient_table(bvals, bvecs=bvecs)
    n = int(np.prod(shape))
    kinds = rng.choice([1, 1, 1, 2, 3, 4, 5], size=n)
    evals = rng.uniform(0.2e-3, 3.0e-3, (n, 3))
    evals[kinds == 4, 2] = -0.4e-3
    R = _rotations(n, rng)
    D = np.einsum("nij,nj,nkj->nik", R, evals, R)
    adc = np.einsum("gi,nij,gj->ng", bvecs, D, bvecs)
    s0 = rng.uniform(200, 2000, n)
    s0[kinds == 5] = 1e30
    clean = s0[:, None] * np.exp(-bvals[None] * adc)
    clean[kinds == 2] = 0
    sigma = 20.0
    noisy = np.hypot(clean + sigma * rng.standard_normal(clean.shape),
                     sigma * rng.standard_normal(clean.shape))
    noisy[kinds == 3] = 0
    noisy[kinds == 5] = clean[kinds == 5]
    data = noisy.astype(np.float32).reshape(*shape, -1)
    return data, gtab, kinds.reshape(shape)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b) / np.where(b != 0, np.abs(b), 1.0)


@pytest.mark.parametrize("order", ["F", "C"])
def test_wls_equals_dipy_in_every_kind_of_voxel(order, monkeypatch):
    data, gtab, kinds = _volume()
    data = np.asarray(data, order=order)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    eigen = []
    real = np.linalg.eigvalsh
    monkeypatch.setattr(np.linalg, "eigvalsh", lambda a: eigen.append(len(a)) or real(a))
    md, fa = fit_dti(img, gtab, fit_method="WLS")
    monkeypatch.undo()
    fit = TensorModel(gtab, fit_method="WLS").fit(data)
    md, fa = np.asarray(md.dataobj), np.asarray(fa.dataobj)
    assert md.dtype == fa.dtype == np.float32
    # float32 maps: dipy's float64 values to float32 precision, in every voxel
    assert _rel(md, fit.md).max() <= 2e-7
    assert np.abs(fa - np.clip(np.nan_to_num(fit.fa), 0, 1)).max() <= 1e-6
    # both paths ran: invariants for most voxels, eigenvalues where dipy clips
    min_diff = 1e-6 / -design_matrix(gtab).min()  # dipy's eigenvalue clip
    clipped = fit.evals.min(-1) <= min_diff * (1 + 1e-12)
    assert clipped[kinds == 2].mean() > 0.5 and clipped[kinds == 4].all()
    assert not clipped[kinds == 1].any()
    assert sum(eigen) >= clipped.sum() and sum(eigen) < 0.5 * kinds.size
    assert np.all(md[kinds == 3] == np.float32(min_diff)) and np.all(fa[kinds == 3] == 0)


def test_mask_selects_voxels_and_zeroes_the_rest():
    data, gtab, kinds = _volume(seed=1)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    img = nib.Nifti1Image(data, affine)
    mask = kinds == 1
    mask[0] = True  # some background too
    full_md, full_fa = (np.asarray(m.dataobj) for m in fit_dti(img, gtab))
    md, fa = (np.asarray(m.dataobj) for m in fit_dti(img, gtab, mask=mask))
    np.testing.assert_array_equal(md[mask], full_md[mask])
    np.testing.assert_array_equal(fa[mask], full_fa[mask])
    assert np.all(md[~mask] == 0) and np.all(fa[~mask] == 0)
    direct = TensorModel(gtab, fit_method="WLS").fit(data, mask=mask).md
    assert _rel(md[mask], direct[mask]).max() <= 2e-7
    as_img = compute_md_map(img, gtab, mask=nib.Nifti1Image(mask.astype(np.uint8), affine))
    np.testing.assert_array_equal(np.asarray(as_img.dataobj), md)
    empty = compute_md_map(img, gtab, mask=np.zeros_like(mask))
    assert not np.asarray(empty.dataobj).any()


def test_int16_images_fit_as_float32_like_dipy():
    data, gtab, kinds = _volume(seed=2)
    ints = np.clip(np.rint(np.where(kinds[..., None] == 5, 0, data)), 0, 32767).astype(np.int16)
    md = np.asarray(compute_md_map(nib.Nifti1Image(ints, np.eye(4)), gtab).dataobj)
    direct = TensorModel(gtab, fit_method="WLS").fit(ints.astype(np.float32)).md
    assert _rel(md, direct).max() <= 2e-7


def test_threads_and_blocks_give_the_same_numbers():
    data, gtab, kinds = _volume(seed=3)
    flat = data.reshape(-1, data.shape[-1], order="F")
    sel = (kinds != 3).ravel(order="F")
    one = tensor._batched_fit(flat, gtab, "WLS", select=sel, n_jobs=1, block=37)
    three = tensor._batched_fit(flat, gtab, "WLS", select=sel, n_jobs=3, block=37)
    whole = tensor._batched_fit(flat, gtab, "WLS", select=sel, n_jobs=1, block=10**6)
    for a, b, c in zip(one, three, whole, strict=True):
        assert a.shape == (sel.sum(),)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-18)


def test_degenerate_gradients_fall_back_to_dipys_pseudo_inverse(monkeypatch):
    # Five directions: the 7 x 7 normal equations are singular in every voxel,
    # the Cholesky factorisation flags them and dipy's pseudo-inverse solves them.
    data, gtab, _ = _volume(shape=(4, 3, 2), seed=4)
    keep = np.r_[np.flatnonzero(gtab.b0s_mask), np.flatnonzero(~gtab.b0s_mask)[:5]]
    g5 = gradient_table(gtab.bvals[keep], bvecs=gtab.bvecs[keep])
    d5 = data[..., keep]
    flags = []
    real = tensor._cholesky_solve

    def spy(A, b):
        x, ok = real(A, b)
        flags.append(ok)
        return x, ok

    monkeypatch.setattr(tensor, "_cholesky_solve", spy)
    md = np.asarray(compute_md_map(nib.Nifti1Image(d5, np.eye(4)), g5).dataobj)
    assert len(flags) == 1 and not flags[0].any()
    direct = TensorModel(g5, fit_method="WLS").fit(d5).md
    assert _rel(md, direct).max() <= 2e-7


def test_cholesky_solve_matches_numpy_and_flags_indefinite_systems():
    rng = np.random.default_rng(5)
    M = rng.standard_normal((50, 7, 9))
    A = M @ M.transpose(0, 2, 1)
    A[-5:] -= 10 * np.eye(7)  # indefinite
    A[-1] = 0  # zero
    b = rng.standard_normal((50, 7))
    iu = np.triu_indices(7)
    x, ok = tensor._cholesky_solve(A[:, iu[0], iu[1]].T.copy(), b.T.copy())
    np.testing.assert_array_equal(ok, np.arange(50) < 45)
    np.testing.assert_allclose(x[:, ok].T, np.linalg.solve(A[:45], b[:45, :, None])[..., 0],
                               rtol=1e-9, atol=1e-12)


def test_n_threads_follows_the_blas_limit_or_the_argument():
    assert tensor._n_jobs(3) == 3
    with threadpool_limits(limits=1, user_api="blas"):
        assert tensor._n_jobs(None) == 1
    # Never more threads than CPUs this process may use (a container quota).
    import dask.system

    with threadpool_limits(limits=4, user_api="blas"), \
            pytest.MonkeyPatch.context() as mp:
        mp.setattr(dask.system, "cpu_count", lambda: 3)
        assert tensor._n_jobs(None) == 3
        mp.setattr(dask.system, "cpu_count", lambda: 1)
        assert tensor._n_jobs(None) == 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="n_jobs"):
            tensor._n_jobs(bad)
    data, gtab, _ = _volume(shape=(3, 3, 3), seed=6)
    img = nib.Nifti1Image(data, np.eye(4))
    with pytest.raises(InputError, match="n_jobs"):
        fit_dti(img, gtab, n_jobs=0)
