"""Both visits of a participant in one space, and the atlas brought there once.

Why a halfway space
-------------------
ΔMD = post − pre is a difference of two maps of the same brain, so the two
maps must sample the same tissue. Registering each visit to the template on
its own (the package's earlier design) puts each visit's registration error
into ΔMD: on a real same-day rescan on a rotated grid (``uih-retest``
sub-01) regional ΔMD came out between −1.6 % and +3.0 % when the truth is 0.
Here, per participant:

1. the post visit is registered to the pre visit, rigidly (:func:`register_visits`),
   on the brain-masked mean diffusion-weighted image with mutual information:
   the b > 0 signal has tissue contrast in both visits and, unlike the b0, no
   bright CSF rim that a reversed phase-encoding direction shifts in
   opposite directions; mutual information tolerates the intensity changes
   distortion causes;
2. both visits are resampled into the *halfway* space: with ``A`` the rigid
   transform (``x_post = A x_pre``), the halfway transform ``H`` is its
   matrix square root (``H @ H = A``), pre is moved by ``H`` and post by
   ``H⁻¹``, so both are interpolated by the same amount and neither visit is
   the reference (the convention of FreeSurfer's ``mri_robust_template`` and
   of ANTs' longitudinal pipelines, Reuter et al. 2012). The grid is halfway
   between the two visits' grids too (:func:`halfway_grid`). Each DWI volume
   is interpolated once, with any within-scan realignment composed in
   (:func:`resample_dwi`), and the tensor is fitted there;
3. the atlas is registered once per participant to the mean MD of the
   aligned visits (:func:`register_atlas`): affine (12 degrees of freedom,
   mutual information), then symmetric diffeomorphic (SyN, local
   cross-correlation) at low resolution, against a synthetic MD template made
   from nilearn's bundled MNI152 (2009a) tissue probabilities
   (:func:`synthetic_md_template`). A region then has the same voxels in both
   visits; the CSF guard is judged once, on the mean MD of the two visits.

Coverage
--------
:func:`region_coverage` gives, per region and visit, the share of the region's
atlas probability mass that falls inside the visit's field of view
(``coverage_fov``) and inside its brain mask (``coverage_brain``). Regions
under :data:`ketamine_nb.roi.DEFAULT_MIN_COVERAGE` are not summarised (see
:mod:`ketamine_nb.roi`).

Library
-------
dipy's ``imaffine`` + ``SymmetricDiffeomorphicRegistration``, not ANTsPy.
Both were run on the same participant (``uih-retest`` sub-01's halfway mean
MD against the synthetic template at 4 mm, one thread): ANTsPy 0.6.3
(``antspyx``) needed less CPU than dipy for the affine and the SyN stages,
but its default registration samples points at random, so two runs differ
unless seeded, and multi-threaded ITK sums in varying order; the package
promises byte-identical outputs serially and on ``n_jobs`` workers. ANTsPy is
also a 90 MB wheel (with its own ITK thread pool) where dipy is already a
dependency. The CPU cost of dipy is kept down instead: a 4 mm template, dense
mutual information on the brain's box only, a coarse start, few SyN
iterations. ``benchmarks/bench_longitudinal.py`` measures ours against a
plain dipy script at the tutorials' settings (time and accuracy on a
simulated participant whose head positions are known); the figures are in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ._utils import mutual_information, without_grid_edge
from .exceptions import InputError
from .regions import GLOBAL_GM

__all__ = [
    "ATLAS_REGISTRATIONS",
    "DEFAULT_ATLAS_REGISTRATION",
    "MIN_VISIT_SIMILARITY",
    "TISSUE_MD",
    "AtlasMapping",
    "halfway_grid",
    "halfway_transform",
    "register_atlas",
    "register_visits",
    "resample_dwi",
    "resample_image",
    "synthetic_md_template",
]

#: Atlas-to-participant registration models: ``affine`` (12 parameters) or
#: ``syn`` (affine, then symmetric diffeomorphic).
ATLAS_REGISTRATIONS = ("affine", "syn")

#: Default atlas registration: a real head differs from the template in shape
#: as well as size; with an affine only, 25-47 % of the BA10 regions of a
#: real scan fell inside its brain mask.
DEFAULT_ATLAS_REGISTRATION = "syn"

#: Post-to-pre registration is flagged (``visits_dissimilar``) when the
#: correlation of the two visits' brain-masked mean DWI after registration is
#: below this. Measured: 0.98 on simulated visits, 0.95 on a real same-day
#: rescan (``uih-retest`` sub-01) and 0.85 when the phase-encoding direction
#: is reversed between the visits (sub-03), whose susceptibility distortions
#: then differ and no rigid transform can undo; such a pair needs
#: distortion-corrected (topup/eddy, QSIPrep) input.
MIN_VISIT_SIMILARITY = 0.9

#: Mean diffusivity of the tissue classes at body temperature (mm²/s) used to
#: paint the synthetic template: grey matter ~0.8e-3, white matter ~0.7e-3
#: (Pierpaoli et al. 1996), CSF ~3.0e-3 (free water at 37 °C).
TISSUE_MD = {"gm": 0.80e-3, "wm": 0.70e-3, "csf": 3.0e-3}

#: Registration settings. Rigid post-to-pre: mutual information on a quarter
#: of the grid's voxels (one at random in each run of four), those inside the
#: pre visit's brain mask (:func:`._utils.sampled_mutual_information`), two
#: levels. Atlas: affine on a template at ``atlas_resolution`` mm (mutual
#: information sampled the same way inside the participant's mask, or on
#: every voxel in a slab: see :func:`register_atlas`), then SyN on the same
#: grid with few iterations (the 3-4 mm data carry no detail finer than
#: that). Measured on
#: 24 realistic simulated participants against the simulator's truth
#: (2026-12-02): post-to-pre error 0.27 mm on average (0.28 with every voxel),
#: largest 0.75 mm (1.42), CPU 0.4 s (2.0); atlas error median 1.93 mm, 95th
#: percentile 4.39 mm (1.92, 4.33 with every voxel), CPU 1.0 s (2.1). In a
#: field of view that misses more than 2 cm of the brain, the affine's coarse
#: start is tried from the centres of mass, the tops and the bottoms aligned,
#: and the best of those also tilted by ``start_pitches`` (degrees about the
#: left-right axis).
LONGITUDINAL_PARAMS = {
    "visit_level_iters": (50, 20),
    "visit_sigmas": (2.0, 1.0),
    "visit_factors": (4, 2),
    "visit_sampling": 0.25,
    "atlas_resolution": 4.0,
    "start_level_iters": (20,),
    "start_sigmas": (1.0,),
    "start_factors": (2,),
    "start_pitches": (-8.0, 8.0),
    "affine_level_iters": (20, 10),
    "affine_sigmas": (1.0, 0.0),
    "affine_factors": (2, 1),
    "syn_level_iters": (10, 5),
    "syn_cc_radius": 2,
    "nbins": 32,
    "sampling_proportion": 0.25,
    "affine_min_fov": 0.9,
}


# --------------------------------------------------------------------------- visits


def _masked(img, mask_img=None, clip=None):
    data = np.ascontiguousarray(np.asarray(img.dataobj, np.float32))
    if clip is not None:
        data = np.clip(data, 0, clip)
    if mask_img is not None:
        data = np.where(np.asarray(mask_img.dataobj) > 0, data, np.float32(0))
    return np.ascontiguousarray(data, np.float32)


def register_visits(pre_img, post_img, *, pre_mask=None, post_mask=None,
                    params: dict | None = None):
    """Rigidly register the post visit to the pre visit.

    Parameters
    ----------
    pre_img, post_img : nibabel.Nifti1Image
        3D images of the same contrast, e.g. the mean diffusion-weighted image
        (b > 0) of each visit, on their own grids.
    pre_mask, post_mask : nibabel.Nifti1Image, optional
        Brain masks; the images are set to 0 outside them.
    params : dict, optional
        Overrides of :data:`LONGITUDINAL_PARAMS`.

    Returns
    -------
    matrix : numpy.ndarray, shape (4, 4)
        ``A`` with ``x_post = A @ x_pre`` (world mm; dipy's static-to-moving
        convention, static = pre).
    similarity : float
        Pearson correlation of the two masked images on the pre grid after
        registration (1 = identical up to scale).
    """
    from dipy.align.imaffine import (
        AffineRegistration,
        transform_centers_of_mass,
    )
    from dipy.align.transforms import RigidTransform3D

    p = dict(LONGITUDINAL_PARAMS, **(params or {}))
    # Without the grid's outer layer (``without_grid_edge``): on 8 simulated
    # idealised participants, whose field of view cuts the brainstem, the
    # masks' flat faces there took the registration error from 0.21 to 1.5 mm
    # for one participant (ΔMD r 0.934 -> 0.861).
    static_mask = _edge_free(pre_mask)
    static = _masked(pre_img, static_mask)
    moving = _masked(post_img, _edge_free(post_mask))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        com = transform_centers_of_mass(static, pre_img.affine, moving, post_img.affine)
        # The sampled metric is kept inside the mask; the dense one sees the
        # masked images whole (their zeros outside the brain included).
        kw = {} if p["visit_sampling"] is None or static_mask is None else \
            {"static_mask": np.asarray(static_mask.dataobj, np.int32)}
        reg = AffineRegistration(
            metric=mutual_information(p["nbins"], p["visit_sampling"]),
            level_iters=list(p["visit_level_iters"]), sigmas=list(p["visit_sigmas"]),
            factors=list(p["visit_factors"]), verbosity=0)
        # Start from the centres of mass. A start from the scanner's own
        # alignment (identity) when they were < 10 mm apart left 8 of 20
        # simulated participants more than 1 mm off (up to 15 mm), 3 of them
        # unflagged; from the centres of mass none (max 0.65 mm).
        res = reg.optimize(static, moving, RigidTransform3D(), None,
                           static_grid2world=pre_img.affine, moving_grid2world=post_img.affine,
                           starting_affine=com.affine, **kw)
    A = np.asarray(res.affine, np.float64)
    moved = resample_image(post_img if post_mask is None else _as_img(moving, post_img),
                           A, pre_img.affine, pre_img.shape[:3])
    return A, _similarity(static, np.asarray(moved.dataobj))


def _edge_free(mask_img):
    if mask_img is None:
        return None
    import nibabel as nib

    return nib.Nifti1Image(without_grid_edge(np.asarray(mask_img.dataobj) > 0).astype(np.uint8),
                           mask_img.affine)


def _as_img(data, like):
    import nibabel as nib

    return nib.Nifti1Image(np.asarray(data, np.float32), like.affine)


def _similarity(a, b) -> float:
    m = (a > 0) & (b > 0)
    if m.sum() < 10:
        return float("nan")
    return float(np.corrcoef(a[m], b[m])[0, 1])


def halfway_transform(A):
    """Return ``H`` with ``H @ H = A`` for a rigid (or affine) 4x4 matrix.

    The principal matrix square root: for a rotation by θ about an axis it
    rotates by θ/2 about the same axis, with half the screw translation.
    """
    from scipy.linalg import sqrtm

    H = sqrtm(np.asarray(A, np.float64))
    H = np.real(H)
    H[3] = [0, 0, 0, 1]
    return H


def halfway_grid(pre_img, post_img, A, *, pad: int = 1):
    """Return the halfway space's grid and each visit's map into it.

    Parameters
    ----------
    pre_img, post_img : nibabel.Nifti1Image
        The visits (any contrast; only the grids are used).
    A : numpy.ndarray, shape (4, 4)
        :func:`register_visits`' matrix (``x_post = A @ x_pre``).
    pad : int, default=1
        Voxels added on every side of the grid so that a rotated field of
        view is not cut at its corners.

    Returns
    -------
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-halfway-mm matrix of the grid.
    shape : tuple of int
    to_pre, to_post : numpy.ndarray, shape (4, 4)
        World maps from halfway mm to each visit's mm
        (``x_pre = to_pre @ x_half``, ``x_post = to_post @ x_half``).

    Notes
    -----
    With ``H = sqrt(A)``, halfway mm is ``x_half = H @ x_pre = H⁻¹ @ x_post``.
    Its grid is halfway between the two visits' grids as seen from there: the
    pre grid moved by ``H`` and the post grid moved by ``H⁻¹`` differ by a
    voxel-space map ``M``; the grid is the pre grid followed by ``sqrt(M)``.
    A rescan on a grid rotated by 14° is then resampled on a grid rotated by
    7° from each, so both visits are interpolated alike.
    """
    H = halfway_transform(A)
    Hinv = np.linalg.inv(H)
    g_pre = H @ pre_img.affine
    g_post = Hinv @ post_img.affine
    M = np.linalg.inv(g_pre) @ g_post
    try:
        S = halfway_transform(M)
        affine = g_pre @ S
        if not np.all(np.isfinite(affine)):
            raise ValueError
    except (ValueError, np.linalg.LinAlgError):
        affine = g_pre
    shape = np.array(pre_img.shape[:3]) + 2 * pad
    affine = affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    return affine, tuple(int(s) for s in shape), Hinv, H


def _sample(data, vox, order=1, cval=0.0):
    from scipy.ndimage import map_coordinates

    return map_coordinates(data, vox, order=order, mode="constant", cval=cval, prefilter=False)


def resample_image(img, world_map, target_affine, target_shape, *, order: int = 1):
    """Resample a 3D image onto a grid.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3D source image.
    world_map : numpy.ndarray, shape (4, 4)
        Maps target mm to source mm (``x_source = world_map @ x_target``).
    target_affine : numpy.ndarray, shape (4, 4)
    target_shape : tuple of int
    order : int, default=1
        0 nearest, 1 linear.

    Returns
    -------
    nibabel.Nifti1Image
        float32, 0 outside the source.
    """
    import nibabel as nib

    vox = np.linalg.inv(img.affine) @ np.asarray(world_map, float) @ target_affine
    data = np.asarray(img.dataobj, np.float32)
    out = _affine_sample(data, vox, target_shape, order=order)
    return nib.Nifti1Image(out.astype(np.float32), target_affine)


def _affine_sample(data, vox, shape, order=1):
    """Sample ``data`` at ``vox @ ijk`` for every voxel ``ijk`` of ``shape`` (0 outside)."""
    from scipy.ndimage import affine_transform

    out = affine_transform(data, vox[:3, :3], offset=vox[:3, 3], output_shape=tuple(shape),
                           order=order, mode="constant", cval=0.0, prefilter=order > 1)
    return np.clip(out, 0, None) if order > 1 else out  # splines overshoot below 0


def _point_sample(data, coords, order=1):
    """Sample ``data`` at voxel coordinates ``coords`` (3, n) as :func:`_affine_sample` does."""
    from scipy.ndimage import map_coordinates

    out = map_coordinates(data, coords, order=order, mode="constant", cval=0.0,
                          prefilter=order > 1)
    return np.clip(out, 0, None) if order > 1 else out


def field_of_view(img, world_map, target_affine, target_shape):
    """Boolean map of the target voxels whose centre lies inside ``img``'s grid."""
    vox = np.linalg.inv(img.affine) @ np.asarray(world_map, float) @ target_affine
    ijk = np.indices(target_shape, dtype=np.float32).reshape(3, -1)
    c = vox[:3, :3] @ ijk + vox[:3, 3:4]
    n = np.asarray(img.shape[:3])[:, None]
    inside = np.all((c >= -0.5) & (c <= n - 0.5), axis=0)
    return inside.reshape(target_shape)


