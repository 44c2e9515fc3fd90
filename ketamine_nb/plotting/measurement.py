"""The two visits of each participant: paired MD and Bland-Altman agreement.

Both take ``Results.roi_deltas`` (``md_pre``, ``md_post`` in mm²/s, one row
per participant and region). The Bland-Altman numbers come from
:func:`ketamine_nb.stats.bland_altman`; MD is shown in 10⁻³ mm²/s, the
difference between visits in 10⁻⁶ mm²/s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..exceptions import InputError
from ._base import (
    DELTA_MD_SCALE,
    MD_LABEL,
    MD_SCALE,
    _arm_color,
    _arm_order,
    _axes,
    _root_figure,
)

__all__ = ["plot_bland_altman", "plot_paired_md"]

_MEAN_EDGE = "0.15"


def _visits(roi_deltas: pd.DataFrame, region: str) -> pd.DataFrame:
    missing = [c for c in ("participant_id", "arm", "region", "md_pre", "md_post")
               if c not in roi_deltas]
    if missing:
        raise InputError(f"the table has no {', '.join(missing)} column; pass "
                         "Results.roi_deltas (one row per participant and region, with "
                         "md_pre and md_post)")
    d = roi_deltas[roi_deltas["region"] == region].dropna(subset=["md_pre", "md_post"])
    if d.empty:
        raise InputError(f"no participant has both visits in region {region!r}; regions: "
                         f"{', '.join(map(str, pd.unique(roi_deltas['region'])))}")
    return d


def plot_paired_md(roi_deltas: pd.DataFrame, region: str, *, ax=None, figure=None):
    """Each participant's regional MD before and 24 h after the infusion, per arm.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``Results.roi_deltas``: ``participant_id``, ``arm``, ``region``,
        ``md_pre``, ``md_post`` (mm²/s).
    region : str
        Region shown (e.g. ``"BA10_L"``).
    ax : sequence of matplotlib.axes.Axes, optional
        One axes per arm (control arm last, as in :data:`ARM_COLORS`).
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first), when ``ax`` is not given.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per arm, a shared MD axis (10⁻³ mm²/s): a thin line per
        participant joins their two visits, the arm's mean is bold with its
        mean ΔMD (10⁻⁶ mm²/s) in the legend. The spread between participants
        is several times the change within one: why the model uses ΔMD, each
        participant their own control.

    Notes
    -----
    Caption and alt text: ``ketamine_nb.plotting.ALT_TEXT["plot_paired_md"]``.
    """
    import matplotlib.pyplot as plt

    d = _visits(roi_deltas, region)
    arms = _arm_order(d["arm"])
    if ax is not None:
        axs = list(np.ravel(ax))
        if len(axs) < len(arms):
            raise InputError(f"{len(axs)} axes for {len(arms)} arms; pass one per arm")
        fig = _root_figure(axs[0])
    else:
        fig = plt.figure(figsize=(3.2 * len(arms) + 0.8, 4.0), layout="constrained") \
            if figure is None else figure
        fig.clf()
        axs = list(fig.subplots(1, len(arms), sharey=True, squeeze=False)[0])
    values = d[["md_pre", "md_post"]].to_numpy(float) * MD_SCALE
    lo, hi = values.min(), values.max()
    pad = 0.06 * (hi - lo or 1.0)
    for a, arm in zip(axs, arms, strict=False):
        g = d[d["arm"] == arm]
        colour = _arm_color(arm)
        y = g[["md_pre", "md_post"]].to_numpy(float) * MD_SCALE
        for pid, row in zip(g["participant_id"], y, strict=True):
            a.plot([0, 1], row, color=colour, alpha=0.35, lw=0.8, marker="o", ms=2.5,
                   gid=f"participant:{pid}")
        mean = y.mean(axis=0)
        delta = (g["md_post"] - g["md_pre"]).mean() * DELTA_MD_SCALE
        a.plot([0, 1], mean, color=colour, lw=3.2, marker="o", ms=7, mec=_MEAN_EDGE, mew=1,
               gid="mean", label=f"mean (ΔMD = {delta:+.1f}×10⁻⁶ mm²/s)")
        a.set(xticks=[0, 1], xticklabels=["pre", "24 h post"], xlim=(-0.25, 1.25),
              ylim=(lo - pad, hi + 3.5 * pad), title=f"{arm} (n = {len(g)})")
        a.legend(fontsize=8, loc="upper center", framealpha=0.9)
        a.grid(axis="y", color="0.9", lw=0.6)
    axs[0].set_ylabel(f"{region} {MD_LABEL}")
    fig.suptitle(f"{region}: MD at the two visits, one line per participant", fontsize=11)
    return fig


def plot_bland_altman(roi_deltas: pd.DataFrame, region: str, *, arm=None, ax=None,
                      z: float = 1.96):
    """Bland-Altman plot of one arm's two visits in one region.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``Results.roi_deltas``: ``participant_id``, ``arm``, ``region``,
        ``md_pre``, ``md_post`` (mm²/s).
    region : str
        Region shown.
    arm : str, optional
        Arm; default: the control arm (saline in the study), where MD is not
        expected to change, so the visits are a test-retest pair.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.
    z : float, default=1.96
        Limits of agreement at bias ± z SD.

    Returns
    -------
    matplotlib.figure.Figure
        x: the mean of the two visits (10⁻³ mm²/s); y: post − pre
        (10⁻⁶ mm²/s), a point per participant; the bias (mean difference,
        solid), the limits of agreement (dashed) and zero (dotted). The
        numbers are in the legend; :func:`ketamine_nb.stats.bland_altman`
        returns them.

    Notes
    -----
    Caption and alt text: ``ketamine_nb.plotting.ALT_TEXT["plot_bland_altman"]``.
    """
    from ..stats import bland_altman

    _visits(roi_deltas, region)
    points, s = bland_altman(roi_deltas, region, arm=arm, z=z)
    colour = _arm_color(s["arm"])
    x = points["mean_md"].to_numpy(float) * MD_SCALE
    y = points["difference"].to_numpy(float) * DELTA_MD_SCALE
    bias, low, high = (s[k] * DELTA_MD_SCALE for k in ("bias", "loa_low", "loa_high"))
    fig, ax = _axes(ax, (5.8, 4.2))
    ax.axhline(0, color="0.55", lw=0.8, ls=":", gid="zero")
    ax.scatter(x, y, s=24, color=colour, alpha=0.8, edgecolor="white", linewidth=0.5,
               label=f"{s['arm']}, one point per participant (n = {s['n']})", gid="points",
               zorder=3)
    ax.axhline(bias, color="0.15", lw=1.6, gid="bias",
               label=f"bias (mean difference) = {bias:.1f}")
    ax.axhline(low, color="0.15", lw=1.1, ls="--", gid="loa_low",
               label=f"limits of agreement (bias ± {z:g} SD) = {low:.1f} to {high:.1f}")
    ax.axhline(high, color="0.15", lw=1.1, ls="--", gid="loa_high")
    span = max(high, y.max()) - min(low, y.min())
    ax.set_ylim(min(low, y.min()) - 0.08 * span, max(high, y.max()) + 0.45 * span)
    ax.legend(fontsize=8, loc="upper left", framealpha=0.9,
              title="bias and limits in 10⁻⁶ mm²/s", title_fontsize=8)
    ax.set(xlabel=f"mean of the two visits, {MD_LABEL}",
           ylabel="difference post − pre (10⁻⁶ mm²/s)")
    ax.set_title(f"{region}, {s['arm']} arm: agreement of the two visits (Bland-Altman)",
                 fontsize=10)
    return fig
