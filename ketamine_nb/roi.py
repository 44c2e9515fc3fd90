"""Region values from per-voxel tables: thresholds move without refitting anything.

For each session the pipeline keeps, per region, every brain voxel with an
atlas probability of at least :data:`MIN_CACHED_PROBABILITY`, with its
probability, MD and FA (``*_desc-regionvoxels_dwi.tsv.gz``). The region's MD
for any probability threshold and partial-volume guard is then a filter and
a mean over that table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .regions import DEFAULT_PROBABILITY_THRESHOLD

__all__ = [
    "DEFAULT_CSF_MD_THRESHOLD",
    "DEFAULT_FA_THRESHOLD",
    "MIN_CACHED_PROBABILITY",
    "classify_voxels",
    "extract_region_voxels",
    "summarise_regions",
]

#: Voxels with an atlas probability below this are not kept (fraction).
MIN_CACHED_PROBABILITY = 0.05

#: Partial-volume guard: voxels whose MD is above this (mm²/s) are dropped as
#: CSF-contaminated. Grey matter is about 0.7-0.9e-3 mm²/s and free water
#: 3.0e-3; at b = 1000 s/mm², a voxel of grey matter with 20 % CSF reads about
#: 1.0e-3 and one with 40 % about 1.3e-3. 1.1e-3 keeps tissue with a little
#: CSF and drops voxels where CSF dominates the signal change (chosen on the
#: simulated cohort: it brings regional MD within 2 % of the CSF-free truth;
#: see tests/test_pipeline.py).
DEFAULT_CSF_MD_THRESHOLD = 1.1e-3

#: Optional white-matter guard: voxels with FA above this are dropped when a
#: threshold is given. Off by default (``None``): the study's grey-matter
#: regions contain little white matter at 0.25 probability.
DEFAULT_FA_THRESHOLD = None


def extract_region_voxels(md_img, fa_img, mask_img, region_img, names,
                          *, min_probability: float = MIN_CACHED_PROBABILITY) -> pd.DataFrame:
    """Collect the voxels of every region with their probability, MD and FA.

    Parameters
    ----------
    md_img, fa_img : nibabel.Nifti1Image
        MD (mm²/s) and FA maps on the DWI grid.
    mask_img : nibabel.Nifti1Image
        Brain mask on the DWI grid.
    region_img : nibabel.Nifti1Image
        4D region probabilities on the same grid (one volume per name).
    names : list of str
        Region names, in volume order.
    min_probability : float, default=0.05
        Lowest probability kept.

    Returns
    -------
    pandas.DataFrame
        One row per region x voxel: ``region``, ``i``, ``j``, ``k`` (voxel
        indices), ``probability``, ``md`` (mm²/s), ``fa``.
    """
    md = np.asarray(md_img.dataobj, np.float32)
    fa = np.asarray(fa_img.dataobj, np.float32)
    mask = np.asarray(mask_img.dataobj) > 0
    prob = np.asarray(region_img.dataobj, np.float32)
    if prob.ndim == 3:
        prob = prob[..., None]
    frames = []
    for k, name in enumerate(names):
        sel = (prob[..., k] >= min_probability) & mask & (md > 0)
        i, j, kk = np.nonzero(sel)
        frames.append(pd.DataFrame({
            "region": name, "i": i.astype(np.int16), "j": j.astype(np.int16),
            "k": kk.astype(np.int16), "probability": np.round(prob[..., k][sel], 4),
            "md": md[sel], "fa": fa[sel]}))
    out = pd.concat(frames, ignore_index=True)
    out["region"] = pd.Categorical(out["region"], categories=list(names))
    return out


def summarise_regions(voxels: pd.DataFrame, *,
                      probability_threshold: float = DEFAULT_PROBABILITY_THRESHOLD,
                      csf_md_threshold: float | None = DEFAULT_CSF_MD_THRESHOLD,
                      fa_threshold: float | None = DEFAULT_FA_THRESHOLD,
                      by=()) -> pd.DataFrame:
    """Mean and median MD per region for given thresholds.

    Parameters
    ----------
    voxels : pandas.DataFrame
        Output of :func:`extract_region_voxels` (several sessions may be
        stacked, with the grouping columns in ``by``).
    probability_threshold : float, default=0.25
        Keep voxels with atlas probability >= this (fraction, 0-1).
    csf_md_threshold : float or None, default=1.1e-3
        Drop voxels with MD above this (mm²/s); ``None`` keeps all.
    fa_threshold : float or None, default=None
        Drop voxels with FA above this; ``None`` keeps all.
    by : sequence of str, default=()
        Extra grouping columns (e.g. ``("participant_id", "session")``).

    Returns
    -------
    pandas.DataFrame
        ``*by``, ``region``, ``md_mean``, ``md_median``, ``md_wmean`` (the
        mean weighted by atlas probability; all mm²/s), ``n_voxels`` (kept),
        ``n_excluded`` (in the region at this threshold but dropped by the
        guards).

    Notes
    -----
    ``md_wmean = sum(p * MD) / sum(p)`` over the kept voxels, as nilearn's
    ``NiftiMapsMasker`` weights probabilistic regions: voxels at the region's
    edge, where partial volume and registration error are largest, count
    less. It is the pipeline's default summary (see
    :class:`ketamine_nb.pipeline.PipelineConfig`).
    """
    keys = [*by, "region"]
    v = voxels[voxels["probability"] >= probability_threshold]
    drop = np.zeros(len(v), dtype=bool)
    if csf_md_threshold is not None:
        drop |= v["md"].to_numpy() > csf_md_threshold
    if fa_threshold is not None:
        drop |= v["fa"].to_numpy() > fa_threshold
    kept = v[~drop].assign(pmd=lambda d: d["probability"] * d["md"])
    g_all = v.groupby(keys, observed=False)
    g = kept.groupby(keys, observed=False)
    g_kept = g["md"]
    out = pd.DataFrame({
        "md_mean": g_kept.mean(),
        "md_median": g_kept.median(),
        "md_wmean": g["pmd"].sum() / g["probability"].sum(),
        "n_voxels": g_kept.size(),
    })
    out["n_excluded"] = g_all.size() - out["n_voxels"]
    out = out.reset_index()
    out[["n_voxels", "n_excluded"]] = out[["n_voxels", "n_excluded"]].fillna(0).astype(int)
    return out


def classify_voxels(voxels: pd.DataFrame, *,
                    probability_threshold: float = DEFAULT_PROBABILITY_THRESHOLD,
                    csf_md_threshold: float | None = DEFAULT_CSF_MD_THRESHOLD,
                    fa_threshold: float | None = DEFAULT_FA_THRESHOLD) -> pd.DataFrame:
    """Say of each cached voxel whether :func:`summarise_regions` keeps or drops it.

    Parameters
    ----------
    voxels : pandas.DataFrame
        Output of :func:`extract_region_voxels` (``probability``, ``md``, ``fa``).
    probability_threshold, csf_md_threshold, fa_threshold
        As in :func:`summarise_regions` (``None``: that guard is off).

    Returns
    -------
    pandas.DataFrame
        Same index, boolean ``inside`` (atlas probability >= threshold),
        ``kept`` (inside and not dropped) and ``dropped`` (inside, above a
        guard); ``kept.sum()`` per region is ``summarise_regions``'s ``n_voxels``.
    """
    inside = voxels["probability"].to_numpy() >= probability_threshold
    drop = np.zeros(len(voxels), dtype=bool)
    if csf_md_threshold is not None:
        drop |= voxels["md"].to_numpy() > csf_md_threshold
    if fa_threshold is not None:
        drop |= voxels["fa"].to_numpy() > fa_threshold
    return pd.DataFrame({"inside": inside, "kept": inside & ~drop, "dropped": inside & drop},
                        index=voxels.index)