#: Interpolation of the DWI volumes into the halfway space: cubic B-splines.
#: Linear interpolation averages up to eight voxels and so mixes CSF into
#: tissue at every edge: on a simulated 8-participant cohort regional MD came
#: out 2.5 % above the truth on average (5.6 % at most) and ΔMD followed the
#: planted change at r = 0.896; with cubic splines 1.1 % (3.4 % at most) and
#: r = 0.909.
DWI_INTERPOLATION_ORDER = 3


def resample_dwi(dwi_img, gtab, world_map, target_affine, target_shape, *,
                 volume_transforms=None, order: int = DWI_INTERPOLATION_ORDER, within=None):
    """Resample every DWI volume onto a grid with one interpolation.

    Parameters
    ----------
    dwi_img : nibabel.Nifti1Image
        4D DWI on its own grid.
    gtab : dipy.core.gradients.GradientTable
        Its gradients (b-vectors in the image's voxel axes, as BIDS stores
        them).
    world_map : numpy.ndarray, shape (4, 4)
        Target mm to the visit's reference mm (e.g. ``to_pre`` of
        :func:`halfway_grid`).
    target_affine, target_shape :
        The target grid.
    volume_transforms : numpy.ndarray, shape (n_volumes, 4, 4), optional
        Within-scan realignment: ``x_volume = T[k] @ x_reference`` (world mm)
        for volume ``k``; composed with ``world_map`` so that each volume is
        interpolated once.
    order : int, default=3
        Spline order (:data:`DWI_INTERPOLATION_ORDER`; 1 = linear).
    within : numpy.ndarray of bool, shape ``target_shape``, optional
        Interpolate only these target voxels (e.g. the brain mask the tensor
        is fitted in); the others are 0. The values inside are the same as
        without it (same splines, evaluated at fewer points): on the demo's
        brains it makes the step about three times faster.

    Returns
    -------
    img : nibabel.Nifti1Image
        float32 4D DWI on the target grid (0 outside the source).
    gtab : dipy.core.gradients.GradientTable
        The gradients with the b-vectors expressed in the target grid's voxel
        axes (each volume's rotation applied).
    """
    import nibabel as nib
    from dipy.core.gradients import gradient_table

    data = np.asarray(dwi_img.dataobj, np.float32)
    n = data.shape[3]
    T = (np.broadcast_to(np.eye(4), (n, 4, 4)) if volume_transforms is None
         else np.asarray(volume_transforms, float))
    if T.shape != (n, 4, 4):
        raise InputError(f"{n} volumes but {T.shape[0]} volume transforms; the realignment "
                         "belongs to another series")
    out = np.zeros((*target_shape, n), np.float32)
    src_inv = np.linalg.inv(dwi_img.affine)
    bvecs = np.array(gtab.bvecs, float)
    idx = None if within is None else np.nonzero(np.asarray(within, bool))
    ijk = None if idx is None else np.array(idx, np.float64)
    for k in range(n):
        vox = src_inv @ T[k] @ np.asarray(world_map, float) @ target_affine
        if idx is None:
            out[..., k] = _affine_sample(data[..., k], vox, target_shape, order=order)
        else:
            out[(*idx, k)] = _point_sample(data[..., k], vox[:3, :3] @ ijk + vox[:3, 3:4],
                                           order=order)
        # A gradient direction fixed to the source voxel axes, seen from the
        # target voxel axes: the rotation part of target-vox -> source-vox.
        R = _rotation_part(vox[:3, :3] / np.asarray(_voxel_sizes(dwi_img.affine))[:, None]
                           * np.asarray(_voxel_sizes(target_affine))[None, :])
        if np.linalg.norm(bvecs[k]) > 0:
            bvecs[k] = R.T @ bvecs[k]
    img = nib.Nifti1Image(out, target_affine)
    g = gradient_table(np.asarray(gtab.bvals), bvecs=bvecs, b0_threshold=gtab.b0_threshold)
    return img, g


