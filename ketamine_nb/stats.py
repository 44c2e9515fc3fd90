"""Statistics: does the MD change track the depression change, mainly under ketamine.

The study's model, per region and outcome (Kopelman et al. 2023, as far as
the abstract says): the change in depression score is related to the change
in MD, with a group (treated vs control) x ΔMD interaction. Every choice the
paper left open is made here, once, and can be changed (:class:`StatsConfig`):

* **Design from the data.** The two arms are read from the table; the control
  arm is given (``control="midazolam"``) or recognised by its name
  (:data:`KNOWN_CONTROLS`), the treated arm is the other one; anything but
  exactly two arms is an error. Outcomes are every ``<name>_pre`` /
  ``<name>_post`` pair of score columns; response and remission follow the
  published cut-offs of :data:`OUTCOMES` (add a row for another scale); an
  outcome without a rule gets its change statistics and a note.
* **Model.** ``delta_score ~ delta_md_e6 * C(arm, Treatment(control)) +
  score_pre`` by least squares. Adjusting for the baseline score is the
  standard analysis of change scores in a randomised trial (ANCOVA, Vickers &
  Altman 2001). Covariates (age, sex) are optional; a participant missing one
  leaves every model that uses it. The whole-brain grey-matter ΔMD
  (:data:`~ketamine_nb.regions.GLOBAL_GM`) can enter as a covariate
  (``global_covariate=True``): a drift shared by all regions (scanner,
  hydration, time of day) then no longer passes for a regional effect. The
  global row itself is never modelled as a region.
* **Units.** ``delta_md_e6`` is ΔMD in 10⁻⁶ mm²/s, so slopes read as score
  points per 10⁻⁶ mm²/s. Δ = post − pre for MD and scores, so a *positive*
  slope means a larger MD decrease goes with a larger improvement.
* **Unequal variances.** The arms differ in size (2:1) and need not share the
  residual variance; the classical t and a free permutation of residuals
  then misstate the error rate. The default follows Winkler et al. (2014,
  *Permutation inference for the general linear model*, NeuroImage 92:381):
  the arms are variance groups and exchangeability blocks, the Freedman-Lane
  residuals are permuted *within* each arm (within-block exchangeability;
  errors of one arm are exchangeable among themselves, not with the other
  arm's), and the statistic is Winkler's G, which for one contrast is the
  Aspin-Welch v (weighted by each group's residual variance). Intervals and
  the parametric Welch p use v with its Welch-Satterthwaite degrees of
  freedom. ``statistic="t"`` restores the homoscedastic t with free
  permutations. The classical OLS columns (``se_interaction``,
  ``t_interaction``, ``p_interaction``) are kept for comparison.
* **Multiplicity.** One family: the interaction test of every modelled row
  (regions x outcomes; the global reference excluded). The q values come
  from the permutation p (``q_from="permutation"``, the default; from the
  parametric Welch or t p without permutations or with
  ``q_from="parametric"``; one set of permutations serves every row with the
  same arms, as in PALM), Benjamini-Hochberg (Holm as an option), since the
  paper's correction is unknown. Per-arm slopes, correlations and
  partial correlations are descriptive and uncorrected; ``stats_roi.json``
  (:func:`column_descriptions`) says so column by column.
* **Descriptive columns.** Per arm: Pearson r (Fisher and bootstrap CIs),
  Spearman rho, and the partial r adjusted for the baseline score (as the
  model is); none of them is corrected or used for inference.
* **Reliability.** The control arm's ΔMD spread is the error of a difference
  score; the reliable-change index is centred on the control arm's mean
  change (:func:`reliable_change`).
* **Sensitivity.** Huber regression, the exclusion of sessions and regions
  the pipeline's QC flagged, the global covariate and the voxelwise model's
  orientation (``ΔMD ~ Δscore × arm``) are choices of the robustness grid
  (:mod:`ketamine_nb.robustness`), beside the tensor fit, atlas threshold and
  CSF guard.
* **Comparison with the paper.** :data:`EXPECTED_PATTERN` is what the
  abstract reports per region and outcome (which quantity, which sign); a
  row is ``consistent`` when every reported quantity has the reported sign
  and its 95 % interval excludes 0, ``contradicts`` when one has the other
  sign with an interval excluding 0, ``not estimated`` when no reported
  quantity could be estimated (too few participants), else ``inconclusive``
  (95 % intervals of the configured statistic, uncorrected: a verdict is a reading aid, the
  q values are the inference). Right BA10 is
  judged on the per-arm slopes (the paper found the relation in both arms),
  the hippocampi on MADRS only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .exceptions import InputError, StudyWarning
from .regions import GLOBAL_GM

__all__ = [
    "CHANGES",
    "CORRECTIONS",
    "EXPECTED_PATTERN",
    "KNOWN_CONTROLS",
    "MIN_PER_ARM",
    "OUTCOMES",
    "Q_SOURCES",
    "REMISSION_CUTOFFS",
    "REPORTED_PATTERN",
    "RESPONSE_REDUCTION",
    "STATISTICS",
    "STUDY_DIRECTIONS",
    "VERDICTS",
    "PermutationNull",
    "StatsConfig",
    "adjust_pvalues",
    "bland_altman",
    "clinical_change",
    "clinical_summary",
    "cohort_table",
    "column_descriptions",
    "correlation_table",
    "covariate_error",
    "delta_summary",
    "design_arms",
    "detect_outcomes",
    "freedman_lane",
    "global_covariate_effect",
    "model_formula",
    "multiple_comparisons",
    "partial_correlation",
    "permutation_null",
    "permutation_p",
    "region_stats",
    "reliable_change",
    "stats_input",
    "study_comparison",
    "study_pattern",
]

#: Response: a reduction of at least 50 % from baseline, the usual definition
#: in antidepressant trials for every scale below.
RESPONSE_REDUCTION = 0.5

#: Outcome rules: name -> label, scale maximum, response reduction (fraction
#: of baseline), remission cut-off (post score at or below it) and its source.
#: Add a row (``OUTCOMES["mine"] = {...}``) for another scale; an outcome
#: without a row gets its change statistics only.
OUTCOMES = {
    "madrs": {"label": "MADRS", "max": 60, "response": RESPONSE_REDUCTION, "remission": 10,
              "source": "Hawley et al. 2002, Br J Psychiatry 181:293 (MADRS <= 10)"},
    "qids": {"label": "QIDS-SR", "max": 27, "response": RESPONSE_REDUCTION, "remission": 5,
             "source": "Rush et al. 2006, Am J Psychiatry 163:1905, STAR*D (QIDS-SR16 <= 5)"},
    "hamd": {"label": "HAM-D-17", "max": 52, "response": RESPONSE_REDUCTION, "remission": 7,
             "source": "Frank et al. 1991, Arch Gen Psychiatry 48:851 (HAM-D-17 <= 7)"},
    "bdi": {"label": "BDI-II", "max": 63, "response": RESPONSE_REDUCTION, "remission": 13,
            "source": "Beck, Steer & Brown 1996, BDI-II manual (0-13 minimal; Riedel et al. "
                      "2010, Eur Psychiatry 25:351)"},
}

#: Remission cut-offs per outcome (from :data:`OUTCOMES`).
REMISSION_CUTOFFS = {k: v["remission"] for k, v in OUTCOMES.items()}

#: Arm labels recognised as the control arm when ``control`` is not given.
KNOWN_CONTROLS = ("saline", "placebo", "midazolam", "sham", "control")

#: The reported direction of the MD-score slope per region and arm (+1: a
#: larger MD decrease goes with a larger improvement; -1: the reverse). The
#: region-level summary of :data:`EXPECTED_PATTERN` (which also says the
#: outcome and the quantity judged), used by :func:`study_pattern`.
STUDY_DIRECTIONS = {
    "BA10_L": {"ketamine": 1},
    "BA10_R": {"ketamine": 1, "saline": 1},
    "amygdala_L": {"ketamine": 1},
    "hippocampus_L": {"ketamine": -1},
    "hippocampus_R": {"ketamine": -1},
}

#: What the paper reports, per region and outcome (STUDY.md, from the
#: abstract): ``(region, outcome, judged on, sign)``. ``judged on`` is
#: ``"interaction"`` (treated slope minus control slope), ``"slope_treated"``
#: or ``"slope_control"``. Left BA10 and left amygdala: carried mainly by the
#: ketamine arm (interaction p = 0.016-0.082, scale not restricted). Right
#: BA10: both arms (p = 0.007), so the per-arm slopes, not the interaction.
#: Hippocampi: MD increase with improvement in the ketamine arm, MADRS only.
EXPECTED_PATTERN = (
    ("BA10_L", "madrs", "interaction", 1),
    ("BA10_L", "qids", "interaction", 1),
    ("amygdala_L", "madrs", "interaction", 1),
    ("amygdala_L", "qids", "interaction", 1),
    ("BA10_R", "madrs", "slope_treated", 1),
    ("BA10_R", "madrs", "slope_control", 1),
    ("BA10_R", "qids", "slope_treated", 1),
    ("BA10_R", "qids", "slope_control", 1),
    ("hippocampus_L", "madrs", "slope_treated", -1),
    ("hippocampus_R", "madrs", "slope_treated", -1),
)

#: Verdicts of a row against :data:`EXPECTED_PATTERN`.
VERDICTS = ("consistent", "inconclusive", "contradicts", "not estimated", "not reported")

#: How a change is expressed: points (or 10⁻⁶ mm²/s for ΔMD), or percent of
#: the pre value. Used by :class:`StatsConfig` and the command line.
CHANGES = ("absolute", "percent")

#: Multiple-comparison corrections across the rows of the table
#: (statsmodels' names): Benjamini-Hochberg FDR, or Holm's FWER.
CORRECTIONS = ("fdr_bh", "holm")

#: Test statistic of the interaction: Aspin-Welch v with the arms as
#: variance groups and within-arm permutations (Winkler et al. 2014), or the
#: homoscedastic t with free permutations.
STATISTICS = ("aspin_welch", "t")

#: Which p the q values correct: the permutation p or the parametric one.
Q_SOURCES = ("permutation", "parametric")

#: Fewest participants per arm for which the interaction model is fitted
#: (below it the per-arm slope rests on two points).
MIN_PER_ARM = 3


@dataclass(frozen=True)
class StatsConfig:
    """Every analytic choice of the ROI statistics.

    Attributes
    ----------
    outcomes : tuple of str or None, default=None
        Outcomes to model; None: every ``<name>_pre``/``<name>_post`` pair of
        the scores table (:func:`detect_outcomes`).
    covariates : tuple of str, default=()
        Extra columns of the participants table (e.g. ``("age", "sex")``).
    control : str or None, default=None
        Label of the control arm; None: the one arm whose label is in
        :data:`KNOWN_CONTROLS`.
    global_covariate : bool, default=False
        Add the whole-brain grey-matter ΔMD (same units as ΔMD) to the model.
    change : {"absolute", "percent"}, default="absolute"
        Score change as points (post − pre) or percent of baseline.
    md_change : {"absolute", "percent"}, default="absolute"
        ΔMD in 10⁻⁶ mm²/s or as percent of the pre value.
    statistic : {"aspin_welch", "t"}, default="aspin_welch"
        Interaction statistic and permutation scheme (see the module notes).
    n_permutations : int or None, default=5000
        Freedman-Lane permutations (None or 0: none).
    n_bootstrap : int or None, default=2000
        Bootstrap resamples for the correlation CIs (None or 0: none).
    correction : {"fdr_bh", "holm"}, default="fdr_bh"
        Multiple-comparison correction across all modelled rows.
    q_from : {"permutation", "parametric"}, default="permutation"
        The p the correction is applied to (parametric when there are no
        permutations).
    random_state : int, default=0
        Seed of the permutations and the bootstrap (scikit-learn's name).
    keep_flagged : bool, default=False
        Keep in the model the regional ΔMD values the pipeline kept but
        flagged (``roi_deltas.tsv``'s ``flag``: a participant whose two visits
        or whose atlas registration cannot be trusted, such as
        ``visits_dissimilar``). By default they are left out, with a note.
    """

    outcomes: tuple | None = None
    covariates: tuple = ()
    control: str | None = None
    global_covariate: bool = False
    change: str = "absolute"
    md_change: str = "absolute"
    statistic: str = "aspin_welch"
    n_permutations: int | None = 5000
    n_bootstrap: int | None = 2000
    correction: str = "fdr_bh"
    q_from: str = "permutation"
    random_state: int = 0
    keep_flagged: bool = False

    def __post_init__(self):
        if self.outcomes is not None:
            if isinstance(self.outcomes, str):
                object.__setattr__(self, "outcomes", (self.outcomes,))
            object.__setattr__(self, "outcomes", tuple(self.outcomes))
        object.__setattr__(self, "covariates", tuple(self.covariates))
        for name, allowed in (("change", CHANGES), ("md_change", CHANGES),
                              ("correction", CORRECTIONS), ("statistic", STATISTICS),
                              ("q_from", Q_SOURCES)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} {getattr(self, name)!r} is unknown; use "
                                 f"{' or '.join(allowed)}")
        for name in ("n_permutations", "n_bootstrap"):
            v = getattr(self, name)
            if v is not None and (int(v) != v or v < 0):
                raise InputError(f"{name} must be a whole number >= 0 or None, not {v!r}")


def detect_outcomes(scores: pd.DataFrame) -> tuple:
    """Return the outcome names with both ``<name>_pre`` and ``<name>_post`` columns."""
    cols = set(scores.columns)
    return tuple(c[:-4] for c in scores.columns
                 if c.endswith("_pre") and f"{c[:-4]}_post" in cols)


def design_arms(arms, control: str | None = None) -> tuple[str, str]:
    """Return ``(control, treated)`` from the arm labels of the data.

    Parameters
    ----------
    arms : iterable of str
        The ``arm`` column.
    control : str, optional
        The control arm's label; default: the one label in
        :data:`KNOWN_CONTROLS`.

    Raises
    ------
    InputError
        When there are not exactly two arms, or the control is unknown.
    """
    labels = sorted({str(a) for a in pd.Series(list(arms)).dropna()})
    if len(labels) != 2:
        raise InputError(f"the model needs exactly two arms, found {len(labels)} "
                         f"({', '.join(labels) or 'none'}); keep two arms in the 'arm' column")
    if control is None:
        known = [a for a in labels if a.lower() in KNOWN_CONTROLS]
        if len(known) != 1:
            raise InputError(f"arms {labels[0]!r} and {labels[1]!r}: cannot tell which is the "
                             "control; give it (--control LABEL, StatsConfig(control=...))")
        control = known[0]
    if control not in labels:
        raise InputError(f"control arm {control!r} is not in the data (arms: "
                         f"{', '.join(labels)}); use one of them")
    return control, next(a for a in labels if a != control)


def _arm_term(control: str) -> str:
    return f"C(arm, Treatment({control!r}))"


def _rule(outcome, rules):
    return (rules if rules is not None else OUTCOMES).get(outcome)


def covariate_error(missing, participants, scores) -> InputError:
    """Build the error for covariates in neither table, naming what is there.

    Covariates are participant columns: ``participants.tsv`` first, then
    the columns of the scores table that are not an outcome's
    ``<outcome>_pre``/``<outcome>_post`` pair (a baseline score such as
    ``madrs_pre`` is a legitimate covariate and is named apart).

    Parameters
    ----------
    missing : list of str
        The covariates not found.
    participants : pandas.DataFrame or None
        ``participants.tsv``.
    scores : pandas.DataFrame
        The scores table.

    Returns
    -------
    InputError
        One line: what is missing, the columns of each table, the fix.
    """
    skip = {"participant_id", "arm"}
    pcols = [] if participants is None else [c for c in participants.columns if c not in skip]
    score_cols = [c for c in scores.columns if c not in skip and c not in pcols]
    paired = [c for c in score_cols if str(c).endswith(("_pre", "_post"))]
    other = [c for c in score_cols if c not in paired]
    baseline = [c for c in paired if str(c).endswith("_pre")]
    if participants is None:
        where = "no participants table was given (participants=)"
    else:
        where = ("participants.tsv has "
                 f"{', '.join(map(str, pcols)) or 'no column besides participant_id and arm'}")
    return InputError(
        f"covariate(s) {', '.join(map(str, missing))} not found; {where}"
        + (f"; the scores also have {', '.join(map(str, other))}" if other else "")
        + (f"; baseline scores usable as covariates: {', '.join(map(str, baseline))}"
           if baseline else "")
        + "; add the column to participants.tsv or choose one of these")


def clinical_change(scores: pd.DataFrame, outcomes=None, *, rules=None) -> pd.DataFrame:
    """Score changes, response and remission, in one place.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per participant with ``participant_id``, ``arm`` and
        ``<outcome>_pre``/``<outcome>_post`` columns (NaN = missing).
    outcomes : sequence of str, optional
        Outcomes to compute; default: every pair (:func:`detect_outcomes`).
    rules : dict, optional
        Response/remission rules per outcome; default :data:`OUTCOMES`.

    Returns
    -------
    pandas.DataFrame
        Long table: ``participant_id``, ``arm``, ``outcome``, ``score_pre``,
        ``score_post``, ``delta_score`` (post − pre; negative = improvement),
        ``pct_change`` (100 × delta / pre), ``responder`` (reduction of at
        least the rule's share), ``remitter`` (post at or below the rule's
        cut-off). Missing scores stay missing (``n/a`` is never zero); an
        outcome without a rule has n/a response and remission and a
        :class:`~ketamine_nb.exceptions.StudyWarning` says so.
    """
    outcomes = detect_outcomes(scores) if outcomes is None else tuple(outcomes)
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
        ok = (pre.notna() & post.notna()).to_numpy()
        rule = _rule(o, rules)
        if rule is None:
            warnings.warn(f"outcome {o!r} has no response/remission rule; its change "
                          "statistics are computed, response and remission are n/a (add a "
                          "row to ketamine_nb.stats.OUTCOMES)", StudyWarning, stacklevel=2)
            resp = rem = np.full(len(pre), np.nan)
        else:
            resp = np.where(ok, -delta >= rule["response"] * pre, np.nan)
            rem = np.where(ok, post <= rule["remission"], np.nan)
        frames.append(pd.DataFrame({
            "participant_id": scores["participant_id"].to_numpy(),
            "arm": scores["arm"].to_numpy(), "outcome": o,
            "score_pre": pre.to_numpy(), "score_post": post.to_numpy(),
            "delta_score": delta.to_numpy(), "pct_change": pct.to_numpy(),
            "responder": resp, "remitter": rem}))
    if not frames:
        raise InputError("the scores table has no <outcome>_pre/<outcome>_post column pair")
    return pd.concat(frames, ignore_index=True)


def stats_input(roi_deltas: pd.DataFrame, scores: pd.DataFrame, *,
                config: StatsConfig | None = None, participants: pd.DataFrame | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the exact rows every model sees (long format), and what was dropped.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``participant_id``, ``arm``, ``region``, ``md_pre``, ``md_post``,
        ``delta_md`` (mm²/s), as written by the pipeline; a
        :data:`~ketamine_nb.regions.GLOBAL_GM` row per participant is the
        global reference (never a modelled region).
    scores : pandas.DataFrame
        One row per participant (``madrs_pre`` ...), as from ``load_study``.
    config : StatsConfig, optional
        Outcomes, covariates, global covariate and change definitions.
    participants : pandas.DataFrame, optional
        Source of covariates not in ``scores``.

    Returns
    -------
    rows : pandas.DataFrame
        ``participant_id``, ``arm``, ``region``, ``outcome``, ``delta_md``
        (mm²/s), ``delta_md_e6`` (the model's ΔMD: 10⁻⁶ mm²/s, or percent with
        ``md_change="percent"``), ``score_pre``, ``score_post``,
        ``delta_score`` (the model's outcome: points, or percent with
        ``change="percent"``), ``delta_md_global`` (with
        ``global_covariate``, the model's units) and the covariates. A row
        with a missing value (ΔMD of a flagged region, a score, a covariate,
        the global ΔMD) leaves that region x outcome only.
    dropped : pandas.DataFrame
        ``region``, ``outcome``, ``n_dropped`` and the participants left out.
    """
    config = config or StatsConfig()
    outcomes = detect_outcomes(scores) if config.outcomes is None else config.outcomes
    change = clinical_change(scores, outcomes)
    if config.change == "percent":
        change["delta_score"] = change["pct_change"]
    cov = list(config.covariates)
    extra = scores
    if participants is not None:
        extra = scores.merge(participants.drop(columns=["arm"], errors="ignore"),
                             on="participant_id", how="left", suffixes=("", "_p"))
    missing = [c for c in cov if c not in extra]
    if missing:
        raise covariate_error(missing, participants, scores)
    d = roi_deltas[["participant_id", "arm", "region", "md_pre", "md_post", "delta_md"]].copy()
    d["delta_md"] = pd.to_numeric(d["delta_md"], errors="coerce")
    if "flag" in roi_deltas:
        _leave_out_flagged(d, roi_deltas["flag"], keep=config.keep_flagged,
                           global_used=config.global_covariate)
    d["delta_md_e6"] = (100.0 * d["delta_md"] / d["md_pre"] if config.md_change == "percent"
                        else d["delta_md"] * 1e6)
    is_global = d["region"].astype(str) == GLOBAL_GM
    glob = d.loc[is_global, ["participant_id", "delta_md_e6"]]
    d = d.loc[~is_global]
    extra_cols = []
    if config.global_covariate:
        if glob.empty:
            raise InputError(f"global_covariate needs the {GLOBAL_GM!r} rows of roi_deltas.tsv "
                             "(written by the pipeline); rerun the pipeline or leave the "
                             "global covariate off")
        d = d.merge(glob.rename(columns={"delta_md_e6": "delta_md_global"}),
                    on="participant_id", how="left")
        extra_cols.append("delta_md_global")
    rows = d.merge(change.drop(columns=["arm"]), on="participant_id", how="inner")
    if cov:
        rows = rows.merge(extra[["participant_id", *cov]], on="participant_id", how="left")
    need = ["delta_md_e6", "score_pre", "delta_score", "arm", *extra_cols, *cov]
    bad = rows[need].isna().any(axis=1)
    dropped = (rows[bad].groupby(["region", "outcome"], sort=False)["participant_id"]
               .agg(n_dropped="size", participants=lambda s: ";".join(sorted(s)))
               .reset_index())
    cols = ["participant_id", "arm", "region", "outcome", "delta_md", "delta_md_e6",
            "score_pre", "score_post", "delta_score", *extra_cols, *cov]
    rows = rows.loc[~bad, cols].reset_index(drop=True)
    return rows, dropped


def _leave_out_flagged(d: pd.DataFrame, flag: pd.Series, *, keep: bool,
                       global_used: bool) -> None:
    """Blank (in place) the ΔMD of regions the pipeline flagged but kept, with a note.

    The pipeline gives no number for a region it could not measure (``n/a``
    with the reason); a region it measured in a participant whose visits or
    atlas registration cannot be trusted keeps its number beside the flag.
    Such a number does not enter the model unless ``keep``. The global
    reference is never blanked; with the global covariate a flagged one is
    noted.
    """
    flag = flag.fillna("").astype(str).str.strip().reindex(d.index).fillna("")
    is_global = d["region"].astype(str) == GLOBAL_GM
    hit = (flag != "") & d["delta_md"].notna()
    regional = hit & ~is_global
    if regional.any():
        which = "; ".join(f"{p} {r} ({f})" for p, r, f in zip(
            d.loc[regional, "participant_id"], d.loc[regional, "region"], flag[regional],
            strict=True))
        if keep:
            warnings.warn(f"{int(regional.sum())} flagged regional ΔMD value(s) kept in the "
                          f"model (keep_flagged): {which}", StudyWarning, stacklevel=3)
        else:
            d.loc[regional, "delta_md"] = np.nan
            warnings.warn(f"{int(regional.sum())} regional ΔMD value(s) the pipeline flagged "
                          f"left out of the model: {which}; --keep-flagged "
                          "(StatsConfig(keep_flagged=True)) keeps them", StudyWarning,
                          stacklevel=3)
    if global_used and (hit & is_global).any():
        ids = ", ".join(d.loc[hit & is_global, "participant_id"].astype(str))
        warnings.warn(f"the global covariate ({GLOBAL_GM}) is flagged for {ids} (e.g. a "
                      "partial field of view): it covers only part of their grey matter",
                      StudyWarning, stacklevel=3)


def model_formula(covariates=(), *, control: str = "saline",
                  global_covariate: bool = False) -> str:
    """Return the study's model as a statsmodels formula."""
    f = f"delta_score ~ delta_md_e6 * {_arm_term(control)} + score_pre"
    if global_covariate:
        f += " + delta_md_global"
    return f + "".join(f" + {c}" for c in covariates)


def _design_matrices(df: pd.DataFrame, formula: str):
    from patsy import dmatrices

    y, X = dmatrices(formula, df, return_type="dataframe")
    return y.iloc[:, 0].to_numpy(float), X


def _aligned_design(rows: pd.DataFrame, formula: str):
    """Return the design of every row of ``rows`` (index 0..n-1), NaN where patsy dropped one.

    Returns ``y`` (n,), ``X`` (n, p) and the column names: one patsy call for
    all regions and outcomes, so every model has the same columns.
    """
    y_frame, X_frame = _design_matrices(rows, formula)
    y_all = np.full(len(rows), np.nan)
    y_all[X_frame.index] = y_frame
    X_all = np.full((len(rows), X_frame.shape[1]), np.nan)
    X_all[X_frame.index] = X_frame.to_numpy(float)
    return y_all, X_all, list(X_frame.columns)


def _ols(X, y, names):
    """Least squares with classical (equal-variance) SE, t and p, as statsmodels' OLS."""
    from scipy.stats import t as t_dist

    n = len(y)
    pinv = np.linalg.pinv(X)
    beta = pinv @ y
    e = y - X @ beta
    df = n - np.linalg.matrix_rank(X)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(np.diag(pinv @ pinv.T) * (e @ e) / df)
        t = beta / se
    yc = y - y.mean()
    return {"beta": beta, "se": se, "t": t, "p": 2 * t_dist.sf(np.abs(t), df), "df": float(df),
            "r2": 1 - (e @ e) / (yc @ yc), "names": names}


def _permutations(n, groups, n_permutations, rng):
    """Row orders: free (``groups`` None) or within each group; B x n."""
    if groups is None:
        return rng.permuted(np.broadcast_to(np.arange(n), (n_permutations, n)), axis=1)
    out = np.empty((n_permutations, n), dtype=np.intp)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        out[:, idx] = rng.permuted(np.broadcast_to(idx, (n_permutations, len(idx))), axis=1)
    return out


def _group_weights(E, onehot, trR):
    """Winkler's W per variance group: tr(R_g) / (residuals_g' residuals_g)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return trR / ((E ** 2) @ onehot)


def _welch_df(W, n_g, trR):
    """Welch-Satterthwaite degrees of freedom of v (Winkler et al. 2014, s = 1)."""
    share = W * n_g / (W * n_g).sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / (((1 - share) ** 2) / trR).sum(-1)


def _contrast_test(X, y, c, groups, statistic):
    """Estimate, SE, df and two-sided p of ``c'beta`` (OLS, or Aspin-Welch v)."""
    from scipy.stats import t as t_dist

    n, p = X.shape
    pinv = np.linalg.pinv(X)
    beta = pinv @ y
    e = y - X @ beta
    est = float(c @ beta)
    if statistic == "t":
        se = float(np.sqrt(e @ e / (n - p) * (c @ np.linalg.pinv(X.T @ X) @ c)))
        df = float(n - p)
    else:
        codes = np.unique(groups, return_inverse=True)[1]
        onehot = np.eye(codes.max() + 1)[codes]
        trR = np.diag(np.eye(n) - X @ pinv) @ onehot
        W = _group_weights(e, onehot, trR)
        Wn = onehot @ W
        se = float(np.sqrt(c @ np.linalg.pinv((X * Wn[:, None]).T @ X) @ c))
        df = float(_welch_df(W, onehot.sum(0), trR))
    stat = est / se if se > 0 else np.nan
    p_val = 2 * t_dist.sf(abs(stat), df) if np.isfinite(stat) else np.nan
    return est, se, df, p_val


def _weighted_inverse_jj(X, onehot, W, j):
    """``[(X' diag(w) X)^-1]_jj`` for group weights ``W`` (... x G), w_n = W of n's group.

    With two groups, ``X'WX = (W1 - W2) A1 + W2 S`` (``A1 = X1'X1``, ``S = X'X``);
    with ``S^-1/2 A1 S^-1/2 = V diag(l) V'`` and ``u = V' S^-1/2 e_j`` the element
    is ``sum_i u_i^2 / ((W1 - W2) l_i + W2)``: one eigendecomposition for every
    permutation instead of a solve per permutation.
    """
    p = X.shape[1]
    A = np.einsum("ng,np,nq->gpq", onehot, X, X)
    if A.shape[0] == 2:
        S = A[0] + A[1]
        evals, evecs = np.linalg.eigh(S)
        if evals.min() <= 1e-12 * evals.max():      # rank-deficient design: no statistic
            return np.full(W.shape[:-1], np.nan)
        s_half_inv = evecs @ np.diag(1 / np.sqrt(evals)) @ evecs.T
        lam, V = np.linalg.eigh(s_half_inv @ A[0] @ s_half_inv)
        u2 = (V.T @ s_half_inv[:, j]) ** 2
        w1, w2 = W[..., :1], W[..., 1:]
        return (u2 / ((w1 - w2) * lam + w2)).sum(-1)
    XtWX = np.einsum("...g,gpq->...pq", W, A)
    unit = np.zeros(p)
    unit[j] = 1.0
    rhs = np.broadcast_to(unit, XtWX.shape[:-1])[..., None]
    return np.linalg.solve(XtWX, rhs)[..., j, 0]


def _fl_counts(X, Y, j, groups, n_permutations, rng, statistic, order=None,
               return_statistics=False):
    """Freedman-Lane for a stack of outcomes sharing one design; returns p per row of Y.

    ``Y`` is D x n. The reduced model (without column ``j``) is fitted, its
    residuals permuted (within ``groups`` for the Aspin-Welch v) and added back to
    its fitted values. As the reduced fit lies in the full model's column space,
    the full model's residuals of a permuted outcome are ``(I - H) P r`` and its
    coefficient is ``pinv(X)[j] (fitted + P r)``: no refit is needed, every
    permutation of every outcome is one matrix product. ``order`` (B x n row
    orders) reuses a set of permutations, as PALM uses one set for all tests.
    ``return_statistics=True`` returns the signed statistics instead (D x (B+1),
    column 0 the data as observed): the permutation null distribution.
    """
    n, p = X.shape
    Y = np.atleast_2d(np.asarray(Y, float))
    Xr = np.delete(X, j, axis=1)
    fitted = Y @ (Xr @ np.linalg.pinv(Xr)).T
    resid = Y - fitted
    if order is None:
        order = _permutations(n, None if statistic == "t" else groups, n_permutations, rng)
    perms = np.vstack([np.arange(n), order])            # row 0: the data as observed
    Rp = resid[:, perms]                                 # D x (B+1) x n
    pinv = np.linalg.pinv(X)
    psi = Rp @ pinv[j] + (fitted @ pinv[j])[:, None]
    Q = np.linalg.qr(X)[0]
    A = Rp @ Q                                           # D x (B+1) x p
    if statistic == "t":
        # |(I - H) P r|^2 = |r|^2 - |Q' P r|^2 (a permutation keeps |r|^2).
        rss = (resid ** 2).sum(-1)[:, None] - (A ** 2).sum(-1)
        c = np.linalg.pinv(X.T @ X)[j, j]
        with np.errstate(divide="ignore", invalid="ignore"):
            stat = psi / np.sqrt(np.maximum(rss, 0) / (n - p) * c)
    else:
        codes = np.unique(groups, return_inverse=True)[1]
        onehot = np.eye(codes.max() + 1)[codes]
        trR = np.diag(np.eye(n) - X @ pinv) @ onehot
        # Per group g, with e = P r - Q A: |e_g|^2 = |r_g|^2 - 2 A.(Q_g' P r_g) + A Q_g'Q_g A
        # (within-group permutations keep |r_g|^2): no n-long residual per permutation.
        ss = np.empty(A.shape[:2] + (onehot.shape[1],))
        for g in range(onehot.shape[1]):
            idx = np.flatnonzero(codes == g)
            Qg = Q[idx]
            ss[..., g] = ((resid[:, idx] ** 2).sum(-1)[:, None]
                          - 2 * (A * (Rp[..., idx] @ Qg)).sum(-1)
                          + ((A @ (Qg.T @ Qg)) * A).sum(-1))
        with np.errstate(divide="ignore", invalid="ignore"):
            W = trR / np.maximum(ss, 0)                                   # D x B x G
        with np.errstate(divide="ignore", invalid="ignore"):
            stat = psi / np.sqrt(_weighted_inverse_jj(X, onehot, W, j))
    if return_statistics:
        return stat
    a = np.abs(stat)
    hits = np.count_nonzero(a[:, 1:] >= a[:, :1] - 1e-12 * np.maximum(1, a[:, :1]), axis=1)
    # A degenerate design (no ΔMD spread) has no statistic, hence no p.
    return np.where(np.isfinite(a[:, 0]), (1 + hits) / (1 + n_permutations), np.nan)


def freedman_lane(df: pd.DataFrame, formula: str, term: str, *, n_permutations: int = 5000,
                  random_state=None, statistic: str = "aspin_welch",
                  groups: str | None = "arm") -> float:
    """Freedman-Lane permutation p-value of one term of a linear model.

    The reduced model (without ``term``) is fitted; its residuals are
    permuted and added back to its fitted values; the full model's statistic
    of the term is computed for each permuted outcome (Freedman & Lane 1983;
    Winkler et al. 2014). All permutations are solved at once.

    With ``statistic="aspin_welch"`` (default) the levels of ``groups`` are
    both variance groups and exchangeability blocks: residuals are permuted
    within each group and the statistic is the Aspin-Welch v (Winkler's G for
    one contrast), which weights each group by its own residual variance.
    Winkler et al. (2014) show this keeps the error rate when the groups
    differ in variance, where the t with free permutations does not.

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
    statistic : {"aspin_welch", "t"}, default="aspin_welch"
        See :data:`STATISTICS`.
    groups : str or None, default="arm"
        Column of the variance groups (ignored by ``"t"``).

    Returns
    -------
    float
        Two-sided p = (1 + #{|s*| >= |s|}) / (1 + n_permutations).
    """
    if statistic not in STATISTICS:
        raise InputError(f"statistic {statistic!r} is unknown; use {' or '.join(STATISTICS)}")
    rng = np.random.default_rng(0 if random_state is None else random_state)
    y, X = _design_matrices(df, formula)
    if term not in X.columns:
        raise InputError(f"term {term!r} is not in the model; terms: {', '.join(X.columns)}")
    g = None
    if statistic != "t":
        g = (np.zeros(len(y), int) if groups is None
             else np.unique(df.loc[X.index, groups].astype(str), return_inverse=True)[1])
    return float(_fl_counts(X.to_numpy(float), y, list(X.columns).index(term), g,
                            int(n_permutations), rng, statistic)[0])


def permutation_p(null, observed, *, two_sided: bool = True) -> float:
    """Permutation p of an observed statistic against its null distribution.

    Parameters
    ----------
    null : array-like
        The statistic under each of ``B`` permutations (the data as observed
        not among them).
    observed : float
        The statistic of the data as observed.
    two_sided : bool, default=True
        Count ``|s*| >= |s|`` (as :func:`freedman_lane` and
        :func:`region_stats` do); ``False`` counts ``s* >= s``.

    Returns
    -------
    float
        ``p = (1 + #{s* >= s}) / (1 + B)`` (absolute values when two-sided):
        the observed data count as one of the permutations, so p is never 0
        (Phipson & Smyth 2010). NaN when ``observed`` is not finite.

    Notes
    -----
    A null value within ``1e-12`` (relative) of the observed one counts as
    reaching it, as in :func:`region_stats`, so that a permutation equal to the
    identity is not lost to rounding.
    """
    s = np.asarray(null, float).ravel()
    obs = float(observed)
    if not np.isfinite(obs):
        return float("nan")
    if two_sided:
        s, obs = np.abs(s), abs(obs)
    hits = np.count_nonzero(s >= obs - 1e-12 * max(1.0, abs(obs)))
    return float((1 + hits) / (1 + s.size))


@dataclass(frozen=True)
class PermutationNull:
    """The permutation null distribution of one region's interaction statistic.

    Returned by :func:`permutation_null`; drawn by
    :func:`ketamine_nb.plotting.plot_permutation_null`.

    Attributes
    ----------
    null : numpy.ndarray
        The statistic under each of the ``n_permutations`` Freedman-Lane
        permutations (signed; the data as observed not included).
    observed : float
        The statistic of the data as observed (``v_interaction`` of
        :func:`region_stats` for ``"aspin_welch"``, ``t_interaction`` for ``"t"``).
    p : float
        Two-sided permutation p, :func:`permutation_p` of ``null`` and
        ``observed``; equal to ``p_perm_interaction`` of :func:`region_stats`
        with the same configuration.
    region, outcome : str
        The model.
    statistic : str
        ``"aspin_welch"`` (Aspin-Welch v) or ``"t"``; see :data:`STATISTICS`.
    """

    null: np.ndarray
    observed: float
    p: float
    region: str
    outcome: str
    statistic: str

    @property
    def label(self) -> str:
        """Name of the statistic, for an axis label."""
        return ("Aspin-Welch v of the arm × ΔMD interaction" if self.statistic != "t"
                else "t of the arm × ΔMD interaction")


def permutation_null(rows: pd.DataFrame, region: str, outcome: str, *,
                     config: StatsConfig | dict | None = None) -> PermutationNull:
    """Recompute the permutation null distribution behind one row of :func:`region_stats`.

    The same design, the same permutations (one set per arm pattern, drawn in
    the order :func:`region_stats` draws them, from ``config.random_state``)
    and the same statistic, so the returned ``p`` equals that row's
    ``p_perm_interaction``.

    Parameters
    ----------
    rows : pandas.DataFrame
        Output of :func:`stats_input` (``Results.stats_input``): all regions and
        outcomes, as :func:`region_stats` saw them (the permutations of one
        row depend on the rows before it).
    region, outcome : str
        The model (e.g. ``"BA10_L"``, ``"madrs"``).
    config : StatsConfig or dict, optional
        As given to :func:`region_stats` (a dict, e.g. the run's
        ``stats_config.json``, is passed to :class:`StatsConfig`); default
        ``StatsConfig()`` (5000 permutations, Aspin-Welch v, seed 0), the
        command line's default.

    Returns
    -------
    PermutationNull
        ``null`` (n_permutations signed statistics), ``observed``, ``p``.
    """
    config = StatsConfig(**config) if isinstance(config, dict) else (config or StatsConfig())
    if not config.n_permutations:
        raise InputError("config.n_permutations is 0 or None: there is no permutation null")
    sel = (rows["region"] == region) & (rows["outcome"] == outcome)
    if not sel.any():
        raise InputError(f"no rows for region {region!r} and outcome {outcome!r}; regions: "
                         f"{', '.join(map(str, pd.unique(rows['region'])))}")
    control, treated = design_arms(rows["arm"], config.control)
    formula = model_formula(config.covariates, control=control,
                            global_covariate=config.global_covariate)
    inter = f"delta_md_e6:{_arm_term(control)}[T.{treated}]"
    rows = rows.reset_index(drop=True)
    y_all, X_all, X_cols = _aligned_design(rows, formula)
    j_int = X_cols.index(inter)
    rng = np.random.default_rng(config.random_state)
    B = int(config.n_permutations)
    orders = {}
    # Walk the rows as _region_stats does: the permutations are drawn once per
    # arm pattern, in this order, from one generator.
    for (reg, out), g in rows.groupby(["region", "outcome"], sort=False):
        n_arm = [int((g["arm"] == a).sum()) for a in (treated, control)]
        target = (reg, out) == (region, outcome)
        if min(n_arm) < MIN_PER_ARM:
            if target:
                raise InputError(f"{region}/{outcome}: fewer than {MIN_PER_ARM} participants "
                                 "in an arm, no model and no permutation null")
            continue
        groups = np.unique(g["arm"].astype(str), return_inverse=True)[1]
        key = groups.tobytes()
        if key not in orders:
            orders[key] = _permutations(len(g), None if config.statistic == "t" else groups,
                                        B, rng)
        if target:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                stat = _fl_counts(X_all[g.index], y_all[g.index], j_int, groups, B, rng,
                                  config.statistic, order=orders[key],
                                  return_statistics=True)[0]
            null, observed = np.asarray(stat[1:], float), float(stat[0])
            return PermutationNull(null=null, observed=observed,
                                   p=permutation_p(null, observed), region=str(region),
                                   outcome=str(outcome), statistic=config.statistic)
    raise AssertionError("unreachable")  # pragma: no cover


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


def partial_correlation(x, y, z):
    """Pearson r of ``x`` and ``y`` after regressing both on ``[1, z]``; r, p (df n - 2 - k)."""
    from scipy.stats import t as t_dist

    x, y = np.asarray(x, float), np.asarray(y, float)
    Z = np.column_stack([np.ones(len(x)), np.asarray(z, float).reshape(len(x), -1)])
    k = Z.shape[1] - 1
    dof = len(x) - 2 - k
    if dof < 2:
        return np.nan, np.nan
    P = np.eye(len(x)) - Z @ np.linalg.pinv(Z)
    rx, ry = P @ x, P @ y
    den = np.sqrt((rx @ rx) * (ry @ ry))
    if den == 0:
        return np.nan, np.nan
    r = float(np.clip(rx @ ry / den, -1, 1))
    t = r * np.sqrt(dof / max(1 - r * r, 1e-300))
    return r, float(2 * t_dist.sf(abs(t), dof))


def _verdict(region, outcome, values):
    """Three-way verdict from ``values[target] = (estimate, ci_low, ci_high)``."""
    expected = [(t, s) for r, o, t, s in EXPECTED_PATTERN if r == region and o == outcome]
    if not expected:
        return "not reported", ""
    text = "; ".join(f"{t} {'+' if s > 0 else '-'}" for t, s in expected)
    agree, against, estimated = [], False, False
    for target, sign in expected:
        est, lo, hi = values.get(target, (np.nan, np.nan, np.nan))
        estimated |= bool(np.isfinite(est))
        excludes = np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0)
        agree.append(bool(excludes and np.sign(est) == sign))
        against |= bool(excludes and np.sign(est) == -sign)
    if against:
        return "contradicts", text
    if not estimated:
        return "not estimated", text
    return ("consistent" if all(agree) else "inconclusive"), text


