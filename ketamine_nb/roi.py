"""Region values from per-voxel tables: thresholds move without refitting anything.

For each session the pipeline keeps, per region, every brain voxel with an
atlas probability of at least :data:`MIN_CACHED_PROBABILITY`, with its
probability, MD and FA (``*_desc-regionvoxels_dwi.tsv.gz``). The region's MD
for any probability threshold and partial-volume guard is then a filter and
a mean over that table.

When both visits of a participant are in one space
(:mod:`ketamine_nb.longitudinal`), the two tables hold the same voxels, and a
column ``md_guard`` (the mean MD of the two visits) is what the CSF guard
judges, so a voxel is kept or dropped in both visits at once.

Coverage: every region row carries ``coverage_fov`` and ``coverage_brain``,
the share of the region's atlas probability mass inside the visit's field of
view and inside its brain mask; :func:`apply_coverage` sets the values of a
region under :data:`DEFAULT_MIN_COVERAGE` to missing with the reason.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .regions import DEFAULT_PROBABILITY_THRESHOLD, GLOBAL_GM

__all__ = [
    "DEFAULT_CSF_MD_THRESHOLD",
    "DEFAULT_FA_THRESHOLD",
    "DEFAULT_MIN_COVERAGE",
    "MIN_CACHED_PROBABILITY",
    "apply_coverage",
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

#: A region is summarised only when at least this share (fraction, 0-1) of
#: its atlas probability mass lies inside the visit's field of view and inside
#: its brain mask (``coverage_fov``, ``coverage_brain``). Below it the
#: region's MD would come from a sliver of it, at its edge, where partial
#: volume and registration error dominate: its MD and ΔMD are ``n/a`` with the
#: reason in ``flag``. A region missing a fifth of its mass is no longer the
#: region the study names. CLI ``--min-coverage``. In a slab the estimate is
#: optimistic: on simulated 84 mm slabs ``coverage_fov`` of BA10 and the vACC
#: came out 0.073 above the simulator's truth on average (0.16 at most; the
#: atlas's edge sits a few mm off where the data end), so a slab region
#: passing at 0.8 may hold only ~0.73 of its mass (tests/test_longitudinal.py).
DEFAULT_MIN_COVERAGE = 0.8

#: Optional white-matter guard: voxels with FA above this are dropped when a
#: threshold is given. Off by default (``None``): the study's grey-matter
#: regions contain little white matter at 0.25 probability.
DEFAULT_FA_THRESHOLD = None


def _array(img, dtype=None):
    """Return an image's data (a ``Nifti1Image`` or an array already)."""
    return np.asarray(getattr(img, "dataobj", img), dtype)


def extract_region_voxels(md_img, fa_img, mask_img, region_img, names,
                          *, min_probability: float = MIN_CACHED_PROBABILITY,
                          guard_md=None) -> pd.DataFrame:
    """Collect the voxels of every region with their probability, MD and FA.

    Parameters
    ----------
    md_img, fa_img : nibabel.Nifti1Image or numpy.ndarray
        MD (mm²/s) and FA maps on the DWI (or halfway) grid.
    mask_img : nibabel.Nifti1Image or numpy.ndarray
        Brain mask on the same grid.
    region_img : nibabel.Nifti1Image or numpy.ndarray
        4D region probabilities on the same grid (one volume per name).
    names : list of str
        Region names, in volume order.
    min_probability : float, default=0.05
        Lowest probability kept.
    guard_md : array-like, optional
        MD (mm²/s) on the same grid that the CSF guard judges instead of
        ``md``: the mean of a participant's aligned visits. Written as the
        column ``md_guard``.

    Returns
    -------
    pandas.DataFrame
        One row per region x voxel: ``region``, ``i``, ``j``, ``k`` (voxel
        indices), ``probability``, ``md`` (mm²/s), ``fa`` (and ``md_guard``).
    """
    md = _array(md_img, np.float32)
    fa = _array(fa_img, np.float32)
    mask = _array(mask_img) > 0
    prob = _array(region_img, np.float32)
    if prob.ndim == 3:
        prob = prob[..., None]
    guard = None if guard_md is None else _array(guard_md, np.float32)
    frames = []
    for k, name in enumerate(names):
        sel = (prob[..., k] >= min_probability) & mask & (md > 0)
        i, j, kk = np.nonzero(sel)
        cols = {"region": name, "i": i.astype(np.int16), "j": j.astype(np.int16),
                "k": kk.astype(np.int16), "probability": np.round(prob[..., k][sel], 4),
                "md": md[sel], "fa": fa[sel]}
        if guard is not None:
            cols["md_guard"] = guard[sel]
        frames.append(pd.DataFrame(cols))
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
        Drop voxels with MD above this (mm²/s; the column ``md_guard`` when
        the table has it, else ``md``); ``None`` keeps all.
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
    ``md_wmean = sum(p * MD) / sum(p)`` over the kept voxels: voxels at the
    region's edge, where partial volume and registration error are largest,
    count less. (nilearn's ``NiftiMapsMasker`` does something else: it fits
    all maps to the image at once by least squares, which for one map gives
    ``sum(p * MD) / sum(p ** 2)``, a value in the image's units only when the
    map's probabilities are near 1.) It is the pipeline's default summary
    (see :class:`ketamine_nb.pipeline.PipelineConfig`).
    """
    keys = [*by, "region"]
    v = voxels[voxels["probability"] >= probability_threshold]
    drop = np.zeros(len(v), dtype=bool)
    if csf_md_threshold is not None:
        guard = "md_guard" if "md_guard" in v.columns else "md"
        drop |= v[guard].to_numpy() > csf_md_threshold
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
        guard = "md_guard" if "md_guard" in voxels.columns else "md"   # as summarise_regions
        drop |= voxels[guard].to_numpy() > csf_md_threshold
    if fa_threshold is not None:
        drop |= voxels["fa"].to_numpy() > fa_threshold
    return pd.DataFrame({"inside": inside, "kept": inside & ~drop, "dropped": inside & drop},
                        index=voxels.index)


def apply_coverage(roi_md: pd.DataFrame, *, min_coverage: float | None = DEFAULT_MIN_COVERAGE,
                   value_columns=("md_mean", "md_median", "md_wmean")) -> pd.DataFrame:
    """Flag regions a visit does not cover and blank their values.

    Parameters
    ----------
    roi_md : pandas.DataFrame
        Region rows with ``coverage_fov`` and ``coverage_brain`` (fractions).
    min_coverage : float or None, default=0.8
        :data:`DEFAULT_MIN_COVERAGE`; ``None`` flags nothing.
    value_columns : sequence of str
        Columns set to NaN in flagged rows.

    Returns
    -------
    pandas.DataFrame
        A copy with a ``flag`` column: ``""`` when covered, else
        ``coverage_fov<0.8`` and/or ``coverage_brain<0.8``. The grey-matter
        reference (:data:`~ketamine_nb.regions.GLOBAL_GM`) is never blanked
        (its rows still say their coverage).
    """
    out = roi_md.copy()
    flags = pd.Series("", index=out.index, dtype=object)
    if min_coverage is not None and len(out):
        for col in ("coverage_fov", "coverage_brain"):
            if col not in out:
                continue
            low = out[col].to_numpy(dtype=float) < min_coverage
            text = f"{col}<{min_coverage:g}"
            flags[low] = [f"{f};{text}" if f else text for f in flags[low]]
        blank = (flags != "") & (out["region"].astype(str) != GLOBAL_GM)
        cols = [c for c in value_columns if c in out]
        out.loc[blank, cols] = np.nan
    out["flag"] = flags
    return out