def _voxel_sizes(affine):
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def _rotation_part(M):
    u, _, vt = np.linalg.svd(M)
    return u @ vt  # orthogonal; a flip between the grids is kept


# --------------------------------------------------------------------------- atlas


def _build_synthetic_template(resolution: float):
    import nibabel as nib
    from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template
    from nilearn.image import resample_img
    from scipy import ndimage as ndi

    gm1 = load_mni152_gm_template(resolution=1)
    wm1 = load_mni152_wm_template(resolution=1)
    gm = np.clip(np.asarray(gm1.dataobj, np.float32), 0, 1)
    wm = np.clip(np.asarray(wm1.dataobj, np.float32), 0, 1)
    tissue = gm + wm
    # CSF: inside the brain's envelope (ventricles, sulci, a 2 mm rim outside
    # the cortex) where there is no tissue.
    envelope = ndi.binary_fill_holes(ndi.binary_closing(tissue > 0.3, iterations=4))
    envelope = ndi.binary_dilation(envelope, iterations=2)
    csf = np.clip(envelope.astype(np.float32) - tissue, 0, 1)
    aff = np.diag([resolution, resolution, resolution, 1.0])
    aff[:3, 3] = [-96.0, -132.0, -78.0]
    shape = tuple(int(round(s / resolution)) for s in (192, 228, 192))
    out = []
    for vol in (gm, wm, csf):
        img = resample_img(nib.Nifti1Image(vol, gm1.affine), target_affine=aff,
                           target_shape=shape, interpolation="continuous",
                           force_resample=True, copy_header=True)
        out.append(np.clip(np.asarray(img.dataobj, np.float32), 0, 1))
    return np.stack(out, axis=-1), aff


