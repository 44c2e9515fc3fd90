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
  the 3 mm voxel centres of each session. Each participant has an own
  brain: the template scaled and sheared, warped smoothly by a few
  millimetres and with ventricles enlarged with age
  (:func:`participant_anatomy`; :meth:`SimulationParams.idealised` gives
  everyone the template's brain).
* **Signal.** Per voxel, a sum of three compartments,
  ``S = B * S0 * sum_k f_k s_k exp(-b g^T D_k g)``, with an anisotropic WM
  tensor along a smooth orientation field, a nearly isotropic GM tensor and
  free water for CSF, a relative proton-density/T2 weight ``s_k`` per
  tissue, and a smooth receive-bias field ``B`` per session.
* **Noise.** Non-central chi (root-sum-of-squares of four receive
  channels) with an SD that varies smoothly in space, at a b0 SNR of 25 in
  grey matter, then rounded to int16; idealised: Rician (one channel), one SD.
* **Head position.** Each session has its own rigid head position in the
  scanner (a few degrees and millimetres from MNI), so the pipeline has to
  register every session; the true transforms are kept. The head also
  moves within the series, with the gradients fixed in the scanner,
  and each volume carries eddy-current and EPI susceptibility displacement
  along the phase-encoding axis and a slow signal drift (per-volume truth in
  ``*_motion.tsv``).
* **Biology (planted).** Every subject has a global MD offset; every session
  a small global scanner fluctuation; around each study region a pre->post
  MD change ``delta = slope[region, arm] * delta_MADRS + noise`` scales the
  GM and WM diffusivities, carried by a smooth field of its own (not the
  atlas label the pipeline measures with). The slopes follow the reported
  pattern (see :data:`DEFAULT_PATTERN`); :data:`PRESETS` set their size.

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

from ._utils import die_with_parent, save_nifti, write_json, write_tsv
from .exceptions import InputError
from .regions import STUDY_REGIONS

__all__ = [
    "DEFAULT_PATTERN",
    "PRESETS",
    "IDEALISED",
    "REALISTIC",
    "ParticipantAnatomy",
    "TRUTH_CSF_MD_THRESHOLD",
    "anatomy_table",
    "acquisition_scheme",
    "framewise_displacement",
    "magnitude_noise",
    "participant_anatomy",
    "susceptibility_field",
    "volume_motion",
    "SimulationParams",
    "gradient_scheme",
    "region_apparent_md",
    "simulate_cohort",
    "simulate_session",
    "simulate_tables",
    "tensor_signal",
    "true_field_of_view_coverage",
    "true_volume_transforms",
    "truth_agreement",
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


#: Named presets of the planted effect (``SimulationParams.preset``, CLI ``--preset``).
PRESETS = ("teaching", "paper", "null")

_PRESET_VALUES = {
    "teaching": {},
    "paper": {"effect_slope": 0.0006},
    "null": {"effect_slope": 0.0},
}

#: The realism switches at their realistic values: the defaults of
#: :class:`SimulationParams` (each participant's own anatomy, motion within the
#: series, eddy currents, susceptibility distortion, signal drift, four receive
#: channels with a noise SD that varies in space; data/README.md gives the
#: sources and what each costs the pipeline).
REALISTIC = {
    "head_size_sd": 0.033,
    "head_axis_sd": 0.025,
    "warp_rms": 3.0,
    "ventricle_growth": 0.02,
    "ventricle_sd": 0.25,
    "motion_rms": 0.3,
    "motion_spikes": 0.5,
    "eddy_mm": 1.0,
    "susceptibility_hz": 40.0,
    "signal_drift": 0.02,
    "n_coils": 4,
    "noise_sigma_variation": 0.3,
}

#: The same switches off: the idealised cohort of the first edition (every
#: participant has the template's brain, the head moves only between
#: sessions, single-channel Rician noise with one SD). ``SimulationParams.idealised()``,
#: ``ketamine-nb simulate --idealised``: for teaching one effect at a time and
#: for tests that isolate one step.
IDEALISED = {key: (1 if key == "n_coils" else None) for key in REALISTIC}

#: Phase-encoding directions the simulator can write (BIDS ``PhaseEncodingDirection``).
PHASE_ENCODING_DIRECTIONS = ("j-", "j", "i", "i-")

#: Off-resonance sources of the susceptibility field (MNI mm centre, Gaussian SD
#: in mm, share of ``susceptibility_hz``): the orbitofrontal cortex above the
#: sinuses and the temporal poles above the mastoid air cells.
SUSCEPTIBILITY_SOURCES = (
    ((0.0, 40.0, -22.0), (18.0, 14.0, 10.0), 1.0),
    ((-40.0, 12.0, -32.0), (10.0, 12.0, 10.0), 0.7),
    ((40.0, 12.0, -32.0), (10.0, 12.0, 10.0), 0.7),
)


@dataclass(frozen=True)
class SimulationParams:
    """Every parameter of the simulated cohort, with its default and source.

    Diffusivities are in mm²/s, b-values in s/mm², lengths in mm, angles in
    degrees. ``data/README.md`` explains where each default comes from.

    The defaults are realistic: each participant has an own brain and every
    scanner artefact is on (:data:`REALISTIC`). :meth:`idealised` switches
    them all off (:data:`IDEALISED`); each is also a field of its own, off
    with ``None`` (``n_coils=1`` for one receive channel).

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
    head_size_sd : float or None, default=0.033 (idealised: None)
        SD of the log of each participant's linear head size relative to the
        template (3.3 %: intracranial volume CV about 10 %). ``None``: every
        participant has the template's size.
    head_axis_sd : float or None, default=0.025 (idealised: None)
        SD of the log of each axis's extra scale (shape: long, wide, tall heads).
    warp_rms : float or None, default=3.0 (idealised: None)
        RMS displacement (mm) of each participant's smooth nonlinear warp
        (``None``: no warp).
    warp_spacing : float, default=16.0
        Control-point spacing of that warp (mm); it is smooth over a few cm.
    ventricle_growth : float or None, default=0.02 (idealised: None)
        Relative lateral-ventricle volume growth per year of age around 40
        (the template's age); ``None``: template ventricles for everyone.
    ventricle_sd : float or None, default=0.25 (idealised: None)
        SD of the log ventricle volume between participants of the same age.
    plant_extent : float, default=2.5
        Size of the field that carries a region's planted change: a smooth
        ellipsoid around the region's centre, at this Mahalanobis radius of
        the atlas region's probability-weighted spread (not the pipeline's
        thresholded label).
    motion_rms : float or None, default=0.3 (idealised: None)
        Head motion within the series: each volume's rigid position differs
        from the session's by a slow drift plus jitter of this RMS size
        (mm for translations, degrees for rotations). The gradient directions
        stay fixed in the scanner, so the tissue sees them rotated.
    motion_spikes : float or None, default=0.5 (idealised: None)
        Expected number of sudden movements per series (1-3 mm and degrees,
        from that volume on).
    eddy_mm : float or None, default=1.0 (idealised: None)
        Eddy-current distortion: displacement along the phase-encoding axis
        at 100 mm from the isocentre, for a unit gradient at b = 1000 s/mm²
        (scaled with b and with the gradient's direction), plus a shift of
        a quarter of it.
    susceptibility_hz : float or None, default=40.0 (idealised: None)
        Peak off-resonance (Hz) over the orbitofrontal cortex (0.7 of it over
        each temporal pole): EPI displacement along the phase-encoding axis
        of ``Hz * total_readout_time`` voxels.
    total_readout_time : float, default=0.045
        Effective readout time (s), written to the sidecar.
    phase_encoding_direction : str, default="j-"
        BIDS phase-encoding direction of the series, written to the sidecar.
    signal_drift : float or None, default=0.02 (idealised: None)
        Relative loss of signal from the first to the last volume (scanner
        drift, linear in the volume index).
    n_coils : int, default=4 (idealised: 1)
        Receive channels combined by root-sum-of-squares: the magnitude
        noise is non-central chi with ``2 n_coils`` degrees of freedom
        (1: Rician). ``noise_sigma`` is the noise SD per channel and part.
    noise_sigma_variation : float or None, default=0.3 (idealised: None)
        Peak relative variation of the noise SD over the field of view
        (smooth; parallel-imaging g-factor and coil geometry).
    fov_slab : tuple or None, default=None
        ``(z_min, z_max)`` in scanner mm: a reduced field of view (a slab)
        instead of the whole brain; e.g. ``(-10, 60)`` misses the temporal
        poles and the amygdalae.
    second_shell : float or None, default=None
        b-value (s/mm²) of an optional second shell on the same directions.
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
    head_size_sd: float | None = REALISTIC["head_size_sd"]
    head_axis_sd: float | None = REALISTIC["head_axis_sd"]
    warp_rms: float | None = REALISTIC["warp_rms"]
    warp_spacing: float = 16.0
    ventricle_growth: float | None = REALISTIC["ventricle_growth"]
    ventricle_sd: float | None = REALISTIC["ventricle_sd"]
    plant_extent: float = 2.5
    motion_rms: float | None = REALISTIC["motion_rms"]
    motion_spikes: float | None = REALISTIC["motion_spikes"]
    eddy_mm: float | None = REALISTIC["eddy_mm"]
    susceptibility_hz: float | None = REALISTIC["susceptibility_hz"]
    total_readout_time: float = 0.045
    phase_encoding_direction: str = "j-"
    signal_drift: float | None = REALISTIC["signal_drift"]
    n_coils: int = REALISTIC["n_coils"]
    noise_sigma_variation: float | None = REALISTIC["noise_sigma_variation"]
    fov_slab: tuple | None = None
    second_shell: float | None = None

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
            (self.n_coils >= 1, "n_coils must be at least 1"),
            (self.phase_encoding_direction in PHASE_ENCODING_DIRECTIONS,
             f"phase_encoding_direction must be one of {PHASE_ENCODING_DIRECTIONS}"),
            (self.fov_slab is None or (len(self.fov_slab) == 2
                                       and self.fov_slab[1] - self.fov_slab[0] >= 15),
             "fov_slab must be (z_min, z_max) in mm, at least 15 mm thick"),
            (self.second_shell is None or 100 <= self.second_shell <= 10000,
             "second_shell is a b-value in s/mm² in [100, 10000]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"simulation parameters: {msg}")

    @classmethod
    def preset(cls, name: str = "teaching", *, realistic: bool = True, **overrides):
        """Parameters of a named preset (:data:`PRESETS`), realistic or idealised.

        Parameters
        ----------
        name : {"teaching", "paper", "null"}, default="teaching"
            ``teaching``: a strong planted effect, easy to see at n = 98
            (the defaults). ``paper``: the effect calibrated on the paper's
            reported p values (interaction p 0.016-0.082; ketamine-arm r about
            0.3). ``null``: no relation between MD change and score change.
        realistic : bool, default=True
            Each participant's own anatomy and the scanner artefacts at their
            realistic values (:data:`REALISTIC`, the defaults); ``False``:
            the idealised cohort (:data:`IDEALISED`).
        **overrides
            Any other field.

        Returns
        -------
        SimulationParams
        """
        if name not in PRESETS:
            raise InputError(f"simulation preset {name!r} is unknown; choose one of "
                             f"{', '.join(PRESETS)}")
        values = dict(_PRESET_VALUES[name])
        if not realistic:  # the defaults are the realistic values
            values.update(IDEALISED)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def realistic(cls, **overrides):
        """Return the defaults, every realism switch on (:data:`REALISTIC`)."""
        return cls(**{**REALISTIC, **overrides})

    @classmethod
    def idealised(cls, **overrides):
        """Return the defaults with every realism switch off (:data:`IDEALISED`).

        Every participant then has the template's brain (only the head's
        position differs), the head moves only between sessions, and the
        noise is single-channel Rician with one SD: the cohort of the first
        edition, for teaching one effect at a time and for tests of one step.
        """
        return cls(**{**IDEALISED, **overrides})

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
    baseline_md: dict           # region -> CSF-free tissue MD (mm²/s) of its planting field
    plant_weight: np.ndarray    # (X, Y, Z, R) weight of each region's planted change
    plant_mix: np.ndarray       # (R, R) tissue MD change of field r per unit change of r'


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
    centres, covs = [], []
    for k, name in enumerate(names):
        p = resample_to_img(maps.get(name), gm_img, interpolation="linear",
                            force_resample=True, copy_header=True)
        p = np.asarray(p.dataobj, dtype=np.float32)
        # The planting field's own definition: the centre and spread of the
        # whole probability map (every probability, no threshold).
        nz = np.nonzero(p > 0.01)
        wp = p[nz].astype(np.float64)
        xyz = gm_img.affine[:3, :3] @ np.array(nz, float) + gm_img.affine[:3, 3:4]
        mu = (xyz * wp).sum(1) / wp.sum()
        d = xyz - mu[:, None]
        centres.append(mu)
        covs.append((d * wp) @ d.T / wp.sum())
        del nz, wp, xyz, d
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
            "region_weight": weights.astype(np.float32), "region_names": np.array(names),
            "plant_centre": np.array(centres), "plant_cov": np.array(covs)}


def _plant_weights(affine, shape, centres, covs, names, extent):
    """Smooth ellipsoids carrying each region's planted change (2 mm grid).

    ``w = 1 / (1 + exp((m - extent) / 0.2))`` with ``m`` the Mahalanobis
    distance from the region's probability-weighted centre; lateral regions
    stop at the midline (a 2 mm logistic edge). Where fields overlap they
    are scaled so that the weights of a voxel sum to at most 1. Weights
    below 1e-3 are set to 0.
    """
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:4]).astype(np.float64)
    out = np.zeros((xyz.shape[1], len(names)), np.float32)
    for k, name in enumerate(names):
        d = xyz - centres[k][:, None]
        m = np.sqrt(np.einsum("in,ij,jn->n", d, np.linalg.inv(covs[k]), d))
        w = 1.0 / (1.0 + np.exp(np.clip((m - extent) / 0.2, -50, 50)))
        if name.endswith("_L"):
            w /= 1.0 + np.exp(np.clip(xyz[0] / 1.0, -50, 50))
        elif name.endswith("_R"):
            w /= 1.0 + np.exp(np.clip(-xyz[0] / 1.0, -50, 50))
        out[:, k] = np.where(w < 1e-3, 0.0, w)  # exactly zero far from the region
    total = out.sum(1, keepdims=True)
    out /= np.maximum(total, 1.0)
    return out.reshape(*shape, len(names))


_ANATOMY_CACHE: dict = {}
_ANATOMY_VERSION = 3  # bump when _build_anatomy changes


def _anatomy(params: SimulationParams, seed: int = 0) -> _Anatomy:
    """Return the template anatomy on the 2 mm working grid (cached in memory and on disk).

    Building it reads the 1 mm tissue and atlas maps (several seconds); the
    result depends only on the planting threshold, so it is kept in the data
    home (``sim_cache/``) and reused.
    """
    from .datasets import get_data_home

    key = (params.planting_threshold, params.plant_extent)
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
        fields = dict(fields)
        names = [str(n) for n in fields["region_names"]]
        fields["plant_weight"] = _plant_weights(
            fields["affine"], fields["fractions"].shape[:3], fields["plant_centre"],
            fields["plant_cov"], names, params.plant_extent)
        _ANATOMY_CACHE.clear()
        _ANATOMY_CACHE[key] = fields
    f = _ANATOMY_CACHE[key]
    derived_key = ("derived", params.gm_evals, params.wm_evals, params.s0_gm, params.s0_wm)
    if derived_key in f:
        return f[derived_key]
    names = [str(n) for n in f["region_names"]]
    # CSF-free tissue MD of each planting field before any subject effect:
    # the S0-weighted mean of the GM and WM diffusivities, weighted by the
    # field; and the matrix that turns the planted changes into the
    # tissue MD change of each field (fields overlap a little).
    md_gm, md_wm = np.mean(params.gm_evals), np.mean(params.wm_evals)
    wg = f["fractions"][..., 0] * params.s0_gm
    ww = f["fractions"][..., 1] * params.s0_wm
    tissue = (wg * md_gm + ww * md_wm).reshape(-1).astype(np.float64)
    norm = (wg + ww).reshape(-1).astype(np.float64)
    pw = f["plant_weight"].reshape(-1, len(names)).astype(np.float64)
    baseline = {}
    mix = np.zeros((len(names), len(names)))
    for k, name in enumerate(names):
        w = pw[:, k]
        a = float((w * tissue).sum())
        baseline[name] = a / float((w * norm).sum())
        mix[k] = (w * tissue) @ pw / a
    f[derived_key] = _Anatomy(
        affine=f["affine"], fractions=f["fractions"], orientation=f["orientation"],
        region_weight=f["region_weight"], region_names=names, baseline_md=baseline,
        plant_weight=f["plant_weight"], plant_mix=mix)
    return f[derived_key]


def _native_grid(voxel_size: float, margin: float = 6.0, slab=None):
    """Scanner grid: LAS orientation (negative determinant, as dcm2niix writes)."""
    lo = np.array([-72.0, -108.0, -54.0]) - margin  # MNI brain bounding box + margin
    hi = np.array([72.0, 74.0, 82.0]) + margin
    if slab is not None:
        lo[2], hi[2] = float(slab[0]), float(slab[1])
    shape = tuple(int(math.ceil((h - lo_) / voxel_size)) for lo_, h in zip(lo, hi, strict=True))
    affine = np.diag([-voxel_size, voxel_size, voxel_size, 1.0])
    centre = (lo + hi) / 2
    half = (np.array(shape) - 1) / 2 * voxel_size
    affine[:3, 3] = [centre[0] + half[0], centre[1] - half[1], centre[2] - half[2]]
    return shape, affine


# --------------------------------------------------------------------------
# Each participant's own anatomy

#: Centre of the participant's size and shape changes (MNI mm): the centroid
#: of the template's intracranial volume.
BRAIN_CENTRE = (0.0, -22.0, 10.0)
#: Centre and spread (mm, SD of a Gaussian) of the lateral ventricles in MNI
#: space, where age enlarges them.
VENTRICLE_CENTRE = (0.0, -15.0, 12.0)
VENTRICLE_SPREAD = (16.0, 24.0, 14.0)
#: Box of the warp's control points (MNI mm): the field of view and more.
_WARP_BOX = (np.array([-96.0, -132.0, -80.0]), np.array([96.0, 100.0, 110.0]))


@dataclass(frozen=True)
class ParticipantAnatomy:
    """Where a participant's anatomy samples the template.

    A point ``x`` of the participant's head (mm, in the participant's own
    frame, centred like MNI) shows the template at

    ``y0 = c + M (x - c) + u(x)`` and then ``y = y0 - v (y0 - c_v) G(y0)``

    with ``c`` = :data:`BRAIN_CENTRE`, ``M`` the inverse of the
    participant's linear size and shape, ``u`` a smooth displacement
    (cubic B-spline through control points ``warp_spacing`` mm apart) and
    ``G`` a Gaussian around the lateral ventricles (:data:`VENTRICLE_CENTRE`,
    :data:`VENTRICLE_SPREAD`): ``v > 0`` enlarges them by ``1 / (1 - v)``
    in each direction at their centre.

    Attributes
    ----------
    linear : numpy.ndarray, shape (3, 3)
        ``M``, participant-to-template linear map (unitless).
    warp : numpy.ndarray, shape (3, nx, ny, nz), or None
        Cubic B-spline coefficients of ``u`` (mm) on the control grid that
        starts at ``_WARP_BOX[0]`` (a constant array is a uniform shift);
        ``None``: no warp.
    warp_spacing : float
        Control-point spacing (mm).
    ventricle : float
        ``v`` (unitless, < 1).
    """

    linear: np.ndarray = field(default_factory=lambda: np.eye(3))
    warp: np.ndarray | None = None
    warp_spacing: float = 16.0
    ventricle: float = 0.0

    @property
    def head_size(self) -> float:
        """Linear size relative to the template (cube root of the volume ratio)."""
        return float(abs(np.linalg.det(self.linear)) ** (-1 / 3))

    def to_template(self, x):
        """Map participant points ``x`` (3, N) in mm to template (MNI) mm."""
        from scipy.ndimage import map_coordinates

        x = np.asarray(x, dtype=np.float64)
        c = np.asarray(BRAIN_CENTRE)[:, None]
        y = c + self.linear @ (x - c)
        if self.warp is not None:
            g = (x - _WARP_BOX[0][:, None]) / self.warp_spacing
            y = y + np.stack([map_coordinates(self.warp[k], g, order=3, mode="nearest",
                                              prefilter=False) for k in range(3)])
        if self.ventricle:
            cv = np.asarray(VENTRICLE_CENTRE)[:, None]
            d = y - cv
            gauss = np.exp(-0.5 * ((d / np.asarray(VENTRICLE_SPREAD)[:, None]) ** 2).sum(0))
            y = y - self.ventricle * d * gauss
        return y


    def to_template_grid(self, vox_to_head, shape, stride: int = 2):
        """Template (MNI) mm of every voxel centre of a grid, shape (3, N).

        The linear part is exact; the smooth nonlinear part (warp and
        ventricles) is computed every ``stride`` voxels and interpolated
        linearly in between (it varies over centimetres, the grid over
        millimetres).
        """
        from scipy.ndimage import map_coordinates

        vox_to_head = np.asarray(vox_to_head, float)
        c = np.asarray(BRAIN_CENTRE)[:, None]
        lin = np.eye(4)
        lin[:3, :3] = self.linear
        lin[:3, 3:4] = c - self.linear @ c
        to_lin = lin @ vox_to_head
        ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
        y = to_lin[:3, :3] @ ijk + to_lin[:3, 3:4]
        if self.warp is None and not self.ventricle:
            return y
        sub_shape = tuple(int(math.ceil((n - 1) / stride)) + 1 for n in shape)
        sub = np.indices(sub_shape, dtype=np.float64).reshape(3, -1) * stride
        head = vox_to_head[:3, :3] @ sub + vox_to_head[:3, 3:4]
        d = (self.to_template(head) - (to_lin[:3, :3] @ sub + to_lin[:3, 3:4]))
        d = d.reshape(3, *sub_shape)
        g = ijk / np.float32(stride)
        return y + np.stack([map_coordinates(d[k], g, order=1, mode="nearest", prefilter=False)
                             for k in range(3)])


def _warp_grid_shape(spacing: float):
    lo, hi = _WARP_BOX
    return tuple(int(math.ceil((h - lo_) / spacing)) + 1 for lo_, h in zip(lo, hi, strict=True))


def participant_anatomy(params: SimulationParams, *, seed: int = 0, index: int = 0,
                        age: float = 40.0) -> ParticipantAnatomy:
    """Draw one participant's size, shape, warp and ventricles.

    Parameters
    ----------
    params : SimulationParams
        ``head_size_sd``, ``head_axis_sd``, ``warp_rms``, ``warp_spacing``,
        ``ventricle_growth`` and ``ventricle_sd`` (``None`` switches each off).
    seed : int, default=0
        Cohort seed.
    index : int, default=0
        Participant index (0-based): the draw depends on ``(seed, index)``
        only, so it is the same for both sessions and any number of workers.
    age : float, default=40.0
        Age in years (the ventricles grow with it).

    Returns
    -------
    ParticipantAnatomy
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng([seed, 3, index])
    g = rng.normal(0, params.head_size_sd or 0.0)
    a = rng.normal(0, params.head_axis_sd or 0.0, 3)
    size = np.exp(g + a)  # participant / template, per axis
    linear = np.diag(1.0 / size)
    warp = None
    shape = _warp_grid_shape(params.warp_spacing)
    raw = rng.standard_normal((3, *shape))
    if params.warp_rms:
        # Smooth the control points over ~2 spacings, then set the RMS.
        sm = np.stack([ndi.gaussian_filter(raw[k], 1.0, mode="nearest") for k in range(3)])
        sm -= sm.mean(axis=(1, 2, 3), keepdims=True)
        rms = np.sqrt((sm ** 2).sum(0).mean())
        warp = sm * (params.warp_rms / rms)
        warp = np.stack([ndi.spline_filter(warp[k], order=3, mode="nearest")
                         for k in range(3)])
    log_vent = rng.normal(0, params.ventricle_sd or 0.0)
    if params.ventricle_growth:
        log_vent += params.ventricle_growth * (age - 40.0)
    ventricle = 1.0 - math.exp(-log_vent / 3.0) if (params.ventricle_growth or
                                                     params.ventricle_sd) else 0.0
    return ParticipantAnatomy(linear=linear, warp=warp, warp_spacing=params.warp_spacing,
                              ventricle=float(np.clip(ventricle, -0.6, 0.6)))


