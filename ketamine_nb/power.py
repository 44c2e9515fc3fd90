"""Power of the study's interaction test on simulated cohorts (tables only, no images).

Each Monte-Carlo cohort is :func:`ketamine_nb.simulate.simulate_tables` with
its own seed: the design, the scores and the regional ΔMD a perfect
measurement with the pipeline's default regions would see, plus a
measurement error on each session's regional MD. On each cohort the study's
model ``Δscore ~ ΔMD × arm + score_pre`` is fitted per region and outcome
(the same model and parametric interaction test as
:func:`ketamine_nb.stats.region_stats`, Aspin-Welch v by default, without
its permutations and bootstrap, so that hundreds of cohorts take minutes).
The share of cohorts with an interaction p below ``alpha`` is the power
where an interaction was planted, and the false positive rate where none
was; its Monte-Carlo uncertainty is a Wilson interval (and the exact
Clopper-Pearson interval beside it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .exceptions import InputError

__all__ = ["power_analysis", "interaction_pvalues", "binomial_interval"]


def binomial_interval(k, n, *, confidence: float = 0.95, method: str = "wilson"):
    """Confidence interval of a proportion ``k / n``.

    Parameters
    ----------
    k, n : int or array-like of int
        Successes and trials.
    confidence : float, default=0.95
        Coverage.
    method : {"wilson", "clopper-pearson"}, default="wilson"
        Wilson's score interval, or the exact (conservative) Clopper-Pearson
        (statsmodels' ``proportion_confint``).

    Returns
    -------
    low, high : numpy.ndarray
        Bounds (fractions, 0-1).
    """
    from statsmodels.stats.proportion import proportion_confint

    names = {"wilson": "wilson", "clopper-pearson": "beta"}   # statsmodels' names
    if method in names:
        k, n = np.asarray(k), np.asarray(n)
        low, high = proportion_confint(k, n, alpha=1 - confidence, method=names[method])
        # statsmodels' Wilson bound at k = 0 is 5.6e-17, not 0 (rounding): an
        # interval must contain its own estimate, so clip to [0, k/n] and [k/n, 1]
        rate = k / n
        low = np.clip(np.asarray(low, float), 0.0, rate)
        high = np.clip(np.asarray(high, float), rate, 1.0)
        return low, high
    raise InputError(f"binomial interval method {method!r} is unknown; choose 'wilson' or "
                     "'clopper-pearson'")


def interaction_pvalues(rows: pd.DataFrame, *, statistic: str = "aspin_welch") -> pd.DataFrame:
    """Interaction test and per-arm correlations of the study's model, per region and outcome.

    Parameters
    ----------
    rows : pandas.DataFrame
        Output of :func:`ketamine_nb.stats.stats_input` (``delta_md_e6``,
        ``delta_score``, ``score_pre``, ``arm``, ``region``, ``outcome``).
    statistic : {"aspin_welch", "t"}, default="aspin_welch"
        The interaction's parametric test: Aspin-Welch v with the arms as
        variance groups (the package's default, robust to the arms' unequal
        spread) or the equal-variance OLS t.

    Returns
    -------
    pandas.DataFrame
        ``region``, ``outcome``, ``beta_interaction``, ``p_interaction`` (of
        ``statistic``), ``r_ketamine``, ``r_saline``: the values
        :func:`ketamine_nb.stats.region_stats` reports for the model without
        covariates (``p_welch_interaction`` or ``p_interaction``).
    """
    from .stats import STATISTICS, _contrast_test

    if statistic not in STATISTICS:
        raise InputError(f"statistic {statistic!r} is unknown; choose one of "
                         f"{', '.join(STATISTICS)}")
    out = []
    for (region, outcome), g in rows.groupby(["region", "outcome"], sort=False):
        ket = (g["arm"].to_numpy() == "ketamine").astype(float)
        x = g["delta_md_e6"].to_numpy(float)
        y = g["delta_score"].to_numpy(float)
        X = np.column_stack([np.ones_like(x), ket, x, x * ket, g["score_pre"].to_numpy(float)])
        est, _, _, p = _contrast_test(X, y, np.eye(5)[3], ket.astype(int), statistic)
        rec = {"region": region, "outcome": outcome, "beta_interaction": est,
               "p_interaction": p}
        for arm, m in (("ketamine", ket == 1), ("saline", ket == 0)):
            rec[f"r_{arm}"] = np.corrcoef(x[m], y[m])[0, 1]
        out.append(rec)
    return pd.DataFrame(out)


def power_analysis(preset: str = "paper", *, n_cohorts: int = 200, random_state=0,
                   params=None, measurement_sd: float = 0.005, alpha: float = 0.05,
                   confidence: float = 0.95, outcomes=("madrs", "qids"),
                   statistic: str = "aspin_welch") -> pd.DataFrame:
    """Power (or false positive rate) of the interaction test on simulated cohorts.

    Parameters
    ----------
    preset : {"teaching", "paper", "null"}, default="paper"
        Planted effect (:meth:`ketamine_nb.simulate.SimulationParams.preset`).
    n_cohorts : int, default=200
        Monte-Carlo cohorts. The interval half-width is about
        ``1 / sqrt(n_cohorts)`` at 50 % (7 points at 200).
    random_state : int, numpy.random.Generator or None, default=0
        Seed of the cohorts' seeds and of the measurement error.
    params : SimulationParams, optional
        Full parameters instead of a preset (e.g. another ``n_subjects``).
    measurement_sd : float, default=0.005
        Relative error (SD) added to each session's regional MD, the size the
        pipeline shows on the idealised simulated cohort (0.5 %; about 0.6 %
        on the realistic default cohort, 12 participants measured); ``0``
        gives the power of a perfect measurement.
    alpha : float, default=0.05
        Significance level of each (uncorrected) interaction test.
    confidence : float, default=0.95
        Coverage of the Monte-Carlo intervals.
    outcomes : tuple of str, default=("madrs", "qids")
        Outcomes to test.
    statistic : {"aspin_welch", "t"}, default="aspin_welch"
        Parametric interaction test (:func:`interaction_pvalues`). The arms'
        score changes differ in spread (SD 10 vs 8 points) and size (65 vs
        33), so the equal-variance t is conservative under the null.

    Returns
    -------
    pandas.DataFrame
        One row per region and outcome: ``region``, ``outcome``,
        ``planted_interaction`` (planted ketamine minus saline slope,
        relative MD change per MADRS point), ``quantity`` (what ``rate``
        is: ``"power"`` where the planted slopes differ between the arms,
        ``"false_positive_rate"`` where no relation was planted in either
        arm, ``"rejection_rate"`` where the same relation was planted in
        both. The simulator plants ΔMD = b Δscore + noise; the model's slope
        of Δscore on ΔMD is then attenuated by the noise, less in the arm
        whose score changes spread more (SD 10 vs 8 points), so even equal
        planted slopes give the arms different model slopes: the
        interaction's null is not exactly true, and the rate is neither a
        power nor a false positive rate (8.5 % for right BA10 under
        ``paper``, 400 cohorts)), ``rate`` (share of cohorts with
        ``p_interaction < alpha``), ``n_significant``, ``n_cohorts``,
        ``ci_low``/``ci_high`` (Wilson), ``cp_low``/``cp_high``
        (Clopper-Pearson), ``median_p_interaction``, ``median_r_ketamine``,
        ``median_r_saline``, ``n_subjects``, ``preset``, ``statistic``.
    """
    from .simulate import SimulationParams, simulate_tables
    from .stats import StatsConfig, stats_input

    if n_cohorts < 1:
        raise InputError("power_analysis: n_cohorts must be at least 1")
    if not 0 < alpha < 1:
        raise InputError("power_analysis: alpha must lie in (0, 1)")
    label = preset if params is None else "custom"
    if params is None:
        params = SimulationParams.preset(preset)
    rng = np.random.default_rng(random_state)
    seeds = rng.integers(0, 2**31 - 1, n_cohorts)
    config = StatsConfig(outcomes=tuple(outcomes), n_permutations=0, n_bootstrap=0)
    frames = []
    for c, seed in enumerate(seeds):
        d = simulate_tables(params, seed=int(seed))
        truth = d["ground_truth"]
        md_pre = truth["md_pre"].to_numpy() * (1 + rng.normal(0, measurement_sd, len(truth)))
        md_post = truth["md_post"].to_numpy() * (1 + rng.normal(0, measurement_sd, len(truth)))
        meas = truth[["participant_id", "arm", "region"]].assign(
            md_pre=md_pre, md_post=md_post, delta_md=md_post - md_pre)
        rows, _ = stats_input(meas, d["scores"], config=config)
        frames.append(interaction_pvalues(rows, statistic=statistic).assign(cohort=c))
    res = pd.concat(frames, ignore_index=True)
    out = []
    for (region, outcome), g in res.groupby(["region", "outcome"], sort=False):
        k = int((g["p_interaction"] < alpha).sum())
        n = len(g)
        lo, hi = binomial_interval(k, n, confidence=confidence)
        cl, ch = binomial_interval(k, n, confidence=confidence, method="clopper-pearson")
        planted = params.slope(region, "ketamine") - params.slope(region, "saline")
        kind = ("power" if planted != 0 else "rejection_rate"
                if params.slope(region, "ketamine") != 0 else "false_positive_rate")
        out.append({"region": region, "outcome": outcome, "planted_interaction": planted,
                    "quantity": kind,
                    "rate": k / n, "n_significant": k, "n_cohorts": n,
                    "ci_low": float(lo), "ci_high": float(hi),
                    "cp_low": float(cl), "cp_high": float(ch),
                    "median_p_interaction": float(g["p_interaction"].median()),
                    "median_r_ketamine": float(g["r_ketamine"].median()),
                    "median_r_saline": float(g["r_saline"].median()),
                    "n_subjects": params.n_subjects, "preset": label,
                    "statistic": statistic})
    return pd.DataFrame(out)