@lru_cache(maxsize=4)
def _synthetic(resolution: float):
    from importlib.metadata import version

    import nibabel as nib

    from ._utils import save_nifti
    from .datasets import get_data_home

    name = (f"tpl-MNI152NLin2009aSym_res-{resolution:g}mm_label-GMWMCSF_probseg_"
            f"nilearn-{version('nilearn')}_recipe-1.nii.gz")
    try:
        path = get_data_home() / "template_cache" / name
    except OSError:
        return _build_synthetic_template(resolution)
    if path.exists():
        try:
            img = nib.load(path)
            return np.asarray(img.dataobj, np.float32), img.affine
        except Exception:  # damaged cache: rebuild
            pass
    data, aff = _build_synthetic_template(resolution)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_nifti(nib.Nifti1Image(data, aff), path)
    except OSError:
        pass
    return data, aff


def synthetic_md_template(resolution: float = 4.0):
    """Return an MD-like template painted from nilearn's MNI152 tissue probabilities.

    Parameters
    ----------
    resolution : float, default=4.0
        Isotropic voxel size (mm).

    Returns
    -------
    md : nibabel.Nifti1Image
        ``TISSUE_MD`` weighted by the grey-matter, white-matter and CSF
        probabilities (mm²/s; 0 outside the brain).
    tissues : nibabel.Nifti1Image
        4D probabilities (GM, WM, CSF), same grid.
    """
    import nibabel as nib

    prob, aff = _synthetic(float(resolution))
    md = (prob[..., 0] * TISSUE_MD["gm"] + prob[..., 1] * TISSUE_MD["wm"]
          + prob[..., 2] * TISSUE_MD["csf"])
    return (nib.Nifti1Image(md.astype(np.float32), aff),
            nib.Nifti1Image(prob, aff))


@dataclass
class AtlasMapping:
    """Where each voxel of a participant's grid lies in MNI space.

    Attributes
    ----------
    affine : numpy.ndarray, shape (4, 4)
        The 12-parameter part: ``x_mni = affine @ x_subject`` (mm).
    coords : numpy.ndarray, shape (3, *grid_shape), or None
        The full (affine + SyN) MNI coordinates (mm) of every voxel centre of
        the grid the mapping was computed on; ``None`` for an affine mapping.
    grid_affine : numpy.ndarray, shape (4, 4)
    grid_shape : tuple of int
    similarity : float
        Correlation of the participant's MD with the template's after
        registration, inside the participant's brain mask.
    method : str
        ``affine`` or ``syn``.
    """

    affine: np.ndarray
    coords: np.ndarray | None
    grid_affine: np.ndarray
    grid_shape: tuple
    similarity: float
    method: str = "syn"
    extra: dict = field(default_factory=dict)

    def mni_coordinates(self, target_affine, target_shape, *, within=None):
        """MNI mm of every voxel centre of a grid (or of the voxels ``within``), (3, N).

        Inside the registration grid the SyN coordinates are interpolated
        (linearly: the deformation is smooth at this scale); outside it, where
        there are no data to deform, the affine alone.
        """
        if within is None:
            ijk = np.indices(target_shape, dtype=np.float64).reshape(3, -1)
        else:
            ijk = np.argwhere(np.asarray(within, bool)).T.astype(np.float64)
        world = target_affine[:3, :3] @ ijk + target_affine[:3, 3:4]
        out = self.affine[:3, :3] @ world + self.affine[:3, 3:4]
        if self.coords is None:
            return out
        vox = np.linalg.inv(self.grid_affine)
        g = vox[:3, :3] @ world + vox[:3, 3:4]
        n = np.asarray(self.grid_shape)[:, None]
        inside = np.all((g >= 0) & (g <= n - 1), axis=0)
        for a in range(3):
            out[a, inside] = _sample(self.coords[a], g[:, inside], order=1)
        return out

    def subject_coordinates(self, mni):
        """Participant mm of MNI points (mm), shape (3, N) -> (3, N).

        The inverse of :meth:`mni_coordinates`: through the SyN inverse where
        it was computed, the inverse affine elsewhere.
        """
        mni = np.asarray(mni, float)
        out = np.linalg.solve(self.affine, np.vstack([mni, np.ones(mni.shape[1])]))[:3]
        inv = self.extra.get("inverse_coords")
        if inv is None:
            return out
        vox = np.linalg.inv(self.extra["template_affine"])
        g = vox[:3, :3] @ mni + vox[:3, 3:4]
        n = np.asarray(inv.shape[1:])[:, None]
        inside = np.all((g >= 0) & (g <= n - 1), axis=0)
        for a in range(3):
            out[a, inside] = _sample(inv[a], g[:, inside], order=1)
        return out


