"""The cohort's tables: ΔMD by arm, ΔMD against Δscore, the forest plot, the truth.

Statistics are taken from the tables of :mod:`ketamine_nb.stats`, never
recomputed here; the only numbers computed are what a picture needs (a
least-squares line to draw, axis limits). ΔMD in 10⁻⁶ mm²/s everywhere
(:data:`DELTA_MD_SCALE`), the unit of the model's slopes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..exceptions import InputError
from ._base import (
    _Z95,
    ARM_COLORS,
    DELTA_MD_LABEL,
    DELTA_MD_SCALE,
    FigureHandle,
    _arm_color,
    _arm_order,
    _axes,
    _fmt_p,
)

__all__ = [
    "ScatterFigure",
    "plot_delta_by_arm",
    "plot_forest",
    "plot_scatter",
    "plot_score_change",
    "plot_truth_vs_measured",
]


def _outcome_label(outcome) -> str:
    from ..stats import OUTCOMES

    return OUTCOMES.get(outcome, {}).get("label", str(outcome))


def padded_limits(values, *, pad: float = 0.08, include=(0.0,)):
    """Axis limits around finite ``values`` (and ``include``), with a margin."""
    v = np.concatenate([np.asarray(values, float).ravel(), np.asarray(include, float)])
    v = v[np.isfinite(v)]
    if v.size == 0:
        return -1.0, 1.0
    lo, hi = v.min(), v.max()
    span = hi - lo or max(abs(hi), 1.0)
    return lo - pad * span, hi + pad * span


def line_through_means(x, y, slope):
    """End points of a line of ``slope`` through the mean of (x, y), over x's range."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0 or not np.isfinite(slope):
        return np.array([]), np.array([])
    xs = np.array([x.min(), x.max()])
    return xs, y.mean() + slope * (xs - x.mean())


