"""A simulated cohort with the study's design and a known, planted ground truth.

The trial's raw images are not public, so the package makes a BIDS dataset
of the same shape: 98 adults randomised 2:1 to ketamine or saline, diffusion
MRI before (``ses-pre``) and 24 h after (``ses-post``) the infusion, MADRS and
QIDS-SR at both sessions. Each DWI series is computed from physics, not drawn
from a picture:

* **Anatomy.** Grey matter (GM) and white matter (WM) fractions are the
  MNI152 2009 tissue maps nilearn ships; cerebrospinal fluid (CSF) fills the
  rest of the intracranial volume (ventricles and sulci). Partial volume is
  real: the 1 mm maps are averaged into the 2 mm working grid and sampled at
  the 3 mm voxel centres of each session.
* **Signal.** Per voxel, a sum of three compartments,
  ``S = B * S0 * sum_k f_k s_k exp(-b g^T D_k g)``, with an anisotropic WM
  tensor along a smooth orientation field, a nearly isotropic GM tensor and
  free water for CSF, a relative proton-density/T2 weight ``s_k`` per
  tissue, and a smooth receive-bias field ``B`` per session.
* **Noise.** Rician (magnitude of complex Gaussian noise) at a b0 SNR of 25
  in grey matter, then rounded to int16.
* **Head position.** Each session has its own rigid head position in the
  scanner (a few degrees and millimetres from MNI), so the pipeline has to
  register every session; the true transforms are kept.
* **Biology (planted).** Every subject has a global MD offset; every session
  a small global scanner fluctuation; in each study region a pre->post MD
  change ``delta = slope[region, arm] * delta_MADRS + noise`` scales the GM
  and WM diffusivities inside that region. The slopes follow the reported
  pattern (see :data:`DEFAULT_PATTERN`).

The truth goes to ``derivatives/simulation/``, which the pipeline never reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ._utils import save_nifti, write_json, write_tsv
from .exceptions import InputError
from .regions import STUDY_REGIONS

__all__ = [
    "DEFAULT_PATTERN",
    "TRUTH_CSF_MD_THRESHOLD",
    "region_apparent_md",
    "SimulationParams",
    "gradient_scheme",
    "simulate_cohort",
    "simulate_tables",
    "simulate_session",
    "tensor_signal",
]

#: Sign of the planted slope of MD change on MADRS change, per region and arm
#: (+1: MD falls as the score falls, i.e. an MD decrease goes with improvement;
#: -1: the reverse; 0: no relation). From the abstract of Kopelman et al. 2023:
#: left BA10 and left amygdala carried by the ketamine arm; right BA10 in both
#: arms; both hippocampi reversed under ketamine (MADRS); vACC nothing. The
#: right amygdala was not reported and is planted as null.
DEFAULT_PATTERN = {
    "BA10_L": {"ketamine": 1, "saline": 0},
    "BA10_R": {"ketamine": 1, "saline": 1},
    "amygdala_L": {"ketamine": 1, "saline": 0},
    "amygdala_R": {"ketamine": 0, "saline": 0},
    "hippocampus_L": {"ketamine": -1, "saline": 0},
    "hippocampus_R": {"ketamine": -1, "saline": 0},
    "vACC": {"ketamine": 0, "saline": 0},
}


@dataclass(frozen=True)
class SimulationParams:
    """Every parameter of the simulated cohort, with its default and source.

    Diffusivities are in mm²/s, b-values in s/mm², lengths in mm, angles in
    degrees. ``data/README.md`` explains where each default comes from.

    Attributes
    ----------
    n_subjects : int, default=98
        Cohort size (the trial's).
    ketamine_fraction : float, default=2/3
        Randomisation ratio 2:1 (65 ketamine, 33 saline at n = 98).
    voxel_size : float, default=3.0
        Isotropic voxel edge (mm): a typical clinical 2.5-3 mm DWI protocol.
    bval : float, default=1000.0
        Diffusion weighting of the single shell (s/mm²).
    n_directions : int, default=30
        Gradient directions, spread evenly over the half sphere (at least 20
        for a rotation-invariant tensor estimate, Jones 2004).
    n_b0 : int, default=3
        Non-diffusion-weighted volumes, spread through the series.
    snr : float, default=25.0
        b0 signal-to-noise ratio in pure grey matter.
    noise_sigma : float, default=2.0
        Noise standard deviation in stored integer units: it sets the
        scale of the int16 data (GM b0 = snr * noise_sigma = 50 units).
        Rounding adds a variance of 1/12 unit², 2 % of the noise variance.
    max_rotation : float, default=3.0
        Head rotation about each axis, uniform in +/- this (degrees).
    max_translation : float, default=4.0
        Head translation along each axis, uniform in +/- this (mm).
    gm_evals : tuple, default=(0.9e-3, 0.75e-3, 0.75e-3)
        GM tensor eigenvalues (mm²/s): MD 0.80e-3, FA 0.11.
    wm_evals : tuple, default=(1.4e-3, 0.35e-3, 0.35e-3)
        WM tensor eigenvalues (mm²/s): MD 0.70e-3, FA 0.71.
    csf_d : float, default=3.0e-3
        Free-water diffusivity at body temperature (mm²/s).
    s0_gm, s0_wm, s0_csf : float, default=1.0, 0.8, 1.6
        Relative b0 signal of each tissue (T2 weighting at TE ~ 90 ms).
    bias_amplitude : float, default=0.08
        Peak relative amplitude of the smooth receive-bias field.
    subject_md_sd : float, default=0.03
        Between-subject SD of a global MD multiplier (3 %).
    session_md_sd : float, default=0.004
        SD of a global per-session MD multiplier (scanner drift, 0.4 %).
    regional_noise_sd : float, default=0.01
        SD of the region-specific pre->post MD change not explained by the
        clinical change (1 %).
    effect_slope : float, default=0.0015
        Size of the planted slopes: relative MD change per MADRS point
        (0.15 %/point; a 15-point improvement moves MD by 2.3 %).
    pattern : dict, default=DEFAULT_PATTERN
        Sign of the slope per region and arm.
    planting_threshold : float, default=0.25
        Atlas probability above which a voxel carries its region's change.
    madrs_pre_mean, madrs_pre_sd : float, default=32.0, 5.0
        Baseline MADRS of treatment-resistant depression (inclusion >= 20).
    madrs_change_ketamine, madrs_change_saline : tuple, default=(-14, 10), (-6, 8)
        Mean and SD of the 24 h MADRS change per arm.
    qids_per_madrs, qids_intercept, qids_sd : float, default=0.45, 2.0, 2.0
        QIDS-SR = qids_per_madrs * MADRS + qids_intercept + noise.
    """

    n_subjects: int = 98
    ketamine_fraction: float = 2.0 / 3.0
    voxel_size: float = 3.0
    bval: float = 1000.0
    n_directions: int = 30
    n_b0: int = 3
    snr: float = 25.0
    noise_sigma: float = 2.0
    max_rotation: float = 3.0
    max_translation: float = 4.0
    gm_evals: tuple = (0.9e-3, 0.75e-3, 0.75e-3)
    wm_evals: tuple = (1.4e-3, 0.35e-3, 0.35e-3)
    csf_d: float = 3.0e-3
    s0_gm: float = 1.0
    s0_wm: float = 0.8
    s0_csf: float = 1.6
    bias_amplitude: float = 0.08
    subject_md_sd: float = 0.03
    session_md_sd: float = 0.004
    regional_noise_sd: float = 0.01
    effect_slope: float = 0.0015
    pattern: dict = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_PATTERN.items()})
    planting_threshold: float = 0.25
    madrs_pre_mean: float = 32.0
    madrs_pre_sd: float = 5.0
    madrs_change_ketamine: tuple = (-14.0, 10.0)
    madrs_change_saline: tuple = (-6.0, 8.0)
    qids_per_madrs: float = 0.45
    qids_intercept: float = 2.0
    qids_sd: float = 2.0

    def __post_init__(self):
        checks = [
            (self.n_subjects >= 3, "n_subjects must be at least 3"),
            (0 < self.ketamine_fraction < 1, "ketamine_fraction must lie in (0, 1)"),
            (0.5 <= self.voxel_size <= 3.0, "voxel_size must lie in [0.5, 3] mm"),
            (self.n_directions >= 6, "n_directions must be at least 6 to fit a tensor"),
            (self.n_b0 >= 1, "n_b0 must be at least 1"),
            (100 <= self.bval <= 5000, "bval is in s/mm² and must lie in [100, 5000]"),
            (self.snr > 0 and self.noise_sigma > 0, "snr and noise_sigma must be positive"),
            (set(self.pattern) <= set(STUDY_REGIONS), "pattern names unknown regions"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"simulation parameters: {msg}")

    def slope(self, region: str, arm: str) -> float:
        """Planted slope (relative MD change per MADRS point) for a region and arm."""
        return self.effect_slope * self.pattern.get(region, {}).get(arm, 0)


# --------------------------------------------------------------------------
# Gradients and the signal equation


def gradient_scheme(n_directions: int = 30, n_b0: int = 3, bval: float = 1000.0):
    """Return a single-shell scheme: b-values and unit b-vectors.

    Directions are spread over the half sphere by electrostatic repulsion
    (dipy's ``disperse_charges``) from a fixed start, so the scheme is the
    same on every run; the b0 volumes are spread evenly through the series
    (the first volume is a b0).

    Parameters
    ----------
    n_directions : int, default=30
        Number of diffusion-weighted directions.
    n_b0 : int, default=3
        Number of b = 0 volumes.
    bval : float, default=1000.0
        b-value of the shell (s/mm²).

    Returns
    -------
    bvals : numpy.ndarray, shape (n_b0 + n_directions,)
        b-values (s/mm²).
    bvecs : numpy.ndarray, shape (n_b0 + n_directions, 3)
        Unit vectors (zero rows for the b0 volumes).
    """
    bvals, bvecs = _gradient_scheme(int(n_directions), int(n_b0), float(bval))
    return bvals.copy(), bvecs.copy()


@lru_cache(maxsize=16)
def _gradient_scheme(n_directions: int, n_b0: int, bval: float):
    from dipy.core.sphere import HemiSphere, disperse_charges

    rng = np.random.default_rng(20230509)  # fixed: the scheme is part of the protocol
    theta = np.arccos(rng.uniform(0, 1, n_directions))
    phi = rng.uniform(0, 2 * np.pi, n_directions)
    hemi, _ = disperse_charges(HemiSphere(theta=theta, phi=phi), 2000)
    dirs = hemi.vertices / np.linalg.norm(hemi.vertices, axis=1, keepdims=True)
    n = n_b0 + n_directions
    b0_pos = set(np.round(np.linspace(0, n, n_b0, endpoint=False)).astype(int).tolist())
    bvals = np.zeros(n)
    bvecs = np.zeros((n, 3))
    it = iter(dirs)
    for i in range(n):
        if i not in b0_pos:
            bvals[i] = bval
            bvecs[i] = next(it)
    return bvals, bvecs


def tensor_signal(evals, evec1, bvals, bvecs):
    """Noise-free signal attenuation of an axially symmetric tensor.

    Parameters
    ----------
    evals : sequence of 3 float
        Eigenvalues ``(l1, l2, l2)`` in mm²/s (``l2 == l3``).
    evec1 : numpy.ndarray, shape (..., 3)
        Unit principal eigenvector(s).
    bvals : numpy.ndarray, shape (N,)
        b-values in s/mm².
    bvecs : numpy.ndarray, shape (N, 3)
        Unit gradient directions in the same frame as ``evec1``.

    Returns
    -------
    numpy.ndarray, shape (..., N)
        ``exp(-b g^T D g)`` with ``g^T D g = l2 + (l1 - l2) (g . e1)^2``.

    Notes
    -----
    MD = (l1 + l2 + l3) / 3 is what a tensor fit of this signal returns.
    """
    l1, l2, _ = evals
    cos2 = (np.asarray(evec1) @ np.asarray(bvecs).T) ** 2
    adc = l2 + (l1 - l2) * cos2
    return np.exp(-np.asarray(bvals) * adc)


# --------------------------------------------------------------------------
# Anatomy in MNI space (computed once per cohort)

_WORK_VOX = 2.0  # mm, the working grid of the anatomy fields


def _rotation(angles_deg):
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _block_mean(a, k=2):
    sx, sy, sz = (s // k * k for s in a.shape[:3])
    a = a[:sx, :sy, :sz]
    return a.reshape(sx // k, k, sy // k, k, sz // k, k, *a.shape[3:]).mean(
        axis=(1, 3, 5), dtype=np.float32)


@dataclass
class _Anatomy:
    affine: np.ndarray          # 2 mm working grid, MNI
    fractions: np.ndarray       # (X, Y, Z, 3) GM, WM, CSF volume fractions
    orientation: np.ndarray     # (X, Y, Z, 3) WM/GM principal direction (unit)
    region_weight: np.ndarray   # (X, Y, Z, R) fraction of the voxel in each planted region
    region_names: list
    baseline_md: dict           # region -> CSF-free tissue MD (mm²/s) before offsets


def _build_anatomy(params: SimulationParams, seed: int) -> dict:
    from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template
    from nilearn.image import resample_to_img
    from scipy import ndimage as ndi

    from .regions import load_region_maps

    gm_img = load_mni152_gm_template(resolution=1)
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    wm = np.asarray(load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    gm, wm = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    tissue = np.clip(gm + wm, 0, 1)
    # Intracranial volume: the tissue envelope, closed, with its holes (the
    # ventricles) filled and grown by ~2 mm of sulcal/extra-cerebral CSF.
    icv = ndi.gaussian_filter(tissue, 2.0) > 0.25
    icv = ndi.binary_fill_holes(ndi.binary_closing(icv, iterations=3))
    icv = ndi.gaussian_filter(icv.astype(np.float32), 1.0)
    csf = np.clip(icv - tissue, 0, 1)
    total = gm + wm + csf
    scale = np.where(total > 1, 1 / np.maximum(total, 1e-6), 1.0)
    gm, wm, csf = gm * scale, wm * scale, csf * scale

    # Planted regions: study-region probability >= threshold; overlaps go to
    # the most probable region.
    # One region at a time: the 4D stack at 1 mm in float64 would need ~0.5 GB.
    maps = load_region_maps()
    names = list(maps.names)
    best = np.zeros(gm.shape, np.int8)
    best_p = np.zeros(gm.shape, np.float32)
    for k, name in enumerate(names):
        p = resample_to_img(maps.get(name), gm_img, interpolation="linear",
                            force_resample=True, copy_header=True)
        p = np.asarray(p.dataobj, dtype=np.float32)
        better = p > best_p
        best[better], best_p[better] = k, p[better]
        del p, better
    inside = best_p >= params.planting_threshold
    del best_p

    # Smooth orientation field, correlated over ~1 cm. Fixed: the anatomy is
    # the template brain for every subject and every seed.
    rng = np.random.default_rng(7)
    small = rng.standard_normal((3, 25, 30, 24)).astype(np.float32)
    zoom = [s / t for s, t in zip(gm.shape, small.shape[1:], strict=True)]
    orient = np.stack([ndi.zoom(ndi.gaussian_filter(c, 1.5), zoom, order=1,
                                grid_mode=True, mode="grid-constant")[:gm.shape[0], :gm.shape[1],
                                                                    :gm.shape[2]]
                       for c in small], axis=-1)
    pad = [(0, g - o) for g, o in zip(gm.shape, orient.shape[:3], strict=True)] + [(0, 0)]
    orient = np.pad(orient, pad, mode="edge")

    fractions = _block_mean(np.stack([gm, wm, csf], axis=-1))
    orient = _block_mean(orient)
    orient /= np.maximum(np.linalg.norm(orient, axis=-1, keepdims=True), 1e-6)
    weights = np.stack([_block_mean(((best == k) & inside).astype(np.float32))
                        for k in range(len(names))], axis=-1)
    affine = gm_img.affine.copy()
    affine[:3, :3] *= 2
    affine[:3, 3] += 0.5 * np.diag(gm_img.affine)[:3]  # centre of a 2x2x2 block
    return {"affine": affine, "fractions": fractions.astype(np.float32),
            "orientation": orient.astype(np.float32),
            "region_weight": weights.astype(np.float32), "region_names": np.array(names)}


_ANATOMY_CACHE: dict = {}
_ANATOMY_VERSION = 2  # bump when _build_anatomy changes


def _anatomy(params: SimulationParams, seed: int = 0) -> _Anatomy:
    """Return the template anatomy on the 2 mm working grid (cached in memory and on disk).

    Building it reads the 1 mm tissue and atlas maps (several seconds); the
    result depends only on the planting threshold, so it is kept in the data
    home (``sim_cache/``) and reused.
    """
    from .datasets import get_data_home

    key = (params.planting_threshold,)
    if key not in _ANATOMY_CACHE:
        cache = get_data_home() / "sim_cache"
        path = cache / f"anatomy_v{_ANATOMY_VERSION}_thr{params.planting_threshold:.3f}.npz"
        fields = None
        if path.exists():
            try:
                with np.load(path) as z:
                    fields = {k: z[k] for k in z.files}
            except (OSError, ValueError, EOFError):
                fields = None
        if fields is None:
            import io

            from ._utils import atomic_write_bytes

            fields = _build_anatomy(params, seed)
            buf = io.BytesIO()
            np.savez(buf, **fields)
            atomic_write_bytes(path, buf.getvalue())
        _ANATOMY_CACHE.clear()
        _ANATOMY_CACHE[key] = fields
    f = _ANATOMY_CACHE[key]
    names = [str(n) for n in f["region_names"]]
    # CSF-free tissue MD of each region before any subject effect: the
    # S0-weighted mean of the GM and WM diffusivities over the region.
    md_gm, md_wm = np.mean(params.gm_evals), np.mean(params.wm_evals)
    wg = f["fractions"][..., 0] * params.s0_gm
    ww = f["fractions"][..., 1] * params.s0_wm
    baseline = {}
    for k, name in enumerate(names):
        w = f["region_weight"][..., k]
        baseline[name] = float((w * (wg * md_gm + ww * md_wm)).sum() / (w * (wg + ww)).sum())
    return _Anatomy(affine=f["affine"], fractions=f["fractions"], orientation=f["orientation"],
                    region_weight=f["region_weight"], region_names=names, baseline_md=baseline)


def _native_grid(voxel_size: float, margin: float = 6.0):
    """Scanner grid: LAS orientation (negative determinant, as dcm2niix writes)."""
    lo = np.array([-72.0, -108.0, -54.0]) - margin  # MNI brain bounding box + margin
    hi = np.array([72.0, 74.0, 82.0]) + margin
    shape = tuple(int(math.ceil((h - lo_) / voxel_size)) for lo_, h in zip(lo, hi, strict=True))
    affine = np.diag([-voxel_size, voxel_size, voxel_size, 1.0])
    centre = (lo + hi) / 2
    half = (np.array(shape) - 1) / 2 * voxel_size
    affine[:3, 3] = [centre[0] + half[0], centre[1] - half[1], centre[2] - half[2]]
    return shape, affine


# --------------------------------------------------------------------------
# One session


def simulate_session(params: SimulationParams | None = None, *, seed: int = 0,
                     head_transform=None, md_multiplier: float = 1.0,
                     region_change: dict | None = None, rng=None,
                     noise: bool = True, return_truth: bool = False):
    """Simulate one DWI session.

    Parameters
    ----------
    params : SimulationParams, optional
        Acquisition and tissue parameters (defaults if omitted).
    seed : int, default=0
        Cohort seed: fixes the anatomy (orientation field).
    head_transform : numpy.ndarray, shape (4, 4), optional
        Rigid map from MNI to scanner coordinates (mm). Identity if omitted.
    md_multiplier : float, default=1.0
        Global multiplier of GM and WM diffusivities (subject and session).
    region_change : dict, optional
        Relative MD change per region name (e.g. ``{"BA10_L": -0.02}``).
    rng : numpy.random.Generator, optional
        Source of the noise and the bias field; a fresh one from ``seed`` if
        omitted.
    noise : bool, default=True
        Add Rician noise and round to int16. With ``False`` the image holds
        the noise-free float32 signal (for tests and teaching).
    return_truth : bool, default=False
        Also return the noise-free tissue fractions and region weights in
        native space.

    Returns
    -------
    dwi : nibabel.Nifti1Image
        4D int16 image on the scanner grid (float32 without noise).
    bvals, bvecs : numpy.ndarray
        The gradient scheme (b-vectors in the voxel frame, FSL layout).
    truth : dict
        Only with ``return_truth``: ``fractions`` (GM, WM, CSF; 4D image) and
        ``region_weight`` (4D image, one volume per region, ``names``).
    """
    import nibabel as nib
    from scipy.ndimage import map_coordinates

    params = params or SimulationParams()
    rng = rng if rng is not None else np.random.default_rng(seed)
    anat = _anatomy(params, seed)
    shape, affine = _native_grid(params.voxel_size)
    T = np.eye(4) if head_transform is None else np.asarray(head_transform, float)

    # Voxel centres -> scanner mm -> MNI mm -> working-grid voxel coordinates.
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    to_work = np.linalg.inv(anat.affine) @ np.linalg.inv(T) @ affine
    coords = to_work[:3, :3] @ ijk + to_work[:3, 3:4]

    def sample(vol):
        return map_coordinates(vol, coords, order=1, mode="constant", cval=0.0,
                               prefilter=False)

    frac = np.stack([sample(anat.fractions[..., k]) for k in range(3)], axis=-1)
    brain = frac.sum(axis=1) > 1e-3
    idx = np.flatnonzero(brain)
    frac = frac[idx]
    c = coords[:, idx]
    orient = np.stack([map_coordinates(anat.orientation[..., k], c, order=1, mode="nearest",
                                       prefilter=False) for k in range(3)], axis=-1)
    # Orientation in the scanner frame, then in the voxel frame of the image.
    orient = orient @ T[:3, :3].T
    vox_axes = affine[:3, :3] / np.abs(np.diag(affine)[:3])
    orient = orient @ vox_axes  # components along the voxel axes (x flipped for LAS)
    orient /= np.maximum(np.linalg.norm(orient, axis=1, keepdims=True), 1e-6)

    mult = np.full(idx.size, md_multiplier, dtype=np.float64)
    weights = None
    if region_change or return_truth:
        weights = np.stack([map_coordinates(anat.region_weight[..., k], c, order=1,
                                            mode="constant", prefilter=False)
                            for k in range(len(anat.region_names))], axis=-1)
    for name, change in (region_change or {}).items():
        if name not in anat.region_names:
            raise InputError(f"region_change names unknown region {name!r}")
        mult *= 1.0 + weights[:, anat.region_names.index(name)] * change

    bvals, bvecs = gradient_scheme(params.n_directions, params.n_b0, params.bval)
    sig = np.zeros((idx.size, bvals.size))
    for k, (evals, s0) in enumerate(((params.gm_evals, params.s0_gm),
                                     (params.wm_evals, params.s0_wm))):
        l1, l2, _ = evals
        cos2 = (orient @ bvecs.T) ** 2
        adc = (l2 + (l1 - l2) * cos2) * mult[:, None]
        sig += frac[:, k:k + 1] * s0 * np.exp(-bvals[None, :] * adc)
    sig += frac[:, 2:3] * params.s0_csf * np.exp(-bvals[None, :] * params.csf_d)

    # Smooth receive bias: a random low-order field over the field of view.
    xyz = (affine[:3, :3] @ ijk[:, idx] + affine[:3, 3:4]) / 100.0
    a = rng.uniform(-1, 1, 6) * params.bias_amplitude / 2
    bias = 1 + a[0] * xyz[0] + a[1] * xyz[1] + a[2] * xyz[2] + a[3] * xyz[0] * xyz[1] \
        + a[4] * xyz[1] * xyz[2] + a[5] * (xyz[2] ** 2 - 0.3)
    s0_units = params.snr * params.noise_sigma / params.s0_gm
    sig *= (s0_units * bias)[:, None]

    # Rician noise everywhere (background too), then integer storage.
    n = int(np.prod(shape))
    clean = np.zeros((n, bvals.size), dtype=np.float32)
    clean[idx] = sig
    if noise:
        sigma = np.float32(params.noise_sigma)
        re = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
        im = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
        mag = np.sqrt(re * re + im * im)
        data = np.rint(mag).astype(np.int16).reshape(*shape, bvals.size)
    else:
        data = clean.reshape(*shape, bvals.size)

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_slope_inter(1.0, 0.0)
    if not return_truth:
        return img, bvals, bvecs
    full_frac = np.zeros((n, 3), np.float32)
    full_frac[idx] = frac
    full_w = np.zeros((n, len(anat.region_names)), np.float32)
    full_w[idx] = weights
    truth = {
        "fractions": nib.Nifti1Image(full_frac.reshape(*shape, 3), affine),
        "region_weight": nib.Nifti1Image(full_w.reshape(*shape, -1), affine),
        "names": list(anat.region_names),
    }
    return img, bvals, bvecs, truth


#: Voxels whose noise-free MD is above this (mm²/s) are left out of the
#: ground-truth regional MD, as the pipeline's default partial-volume guard
#: (:data:`ketamine_nb.roi.DEFAULT_CSF_MD_THRESHOLD`) leaves them out.
TRUTH_CSF_MD_THRESHOLD = 1.1e-3


def region_apparent_md(params: SimulationParams, region: str, md_multiplier, change, *,
                       csf_md_threshold: float | None = TRUTH_CSF_MD_THRESHOLD):
    """Noise-free MD a tensor fit would report, averaged over a planted region.

    Per voxel of the 2 mm working grid inside the region (weight >= 0.5),
    the apparent diffusivity along each gradient of the scheme is
    ``-ln(S(g) / S0) / b`` for the partial-volume mixture of GM, WM and CSF;
    its mean over the (evenly spread) directions is the voxel's MD. Voxels
    whose MD exceeds ``csf_md_threshold`` are left out, then the rest are
    averaged. This is what the pipeline measures without noise and with
    perfect registration; ``tissue_md_*`` in the ground truth is the
    CSF-free tissue MD, which partial volume keeps out of reach.

    Parameters
    ----------
    params : SimulationParams
        Tissue and acquisition parameters.
    region : str
        Region name.
    md_multiplier : float or array-like of shape (n,)
        Global multiplier(s) of GM and WM diffusivities.
    change : float or array-like of shape (n,)
        Relative MD change(s) planted in the region.
    csf_md_threshold : float or None, default=1.1e-3
        Partial-volume guard (mm²/s); ``None`` keeps every voxel.

    Returns
    -------
    float or numpy.ndarray
        MD in mm²/s, one per multiplier/change pair.
    """
    anat = _anatomy(params)
    k = anat.region_names.index(region)
    w = anat.region_weight[..., k]
    sel = w >= 0.5
    frac = anat.fractions[sel].astype(np.float64)
    ok = frac.sum(1) > 1e-6
    frac, wv = frac[ok], w[sel][ok].astype(np.float64)
    orient = anat.orientation[sel][ok].astype(np.float64)
    bvals, bvecs = gradient_scheme(params.n_directions, params.n_b0, params.bval)
    dw = bvals > 0
    g, b = bvecs[dw], bvals[dw]
    s0 = frac[:, 0] * params.s0_gm + frac[:, 1] * params.s0_wm + frac[:, 2] * params.s0_csf
    cos2 = (orient @ g.T) ** 2
    adc = [(ev[1] + (ev[0] - ev[1]) * cos2) for ev in (params.gm_evals, params.wm_evals)]
    csf = frac[:, 2:3] * params.s0_csf * np.exp(-b * params.csf_d)
    scalar = np.ndim(md_multiplier) == 0 and np.ndim(change) == 0
    m_all, c_all = np.broadcast_arrays(np.atleast_1d(np.asarray(md_multiplier, float)),
                                       np.atleast_1d(np.asarray(change, float)))
    out = np.empty(m_all.size)
    for n, (m, c) in enumerate(zip(m_all, c_all, strict=True)):
        mult = (m * (1 + wv * c))[:, None]
        sig = csf + frac[:, 0:1] * params.s0_gm * np.exp(-b * adc[0] * mult) \
            + frac[:, 1:2] * params.s0_wm * np.exp(-b * adc[1] * mult)
        md = np.mean(-np.log(sig / s0[:, None]), axis=1) / b[0] if np.all(b == b[0]) else \
            np.mean(-np.log(sig / s0[:, None]) / b, axis=1)
        if csf_md_threshold is not None:
            md = md[md <= csf_md_threshold]
        out[n] = md.mean()
    return float(out[0]) if scalar else out


# --------------------------------------------------------------------------
# The cohort


def _design(params: SimulationParams, seed: int):
    """Participants, scores and planted effects (tables only, no images)."""
    rng = np.random.default_rng([seed, 1])
    n = params.n_subjects
    n_ket = int(round(n * params.ketamine_fraction))
    arms = np.array(["ketamine"] * n_ket + ["saline"] * (n - n_ket))
    arms = arms[rng.permutation(n)]
    ids = [f"sub-{i + 1:03d}" for i in range(n)]
    age = np.clip(np.rint(rng.normal(40, 12, n)), 18, 65).astype(int)
    sex = np.where(rng.uniform(size=n) < 0.6, "F", "M")
    participants = pd.DataFrame({"participant_id": ids, "arm": arms, "age": age, "sex": sex})

    pre = np.clip(np.rint(rng.normal(params.madrs_pre_mean, params.madrs_pre_sd, n)), 20, 60)
    mu = np.where(arms == "ketamine", params.madrs_change_ketamine[0],
                  params.madrs_change_saline[0])
    sd = np.where(arms == "ketamine", params.madrs_change_ketamine[1],
                  params.madrs_change_saline[1])
    post = np.clip(np.rint(pre + rng.normal(mu, sd)), 0, 60)
    q = params.qids_per_madrs
    qpre = np.clip(np.rint(q * pre + params.qids_intercept + rng.normal(0, params.qids_sd, n)),
                   0, 27)
    qpost = np.clip(np.rint(q * post + params.qids_intercept + rng.normal(0, params.qids_sd, n)),
                    0, 27)
    scores = pd.DataFrame({"participant_id": ids, "arm": arms, "madrs_pre": pre.astype(int),
                           "madrs_post": post.astype(int), "qids_pre": qpre.astype(int),
                           "qids_post": qpost.astype(int)})
    d_madrs = post - pre

    subj_mult = 1 + rng.normal(0, params.subject_md_sd, n)
    sess_mult = 1 + rng.normal(0, params.session_md_sd, (n, 2))
    changes = {}
    for r in STUDY_REGIONS:
        slope = np.array([params.slope(r, a) for a in arms])
        changes[r] = slope * d_madrs + rng.normal(0, params.regional_noise_sd, n)

    motion = []
    for i in range(n):
        for _s, ses in enumerate(("pre", "post")):
            rot = rng.uniform(-params.max_rotation, params.max_rotation, 3)
            tr = rng.uniform(-params.max_translation, params.max_translation, 3)
            T = np.eye(4)
            T[:3, :3] = _rotation(rot)
            T[:3, 3] = tr
            motion.append({"participant_id": ids[i], "session": ses,
                           "rot_x_deg": rot[0], "rot_y_deg": rot[1], "rot_z_deg": rot[2],
                           "trans_x_mm": tr[0], "trans_y_mm": tr[1], "trans_z_mm": tr[2],
                           "matrix": T})
    return participants, scores, subj_mult, sess_mult, changes, motion


def _session_task(args):
    params, seed, i, s, T, mult, change, path_stem = args
    rng = np.random.default_rng([seed, 2, i, s])
    img, bvals, bvecs = simulate_session(params, seed=seed, head_transform=T,
                                         md_multiplier=mult, region_change=change, rng=rng)
    stem = Path(path_stem)
    save_nifti(img, stem.with_name(stem.name + ".nii.gz"))
    from ._utils import atomic_write_text

    atomic_write_text(stem.with_name(stem.name + ".bval"),
                      " ".join(f"{b:g}" for b in bvals) + "\n")
    atomic_write_text(stem.with_name(stem.name + ".bvec"),
                      "\n".join(" ".join(f"{v:.6f}" for v in row) for row in bvecs.T) + "\n")
    write_json(_DWI_SIDECAR, stem.with_name(stem.name + ".json"))
    return str(stem)


_DWI_SIDECAR = {
    "MagneticFieldStrength": 3,
    "EchoTime": 0.089,
    "RepetitionTime": 8.2,
    "PhaseEncodingDirection": "j-",
    "TotalReadoutTime": 0.045,
    "FlipAngle": 90,
    "SliceThickness": 3.0,
    "MRAcquisitionType": "2D",
    "PulseSequenceType": "Diffusion-weighted single-shot spin-echo EPI",
    "ScanningSequence": "EP",
    "SequenceVariant": "SK_SP",
}


def _sidecars(params: SimulationParams, seed: int):
    participants_json = {
        "participant_id": {"Description": "Unique participant label"},
        "arm": {"Description": "Randomised infusion (2:1, one IV infusion)",
                "Levels": {"ketamine": "ketamine 0.5 mg/kg over 40 min",
                           "saline": "saline placebo over 40 min"}},
        "age": {"Description": "Age at baseline", "Units": "year"},
        "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
    }
    sessions_json = {
        "session_id": {"Description": "Session",
                       "Levels": {"ses-pre": "before the infusion",
                                  "ses-post": "24 h after the infusion"}},
        "madrs_total": {"Description": "Montgomery-Asberg Depression Rating Scale total "
                                       "(clinician-rated, 0-60; higher = worse)",
                        "Units": "points"},
        "qids_total": {"Description": "Quick Inventory of Depressive Symptomatology, "
                                      "self-report (QIDS-SR16) total (0-27; higher = worse)",
                       "Units": "points"},
    }
    return participants_json, sessions_json


def _params_json(params: SimulationParams, seed: int) -> dict:
    d = asdict(params)
    d["seed"] = seed
    return json.loads(json.dumps(d))


def _truth_table(params, participants, subj_mult, sess_mult, changes) -> pd.DataFrame:
    anat = _anatomy(params)
    pids, arms = participants["participant_id"].tolist(), participants["arm"].tolist()
    m_pre, m_post = subj_mult * sess_mult[:, 0], subj_mult * sess_mult[:, 1]
    frames = []
    for r in STUDY_REGIONS:
        app_pre = region_apparent_md(params, r, m_pre, 0.0)
        app_post = region_apparent_md(params, r, m_post, changes[r])
        base = anat.baseline_md[r]
        frames.append(pd.DataFrame({
            "participant_id": pids, "arm": arms, "region": r,
            "md_pre": app_pre, "md_post": app_post, "delta_md": app_post - app_pre,
            "tissue_md_pre": base * m_pre, "tissue_md_post": base * m_post * (1 + changes[r]),
            "planted_change": changes[r], "order": np.arange(len(pids))}))
    truth = pd.concat(frames, ignore_index=True)
    region_order = {r: i for i, r in enumerate(STUDY_REGIONS)}
    truth["region_order"] = truth["region"].map(region_order)
    rows = truth.sort_values(["order", "region_order"]).drop(columns=["order", "region_order"])
    return rows.reset_index(drop=True)


def simulate_tables(params: SimulationParams | None = None, *, seed: int = 0) -> dict:
    """Return the cohort's tables and regional ground truth, without any image.

    Takes seconds at n = 98 (no DWI is simulated), so statistics can be
    taught and tested on many cohorts; the tables are exactly those
    :func:`simulate_cohort` writes for the same parameters and seed.

    Parameters
    ----------
    params : SimulationParams, optional
        Design and effect parameters.
    seed : int, default=0
        Seed (the same as for :func:`simulate_cohort`).

    Returns
    -------
    dict
        ``participants`` (participant_id, arm, age, sex), ``scores`` (one row
        per participant: madrs_pre, madrs_post, qids_pre, qids_post) and
        ``ground_truth`` (participant x region: md_pre, md_post, delta_md in
        mm²/s, tissue MD, planted_change).
    """
    params = params or SimulationParams()
    participants, scores, subj_mult, sess_mult, changes, _ = _design(params, seed)
    truth = _truth_table(params, participants, subj_mult, sess_mult, changes)
    return {"participants": participants, "scores": scores, "ground_truth": truth}


def simulate_cohort(out_dir, *, params: SimulationParams | None = None, seed: int = 0,
                    n_jobs: int = 1, progress: bool = True, overwrite: bool = False) -> Path:
    """Write the simulated cohort as a BIDS dataset.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Folder to create. It must be empty or absent unless ``overwrite``.
    params : SimulationParams, optional
        Design, acquisition and effect parameters (defaults: the study's).
    seed : int, default=0
        Seed of everything random. The same seed and parameters give
        byte-identical files, whatever ``n_jobs``.
    n_jobs : int, default=1
        Worker processes for the images.
    progress : bool, default=True
        Show a progress bar.
    overwrite : bool, default=False
        Allow writing into a non-empty folder (files are replaced).

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Notes
    -----
    Layout: ``participants.tsv``, ``sub-*/sub-*_sessions.tsv`` (MADRS and
    QIDS-SR totals per session), ``sessions.json``,
    ``sub-*/ses-{pre,post}/dwi/sub-*_ses-*_dwi.{nii.gz,bval,bvec,json}`` and,
    never read by the pipeline, ``derivatives/simulation/`` with
    ``ground_truth_roi.tsv`` (MD in mm²/s: ``md_pre``/``md_post`` the
    noise-free apparent MD of the region, see :func:`region_apparent_md`;
    ``tissue_md_*`` the CSF-free tissue MD), ``planted_effects.tsv``,
    ``head_motion.tsv`` and ``simulation_parameters.json``.
    """
    from tqdm.auto import tqdm

    from . import __version__

    params = params or SimulationParams()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose a folder name")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: folder is not empty; choose a new folder or pass "
                         "--overwrite")
    out.mkdir(parents=True, exist_ok=True)
    participants, scores, subj_mult, sess_mult, changes, motion = _design(params, seed)
    _anatomy(params, seed)  # built once, before any worker starts

    tasks = []
    for i, pid in enumerate(participants["participant_id"]):
        for s, ses in enumerate(("pre", "post")):
            m = motion[2 * i + s]["matrix"]
            change = {r: float(changes[r][i]) for r in STUDY_REGIONS} if ses == "post" else {}
            mult = float(subj_mult[i] * sess_mult[i, s])
            stem = out / pid / f"ses-{ses}" / "dwi" / f"{pid}_ses-{ses}_dwi"
            stem.parent.mkdir(parents=True, exist_ok=True)
            tasks.append((params, seed, i, s, m, mult, change, str(stem)))

    bar = tqdm(total=len(tasks), desc="simulating DWI sessions", unit="session",
               disable=not progress)
    if n_jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from threadpoolctl import threadpool_limits

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with threadpool_limits(1), ProcessPoolExecutor(n_jobs, mp_context=ctx) as ex:
            for _ in ex.map(_session_task, tasks, chunksize=2):
                bar.update()
    else:
        for t in tasks:
            _session_task(t)
            bar.update()
    bar.close()

    # Tables and sidecars.
    pj, sessions_json = _sidecars(params, seed)
    write_tsv(participants, out / "participants.tsv")
    write_json(pj, out / "participants.json")
    # Scores change between sessions, so they go where BIDS puts
    # session-varying values: sub-<label>/sub-<label>_sessions.tsv. (A
    # phenotype/ file with two rows per participant breaks the validator's
    # unique participant_id index; see data/README.md.)
    for row in scores.itertuples():
        sessions = pd.DataFrame({"session_id": ["ses-pre", "ses-post"],
                                 "madrs_total": [row.madrs_pre, row.madrs_post],
                                 "qids_total": [row.qids_pre, row.qids_post]})
        write_tsv(sessions, out / row.participant_id / f"{row.participant_id}_sessions.tsv")
    write_json(sessions_json, out / "sessions.json")
    write_json({
        "Name": "ketamine-nb simulated cohort (IV ketamine vs saline, DWI pre and 24 h post)",
        "BIDSVersion": "1.10.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["ketamine-nb developers"],
        "HowToAcknowledge": "Simulated data; cite Kopelman et al. 2023 "
                            "(doi:10.1038/s41398-023-02451-0) for the design it mirrors.",
        "ReferencesAndLinks": ["https://doi.org/10.1038/s41398-023-02451-0"],
        "GeneratedBy": [{"Name": "ketamine-nb", "Version": __version__,
                         "Description": f"ketamine-nb simulate --seed {seed}"}],
    }, out / "dataset_description.json")
    from ._utils import atomic_write_text

    atomic_write_text(out / "README", _README_TEXT.format(n=params.n_subjects, seed=seed))
    atomic_write_text(out / ".bidsignore", "derivatives/\n")

    # Ground truth beside the data.
    sim = out / "derivatives" / "simulation"
    write_json({"Name": "ketamine-nb simulation ground truth", "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "ketamine-nb", "Version": __version__}]},
               sim / "dataset_description.json")
    rows = _truth_table(params, participants, subj_mult, sess_mult, changes)
    write_tsv(rows, sim / "ground_truth_roi.tsv")
    eff = pd.DataFrame([{"region": r, "arm": a, "slope_per_madrs_point": params.slope(r, a)}
                        for r in STUDY_REGIONS for a in ("ketamine", "saline")])
    write_tsv(eff, sim / "planted_effects.tsv")
    mot = pd.DataFrame([{k: v for k, v in m.items() if k != "matrix"} for m in motion])
    mot["mni_to_scanner"] = [json.dumps(np.round(m["matrix"], 10).tolist()) for m in motion]
    write_tsv(mot, sim / "head_motion.tsv")
    write_tsv(scores, sim / "scores_wide.tsv")
    write_json(_params_json(params, seed), sim / "simulation_parameters.json")
    return out


_README_TEXT = """\
ketamine-nb simulated cohort
============================

A simulated dataset with the design of Kopelman et al. (2023), Translational
Psychiatry, doi:10.1038/s41398-023-02451-0: {n} adults with treatment-resistant
depression randomised 2:1 to one IV infusion of ketamine or saline, diffusion
MRI before (ses-pre) and 24 h after (ses-post), MADRS and QIDS-SR at both.

These are NOT real participants. Every image is computed from MNI152 tissue
maps, a tensor model and Rician noise; the relation between the change in
mean diffusivity and the change in depression scores was planted (seed {seed}).
The ground truth is in derivatives/simulation/.

Made by `ketamine-nb simulate`; see the ketamine-nb data/README.md.
"""
