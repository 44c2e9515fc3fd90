"""Rigid/affine registration of each session to the MNI152 template nilearn ships.

Where the regions meet the MD map
---------------------------------
By default the study regions are brought to each session's native DWI grid
and MD is averaged there: the regions' probabilities are interpolated, the
MD values are not (interpolating MD would mix CSF into tissue at every
boundary). ``space="MNI"`` in the pipeline does the reverse (MD resampled to
the template grid, regions left as they are) for users who want the maps of
all sessions on one grid; the ROI values then carry that interpolation.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from .derivatives import TEMPLATE_SPACE as _TEMPLATE_SPACE
from .exceptions import InputError

__all__ = [
    "REGISTRATION_PARAMS",
    "TEMPLATE_SPACE",
    "apply_transform",
    "load_template",
    "read_transform",
    "register_to_template",
    "write_transform",
]

#: BIDS name of the template space: nilearn ships the ICBM 2009a symmetric
#: template (``mni_icbm152_t1_tal_nlin_sym_09a``). Defined with the file
#: names in :mod:`ketamine_nb.derivatives`.
TEMPLATE_SPACE = _TEMPLATE_SPACE

#: Registration defaults, chosen on the simulated cohort (see
#: benchmarks/RESULTS.md): mutual information (b0 and T1 contrasts differ)
#: on 15 % of the template voxels (dipy's regular sampling with a fixed
#: jitter, so the result is reproducible), the template at 3 mm cropped to the
#: head, three levels (12, 6 and 3 mm) of 100, 50 and 20 iterations. A rigid
#: transform has 6 parameters: ~24,000 sample points constrain them to a
#: fraction of a voxel, and the coarse level keeps the optimiser out of local
#: optima. On simulated sessions it is as accurate as dense MI on a 4 mm
#: template (the earlier default) at less CPU: ``bench_registration`` in
#: benchmarks/RESULTS.md.
REGISTRATION_PARAMS = {
    "template_resolution": 3.0,
    "level_iters": (100, 50, 20),
    "sigmas": (2.0, 1.0, 0.0),
    "factors": (4, 2, 1),
    "nbins": 32,
    "sampling_proportion": 0.15,
}


#: Version of :func:`_build_template`'s recipe, part of the cache file name.
_TEMPLATE_RECIPE = 1


def _build_template(resolution: float, crop: bool):
    import nibabel as nib
    from nilearn.datasets import load_mni152_template
    from nilearn.image import resample_img

    t = load_mni152_template(resolution=1)
    aff = np.diag([resolution, resolution, resolution, 1.0])
    aff[:3, 3] = [-96.0, -132.0, -78.0]
    shape = tuple(int(round(s / resolution)) for s in (192, 228, 192))
    img = resample_img(t, target_affine=aff, target_shape=shape, interpolation="linear",
                       force_resample=True, copy_header=True)
    img = nib.Nifti1Image(np.asarray(img.dataobj, np.float32), aff)
    if crop:
        from nilearn.image import crop_img

        img = crop_img(img, rtol=0.05, copy_header=True)
        img = nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine)
    return img


@lru_cache(maxsize=8)
def _template(resolution: float, crop: bool = False):
    """Return the template grid, from ``<data home>/template_cache`` once built.

    Resampling nilearn's 1 mm template and importing ``nilearn.datasets``
    would cost time in every process that registers a session; the cached
    file (named after the nilearn version) reads much faster.
    A data home that cannot be written only means no cache.
    """
    from importlib.metadata import version

    import nibabel as nib

    from ._utils import save_nifti
    from .datasets import get_data_home

    desc = "_desc-head" if crop else ""
    # The recipe version changes whenever _build_template does.
    name = (f"tpl-{TEMPLATE_SPACE}_res-{resolution:g}mm{desc}_T1w_"
            f"nilearn-{version('nilearn')}_recipe-{_TEMPLATE_RECIPE}.nii.gz")
    try:
        path = get_data_home() / "template_cache" / name
    except OSError:  # no usable data home: build it every time
        return _build_template(resolution, crop)
    if path.exists():
        try:
            img = nib.load(path)
            return nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine)
        except Exception:  # a damaged cache file is rebuilt
            pass
    img = _build_template(resolution, crop)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_nifti(img, path)
    except OSError:
        pass
    return img


def load_template(resolution: float = 3.0, *, crop: bool = False):
    """Return nilearn's MNI152 (2009a symmetric) T1 template on a grid of ``resolution`` mm.

    Parameters
    ----------
    resolution : float, default=3.0
        Isotropic voxel size of the grid (mm); the grid covers x -96..96,
        y -132..96, z -78..114 mm.
    crop : bool, default=False
        Crop the grid to the head (fewer voxels for registration).

    Returns
    -------
    nibabel.Nifti1Image
        float32 template.
    """
    return _template(float(resolution), bool(crop))


def register_to_template(moving_img, *, transform: str = "rigid", template=None,
                         params: dict | None = None):
    """Register a 3D image (e.g. the mean b0) to the MNI template.

    dipy's ``AffineRegistration`` with mutual information, started from the
    alignment of the centres of mass, then rigid (6 parameters) and, for
    ``transform="affine"``, a further affine (12 parameters) stage.

    Parameters
    ----------
    moving_img : nibabel.Nifti1Image
        3D image in native space.
    transform : {"rigid", "affine"}, default="rigid"
        Transform model. Rigid suits within-subject head motion to a template
        of the same head size; affine also absorbs head size.
    template : nibabel.Nifti1Image, optional
        Target; default :func:`load_template` at the registration resolution.
    params : dict, optional
        Overrides of :data:`REGISTRATION_PARAMS`.

    Returns
    -------
    numpy.ndarray, shape (4, 4)
        The matrix ``A`` that maps template (MNI) mm to native mm:
        ``x_native = A @ x_mni`` (dipy's static-to-moving convention).
    """
    from dipy.align.imaffine import (
        AffineRegistration,
        MutualInformationMetric,
        transform_centers_of_mass,
    )
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D

    if transform not in ("rigid", "affine"):
        raise InputError(f"transform {transform!r} is unknown; use 'rigid' or 'affine'")
    p = dict(REGISTRATION_PARAMS, **(params or {}))
    template = template if template is not None else load_template(p["template_resolution"],
                                                                    crop=True)
    # C order whatever the source (nibabel gives Fortran order, a cropped
    # array a view): dipy's sums run in memory order, so the layout changes
    # the last digits of the result.
    static = np.ascontiguousarray(np.asarray(template.dataobj), np.float32)
    moving = np.ascontiguousarray(np.asarray(moving_img.dataobj), np.float32)
    if moving.ndim != 3:
        raise InputError(f"registration needs a 3D image, got {moving.ndim}D")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        com = transform_centers_of_mass(static, template.affine, moving, moving_img.affine)
        reg = AffineRegistration(
            metric=MutualInformationMetric(nbins=p["nbins"],
                                           sampling_proportion=p["sampling_proportion"]),
            level_iters=list(p["level_iters"]), sigmas=list(p["sigmas"]),
            factors=list(p["factors"]), verbosity=0)
        res = reg.optimize(static, moving, RigidTransform3D(), None,
                           static_grid2world=template.affine,
                           moving_grid2world=moving_img.affine,
                           starting_affine=com.affine)
        if transform == "affine":
            res = reg.optimize(static, moving, AffineTransform3D(), None,
                               static_grid2world=template.affine,
                               moving_grid2world=moving_img.affine,
                               starting_affine=res.affine)
    return np.asarray(res.affine, dtype=np.float64)


def apply_transform(img, mni_to_native, *, target, direction: str = "to_native",
                    order: int = 1):
    """Resample an image between MNI and native space with a registration matrix.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3D or 4D image to resample (4D: each volume).
    mni_to_native : numpy.ndarray, shape (4, 4)
        Output of :func:`register_to_template`.
    target : nibabel.Nifti1Image
        Image whose grid (shape, affine) the result takes.
    direction : {"to_native", "to_mni"}, default="to_native"
        ``to_native``: ``img`` is in MNI space, ``target`` native;
        ``to_mni``: the reverse.
    order : int, default=1
        Interpolation order (0 nearest, 1 linear).

    Returns
    -------
    nibabel.Nifti1Image
        float32 image on the target grid (0 outside the source).
    """
    import nibabel as nib
    from scipy.ndimage import map_coordinates

    A = np.asarray(mni_to_native, float)
    if direction == "to_native":
        world = np.linalg.inv(A)  # native mm -> MNI mm
    elif direction == "to_mni":
        world = A
    else:
        raise InputError("direction must be 'to_native' or 'to_mni'")
    vox = np.linalg.inv(img.affine) @ world @ target.affine
    shape = target.shape[:3]
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = vox[:3, :3] @ ijk + vox[:3, 3:4]
    data = np.asarray(img.dataobj, dtype=np.float32)
    vols = data[..., None] if data.ndim == 3 else data
    out = np.zeros((coords.shape[1], vols.shape[-1]), np.float32)
    for k in range(vols.shape[-1]):
        vol = vols[..., k]
        if order > 1:  # splines reach beyond the next voxel: interpolate everywhere
            out[:, k] = map_coordinates(vol, coords, order=order, mode="constant", cval=0.0,
                                        prefilter=False)
            continue
        # Only points near the volume's non-zero box can get a non-zero value
        # (linear or nearest interpolation, 0 outside): interpolate just those.
        # Region maps cover a few percent of the grid, so this is most of the
        # work saved; the values are the same as interpolating everywhere.
        nz = [np.flatnonzero(vol.any(axis=tuple(a for a in range(3) if a != ax)))
              for ax in range(3)]
        if any(len(n) == 0 for n in nz):
            continue
        near = np.ones(coords.shape[1], bool)
        for ax in range(3):
            near &= (coords[ax] > nz[ax][0] - 1) & (coords[ax] < nz[ax][-1] + 1)
        out[near, k] = map_coordinates(vol, coords[:, near], order=order, mode="constant",
                                       cval=0.0, prefilter=False)
    out = out.reshape(*shape, vols.shape[-1])
    if data.ndim == 3:
        out = out[..., 0]
    return nib.Nifti1Image(out.astype(np.float32), target.affine)


def write_transform(matrix, path):
    """Save a 4x4 MNI-to-native matrix as text (with a comment saying so)."""
    from ._utils import atomic_write_text

    header = (f"# 4x4 affine, world mm: x_native = A @ x_mni ({TEMPLATE_SPACE} -> session "
              "DWI; dipy static-to-moving convention)\n")
    rows = "\n".join(" ".join(f"{v:.10f}" for v in row) for row in np.asarray(matrix))
    return atomic_write_text(path, header + rows + "\n")


def read_transform(path):
    """Read a matrix written by :func:`write_transform`."""
    m = np.loadtxt(path, comments="#")
    if m.shape != (4, 4):
        raise InputError(f"{path}: not a 4x4 matrix; rerun the pipeline with --force")
    return m