def region_stats(rows: pd.DataFrame, *, config: StatsConfig | None = None) -> pd.DataFrame:
    """Fit the study's model per region and outcome; one row each.

    Parameters
    ----------
    rows : pandas.DataFrame
        Output of :func:`stats_input`.
    config : StatsConfig, optional
        Control arm, statistic, permutations, bootstrap, correction,
        covariates, seed.

    Returns
    -------
    pandas.DataFrame
        One row per region x outcome; :func:`column_descriptions` describes
        every column. With ``T`` the treated and ``C`` the control arm's
        label: ``region``, ``outcome``, ``formula``, ``control_arm``,
        ``treated_arm``, ``n_T``, ``n_C``; per arm ``r_*`` with Fisher and
        bootstrap CIs, ``rho_*``, ``r_partial_*`` (adjusted for the baseline
        score), ``slope_*`` with ``se_``/``p_``/``_ci_low``/``_ci_high``
        (points per 10⁻⁶ mm²/s); ``beta_interaction`` with
        ``interaction_ci_low``/``_high``; the classical OLS
        ``se_interaction``, ``t_interaction``, ``p_interaction``; the
        Aspin-Welch ``v_interaction``, ``df_welch``, ``p_welch_interaction``;
        ``p_perm_interaction``; ``q_fdr`` (or ``q_holm``) with ``q_source``
        and ``family``; ``study_direction`` and ``verdict``.
    """
    from threadpoolctl import threadpool_limits

    # Small matrices: BLAS threads only add overhead (and spin on a busy machine).
    with threadpool_limits(limits=1, user_api="blas"):
        return _region_stats(rows, config or StatsConfig())


