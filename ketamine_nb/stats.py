"""Statistics: does the MD change track the depression change, mainly under ketamine.

The study's model, per region and outcome (Kopelman et al. 2023, as far as
the abstract says): the change in depression score is related to the change
in MD, with a group (ketamine vs saline) x ΔMD interaction. The choices the
paper does not report are made here, once, and can be changed:

* **Model.** ``delta_score ~ delta_md_e6 * C(arm, Treatment('saline')) +
  score_pre`` by ordinary least squares (statsmodels formulas). Adjusting for
  the baseline score is the standard analysis of change scores in a
  randomised trial (ANCOVA, Vickers & Altman 2001). Covariates (age, sex) are
  optional.
* **Units.** ``delta_md_e6`` is ΔMD in 10⁻⁶ mm²/s, so slopes read as score
  points per 10⁻⁶ mm²/s instead of per mm²/s (10⁶ times larger numbers).
* **Direction.** Δ = post − pre for both MD and scores, so a *positive*
  slope means a larger MD decrease goes with a larger improvement.
* **Inference.** The interaction's OLS t-test, and a Freedman-Lane
  permutation test (5000 permutations, seeded) that does not lean on normal
  residuals; Benjamini-Hochberg FDR across every row of the table (Holm as an
  option), since the paper's correction is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .exceptions import InputError

__all__ = [
    "CHANGES",
    "CORRECTIONS",
    "MIN_PER_ARM",
    "OUTCOMES",
    "REMISSION_CUTOFFS",
    "REPORTED_PATTERN",
    "RESPONSE_REDUCTION",
    "STUDY_DIRECTIONS",
    "StatsConfig",
    "adjust_pvalues",
    "clinical_change",
    "clinical_summary",
    "cohort_table",
    "correlation_table",
    "delta_summary",
    "freedman_lane",
    "model_formula",
    "multiple_comparisons",
    "region_stats",
    "reliable_change",
    "stats_input",
    "study_comparison",
    "study_pattern",
]

#: Outcomes: name -> score column stem and scale maximum.
OUTCOMES = {"madrs": {"label": "MADRS", "max": 60}, "qids": {"label": "QIDS-SR", "max": 27}}

#: Response: a reduction of at least 50 % from baseline (the usual definition
#: in antidepressant trials, for both MADRS and QIDS-SR).
RESPONSE_REDUCTION = 0.5

#: Remission: post score at or below these (MADRS <= 10, Hawley et al. 2002;
#: QIDS-SR <= 5, Rush et al. 2006).
REMISSION_CUTOFFS = {"madrs": 10, "qids": 5}

#: The reported direction of the MD-score slope per region and arm (+1: a
#: larger MD decrease goes with a larger improvement; -1: the reverse; 0 or
#: absent: nothing reported). From STUDY.md (the paper's abstract).
STUDY_DIRECTIONS = {
    "BA10_L": {"ketamine": 1},
    "BA10_R": {"ketamine": 1, "saline": 1},
    "amygdala_L": {"ketamine": 1},
    "hippocampus_L": {"ketamine": -1},
    "hippocampus_R": {"ketamine": -1},
}

_ARM_TERM = "C(arm, Treatment('saline'))"

#: How a change is expressed: points (or 10⁻⁶ mm²/s for ΔMD), or percent of
#: the pre value. Used by :class:`StatsConfig` and the command line.
CHANGES = ("absolute", "percent")

#: Multiple-comparison corrections across the rows of the table
#: (statsmodels' names): Benjamini-Hochberg FDR, or Holm's FWER.
CORRECTIONS = ("fdr_bh", "holm")

#: Fewest participants per arm for which the interaction model is fitted
#: (below it the per-arm slope rests on two points).
MIN_PER_ARM = 3


@dataclass(frozen=True)
class StatsConfig:
    """Every analytic choice of the ROI statistics.

    Attributes
    ----------
    outcomes : tuple of str, default=("madrs", "qids")
        Outcomes to model.
    covariates : tuple of str, default=()
        Extra columns of the participants table (e.g. ``("age", "sex")``).
    change : {"absolute", "percent"}, default="absolute"
        Score change as points (post − pre) or percent of baseline.
    md_change : {"absolute", "percent"}, default="absolute"
        ΔMD in 10⁻⁶ mm²/s or as percent of the pre value.
    n_permutations : int, default=5000
        Freedman-Lane permutations (0 skips them).
    n_bootstrap : int, default=2000
        Bootstrap resamples for the correlation CIs (0 skips them).
    correction : {"fdr_bh", "holm"}, default="fdr_bh"
        Multiple-comparison correction across all rows.
    random_state : int, default=0
        Seed of the permutations and the bootstrap (scikit-learn's name).
    """

    outcomes: tuple = ("madrs", "qids")
    covariates: tuple = ()
    change: str = "absolute"
    md_change: str = "absolute"
    n_permutations: int = 5000
    n_bootstrap: int = 2000
    correction: str = "fdr_bh"
    random_state: int = 0

    def __post_init__(self):
        object.__setattr__(self, "outcomes", tuple(self.outcomes))
        object.__setattr__(self, "covariates", tuple(self.covariates))
        bad = [o for o in self.outcomes if o not in OUTCOMES]
        if bad:
            raise InputError(f"unknown outcome(s) {bad}; use {', '.join(OUTCOMES)}")
        for name, allowed in (("change", CHANGES), ("md_change", CHANGES),
                              ("correction", CORRECTIONS)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} {getattr(self, name)!r} is unknown; use "
                                 f"{' or '.join(allowed)}")


def clinical_change(scores: pd.DataFrame, outcomes=("madrs", "qids")) -> pd.DataFrame:
    """Score changes, response and remission, in one place.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per participant with ``participant_id``, ``arm`` and
        ``<outcome>_pre``/``<outcome>_post`` columns (NaN = missing).
    outcomes : sequence of str, default=("madrs", "qids")
        Outcomes to compute.

    Returns
    -------
    pandas.DataFrame
        Long table: ``participant_id``, ``arm``, ``outcome``, ``score_pre``,
        ``score_post``, ``delta_score`` (post − pre; negative = improvement),
        ``pct_change`` (100 × delta / pre), ``responder`` (reduction of at
        least 50 %), ``remitter`` (post at or below the cut-off). Missing
        scores stay missing (``n/a`` is never zero).
    """
    frames = []
    for o in outcomes:
        for col in (f"{o}_pre", f"{o}_post"):
            if col not in scores:
                raise InputError(f"scores lack column {col!r}; the loader names outcome "
                                 "columns <outcome>_pre and <outcome>_post")
        pre = pd.to_numeric(scores[f"{o}_pre"], errors="coerce").astype(float)
        post = pd.to_numeric(scores[f"{o}_post"], errors="coerce").astype(float)
        delta = post - pre
        with np.errstate(divide="ignore", invalid="ignore"):
            pct = 100.0 * delta / pre.where(pre != 0)
        ok = pre.notna() & post.notna()
        frames.append(pd.DataFrame({
            "participant_id": scores["participant_id"].to_numpy(),
            "arm": scores["arm"].to_numpy(), "outcome": o,
            "score_pre": pre.to_numpy(), "score_post": post.to_numpy(),
            "delta_score": delta.to_numpy(), "pct_change": pct.to_numpy(),
            "responder": np.where(ok, -delta >= RESPONSE_REDUCTION * pre, np.nan),
            "remitter": np.where(ok, post <= REMISSION_CUTOFFS[o], np.nan)}))
    return pd.concat(frames, ignore_index=True)


def stats_input(roi_deltas: pd.DataFrame, scores: pd.DataFrame, *,
                config: StatsConfig | None = None, participants: pd.DataFrame | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the exact rows every model sees (long format), and what was dropped.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``participant_id``, ``arm``, ``region``, ``md_pre``, ``md_post``,
        ``delta_md`` (mm²/s), as written by the pipeline.
    scores : pandas.DataFrame
        One row per participant (``madrs_pre`` ...), as from ``load_study``.
    config : StatsConfig, optional
        Outcomes, covariates and change definitions.
    participants : pandas.DataFrame, optional
        Source of covariates not in ``scores``.

    Returns
    -------
    rows : pandas.DataFrame
        ``participant_id``, ``arm``, ``region``, ``outcome``, ``delta_md``
        (mm²/s), ``delta_md_e6`` (the model's ΔMD: 10⁻⁶ mm²/s, or percent with
        ``md_change="percent"``), ``score_pre``, ``score_post``,
        ``delta_score`` (the model's outcome: points, or percent with
        ``change="percent"``) and the covariates. Rows with a missing value
        are left out of that outcome only.
    dropped : pandas.DataFrame
        ``region``, ``outcome``, ``n_dropped`` and the participants left out.
    """
    config = config or StatsConfig()
    change = clinical_change(scores, config.outcomes)
    if config.change == "percent":
        change["delta_score"] = change["pct_change"]
    cov = list(config.covariates)
    extra = scores
    if participants is not None:
        extra = scores.merge(participants.drop(columns=["arm"], errors="ignore"),
                             on="participant_id", how="left", suffixes=("", "_p"))
    missing = [c for c in cov if c not in extra]
    if missing:
        raise InputError(f"covariate(s) {missing} not found; available: "
                         f"{', '.join(c for c in extra.columns if c != 'participant_id')}")
    d = roi_deltas[["participant_id", "arm", "region", "md_pre", "md_post", "delta_md"]].copy()
    d["delta_md_e6"] = (100.0 * d["delta_md"] / d["md_pre"] if config.md_change == "percent"
                        else d["delta_md"] * 1e6)
    rows = d.merge(change.drop(columns=["arm"]), on="participant_id", how="inner")
    if cov:
        rows = rows.merge(extra[["participant_id", *cov]], on="participant_id", how="left")
    need = ["delta_md_e6", "score_pre", "delta_score", "arm", *cov]
    bad = rows[need].isna().any(axis=1)
    dropped = (rows[bad].groupby(["region", "outcome"], sort=False)["participant_id"]
               .agg(n_dropped="size", participants=lambda s: ";".join(sorted(s)))
               .reset_index())
    cols = ["participant_id", "arm", "region", "outcome", "delta_md", "delta_md_e6",
            "score_pre", "score_post", "delta_score", *cov]
    rows = rows.loc[~bad, cols].reset_index(drop=True)
    return rows, dropped


def model_formula(covariates=()) -> str:
    """Return the study's model as a statsmodels formula."""
    f = f"delta_score ~ delta_md_e6 * {_ARM_TERM} + score_pre"
    return f + "".join(f" + {c}" for c in covariates)


def _design_matrices(df: pd.DataFrame, formula: str):
    from patsy import dmatrices

    y, X = dmatrices(formula, df, return_type="dataframe")
    return y.iloc[:, 0].to_numpy(float), X


def freedman_lane(df: pd.DataFrame, formula: str, term: str, *, n_permutations: int = 5000,
                  random_state=None) -> float:
    """Freedman-Lane permutation p-value of one term of an OLS model.

    The reduced model (without ``term``) is fitted; its residuals are
    permuted and added back to its fitted values; the full model is refitted
    on each permuted outcome and the term's t statistic recorded (Freedman &
    Lane 1983; Winkler et al. 2014). All permutations are solved at once.

    Parameters
    ----------
    df : pandas.DataFrame
        The model's rows.
    formula : str
        Full model formula.
    term : str
        Column name of the tested term in the design matrix.
    n_permutations : int, default=5000
        Number of permutations.
    random_state : int, numpy.random.Generator or None, default=None
        Random source (an int seeds a new generator; None means seed 0, so
        that a result is reproducible by default).

    Returns
    -------
    float
        Two-sided p = (1 + #{|t*| >= |t|}) / (1 + n_permutations).
    """
    rng = np.random.default_rng(0 if random_state is None else random_state)
    y, X = _design_matrices(df, formula)
    if term not in X.columns:
        raise InputError(f"term {term!r} is not in the model; terms: {', '.join(X.columns)}")
    Xf = X.to_numpy(float)
    j = list(X.columns).index(term)
    Xr = np.delete(Xf, j, axis=1)
    beta_r, *_ = np.linalg.lstsq(Xr, y, rcond=None)
    fitted = Xr @ beta_r
    resid = y - fitted
    n, p = Xf.shape
    # y* = fitted + P r. The reduced model's fit lies in the full model's
    # column space, so the full residuals of y* are (I - H) P r and, with Q an
    # orthonormal basis of X, RSS* = |r|^2 - |Q' P r|^2: no n x B refit needed.
    R = resid[np.argsort(rng.random((n_permutations, n)), axis=1)]   # B x n, rows P r
    pinv = np.linalg.pinv(Xf)
    Q, _ = np.linalg.qr(Xf)
    bj = R @ pinv[j] + pinv[j] @ fitted
    rss = resid @ resid - ((R @ Q) ** 2).sum(axis=1)
    c = np.linalg.pinv(Xf.T @ Xf)[j, j]
    t_perm = bj / np.sqrt(np.maximum(rss, 0) / (n - p) * c)
    b0 = pinv @ y
    r0 = y - Xf @ b0
    t0 = b0[j] / np.sqrt((r0 @ r0) / (n - p) * c)
    return float((1 + np.count_nonzero(np.abs(t_perm) >= abs(t0) - 1e-12))
                 / (1 + n_permutations))


def _corr_ci(x, y, *, n_bootstrap, rng):
    from scipy import stats

    n = len(x)
    out = {"r": np.nan, "r_ci_low": np.nan, "r_ci_high": np.nan, "r_p": np.nan,
           "rho": np.nan, "rho_p": np.nan, "r_boot_low": np.nan, "r_boot_high": np.nan}
    if n < 4 or np.std(x) == 0 or np.std(y) == 0:
        return out
    pr = stats.pearsonr(x, y)
    rho, rho_p = stats.spearmanr(x, y)
    ci = pr.confidence_interval(confidence_level=0.95)  # Fisher z, as scipy documents
    out.update(r=pr.statistic, r_p=pr.pvalue, rho=rho, rho_p=rho_p, r_ci_low=ci.low,
               r_ci_high=ci.high)
    if n_bootstrap:
        idx = rng.integers(0, n, (n_bootstrap, n))
        xs, ys = x[idx], y[idx]
        xs = xs - xs.mean(1, keepdims=True)
        ys = ys - ys.mean(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            rb = (xs * ys).sum(1) / np.sqrt((xs ** 2).sum(1) * (ys ** 2).sum(1))
        rb = rb[np.isfinite(rb)]
        out.update(r_boot_low=np.percentile(rb, 2.5), r_boot_high=np.percentile(rb, 97.5))
    return out


def correlation_table(rows: pd.DataFrame, *, n_bootstrap: int = 2000, random_state=0,
                      x: str = "delta_md_e6", y: str = "delta_score") -> pd.DataFrame:
    """Per region, outcome and arm: Pearson r (Fisher and bootstrap 95 % CIs), Spearman rho.

    Parameters
    ----------
    rows : pandas.DataFrame
        Output of :func:`stats_input`.
    n_bootstrap : int, default=2000
        Bootstrap resamples (percentile CI); 0 skips.
    random_state : int or numpy.random.Generator, default=0
        Bootstrap seed.
    x, y : str
        Columns correlated.

    Returns
    -------
    pandas.DataFrame
        ``region``, ``outcome``, ``arm``, ``n``, ``r``, ``r_ci_low``,
        ``r_ci_high`` (Fisher z), ``r_boot_low``, ``r_boot_high``, ``r_p``,
        ``rho``, ``rho_p``.
    """
    rng = np.random.default_rng(random_state)
    out = []
    for (region, outcome, arm), g in rows.groupby(["region", "outcome", "arm"], sort=False):
        res = _corr_ci(g[x].to_numpy(float), g[y].to_numpy(float), n_bootstrap=n_bootstrap,
                       rng=rng)
        out.append({"region": region, "outcome": outcome, "arm": arm, "n": len(g), **res})
    return pd.DataFrame(out)


def adjust_pvalues(p, method: str = "fdr_bh"):
    """Benjamini-Hochberg (``fdr_bh``) or Holm adjusted p-values; NaN stays NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method=method)[1]
    return out


def _matches(region, slopes):
    exp = STUDY_DIRECTIONS.get(region, {})
    if not exp:
        return "not reported", np.nan
    text = "; ".join(f"{arm} {'+' if s > 0 else '-'}" for arm, s in exp.items())
    ok = all(np.sign(slopes[arm]) == s for arm, s in exp.items())
    return text, bool(ok)


def region_stats(rows: pd.DataFrame, *, config: StatsConfig | None = None) -> pd.DataFrame:
    """Fit the study's model per region and outcome; one row each.

    Parameters
    ----------
    rows : pandas.DataFrame
        Output of :func:`stats_input`.
    config : StatsConfig, optional
        Permutations, bootstrap, correction, covariates, seed.

    Returns
    -------
    pandas.DataFrame
        ``region``, ``outcome``, ``formula``, ``n_ketamine``, ``n_saline``,
        per arm ``r_*`` with Fisher (``_ci_low``/``_ci_high``) and bootstrap
        (``_boot_low``/``_boot_high``) CIs and ``rho_*`` (Spearman),
        ``slope_*``/``se_slope_*``/``p_slope_*`` (simple slopes, points per
        10⁻⁶ mm²/s), ``beta_interaction``, ``se_interaction``,
        ``t_interaction``, ``p_interaction``, ``p_perm_interaction``,
        ``q_fdr`` (or ``q_holm``), ``study_direction``, ``matches_study``.
    """
    import statsmodels.formula.api as smf
    from scipy.stats import t as t_dist

    config = config or StatsConfig()
    formula = model_formula(config.covariates)
    inter = f"delta_md_e6:{_ARM_TERM}[T.ketamine]"
    corr = correlation_table(rows, n_bootstrap=config.n_bootstrap,
                             random_state=config.random_state)
    corr_by = {(r.region, r.outcome, r.arm): r._asdict() for r in corr.itertuples(index=False)}
    rng = np.random.default_rng(config.random_state)
    out = []
    for (region, outcome), g in rows.groupby(["region", "outcome"], sort=False):
        rec = {"region": region, "outcome": outcome, "formula": formula,
               "n_ketamine": int((g["arm"] == "ketamine").sum()),
               "n_saline": int((g["arm"] == "saline").sum())}
        for arm in ("ketamine", "saline"):
            c = corr_by.get((region, outcome, arm), {})
            names = {"r": f"r_{arm}", "r_ci_low": f"r_{arm}_ci_low",
                     "r_ci_high": f"r_{arm}_ci_high", "r_boot_low": f"r_{arm}_boot_low",
                     "r_boot_high": f"r_{arm}_boot_high", "r_p": f"p_r_{arm}",
                     "rho": f"rho_{arm}", "rho_p": f"p_rho_{arm}"}
            for k, name in names.items():
                rec[name] = c.get(k, np.nan)
        if min(rec["n_ketamine"], rec["n_saline"]) < MIN_PER_ARM:
            rec["study_direction"], _ = _matches(region, {"ketamine": np.nan,
                                                          "saline": np.nan})
            rec["matches_study"] = np.nan
            out.append(rec)
            continue
        fit = smf.ols(formula, data=g).fit()
        cov = fit.cov_params()
        b = fit.params
        rec["slope_saline"] = b["delta_md_e6"]
        rec["se_slope_saline"] = np.sqrt(cov.loc["delta_md_e6", "delta_md_e6"])
        rec["slope_ketamine"] = b["delta_md_e6"] + b[inter]
        rec["se_slope_ketamine"] = np.sqrt(cov.loc["delta_md_e6", "delta_md_e6"]
                                           + cov.loc[inter, inter]
                                           + 2 * cov.loc["delta_md_e6", inter])
        for arm in ("ketamine", "saline"):
            t = rec[f"slope_{arm}"] / rec[f"se_slope_{arm}"]
            rec[f"p_slope_{arm}"] = 2 * t_dist.sf(abs(t), fit.df_resid)
        rec.update(beta_interaction=b[inter], se_interaction=fit.bse[inter],
                   t_interaction=fit.tvalues[inter], p_interaction=fit.pvalues[inter],
                   df_resid=fit.df_resid, r2=fit.rsquared)
        rec["p_perm_interaction"] = (
            freedman_lane(g, formula, inter, n_permutations=config.n_permutations,
                          random_state=rng)
            if config.n_permutations else np.nan)
        text, ok = _matches(region, {"ketamine": rec["slope_ketamine"],
                                     "saline": rec["slope_saline"]})
        rec["study_direction"], rec["matches_study"] = text, ok
        out.append(rec)
    table = pd.DataFrame(out)
    # Every column exists even where no model could be fitted (then n/a).
    for col in ("slope_ketamine", "se_slope_ketamine", "p_slope_ketamine", "slope_saline",
                "se_slope_saline", "p_slope_saline", "beta_interaction", "se_interaction",
                "t_interaction", "p_interaction", "df_resid", "r2", "p_perm_interaction"):
        if col not in table:
            table[col] = np.nan
    qcol = "q_fdr" if config.correction == "fdr_bh" else "q_holm"
    table[qcol] = adjust_pvalues(table.get("p_interaction", np.nan), config.correction)
    if "study_direction" not in table:
        table["study_direction"], table["matches_study"] = "not reported", np.nan
    return table


def reliable_change(roi_deltas: pd.DataFrame, *, reference_arm: str = "saline",
                    z: float = 1.96) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reliability of ΔMD: the reference arm's spread as measurement error.

    Saline is not expected to change MD, so the SD of ΔMD in the saline arm
    estimates the error of a difference score in each region (it also holds
    any true saline effect, so it is an upper bound on pure measurement
    error). The reliable-change index of a participant is
    ``RCI = ΔMD / SD_saline(ΔMD)`` (Jacobson & Truax 1991, with the error SD
    of the difference estimated directly); ``|RCI| > 1.96`` is a change
    larger than measurement error at 95 %.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``participant_id``, ``arm``, ``region``, ``md_pre``, ``delta_md`` (mm²/s).
    reference_arm : str, default="saline"
        Arm whose ΔMD spread is the error.
    z : float, default=1.96
        Threshold of a reliable change.

    Returns
    -------
    per_participant : pandas.DataFrame
        ``participant_id``, ``arm``, ``region``, ``delta_md``, ``rci``,
        ``reliable`` (bool).
    per_region : pandas.DataFrame
        ``region``, ``sd_delta_reference`` (mm²/s), ``sem_session`` (the
        per-session error SD, sd / sqrt(2)), ``cv_percent`` (per-session
        error as percent of the mean pre MD) and the share of reliable
        changes per arm.
    """
    d = roi_deltas[["participant_id", "arm", "region", "md_pre", "delta_md"]].copy()
    ref = d[d["arm"] == reference_arm].groupby("region", sort=False)
    sd = ref["delta_md"].std(ddof=1)
    if sd.isna().all():
        raise InputError(f"no {reference_arm} participants with ΔMD; the reference arm "
                         "needs at least two")
    d["rci"] = d["delta_md"] / d["region"].map(sd)
    d["reliable"] = d["rci"].abs() > z
    summary = pd.DataFrame({"sd_delta_reference": sd, "sem_session": sd / np.sqrt(2)})
    summary["cv_percent"] = 100 * summary["sem_session"] / d.groupby("region")["md_pre"].mean()
    share = d.pivot_table(index="region", columns="arm", values="reliable", aggfunc="mean")
    for arm in share.columns:
        summary[f"reliable_share_{arm}"] = share[arm]
    per_region = summary.reset_index()
    return d.drop(columns=["md_pre"]), per_region


# ---------------------------------------------------------------------------
# Summaries for reading the results (moved from ketamine_nb.teaching)

#: What the paper's abstract reports per region (Kopelman et al. 2023).
#: The signs are :data:`ketamine_nb.stats.STUDY_DIRECTIONS`;
#: this is the same pattern in words, with the reported p-values.
REPORTED_PATTERN = {
    "BA10_L": "MD decrease went with improvement, mainly in the ketamine arm "
              "(interaction p = 0.016-0.082)",
    "BA10_R": "MD decrease went with improvement in both arms (p = 0.007)",
    "amygdala_L": "MD decrease went with improvement, mainly in the ketamine arm "
                  "(interaction p = 0.016-0.082)",
    "amygdala_R": "not reported",
    "hippocampus_L": "MD increase went with improvement in the ketamine arm, MADRS only "
                     "(p = 0.032-0.06)",
    "hippocampus_R": "MD increase went with improvement in the ketamine arm, MADRS only "
                     "(p = 0.032-0.06)",
    "vACC": "nothing reported",
}


def study_pattern() -> pd.DataFrame:
    """Return the pattern the paper reports, one row per study region.

    Returns
    -------
    pandas.DataFrame
        ``region``, ``ketamine`` and ``saline`` (+1: a larger MD *decrease*
        went with a larger improvement; −1: an MD *increase* did; 0: nothing
        reported for that arm) and ``reported`` (the abstract in words, with
        its p-values). From :data:`ketamine_nb.stats.STUDY_DIRECTIONS` and
        :data:`REPORTED_PATTERN`.

    Notes
    -----
    Δ = post − pre for MD and for the scores, and a lower score is better,
    so +1 is a positive slope of Δscore on ΔMD.
    """
    from .regions import STUDY_REGIONS

    rows = []
    for region in STUDY_REGIONS:
        d = STUDY_DIRECTIONS.get(region, {})
        rows.append({"region": region, "ketamine": int(d.get("ketamine", 0)),
                     "saline": int(d.get("saline", 0)),
                     "reported": REPORTED_PATTERN.get(region, "not reported")})
    return pd.DataFrame(rows)





def study_comparison(stats_roi: pd.DataFrame, *, outcome: str | None = None,
                     alpha: float = 0.05) -> pd.DataFrame:
    """Set the paper's reported pattern beside this analysis, region by region.

    Parameters
    ----------
    stats_roi : pandas.DataFrame
        ``Results.stats_roi`` (from :func:`ketamine_nb.stats.region_stats`).
    outcome : str, optional
        Keep one outcome (``"madrs"`` or ``"qids"``); default: all rows.
    alpha : float, default=0.05
        Level for ``significant`` (the corrected q of the interaction).

    Returns
    -------
    pandas.DataFrame
        ``region``, ``outcome``, ``reported`` (the abstract in words),
        ``study_direction`` (the reported signs), ``slope_ketamine``,
        ``slope_saline`` (Δscore points per 10⁻⁶ mm²/s of ΔMD),
        ``p_slope_ketamine``, ``p_slope_saline``, ``beta_interaction``,
        ``p_interaction``, ``p_perm_interaction``, ``q`` (FDR or Holm),
        ``matches_study`` (every reported sign has the same sign here),
        ``verdict`` (``"same direction"``, ``"opposite direction"``,
        ``"not reported"`` or ``"not estimated"``) and ``significant``
        (``q < alpha``).

    Notes
    -----
    A matching *direction* is not a replication: the interaction may be far
    from significant. For right BA10 the paper reports the relation in both
    arms, so no arm difference (interaction) is expected there; read the two
    simple slopes and their p-values instead.
    """
    t = stats_roi if outcome is None else stats_roi[stats_roi["outcome"] == outcome]
    if t.empty:
        raise InputError(f"no rows for outcome {outcome!r}")
    qcol = next((c for c in ("q_fdr", "q_holm") if c in t), None)
    out = pd.DataFrame({
        "region": t["region"].to_numpy(), "outcome": t["outcome"].to_numpy(),
        "reported": [REPORTED_PATTERN.get(r, "not reported") for r in t["region"]]})
    for col in ("study_direction", "slope_ketamine", "slope_saline", "p_slope_ketamine",
                "p_slope_saline", "beta_interaction", "p_interaction", "p_perm_interaction"):
        out[col] = t[col].to_numpy() if col in t else np.nan
    out["q"] = t[qcol].to_numpy(float) if qcol else np.nan
    verdicts, matches = [], []
    for region, sk, ss in zip(out["region"], out["slope_ketamine"], out["slope_saline"],
                              strict=True):
        expected = STUDY_DIRECTIONS.get(region, {})
        slopes = {"ketamine": sk, "saline": ss}
        if not expected:
            verdicts.append("not reported")
            matches.append(np.nan)
        elif not all(np.isfinite(slopes[a]) for a in expected):
            verdicts.append("not estimated")
            matches.append(np.nan)
        else:
            ok = all(np.sign(slopes[a]) == s for a, s in expected.items())
            verdicts.append("same direction" if ok else "opposite direction")
            matches.append(ok)
    out["matches_study"] = pd.array(matches, dtype="boolean")
    out["verdict"] = verdicts
    out["significant"] = out["q"].to_numpy(float) < alpha
    return out


def cohort_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Who is in the cohort, per arm (a "table 1").

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per participant: ``arm``, optionally ``age``, ``sex`` and
        ``<outcome>_pre``/``_post`` (``Results.scores``).

    Returns
    -------
    pandas.DataFrame
        One row per arm: ``n``; ``age_mean``, ``age_sd`` and
        ``female_percent`` when the columns exist; the mean of every score
        column present (``madrs_pre``, ``madrs_post``, ``qids_pre``...).
    """
    if "arm" not in scores:
        raise InputError("the scores table needs an 'arm' column")
    g = scores.groupby("arm", sort=True)
    out = pd.DataFrame({"n": g.size()})
    if "age" in scores:
        out["age_mean"] = g["age"].mean()
        out["age_sd"] = g["age"].std(ddof=1)
    if "sex" in scores:
        out["female_percent"] = g["sex"].apply(lambda s: 100 * (s == "F").mean())
    for o in OUTCOMES:
        for ses in ("pre", "post"):
            col = f"{o}_{ses}"
            if col in scores:
                out[f"{col}_mean"] = g[col].mean()
    return out.reset_index()


def clinical_summary(scores: pd.DataFrame, *, outcomes=("madrs", "qids")) -> pd.DataFrame:
    """Score change, response and remission per arm and outcome.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per participant (``Results.scores``).
    outcomes : sequence of str, default=("madrs", "qids")
        Outcomes.

    Returns
    -------
    pandas.DataFrame
        ``outcome``, ``arm``, ``n`` (with both scores), ``pre_mean``,
        ``post_mean``, ``delta_mean`` and ``delta_sd`` (post − pre, points;
        negative = better), ``responders_percent`` (a reduction of at least
        50 %) and ``remitters_percent`` (post at or below the cut-off), from
        :func:`ketamine_nb.stats.clinical_change`.
    """
    c = clinical_change(scores, outcomes).dropna(subset=["delta_score"])
    g = c.groupby(["outcome", "arm"], sort=False)
    out = pd.DataFrame({"n": g.size(), "pre_mean": g["score_pre"].mean(),
                        "post_mean": g["score_post"].mean(),
                        "delta_mean": g["delta_score"].mean(),
                        "delta_sd": g["delta_score"].std(ddof=1),
                        "responders_percent": 100 * g["responder"].mean(),
                        "remitters_percent": 100 * g["remitter"].mean()})
    return out.reset_index()


def delta_summary(roi_deltas: pd.DataFrame) -> pd.DataFrame:
    """Mean ΔMD per region and arm.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``Results.roi_deltas`` (``region``, ``arm``, ``delta_md`` in mm²/s,
        ``pct_delta_md``).

    Returns
    -------
    pandas.DataFrame
        ``region``, ``arm``, ``n``, ``delta_md_mean``, ``delta_md_sd``
        (mm²/s), ``pct_delta_md_mean`` (percent of the pre value) and
        ``share_decreased`` (fraction of participants whose MD went down).
    """
    d = roi_deltas.dropna(subset=["delta_md"])
    g = d.groupby(["region", "arm"], sort=False)
    out = pd.DataFrame({"n": g.size(), "delta_md_mean": g["delta_md"].mean(),
                        "delta_md_sd": g["delta_md"].std(ddof=1),
                        "pct_delta_md_mean": g["pct_delta_md"].mean(),
                        "share_decreased": g["delta_md"].apply(lambda s: (s < 0).mean())})
    return out.reset_index()


def multiple_comparisons(stats_roi: pd.DataFrame, *, column: str = "p_interaction",
                         alpha: float = 0.05) -> pd.DataFrame:
    """How many tests pass at ``alpha`` with no correction, Bonferroni, Holm and FDR.

    Parameters
    ----------
    stats_roi : pandas.DataFrame
        A table with one p-value per test (``Results.stats_roi``).
    column : str, default="p_interaction"
        The p-value column (e.g. ``"p_perm_interaction"``).
    alpha : float, default=0.05
        Level; a test passes when its adjusted p is below it.

    Returns
    -------
    pandas.DataFrame
        One row per correction (``none``, ``bonferroni``, ``holm``,
        ``fdr_bh``): ``n_tests`` (finite p-values), ``n_significant``,
        ``controls`` (what the correction keeps at ``alpha``) and ``tests``
        (the region/outcome of each passing test, when the table has them).
    """
    from statsmodels.stats.multitest import multipletests

    if column not in stats_roi:
        raise InputError(f"no column {column!r} in the table")
    p = stats_roi[column].to_numpy(float)
    ok = np.isfinite(p)
    names = (stats_roi["region"].astype(str) + "/" + stats_roi["outcome"].astype(str)
             ).to_numpy() if {"region", "outcome"} <= set(stats_roi) \
        else np.arange(len(p)).astype(str)
    controls = {"none": "nothing: each test alone at alpha",
                "bonferroni": "family-wise error (any false positive)",
                "holm": "family-wise error, uniformly more powerful than Bonferroni",
                "fdr_bh": "false discovery rate (expected share of false positives)"}
    rows = []
    for method, what in controls.items():
        adj = np.full(p.shape, np.nan)
        if ok.any():
            adj[ok] = p[ok] if method == "none" else multipletests(p[ok], method=method)[1]
        sig = ok & (adj < alpha)
        rows.append({"correction": method, "n_tests": int(ok.sum()),
                     "n_significant": int(sig.sum()), "controls": what,
                     "tests": ", ".join(names[sig])})
    return pd.DataFrame(rows)
