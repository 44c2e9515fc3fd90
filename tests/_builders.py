"""A small :class:`ketamine_nb.results.Results` built in memory from known tables.

No cohort is simulated or processed on disk: the widget and plotting tests
get tables whose answers are known beforehand.

* ``N_PER_ARM`` participants per arm, two sessions (``pre``, ``post``), the
  regions of :data:`REGIONS`.
* ΔMD per participant and region is drawn once (seeded) in 10⁻⁶ mm²/s; the
  change in MADRS is planted as ``SLOPES[arm] × ΔMD(BA10_L) + noise`` (QIDS-SR
  as half of it), so BA10_L's slopes are known.
* Two participants (``IMAGED``) also have small MD images (stored LAS, so that
  the RAS+ reorientation is exercised) and per-voxel region tables with a
  known layout: each region is a 3 × 3 × 3 box with atlas probability 0.6,
  ``N_CSF`` of its voxels with CSF-like MD (2.0e-3 mm²/s), inside a one-voxel
  shell of probability 0.15. These voxel tables are the ROI explorer's input;
  ``roi_md`` is the planted table, not their summary.
* ``robustness``: a 2 × 2 × 2 grid of specifications per region with known
  estimates.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ketamine_nb.exceptions import InputError
from ketamine_nb.results import Results

REGIONS = ("BA10_L", "BA10_R", "amygdala_L")
ARMS = ("ketamine", "saline")
N_PER_ARM = 8
#: Planted slopes of ΔMADRS on ΔMD(BA10_L), points per 10⁻⁶ mm²/s.
SLOPES = {"ketamine": 0.8, "saline": -0.2}
MD_TISSUE, MD_CSF = 0.8e-3, 2.0e-3
N_CSF = 4
SHAPE = (16, 18, 12)
#: LAS, 2 mm: stored index i runs right to left.
AFFINE = np.array([[-2.0, 0, 0, 15], [0, 2.0, 0, -17], [0, 0, 2.0, -11], [0, 0, 0, 1]])
#: Lowest stored corner of each region's 3 × 3 × 3 box.
BOXES = {"BA10_L": (10, 12, 6), "BA10_R": (3, 12, 6), "amygdala_L": (10, 5, 3)}
IMAGED = ("sub-01", "sub-02")
CONFIG = {"probability_threshold": 0.25, "csf_md_threshold": 1.1e-3, "fa_threshold": None}


@dataclass
class MemoryResults(Results):
    """Results whose images and voxel tables are held in memory."""

    images: dict = field(default_factory=dict)
    voxel_tables: dict = field(default_factory=dict)

    def session_voxels(self, participant_id, session):
        """Return the session's voxel table (a copy)."""
        return self.voxel_tables[(participant_id, session)].copy()

    def paths(self, participant_id, session):
        """Return no paths: nothing is on disk."""
        return {}

    def image(self, participant_id, session, kind="md"):
        """Return one in-memory image."""
        try:
            return self.images[(participant_id, session, kind)]
        except KeyError:
            raise InputError(f"{participant_id} ses-{session}: no {kind!r} image") from None


def region_voxels(session_shift: float = 0.0) -> pd.DataFrame:
    """The known per-voxel table of one session (stored indices ``i, j, k``)."""
    rows = []
    for region, (i0, j0, k0) in BOXES.items():
        box = [(i, j, k) for i in range(i0, i0 + 3) for j in range(j0, j0 + 3)
               for k in range(k0, k0 + 3)]
        shell = [(i, j, k) for i in range(i0 - 1, i0 + 4) for j in range(j0 - 1, j0 + 4)
                 for k in range(k0 - 1, k0 + 4) if (i, j, k) not in set(box)]
        for n, ijk in enumerate(box):
            md = MD_CSF if n < N_CSF else MD_TISSUE + session_shift
            rows.append((*ijk, region, 0.6, md, 0.3))
        for ijk in shell:
            rows.append((*ijk, region, 0.15, MD_TISSUE + session_shift, 0.3))
    v = pd.DataFrame(rows, columns=["i", "j", "k", "region", "probability", "md", "fa"])
    v["region"] = pd.Categorical(v["region"], categories=list(REGIONS))
    v["md_ols"] = v["md"]
    return v


def _md_image(voxels: pd.DataFrame) -> nib.Nifti1Image:
    data = np.zeros(SHAPE, np.float32)
    data[1:-1, 1:-1, 1:-1] = 0.7e-3
    data[voxels["i"], voxels["j"], voxels["k"]] = voxels["md"].to_numpy(np.float32)
    return nib.Nifti1Image(data, AFFINE)