# --------------------------------------------------------------------------
# The scanner: acquisition scheme and artefacts


def acquisition_scheme(params: SimulationParams):
    """Return the series' b-values and b-vectors: the shell, then the optional second shell.

    The second shell (``params.second_shell``) repeats the first shell's
    directions at its own b-value, after them.
    """
    bvals, bvecs = gradient_scheme(params.n_directions, params.n_b0, params.bval)
    if params.second_shell:
        dw = bvals > 0
        bvals = np.concatenate([bvals, np.full(int(dw.sum()), float(params.second_shell))])
        bvecs = np.concatenate([bvecs, bvecs[dw]])
    return bvals, bvecs


def _moves_in_space(params: SimulationParams) -> bool:
    return bool(params.motion_rms or params.motion_spikes or params.eddy_mm
                or params.susceptibility_hz)


def volume_motion(params: SimulationParams, n_volumes: int, rng):
    """Draw each volume's rigid head motion relative to the first volume.

    A slow drift (a smoothed random walk) plus jitter, scaled so that the
    RMS over volumes is ``motion_rms`` (mm for translations, degrees for
    rotations), plus ``Poisson(motion_spikes)`` sudden movements of 1-3 mm
    and 1-3 degrees that last to the end of the series.

    Returns
    -------
    rotations, translations : numpy.ndarray, shape (n_volumes, 3)
        Degrees about x, y, z and mm along x, y, z (scanner axes); row 0 is 0.
    """
    rot = np.zeros((n_volumes, 3))
    tr = np.zeros((n_volumes, 3))
    if params.motion_rms:
        for arr in (rot, tr):
            walk = np.cumsum(rng.normal(0, 1, (n_volumes, 3)), axis=0)
            walk = walk / np.sqrt(n_volumes) + 0.1 * rng.normal(0, 1, (n_volumes, 3))
            walk -= walk[0]
            rms = np.sqrt((walk ** 2).mean())
            arr += walk * (params.motion_rms / max(rms, 1e-12))
    if params.motion_spikes:
        for _ in range(rng.poisson(params.motion_spikes)):
            j = int(rng.integers(1, n_volumes))
            rot[j:, rng.integers(3)] += rng.uniform(1, 3) * rng.choice([-1, 1])
            tr[j:, rng.integers(3)] += rng.uniform(1, 3) * rng.choice([-1, 1])
    return rot, tr