def _region_stats(rows: pd.DataFrame, config: StatsConfig) -> pd.DataFrame:
    from scipy.stats import t as t_dist

    if rows.empty:
        raise InputError("no rows to model; check that the ΔMD and score tables share "
                         "participant_id values")
    control, treated = design_arms(rows["arm"], config.control)
    formula = model_formula(config.covariates, control=control,
                            global_covariate=config.global_covariate)
    inter = f"delta_md_e6:{_arm_term(control)}[T.{treated}]"
    corr = correlation_table(rows, n_bootstrap=config.n_bootstrap or 0,
                             random_state=config.random_state)
    corr_by = {(r.region, r.outcome, r.arm): r._asdict() for r in corr.itertuples(index=False)}
    rng = np.random.default_rng(config.random_state)
    arms = (treated, control)
    # One design for every row (patsy once): the same columns in every region x outcome.
    rows = rows.reset_index(drop=True)
    y_all, X_all, X_cols = _aligned_design(rows, formula)
    orders = {}
    out = []
    for (region, outcome), g in rows.groupby(["region", "outcome"], sort=False):
        rec = {"region": region, "outcome": outcome, "formula": formula,
               "control_arm": control, "treated_arm": treated}
        for arm in arms:
            rec[f"n_{arm}"] = int((g["arm"] == arm).sum())
        for arm in arms:
            c = corr_by.get((region, outcome, arm), {})
            names = {"r": f"r_{arm}", "r_ci_low": f"r_{arm}_ci_low",
                     "r_ci_high": f"r_{arm}_ci_high", "r_boot_low": f"r_{arm}_boot_low",
                     "r_boot_high": f"r_{arm}_boot_high", "r_p": f"p_r_{arm}",
                     "rho": f"rho_{arm}", "rho_p": f"p_rho_{arm}"}
            for k, name in names.items():
                rec[name] = c.get(k, np.nan)
            a = g[g["arm"] == arm]
            rec[f"r_partial_{arm}"], rec[f"p_r_partial_{arm}"] = (
                partial_correlation(a["delta_md_e6"], a["delta_score"], a["score_pre"])
                if len(a) >= 4 else (np.nan, np.nan))
        if min(rec[f"n_{treated}"], rec[f"n_{control}"]) < MIN_PER_ARM:
            rec["verdict"], rec["study_direction"] = _verdict(region, outcome, {})
            out.append(rec)
            continue
        idx = g.index
        y, Xn = y_all[idx], X_all[idx]
        names = list(X_cols)
        fit = _ols(Xn, y, names)
        groups = np.unique(g["arm"].astype(str), return_inverse=True)[1]
        j_md, j_int = names.index("delta_md_e6"), names.index(inter)
        contrasts = {control: np.eye(len(names))[j_md],
                     treated: np.eye(len(names))[j_md] + np.eye(len(names))[j_int]}
        for arm, cvec in contrasts.items():
            est, se, df, p = _contrast_test(Xn, y, cvec, groups, config.statistic)
            half = t_dist.ppf(0.975, df) * se
            rec.update({f"slope_{arm}": est, f"se_slope_{arm}": se, f"p_slope_{arm}": p,
                        f"slope_{arm}_ci_low": est - half, f"slope_{arm}_ci_high": est + half})
        est, se, df, p = _contrast_test(Xn, y, np.eye(len(names))[j_int], groups,
                                        config.statistic)
        half = t_dist.ppf(0.975, df) * se
        rec.update(beta_interaction=fit["beta"][j_int], interaction_ci_low=est - half,
                   interaction_ci_high=est + half, se_interaction=fit["se"][j_int],
                   t_interaction=fit["t"][j_int], p_interaction=fit["p"][j_int],
                   df_resid=fit["df"], r2=fit["r2"])
        w = _contrast_test(Xn, y, np.eye(len(names))[j_int], groups, "aspin_welch")
        rec.update(v_interaction=w[0] / w[1], df_welch=w[2], p_welch_interaction=w[3])
        if config.n_permutations:
            # One set of permutations for every row with the same arms, in order
            # (as PALM shares one set across tests): drawn once, reused.
            key = groups.tobytes()
            if key not in orders:
                orders[key] = _permutations(len(y), None if config.statistic == "t"
                                            else groups, int(config.n_permutations), rng)
            rec["p_perm_interaction"] = float(_fl_counts(
                Xn, y, j_int, groups, int(config.n_permutations), rng, config.statistic,
                order=orders[key])[0])
        else:
            rec["p_perm_interaction"] = np.nan
        values = {"interaction": (rec["beta_interaction"], rec["interaction_ci_low"],
                                  rec["interaction_ci_high"])}
        for role, arm in (("slope_treated", treated), ("slope_control", control)):
            values[role] = (rec[f"slope_{arm}"], rec[f"slope_{arm}_ci_low"],
                            rec[f"slope_{arm}_ci_high"])
        rec["verdict"], rec["study_direction"] = _verdict(region, outcome, values)
        out.append(rec)
    table = pd.DataFrame(out)
    # Every column exists even where no model could be fitted (then n/a).
    for col in _model_columns(treated, control):
        if col not in table:
            table[col] = np.nan
    perm = config.q_from == "permutation" and bool(config.n_permutations)
    src = ("p_perm_interaction" if perm else
           "p_welch_interaction" if config.statistic == "aspin_welch" else "p_interaction")
    qcol = "q_fdr" if config.correction == "fdr_bh" else "q_holm"
    table[qcol] = adjust_pvalues(table[src], config.correction)
    m = int(np.isfinite(table[src].to_numpy(float)).sum())
    table["q_source"] = src
    table["family"] = (f"interaction of every modelled region x outcome row ({m} tests, "
                       f"{config.correction}, from {src})")
    order = [c for c in table.columns if c not in ("study_direction", "verdict")]
    return table[[*order, "study_direction", "verdict"]]


