"""How robust is the answer? The ROI analysis over a grid of analytic choices.

Every choice the paper left open moves the interaction estimate a little:
the tensor fit, the atlas probability threshold, the CSF guard, the outcome,
absolute or percent change, covariates, the global ΔMD covariate, the
exclusion of sessions the pipeline's QC flagged, the orientation of the model
(the ROI model ``Δscore ~ ΔMD × arm`` or the voxelwise model's
``ΔMD ~ Δscore × arm``) and the estimator (least squares or Huber's robust
regression). :func:`robustness_grid` reruns the ROI model over all
combinations from the cached per-voxel tables (no tensor is refitted, no image
is read) and returns one tidy row per specification x region, the basis of a
specification-curve ("multiverse") figure and widget. The t of the
interaction (β / SE) has the same sign and meaning in both orientations, so
specifications are compared on it.

A participant missing a covariate leaves every specification that uses it
(as in :func:`ketamine_nb.stats.stats_input`); a missing category is never
coded as the other one.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd

from .exceptions import InputError, StudyWarning
from .motion import ADVISORY_FLAGS
from .regions import GLOBAL_GM
from .stats import MIN_PER_ARM, covariate_error, design_arms, detect_outcomes

__all__ = ["CHOICES", "DEFAULT_GRID", "ESTIMATORS", "ORIENTATIONS", "configured_specification",
           "ols_interaction", "robustness_grid", "robustness_summary"]

#: Model orientations: the ROI model (score on MD) and the voxelwise one.
ORIENTATIONS = ("score ~ md", "md ~ score")

#: Estimators: least squares, or Huber's M-estimator (statsmodels RLM, the
#: default tuning constant 1.345 robust SDs: 95 % efficiency under normal
#: errors, bounded influence of outlying participants).
ESTIMATORS = ("OLS", "Huber")

#: Default grid: 2 x 4 x 4 x 2 x 2 x 2 x 2 x 2 x 2 = 2048 specifications
#: (Huber regression is offered but not in the default grid: it is
#: iterative, ask for it with ``grid={"estimator": ESTIMATORS}``).
DEFAULT_GRID = {
    "fit_method": ("configured", "OLS"),
    "probability_threshold": (0.1, 0.25, 0.4, 0.5),
    "csf_md_threshold": (None, 1.5e-3, 1.1e-3, 1.0e-3),
    "outcome": ("madrs", "qids"),
    "change": ("absolute", "percent"),
    "covariates": ((), ("age", "sex")),
    "global_covariate": (False, True),
    "exclude_flagged": (False, True),
    "orientation": ORIENTATIONS,
    "estimator": ("OLS",),
}

#: The analytic choices of the grid, in the order of the robustness table's
#: columns (the one list the figure, the explorer and the summaries use).
CHOICES = tuple(DEFAULT_GRID)


def _fit_columns(x, k, y, pre, covariates):
    cols = [np.ones_like(x), k, x, x * k, pre]
    if covariates is not None and np.size(covariates):
        cols.extend(np.asarray(covariates, float).reshape(len(x), -1).T)
    return np.column_stack(cols)


_EMPTY = {"beta_interaction": np.nan, "se_interaction": np.nan, "p_interaction": np.nan,
          "slope_treated": np.nan, "slope_control": np.nan}


def ols_interaction(x, k, y, pre, covariates=None, *, estimator: str = "OLS"):
    """Fit ``y ~ x * k + pre (+ covariates)``; the interaction and simple slopes.

    A direct least-squares solve, equal to the statsmodels fit of
    :func:`ketamine_nb.stats.region_stats` (tested) and fast enough for
    thousands of specifications; ``estimator="Huber"`` fits statsmodels'
    RLM with Huber's norm instead (p from its normal z).

    Parameters
    ----------
    x, k, y, pre : numpy.ndarray, shape (n,)
        Predictor (ΔMD, or Δscore in the reversed orientation), treated-arm
        indicator (0/1), outcome, baseline score.
    covariates : numpy.ndarray, shape (n, c), optional
        Extra columns.
    estimator : {"OLS", "Huber"}, default="OLS"
        See :data:`ESTIMATORS`.

    Returns
    -------
    dict
        ``beta_interaction``, ``se_interaction``, ``p_interaction``,
        ``slope_treated``, ``slope_control``, ``n``.
    """
    from scipy.stats import t as t_dist

    X = _fit_columns(x, k, y, pre, covariates)
    n, p = X.shape
    if n <= p:
        return {**_EMPTY, "n": n}
    if estimator == "Huber":
        import statsmodels.api as sm

        if np.linalg.matrix_rank(X) < p:
            return {**_EMPTY, "n": n}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.RLM(y, X, M=sm.robust.norms.HuberT()).fit()
        beta, se, pval = fit.params, fit.bse[3], fit.pvalues[3]
    elif estimator == "OLS":
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        res = y - X @ beta
        sigma2 = (res @ res) / (n - p)
        xtx_inv = np.linalg.pinv(X.T @ X)
        with np.errstate(invalid="ignore"):  # a degenerate design (no ΔMD spread): NaN
            se = np.sqrt(sigma2 * xtx_inv[3, 3])
        t = beta[3] / se if se > 0 else np.nan
        pval = 2 * t_dist.sf(abs(t), n - p) if np.isfinite(t) else np.nan
    else:
        raise InputError(f"estimator {estimator!r} is unknown; use {' or '.join(ESTIMATORS)}")
    return {"beta_interaction": beta[3], "se_interaction": se, "p_interaction": pval,
            "slope_treated": beta[2] + beta[3], "slope_control": beta[2], "n": n}


def _ols_batch(P, k, Y, pre, cov, OK):
    """:func:`ols_interaction` (least squares) for R regions at once; rows outside OK drop.

    ``P`` and ``Y`` are R x n (predictor and outcome per region), ``OK`` R x n.
    """
    from scipy.stats import t as t_dist

    R, n = P.shape
    c = cov.shape[1] if cov.size else 0
    X = np.empty((R, n, 5 + c))
    X[..., 0], X[..., 1], X[..., 2], X[..., 3], X[..., 4] = 1.0, k, P, P * k, pre
    if c:
        X[..., 5:] = cov
    X = np.where(OK[..., None], X, 0.0)
    y = np.where(OK, Y, 0.0)
    Xt = X.transpose(0, 2, 1)
    inv = np.linalg.pinv(Xt @ X)
    beta = (inv @ (Xt @ y[..., None]))[..., 0]
    res = y - (X @ beta[..., None])[..., 0]
    dof = OK.sum(1) - X.shape[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt((res ** 2).sum(1) / dof * inv[:, 3, 3])
        t = np.where(se > 0, beta[:, 3] / se, np.nan)
    p = np.where(np.isfinite(t), 2 * t_dist.sf(np.abs(t), np.maximum(dof, 1)), np.nan)
    return [{"beta_interaction": beta[r, 3], "se_interaction": se[r], "p_interaction": p[r],
             "slope_treated": beta[r, 2] + beta[r, 3], "slope_control": beta[r, 2],
             "n": int(OK[r].sum())} if dof[r] > 0 else {**_EMPTY, "n": int(OK[r].sum())}
            for r in range(R)]


def _covariate_matrix(s: pd.DataFrame, covs) -> np.ndarray:
    """Numeric columns as they are; a text column as 0/1 dummies; missing stays NaN."""
    cols = []
    for c in covs:
        v = s[c]
        if pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v):
            cols.append(v.to_numpy(float)[:, None])
            continue
        levels = sorted(v.dropna().astype(str).unique())
        d = np.column_stack([(v.astype(str) == lev).to_numpy(float) for lev in levels[1:]]) \
            if len(levels) > 1 else np.zeros((len(v), 0))
        d[v.isna().to_numpy()] = np.nan
        cols.append(d)
    return np.column_stack(cols) if cols else np.zeros((len(s), 0))


def _flagged(qc: pd.DataFrame | None, pids, regions) -> np.ndarray:
    """Participants x regions: True where a session or the region was flagged by QC."""
    out = np.zeros((len(pids), len(regions)), bool)
    if qc is None:
        return out
    pi = {p: i for i, p in enumerate(pids)}
    ri = {r: i for i, r in enumerate(regions)}
    q = qc.copy()
    if "qc_flags" in q:   # advisory session flags (volumes left out) put nothing in doubt
        q["qc_flags"] = [";".join(f for f in str(x).split(";")
                                  if f.strip() and f.strip() not in ADVISORY_FLAGS)
                         if isinstance(x, str) else "" for x in q["qc_flags"]]
    bad = np.zeros(len(q), bool)
    for col in ("qc_flags", "flag"):
        if col in q:
            bad |= q[col].fillna("").astype(str).str.strip().ne("").to_numpy()
    if "qc_flags" in q:   # a session-level flag removes the whole session
        sess = q.loc[q["qc_flags"].str.strip().ne(""), "participant_id"]
        for p in set(sess):
            if p in pi:
                out[pi[p], :] = True
    for p, r in zip(q.loc[bad, "participant_id"], q.loc[bad, "region"], strict=True):
        if p in pi and r in ri:
            out[pi[p], ri[r]] = True
    return out


#: Rows per block in :func:`_region_means`: the float64 temporaries of a block
#: stay at a few tens of MB however large the cohort's voxel table.
_BLOCK_ROWS = 1 << 21


def _region_means(voxels, md_col, prob_thr, csf_thr, codes, n_groups):
    # Tables read as float32 (load_cohort_voxels(float_dtype=)): thresholds are
    # compared in the column's own dtype, where the stored 6-digit decimals keep
    # their order (so a voxel at the threshold is kept as in float64), and the
    # sums are made in float64, a block of rows at a time (the demo's 15 M rows
    # as whole float64 columns would need ~0.5 GB of temporaries per call).
    prob_all = voxels["probability"].to_numpy()
    md_all = voxels[md_col].to_numpy()
    # As summarise_regions: the guard is judged once per participant (on the
    # mean MD of the aligned visits) where the pipeline stored it.
    guard_all = None if csf_thr is None else \
        voxels["md_guard" if "md_guard" in voxels else md_col].to_numpy()
    s = np.zeros(n_groups)
    c = np.zeros(n_groups)
    for a in range(0, len(prob_all), _BLOCK_ROWS):
        b = a + _BLOCK_ROWS
        prob = prob_all[a:b]
        keep = prob >= prob.dtype.type(prob_thr)
        if guard_all is not None:
            guard = guard_all[a:b]
            keep &= guard <= guard.dtype.type(csf_thr)
        md = md_all[a:b].astype(np.float64)
        keep &= np.isfinite(md)
        # Probability-weighted, as the pipeline's default regional summary.
        p = prob[keep].astype(np.float64)
        idx = codes[a:b][keep]
        s += np.bincount(idx, weights=md[keep] * p, minlength=n_groups)
        c += np.bincount(idx, weights=p, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return s / c


def robustness_grid(voxels: pd.DataFrame, scores: pd.DataFrame, *, pre: str = "pre",
                    post: str = "post", participants: pd.DataFrame | None = None,
                    grid: dict | None = None, control: str | None = None,
                    qc: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rerun the ROI model over every combination of analytic choices.

    Parameters
    ----------
    voxels : pandas.DataFrame
        Output of :func:`ketamine_nb.derivatives.load_cohort_voxels`; the
        :data:`~ketamine_nb.regions.GLOBAL_GM` region, when cached, is the
        global covariate (never a modelled region).
    scores : pandas.DataFrame
        One row per participant: ``arm`` and ``<outcome>_pre``/``_post``.
    pre, post : str, default="pre", "post"
        Session labels.
    participants : pandas.DataFrame, optional
        Covariates (``age``, ``sex``...) if not in ``scores``.
    grid : dict, optional
        Values per choice (keys of :data:`DEFAULT_GRID`); missing keys take
        the defaults (``outcome``: every ``<name>_pre``/``_post`` pair of
        ``scores``). ``fit_method`` ``"configured"`` is the pipeline's fit
        (column ``md``), ``"OLS"`` the cached OLS MD (``md_ols``).
    control : str, optional
        Control arm label (default: recognised, see
        :func:`ketamine_nb.stats.design_arms`).
    qc : pandas.DataFrame, optional
        ``roi_md.tsv``: ``participant_id``, ``region`` and the pipeline's
        ``qc_flags`` (per session: motion...) and ``flag`` (per region:
        coverage). With ``exclude_flagged=True`` a participant with a flagged
        session leaves every region, a flagged region leaves that region;
        advisory flags (:data:`ketamine_nb.motion.ADVISORY_FLAGS`: outlier
        volumes found and left out) exclude nothing.

    Returns
    -------
    pandas.DataFrame
        One row per specification x region: the choices, ``spec`` (an id),
        ``region``, ``n``, ``beta_interaction``, ``se_interaction``,
        ``p_interaction``, ``slope_<treated>``, ``slope_<control>`` (in the
        orientation's units: Δscore per 10⁻⁶ mm²/s, or 10⁻⁶ mm²/s per point).

    Notes
    -----
    Choices that cannot change anything on these data are dropped with a
    :class:`~ketamine_nb.exceptions.StudyWarning` when they came from the
    default grid: the global covariate without a cached global region, the
    QC exclusion without a QC table. Asked for explicitly, they are an error.
    """
    g = dict(DEFAULT_GRID, **(grid or {}))
    asked = set(grid or {})
    if "outcome" not in asked:   # every score pair of the data
        g["outcome"] = detect_outcomes(scores)
    info = scores.copy()
    if participants is not None:
        extra = [c for c in participants.columns if c not in info.columns]
        info = info.merge(participants[["participant_id", *extra]], on="participant_id",
                          how="left")
    info = info.set_index("participant_id")
    control, treated = design_arms(info["arm"], control)
    pids = list(voxels["participant_id"].cat.categories)
    all_regions = list(voxels["region"].cat.categories)
    sess = {s: i for i, s in enumerate(voxels["session"].cat.categories)}
    if pre not in sess or post not in sess:
        raise InputError(f"sessions {pre!r}/{post!r} not in the voxel tables; found "
                         f"{', '.join(sess)}")
    for name, allowed in (("orientation", ORIENTATIONS), ("estimator", ESTIMATORS)):
        bad = [v for v in g[name] if v not in allowed]
        if bad:
            raise InputError(f"{name} {bad[0]!r} is unknown; use {' or '.join(allowed)}")
    has_global = GLOBAL_GM in all_regions
    has_qc = qc is not None and bool({"qc_flags", "flag"} & set(qc.columns))
    for name, ok, why in (("global_covariate", has_global,
                           f"the voxel tables have no {GLOBAL_GM!r} region"),
                          ("exclude_flagged", has_qc, "no QC table (roi_md.tsv) was given")):
        if True in g[name] and not ok:
            if name in asked:
                raise InputError(f"{name}=True: {why}; rerun the pipeline or leave it out")
            warnings.warn(f"robustness grid: {name}=True left out, {why}", StudyWarning,
                          stacklevel=2)
            g[name] = tuple(v for v in g[name] if v is not True) or (False,)
    regions = [r for r in all_regions if r != GLOBAL_GM]
    flagged = _flagged(qc if has_qc else None, pids, regions)
    n_p, n_s, n_r = len(pids), len(sess), len(all_regions)
    codes = voxels["participant_id"].cat.codes.to_numpy().astype(np.int32)
    for c, n in (("session", n_s), ("region", n_r)):     # one int32 array, not four int64
        codes *= n
        codes += voxels[c].cat.codes.to_numpy()
    s = info.reindex(pids)
    k = (s["arm"] == treated).to_numpy(float)
    in_arms = s["arm"].isin([treated, control]).to_numpy()
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
        dmd_all = (means[:, sess[post]] - means[:, sess[pre]]) * 1e6
        dglob = dmd_all[:, all_regions.index(GLOBAL_GM)] if has_global else None
        dmd = dmd_all[:, [all_regions.index(r) for r in regions]]
        for outcome, change, covs, glob, excl, orient, est in itertools.product(
                g["outcome"], g["change"], g["covariates"], g["global_covariate"],
                g["exclude_flagged"], g["orientation"], g["estimator"]):
            if f"{outcome}_pre" not in s or f"{outcome}_post" not in s:
                raise InputError(f"outcome {outcome!r}: the scores have no {outcome}_pre/"
                                 f"{outcome}_post columns")
            spre = s[f"{outcome}_pre"].to_numpy(float)
            y = s[f"{outcome}_post"].to_numpy(float) - spre
            if change == "percent":
                with np.errstate(invalid="ignore", divide="ignore"):
                    y = 100 * y / spre
            missing = [c for c in covs if c not in s]
            if missing:
                raise covariate_error(missing, participants, scores)
            cov = _covariate_matrix(s, covs)
            if glob:
                cov = np.column_stack([cov, dglob])
            spec = {"spec": spec_id, "fit_method": fit, "probability_threshold": pthr,
                    "csf_md_threshold": cthr, "outcome": outcome, "change": change,
                    "covariates": "+".join(covs) or "none", "global_covariate": bool(glob),
                    "exclude_flagged": bool(excl), "orientation": orient, "estimator": est}
            spec_id += 1
            base_ok = (np.isfinite(y) & np.isfinite(spre) & in_arms
                       & np.all(np.isfinite(cov), axis=1))
            oks = base_ok[None, :] & np.isfinite(dmd.T)
            if excl:
                oks &= ~flagged.T
            if orient == ORIENTATIONS[0]:
                preds, outs = dmd.T, np.broadcast_to(y, oks.shape)
            else:
                preds, outs = np.broadcast_to(y, oks.shape), dmd.T
            batch = (_ols_batch(preds, k, outs, spre, cov, oks) if est == "OLS" else None)
            for r, region in enumerate(regions):
                ok = oks[r]
                n_t, n_c = int(k[ok].sum()), int((1 - k[ok]).sum())
                if min(n_t, n_c) < MIN_PER_ARM:   # as region_stats: too few to fit
                    res = {**_EMPTY, "n": int(ok.sum())}
                elif batch is not None:
                    res = batch[r]
                else:
                    res = ols_interaction(preds[r][ok], k[ok], outs[r][ok], spre[ok],
                                          cov[ok] if cov.size else None, estimator=est)
                res[f"slope_{treated}"] = res.pop("slope_treated")
                res[f"slope_{control}"] = res.pop("slope_control")
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
        ``share_positive`` (fraction with t > 0), ``share_significant``
        (fraction with p < ``alpha``, uncorrected) and ``n_min``, ``n_max``
        (the fewest and most participants a specification kept: a choice
        that leaves participants out, such as ``exclude_flagged``, shows
        here).
    """
    d = robustness.assign(t=robustness["beta_interaction"] / robustness["se_interaction"])
    d = d[np.isfinite(d["t"])]
    g = d.groupby("region", sort=False)
    out = pd.DataFrame({"n_specifications": g.size(), "t_median": g["t"].median(),
                        "t_min": g["t"].min(), "t_max": g["t"].max(),
                        "share_positive": g["t"].apply(lambda s: (s > 0).mean()),
                        "share_significant": g["p_interaction"].apply(
                            lambda s: (s < alpha).mean())})
    if "n" in d:
        out["n_min"], out["n_max"] = g["n"].min(), g["n"].max()
    return out.reset_index()


def configured_specification(pipeline_config: dict | None = None,
                             stats_config: dict | None = None) -> dict:
    """Return the grid's specification that the pipeline and the statistics ran.

    Parameters
    ----------
    pipeline_config : dict, optional
        ``Results.config`` (``pipeline_config.json``): the atlas threshold
        and the CSF guard (mm²/s); the package's defaults when omitted.
    stats_config : dict, optional
        ``Results.stats_config`` (``stats_config.json``): the score change,
        the covariates, the global covariate; the first outcome modelled
        (MADRS unless ``outcomes`` says otherwise).

    Returns
    -------
    dict
        A value for every choice of :data:`CHOICES`, as the robustness table
        writes them (``covariates`` joined by ``+`` or ``"none"``; no CSF
        guard as ``None``): pass it to
        :func:`ketamine_nb.plotting.plot_robustness` as ``highlight`` to mark
        the one specification reported.
    """
    from .regions import DEFAULT_PROBABILITY_THRESHOLD
    from .roi import DEFAULT_CSF_MD_THRESHOLD

    pc, sc = dict(pipeline_config or {}), dict(stats_config or {})
    csf = pc.get("csf_md_threshold", DEFAULT_CSF_MD_THRESHOLD)
    covs = tuple(sc.get("covariates") or ())
    outcomes = sc.get("outcomes") or ("madrs",)
    return {"fit_method": "configured",
            "probability_threshold": float(pc.get("probability_threshold",
                                                  DEFAULT_PROBABILITY_THRESHOLD)),
            "csf_md_threshold": float(csf) if csf else None,
            "outcome": str(outcomes[0]), "change": sc.get("change", "absolute"),
            "covariates": "+".join(covs) or "none",
            "global_covariate": bool(sc.get("global_covariate", False)),
            "exclude_flagged": False, "orientation": ORIENTATIONS[0], "estimator": "OLS"}