def framewise_displacement(rotations, translations, radius: float = 50.0):
    """Return Power et al.'s (2012) framewise displacement (mm) of each volume.

    The sum of the absolute changes from the previous volume, rotations as
    arcs on a sphere of ``radius`` mm; 0 for the first volume.
    """
    d = np.diff(np.column_stack([np.deg2rad(rotations) * radius, translations]), axis=0)
    return np.r_[0.0, np.abs(d).sum(1)]


def susceptibility_field(params: SimulationParams, points):
    """Off-resonance (Hz) at template (MNI) points ``(3, N)`` in mm."""
    out = np.zeros(np.shape(points)[1])
    if not params.susceptibility_hz:
        return out
    for centre, spread, share in SUSCEPTIBILITY_SOURCES:
        d = (np.asarray(points) - np.asarray(centre)[:, None]) / np.asarray(spread)[:, None]
        out += share * params.susceptibility_hz * np.exp(-0.5 * (d ** 2).sum(0))
    return out


def _pe_axis(params: SimulationParams, affine):
    """Return the phase-encoding direction (unit scanner-frame vector) and its voxel size."""
    return _pe_vector(params.phase_encoding_direction, affine)


def _pe_vector(direction: str, affine):
    axis = {"i": 0, "j": 1, "k": 2}[direction[0]]
    sign = -1.0 if direction.endswith("-") else 1.0
    col = np.asarray(affine, float)[:3, axis]
    return sign * col / np.linalg.norm(col), float(np.linalg.norm(col))