def _model_columns(treated, control):
    cols = []
    for arm in (treated, control):
        cols += [f"slope_{arm}", f"se_slope_{arm}", f"p_slope_{arm}", f"slope_{arm}_ci_low",
                 f"slope_{arm}_ci_high"]
    return cols + ["beta_interaction", "interaction_ci_low", "interaction_ci_high",
                   "se_interaction", "t_interaction", "p_interaction", "df_resid", "r2",
                   "v_interaction", "df_welch", "p_welch_interaction", "p_perm_interaction"]


def column_descriptions(table: pd.DataFrame, config: StatsConfig | None = None) -> dict:
    """BIDS-style descriptions of the columns of :func:`region_stats`' table.

    Returns
    -------
    dict
        Column -> ``{"Description": ..., "Units": ..., "Inference": ...}``,
        where ``Inference`` is ``"corrected"`` (the q values, with their
        family), ``"uncorrected test"`` or ``"descriptive"``; written as
        ``stats_roi.json`` beside ``stats_roi.tsv``.
    """
    config = config or StatsConfig()
    slope_u = ("Δscore points per 10⁻⁶ mm²/s of ΔMD" if config.md_change == "absolute"
               else "Δscore points per percent ΔMD")
    if config.change == "percent":
        slope_u = slope_u.replace("Δscore points", "Δscore percent")
    fam = table["family"].iloc[0] if "family" in table and len(table) else ""
    ci = "95 % interval (Aspin-Welch v, Welch df)" if config.statistic == "aspin_welch" \
        else "95 % interval (OLS t)"
    fixed = {
        "region": ("Region", "", "descriptive"),
        "outcome": ("Outcome scale", "", "descriptive"),
        "formula": ("Model (statsmodels formula)", "", "descriptive"),
        "control_arm": ("Control arm label", "", "descriptive"),
        "treated_arm": ("Treated arm label", "", "descriptive"),
        "beta_interaction": ("Treated minus control slope", slope_u, "estimate"),
        "interaction_ci_low": (f"Lower bound, {ci}", slope_u, "uncorrected interval"),
        "interaction_ci_high": (f"Upper bound, {ci}", slope_u, "uncorrected interval"),
        "se_interaction": ("Classical OLS SE of the interaction", slope_u, "descriptive"),
        "t_interaction": ("Classical OLS t of the interaction", "", "descriptive"),
        "p_interaction": ("Classical OLS p of the interaction (equal variances)", "",
                          "uncorrected test"),
        "df_resid": ("OLS residual degrees of freedom", "", "descriptive"),
        "r2": ("OLS R squared", "fraction", "descriptive"),
        "v_interaction": ("Aspin-Welch v of the interaction (arms as variance groups)", "",
                          "descriptive"),
        "df_welch": ("Welch-Satterthwaite degrees of freedom of v", "", "descriptive"),
        "p_welch_interaction": ("Parametric p of v (t with df_welch)", "",
                                "uncorrected test"),
        "p_perm_interaction": (f"Freedman-Lane permutation p ({config.statistic}, "
                               f"{config.n_permutations} permutations"
                               + (", within arms" if config.statistic == "aspin_welch"
                                  else ", free") + ")", "", "uncorrected test"),
        "q_fdr": ("Benjamini-Hochberg q", "", f"corrected: {fam}"),
        "q_holm": ("Holm-adjusted p", "", f"corrected: {fam}"),
        "q_source": ("The p column the q values correct", "", "descriptive"),
        "family": ("The family of tests corrected together", "", "descriptive"),
        "study_direction": ("What the paper reports for this region and outcome "
                            "(quantity and sign)", "", "descriptive"),
        "verdict": ("consistent: every reported quantity has the reported sign and its "
                    "interval excludes 0; contradicts: one has the other sign with an "
                    "interval excluding 0; not estimated: too few participants; else "
                    "inconclusive", "", "descriptive"),
    }
    out = {}
    for col in table.columns:
        if col in fixed:
            d, u, inf = fixed[col]
        elif col.startswith("n_"):
            d, u, inf = f"Participants modelled, arm {col[2:]}", "", "descriptive"
        elif col.startswith("r_partial_"):
            d, u, inf = (f"Pearson r of ΔMD and Δscore adjusted for the baseline score, "
                         f"arm {col[10:]}", "", "descriptive")
        elif col.startswith("p_r_partial_"):
            d, u, inf = "p of the partial correlation", "", "descriptive (uncorrected)"
        elif col.startswith(("r_", "rho_", "p_r_", "p_rho_")):
            d, u, inf = ("Correlation of ΔMD and Δscore within an arm (raw), its CI or p",
                         "", "descriptive (uncorrected)")
        elif col.startswith(("slope_", "se_slope_", "p_slope_")):
            d, u, inf = (f"Simple slope of Δscore on ΔMD within one arm, its SE, p or {ci}",
                         slope_u, "descriptive (uncorrected)")
        else:
            d, u, inf = col, "", "descriptive"
        out[col] = {"Description": d, "Units": u, "Inference": inf}
    return out


