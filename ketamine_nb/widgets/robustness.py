"""The robustness explorer: the specification curve of the robustness grid."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..exceptions import InputError
from ..plotting import SpecCurveFigure, choice_label
from ..plotting._base import plain_figure
from ..plotting.specification import spec_levels
from ..robustness import CHOICES
from ._base import Explorer, RegionState
from ._controls import dropdown, fmt_p, html_table, note

__all__ = ["RobustnessExplorer", "robustness_explorer"]

_TITLES = {"fit_method": "Tensor fit", "probability_threshold": "Atlas probability",
           "csf_md_threshold": "CSF guard", "outcome": "Outcome", "change": "Score change",
           "covariates": "Covariates"}


def _csf_text(value) -> str:
    return "off" if value is None or not np.isfinite(value) else f"{value * 1e3:.2f}"


class RobustnessExplorer(Explorer):
    """See :func:`robustness_explorer`."""

    def __init__(self, results, *, region=None, region_state=None):
        grid = results.robustness
        if grid is None or grid.empty:
            raise InputError(f"{results.out_dir}: no robustness.tsv; run 'ketamine-nb stats "
                             f"{results.out_dir} --robustness' (the demo does)")
        self.grid = grid
        regions = [r for r in results.regions if r in set(grid["region"].astype(str))] or \
            [str(r) for r in pd.unique(grid["region"])]
        levels = spec_levels(grid)
        self.choices = [c for c in CHOICES if c in grid]
        configured = _configured(results.config or {})
        controls = {"region": dropdown("Region", regions, region or regions[0])}
        for choice in self.choices:
            values = [_edge(choice, v) for c, v in levels if c == choice]
            opts = [("all", "all")] + [(choice_label(choice, v), v) for v in values]
            want = configured.get(choice, "all")
            start = next((v for v in values if _equal(v, want)), "all")
            controls[choice] = dropdown(
                _TITLES.get(choice, choice.replace("_", " ").capitalize()), opts, start)
        controls["estimate"] = dropdown("Estimate", [("t = β / SE", "t"),
                                                     ("β ± 1.96 SE", "beta")], "t")
        handle = SpecCurveFigure(levels, figure=plain_figure(10.0, 3.2 + 0.2 * len(levels)))
        super().__init__(controls, handle, title="Robustness: the specification curve",
                         name="robustness", columns=4, region_state=region_state)

    def draw(self, values):
        """Sort the region's specifications; mark those matching the dropdowns."""
        chosen = {c: values[c] for c in self.choices}
        self.handle.update(self.grid, values["region"], estimate=values["estimate"],
                           selected=chosen)
        t = self.handle.shown
        cols = ["spec", "rank", "region", *self.choices, "n", "beta_interaction",
                "se_interaction", "t_interaction", "p_interaction", "slope_ketamine",
                "slope_saline"]
        sel = t[t["selected"]]
        return sel[[c for c in cols if c in t]].sort_values("spec").reset_index(drop=True)

    def describe(self, table):
        """Show the first 20 selected specifications, with units."""
        more = note(f"first 20 of {len(table)} selected specifications (all of them in "
                    "<code>w.table</code>)") if len(table) > 20 else ""
        return html_table(table.head(20), {
            "spec": ("spec", "d"), "fit": ("fit_method", str),
            "probability ≥": ("probability_threshold", ".2f"),
            "CSF cut-off (10⁻³ mm²/s)": ("csf_md_threshold", _csf_text),
            "outcome": ("outcome", str), "change": ("change", str),
            "covariates": ("covariates", str), "n": ("n", "d"),
            "β": ("beta_interaction", ".3f"), "SE": ("se_interaction", ".3f"),
            "t": ("t_interaction", ".2f"), "p": ("p_interaction", fmt_p)}) + more


def _configured(config: dict) -> dict:
    """Return the configured analysis as choices of the grid (the explorer's start)."""
    from ..robustness import DEFAULT_GRID

    out = {c: v[0] for c, v in DEFAULT_GRID.items() if len(v) and not isinstance(v[0], tuple)}
    out.update({"fit_method": "configured",
                "probability_threshold": config.get("probability_threshold", 0.25),
                "csf_md_threshold": config.get("csf_md_threshold", 1.1e-3),
                "outcome": "madrs", "change": "absolute", "covariates": "none"})
    return out


def _edge(choice, value):
    """Convert a choice's value for a control: "off" is ``inf`` or ``"none"``, not None."""
    if value is not None:
        return value
    return float("inf") if choice == "csf_md_threshold" else "none"


def _equal(v, want) -> bool:
    from ..plotting._base import choice_value

    a, b = choice_value(v), choice_value(want)
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b))
    return a == b


def robustness_explorer(results, *, region: str | None = None,
                        region_state: RegionState | None = None) -> RobustnessExplorer:
    """Explore the specification curve of the robustness grid.

    For one region, every specification of ``robustness.tsv`` (written by
    ``ketamine-nb stats --robustness`` and by the demo) is a point: the
    interaction's t value (β / SE, comparable across outcomes and score
    units) or β ± 1.96 SE, sorted (figure:
    :class:`ketamine_nb.plotting.SpecCurveFigure`, as in
    :func:`ketamine_nb.plotting.plot_robustness`). Below, each column marks
    the choices of that specification. The dropdowns (``all`` = any value)
    select specifications, drawn in orange; the table holds those rows. At
    the start they hold the configured analysis (the pipeline's thresholds
    and fit, MADRS, absolute change, no covariates), so exactly that
    specification is highlighted.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        From :func:`ketamine_nb.load_results`, with ``robustness``.
    region : str, optional
        Region shown first.
    region_state : RegionState, optional
        A region shared with other explorers.

    Returns
    -------
    RobustnessExplorer
        Controls ``region``, one per choice of
        :data:`ketamine_nb.robustness.CHOICES` (``csf_md_threshold`` ``None``
        = off) and ``estimate`` (``t``/``beta``).
    """
    return RobustnessExplorer(results, region=region, region_state=region_state)