class ScatterFigure(FigureHandle):
    """ΔMD against Δscore in one region, per arm: points, a line and a band per arm.

    Built once by :func:`plot_scatter` and by
    :func:`ketamine_nb.widgets.outcome_explorer`, then updated in place.

    Parameters
    ----------
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; default: a new pyplot figure (or, with
        ``figure``, axes added to it).
    arms : sequence of str, default=("ketamine", "saline")
        The arms that get artists (their colours: :data:`ARM_COLORS`).
    figure : matplotlib.figure.Figure, optional
        A figure to add the axes to (an explorer's, made outside pyplot).

    Attributes
    ----------
    artists : dict
        ``points:<arm>`` (PathCollection), ``fit:<arm>`` (Line2D),
        ``band:<arm>`` (FillBetweenPolyCollection), ``title``, ``ylabel``.
    """

    def __init__(self, *, ax=None, arms=tuple(ARM_COLORS), figure=None):
        if ax is None and figure is not None:
            ax = figure.add_axes((0.11, 0.12, 0.85, 0.76))
            fig = figure
        else:
            fig, ax = _axes(ax, (5.8, 4.6))
        super().__init__(fig)
        self.ax, self.arms = ax, list(arms)
        ax.axhline(0, color="0.6", lw=0.7, ls=":", gid="zero")
        ax.axvline(0, color="0.6", lw=0.7, ls=":", gid="zero")
        for arm in self.arms:
            colour = _arm_color(arm)
            self.artists[f"band:{arm}"] = ax.fill_between([], [], [], color=colour,
                                                          alpha=0.15, lw=0)
            self.artists[f"points:{arm}"] = ax.scatter(
                np.empty(0), np.empty(0), s=20, color=colour, alpha=0.75, edgecolor="white",
                linewidth=0.4, gid=f"points:{arm}")
            self.artists[f"fit:{arm}"] = ax.plot([], [], color=colour, lw=2,
                                                 gid=f"fit:{arm}")[0]
        ax.set_xlabel(DELTA_MD_LABEL)
        self.artists["ylabel"] = ax.yaxis.label
        self.artists["title"] = ax.set_title("", fontsize=10)

    def update(self, rows: pd.DataFrame, *, region: str, outcome: str, stats_row=None,
               line: str = "ols", arms=None, correlation: str = "pearson", ylabel=None):
        """Show the rows of one region and outcome.

        Parameters
        ----------
        rows : pandas.DataFrame
            Rows of ``stats_input`` for this region and outcome: ``arm``,
            ``delta_md`` (mm²/s), ``delta_score``.
        region, outcome : str
            Named in the title and the y label.
        stats_row : pandas.Series, optional
            The model's row (``region_stats``): each arm's correlation goes
            into the legend, the interaction's p (and q when present) into
            the title, and with ``line="model"`` the simple slopes are drawn.
        line : {"ols", "model"}, default="ols"
            ``"ols"``: each arm's least-squares line with its 95 % band
            (drawn here, not adjusted for the baseline score); ``"model"``:
            the model's simple slope (``slope_<arm>``, score points per
            10⁻⁶ mm²/s) through the arm's means.
        arms : sequence of str, optional
            Arms shown (default: all).
        correlation : {"pearson", "spearman"}, default="pearson"
            Correlation named in the legend.
        ylabel : str, optional
            Default ``"Δ<outcome> = post − pre (points; < 0 = better)"``.

        Returns
        -------
        ScatterFigure
            ``self``.
        """
        shown = self.arms if arms is None else [a for a in self.arms if a in arms]
        xs_all, ys_all, handles = [], [], []
        for arm in self.arms:
            g = rows[rows["arm"] == arm] if arm in shown else rows.iloc[:0]
            x = g["delta_md"].to_numpy(float) * DELTA_MD_SCALE
            y = g["delta_score"].to_numpy(float)
            self._points(arm, x, y, stats_row, correlation, shown=arm in shown)
            self._line(arm, x, y, stats_row, line)
            if arm in shown:
                xs_all.append(x)
                ys_all.append(y)
                handles.append(self.artists[f"points:{arm}"])
        self.ax.set_xlim(*padded_limits(np.concatenate(xs_all) if xs_all else []))
        self.ax.set_ylim(*padded_limits(np.concatenate(ys_all) if ys_all else []))
        name = _outcome_label(outcome)
        self.artists["ylabel"].set_text(ylabel or f"Δ{name} = post − pre (points; < 0 = better)")
        title = f"{region}: Δ{name} vs ΔMD"
        # The p the q was computed from (the permutation p unless there were
        # no permutations), so that p and q in the title belong together.
        pcol = _p_column(stats_row) if stats_row is not None else None
        if pcol is not None:
            kind = " (permutation)" if pcol == "p_perm_interaction" else ""
            title += f"\narm × ΔMD interaction p{kind} = {_fmt_p(stats_row[pcol])}"
            q = stats_row.get("q_fdr", stats_row.get("q_holm"))
            if q is not None:
                title += f", q = {_fmt_p(q)}"
        self.artists["title"].set_text(title)
        legend_title = None if stats_row is None else (
            "Pearson r [95 % CI]" if correlation == "pearson" else "Spearman ρ")
        self.ax.legend(handles=handles, fontsize=8, loc="best", title=legend_title,
                       title_fontsize=8)
        return self

    def _points(self, arm, x, y, row, correlation, *, shown):
        pts = self.artists[f"points:{arm}"]
        pts.set_offsets(np.column_stack([x, y]) if len(x) else np.empty((0, 2)))
        label = f"{arm} (n = {len(x)})"
        if shown and row is not None and correlation == "pearson" and np.isfinite(
                row.get(f"r_{arm}", np.nan)):
            label += (f", r = {row[f'r_{arm}']:.2f} [{row[f'r_{arm}_ci_low']:.2f}, "
                      f"{row[f'r_{arm}_ci_high']:.2f}]")
        elif shown and row is not None and np.isfinite(row.get(f"rho_{arm}", np.nan)):
            label += f", ρ = {row[f'rho_{arm}']:.2f}"
        pts.set_label(label)

    def _line(self, arm, x, y, row, line):
        fit, band = self.artists[f"fit:{arm}"], self.artists[f"band:{arm}"]
        xs = lo = hi = fy = np.array([])
        if line == "model":
            slope = np.nan if row is None else row.get(f"slope_{arm}", np.nan)
            xs, fy = line_through_means(x, y, slope)
        elif len(x) >= 2 and np.ptp(x) > 0:
            xs, fy, lo, hi = _ols_band(x, y)
            if len(x) < 3:
                lo = hi = np.array([])
        fit.set_data(xs, fy)
        if len(lo):
            band.set_data(xs, lo, hi)
        else:
            band.set_data([], [], [])