def reliable_change(roi_deltas: pd.DataFrame, *, reference_arm: str | None = None,
                    z: float = 1.96) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reliability of ΔMD: the reference (control) arm's spread as measurement error.

    The control arm is not expected to change MD, so the SD of ΔMD in it
    estimates the error of a difference score in each region (it also holds
    any true control effect, so it is an upper bound on pure measurement
    error). The reliable-change index of a participant is centred on the
    control arm's mean change, so that a drift shared by everyone (scanner,
    season) is not counted as change:
    ``RCI = (ΔMD − mean_control(ΔMD)) / SD_control(ΔMD)`` (Jacobson & Truax
    1991, with the error SD of the difference estimated directly);
    ``|RCI| > z`` is a change larger than measurement error at 95 %.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``participant_id``, ``arm``, ``region``, ``md_pre``, ``delta_md`` (mm²/s).
    reference_arm : str, optional
        Arm whose ΔMD spread is the error; default: the control arm
        (:func:`design_arms`).
    z : float, default=1.96
        Threshold of a reliable change.

    Returns
    -------
    per_participant : pandas.DataFrame
        ``participant_id``, ``arm``, ``region``, ``delta_md``, ``rci``,
        ``reliable`` (bool).
    per_region : pandas.DataFrame
        ``region``, ``reference_arm``, ``mean_delta_reference`` and
        ``sd_delta_reference`` (mm²/s), ``sem_session`` (the
        per-session error SD, sd / sqrt(2)), ``cv_percent`` (per-session
        error as percent of the mean pre MD) and the share of reliable
        changes per arm.
    """
    d = roi_deltas[["participant_id", "arm", "region", "md_pre", "delta_md"]].copy()
    d["delta_md"] = pd.to_numeric(d["delta_md"], errors="coerce")
    if reference_arm is None:
        reference_arm = design_arms(d["arm"])[0]
    ref = d[d["arm"] == reference_arm].groupby("region", sort=False)
    sd, mean = ref["delta_md"].std(ddof=1), ref["delta_md"].mean()
    if sd.isna().all():
        raise InputError(f"no {reference_arm} participants with ΔMD; the reference arm "
                         "needs at least two")
    d["rci"] = (d["delta_md"] - d["region"].map(mean)) / d["region"].map(sd)
    # A region never measured (n/a) has no share of reliable changes, not 0 %.
    d["reliable"] = (d["rci"].abs() > z).where(d["rci"].notna())
    summary = pd.DataFrame({"reference_arm": reference_arm, "mean_delta_reference": mean,
                            "sd_delta_reference": sd, "sem_session": sd / np.sqrt(2)})
    summary["cv_percent"] = 100 * summary["sem_session"] / d.groupby("region")["md_pre"].mean()
    share = d.pivot_table(index="region", columns="arm", values="reliable", aggfunc="mean")
    for arm in share.columns:
        summary[f"reliable_share_{arm}"] = share[arm]
    per_region = summary.reset_index()
    return d.drop(columns=["md_pre"]), per_region


def bland_altman(roi_deltas: pd.DataFrame, region: str, *, arm: str | None = None,
                 z: float = 1.96) -> tuple[pd.DataFrame, pd.Series]:
    """Bland-Altman agreement of the two visits in one region and arm.

    In the control arm nothing is expected to change MD in 24 h, so the two
    visits are a test-retest pair: the mean difference (bias) is a drift
    shared by the arm and the limits of agreement say how far one
    participant's ΔMD can stray by measurement error alone (Bland & Altman
    1986).

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``Results.roi_deltas``: ``participant_id``, ``arm``, ``region``,
        ``md_pre``, ``md_post`` (mm²/s).
    region : str
        Region (e.g. ``"BA10_L"``).
    arm : str, optional
        Arm; default: the control arm (:func:`design_arms`; saline in the study).
    z : float, default=1.96
        Width of the limits in SDs (1.96: 95 % of differences, if normal).

    Returns
    -------
    per_participant : pandas.DataFrame
        ``participant_id``, ``arm``, ``md_pre``, ``md_post``, ``mean_md``
        (the mean of the two visits) and ``difference`` (post − pre), mm²/s;
        participants missing a visit are left out.
    summary : pandas.Series
        ``region``, ``arm``, ``n``; ``bias`` (mean difference), ``sd`` (SD of
        the differences, ddof = 1), ``loa_low``/``loa_high`` (bias ∓ z SD),
        all mm²/s.

    Notes
    -----
    difference = MD(post) − MD(pre); bias = mean(difference);
    limits of agreement = bias ± z · SD(difference).

    References
    ----------
    Bland JM, Altman DG (1986). Statistical methods for assessing agreement
    between two methods of clinical measurement. Lancet 327:307-310.
    """
    missing = [c for c in ("participant_id", "arm", "region", "md_pre", "md_post")
               if c not in roi_deltas]
    if missing:
        raise InputError(f"the table has no {', '.join(missing)} column; pass "
                         "Results.roi_deltas")
    if arm is None:
        arm = design_arms(roi_deltas["arm"].dropna())[0]
    d = roi_deltas[(roi_deltas["region"] == region) & (roi_deltas["arm"] == arm)]
    d = d[["participant_id", "arm", "md_pre", "md_post"]].apply(
        lambda c: pd.to_numeric(c, errors="coerce") if c.name.startswith("md_") else c)
    d = d.dropna(subset=["md_pre", "md_post"]).reset_index(drop=True)
    if len(d) < 2:
        raise InputError(f"{region}, arm {arm!r}: {len(d)} participant(s) with both visits; "
                         "Bland-Altman needs at least two (check the region and arm names)")
    d["mean_md"] = (d["md_pre"] + d["md_post"]) / 2
    d["difference"] = d["md_post"] - d["md_pre"]
    bias, sd = float(d["difference"].mean()), float(d["difference"].std(ddof=1))
    summary = pd.Series({"region": region, "arm": arm, "n": len(d), "bias": bias, "sd": sd,
                         "loa_low": bias - z * sd, "loa_high": bias + z * sd})
    return d, summary


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
        ``study_direction`` (the reported quantities and signs), the per-arm
        ``slope_*`` with their 95 % intervals, ``beta_interaction`` with its
        interval, ``p_interaction``, ``p_perm_interaction``, ``q`` (FDR or
        Holm), ``verdict`` (``consistent``, ``inconclusive``,
        ``contradicts``, ``not estimated`` or ``not reported``; see
        :data:`EXPECTED_PATTERN`)
        and ``significant`` (``q < alpha``).

    Notes
    -----
    For right BA10 the paper reports the relation in both arms, so no arm
    difference (interaction) is expected there: its verdict reads the two
    per-arm slopes. The hippocampal relation was reported for MADRS only.
    """
    t = stats_roi if outcome is None else stats_roi[stats_roi["outcome"] == outcome]
    if t.empty:
        raise InputError(f"no rows for outcome {outcome!r}")
    qcol = next((c for c in ("q_fdr", "q_holm") if c in t), None)
    out = pd.DataFrame({
        "region": t["region"].to_numpy(), "outcome": t["outcome"].to_numpy(),
        "reported": [REPORTED_PATTERN.get(r, "not reported") for r in t["region"]]})
    slope_cols = [c for c in t.columns if c.startswith("slope_")]
    for col in ("study_direction", *slope_cols, "beta_interaction", "interaction_ci_low",
                "interaction_ci_high", "p_interaction", "p_perm_interaction"):
        out[col] = t[col].to_numpy() if col in t else np.nan
    out["q"] = t[qcol].to_numpy(float) if qcol else np.nan
    out["verdict"] = t["verdict"].to_numpy() if "verdict" in t else "not reported"
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
    for o in detect_outcomes(scores):
        for ses in ("pre", "post"):
            col = f"{o}_{ses}"
            if col in scores:
                out[f"{col}_mean"] = g[col].mean()
    return out.reset_index()


