"""The outcome explorer: ΔMD against the change in depression score, per arm."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from ..exceptions import InputError
from ..plotting import ARM_COLORS, ScatterFigure
from ..plotting._base import plain_figure
from ._base import Explorer, RegionState
from ._controls import dropdown, fmt_p, html_table, note

__all__ = ["OutcomeExplorer", "outcome_explorer"]

_OUTCOME_LABELS = {"madrs": "MADRS", "qids": "QIDS-SR"}
#: Covariate choices: control value -> the model's covariates.
COVARIATES = {"none": (), "age+sex": ("age", "sex")}


class OutcomeExplorer(Explorer):
    """See :func:`outcome_explorer`."""

    def __init__(self, results, *, region=None, region_state=None):
        if results.scores is None:
            raise InputError(f"{results.out_dir}: no scores.tsv; rerun 'ketamine-nb run' on "
                             "a dataset with MADRS/QIDS-SR scores")
        self.results = results
        self._rows: dict = {}
        self._stats: dict = {}
        regions = results.regions
        controls = {
            "region": dropdown("Region", regions, region or regions[0]),
            "outcome": dropdown("Outcome", [(v, k) for k, v in _OUTCOME_LABELS.items()],
                                "madrs"),
            "change": dropdown("Score change", [("points (post − pre)", "absolute"),
                                                ("percent of baseline", "percent")],
                               "absolute"),
            "arm": dropdown("Arm", ["both", *ARM_COLORS], "both"),
            "method": dropdown("Correlation", [("Pearson r", "pearson"),
                                               ("Spearman ρ", "spearman")], "pearson"),
            "covariates": dropdown("Covariates", [("none", "none"), ("age + sex", "age+sex")],
                                   "none"),
        }
        handle = ScatterFigure(figure=plain_figure(6.4, 4.6), arms=tuple(ARM_COLORS))
        super().__init__(controls, handle, title="Outcome: ΔMD against the change in "
                         "depression score", name="outcome", region_state=region_state)

    def model(self, region, outcome, change, covariates):
        """Return the model's rows and ``region_stats`` row (no permutations), cached."""
        from ..stats import StatsConfig, region_stats, stats_input

        cfg = StatsConfig(outcomes=(outcome,), covariates=COVARIATES[covariates],
                          change=change, n_permutations=0, n_bootstrap=0)
        key = (outcome, change, covariates)
        if key not in self._rows:
            self._rows[key] = stats_input(self.results.roi_deltas, self.results.scores,
                                          config=cfg, participants=self.results.participants)[0]
        sub = self._rows[key][self._rows[key]["region"] == region]
        if sub.empty:
            raise InputError(f"{region}: no participant has both ΔMD and {outcome} scores")
        if key + (region,) not in self._stats:
            row = region_stats(sub, config=cfg).iloc[0]
            # one model: its q is its p, so the title shows p only
            self._stats[key + (region,)] = row.drop(labels=["q_fdr", "q_holm"],
                                                    errors="ignore")
        return sub, self._stats[key + (region,)]

    def draw(self, values):
        """Fit (or reuse) the model; update the scatter; return one row per arm shown."""
        reg, outcome, change = values["region"], values["outcome"], values["change"]
        sub, rec = self.model(reg, outcome, change, values["covariates"])
        arms = list(ARM_COLORS) if values["arm"] == "both" else [values["arm"]]
        unit = "points" if change == "absolute" else "% of baseline"
        self.handle.update(sub, region=reg, outcome=outcome, stats_row=rec, line="model",
                           arms=arms, correlation=values["method"],
                           ylabel=f"Δ{_OUTCOME_LABELS[outcome]} = post − pre ({unit})")
        sp = values["method"] == "spearman"
        return pd.DataFrame([{
            "region": reg, "outcome": outcome, "change": change,
            "covariates": values["covariates"], "arm": arm, "n": int(rec[f"n_{arm}"]),
            "method": values["method"],
            "correlation": rec[f"rho_{arm}" if sp else f"r_{arm}"],
            "p_correlation": rec[f"p_rho_{arm}" if sp else f"p_r_{arm}"],
            "slope": rec.get(f"slope_{arm}", np.nan),
            "se_slope": rec.get(f"se_slope_{arm}", np.nan),
            "p_slope": rec.get(f"p_slope_{arm}", np.nan),
            "beta_interaction": rec.get("beta_interaction", np.nan),
            "se_interaction": rec.get("se_interaction", np.nan),
            "p_interaction": rec.get("p_interaction", np.nan),
            "formula": rec["formula"]} for arm in arms])

    def describe(self, table):
        """Show the model's numbers per arm, with units."""
        r = table.iloc[0]
        caption = (f"<div style='font-size:12px'><b>{html.escape(str(r['region']))}</b> · "
                   f"{_OUTCOME_LABELS[r['outcome']]} · change: {html.escape(r['change'])} · "
                   f"covariates: {html.escape(r['covariates'])} · {r['method']}</div>")
        return caption + html_table(table, {
            "arm": ("arm", str), "n": ("n", "d"),
            "correlation": ("correlation", ".3f"), "p": ("p_correlation", fmt_p),
            "slope (per 10⁻⁶ mm²/s)": ("slope", ".3f"), "SE": ("se_slope", ".3f"),
            "p ": ("p_slope", fmt_p), "interaction β": ("beta_interaction", ".3f"),
            "SE ": ("se_interaction", ".3f"), "p  ": ("p_interaction", fmt_p)}) + note(
            f"{html.escape(table['formula'].iloc[0])} (OLS; Δ = post − pre; ΔMD in "
            "10⁻⁶ mm²/s; slopes in score units per 10⁻⁶ mm²/s, drawn through each arm's "
            "means)")


def outcome_explorer(results, *, region: str | None = None,
                     region_state: RegionState | None = None) -> OutcomeExplorer:
    """Explore ΔMD against the change in depression score, per arm.

    The scatter (:class:`ketamine_nb.plotting.ScatterFigure`, as in
    :func:`ketamine_nb.plotting.plot_scatter`) shows, per participant, ΔMD
    (post − pre, 10⁻⁶ mm²/s) of the region against the change in MADRS or
    QIDS-SR (post − pre, points or percent of baseline), one colour per arm,
    with each arm's slope from the study's model (adjusted for the baseline
    score and the covariates) drawn through the arm's means. The table has
    one row per arm shown: the correlation (Pearson r or Spearman ρ), the
    model's simple slope, and the arm × ΔMD interaction (β, SE, p), all from
    :func:`ketamine_nb.stats.region_stats` on
    :func:`ketamine_nb.stats.stats_input`'s rows.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        From :func:`ketamine_nb.load_results` (needs the scores).
    region : str, optional
        Region shown first.
    region_state : RegionState, optional
        A region shared with other explorers.

    Returns
    -------
    OutcomeExplorer
        Controls ``region``, ``outcome`` (``madrs``/``qids``), ``change``
        (``absolute``/``percent``), ``arm`` (``both``/``ketamine``/``saline``),
        ``method`` (``pearson``/``spearman``), ``covariates``
        (``none``/``age+sex``).

    Notes
    -----
    The model is fitted without permutations or bootstrap so that it answers
    at once; its estimates equal ``stats_roi.tsv``'s, whose permutation p
    and bootstrap CIs need ``ketamine-nb stats``.
    """
    return OutcomeExplorer(results, region=region, region_state=region_state)