def plot_scatter(stats_input: pd.DataFrame, region: str, outcome: str, *, ax=None,
                 stats_roi=None, change_label=None):
    """ΔMD against Δscore in one region, per arm, with least-squares lines.

    Parameters
    ----------
    stats_input : pandas.DataFrame
        The rows the models saw (``Results.stats_input``): ``arm``,
        ``region``, ``outcome``, ``delta_md`` (mm²/s), ``delta_score``.
    region, outcome : str
        Which model (e.g. ``"BA10_L"``, ``"madrs"``).
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.
    stats_roi : pandas.DataFrame or pandas.Series, optional
        ``Results.stats_roi`` (the row of ``region``/``outcome`` is used) or
        that row: the legend then gives each arm's Pearson r with its 95 % CI
        and the title the interaction's p and q.
    change_label : str, optional
        y-axis label; default ``"ΔMADRS = post − pre (points; < 0 = better)"``
        (pass one when the stats used percent change).

    Returns
    -------
    matplotlib.figure.Figure
        ΔMD in 10⁻⁶ mm²/s. Points and, per arm, the least-squares line of
        Δscore on ΔMD with its 95 % confidence band (from 3 points on). The
        line is fitted here for drawing only and is not adjusted for the
        baseline score; the model's numbers come from ``stats_roi``.
    """
    rows = stats_input[(stats_input["region"] == region) & (stats_input["outcome"] == outcome)]
    if rows.empty:
        raise InputError(f"no rows for region {region!r} and outcome {outcome!r} in "
                         "stats_input")
    handle = ScatterFigure(ax=ax, arms=_arm_order(rows["arm"]))
    handle.update(rows, region=region, outcome=outcome,
                  stats_row=_stats_row(stats_roi, region, outcome), ylabel=change_label)
    return handle.figure


def plot_score_change(scores: pd.DataFrame, *, outcome: str = "madrs", figure=None):
    """Each participant's score before and 24 h after the infusion, per arm.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per participant with ``arm`` and ``<outcome>_pre``/``_post``.
    outcome : {"madrs", "qids"}, default="madrs"
        Outcome shown.
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per arm: a thin line per participant, the arm's mean in
        bold, on the scale's full range.
    """
    import matplotlib.pyplot as plt

    from ..stats import OUTCOMES

    if outcome not in OUTCOMES:
        raise InputError(f"outcome must be one of {', '.join(OUTCOMES)}")
    pre, post = f"{outcome}_pre", f"{outcome}_post"
    missing = [c for c in ("arm", pre, post) if c not in scores]
    if missing:
        raise InputError(f"the scores table has no {', '.join(missing)} column; pass "
                         "Results.scores or pick an outcome it has")
    d = scores.dropna(subset=[pre, post])
    arms = _arm_order(d["arm"])
    fig = plt.figure(figsize=(3.2 * max(len(arms), 1) + 0.6, 3.8), layout="constrained") \
        if figure is None else figure
    fig.clf()
    axs = fig.subplots(1, max(len(arms), 1), sharey=True, squeeze=False)[0]
    label, top = OUTCOMES[outcome]["label"], OUTCOMES[outcome]["max"]
    for ax, arm in zip(axs, arms, strict=False):
        g = d[d["arm"] == arm]
        colour = _arm_color(arm)
        ax.plot([0, 1], g[[pre, post]].to_numpy(float).T, color=colour, alpha=0.25, lw=0.8)
        ax.plot([0, 1], g[[pre, post]].mean().to_numpy(float), color=colour, lw=3,
                marker="o", label="mean")
        ax.set(xticks=[0, 1], xticklabels=["pre", "24 h post"], xlim=(-0.2, 1.2),
               ylim=(0, top), title=f"{arm} (n = {len(g)})")
        ax.legend(fontsize=8, loc="lower left")
    axs[0].set_ylabel(f"{label} (0-{top}; lower = better)")
    fig.suptitle(f"{label} before and 24 h after the infusion", fontsize=11)
    return fig