def region_probabilities(maps_img, mapping: AtlasMapping, target_affine, target_shape,
                         *, within=None):
    """Region probabilities on a participant's grid (atlas interpolated once).

    Parameters
    ----------
    maps_img : nibabel.Nifti1Image
        4D region probabilities in MNI space (:class:`~ketamine_nb.regions.RegionMaps`).
    mapping : AtlasMapping
        From :func:`register_atlas`.
    target_affine, target_shape :
        The participant's grid.
    within : numpy.ndarray of bool, optional
        Only these voxels (0 elsewhere).

    Returns
    -------
    numpy.ndarray, shape (*target_shape, n_regions)
        float32 probabilities (0-1).
    """
    mni = mapping.mni_coordinates(target_affine, target_shape, within=within)
    vox = np.linalg.inv(maps_img.affine)
    c = vox[:3, :3] @ mni + vox[:3, 3:4]
    data = np.asarray(maps_img.dataobj, np.float32)
    if data.ndim == 3:
        data = data[..., None]
    n = np.asarray(data.shape[:3])[:, None]
    near = np.all((c > -1) & (c < n), axis=0)
    out = np.zeros((c.shape[1], data.shape[3]), np.float32)
    for k in range(data.shape[3]):
        out[near, k] = _sample(data[..., k], c[:, near])
    if within is None:
        return out.reshape(*target_shape, data.shape[3])
    full = np.zeros((*target_shape, data.shape[3]), np.float32)
    full[np.asarray(within, bool)] = out
    return full


def region_coverage(maps_img, names, mapping: AtlasMapping, grid_affine, masks: dict,
                    *, step: int = 2) -> dict:
    """Share of each region's atlas probability mass inside some masks.

    The mass is counted in MNI space, where the region is whole: every
    ``step``-th atlas voxel with its probability is taken to the participant's
    grid (:meth:`AtlasMapping.subject_coordinates`) and looked up in each mask.

    Parameters
    ----------
    maps_img : nibabel.Nifti1Image
        4D region probabilities in MNI space.
    names : list of str
        Region names in volume order.
    mapping : AtlasMapping
    grid_affine : numpy.ndarray, shape (4, 4)
        Grid of the masks.
    masks : dict of str -> numpy.ndarray (bool, 3D)
        E.g. ``{"fov": ..., "brain": ...}``; outside the grid counts as outside.
    step : int, default=2
        Subsampling of the atlas grid.

    Returns
    -------
    dict
        ``{mask name: {region: share (0-1)}}``.
    """
    data = np.asarray(maps_img.dataobj, np.float32)
    if data.ndim == 3:
        data = data[..., None]
    sub = data[::step, ::step, ::step]
    ijk = np.indices(sub.shape[:3]).reshape(3, -1) * step
    p = sub.reshape(-1, sub.shape[3])
    keep = p.max(axis=1) > 0
    ijk, p = ijk[:, keep], p[keep]
    mni = maps_img.affine[:3, :3] @ ijk + maps_img.affine[:3, 3:4]
    xyz = mapping.subject_coordinates(mni)
    vox = np.linalg.inv(grid_affine)
    g = np.rint(vox[:3, :3] @ xyz + vox[:3, 3:4]).astype(int)
    out = {}
    total = p.sum(axis=0)
    for key, m in masks.items():
        m = np.asarray(m, bool)
        n = np.asarray(m.shape)[:, None]
        ok = np.all((g >= 0) & (g < n), axis=0)
        hit = np.zeros(g.shape[1], bool)
        hit[ok] = m[g[0, ok], g[1, ok], g[2, ok]]
        share = (p * hit[:, None]).sum(axis=0) / np.where(total > 0, total, 1)
        out[key] = {name: float(share[k]) for k, name in enumerate(names)}
    return out


