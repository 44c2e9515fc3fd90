"""How robust is the answer? The ROI analysis over a grid of analytic choices.

Every choice the paper left open moves the interaction estimate a little:
the tensor fit, the atlas probability threshold, the CSF guard, the outcome,
absolute or percent change, covariates. :func:`robustness_grid` reruns the
ROI model over all combinations from the cached per-voxel tables (no tensor
is refitted, no image is read) and returns one tidy row per specification x
region, the basis of a specification-curve ("multiverse") figure and widget.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from .exceptions import InputError
from .stats import MIN_PER_ARM

__all__ = ["CHOICES", "DEFAULT_GRID", "ols_interaction", "robustness_grid", "robustness_summary"]

#: Default grid: 2 x 4 x 4 x 2 x 2 x 2 = 256 specifications.
DEFAULT_GRID = {
    "fit_method": ("configured", "OLS"),
    "probability_threshold": (0.1, 0.25, 0.4, 0.5),
    "csf_md_threshold": (None, 1.5e-3, 1.1e-3, 1.0e-3),
    "outcome": ("madrs", "qids"),
    "change": ("absolute", "percent"),
    "covariates": ((), ("age", "sex")),
}

#: The analytic choices of the grid, in the order of the robustness table's
#: columns (the one list the figure, the explorer and the summaries use).
CHOICES = tuple(DEFAULT_GRID)


def ols_interaction(x, k, y, pre, covariates=None):
    """OLS of ``y ~ x * k + pre (+ covariates)``; the interaction and simple slopes.

    A direct least-squares solve, equal to the statsmodels fit of
    :func:`ketamine_nb.stats.region_stats` (tested) and fast enough for
    hundreds of specifications.

    Parameters
    ----------
    x, k, y, pre : numpy.ndarray, shape (n,)
        ΔMD, ketamine indicator (0/1), Δscore, baseline score.
    covariates : numpy.ndarray, shape (n, c), optional
        Extra columns.

    Returns
    -------
    dict
        ``beta_interaction``, ``se_interaction``, ``p_interaction``,
        ``slope_ketamine``, ``slope_saline``, ``n``.
    """
    from scipy.stats import t as t_dist

    cols = [np.ones_like(x), k, x, x * k, pre]
    if covariates is not None and np.size(covariates):
        cols.extend(np.asarray(covariates, float).T)
    X = np.column_stack(cols)
    n, p = X.shape
    if n <= p:
        return {"beta_interaction": np.nan, "se_interaction": np.nan, "p_interaction": np.nan,
                "slope_ketamine": np.nan, "slope_saline": np.nan, "n": n}
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    res = y - X @ beta
    sigma2 = (res @ res) / (n - p)
    xtx_inv = np.linalg.pinv(X.T @ X)
    with np.errstate(invalid="ignore"):  # a degenerate design (no ΔMD spread): NaN
        se = np.sqrt(sigma2 * xtx_inv[3, 3])
    t = beta[3] / se if se > 0 else np.nan
    return {"beta_interaction": beta[3], "se_interaction": se,
            "p_interaction": 2 * t_dist.sf(abs(t), n - p) if np.isfinite(t) else np.nan,
            "slope_ketamine": beta[2] + beta[3], "slope_saline": beta[2], "n": n}


def _region_means(voxels, md_col, prob_thr, csf_thr, codes, n_groups):
    md = voxels[md_col].to_numpy()
    keep = voxels["probability"].to_numpy() >= prob_thr
    if csf_thr is not None:
        keep &= md <= csf_thr
    keep &= np.isfinite(md)
    # Probability-weighted, as the pipeline's default regional summary.
    p = voxels["probability"].to_numpy()[keep]
    s = np.bincount(codes[keep], weights=md[keep] * p, minlength=n_groups)
    c = np.bincount(codes[keep], weights=p, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return s / c


def robustness_grid(voxels: pd.DataFrame, scores: pd.DataFrame, *, pre: str = "pre",
                    post: str = "post", participants: pd.DataFrame | None = None,
                    grid: dict | None = None) -> pd.DataFrame:
    """Rerun the ROI model over every combination of analytic choices.

    Parameters
    ----------
    voxels : pandas.DataFrame
        Output of :func:`ketamine_nb.derivatives.load_cohort_voxels`.
    scores : pandas.DataFrame
        One row per participant: ``arm`` and ``<outcome>_pre``/``_post``.
    pre, post : str, default="pre", "post"
        Session labels.
    participants : pandas.DataFrame, optional
        Covariates (``age``, ``sex``...) if not in ``scores``.
    grid : dict, optional
        Values per choice (keys of :data:`DEFAULT_GRID`); missing keys take
        the defaults. ``fit_method`` ``"configured"`` is the pipeline's fit
        (column ``md``), ``"OLS"`` the cached OLS MD (``md_ols``).

    Returns
    -------
    pandas.DataFrame
        One row per specification x region: the choices, ``spec`` (an id),
        ``region``, ``n``, ``beta_interaction``, ``se_interaction``,
        ``p_interaction``, ``slope_ketamine``, ``slope_saline``.
    """
    g = dict(DEFAULT_GRID, **(grid or {}))
    info = scores.copy()
    if participants is not None:
        extra = [c for c in participants.columns if c not in info.columns]
        info = info.merge(participants[["participant_id", *extra]], on="participant_id",
                          how="left")
    info = info.set_index("participant_id")
    pids = list(voxels["participant_id"].cat.categories)
    regions = list(voxels["region"].cat.categories)
    sess = {s: i for i, s in enumerate(voxels["session"].cat.categories)}
    if pre not in sess or post not in sess:
        raise InputError(f"sessions {pre!r}/{post!r} not in the voxel tables; found "
                         f"{', '.join(sess)}")
    n_p, n_s, n_r = len(pids), len(sess), len(regions)
    c_p, c_s, c_r = (voxels[c].cat.codes.to_numpy().astype(np.int64)
                     for c in ("participant_id", "session", "region"))
    codes = (c_p * n_s + c_s) * n_r + c_r
    rows = []
    spec_id = 0
    md_cols = {"configured": "md", "OLS": "md_ols"}
    for fit, pthr, cthr in itertools.product(g["fit_method"], g["probability_threshold"],
                                             g["csf_md_threshold"]):
        col = md_cols.get(fit)
        if col is None:
            raise InputError(f"fit method {fit!r} is not cached; use 'configured' or 'OLS'")
        means = _region_means(voxels, col, pthr, cthr, codes, n_p * n_s * n_r)
        means = means.reshape(n_p, n_s, n_r)
        md_pre, md_post = means[:, sess[pre]], means[:, sess[post]]
        dmd = (md_post - md_pre) * 1e6
        for outcome, change, covs in itertools.product(g["outcome"], g["change"],
                                                       g["covariates"]):
            s = info.reindex(pids)
            spre = s[f"{outcome}_pre"].to_numpy(float)
            spost = s[f"{outcome}_post"].to_numpy(float)
            y = spost - spre
            if change == "percent":
                with np.errstate(invalid="ignore", divide="ignore"):
                    y = 100 * y / spre
            k = (s["arm"] == "ketamine").to_numpy(float)
            cov = None
            if covs:
                missing = [c for c in covs if c not in s]
                if missing:
                    raise InputError(f"covariate(s) {missing} not available")
                cov = np.column_stack([
                    (s[c] == s[c].dropna().iloc[0]).to_numpy(float)
                    if s[c].dtype == object or str(s[c].dtype).startswith(("str", "cat"))
                    else s[c].to_numpy(float) for c in covs])
            spec = {"spec": spec_id, "fit_method": fit, "probability_threshold": pthr,
                    "csf_md_threshold": cthr, "outcome": outcome, "change": change,
                    "covariates": "+".join(covs) or "none"}
            spec_id += 1
            for r, region in enumerate(regions):
                x = dmd[:, r]
                ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(spre)
                if cov is not None:
                    ok &= np.all(np.isfinite(cov), axis=1)
                n_ket, n_sal = int(k[ok].sum()), int((1 - k[ok]).sum())
                if min(n_ket, n_sal) < MIN_PER_ARM:   # as region_stats: too few to fit
                    res = ols_interaction(x[:0], k[:0], y[:0], spre[:0])
                    res["n"] = int(ok.sum())
                else:
                    res = ols_interaction(x[ok], k[ok], y[ok], spre[ok],
                                          None if cov is None else cov[ok])
                rows.append({**spec, "region": region, **res})
    return pd.DataFrame(rows)


def robustness_summary(robustness: pd.DataFrame, *, alpha: float = 0.05) -> pd.DataFrame:
    """Across the specifications of the robustness grid, per region.

    Parameters
    ----------
    robustness : pandas.DataFrame
        ``Results.robustness`` (one row per specification × region).
    alpha : float, default=0.05
        Uncorrected level counted.

    Returns
    -------
    pandas.DataFrame
        ``region``, ``n_specifications`` (with an estimate), ``t_median``,
        ``t_min``, ``t_max`` (interaction t = β / SE, unitless),
        ``share_positive`` (fraction with t > 0) and ``share_significant``
        (fraction with p < ``alpha``, uncorrected).
    """
    d = robustness.assign(t=robustness["beta_interaction"] / robustness["se_interaction"])
    d = d[np.isfinite(d["t"])]
    g = d.groupby("region", sort=False)
    out = pd.DataFrame({"n_specifications": g.size(), "t_median": g["t"].median(),
                        "t_min": g["t"].min(), "t_max": g["t"].max(),
                        "share_positive": g["t"].apply(lambda s: (s > 0).mean()),
                        "share_significant": g["p_interaction"].apply(
                            lambda s: (s < alpha).mean())})
    return out.reset_index()