def plot_delta_by_arm(roi_deltas: pd.DataFrame, *, ax=None, regions=None):
    """ΔMD per region by arm: every participant (strip) over a box plot.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``participant_id``, ``arm``, ``region``, ``delta_md`` (mm²/s), as in
        ``Results.roi_deltas``.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.
    regions : sequence of str, optional
        Regions and their order; default: all, in table order.

    Returns
    -------
    matplotlib.figure.Figure
        Boxes (median, quartiles, whiskers at 1.5 IQR, no fliers: every
        point is drawn) and points in the arm colours, in 10⁻⁶ mm²/s, with a
        zero line (no change).
    """
    import warnings

    import seaborn as sns
    from matplotlib import MatplotlibDeprecationWarning
    from matplotlib.lines import Line2D

    d = roi_deltas.dropna(subset=["delta_md"])
    regions = list(pd.unique(d["region"])) if regions is None else list(regions)
    d = d[d["region"].isin(regions)].assign(delta=lambda t: t["delta_md"] * DELTA_MD_SCALE)
    arms = _arm_order(d["arm"])
    palette = {a: _arm_color(a) for a in arms}
    fig, ax = _axes(ax, (max(6.0, 1.2 * len(regions) + 1.5), 4.2))
    common = {"data": d, "x": "region", "y": "delta", "hue": "arm", "order": regions,
              "hue_order": arms, "palette": palette, "ax": ax, "legend": False}
    with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11 a deprecated vert=
        warnings.simplefilter("ignore", MatplotlibDeprecationWarning)
        sns.boxplot(**common, showfliers=False, fill=False, width=0.7, linewidth=1.2)
    sns.stripplot(**common, dodge=True, jitter=0.18, size=3.2, alpha=0.65)
    ax.axhline(0, color="0.4", lw=0.8, ls="--", zorder=0)
    n = d.drop_duplicates("participant_id").groupby("arm")["participant_id"].size()
    ax.legend(handles=[Line2D([], [], ls="", marker="o", color=palette[a],
                              label=f"{a} (n = {n.get(a, 0)})") for a in arms],
              fontsize=8, loc="best")
    ax.set(xlabel="region", ylabel=DELTA_MD_LABEL, title="ΔMD by arm and region")
    ax.tick_params(axis="x", labelsize=8, labelrotation=20 if len(regions) > 5 else 0)
    return fig



def _ols_band(x, y, n_points=50):
    """Least-squares line and its pointwise 95 % confidence band, for drawing."""
    from scipy.stats import t as t_dist

    n = len(x)
    slope, intercept = np.polyfit(x, y, 1)
    xs = np.linspace(x.min(), x.max(), n_points)
    fit = intercept + slope * xs
    if n < 3:  # a line through two points has no band
        return xs, fit, fit, fit
    resid = y - (intercept + slope * x)
    s = np.sqrt(resid @ resid / (n - 2))
    sxx = ((x - x.mean()) ** 2).sum()
    half = t_dist.ppf(0.975, n - 2) * s * np.sqrt(1 / n + (xs - x.mean()) ** 2 / sxx)
    return xs, fit, fit - half, fit + half



def _stats_row(stats_roi, region, outcome):
    if stats_roi is None:
        return None
    if isinstance(stats_roi, pd.Series):
        return stats_roi
    sel = stats_roi[(stats_roi["region"] == region) & (stats_roi["outcome"] == outcome)]
    return sel.iloc[0] if len(sel) else None



def _p_column(row):
    """Return the column of the interaction p that a stats row's q came from, or None.

    ``q_source`` names it (``p_perm_interaction`` by default); without it, the
    permutation p when there is one, else the classical ``p_interaction``.
    """
    for c in (str(row.get("q_source", "")), "p_perm_interaction", "p_interaction"):
        v = row.get(c) if c.startswith("p_") else None
        if v is not None and np.isfinite(float(v)):
            return c
    return None


def _q_column(table):
    for c in ("q_fdr", "q_holm"):
        if c in table:
            return c
    raise InputError("the stats table has no q_fdr or q_holm column; pass the table "
                     "ketamine_nb.stats.region_stats (or Results.stats_roi) returns")