def _noise_sigma_map(params: SimulationParams, xyz, rng):
    """Noise SD per voxel (stored units): smooth, mean ``noise_sigma``."""
    if not params.noise_sigma_variation:
        return None
    a = rng.normal(0, 1, 6)
    u = xyz / 100.0
    f = a[0] * u[0] + a[1] * u[1] + a[2] * u[2] + a[3] * (u[0] ** 2 + u[1] ** 2) \
        + a[4] * u[1] * u[2] + a[5] * u[2] ** 2
    f = (f - f.mean()) / max(np.abs(f - f.mean()).max(), 1e-12)
    return (params.noise_sigma * (1 + params.noise_sigma_variation * f)).astype(np.float32)


def magnitude_noise(clean, sigma, n_coils: int, rng):
    """Root-sum-of-squares magnitude of ``n_coils`` noisy channels, rounded to int16.

    With the signal ``c`` in one channel and complex Gaussian noise of SD
    ``sigma`` (per real part) in every channel, the squared magnitude is
    ``sigma^2`` times a non-central chi-square with ``2 L`` degrees of
    freedom (L = ``n_coils``; L = 1 is the Rician case). It is drawn exactly,
    with the fewest random numbers: ``(c + sigma z)^2 + sigma^2 chi^2(2 L - 1)``
    where a voxel has signal, ``sigma^2 chi^2(2 L)`` where it has none (the
    background: on the simulated grid, with the head's motion, about 40 %
    of the voxels), each chi-square as twice a gamma variate.

    Parameters
    ----------
    clean : numpy.ndarray, shape (n_voxels, n_volumes)
        Noise-free signal (stored units, float32, >= 0).
    sigma : float or numpy.ndarray, shape (n_voxels,)
        Noise SD per real channel part (stored units), one or per voxel.
    n_coils : int
        Number of receive channels L.
    rng : numpy.random.Generator
        Source of the noise.

    Returns
    -------
    numpy.ndarray, shape (n_voxels, n_volumes), int16
        The magnitude, rounded.
    """
    clean = np.asarray(clean, dtype=np.float32)
    n = clean.shape[0]
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float32).reshape(-1), (n,))
    has = clean.any(axis=1)
    fg, bg = np.flatnonzero(has), np.flatnonzero(~has)
    power = np.empty(clean.shape, dtype=np.float32)
    s2 = (sig[bg] * sig[bg] * np.float32(2.0))[:, None]
    power[bg] = s2 * rng.standard_gamma(n_coils, (bg.size, clean.shape[1]), dtype=np.float32)
    s = sig[fg][:, None]
    t = clean[fg] + s * rng.standard_normal((fg.size, clean.shape[1]), dtype=np.float32)
    t *= t
    t += (s * s * np.float32(2.0)) * rng.standard_gamma(
        n_coils - 0.5, (fg.size, clean.shape[1]), dtype=np.float32)
    power[fg] = t
    np.sqrt(power, out=power)
    return np.rint(power, out=power).astype(np.int16)


# --------------------------------------------------------------------------
# One session