def clinical_summary(scores: pd.DataFrame, *, outcomes=None) -> pd.DataFrame:
    """Score change, response and remission per arm and outcome.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per participant (``Results.scores``).
    outcomes : sequence of str, optional
        Outcomes; default: every ``<name>_pre``/``<name>_post`` pair.

    Returns
    -------
    pandas.DataFrame
        ``outcome``, ``arm``, ``n`` (with both scores), ``pre_mean``,
        ``post_mean``, ``delta_mean`` and ``delta_sd`` (post − pre, points;
        negative = better), ``responders_percent`` (a reduction of at least
        50 %) and ``remitters_percent`` (post at or below the cut-off; n/a
        for an outcome without a rule in :data:`OUTCOMES`), from
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
                "holm": "family-wise error, never less powerful than Bonferroni",
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


def global_covariate_effect(roi_deltas: pd.DataFrame, scores: pd.DataFrame, *,
                            participants: pd.DataFrame | None = None,
                            config: StatsConfig | None = None) -> pd.DataFrame:
    """Fit the model with and without the global ΔMD covariate, side by side.

    A change shared by every region (scanner drift, hydration, a global
    effect of the drug) correlates with Δscore in every region at once, so
    regions where nothing was planted can look "significant" per arm. Adding
    the whole-brain grey-matter ΔMD (the ``global_gm`` rows the pipeline
    writes) as a covariate asks what a region does beyond that shared change.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``Results.roi_deltas``, with the :data:`ketamine_nb.regions.GLOBAL_GM` rows.
    scores : pandas.DataFrame
        One row per participant (``Results.scores``).
    participants : pandas.DataFrame, optional
        Covariates not in ``scores``.
    config : StatsConfig, optional
        The analytic choices (its ``global_covariate`` is set both ways);
        default: no permutations and no bootstrap, for speed (parametric p).

    Returns
    -------
    pandas.DataFrame
        One row per region x outcome: for each arm, the simple slope's p
        without and with the covariate (``p_slope_<arm>``,
        ``p_slope_<arm>_global``) and the interaction's p likewise
        (``p_interaction``, ``p_interaction_global``).

    Raises
    ------
    InputError
        The table has no global reference rows (an older pipeline output).
    """
    from dataclasses import replace

    from .regions import GLOBAL_GM

    if GLOBAL_GM not in set(roi_deltas["region"]):
        raise InputError(f"no {GLOBAL_GM!r} rows in roi_deltas; rerun 'ketamine-nb run' "
                         "(the pipeline writes the whole-brain grey-matter reference)")
    config = config or StatsConfig(n_permutations=0, n_bootstrap=0)
    out = []
    for flag in (False, True):
        cfg = replace(config, global_covariate=flag)
        rows, _ = stats_input(roi_deltas, scores, config=cfg, participants=participants)
        out.append(region_stats(rows, config=cfg))
    plain, glob = out
    keys = ["region", "outcome"]
    cols = [c for c in plain.columns
            if c.startswith("p_slope_") or c == "p_interaction"]
    merged = plain[keys + cols].merge(glob[keys + cols], on=keys, suffixes=("", "_global"))
    order = [c for pair in ((c, f"{c}_global") for c in cols) for c in pair]
    return merged[keys + order]