def plot_forest(stats_roi: pd.DataFrame, *, outcome: str = "madrs", ax=None,
                alpha: float = 0.05, xlabel=None):
    """Forest plot of the arm × ΔMD interaction across regions.

    Parameters
    ----------
    stats_roi : pandas.DataFrame
        ``Results.stats_roi``: ``region``, ``outcome``, ``beta_interaction``,
        ``se_interaction`` and ``q_fdr`` (or ``q_holm``).
    outcome : str, default="madrs"
        Outcome whose rows are shown.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.
    alpha : float, default=0.05
        q below which a region is marked (filled diamond and a star).
    xlabel : str, optional
        x-axis label; default: the estimate's unit with the default stats
        (score points per 10⁻⁶ mm²/s of ΔMD).

    Returns
    -------
    matplotlib.figure.Figure
        One row per region, top to bottom in table order: the estimate (the
        ketamine slope minus the saline slope) with the table's 95 % interval
        (``interaction_ci_low``/``_high``: the configured test's, t quantile
        with its degrees of freedom; ± 1.96 SE when the table has none), its
        q on the right, and a zero line (no arm difference).
    """
    from matplotlib.lines import Line2D

    from ..stats import OUTCOMES

    t = stats_roi[stats_roi["outcome"] == outcome].reset_index(drop=True)
    if t.empty:
        raise InputError(f"no rows for outcome {outcome!r}; outcomes in the table: "
                         f"{', '.join(pd.unique(stats_roi['outcome']))}")
    qcol = _q_column(t)
    y = np.arange(len(t))
    # A model with fewer than 3 participants in an arm has no estimate (NaN or no column).
    est, se = t.reindex(columns=["beta_interaction", "se_interaction"]).to_numpy(float).T
    if {"interaction_ci_low", "interaction_ci_high"} <= set(t.columns):
        # The table's interval: the configured test's (Aspin-Welch by default:
        # each arm's variance, Welch-Satterthwaite df), as its p-values are.
        lo, hi = t[["interaction_ci_low", "interaction_ci_high"]].to_numpy(float).T
        xerr, what = np.vstack([est - lo, hi - est]), "95 % interval"
    else:
        xerr, what = _Z95 * se, "± 1.96 SE"
    sig = (t[qcol] < alpha).to_numpy()
    fig, ax = _axes(ax, (6.4, 0.45 * len(t) + 1.6))
    ax.axvline(0, color="0.4", lw=0.8, ls="--")
    ax.errorbar(est, y, xerr=xerr, fmt="none", ecolor="0.25", elinewidth=1.3, capsize=3)
    ax.scatter(est[sig], y[sig], marker="D", s=42, color="0.1", zorder=3, gid="significant")
    ax.scatter(est[~sig], y[~sig], marker="D", s=42, facecolor="white", edgecolor="0.1",
               zorder=3, gid="not significant")
    tr = ax.get_yaxis_transform()
    for yi, q, s, e in zip(y, t[qcol], sig, est, strict=True):
        text = f"q = {_fmt_p(q)}{' *' if s else ''}" if np.isfinite(e) else "not estimated"
        ax.text(1.02, yi, text, transform=tr, va="center", fontsize=8,
                fontweight="bold" if s else "normal")
    ax.set_yticks(y, t["region"])
    ax.set_ylim(len(t) - 0.5, -0.5)
    corr = "FDR" if qcol == "q_fdr" else "Holm"
    ax.legend(handles=[
        Line2D([], [], ls="", marker="D", color="0.1", label=f"{corr} q < {alpha:g} (*)"),
        Line2D([], [], ls="", marker="D", mfc="white", mec="0.1", label=f"q ≥ {alpha:g}")],
        fontsize=8, loc="lower right")
    name = OUTCOMES.get(outcome, {}).get("label", outcome)
    ax.set_xlabel(xlabel or f"ketamine − saline slope, {what}\n"
                            f"({name} points per 10⁻⁶ mm²/s of ΔMD)")
    ax.set_title(f"Arm × ΔMD interaction on Δ{name}", fontsize=10)
    return fig