def simulate_session(params: SimulationParams | None = None, *, seed: int = 0,
                     head_transform=None, md_multiplier: float = 1.0,
                     region_change: dict | None = None, rng=None,
                     noise: bool = True, return_truth: bool = False,
                     anatomy: ParticipantAnatomy | None = None, motion=None,
                     _volumes=None):
    """Simulate one DWI session.

    Parameters
    ----------
    params : SimulationParams, optional
        Acquisition and tissue parameters (defaults if omitted).
    seed : int, default=0
        Cohort seed: fixes the anatomy (orientation field).
    head_transform : numpy.ndarray, shape (4, 4), optional
        Rigid map from the participant's head frame (MNI-centred) to scanner
        coordinates (mm). Identity if omitted.
    md_multiplier : float, default=1.0
        Global multiplier of GM and WM diffusivities (subject and session).
    region_change : dict, optional
        Relative MD change per region name (e.g. ``{"BA10_L": -0.02}``).
    rng : numpy.random.Generator, optional
        Source of the noise and the bias field; a fresh one from ``seed`` if
        omitted.
    noise : bool, default=True
        Add magnitude noise (Rician for one channel, non-central chi for
        several) and round to int16. With ``False`` the image holds the
        noise-free float32 signal (for tests and teaching).
    return_truth : bool, default=False
        Also return the noise-free tissue fractions and region weights in
        native space.
    anatomy : ParticipantAnatomy, optional
        The participant's own anatomy (:func:`participant_anatomy`); the
        template's if omitted.
    motion : tuple of two arrays of shape (n_volumes, 3), optional
        Each volume's rotation (degrees about the scanner's x, y, z, about
        the head's centre) and translation (mm) from ``head_transform``,
        instead of drawing them from ``motion_rms`` and ``motion_spikes``.

    Returns
    -------
    dwi : nibabel.Nifti1Image
        4D int16 image on the scanner grid (float32 without noise).
    bvals, bvecs : numpy.ndarray
        The gradient scheme (b-vectors in the voxel frame, FSL layout).
    truth : dict
        Only with ``return_truth``: ``fractions`` (GM, WM, CSF; 4D image),
        ``region_weight`` (4D image, one volume per region, ``names``: the
        pipeline's default definition carried into this head) and
        ``plant_weight`` (the same for the fields that carry the changes).
    """
    import nibabel as nib
    from scipy.ndimage import map_coordinates

    params = params or SimulationParams()
    rng = rng if rng is not None else np.random.default_rng(seed)
    anat = _anatomy(params, seed)
    shape, affine = _native_grid(params.voxel_size, slab=params.fov_slab)
    T = np.eye(4) if head_transform is None else np.asarray(head_transform, float)
    bvals, bvecs = acquisition_scheme(params)
    n_vol = bvals.size
    vox_axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    # Smooth receive bias: random low-order coefficients (drawn first).
    bias_coef = rng.uniform(-1, 1, 6) * params.bias_amplitude / 2
    # Per-volume artefacts, drawn from their own stream so that switching
    # them off leaves every other value of the session unchanged.
    art_rng = np.random.default_rng(rng.integers(2**63)) if (
        _moves_in_space(params) or params.signal_drift or params.noise_sigma_variation) \
        else None
    rot_v, tr_v = (volume_motion(params, n_vol, art_rng) if art_rng is not None
                   else (np.zeros((n_vol, 3)), np.zeros((n_vol, 3))))
    if motion is not None:
        rot_v, tr_v = (np.asarray(m, float).reshape(n_vol, 3) for m in motion)

    # Voxel centres -> scanner mm -> head mm -> template (MNI) mm -> working-grid
    # voxel coordinates.
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = _working_coords(anat, anatomy, T, affine, shape, ijk)

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
    orient = orient @ vox_axes  # components along the voxel axes (x flipped for LAS)
    orient /= np.maximum(np.linalg.norm(orient, axis=1, keepdims=True), 1e-6)

    mult = np.full(idx.size, md_multiplier, dtype=np.float64)
    plant = {}
    total = np.zeros(idx.size)
    for name, change in (region_change or {}).items():
        if name not in anat.region_names:
            raise InputError(f"region_change names unknown region {name!r}")
        k = anat.region_names.index(name)
        plant[k] = map_coordinates(anat.plant_weight[..., k], c, order=1, mode="constant",
                                   prefilter=False)
        total += plant[k] * change
    mult *= 1.0 + total

    # Gradients stay fixed in the scanner; a head rotated by R sees g as R^T g.
    rmats = [vox_axes.T @ _rotation(r) @ vox_axes for r in rot_v]  # voxel frame
    g_tissue = np.stack([rm.T @ g for rm, g in zip(rmats, bvecs, strict=True)])
    sig = np.zeros((idx.size, bvals.size))
    for k, (evals, s0) in enumerate(((params.gm_evals, params.s0_gm),
                                     (params.wm_evals, params.s0_wm))):
        l1, l2, _ = evals
        cos2 = (orient @ g_tissue.T) ** 2
        adc = (l2 + (l1 - l2) * cos2) * mult[:, None]
        sig += frac[:, k:k + 1] * s0 * np.exp(-bvals[None, :] * adc)
    sig += frac[:, 2:3] * params.s0_csf * np.exp(-bvals[None, :] * params.csf_d)

    # Smooth receive bias: a random low-order field over the field of view.
    xyz = (affine[:3, :3] @ ijk[:, idx] + affine[:3, 3:4]) / 100.0
    a = bias_coef
    bias = 1 + a[0] * xyz[0] + a[1] * xyz[1] + a[2] * xyz[2] + a[3] * xyz[0] * xyz[1] \
        + a[4] * xyz[1] * xyz[2] + a[5] * (xyz[2] ** 2 - 0.3)
    s0_units = params.snr * params.noise_sigma / params.s0_gm
    sig *= (s0_units * bias)[:, None]
    drift = np.ones(n_vol)
    if params.signal_drift:
        drift = 1.0 - params.signal_drift * np.arange(n_vol) / max(n_vol - 1, 1)
        sig *= drift[None, :]

    n = int(np.prod(shape))
    clean = np.zeros((n, bvals.size), dtype=np.float32)
    clean[idx] = sig
    eddy = np.zeros((n_vol, 4))  # per volume: mm per mm along x, y, z; shift in mm
    if _moves_in_space(params) or np.any(rot_v) or np.any(tr_v):
        clean, eddy = _move_and_distort(params, clean, shape, affine, T, coords, anat,
                                        brain, bvals, bvecs, rot_v, tr_v, vox_axes)

    # Magnitude noise everywhere (background too): Rician for one channel,
    # non-central chi for a root-sum-of-squares of several; then int16.
    sigma_map = _noise_sigma_map(params, affine[:3, :3] @ ijk + affine[:3, 3:4], art_rng) \
        if art_rng is not None else None
    if noise:
        data = magnitude_noise(clean, params.noise_sigma if sigma_map is None else sigma_map,
                               params.n_coils, rng).reshape(*shape, bvals.size)
    else:
        data = clean.reshape(*shape, bvals.size)

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_slope_inter(1.0, 0.0)
    if _volumes is not None:
        _volumes.append(_volume_table(params, bvals, rot_v, tr_v, eddy, drift))
    if not return_truth:
        return img, bvals, bvecs
    full_frac = np.zeros((n, 3), np.float32)
    full_frac[idx] = frac
    truth = {"fractions": nib.Nifti1Image(full_frac.reshape(*shape, 3), affine),
             "names": list(anat.region_names),
             "volumes": _volume_table(params, bvals, rot_v, tr_v, eddy, drift)}
    if sigma_map is not None:
        truth["noise_sigma"] = nib.Nifti1Image(sigma_map.reshape(shape), affine)
    for key, vol in (("region_weight", anat.region_weight),
                     ("plant_weight", anat.plant_weight)):
        full = np.zeros((n, len(anat.region_names)), np.float32)
        full[idx] = np.stack([map_coordinates(vol[..., k], c, order=1, mode="constant",
                                              prefilter=False)
                              for k in range(len(anat.region_names))], axis=-1)
        truth[key] = nib.Nifti1Image(full.reshape(*shape, -1), affine)
    return img, bvals, bvecs, truth


def _move_and_distort(params, clean, shape, affine, T, coords, anat, brain, bvals, bvecs,
                      rot_v, tr_v, vox_axes):
    """Resample each volume to its head position, with EPI and eddy displacement.

    The value at scanner point ``x`` of volume ``v`` is the signal of the
    tissue at ``M_v^-1 (x - d_v(x) e)``: ``e`` the phase-encoding direction,
    ``d_v`` the susceptibility (``Hz * total_readout_time`` voxels) plus the
    eddy-current displacement, ``M_v`` the volume's rigid motion about the
    head's centre (pull-back; the intensity change of the Jacobian is left
    out).
    """
    from scipy.ndimage import binary_dilation, map_coordinates

    pe, pe_vox = _pe_axis(params, affine)
    iso = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    reach = binary_dilation(brain.reshape(shape), iterations=4).reshape(-1)
    out_idx = np.flatnonzero(reach)
    ijk = np.array(np.unravel_index(out_idx, shape), dtype=np.float64)
    disp_susc = np.zeros(out_idx.size)
    if params.susceptibility_hz:
        tmpl = anat.affine[:3, :3] @ coords[:, out_idx] + anat.affine[:3, 3:4]
        disp_susc = susceptibility_field(params, tmpl) * params.total_readout_time * pe_vox
    centre = (T @ np.r_[BRAIN_CENTRE, 1.0])[:3]
    A, a = affine[:3, :3], affine[:3, 3]
    inv_aff = np.linalg.inv(affine)
    Ai, ai = inv_aff[:3, :3], inv_aff[:3, 3]
    eddy = np.zeros((len(bvals), 4))
    by_volume = np.ascontiguousarray(clean.T)  # (volumes, voxels)
    moved = np.zeros((len(bvals), out_idx.size), np.float32)
    g_scanner = bvecs @ vox_axes.T
    for v in range(len(bvals)):
        # Source voxel of each output voxel, as one affine map of its index
        # plus the susceptibility term: with x = A ijk + a, the eddy
        # displacement d_e = f . x + f0 and u = x - (d_s + d_e) pe,
        # src = Ai (R^T (u - centre - t) + centre) + ai.
        f, f0 = np.zeros(3), 0.0
        if params.eddy_mm and bvals[v] > 0:
            k = params.eddy_mm * bvals[v] / 1000.0
            eddy[v, :3] = k * g_scanner[v] / 100.0
            eddy[v, 3] = 0.25 * k * g_scanner[v, 2]
            f, f0 = eddy[v, :3], eddy[v, 3] - eddy[v, :3] @ iso
        Rt = _rotation(rot_v[v]).T
        w = Ai @ Rt @ pe                                   # voxels per mm of displacement
        lin = Ai @ Rt @ A - np.outer(w, f @ A)
        off = Ai @ (Rt @ (a - centre - tr_v[v]) + centre) + ai - w * (f @ a + f0)
        src = lin @ ijk + off[:, None] - w[:, None] * disp_susc[None, :]
        moved[v] = map_coordinates(by_volume[v].reshape(shape), src, order=1,
                                   mode="constant", cval=0.0, prefilter=False)
    out = np.zeros_like(clean)
    out[out_idx] = moved.T
    return out, eddy