def _robustness() -> pd.DataFrame:
    rows = []
    specs = list(itertools.product(("configured", "OLS"), (0.25, 0.5), (np.nan, 1.1e-3)))
    for r, region in enumerate(REGIONS):
        for s, (fit, p, c) in enumerate(specs):
            beta, se = 0.5 * s - 1.0 + r, 0.5
            rows.append({"spec": s, "region": region, "fit_method": fit,
                         "probability_threshold": p, "csf_md_threshold": c,
                         "outcome": "madrs", "change": "absolute", "covariates": "none",
                         "global_covariate": False, "n": 2 * N_PER_ARM,
                         "beta_interaction": beta, "se_interaction": se,
                         "p_interaction": float(2 * (1 - _phi(abs(beta / se)))),
                         "slope_ketamine": beta / 2, "slope_saline": -beta / 2})
    return pd.DataFrame(rows)


def _phi(x):
    from scipy.stats import norm

    return norm.cdf(x)


def make_results(*, random_state: int = 0, robustness: bool = True) -> MemoryResults:
    """Build the in-memory results (see the module docstring for what is planted)."""
    from ketamine_nb.stats import StatsConfig, region_stats, stats_input

    rng = np.random.default_rng(random_state)
    pids = [f"sub-{n + 1:02d}" for n in range(2 * N_PER_ARM)]
    arms = [ARMS[n % 2] for n in range(len(pids))]
    participants = pd.DataFrame({"participant_id": pids, "arm": arms,
                                 "age": rng.integers(20, 65, len(pids)),
                                 "sex": np.where(np.arange(len(pids)) % 3 == 0, "F", "M")})
    base = {r: MD_TISSUE + 0.05e-3 * k for k, r in enumerate(REGIONS)}
    deltas, md_rows = [], []
    dmd = {(p, r): rng.normal(0, 10) for p in pids for r in REGIONS}  # 10⁻⁶ mm²/s
    for p, arm in zip(pids, arms, strict=True):
        for r in REGIONS:
            pre = base[r] + rng.normal(0, 20e-6)
            post = pre + dmd[(p, r)] * 1e-6
            deltas.append({"participant_id": p, "arm": arm, "region": r, "md_pre": pre,
                           "md_post": post, "delta_md": post - pre,
                           "pct_delta_md": 100 * (post - pre) / pre})
            for ses, md in (("pre", pre), ("post", post)):
                md_rows.append({"participant_id": p, "session": ses, "region": r,
                                "md_mean": md, "md_median": md, "md_wmean": md,
                                "n_voxels": 27 - N_CSF, "n_excluded": N_CSF})
    madrs_pre = rng.integers(25, 40, len(pids)).astype(float)
    d_madrs = np.array([SLOPES[a] * dmd[(p, "BA10_L")] for p, a in zip(pids, arms,
                                                                       strict=True)])
    d_madrs = d_madrs - 8.0 * (np.array(arms) == "ketamine") + rng.normal(0, 1.0, len(pids))
    qids_pre = rng.integers(12, 22, len(pids)).astype(float)
    scores = participants.assign(madrs_pre=madrs_pre, madrs_post=madrs_pre + d_madrs,
                                 qids_pre=qids_pre, qids_post=qids_pre + d_madrs / 2)
    roi_deltas = pd.DataFrame(deltas)
    cfg = StatsConfig(n_permutations=0, n_bootstrap=0)
    rows = stats_input(roi_deltas, scores, config=cfg, participants=participants)[0]
    stats_roi = pd.concat([region_stats(g, config=cfg) for _, g in
                           rows.groupby("outcome", sort=False)], ignore_index=True)
    images, voxels = {}, {}
    for p in IMAGED:
        for ses, shift in (("pre", 0.0), ("post", -0.02e-3)):
            v = region_voxels(shift)
            voxels[(p, ses)] = v
            images[(p, ses, "md")] = _md_image(v)
            images[(p, ses, "fa")] = nib.Nifti1Image(np.full(SHAPE, 0.3, np.float32), AFFINE)
            images[(p, ses, "mask")] = nib.Nifti1Image(
                (_md_image(v).get_fdata() > 0).astype(np.uint8), AFFINE)
    roi_md = pd.DataFrame(md_rows)
    # only the imaged participants' sessions are "done" for the image-based explorers
    return MemoryResults(out_dir=Path("/nonexistent/in-memory"), bids_dir=None,
                         roi_md=roi_md, roi_deltas=roi_deltas, participants=participants,
                         scores=scores, stats_roi=stats_roi, stats_input=rows,
                         robustness=_robustness() if robustness else None,
                         config=dict(CONFIG), images=images, voxel_tables=voxels)