def plot_truth_vs_measured(roi_deltas: pd.DataFrame, ground_truth: pd.DataFrame, *, ax=None,
                           truth: str = "apparent"):
    """Measured ΔMD against the ΔMD planted in the simulated cohort.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``Results.roi_deltas`` (``participant_id``, ``region``, ``arm``,
        ``delta_md`` in mm²/s).
    ground_truth : pandas.DataFrame
        ``Results.ground_truth`` (``ground_truth_roi.tsv`` of the simulation).
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.
    truth : {"apparent", "tissue"}, default="apparent"
        ``"apparent"``: the truth's ``delta_md``, what a perfect measurement
        with the pipeline's CSF guard reports; ``"tissue"``: the CSF-free
        tissue change (``tissue_md_post − tissue_md_pre``).

    Returns
    -------
    matplotlib.figure.Figure
        One point per participant × region in the arm colours, the identity
        line, and Pearson r in the title.
    """
    if truth not in ("apparent", "tissue"):
        raise InputError(f"truth {truth!r} is unknown; use 'apparent' or 'tissue'")
    gt = ground_truth.copy()
    gt["truth"] = gt["delta_md"] if truth == "apparent" else \
        gt["tissue_md_post"] - gt["tissue_md_pre"]
    d = roi_deltas[["participant_id", "arm", "region", "delta_md"]].merge(
        gt[["participant_id", "region", "truth"]], on=["participant_id", "region"])
    d = d.dropna(subset=["delta_md", "truth"])
    if len(d) < 2:
        raise InputError("fewer than two participant × region rows match the ground truth")
    x = d["truth"].to_numpy(float) * DELTA_MD_SCALE
    y = d["delta_md"].to_numpy(float) * DELTA_MD_SCALE
    fig, ax = _axes(ax, (5.0, 4.8))
    lim = np.array([min(x.min(), y.min()), max(x.max(), y.max())])
    lim += np.array([-1, 1]) * 0.05 * np.ptp(lim)
    ax.plot(lim, lim, color="0.4", lw=0.9, ls="--", label="identity", gid="identity")
    for arm in _arm_order(d["arm"]):
        sel = (d["arm"] == arm).to_numpy()
        n_p = d.loc[sel, "participant_id"].nunique()
        ax.scatter(x[sel], y[sel], s=12, alpha=0.6, color=_arm_color(arm), edgecolor="none",
                   label=f"{arm} ({n_p} participants)", gid=f"points:{arm}")
    r = np.corrcoef(x, y)[0, 1]
    which = "planted" if truth == "apparent" else "planted tissue"
    ax.set(xlim=lim, ylim=lim, aspect="equal",
           xlabel=f"{which} ΔMD (10⁻⁶ mm²/s)", ylabel="measured ΔMD (10⁻⁶ mm²/s)",
           title=f"Measured vs {which} ΔMD, all regions\nr = {r:.3f}, "
                 f"n = {len(d)} participant × region")
    ax.legend(fontsize=8, loc="upper left")
    return fig


_RATE_COLORS = {"power": "0.35", "false_positive_rate": "0.8", "rejection_rate": "0.6"}


def plot_power(power: pd.DataFrame, *, ax=None, alpha: float = 0.05, target: float = 0.8):
    """Rejection rates of :func:`ketamine_nb.power_analysis` with their intervals.

    Parameters
    ----------
    power : pandas.DataFrame
        ``power_analysis``'s table (one outcome): ``region``, ``quantity``,
        ``rate``, ``ci_low``, ``ci_high``.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.
    alpha : float, default=0.05
        Level of the tests: a dotted line, where a false positive rate belongs.
    target : float, default=0.8
        The power a trial is usually designed for: a dashed line.

    Returns
    -------
    matplotlib.figure.Figure
        One bar per region, top to bottom in table order, shaded by what the
        rate is (power, false positive rate, or the rejection rate of a
        relation planted alike in both arms), with the Monte-Carlo interval.
    """
    from matplotlib.patches import Patch

    if power["region"].duplicated().any():
        raise InputError("plot_power: one row per region expected; pass one outcome, e.g. "
                         "power[power['outcome'] == 'madrs']")
    fig, ax = _axes(ax, (6.4, 0.45 * len(power) + 1.6))
    y = np.arange(len(power))
    rate = power["rate"].to_numpy(float)
    err = np.vstack([rate - power["ci_low"].to_numpy(float),
                     power["ci_high"].to_numpy(float) - rate])
    colors = [_RATE_COLORS.get(q, "0.6") for q in power["quantity"]]
    ax.barh(y, rate, xerr=err, color=colors, edgecolor="0.2", capsize=3, gid="rates")
    ax.axvline(alpha, color="k", ls=":", lw=1)
    ax.axvline(target, color="k", ls="--", lw=1)
    ax.set_yticks(y, power["region"])
    ax.set_ylim(len(power) - 0.5, -0.5)
    ax.set(xlim=(0, 1), xlabel=f"share of simulated trials with interaction p < {alpha:g}")
    shown = list(dict.fromkeys(power["quantity"]))
    names = {"power": "power (interaction planted)",
             "false_positive_rate": "false positive rate (nothing planted)",
             "rejection_rate": "rejection rate (same relation in both arms)"}
    ax.legend(handles=[Patch(facecolor=_RATE_COLORS.get(q, "0.6"), edgecolor="0.2",
                             label=names.get(q, q)) for q in shown],
              fontsize=8, loc="lower right")
    return fig