def _volume_table(params, bvals, rot_v, tr_v, eddy, drift) -> pd.DataFrame:
    return pd.DataFrame({
        "volume": np.arange(len(bvals)), "bval": bvals,
        "rot_x_deg": rot_v[:, 0], "rot_y_deg": rot_v[:, 1], "rot_z_deg": rot_v[:, 2],
        "trans_x_mm": tr_v[:, 0], "trans_y_mm": tr_v[:, 1], "trans_z_mm": tr_v[:, 2],
        "framewise_displacement_mm": framewise_displacement(rot_v, tr_v),
        "eddy_x_per_mm": eddy[:, 0], "eddy_y_per_mm": eddy[:, 1],
        "eddy_z_per_mm": eddy[:, 2], "eddy_shift_mm": eddy[:, 3],
        "signal_scale": drift})


def true_volume_transforms(motion, head_transform, img, phase_encoding_direction="j-"):
    """Each volume's true rigid transform, as a realignment reports it (simulated series only).

    The model of :func:`simulate_session`, run forwards: a point ``y`` of the
    reference (volume 0, unmoved) is found in volume ``v`` at ``x`` with
    ``x - d_v(x) e = M_v y``, ``M_v`` the volume's head motion (rotation about
    the head's centre, then translation), ``d_v`` its eddy-current
    displacement along the phase-encoding direction ``e`` (``f . (x - iso) +
    shift``, ``iso`` the centre of the grid). That affine map is reduced to its
    nearest rigid transform (the rotation of its polar decomposition, the
    head's centre carried exactly): what a rigid realignment can recover. The
    susceptibility displacement is left out: fixed in the scanner, it is
    nearly the same in every volume.

    Parameters
    ----------
    motion : pandas.DataFrame
        The session's ``derivatives/simulation/<sub>_ses-<ses>_motion.tsv``
        (:meth:`ketamine_nb.results.Results.true_motion`).
    head_transform : array-like, shape (4, 4)
        The session's head position (``mni_to_scanner`` of
        ``derivatives/simulation/head_motion.tsv``).
    img : nibabel.Nifti1Image
        The session's DWI (its grid and affine).
    phase_encoding_direction : str, default="j-"
        As in the DWI's sidecar.

    Returns
    -------
    transforms : list of numpy.ndarray, shape (4, 4)
        Per volume, a point of the reference (scanner mm) to the same point in
        the volume (mm): the convention of
        ``realign_series(...)[2].attrs["transforms"]``.
    centre : numpy.ndarray, shape (3,)
        The head's centre (scanner mm), the origin of the rotations.
    """
    from .motion import _polar_rotation

    affine = np.asarray(img.affine, float)
    centre = (np.asarray(head_transform, float) @ np.r_[BRAIN_CENTRE, 1.0])[:3]
    pe, _ = _pe_vector(phase_encoding_direction, affine)
    iso = affine[:3, :3] @ ((np.array(img.shape[:3]) - 1) / 2) + affine[:3, 3]
    out = []
    for r in motion.itertuples():
        M = np.eye(4)
        M[:3, :3] = _rotation([r.rot_x_deg, r.rot_y_deg, r.rot_z_deg])
        M[:3, 3] = centre + [r.trans_x_mm, r.trans_y_mm, r.trans_z_mm] - M[:3, :3] @ centre
        f = np.array([r.eddy_x_per_mm, r.eddy_y_per_mm, r.eddy_z_per_mm])
        E = np.eye(4)  # x - (f . (x - iso) + shift) e = M y, solved for x
        E[:3, :3] = np.linalg.inv(np.eye(3) - np.outer(pe, f))
        E[:3, 3] = E[:3, :3] @ ((r.eddy_shift_mm - f @ iso) * pe)
        A = E @ M
        R = np.eye(4)
        R[:3, :3] = _polar_rotation(A[:3, :3])
        R[:3, 3] = (A @ np.r_[centre, 1.0])[:3] - R[:3, :3] @ centre
        out.append(R)
    return out, centre


_MD_TABLES: dict = {}
_MD_GRID = np.linspace(0.7, 1.3, 61)  # voxel MD multipliers tabulated


def _working_coords(anat, anatomy, T, affine, shape, ijk=None):
    """Voxel centres of a scanner grid -> head -> template (MNI) -> working-grid voxels, (3, N)."""
    if anatomy is None:
        if ijk is None:
            ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
        to_work = np.linalg.inv(anat.affine) @ np.linalg.inv(T) @ affine
        return to_work[:3, :3] @ ijk + to_work[:3, 3:4]
    inv_work = np.linalg.inv(anat.affine)
    y = anatomy.to_template_grid(np.linalg.inv(T) @ affine, shape)
    return (inv_work[:3, :3] @ y + inv_work[:3, 3:4]).astype(np.float32)


def true_field_of_view_coverage(params: SimulationParams, *, seed: int = 0,
                                head_transform=None,
                                anatomy: ParticipantAnatomy | None = None,
                                spacing: float = 1.5) -> dict:
    """Share of each planted region inside a session's field of view: the truth.

    The region is the one the simulator plants in (the default study regions
    at ``planting_threshold``, carried into the participant's head), counted
    over the whole head, whatever the field of view; the share inside the
    session's scanner grid (its ``fov_slab``) is what the pipeline's
    ``coverage_fov`` estimates. The head is taken at the session's position
    (``head_transform``), without the motion within the scan.

    Parameters
    ----------
    params : SimulationParams
        Its ``fov_slab`` (``None``: the whole head, shares of 1).
    seed : int, default=0
        Cohort seed (the template anatomy).
    head_transform : numpy.ndarray, shape (4, 4), optional
        The session's head-to-scanner map (``mni_to_scanner`` in
        ``head_motion.tsv``); identity if omitted.
    anatomy : ParticipantAnatomy, optional
        The participant's own anatomy (the template's if omitted).
    spacing : float, default=1.5
        Sampling step over the head (mm).

    Returns
    -------
    dict
        Region name -> share (0-1).
    """
    from scipy.ndimage import map_coordinates

    anat = _anatomy(params, seed)
    T = np.eye(4) if head_transform is None else np.asarray(head_transform, float)
    full_shape, full_aff = _native_grid(params.voxel_size)
    # The whole head's box in scanner mm (LAS grid: x runs from + to -).
    corners = full_aff[:3, :3] @ (np.array([[0, 0, 0], full_shape]).T - 0.5) + full_aff[:3, 3:4]
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    shape = tuple(int(n) for n in np.ceil((hi - lo) / spacing))
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = lo + spacing / 2
    coords = _working_coords(anat, anatomy, T, aff, shape)
    z = aff[2, 2] * np.arange(shape[2]) + aff[2, 3]
    if params.fov_slab is None:
        inside_z = np.ones(shape[2], bool)
    else:
        s_shape, s_aff = _native_grid(params.voxel_size, slab=params.fov_slab)
        z0 = s_aff[2, 3] - s_aff[2, 2] / 2
        inside_z = (z >= z0) & (z < z0 + s_shape[2] * s_aff[2, 2])
    inside = np.broadcast_to(inside_z, shape).reshape(-1)
    out = {}
    for k, name in enumerate(anat.region_names):
        w = map_coordinates(anat.region_weight[..., k], coords, order=1, mode="constant",
                            prefilter=False)
        total = w.sum()
        out[str(name)] = float(w[inside].sum() / total) if total > 0 else float("nan")
    return out


def _voxel_md_table(params, frac, orient):
    """Noise-free MD of each voxel (columns) at each multiplier of ``_MD_GRID`` (rows)."""
    bvals, bvecs = gradient_scheme(params.n_directions, params.n_b0, params.bval)
    dw = bvals > 0
    g, b = bvecs[dw], bvals[dw]
    s0 = frac[:, 0] * params.s0_gm + frac[:, 1] * params.s0_wm + frac[:, 2] * params.s0_csf
    cos2 = (orient @ g.T) ** 2
    adc = [(ev[1] + (ev[0] - ev[1]) * cos2) for ev in (params.gm_evals, params.wm_evals)]
    csf = frac[:, 2:3] * params.s0_csf * np.exp(-b * params.csf_d)
    table = np.empty((_MD_GRID.size, frac.shape[0]))
    for j, m in enumerate(_MD_GRID):
        sig = csf + frac[:, 0:1] * params.s0_gm * np.exp(-b * adc[0] * m) \
            + frac[:, 1:2] * params.s0_wm * np.exp(-b * adc[1] * m)
        table[j] = np.mean(-np.log(sig / s0[:, None]) / b, axis=1)
    return table


