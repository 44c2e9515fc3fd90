"""The specification curve of the robustness grid (Simonsohn, Simmons & Nelson 2020).

One builder, :class:`SpecCurveFigure`, draws it for :func:`plot_robustness`
and for :func:`ketamine_nb.widgets.robustness_explorer`: the sorted
estimates with their 95 % intervals above, and below one row per choice
value with a dot where the specification above used it. The choices are
:data:`ketamine_nb.robustness.CHOICES`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..exceptions import InputError
from ..robustness import CHOICES
from ._base import _Z95, HIGHLIGHT_COLOR, FigureHandle, _new_figure, choice_label, choice_value

__all__ = ["SpecCurveFigure", "plot_robustness", "select_specifications", "spec_levels"]

ESTIMATES = ("beta", "t")


def _same(u, v) -> bool:
    if isinstance(u, float) and isinstance(v, float):
        return bool(np.isclose(u, v, rtol=1e-6, atol=0))
    return u == v


def select_specifications(table: pd.DataFrame, choices: dict) -> np.ndarray:
    """Rows of a robustness table that made the given choices.

    Parameters
    ----------
    table : pandas.DataFrame
        ``Results.robustness`` or a part of it.
    choices : dict
        Choice -> value (as in the grid: ``None`` or ``inf`` = guard off,
        ``"none"`` = no covariates); ``"all"`` matches every value.

    Returns
    -------
    numpy.ndarray of bool
        One per row of ``table``.
    """
    ok = np.ones(len(table), dtype=bool)
    for choice, value in choices.items():
        if isinstance(value, str) and value == "all":
            continue
        want = choice_value(value)
        ok &= np.array([_same(choice_value(u), want) for u in table[choice]], dtype=bool)
    return ok


def spec_levels(table: pd.DataFrame) -> list:
    """Rows of the dot matrix: ``(choice, value)`` in grid order, values as in the table."""
    return [(c, v) for c in CHOICES if c in table
            for v in dict.fromkeys(choice_value(u) for u in table[c])]


def _y_label(estimate):
    return ("arm × ΔMD interaction ± 1.96 SE\n(Δscore per 10⁻⁶ mm²/s)" if estimate == "beta"
            else "interaction t = β / SE\n± 1.96 (unitless)")


class SpecCurveFigure(FigureHandle):
    """Specification curve: sorted estimates over a dot matrix of the choices.

    Parameters
    ----------
    levels : list of (str, object)
        Rows of the dot matrix (:func:`spec_levels` of the whole table).
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first); default: a new pyplot figure.

    Attributes
    ----------
    artists : dict
        ``intervals`` (LineCollection), ``estimates`` (all, dark where
        p < alpha), ``selected`` (orange), ``marks`` and ``matrix_marks``
        (orange vertical bands behind the selected specifications), ``t_band`` (the ±1.96 lines,
        shown for t), ``title``, ``ylabel``, one matrix scatter per level
        (gid ``"<choice>=<value>"``) and ``matrix_selected``.
    shown : pandas.DataFrame
        The specifications of the last update, sorted, with ``rank``.
    """

    def __init__(self, levels, *, figure=None):
        n_rows = len(levels)
        fig = _new_figure(figure, (10, 3.2 + 0.2 * n_rows))
        fig.set_layout_engine("constrained")
        super().__init__(fig)
        self.levels = list(levels)
        top, bottom = fig.subplots(2, 1, sharex=True,
                                   gridspec_kw={"height_ratios": [1.4, 0.1 + 0.1 * n_rows]})
        self.top, self.bottom = top, bottom
        a = self.artists
        a["intervals"] = top.vlines([], [], [], colors="0.65", lw=0.8)
        a["estimates"] = top.scatter(np.empty(0), np.empty(0), s=9, zorder=3, gid="estimates")
        a["selected"] = top.scatter(np.empty(0), np.empty(0), s=30, color=HIGHLIGHT_COLOR,
                                    edgecolor="k", linewidth=0.4, zorder=4, gid="selected")
        for name, ax in (("marks", top), ("matrix_marks", bottom)):  # selected: a band
            a[name] = ax.vlines([], 0, 1, transform=ax.get_xaxis_transform(), zorder=0,
                                colors=HIGHLIGHT_COLOR, alpha=0.35, lw=2.5, gid=name)
        top.axhline(0, color="0.3", lw=0.8, ls="--")
        a["t_band"] = [top.axhline(y, color="0.6", lw=0.8, ls=":") for y in (-_Z95, _Z95)]
        a["ylabel"] = top.yaxis.label
        a["title"] = top.set_title("", fontsize=10)
        for r, (c, v) in enumerate(levels):
            a[f"{c}={v}"] = bottom.scatter(np.empty(0), np.empty(0), s=5, marker="s",
                                           color="0.15", gid=f"{c}={v}")
            if r and c != levels[r - 1][0]:
                bottom.axhline(r - 0.5, color="0.8", lw=0.6)
        a["matrix_selected"] = bottom.scatter(np.empty(0), np.empty(0), s=14, marker="s",
                                              color=HIGHLIGHT_COLOR, zorder=3,
                                              gid="matrix_selected")
        bottom.set_yticks(range(n_rows), [choice_label(c, v) for c, v in levels], fontsize=8)
        bottom.set_ylim(n_rows - 0.5, -0.5)
        bottom.set_xlabel("specification (sorted by estimate)")
        self.shown = pd.DataFrame()

    def update(self, table: pd.DataFrame, region: str, *, estimate: str = "t",
               alpha: float = 0.05, selected=None):
        """Show one region's specifications.

        Parameters
        ----------
        table : pandas.DataFrame
            The robustness table (every region; ``region`` picks the rows).
        region : str
            Region shown.
        estimate : {"beta", "t"}, default="t"
            ``"beta"``: the interaction ± 1.96 SE (Δscore per 10⁻⁶ mm²/s);
            ``"t"``: β / SE ± 1.96 (unitless, comparable across outcomes).
        alpha : float, default=0.05
            Uncorrected p below which an estimate is drawn dark.
        selected : dict, optional
            Choices (:func:`select_specifications`) of the specifications
            drawn in orange; none without.

        Returns
        -------
        SpecCurveFigure
            ``self``; ``self.shown`` holds the sorted rows with ``rank``,
            ``t_interaction`` and ``selected``.
        """
        if estimate not in ESTIMATES:
            raise InputError(f"estimate {estimate!r} is unknown; use 'beta' or 't'")
        t = table[table["region"].astype(str) == str(region)].copy()
        if t.empty:
            raise InputError(f"no specifications for region {region!r}")
        se = t["se_interaction"].to_numpy(float)
        t["t_interaction"] = t["beta_interaction"] / se
        t["_y"] = t["t_interaction"] if estimate == "t" else t["beta_interaction"]
        t["_half"] = _Z95 * (1.0 if estimate == "t" else se)
        sort = ["_y", "spec"] if "spec" in t else ["_y"]
        t = t.sort_values(sort, kind="stable", na_position="last").reset_index(drop=True)
        t["rank"] = np.arange(len(t))
        t["selected"] = select_specifications(t, selected) if selected else False
        x, y, half = t["rank"].to_numpy(float), t["_y"].to_numpy(float), t["_half"].to_numpy(
            float)
        sel = t["selected"].to_numpy(bool)
        dark = (t["p_interaction"] < alpha).to_numpy()
        colours = np.where(dark, "0.1", "0.65")
        a = self.artists
        a["intervals"].set_segments([np.array([[xi, yi - h], [xi, yi + h]])
                                     for xi, yi, h in zip(x, y, half, strict=True)])
        a["intervals"].set_color(colours)
        a["estimates"].set_offsets(np.column_stack([x, y]))
        a["estimates"].set_color(colours)
        a["selected"].set_offsets(np.column_stack([x[sel], y[sel]]))
        for name in ("marks", "matrix_marks"):
            a[name].set_segments([np.array([[xi, 0.0], [xi, 1.0]]) for xi in x[sel]])
        for line in a["t_band"]:
            line.set_visible(estimate == "t")
        self._matrix(t, x, sel)
        finite = np.concatenate([y - half, y + half, [0.0]])
        finite = finite[np.isfinite(finite)]
        pad = 0.05 * (np.ptp(finite) or 1.0)
        self.top.set_ylim(finite.min() - pad, finite.max() + pad)
        self.top.set_xlim(-1, max(len(t), 1))
        a["ylabel"].set_text(_y_label(estimate))
        a["title"].set_text(
            f"{region}: {len(t)} specifications; dark: p < {alpha:g} (uncorrected)"
            + (f"; orange: {int(sel.sum())} selected" if selected else ""))
        self.shown = t.drop(columns=["_y", "_half"])
        return self

    def _matrix(self, t, x, sel):
        rows = {}
        for r, (c, v) in enumerate(self.levels):
            on = np.array([_same(choice_value(u), v) for u in t[c]], dtype=bool) \
                if c in t else np.zeros(len(t), bool)
            self.artists[f"{c}={v}"].set_offsets(np.column_stack([x[on], np.full(on.sum(), r)]))
            rows[(c, v)] = on
        pts = [np.column_stack([x[on & sel], np.full((on & sel).sum(), r)])
               for r, on in enumerate(rows.values())]
        self.artists["matrix_selected"].set_offsets(
            np.concatenate(pts) if pts else np.empty((0, 2)))


def plot_robustness(robustness_table: pd.DataFrame, region: str, *, figure=None,
                    alpha: float = 0.05, highlight=None, estimate: str = "beta"):
    """Specification curve of one region: sorted estimates over the choices behind them.

    Parameters
    ----------
    robustness_table : pandas.DataFrame
        ``Results.robustness`` (:func:`ketamine_nb.robustness.robustness_grid`):
        one row per specification × region.
    region : str
        Region shown.
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).
    alpha : float, default=0.05
        Uncorrected p below which an estimate is drawn dark.
    highlight : dict, optional
        Choices of the specifications to mark in orange (e.g. the pipeline's
        defaults, ``{"fit_method": "configured", "probability_threshold": 0.25,
        "csf_md_threshold": 1.1e-3, "outcome": "madrs", "change": "absolute",
        "covariates": "none"}``); a choice left out matches every value.
    estimate : {"beta", "t"}, default="beta"
        ``"beta"``: the interaction ± 1.96 SE, in Δscore per 10⁻⁶ mm²/s;
        ``"t"``: beta / SE ± 1.96, comparable across outcomes and change
        definitions.

    Returns
    -------
    matplotlib.figure.Figure
        Top: the estimates sorted from lowest to highest with their 95 %
        intervals. Bottom: one row per choice value, a dot where the
        specification above used it.

    Notes
    -----
    With ``estimate="beta"``, specifications of different outcomes (MADRS
    0-60, QIDS-SR 0-27) or of percent change are on different scales, so
    sorting them together ranks units as much as effects: a warning says so.
    Filter the table (e.g. ``table[table.change == "absolute"]``) or use
    ``estimate="t"``.
    """
    t = robustness_table[robustness_table["region"] == region]
    if t.empty:
        raise InputError(f"no specifications for region {region!r}")
    scales = t[[c for c in ("outcome", "change") if c in t]].drop_duplicates()
    if estimate == "beta" and len(scales) > 1:
        warnings.warn("the specifications mix outcomes or change definitions, whose "
                      "estimates are on different scales; filter the table or pass "
                      "estimate='t'", UserWarning, stacklevel=2)
    handle = SpecCurveFigure(spec_levels(t), figure=figure)
    return handle.update(t, region, estimate=estimate, alpha=alpha,
                         selected=highlight).figure
