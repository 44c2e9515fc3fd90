"""Permutation inference: the null distribution of the interaction statistic.

The null is computed by :func:`ketamine_nb.stats.permutation_null` (the same
permutations as ``region_stats``); this module only draws it. The p written
on the figure is :func:`ketamine_nb.stats.permutation_p` of what it is handed.
"""

from __future__ import annotations

import numpy as np

from ..exceptions import InputError
from ._base import HIGHLIGHT_COLOR, _axes, _fmt_p

__all__ = ["plot_permutation_null"]

_NULL_COLOR = "#BBBBBB"      # Paul Tol's grey: the bulk of the null
_OBSERVED_COLOR = "#000000"  # the observed statistic (on a white background)


def _edges(s, obs, bins, two_sided):
    """Histogram edges with the observed value (and its mirror) on an edge.

    So that no bar is partly beyond the observed value: a bar is either
    counted in p (orange) or not (grey).
    """
    lo, hi = float(min(s.min(), obs)), float(max(s.max(), obs))
    if two_sided:
        hi = max(abs(lo), abs(hi))
        lo = -hi
    width = (hi - lo) / bins or 1.0
    if obs != 0:
        anchor = abs(obs) if two_sided else obs
        width = abs(anchor) / max(1, round(abs(anchor) / width))
        k0, k1 = np.floor((lo - anchor) / width), np.ceil((hi - anchor) / width)
        return anchor + width * np.arange(k0, k1 + 1)
    return np.linspace(lo, hi, bins + 1)


def plot_permutation_null(null, observed=None, *, ax=None, label=None, two_sided: bool = True,
                          bins: int = 60, title=None):
    """Histogram of a permutation null distribution with the observed statistic.

    Parameters
    ----------
    null : array-like or ketamine_nb.stats.PermutationNull
        The statistic under each permutation (the data as observed not
        among them), or what :func:`ketamine_nb.stats.permutation_null`
        returns (then ``observed``, ``label`` and the title come from it).
    observed : float, optional
        The statistic of the data as observed (required with an array).
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; default: a new figure.
    label : str, optional
        x-axis label; default: the statistic's name, or ``"statistic"``.
    two_sided : bool, default=True
        Count ``|s*| >= |s|`` as :func:`ketamine_nb.stats.region_stats` does
        (the tails beyond ``-|s|`` and ``+|s|`` are shaded); ``False``:
        ``s* >= s``.
    bins : int, default=60
        Histogram bins.
    title : str, optional
        Axes title; default: the region and outcome when known.

    Returns
    -------
    matplotlib.figure.Figure
        Grey bars: the permutations; orange bars: those at least as extreme
        as the observed statistic; black line: the observed statistic (dashed:
        its mirror, two-sided). The legend gives
        ``p = (1 + #{|s*| >= |s|}) / (1 + B)``, with its counts.

    Notes
    -----
    Caption and alt text: ``ketamine_nb.plotting.ALT_TEXT["plot_permutation_null"]``.
    """
    from matplotlib.patches import Patch

    from ..stats import permutation_p

    name = None
    if observed is None and hasattr(null, "null") and hasattr(null, "observed"):
        perm = null
        null, observed = perm.null, perm.observed
        label = label or getattr(perm, "label", None)
        name = f"{perm.region}, {perm.outcome}"
    if observed is None:
        raise InputError("observed is missing: pass the observed statistic, or the "
                         "PermutationNull that ketamine_nb.stats.permutation_null returns")
    s = np.asarray(null, float).ravel()
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise InputError("the null distribution has no finite value")
    obs = float(observed)
    p = permutation_p(s, obs, two_sided=two_sided)
    a, o = (np.abs(s), abs(obs)) if two_sided else (s, obs)
    hits = int(np.count_nonzero(a >= o - 1e-12 * max(1.0, abs(o))))
    fig, ax = _axes(ax, (5.8, 3.8))
    edges = _edges(s, obs, bins, two_sided)
    ax.hist(s, bins=edges, color=_NULL_COLOR, edgecolor="white", linewidth=0.3, gid="null")
    extreme = s[a >= o - 1e-12 * max(1.0, abs(o))]
    ax.hist(extreme, bins=edges, color=HIGHLIGHT_COLOR, edgecolor="white", linewidth=0.3,
            gid="extreme")
    ax.axvline(obs, color=_OBSERVED_COLOR, lw=2, gid="observed")
    if two_sided and obs != 0:
        ax.axvline(-obs, color=_OBSERVED_COLOR, lw=1.2, ls="--", gid="mirror")
    stat = label or "statistic"
    sym = "|s*| ≥ |s|" if two_sided else "s* ≥ s"
    handles = [
        Patch(color=_NULL_COLOR, label=f"{s.size} permutations"),
        Patch(color=HIGHLIGHT_COLOR, label=f"{hits} at least as extreme ({sym})"),
        ax.lines[-2 if two_sided and obs != 0 else -1],
    ]
    handles[-1].set_label(f"observed s = {obs:.3g}" + (" (dashed: −s)" if two_sided and obs
                                                        else ""))
    ax.legend(handles=handles, fontsize=8, loc="upper left", framealpha=0.9,
              title=f"p = (1 + {hits}) / (1 + {s.size}) = {_fmt_p(p)}", title_fontsize=8)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.35)  # room for the legend above the bars
    ax.set_xlabel(stat)
    ax.set_ylabel("permutations")
    ax.set_title(title or (f"{name}: permutation null distribution, p = {_fmt_p(p)}" if name
                           else f"Permutation null distribution, p = {_fmt_p(p)}"), fontsize=10)
    return fig