#: Voxels whose noise-free MD is above this (mm²/s) are left out of the
#: ground-truth regional MD, as the pipeline's default partial-volume guard
#: (:data:`ketamine_nb.roi.DEFAULT_CSF_MD_THRESHOLD`) leaves them out.
TRUTH_CSF_MD_THRESHOLD = 1.1e-3


def region_apparent_md(params: SimulationParams, region: str, md_multiplier, change, *,
                       csf_md_threshold: float | None = TRUTH_CSF_MD_THRESHOLD,
                       _voxels: bool = False):
    """Noise-free MD a tensor fit would report, averaged over a planted region.

    The region is the pipeline's default definition (atlas probability >=
    ``planting_threshold``, covering at least half of a 2 mm voxel); the
    change reaches each of its voxels through the planting fields
    (:func:`simulate_session`), which are defined independently of it.
    Per voxel of the 2 mm working grid inside the region,
    the apparent diffusivity along each gradient of the scheme is
    ``-ln(S(g) / S0) / b`` for the partial-volume mixture of GM, WM and CSF;
    its mean over the (evenly spread) directions is the voxel's MD. Voxels
    whose MD exceeds ``csf_md_threshold`` are left out, then the rest are
    averaged. This is what the pipeline measures without noise and with
    perfect registration (the ground-truth table judges the guard once per
    participant, on the mean MD of the two visits, as the pipeline does);
    ``tissue_md_*`` in the ground truth is the CSF-free tissue MD, which
    partial volume keeps out of reach.

    Parameters
    ----------
    params : SimulationParams
        Tissue and acquisition parameters.
    region : str
        Region name.
    md_multiplier : float or array-like of shape (n,)
        Global multiplier(s) of GM and WM diffusivities.
    change : float, array-like of shape (n,), or dict
        Relative MD change(s) planted in ``region``'s field, or a dict
        ``{region: change}`` of the changes planted in every field (the
        fields of neighbouring regions reach a little into this one).
    csf_md_threshold : float or None, default=1.1e-3
        Partial-volume guard (mm²/s); ``None`` keeps every voxel.

    Returns
    -------
    float or numpy.ndarray
        MD in mm²/s, one per multiplier/change pair.
    """
    anat = _anatomy(params)
    # Each voxel's MD depends on its own multiplier only: tabulate it on a
    # fine grid of multipliers once, then interpolate (relative error < 1e-6).
    key = (region, params.n_directions, params.n_b0, params.bval, params.gm_evals,
           params.wm_evals, params.csf_d, params.s0_gm, params.s0_wm, params.s0_csf,
           params.planting_threshold, params.plant_extent)
    cached = _MD_TABLES.get(key)
    if cached is None:
        k = anat.region_names.index(region)
        sel = anat.region_weight[..., k] >= 0.5
        frac = anat.fractions[sel].astype(np.float64)
        ok = frac.sum(1) > 1e-6
        pw = anat.plant_weight[sel][ok].astype(np.float64)  # (V, R)
        orient = anat.orientation[sel][ok].astype(np.float64)
        table = np.ascontiguousarray(_voxel_md_table(params, frac[ok], orient).T)  # (V, G)
        if len(_MD_TABLES) > 64:
            _MD_TABLES.clear()
        cached = _MD_TABLES[key] = (table, pw)
    table, pw = cached
    if not isinstance(change, dict):
        change = {region: change}
    scalar = np.ndim(md_multiplier) == 0 and all(np.ndim(v) == 0 for v in change.values())
    n = max([np.size(md_multiplier), *(np.size(v) for v in change.values())])
    m_all = np.broadcast_to(np.asarray(md_multiplier, float), (n,)) if np.ndim(
        md_multiplier) else np.full(n, float(md_multiplier))
    cmat = np.zeros((n, len(anat.region_names)))
    for name, v in change.items():
        cmat[:, anat.region_names.index(name)] = v
    voxel_change = cmat @ pw.T  # (n, V)
    mv = m_all[:, None] * (1 + voxel_change)  # (n, V)
    pos = (mv - _MD_GRID[0]) * (1.0 / (_MD_GRID[1] - _MD_GRID[0]))
    np.clip(pos, 0, _MD_GRID.size - 1.001, out=pos)
    i0 = pos.astype(np.intp)
    pos -= i0
    flat = table.ravel()  # voxel v, grid row i at v * G + i
    base = (np.arange(table.shape[0]) * table.shape[1])[None, :] + i0
    lo = flat[base]
    md = lo + (flat[base + 1] - lo) * pos
    if _voxels:
        return md
    if csf_md_threshold is not None:
        keep = md <= csf_md_threshold
        out = np.where(keep, md, 0).sum(1) / np.maximum(keep.sum(1), 1)
    else:
        out = md.mean(1)
    return float(out[0]) if scalar else out


def _visit_pair_md(params, region, m_pre, m_post, changes, csf_md_threshold):
    """Regional MD of both visits with the CSF guard judged once, on the visits' mean.

    As the pipeline does (``md_guard``): a voxel is left out of both visits
    when the mean of its two noise-free MDs exceeds the threshold.
    """
    pre = region_apparent_md(params, region, m_pre, 0.0, _voxels=True)
    post = region_apparent_md(params, region, m_post, changes, _voxels=True)
    if csf_md_threshold is None:
        return pre.mean(1), post.mean(1)
    keep = (pre + post) / 2 <= csf_md_threshold
    n = np.maximum(keep.sum(1), 1)
    return np.where(keep, pre, 0).sum(1) / n, np.where(keep, post, 0).sum(1) / n


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


def _displacement_image(anatomy: ParticipantAnatomy, spacing: float = 6.0):
    """Return the head-to-template map as a displacement image: ``y = x + d(x)`` (mm).

    On a ``spacing`` mm grid over the field of view of the head frame, int16
    with a 0.01 mm scale (the map is smooth; 0.01 mm is far below a voxel).
    """
    import nibabel as nib

    lo = np.array([-78.0, -114.0, -60.0])
    shape = tuple(int(n) for n in np.ceil((np.array([78.0, 80.0, 88.0]) - lo) / spacing) + 1)
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = lo
    x = aff[:3, :3] @ np.indices(shape).reshape(3, -1) + aff[:3, 3:4]
    d = (anatomy.to_template(x) - x).T.reshape(*shape, 3)
    img = nib.Nifti1Image(np.rint(d * 100).astype(np.int16), aff)
    img.header.set_slope_inter(0.01, 0.0)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=1)
    return img


def _has_own_anatomy(params: SimulationParams) -> bool:
    return bool(params.head_size_sd or params.head_axis_sd or params.warp_rms
                or params.ventricle_growth or params.ventricle_sd)


def _session_task(args):
    params, seed, i, s, T, mult, change, age, path_stem, truth_dir = args
    rng = np.random.default_rng([seed, 2, i, s])
    anatomy = participant_anatomy(params, seed=seed, index=i, age=age) \
        if _has_own_anatomy(params) else None
    volumes = []
    img, bvals, bvecs = simulate_session(params, seed=seed, head_transform=T,
                                         md_multiplier=mult, region_change=change, rng=rng,
                                         anatomy=anatomy, _volumes=volumes)
    stem = Path(path_stem)
    write_tsv(volumes[0], Path(truth_dir) / f"{stem.name.removesuffix('_dwi')}_motion.tsv")
    if s == 0 and anatomy is not None:
        save_nifti(_displacement_image(anatomy),
                   Path(truth_dir) / f"{stem.name.split('_')[0]}_head_to_mni_displacement.nii.gz")
    save_nifti(img, stem.with_name(stem.name + ".nii.gz"))
    from ._utils import atomic_write_text

    atomic_write_text(stem.with_name(stem.name + ".bval"),
                      " ".join(f"{b:g}" for b in bvals) + "\n")
    atomic_write_text(stem.with_name(stem.name + ".bvec"),
                      "\n".join(" ".join(f"{v:.6f}" for v in row) for row in bvecs.T) + "\n")
    write_json({**_DWI_SIDECAR, "PhaseEncodingDirection": params.phase_encoding_direction,
                "TotalReadoutTime": params.total_readout_time,
                "SliceThickness": params.voxel_size},
               stem.with_name(stem.name + ".json"))
    if params.fov_slab is None:
        return str(stem), []
    cov = true_field_of_view_coverage(params, seed=seed, head_transform=T, anatomy=anatomy)
    pid, ses = stem.name.split("_")[:2]
    return str(stem), [{"participant_id": pid, "session": ses.removeprefix("ses-"),
                        "region": r, "coverage_fov": round(c, 4)} for r, c in cov.items()]


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
    cmat = np.stack([np.asarray(changes[r], float) for r in anat.region_names], axis=1)
    tissue_change = cmat @ anat.plant_mix.T  # (n, R): each field's tissue MD change
    for r in STUDY_REGIONS:
        k = anat.region_names.index(r)
        app_pre, app_post = _visit_pair_md(params, r, m_pre, m_post, changes,
                                           TRUTH_CSF_MD_THRESHOLD)
        base = anat.baseline_md[r]
        frames.append(pd.DataFrame({
            "participant_id": pids, "arm": arms, "region": r,
            "md_pre": app_pre, "md_post": app_post, "delta_md": app_post - app_pre,
            "tissue_md_pre": base * m_pre,
            "tissue_md_post": base * m_post * (1 + tissue_change[:, k]),
            "tissue_delta_md": base * (m_post * (1 + tissue_change[:, k]) - m_pre),
            "planted_change": changes[r], "order": np.arange(len(pids))}))
    truth = pd.concat(frames, ignore_index=True)
    region_order = {r: i for i, r in enumerate(STUDY_REGIONS)}
    truth["region_order"] = truth["region"].map(region_order)
    rows = truth.sort_values(["order", "region_order"]).drop(columns=["order", "region_order"])
    return rows.reset_index(drop=True)