def register_atlas(md_img, mask_img, *, method: str = DEFAULT_ATLAS_REGISTRATION,
                   params: dict | None = None) -> AtlasMapping:
    """Register the MNI template to a participant's mean MD, once.

    Parameters
    ----------
    md_img : nibabel.Nifti1Image
        MD (mm²/s) in the participant's (halfway) space, e.g. the mean of the
        aligned visits.
    mask_img : nibabel.Nifti1Image
        Brain mask on the same grid.
    method : {"affine", "syn"}, default="syn"
        Affine (12 parameters) only, or affine then SyN.
    params : dict, optional
        Overrides of :data:`LONGITUDINAL_PARAMS`.

    Returns
    -------
    AtlasMapping
    """
    from dipy.align.imaffine import (
        AffineRegistration,
        transform_centers_of_mass,
    )
    from dipy.align.transforms import (
        AffineTransform3D,
        RigidIsoScalingTransform3D,
        RigidTransform3D,
    )

    if method not in ATLAS_REGISTRATIONS:
        raise InputError(f"atlas registration {method!r} is unknown; use one of "
                         f"{', '.join(ATLAS_REGISTRATIONS)}")
    p = dict(LONGITUDINAL_PARAMS, **(params or {}))
    res = float(p["atlas_resolution"])
    tpl, _ = synthetic_md_template(res)
    # The participant on a grid of the template's resolution, in its own space
    # (so that the SyN field lives where the data are).
    sub_aff, sub_shape = _coarse_grid(md_img.affine, md_img.shape[:3], res)
    md = resample_image(_as_img(_masked(md_img, mask_img, clip=TISSUE_MD["csf"]), md_img),
                        np.eye(4), sub_aff, sub_shape)
    static = np.asarray(md.dataobj, np.float32)
    fov_aff, fov_shape = sub_aff, sub_shape
    # Registration on the brain's box (with a margin of 2 voxels): the
    # background beyond it carries no information and costs time.
    found = np.argwhere(static > 0)
    if len(found):
        lo = np.maximum(found.min(axis=0) - 2, 0)
        hi = np.minimum(found.max(axis=0) + 3, static.shape)
        static = static[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        sub_aff = sub_aff.copy()
        sub_aff[:3, 3] += sub_aff[:3, :3] @ lo
        sub_shape = static.shape
    static = np.ascontiguousarray(static)
    moving = np.ascontiguousarray(np.asarray(tpl.dataobj, np.float32))
    smask = (static > 0).astype(np.int32)
    _, tissues = synthetic_md_template(res)
    tissue = np.asarray(tissues.dataobj)[..., :2].sum(axis=-1)
    kw = {"static_grid2world": sub_aff, "moving_grid2world": tpl.affine, "static_mask": smask}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        com = transform_centers_of_mass(static, sub_aff, moving, tpl.affine).affine
        # A field of view that misses part of the brain (a slab) moves the
        # centre of mass: start also from the tops and from the bottoms of
        # the two brains aligned, and keep the best fit.
        z_sub = _z_range(static > 0, sub_aff)
        z_tpl = _z_range(tissue > 0.5, tpl.affine)
        slab = (z_tpl[1] - z_tpl[0]) - (z_sub[1] - z_sub[0]) > 20  # the FOV misses > 2 cm

        # Every voxel in a slab: there the placement is weakly held, and on
        # uih-retest sub-01 (84 mm) the sampled metric put BA10's share in the
        # field of view anywhere from 0.59 to 0.81 depending on the sample's
        # seed (0.85 / 0.77 with every voxel).
        sampling = None if slab else p["sampling_proportion"]
        reg = AffineRegistration(
            metric=mutual_information(p["nbins"], sampling),
            level_iters=list(p["affine_level_iters"]), sigmas=list(p["affine_sigmas"]),
            factors=list(p["affine_factors"]), verbosity=0)
        coarse = AffineRegistration(
            metric=mutual_information(p["nbins"], sampling),
            level_iters=list(p["start_level_iters"]), sigmas=list(p["start_sigmas"]),
            factors=list(p["start_factors"]), verbosity=0)
        best = None
        starts = [0.0]
        if slab:
            starts += [z_tpl[1] - z_sub[1] - com[2, 3], z_tpl[0] - z_sub[0] - com[2, 3]]
        for dz in starts:
            start = com.copy()
            start[2, 3] += dz
            r, _, f = coarse.optimize(static, moving, RigidTransform3D(), None,
                                      starting_affine=start, ret_metric=True, **kw)
            if best is None or f < best[0]:
                best = (f, r, start)
        partial = _share_inside(tissue, tpl.affine, np.linalg.inv(best[1].affine), fov_aff,
                                fov_shape) < p["affine_min_fov"]
        if len(starts) > 1 and partial:
            # In a slab the head's pitch is weakly held (measured on simulated
            # slabs: 5-6 degrees off from one start, the frontal pole's lower
            # edge 10-12 mm low): the best start is also tried tilted. Not for
            # a head that is whole but for its brainstem (the test above
            # also takes a small head whose lowest slices are cut).
            found = np.argwhere(static > 0)
            centre = sub_aff[:3, :3] @ found.mean(axis=0) + sub_aff[:3, 3]
            base = best[2]
            for pitch in p["start_pitches"]:
                r, _, f = coarse.optimize(static, moving, RigidTransform3D(), None,
                                          starting_affine=base @ _rotation_x(pitch, centre),
                                          ret_metric=True, **kw)
                if f < best[0]:
                    best = (f, r, base)
        r = best[1]
        # 12 parameters only when the field of view holds the brain: in a
        # slab, scaling along the missing axis is not constrained, and the
        # model stops at rigid + isotropic scaling (7 parameters).
        inside = _share_inside(tissue, tpl.affine, np.linalg.inv(r.affine), fov_aff, fov_shape)
        if inside < p["affine_min_fov"]:
            r = reg.optimize(static, moving, RigidIsoScalingTransform3D(), None,
                             starting_affine=r.affine, **kw)
        else:
            r = reg.optimize(static, moving, AffineTransform3D(), None,
                             starting_affine=r.affine, **kw)
    A = np.asarray(r.affine, float)  # x_mni = A @ x_subject
    fov_share = _share_inside(tissue, tpl.affine, np.linalg.inv(A), fov_aff, fov_shape)
    coords = None
    if method == "syn":
        from dipy.align import VerbosityLevels
        from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
        from dipy.align.metrics import CCMetric

        sdr = SymmetricDiffeomorphicRegistration(
            CCMetric(3, radius=int(p["syn_cc_radius"])),
            level_iters=list(p["syn_level_iters"]))
        # dipy logs every SyN level at INFO on stdout (its default verbosity):
        # those lines would break into the progress bars of 'ketamine-nb run'.
        sdr.verbosity = VerbosityLevels.NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mapping = sdr.optimize(static, moving, sub_aff, tpl.affine, prealign=A)
        # MNI coordinates of each participant voxel: warp the coordinate
        # images of the template grid (linear interpolation reproduces a
        # linear function exactly).
        ijk = np.indices(moving.shape, dtype=np.float32)
        xyz = np.einsum("ab,b...->a...", tpl.affine[:3, :3].astype(np.float32), ijk)
        xyz += tpl.affine[:3, 3].astype(np.float32)[:, None, None, None]
        coords = np.stack([np.asarray(mapping.transform(np.ascontiguousarray(c),
                                                        interpolation="linear"), np.float32)
                           for c in xyz])
        # Where the warp reaches the template grid's edge the coordinate
        # images are interpolated with the zeros outside: use the affine there.
        ones = np.ones(moving.shape, np.float32)
        off = np.asarray(mapping.transform(ones, interpolation="linear")) < 0.999
        aff_xyz = _world(sub_aff, sub_shape, A)
        coords[:, off] = aff_xyz[:, off]
        # And the reverse: participant mm of every template voxel, for coverage.
        sxyz = _world(sub_aff, sub_shape)
        inv = np.stack([np.asarray(mapping.transform_inverse(np.ascontiguousarray(c),
                                                             interpolation="linear"),
                                   np.float32) for c in sxyz])
        aff_inv = _world(tpl.affine, moving.shape, np.linalg.inv(A))
        off = np.asarray(mapping.transform_inverse(np.ones(sub_shape, np.float32),
                                                   interpolation="linear")) < 0.999
        inv[:, off] = aff_inv[:, off]
        extra = {"inverse_coords": inv, "template_affine": tpl.affine}
        warped = mapping.transform(moving, interpolation="linear")
    else:
        extra = {}
        warped = resample_image(tpl, A, sub_aff, sub_shape).get_fdata(dtype=np.float32)
    sim = _similarity(static, np.asarray(warped))
    return AtlasMapping(affine=A, coords=coords, grid_affine=sub_aff, grid_shape=sub_shape,
                        similarity=sim, method=method,
                        extra={**extra, "brain_in_fov": fov_share})


def _rotation_x(degrees, centre):
    """4 x 4 rotation about the x axis (pitch) through ``centre`` (mm)."""
    from scipy.spatial.transform import Rotation

    M = np.eye(4)
    M[:3, :3] = Rotation.from_euler("x", degrees, degrees=True).as_matrix()
    M[:3, 3] = np.asarray(centre, float) - M[:3, :3] @ np.asarray(centre, float)
    return M


def _z_range(mask, affine):
    """Lowest and highest world z (mm, 1st and 99th percentiles) of a mask's voxels."""
    ijk = np.argwhere(mask).T
    z = affine[2, :3] @ ijk + affine[2, 3]
    return float(np.percentile(z, 1)), float(np.percentile(z, 99))


def _share_inside(prob, affine, world_map, grid_affine, grid_shape):
    """Share of ``prob``'s mass whose points ``world_map`` takes inside a grid."""
    ijk = np.argwhere(prob > 0).T
    w = prob[tuple(ijk)]
    xyz = world_map[:3, :3] @ (affine[:3, :3] @ ijk + affine[:3, 3:4]) + world_map[:3, 3:4]
    g = np.linalg.inv(grid_affine)
    v = g[:3, :3] @ xyz + g[:3, 3:4]
    n = np.asarray(grid_shape)[:, None]
    inside = np.all((v >= -0.5) & (v <= n - 0.5), axis=0)
    return float(w[inside].sum() / max(w.sum(), 1e-12))


def _world(affine, shape, then=None):
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    w = affine[:3, :3] @ ijk + affine[:3, 3:4]
    if then is not None:
        w = then[:3, :3] @ w + then[:3, 3:4]
    return w.reshape(3, *shape).astype(np.float32)


def _coarse_grid(affine, shape, resolution):
    """Return a grid with the orientation and extent of a grid at ``resolution`` mm."""
    sizes = _voxel_sizes(affine)
    factor = resolution / sizes
    new_shape = tuple(int(max(1, np.ceil(n / f))) for n, f in zip(shape, factor, strict=True))
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * factor[None, :]
    # Same centre as the source grid.
    centre_src = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]
    new[:3, 3] = centre_src - new[:3, :3] @ ((np.asarray(new_shape) - 1) / 2)
    return new, new_shape


