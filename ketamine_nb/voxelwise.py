"""Beyond the regions: voxelwise ΔMD versus Δscore, by arm, with FWE control.

Each session's MD map is resampled by the pipeline to the template at 3 mm
(``*_space-MNI152NLin2009aSym_res-3_*_desc-MD_dwimap.nii.gz``). Here the
per-participant ΔMD = MD(post) − MD(pre) maps are stacked and modelled, per
voxel, with the study's design turned around as voxelwise analyses do (the
image is the outcome): ``ΔMD ~ Δscore * arm + score_pre``. nilearn's
``non_parametric_inference`` (``permuted_ols``) gives max-t family-wise
error corrected p-values, optionally with TFCE; the contrast is the
Δscore x arm interaction. At 3 mm and 98 participants the data take about
120 MB, well inside a 2 GB Binder container.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .derivatives import session_paths
from .exceptions import InputError

__all__ = [
    "VoxelwiseResult",
    "delta_md_maps",
    "interaction_t_map",
    "mean_delta_md_map",
    "voxelwise_design",
    "voxelwise_inference",
    "voxelwise_summary",
]

#: Columns of the voxelwise design matrix; the tested contrast is the last
#: but one (the interaction).
DESIGN_COLUMNS = ("intercept", "delta_score", "ketamine", "delta_score_x_ketamine", "score_pre")


def delta_md_maps(out_dir, participants, *, pre: str = "pre", post: str = "post",
                  csf_md_threshold: float | None = None):
    """Stack the ΔMD maps (template space) of participants with both sessions.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Pipeline output folder.
    participants : sequence of str
        Participant ids, in the order wanted.
    pre, post : str, default="pre", "post"
        Session labels.
    csf_md_threshold : float or None, default=None
        Keep only voxels whose MD, averaged over all sessions, is at or
        below this (mm²/s): without it, brain-edge and ventricle voxels,
        where a millimetre of registration moves CSF in and out, dominate
        the ΔMD maps. Default: the pipeline's partial-volume guard
        (:data:`ketamine_nb.roi.DEFAULT_CSF_MD_THRESHOLD`).

    Returns
    -------
    img : nibabel.Nifti1Image
        4D float32 image, one ΔMD volume (mm²/s) per participant found.
    ids : list of str
        The participants in volume order (those with both maps).
    mask : nibabel.Nifti1Image
        Tissue voxels with MD in every session of every participant.
    """
    import nibabel as nib

    from .roi import DEFAULT_CSF_MD_THRESHOLD

    thr = DEFAULT_CSF_MD_THRESHOLD if csf_md_threshold is None else csf_md_threshold
    vols, ids, valid, affine, md_sum = [], [], None, None, None
    for pid in participants:
        a = session_paths(out_dir, pid, pre)["md_mni"]
        b = session_paths(out_dir, pid, post)["md_mni"]
        if not (a.exists() and b.exists()):
            continue
        ia, ib = nib.load(a), nib.load(b)
        da, db = np.asarray(ia.dataobj, np.float32), np.asarray(ib.dataobj, np.float32)
        ok = (da > 0) & (db > 0)
        valid = ok if valid is None else valid & ok
        md_sum = da + db if md_sum is None else md_sum + da + db
        vols.append(np.where(ok, db - da, 0).astype(np.float32))
        ids.append(pid)
        affine = ia.affine
    if not vols:
        raise InputError(f"{out_dir}: no participant has template-space MD maps for both "
                         f"sessions ({pre}, {post}); rerun 'ketamine-nb run'")
    valid &= md_sum / (2 * len(ids)) <= thr
    img = nib.Nifti1Image(np.stack(vols, axis=-1), affine)
    return img, ids, nib.Nifti1Image(valid.astype(np.uint8), affine)


def voxelwise_design(scores: pd.DataFrame, ids, *, outcome: str = "madrs") -> pd.DataFrame:
    """Design matrix (one row per participant) for :func:`voxelwise_inference`.

    Δscore and the baseline score are centred, so the arm column is the
    group difference at the mean change.
    """
    s = scores.set_index("participant_id").loc[list(ids)]
    pre = s[f"{outcome}_pre"].astype(float)
    d = s[f"{outcome}_post"].astype(float) - pre
    if d.isna().any() or pre.isna().any():
        missing = d.index[d.isna() | pre.isna()].tolist()
        raise InputError(f"{outcome}: scores missing for {missing}; leave them out first")
    k = (s["arm"] == "ketamine").astype(float)
    dc = d - d.mean()
    return pd.DataFrame({"intercept": 1.0, "delta_score": dc, "ketamine": k,
                         "delta_score_x_ketamine": dc * k, "score_pre": pre - pre.mean()},
                        index=list(ids))[list(DESIGN_COLUMNS)]


def _t_map(img, design, mask):
    """OLS t statistic of the interaction at every voxel of the mask."""
    import nibabel as nib

    data = np.asarray(img.dataobj, np.float64)
    m = np.asarray(mask.dataobj) > 0
    Y = data[m].T                                    # subjects x voxels
    X = design.to_numpy(float)
    pinv = np.linalg.pinv(X)
    B = pinv @ Y
    res = Y - X @ B
    dof = X.shape[0] - X.shape[1]
    j = list(design.columns).index("delta_score_x_ketamine")
    c = np.linalg.pinv(X.T @ X)[j, j]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = B[j] / np.sqrt((res ** 2).sum(0) / dof * c)
    out = np.zeros(m.shape, np.float32)
    out[m] = np.nan_to_num(t)
    return nib.Nifti1Image(out, img.affine)


@dataclass
class VoxelwiseResult:
    """The voxelwise test of one outcome (:func:`voxelwise_inference`).

    Attributes
    ----------
    outcome : str
        The outcome whose change entered the design.
    t : nibabel.Nifti1Image
        t map of the Δscore x arm interaction (template space).
    logp_max_t : nibabel.Nifti1Image
        -log10 of the max-t FWE-corrected p-value per voxel.
    clusters : pandas.DataFrame
        nilearn's cluster table at ``|t| >= cluster_threshold``.
    design : pandas.DataFrame
        The design matrix, one row per participant (:data:`DESIGN_COLUMNS`).
    ids : list of str
        The participants, in the design's order.
    tfce, logp_max_tfce : nibabel.Nifti1Image or None
        TFCE map and its -log10 FWE p-value, when asked.
    """

    outcome: str
    t: object
    logp_max_t: object
    clusters: pd.DataFrame
    design: pd.DataFrame
    ids: list
    tfce: object = None
    logp_max_tfce: object = None

    def n_significant(self, alpha: float = 0.05) -> int:
        """Count the voxels with FWE-corrected p below ``alpha``."""
        return int((np.asarray(self.logp_max_t.dataobj) > -np.log10(alpha)).sum())


def voxelwise_inference(out_dir, scores: pd.DataFrame, *, outcome: str = "madrs",
                        pre: str = "pre", post: str = "post", n_permutations: int = 1000,
                        tfce: bool = False, cluster_threshold: float = 3.0,
                        random_state: int = 0, write: bool = True) -> VoxelwiseResult:
    """Voxelwise Δscore x arm interaction on ΔMD with FWE-corrected permutation p.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Pipeline output folder (results go to ``out_dir/voxelwise``).
    scores : pandas.DataFrame
        One row per participant with ``arm`` and the outcome's pre/post.
    outcome : {"madrs", "qids"}, default="madrs"
        Outcome whose change enters the design.
    pre, post : str
        Session labels.
    n_permutations : int, default=1000
        Permutations (max-t FWE).
    tfce : bool, default=False
        Also compute TFCE and its FWE p-values (slower).
    cluster_threshold : float, default=3.0
        |t| threshold of the cluster table (nilearn's ``get_clusters_table``).
        The voxel-level FWE control is max-t; nilearn's cluster-level
        inference is not used (it asserts on some masks in nilearn 0.14).
    random_state : int, default=0
        Permutation seed.
    write : bool, default=True
        Write the maps and the table into ``out_dir/voxelwise``.

    Returns
    -------
    VoxelwiseResult
        The t and -log10 FWE p maps (optionally TFCE), the cluster table,
        the design and the participants.
    """
    from nilearn.glm.second_level import non_parametric_inference
    from nilearn.reporting import get_clusters_table

    from ._utils import save_nifti, write_tsv

    have = scores.dropna(subset=[f"{outcome}_pre", f"{outcome}_post"])
    img, ids, mask = delta_md_maps(out_dir, have["participant_id"], pre=pre, post=post)
    design = voxelwise_design(have, ids, outcome=outcome)
    dof = len(ids) - design.shape[1]
    if dof < 10:
        import warnings

        warnings.warn(f"voxelwise: {len(ids)} participants leave {dof} degrees of freedom for "
                      f"{design.shape[1]} regressors; t values will be unstable (use at least "
                      f"{design.shape[1] + 10} participants)", UserWarning, stacklevel=2)
    # Scale ΔMD to 1e-6 mm²/s so the effect maps read like the ROI slopes.
    import nibabel as nib
    from nilearn.image import iter_img

    img = nib.Nifti1Image(np.asarray(img.dataobj) * 1e6, img.affine)
    res = non_parametric_inference(
        list(iter_img(img)), design_matrix=design, second_level_contrast="delta_score_x_ketamine",
        mask=mask, n_perm=n_permutations, two_sided_test=True, random_state=random_state,
        model_intercept=False,  # the design has its own intercept column
        n_jobs=1, threshold=None, tfce=tfce, verbose=0)
    # nilearn returns a single t map without TFCE/threshold: normalise to a dict.
    out = dict(res) if isinstance(res, dict) else {"logp_max_t": res}
    if "t" not in out:
        out["t"] = _t_map(img, design, mask)
    res = out
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No clusters found")
        out["clusters"] = get_clusters_table(res["t"], stat_threshold=cluster_threshold,
                                             cluster_threshold=5, two_sided=True)
    if write:
        vdir = Path(out_dir) / "voxelwise"
        for key in ("t", "logp_max_t", "tfce", "logp_max_tfce"):
            if key in res:
                save_nifti(res[key], vdir / f"outcome-{outcome}_contrast-interaction_"
                                            f"stat-{key.replace('_', '')}_statmap.nii.gz")
        write_tsv(out["clusters"], vdir / f"outcome-{outcome}_contrast-interaction_clusters.tsv")
        write_tsv(design.reset_index(names="participant_id"),
                  vdir / f"outcome-{outcome}_design.tsv")
    return VoxelwiseResult(outcome=outcome, t=out["t"], logp_max_t=out["logp_max_t"],
                           clusters=out["clusters"], design=design, ids=list(ids),
                           tfce=out.get("tfce"), logp_max_tfce=out.get("logp_max_tfce"))


def mean_delta_md_map(out_dir, participant_ids, *, pre: str = "pre", post: str = "post"):
    """Mean ΔMD map (template space) of a group of participants (e.g. one arm).

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Pipeline output folder.
    participant_ids : sequence of str
        The participants averaged (e.g. one arm's, from ``Results.participants``).
    pre, post : str
        Session labels.

    Returns
    -------
    nibabel.Nifti1Image
        3D mean of MD(post) − MD(pre) (mm²/s) over the participants, 0
        outside the voxels :func:`delta_md_maps` keeps (tissue with MD in
        every session).
    """
    import nibabel as nib

    ids = list(participant_ids)
    if not ids:
        raise InputError("no participants to average; check the arm's name")
    img, _, mask = delta_md_maps(out_dir, ids, pre=pre, post=post)
    mean = np.asarray(img.dataobj, np.float32).mean(axis=-1)
    mean[np.asarray(mask.dataobj) == 0] = 0
    return nib.Nifti1Image(mean.astype(np.float32), img.affine)


def voxelwise_summary(result: VoxelwiseResult, *, alpha: float = 0.05,
                      t_threshold: float = 3.0) -> pd.DataFrame:
    """Summarise what the voxelwise test found, in one row.

    Parameters
    ----------
    result : VoxelwiseResult
        From :func:`voxelwise_inference`.
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
    t = np.asarray(result.t.dataobj, float)
    logp = np.asarray(result.logp_max_t.dataobj, float)
    tested = t != 0
    p = np.power(10.0, -logp[tested]) if tested.any() else np.array([np.nan])
    return pd.DataFrame([{
        "n_participants": len(result.ids or []), "n_voxels": int(tested.sum()),
        "peak_abs_t": float(np.abs(t).max()),
        "n_voxels_t_above": int((np.abs(t) >= t_threshold).sum()),
        "min_p_fwe": float(np.nanmin(p)), "n_voxels_fwe": int((p < alpha).sum())}])


def interaction_t_map(out_dir, scores: pd.DataFrame, *, outcome: str = "madrs",
                      pre: str = "pre", post: str = "post"):
    """OLS t map of the Δscore x arm interaction on ΔMD, without permutations.

    The t statistic of :func:`voxelwise_inference` (same design, same voxels),
    for display: it takes a fraction of a second where the permutations take
    minutes, and it gives no p-values.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Pipeline output folder.
    scores : pandas.DataFrame
        One row per participant with ``arm`` and the outcome's pre/post.
    outcome : {"madrs", "qids"}, default="madrs"
        Outcome whose change enters the design.
    pre, post : str
        Session labels.

    Returns
    -------
    nibabel.Nifti1Image
        3D float32 t map (template space), 0 outside the tested voxels.
    """
    have = scores.dropna(subset=[f"{outcome}_pre", f"{outcome}_post"])
    img, ids, mask = delta_md_maps(out_dir, have["participant_id"], pre=pre, post=post)
    return _t_map(img, voxelwise_design(have, ids, outcome=outcome), mask)