def anatomy_table(params: SimulationParams, participants: pd.DataFrame, *,
                  seed: int = 0) -> pd.DataFrame:
    """Each participant's drawn size, shape and ventricles (one row each).

    Columns: ``participant_id``, ``age``, ``size_x``/``size_y``/``size_z``
    (linear size relative to the template along each axis), ``head_size``
    (their geometric mean), ``icv_ml`` (intracranial volume: the template's
    times ``head_size`` cubed, mL), ``ventricle_volume_ratio`` (lateral
    ventricles relative to the template's), ``warp_rms_mm`` (RMS of the
    nonlinear part of the displacement over the brain, mm).
    """
    anat = _anatomy(params)
    vox_ml = abs(np.linalg.det(anat.affine[:3, :3])) / 1000.0
    icv = float(anat.fractions.sum()) * vox_ml
    # brain points (template) to measure the warp's size on
    ijk = np.array(np.nonzero(anat.fractions[::4, ::4, ::4, :2].sum(-1) > 0.5)) * 4
    pts = anat.affine[:3, :3] @ ijk + anat.affine[:3, 3:4]
    rows = []
    for i, row in enumerate(participants.itertuples()):
        a = participant_anatomy(params, seed=seed, index=i, age=float(row.age))
        size = 1.0 / np.diag(a.linear)
        lin = ParticipantAnatomy(linear=a.linear)
        warp_part = ParticipantAnatomy(linear=a.linear, warp=a.warp,
                                       warp_spacing=a.warp_spacing)
        rms = float(np.sqrt(((warp_part.to_template(pts) - lin.to_template(pts)) ** 2)
                            .sum(0).mean()))
        rows.append({"participant_id": row.participant_id, "age": row.age,
                     "size_x": size[0], "size_y": size[1], "size_z": size[2],
                     "head_size": a.head_size, "icv_ml": icv * a.head_size ** 3,
                     "ventricle_volume_ratio": (1.0 - a.ventricle) ** -3,
                     "warp_rms_mm": rms})
    return pd.DataFrame(rows)


def _resolve(params, preset, seed, random_state):
    if params is not None and preset is not None:
        raise InputError("give either params or preset, not both (SimulationParams.preset("
                         "name, ...) combines them)")
    if params is None:
        params = SimulationParams.preset(preset) if preset is not None else SimulationParams()
    if random_state is not None:
        if not isinstance(random_state, (int, np.integer)):
            raise InputError("random_state must be an int here: the cohort's files are "
                             "reproducible from it")
        seed = int(random_state)
    return params, seed


def simulate_tables(params: SimulationParams | None = None, *, seed: int = 0,
                    preset: str | None = None, random_state: int | None = None) -> dict:
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
    preset : {"teaching", "paper", "null"}, optional
        Instead of ``params``: :meth:`SimulationParams.preset`.
    random_state : int, optional
        Same as ``seed`` (scikit-learn's name); wins over it.

    Returns
    -------
    dict
        ``participants`` (participant_id, arm, age, sex), ``scores`` (one row
        per participant: madrs_pre, madrs_post, qids_pre, qids_post) and
        ``ground_truth`` (participant x region: md_pre, md_post, delta_md in
        mm²/s, tissue MD, planted_change).
    """
    params, seed = _resolve(params, preset, seed, random_state)
    participants, scores, subj_mult, sess_mult, changes, _ = _design(params, seed)
    truth = _truth_table(params, participants, subj_mult, sess_mult, changes)
    return {"participants": participants, "scores": scores, "ground_truth": truth}


def simulate_cohort(out_dir, *, params: SimulationParams | None = None, seed: int = 0,
                    n_jobs: int = 1, progress: bool = True, overwrite: bool = False,
                    preset: str | None = None, random_state: int | None = None) -> Path:
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
    preset : {"teaching", "paper", "null"}, optional
        Instead of ``params``: :meth:`SimulationParams.preset`.
    random_state : int, optional
        Same as ``seed`` (scikit-learn's name); wins over it.

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
    ``ground_truth_roi.tsv`` (MD in mm²/s: ``md_pre``/``md_post`` what a
    perfect measurement with the pipeline's default regions would see, see
    :func:`region_apparent_md`; ``tissue_md_*`` the CSF-free tissue MD of
    each region's planting field), ``planted_effects.tsv``,
    ``head_motion.tsv`` (each session's head position),
    ``sub-*_ses-*_motion.tsv`` (one row per volume: motion, eddy currents,
    drift), ``anatomy.tsv`` (each participant's size and ventricles),
    ``sub-*_head_to_mni_displacement.nii.gz`` (with own anatomy: the map
    from the head frame to MNI), ``simulation_parameters.json`` and, with a
    ``fov_slab``, ``ground_truth_coverage.tsv`` (each session's true share
    of each region inside the field of view,
    :func:`true_field_of_view_coverage`; the pipeline's ``coverage_fov``
    estimates it).
    """
    from tqdm.auto import tqdm

    from . import __version__

    params, seed = _resolve(params, preset, seed, random_state)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose a folder name")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: folder is not empty; choose a new folder or pass "
                         "--overwrite")
    out.mkdir(parents=True, exist_ok=True)
    participants, scores, subj_mult, sess_mult, changes, motion = _design(params, seed)
    _anatomy(params, seed)  # built once, before any worker starts
    sim = out / "derivatives" / "simulation"
    sim.mkdir(parents=True, exist_ok=True)
    ages = participants["age"].to_numpy(float)

    tasks = []
    for i, pid in enumerate(participants["participant_id"]):
        for s, ses in enumerate(("pre", "post")):
            m = motion[2 * i + s]["matrix"]
            change = {r: float(changes[r][i]) for r in STUDY_REGIONS} if ses == "post" else {}
            mult = float(subj_mult[i] * sess_mult[i, s])
            stem = out / pid / f"ses-{ses}" / "dwi" / f"{pid}_ses-{ses}_dwi"
            stem.parent.mkdir(parents=True, exist_ok=True)
            tasks.append((params, seed, i, s, m, mult, change, ages[i], str(stem), str(sim)))

    bar = tqdm(total=len(tasks), desc="simulating DWI sessions", unit="session",
               disable=not progress)
    coverage = []
    if n_jobs > 1:
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor

        from threadpoolctl import threadpool_limits

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with threadpool_limits(1), ProcessPoolExecutor(
                n_jobs, mp_context=ctx, initializer=die_with_parent,
                initargs=(os.getpid(),)) as ex:
            for _, rows in ex.map(_session_task, tasks, chunksize=2):
                coverage += rows
                bar.update()
    else:
        for t in tasks:
            coverage += _session_task(t)[1]
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
    write_tsv(anatomy_table(params, participants, seed=seed), sim / "anatomy.tsv")
    write_json({"Name": "ketamine-nb simulation ground truth", "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "ketamine-nb", "Version": __version__}]},
               sim / "dataset_description.json")
    rows = _truth_table(params, participants, subj_mult, sess_mult, changes)
    write_tsv(rows, sim / "ground_truth_roi.tsv")
    if coverage:   # a reduced field of view: the true share of each region inside it
        write_tsv(pd.DataFrame(coverage), sim / "ground_truth_coverage.tsv")
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
maps, a tensor model and magnitude noise; the relation between the change in
mean diffusivity and the change in depression scores was planted (seed {seed}).
The ground truth is in derivatives/simulation/.

Made by `ketamine-nb simulate`; see the ketamine-nb data/README.md.
"""


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