# --------------------------------------------------------------------------- participant


@dataclass
class Visit:
    """One visit's DWI ready for :func:`align_visits`.

    Attributes
    ----------
    img : nibabel.Nifti1Image
        4D DWI on its own grid (raw, or realigned within the scan).
    gtab : dipy.core.gradients.GradientTable
    mask : nibabel.Nifti1Image
        Brain mask on the DWI grid.
    volume_transforms : numpy.ndarray, shape (n_volumes, 4, 4), optional
        Within-scan realignment to compose (``img`` then is the raw series).
    """

    img: object
    gtab: object
    mask: object
    volume_transforms: np.ndarray | None = None


@dataclass
class Alignment:
    """Both visits of a participant in the halfway space.

    Attributes
    ----------
    affine, shape :
        The halfway grid.
    post_to_pre : numpy.ndarray, shape (4, 4)
        Rigid ``A`` (``x_post = A @ x_pre``, mm).
    to_visit : dict
        Halfway mm to each visit's mm (``"pre"``, ``"post"``).
    md, fa, mask, fov : dict
        Per visit (``"pre"``, ``"post"``): MD (mm²/s) and FA images on the
        halfway grid, brain mask and field of view (bool arrays).
    regions : numpy.ndarray, shape (*shape, n_regions + 1)
        Region probabilities on the halfway grid, then the grey-matter
        probability (:data:`GLOBAL_GM`).
    names : list of str
        Region names, then :data:`GLOBAL_GM`.
    coverage : dict
        ``{visit: {"fov": {region: share}, "brain": {region: share}}}``.
    mapping : AtlasMapping
    visit_similarity : float
        Correlation of the two visits after rigid registration (see
        :data:`MIN_VISIT_SIMILARITY`).
    flags : list of str
        Registration problems (``visits_dissimilar``, ``atlas_partial_fov``,
        ``atlas_low_similarity``).
    dwi, gtab : dict
        Per visit, the DWI resampled into the halfway space and its gradients.
    """

    affine: np.ndarray
    shape: tuple
    post_to_pre: np.ndarray
    to_visit: dict
    md: dict
    fa: dict
    mask: dict
    fov: dict
    regions: np.ndarray
    names: list
    coverage: dict
    mapping: AtlasMapping
    visit_similarity: float
    flags: list
    dwi: dict = field(default_factory=dict)
    gtab: dict = field(default_factory=dict)

    @property
    def common_mask(self):
        """Voxels in the brain and the field of view of both visits (bool array)."""
        m = np.ones(self.shape, bool)
        for v in self.mask:
            m &= self.mask[v] & self.fov[v]
        return m

    @property
    def mean_md(self):
        """Mean MD of the visits on the halfway grid (float32 array, mm²/s)."""
        return np.mean([np.asarray(img.dataobj) for img in self.md.values()],
                       axis=0).astype(np.float32)


#: The atlas registration is flagged when less than this share of the
#: template's brain lies in the field of view (the registration then rests on
#: part of the brain) ...
MIN_BRAIN_IN_FOV = 0.9
#: ... or when the participant's and the template's MD correlate less than
#: this after registration.
MIN_ATLAS_SIMILARITY = 0.4


