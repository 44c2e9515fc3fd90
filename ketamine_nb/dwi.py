"""Load one DWI series, check its gradients, mask the brain and flag QC problems.

Stable interface (used by the pipeline and :mod:`ketamine_nb.motion`):

* :func:`load_dwi` ``(dwi, bval=None, bvec=None, *, b0_threshold=B0_THRESHOLD,
  max_bval=DEFAULT_MAX_BVAL, return_notes=False)`` -> ``(img, gtab)`` or, with
  ``return_notes=True``, ``(img, gtab, notes)``: ``notes`` is a list of one-line
  strings for the QC JSON (b-vectors of b = 0 volumes set to zero, volumes above
  ``max_bval`` left out).
* :data:`B0_THRESHOLD` (50 s/mm²) and :data:`DEFAULT_MAX_BVAL` (1500 s/mm²).

Real gradient tables are accepted as scanners and converters write them: a
"b0" acquired at b = 1.25 s/mm² (UIH) or 0.004 s/mm² (Philips) is a b = 0
volume; a b = 0 volume's direction may be anything, ``nan nan nan`` included
(dipy's own ``small_64D.bvec``), and is set to zero with a note. Non-finite
b-values, or non-finite directions of diffusion-weighted volumes, are refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .exceptions import InputError

__all__ = [
    "B0_THRESHOLD",
    "DEFAULT_MAX_BVAL",
    "brain_mask",
    "check_gradients",
    "gradients_frame",
    "load_dwi",
    "mean_b0",
    "qc_session",
    "read_gradients",
    "read_mrtrix_gradients",
]

#: b-values at or below this (s/mm²) count as b = 0: the "b0" of real
#: protocols is rarely exactly 0 (UIH writes b = 1.25, Philips 0.001-0.004,
#: and the imaging gradients alone give a few s/mm²), while the lowest
#: diffusion weighting used for a tensor is ~300 s/mm². dipy's default too.
B0_THRESHOLD = 50.0

#: Highest b-value (s/mm²) fitted by default. The tensor model assumes
#: Gaussian diffusion, which holds in brain tissue up to b ~ 1000-1500 s/mm²;
#: at higher b the signal decays more slowly than a single exponential
#: (kurtosis) and MD is underestimated (Jensen et al. 2005). A multi-shell
#: series is therefore fitted on its shells up to 1500 s/mm², as QSIPrep,
#: MRtrix3's ``dwi2tensor`` advice and the ENIGMA-DTI protocol do, and the
#: volumes left out are named in a note. A b-value within
#: :data:`_SHELL_TOLERANCE` of it counts as that shell (1505 is 1500).
DEFAULT_MAX_BVAL = 1500.0

#: Scanners write a nominal shell with small deviations (1500 as 1505): b-values
#: up to ``max_bval`` plus this (s/mm²) are kept.
_SHELL_TOLERANCE = 50.0


def read_gradients(bval_path, bvec_path):
    """Read FSL-style b-values and b-vectors, with one-line errors.

    Parameters
    ----------
    bval_path, bvec_path : str or pathlib.Path
        ``.bval`` (one row of N numbers) and ``.bvec`` (three rows of N
        numbers; N rows of three are accepted and transposed).

    Returns
    -------
    bvals : numpy.ndarray, shape (N,)
        b-values as written (s/mm² expected; see :func:`check_gradients`).
    bvecs : numpy.ndarray, shape (N, 3)
        Gradient directions.
    """
    bval_path, bvec_path = Path(bval_path), Path(bvec_path)
    for p in (bval_path, bvec_path):
        if not p.is_file():
            raise InputError(f"{p}: file not found; every DWI series needs its .bval and .bvec "
                             "next to it with the same name")
    import warnings

    try:
        with warnings.catch_warnings():  # an empty file: the count check below says so
            warnings.filterwarnings("ignore", message="loadtxt: input contained no data")
            bvals = np.loadtxt(bval_path, ndmin=1)
    except ValueError:
        raise InputError(f"{bval_path}: not a list of numbers; write the b-values on one line, "
                         "separated by spaces") from None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="loadtxt: input contained no data")
            bvecs = np.loadtxt(bvec_path, ndmin=2)
    except ValueError:
        raise InputError(f"{bvec_path}: not a table of numbers; write three rows (x, y, z) of "
                         "one value per volume") from None
    for path, values in ((bval_path, bvals), (bvec_path, bvecs)):
        if values.size == 0:
            raise InputError(f"{path}: empty; write the gradient file again (dcm2niix writes "
                             "it beside the image)")
    bvals = bvals.ravel()
    if bvecs.shape[0] == 3:
        bvecs = bvecs.T
    elif bvecs.shape[1] != 3:
        raise InputError(f"{bvec_path}: has {bvecs.shape[0]} rows of {bvecs.shape[1]} values; "
                         "FSL b-vectors are three rows (x, y, z) with one column per volume")
    return bvals.astype(float), bvecs.astype(float)


def read_mrtrix_gradients(path, affine):
    """Read an MRtrix gradient table (QSIPrep's ``.b``) as FSL-style b-values and b-vectors.

    MRtrix writes one row ``x y z b`` per volume, the direction in the
    scanner's (world, RAS) frame; FSL b-vectors are in the image's voxel
    axes, with x flipped when the affine's determinant is positive. The
    directions are brought into that frame with the image's affine.

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.b`` file.
    affine : numpy.ndarray, shape (4, 4)
        The DWI's affine.

    Returns
    -------
    bvals : numpy.ndarray, shape (N,)
    bvecs : numpy.ndarray, shape (N, 3)
        FSL layout (voxel frame).
    """
    path = Path(path)
    try:
        rows = [r.split() for r in path.read_text().splitlines()
                if r.strip() and not r.lstrip().startswith("#")]
        table = np.array(rows, dtype=float)
    except (ValueError, UnicodeDecodeError, OSError):
        raise InputError(f"{path}: not an MRtrix gradient table; write one row 'x y z b' per "
                         "volume") from None
    if table.ndim != 2 or table.shape[1] != 4:
        raise InputError(f"{path}: an MRtrix gradient table has four numbers per row "
                         "(x y z b); rewrite it (mrinfo -export_grad_mrtrix)")
    A = np.asarray(affine, float)[:3, :3]
    D = A / np.linalg.norm(A, axis=0)
    F = np.diag([-1.0, 1, 1]) if np.linalg.det(D) > 0 else np.eye(3)
    with np.errstate(invalid="ignore"):
        bvecs = (F @ D.T @ table[:, :3].T).T
    return table[:, 3].copy(), bvecs


def check_gradients(bvals, bvecs, n_volumes: int, *, source: str = "gradients",
                    b0_threshold: float = B0_THRESHOLD, return_notes: bool = False):
    """Check a gradient scheme against its image; raise a one-line error if unusable.

    Checks: one b-value and one b-vector per volume; finite, non-negative
    b-values; at least one b = 0 volume; b-values in s/mm² (not ms/µm², where
    b = 1000 s/mm² reads 1); finite diffusion-weighted b-vectors of unit
    length (within 5 %, then normalised); at least six non-collinear
    directions for a tensor. The direction of a b = 0 volume is not used: it
    is set to zero whatever was written (``nan nan nan`` included, with a
    note).

    Parameters
    ----------
    bvals : numpy.ndarray, shape (N,)
        b-values.
    bvecs : numpy.ndarray, shape (N, 3)
        b-vectors.
    n_volumes : int
        Volumes in the DWI image.
    source : str, default="gradients"
        Name used in messages (the file).
    b0_threshold : float, default=50.0
        b-values at or below this are b = 0 (s/mm²).
    return_notes : bool, default=False
        Also return the notes (list of str) on what was accepted and changed.

    Returns
    -------
    bvals, bvecs : numpy.ndarray
        b-values, and b-vectors with exactly unit length (zero for b = 0).
    notes : list of str
        Only with ``return_notes=True``.
    """
    bvals, bvecs, _, notes = _checked_gradients(bvals, bvecs, n_volumes, source=source,
                                                b0_threshold=b0_threshold, max_bval=None)
    return (bvals, bvecs, notes) if return_notes else (bvals, bvecs)


def _volume_list(idx) -> str:
    idx = [int(i) for i in idx]
    return ", ".join(map(str, idx[:8])) + (f" and {len(idx) - 8} more" if len(idx) > 8 else "")


def _checked_gradients(bvals, bvecs, n_volumes: int, *, source: str, b0_threshold: float,
                       max_bval: float | None):
    """:func:`check_gradients`, plus the volumes kept under ``max_bval``.

    Returns
    -------
    bvals, bvecs : numpy.ndarray
        Of the kept volumes only.
    keep : numpy.ndarray of bool, shape (n_volumes,)
        Volumes kept (b <= max_bval + 50 s/mm², or all when ``max_bval`` is None).
    notes : list of str
    """
    bvals = np.asarray(bvals, float)
    bvecs = np.asarray(bvecs, float)
    notes: list[str] = []
    if bvals.size != n_volumes or bvecs.shape[0] != n_volumes:
        raise InputError(f"{source}: {bvals.size} b-values and {bvecs.shape[0]} b-vectors for "
                         f"{n_volumes} volumes; give one b-value and one b-vector per volume")
    if not np.all(np.isfinite(bvals)):
        bad = np.flatnonzero(~np.isfinite(bvals))
        raise InputError(f"{source}: b-values of volumes {_volume_list(bad)} are NaN or "
                         "infinite; rewrite the gradient files from the scanner data")
    if np.any(bvals < 0):
        raise InputError(f"{source}: negative b-values; b-values are in s/mm² and >= 0")
    dw = bvals > b0_threshold
    nonfinite = ~np.all(np.isfinite(bvecs), axis=1)
    if np.any(nonfinite & dw):
        bad = np.flatnonzero(nonfinite & dw)
        raise InputError(f"{source}: b-vectors of diffusion-weighted volumes {_volume_list(bad)} "
                         "are NaN or infinite; rewrite the gradient files from the scanner data")
    if np.any(nonfinite):
        which = _volume_list(np.flatnonzero(nonfinite))
        notes.append(f"{source}: b-vectors of b=0 volumes {which} are NaN or infinite; their "
                     "direction is not used and was set to zero")
    if not np.any(~dw):
        raise InputError(f"{source}: no b=0 volume (all b-values > {b0_threshold:g} s/mm²); "
                         "the tensor fit needs at least one b=0 volume")
    if not np.any(dw):
        # ms/µm²: most volumes at b of order 1 (1 ms/µm² = 1000 s/mm²). A series of
        # b = 0 volumes written as 0-5 s/mm² (as scanners do) is not that.
        if 0 < bvals.max() <= 10 and np.mean(bvals > 0.1) > 0.5:
            raise InputError(f"{source}: b-values look like ms/µm² (max {bvals.max():g}); "
                             "multiply by 1000 to get s/mm²")
        raise InputError(f"{source}: no diffusion-weighted volume (b-values up to "
                         f"{bvals.max():g} s/mm², all counted as b=0); a DWI series needs "
                         f"b-values above {b0_threshold:g} s/mm²: check that this is the "
                         "diffusion series and its .bval file")
    if bvals.max() > 10000:
        raise InputError(f"{source}: b-values up to {bvals.max():g} look like s/m² or wrong "
                         "units; write them in s/mm² (e.g. 1000)")
    keep = np.ones(n_volumes, bool)
    if max_bval is not None:
        keep = bvals <= float(max_bval) + _SHELL_TOLERANCE
        if not np.any(keep & dw):
            raise InputError(f"{source}: every diffusion-weighted volume has b > {max_bval:g} "
                             f"s/mm² (lowest {bvals[dw].min():g}); the tensor assumes Gaussian "
                             "diffusion, which holds up to b ~ 1500; pass a higher max_bval "
                             "(--max-bval) to fit them anyway")
        if not np.all(keep):
            high = bvals[~keep]
            notes.append(f"{source}: {np.count_nonzero(~keep)} volumes with b > {max_bval:g} "
                         f"s/mm² (b = {high.min():g} to {high.max():g}) left out of the "
                         "tensor fit (max_bval)")
    norms = np.linalg.norm(bvecs[dw & keep], axis=1)
    if np.any(np.abs(norms - 1) > 0.05):
        bad = int(np.flatnonzero(dw & keep)[np.argmax(np.abs(norms - 1))])
        raise InputError(f"{source}: b-vector of volume {bad} has length "
                         f"{np.linalg.norm(bvecs[bad]):.3g}; diffusion-weighted b-vectors must "
                         "be unit vectors")
    out = np.zeros_like(bvecs)
    out[dw & keep] = bvecs[dw & keep] / norms[:, None]
    out = out[keep]
    kept_dw = dw[keep]
    if np.count_nonzero(kept_dw) < 6 or np.linalg.matrix_rank(out[kept_dw], tol=1e-3) < 3:
        raise InputError(f"{source}: fewer than six non-collinear directions; a tensor needs "
                         "at least six")
    return bvals[keep], out, keep, notes


def _read_float32(path: Path):
    """Load a NIfTI image and its data as float32 (scaling applied).

    A NIfTI-1 ``.nii.gz`` is decompressed with ISA-L (the ``isal`` package)
    when it is installed: faster than zlib, whose decompression is most of the
    time it takes to read a DWI series (timings: ``bench_md_fit`` in
    benchmarks/RESULTS.md); the bytes are the same. The stream is
    read to its end, so a damaged file (CRC or length check of the gzip
    trailer) is an error rather than wrong voxels. Other files (NIfTI-2,
    ``.nii``, no ``isal``) go to ``nibabel.load``.
    """
    import nibabel as nib

    if path.name.endswith(".gz"):
        try:
            from isal import igzip
        except ImportError:
            igzip = None
        if igzip is not None:
            with igzip.open(path, "rb") as f:
                head = f.read(4)
                if len(head) == 4 and 348 in (int.from_bytes(head, "little"),
                                              int.from_bytes(head, "big")):
                    f.seek(0)
                    img = nib.Nifti1Image.from_stream(f)
                    data = np.asarray(img.dataobj, dtype=np.float32)
                    while f.read(1 << 20):  # to the end: the gzip trailer's checks
                        pass
                    return img, data
    img = nib.load(path)
    return img, np.asarray(img.dataobj, dtype=np.float32)


def load_dwi(dwi_path, bval_path=None, bvec_path=None, *, b0_threshold: float = B0_THRESHOLD,
             max_bval: float | None = DEFAULT_MAX_BVAL, return_notes: bool = False):
    """Load a DWI series as float32 with its checked gradient table.

    Parameters
    ----------
    dwi_path : str or pathlib.Path
        4D NIfTI (``.nii`` or ``.nii.gz``).
    bval_path, bvec_path : str or pathlib.Path, optional
        Gradient files; default: the DWI's name with ``.bval``/``.bvec``, or
        with ``.b`` (MRtrix table, as QSIPrep writes) when those do not
        exist. Give the same ``.b`` file as both to read an MRtrix table.
    b0_threshold : float, default=50.0
        b-values at or below this are b = 0 (s/mm²); see :data:`B0_THRESHOLD`.
    max_bval : float or None, default=1500.0
        Volumes with a higher b-value (s/mm², 50 of tolerance) are left out,
        with a note; ``None`` keeps every volume. See :data:`DEFAULT_MAX_BVAL`.
    return_notes : bool, default=False
        Also return the notes for the QC (list of one-line strings).

    Returns
    -------
    img : nibabel.Nifti1Image
        The kept volumes as float32 (scaling applied), with the original affine.
    gtab : dipy.core.gradients.GradientTable
        Their gradient table (b-vectors of b = 0 volumes are zero).
    notes : list of str
        Only with ``return_notes=True``: what was accepted or left out.

    Raises
    ------
    ketamine_nb.exceptions.InputError
        A one-line message naming the file, the problem and the fix.
    """
    import nibabel as nib
    from dipy.core.gradients import gradient_table

    dwi_path = Path(dwi_path)
    stem = dwi_path.name.removesuffix(".gz").removesuffix(".nii")
    bval_path = Path(bval_path) if bval_path else dwi_path.with_name(stem + ".bval")
    bvec_path = Path(bvec_path) if bvec_path else dwi_path.with_name(stem + ".bvec")
    mrtrix = dwi_path.with_name(stem + ".b")
    if not (bval_path.is_file() or bvec_path.is_file()) and mrtrix.is_file():
        bval_path = bvec_path = mrtrix                          # QSIPrep's .b table only
    if not dwi_path.is_file():
        raise InputError(f"{dwi_path}: file not found; check the path")
    if dwi_path.stat().st_size == 0:
        raise InputError(f"{dwi_path}: empty file (0 bytes); copy the image again")
    if max_bval is not None and not (np.isfinite(max_bval) and max_bval > b0_threshold):
        raise InputError(f"max_bval={max_bval!r}: must be a b-value above {b0_threshold:g} "
                         "s/mm² (e.g. 1500), or None to keep every volume")
    try:
        img, data = _read_float32(dwi_path)
    except Exception as exc:  # nibabel raises many kinds for broken files
        kind = type(exc).__name__
        raise InputError(f"{dwi_path}: cannot read as NIfTI ({kind}: {exc}); the file is "
                         "truncated or not a NIfTI image, copy or convert it again") from None
    sform, scode = img.header.get_sform(coded=True)
    qform, qcode = img.header.get_qform(coded=True)
    if scode and qcode and not np.allclose(sform, qform, atol=1e-3):
        raise InputError(f"{dwi_path}: the header's sform and qform affines disagree (by up "
                         f"to {np.abs(sform - qform).max():.3g} mm); the image's position is "
                         "ambiguous: rewrite the header with one of them (e.g. nibabel "
                         "img.set_qform(img.get_sform()))")
    if data.ndim != 4:
        raise InputError(f"{dwi_path}: a {data.ndim}D image; a DWI series is 4D "
                         "(x, y, z, volume)")
    if not np.all(np.isfinite(data)):
        n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{dwi_path}: {n} voxels are NaN or infinite; fix the conversion "
                         "(e.g. rerun dcm2niix) before processing")
    if bval_path.suffix == ".b" and bval_path == bvec_path:
        bvals, bvecs = read_mrtrix_gradients(bval_path, img.affine)
    else:
        bvals, bvecs = read_gradients(bval_path, bvec_path)
    bvals, bvecs, keep, notes = _checked_gradients(
        bvals, bvecs, data.shape[3], source=f"{bval_path.name}/{bvec_path.name}",
        b0_threshold=b0_threshold, max_bval=max_bval)
    if not keep.all():
        data = np.asfortranarray(data[..., keep])  # the fit reads voxels in Fortran order
    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=b0_threshold)
    out = nib.Nifti1Image(data, img.affine)
    out.header.set_xyzt_units("mm", "sec")
    return (out, gtab, notes) if return_notes else (out, gtab)


def mean_b0(dwi_img, gtab):
    """Return the mean of the b = 0 volumes as a 3D ``Nifti1Image``."""
    import nibabel as nib

    data = np.asarray(dwi_img.dataobj, dtype=np.float32)
    return nib.Nifti1Image(data[..., gtab.b0s_mask].mean(axis=-1), dwi_img.affine)


def brain_mask(dwi_img, gtab, *, threshold_factor: float = 0.6):
    """Fast brain mask from the mean b0 and the mean DWI.

    Otsu's threshold on the mean b0 (after a 3x3x3 median filter) splits
    head from background; it is lowered by ``threshold_factor`` so that
    grey matter at the edge of the brain is kept, then the largest connected
    component is kept, one closing smooths the edge and holes are filled.
    Where the brain reaches the edge of the field of view (a slab), the
    closing treats the grid as continuing beyond it, so the first and last
    slices keep their brain voxels.
    It is much faster than dipy's ``median_otsu`` with its defaults (timings:
    ``bench_md_fit`` in benchmarks/RESULTS.md); its Dice against the simulated brain is >= 0.93
    (tests/test_pipeline.py).

    Parameters
    ----------
    dwi_img : nibabel.Nifti1Image
        4D DWI.
    gtab : dipy.core.gradients.GradientTable
        Its gradients.
    threshold_factor : float, default=0.6
        Fraction of Otsu's threshold to use.

    Returns
    -------
    nibabel.Nifti1Image
        uint8 mask (1 = brain), on the DWI grid.
    """
    import nibabel as nib
    from dipy.segment.threshold import otsu
    from scipy import ndimage as ndi

    b0 = np.asarray(mean_b0(dwi_img, gtab).dataobj)
    sm = ndi.median_filter(b0, size=3)
    thr = otsu(sm[sm > 0]) * threshold_factor if np.any(sm > 0) else 0
    m = sm > thr
    lab, n = ndi.label(m)
    if n == 0:
        return nib.Nifti1Image(np.zeros(b0.shape, np.uint8), dwi_img.affine)
    sizes = ndi.sum(m, lab, index=np.arange(1, n + 1))
    m = lab == (1 + int(np.argmax(sizes)))
    # Closing on a copy padded with its own edge: scipy erodes against a
    # border of 0, which emptied the first and last slices of a field of view
    # that cuts through the brain (a slab: on uih-retest the lowest slice,
    # where the frontal pole is, had no brain voxel).
    m = ndi.binary_closing(np.pad(m, 1, mode="edge"), iterations=1)[1:-1, 1:-1, 1:-1]
    m = ndi.binary_fill_holes(m)
    return nib.Nifti1Image(m.astype(np.uint8), dwi_img.affine)


def qc_session(dwi_img, gtab, mask_img, *, z_threshold: float = 4.0) -> dict:
    """Quality metrics of one session; the flags travel with the results.

    Parameters
    ----------
    dwi_img : nibabel.Nifti1Image
        4D DWI (float).
    gtab : dipy.core.gradients.GradientTable
        Its gradients.
    mask_img : nibabel.Nifti1Image
        Brain mask.
    z_threshold : float, default=4.0
        Robust z-score above which a volume's or slice's mean signal is an
        outlier (median absolute deviation scale); it must also differ from
        the median of its b-value by more than 10 %.

    Returns
    -------
    dict
        ``snr_b0`` (mean b0 in the mask over the SD of the background, with
        the Rayleigh correction sqrt(2 - pi/2) of one receive channel; with
        several combined by root-sum-of-squares the background's SD is
        larger and the SNR reads a few percent low, 6 % for four),
        ``mask_volume_ml``,
        ``outlier_volumes`` and ``outlier_slices`` (lists of indices /
        ``[volume, slice]`` pairs), ``n_volumes``, ``n_b0`` and ``flags``
        (short strings; empty when all is well).
    """
    from scipy import ndimage as ndi

    data = np.asarray(dwi_img.dataobj, dtype=np.float32)
    mask = np.asarray(mask_img.dataobj) > 0
    vox_ml = float(np.prod(dwi_img.header.get_zooms()[:3])) / 1000.0
    flags = []
    b0 = data[..., gtab.b0s_mask].mean(-1)
    far = ~ndi.binary_dilation(mask, iterations=3)
    bg = data[far][:, gtab.b0s_mask] if far.any() else np.empty((0, 1))
    if bg.size > 100 and bg.std() > 0:
        sigma = float(bg.std() / np.sqrt(2 - np.pi / 2))  # Rayleigh SD -> Gaussian sigma
        snr = float(b0[mask].mean() / sigma) if mask.any() else float("nan")
    else:
        snr = float("nan")
    if np.isfinite(snr) and snr < 10:
        flags.append("low_snr")
    # Volume and slice outliers: mean masked signal per (volume, slice),
    # compared within the same b-value with a robust z-score.
    outlier_volumes, outlier_slices = [], []
    means = np.array([[data[:, :, z, v][mask[:, :, z]].mean() if mask[:, :, z].sum() > 20
                       else np.nan for z in range(data.shape[2])]
                      for v in range(data.shape[3])])
    for is_b0 in (True, False):
        sel = gtab.b0s_mask if is_b0 else ~gtab.b0s_mask
        idx = np.flatnonzero(sel)
        if idx.size < 3:
            continue
        vm = np.nanmean(means[idx], axis=1)
        med, mad = np.median(vm), np.median(np.abs(vm - np.median(vm))) * 1.4826
        # A volume must also differ by > 10 % (directions legitimately differ a little).
        far = np.abs(vm - med) > 0.1 * abs(med)
        z = np.abs(vm - med) / mad if mad > 0 else np.where(far, np.inf, 0.0)
        outlier_volumes += idx[far & (z > z_threshold)].tolist()
        block = means[idx]
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # slices outside the brain
            smed = np.nanmedian(block, axis=0)
            smad = np.nanmedian(np.abs(block - smed), axis=0) * 1.4826
            z = np.abs(block - smed) / smad
        # Only signal drops count (dropout); a slice must differ by > 10 %.
        low = (block < smed * 0.9) & (z > z_threshold)
        for i, k in zip(*np.nonzero(low), strict=True):
            outlier_slices.append([int(idx[i]), int(k)])
    outlier_volumes = sorted(set(outlier_volumes))
    if outlier_volumes:
        flags.append("outlier_volumes")
    if outlier_slices:
        flags.append("slice_dropout")
    mask_ml = float(mask.sum() * vox_ml)
    if not 800 <= mask_ml <= 2500:
        flags.append("mask_volume")
    return {"snr_b0": round(snr, 3), "mask_volume_ml": round(mask_ml, 3),
            "n_volumes": int(data.shape[3]), "n_b0": int(gtab.b0s_mask.sum()),
            "outlier_volumes": outlier_volumes, "outlier_slices": outlier_slices,
            "flags": flags}


def gradients_frame(gtab):
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
    import pandas as pd

    g = np.asarray(gtab.bvecs, float)
    return pd.DataFrame({"volume": np.arange(len(gtab.bvals)),
                         "bval": np.asarray(gtab.bvals, float), "x": g[:, 0], "y": g[:, 1],
                         "z": g[:, 2], "b0": np.asarray(gtab.b0s_mask, bool)})