def mean_dwi(img, gtab, volume_transforms=None, mask=None):
    """Mean of the diffusion-weighted (b > 0) volumes, as a 3D image.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        4D DWI.
    gtab : dipy.core.gradients.GradientTable
    volume_transforms : numpy.ndarray, shape (n_volumes, 4, 4), optional
        Within-scan realignment (``x_volume = T[k] @ x_reference``, mm): the
        volumes that moved are brought to the reference position (trilinear)
        before the mean, so that a head that moved during the scan gives a
        sharp image. As in :func:`ketamine_nb.motion.realign_series`, a volume
        whose transform moves no corner of the brain's bounding box by
        :data:`~ketamine_nb.motion.RESAMPLE_MIN_VOXELS` of a voxel is used as
        it is (an interpolation would only blur it).
    mask : nibabel.Nifti1Image or array-like, optional
        Brain mask on the DWI grid, for that bounding box (default: the grid).
    """
    import nibabel as nib
    from scipy.ndimage import affine_transform

    from .motion import RESAMPLE_MIN_VOXELS, _bounding_corners, _max_shift

    data = np.asarray(img.dataobj, np.float32)
    dw = ~np.asarray(gtab.b0s_mask)
    use = np.flatnonzero(dw) if dw.any() else np.arange(data.shape[3])
    if volume_transforms is None:
        vol = data[..., use].mean(axis=-1)
    else:
        inv = np.linalg.inv(img.affine)
        m = (np.ones(data.shape[:3], bool) if mask is None
             else np.asarray(getattr(mask, "dataobj", mask)) > 0)
        corners = _bounding_corners(m if m.any() else np.ones(data.shape[:3], bool),
                                    img.affine)
        vol = np.zeros(data.shape[:3], np.float64)
        for k in use:
            T = np.asarray(volume_transforms[k], float)
            if _max_shift(T, corners, inv) <= RESAMPLE_MIN_VOXELS:
                vol += data[..., k]
            else:
                vox = inv @ T @ img.affine          # reference voxel -> volume voxel
                vol += affine_transform(data[..., k], vox[:3, :3], vox[:3, 3], order=1,
                                        mode="nearest")
        vol /= len(use)
    return nib.Nifti1Image(vol.astype(np.float32), img.affine)


def align_visits(pre: Visit, post: Visit, maps, *, fit_method: str = "WLS",
                 atlas_registration: str = DEFAULT_ATLAS_REGISTRATION,
                 params: dict | None = None) -> Alignment:
    """Bring both visits and the atlas into the halfway space; fit the tensor there.

    Parameters
    ----------
    pre, post : Visit
        The two visits.
    maps : ketamine_nb.regions.RegionMaps
        The study regions (MNI space).
    fit_method : str, default="WLS"
        Tensor fit (:func:`ketamine_nb.tensor.fit_dti`).
    atlas_registration : {"affine", "syn"}, default="syn"
    params : dict, optional
        Overrides of :data:`LONGITUDINAL_PARAMS`.

    Returns
    -------
    Alignment
    """
    import nibabel as nib

    from .tensor import fit_dti

    visits = {"pre": pre, "post": post}
    A, vsim = register_visits(mean_dwi(pre.img, pre.gtab, pre.volume_transforms, pre.mask),
                              mean_dwi(post.img, post.gtab, post.volume_transforms, post.mask),
                              pre_mask=pre.mask, post_mask=post.mask, params=params)
    affine, shape, to_pre, to_post = halfway_grid(pre.img, post.img, A)
    to_visit = {"pre": to_pre, "post": to_post}
    md, fa, mask, fov, dwis, gtabs, inner = {}, {}, {}, {}, {}, {}, {}
    for name, v in visits.items():
        mask[name] = np.asarray(resample_image(v.mask, to_visit[name], affine, shape)
                                .dataobj) >= 0.5
        inner[name] = np.asarray(resample_image(_edge_free(v.mask), to_visit[name], affine,
                                                shape).dataobj) >= 0.5
        # only the voxels the tensor is fitted in (the DWI is 0 elsewhere)
        img, g = resample_dwi(v.img, v.gtab, to_visit[name], affine, shape,
                              volume_transforms=v.volume_transforms, within=mask[name])
        dwis[name], gtabs[name] = img, g
        fov[name] = field_of_view(v.img, to_visit[name], affine, shape)
        md[name], fa[name] = fit_dti(img, g, mask=mask[name], fit_method=fit_method)
    both = mask["pre"] & mask["post"]
    mean_md = np.mean([np.asarray(md[k].dataobj) for k in md], axis=0).astype(np.float32)
    # The atlas is registered inside the masks without their grid edges too.
    mapping = register_atlas(nib.Nifti1Image(mean_md, affine),
                             nib.Nifti1Image((inner["pre"] & inner["post"]).astype(np.uint8),
                                             affine),
                             method=atlas_registration, params=params)
    _, tissues = synthetic_md_template(float(dict(LONGITUDINAL_PARAMS, **(params or {}))
                                             ["atlas_resolution"]))
    gm = nib.Nifti1Image(np.asarray(tissues.dataobj)[..., :1], tissues.affine)
    common = both & fov["pre"] & fov["post"]
    probs = np.concatenate([region_probabilities(maps.img, mapping, affine, shape,
                                                 within=common),
                            region_probabilities(gm, mapping, affine, shape, within=common)],
                           axis=-1)
    names = [*maps.names, GLOBAL_GM]
    coverage = {}
    for name in visits:
        c = region_coverage(maps.img, maps.names, mapping, affine,
                            {"fov": fov[name], "brain": mask[name] & fov[name]})
        g = region_coverage(gm, [GLOBAL_GM], mapping, affine,
                            {"fov": fov[name], "brain": mask[name] & fov[name]}, step=1)
        coverage[name] = {k: {**c[k], **g[k]} for k in c}
    flags = []
    if not vsim >= MIN_VISIT_SIMILARITY:
        flags.append("visits_dissimilar")
    if mapping.extra.get("brain_in_fov", 1.0) < MIN_BRAIN_IN_FOV:
        flags.append("atlas_partial_fov")
    if not mapping.similarity >= MIN_ATLAS_SIMILARITY:
        flags.append("atlas_low_similarity")
    return Alignment(affine=affine, shape=shape, post_to_pre=A, to_visit=to_visit, md=md,
                     fa=fa, mask=mask, fov=fov, regions=probs, names=names,
                     coverage=coverage, mapping=mapping, visit_similarity=vsim, flags=flags,
                     dwi=dwis, gtab=gtabs)
