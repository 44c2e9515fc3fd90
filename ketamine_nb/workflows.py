"""Workflows: the steps chained as the command line and the notebooks run them.

The analysis modules each do one thing on tables and images they are
handed (:mod:`~ketamine_nb.stats`, :mod:`~ketamine_nb.robustness`,
:mod:`~ketamine_nb.voxelwise`); the pipeline turns a BIDS dataset into a
derivatives folder (:mod:`~ketamine_nb.pipeline`). This module reads a
derivatives folder, runs the analyses, writes their tables back
(:func:`run_stats`), and builds the demo (:func:`build_demo`): the ONE code
path used by ``ketamine-nb demo``, by :func:`demo_results` (the notebooks'
first call) and by Binder's ``postBuild``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from ._utils import write_json, write_tsv
from .derivatives import TABLES, load_cohort_voxels, read_tsv
from .exceptions import InputError, StudyWarning
from .regions import GLOBAL_GM
from .results import Results, load_results
from .robustness import robustness_grid
from .stats import (
    StatsConfig,
    column_descriptions,
    region_stats,
    reliable_change,
    stats_input,
)

__all__ = [
    "DEMO_N_JOBS",
    "DemoResult",
    "StatsResult",
    "build_demo",
    "demo_results",
    "run_stats",
]

#: Worker processes used to build the demo: the two cores of a Binder
#: container or of a small laptop (more only helps where there are more).
DEMO_N_JOBS = 2


@dataclass
class StatsResult:
    """What :func:`run_stats` computed (and wrote into the derivatives folder).

    Attributes
    ----------
    out_dir : pathlib.Path
        The derivatives folder the tables were written to.
    config : StatsConfig
        The analytic choices.
    stats_roi : pandas.DataFrame
        One row per region x outcome (``stats_roi.tsv``).
    stats_input : pandas.DataFrame
        The exact rows every model saw (``stats_input.tsv``).
    dropped : pandas.DataFrame
        Per region x outcome, the participants left out for missing values.
    reliability : pandas.DataFrame or None
        The reference arm's ΔMD spread per region (``reliability.tsv``);
        None with fewer than two reference participants.
    robustness : pandas.DataFrame or None
        The robustness grid (``robustness.tsv``) when asked.
    voxelwise : dict of str to VoxelwiseResult
        Per outcome, the voxelwise test when asked (``voxelwise/``).
    columns : dict
        What each column of ``stats_roi`` means, which are corrected and
        which descriptive (``stats_roi.json``).
    notes : list of str
        What the user should know (an outcome without a response rule...).
    """

    out_dir: Path
    config: StatsConfig
    stats_roi: pd.DataFrame
    stats_input: pd.DataFrame
    dropped: pd.DataFrame
    reliability: pd.DataFrame | None = None
    robustness: pd.DataFrame | None = None
    voxelwise: dict = field(default_factory=dict)
    columns: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def _scores_and_participants(out: Path, bids_dir, pre: str, post: str):
    if bids_dir is not None:
        from .study import load_study

        study = load_study(bids_dir, pre=pre, post=post)
        return study.scores, study.participants
    sp = out / TABLES["scores"]
    if not sp.is_file():
        raise InputError(f"{sp}: not found; pass --bids BIDS_DIR to read the scores from "
                         "the raw dataset")
    return read_tsv(sp), read_tsv(out / TABLES["participants"], missing_ok=True)


def run_stats(out_dir, *, bids_dir=None, config: StatsConfig | None = None, pre: str = "pre",
              post: str = "post", robustness: bool = False, voxelwise: bool = False,
              voxelwise_permutations: int = 1000) -> StatsResult:
    """Run the ROI statistics on a pipeline output folder and write the tables.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Folder written by ``ketamine-nb run`` (needs ``roi_deltas.tsv``).
    bids_dir : str or pathlib.Path, optional
        Raw dataset to read the scores from; default: the ``scores.tsv`` the
        pipeline copied into ``out_dir``.
    config : StatsConfig, optional
        Analytic choices (:class:`ketamine_nb.stats.StatsConfig`).
    pre, post : str, default="pre", "post"
        Session labels (with ``bids_dir``).
    robustness : bool, default=False
        Also run :func:`ketamine_nb.robustness.robustness_grid` (``robustness.tsv``).
    voxelwise : bool, default=False
        Also run :func:`ketamine_nb.voxelwise.voxelwise_inference` per outcome
        (``voxelwise/``).
    voxelwise_permutations : int, default=1000
        Permutations of the voxelwise test.

    Returns
    -------
    StatsResult
        The tables, also written to ``out_dir`` as ``stats_roi.tsv`` (with
        ``stats_roi.json``: what each column means, which are corrected
        across which family and which are descriptive), ``stats_input.tsv``,
        ``reliability.tsv`` (+ ``robustness.tsv``, ``voxelwise/``) with
        ``stats_config.json``. With the robustness grid, ``roi_md.tsv``'s QC
        flags feed its QC-exclusion choice.
    """
    config = config or StatsConfig()
    out = Path(out_dir)
    deltas_path = out / TABLES["roi_deltas"]
    if not deltas_path.is_file():
        raise InputError(f"{deltas_path}: not found; run 'ketamine-nb run BIDS_DIR {out_dir}' "
                         "first")
    deltas = read_tsv(deltas_path)
    scores, participants = _scores_and_participants(out, bids_dir, pre, post)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StudyWarning)
        rows, dropped = stats_input(deltas, scores, config=config, participants=participants)
    notes = list(dict.fromkeys(str(w.message) for w in caught
                               if issubclass(w.category, StudyWarning)))
    if rows.empty:
        regional = deltas[deltas["region"].astype(str) != GLOBAL_GM]
        if len(regional) and pd.to_numeric(regional["delta_md"], errors="coerce").isna().all():
            why = (", ".join(sorted(set(";".join(regional["flag"].dropna().astype(str))
                                        .split(";")) - {""}))
                   if "flag" in regional else "")
            raise InputError(f"{deltas_path}: no region has a ΔMD to model"
                             f"{f' (flags: {why})' if why else ''}; the regions lie outside "
                             "the field of view or the brain mask, or their registration "
                             "cannot be trusted: see the flag column")
        raise InputError(f"{deltas_path}: no participant has both a ΔMD and the scores; check "
                         "that participant_id values match the scores table")
    lost = sorted(set(deltas["arm"].dropna().astype(str)) - set(rows["arm"].astype(str)))
    if lost:
        raise InputError(f"{deltas_path}: no {' or '.join(lost)} participant has both a ΔMD "
                         "and the scores, so the arms cannot be compared; check their rows and "
                         "score columns in the scores table")
    table = region_stats(rows, config=config)
    control = table["control_arm"].iloc[0]
    columns = column_descriptions(table, config)
    try:
        _, reliability = reliable_change(deltas, reference_arm=control)
    except InputError:  # fewer than two control participants: no error estimate
        reliability = None
    write_tsv(rows, out / TABLES["stats_input"])
    write_tsv(table, out / TABLES["stats_roi"])
    write_json(columns, out / "stats_roi.json")
    if reliability is not None:
        write_tsv(reliability, out / TABLES["reliability"])
    else:  # an earlier run's table would describe other data
        (out / TABLES["reliability"]).unlink(missing_ok=True)
    write_json(asdict(config), out / "stats_config.json")
    result = StatsResult(out_dir=out, config=config, stats_roi=table, stats_input=rows,
                         dropped=dropped, reliability=reliability, columns=columns,
                         notes=notes)
    if robustness:
        grid, grid_notes = _robustness(out, scores, participants, pre=pre, post=post,
                                       control=control)
        result.notes += grid_notes
        write_tsv(grid, out / TABLES["robustness"])
        result.robustness = grid
    if voxelwise:
        from .voxelwise import voxelwise_inference

        result.voxelwise = {o: voxelwise_inference(out, scores, outcome=o, pre=pre, post=post,
                                                   n_permutations=voxelwise_permutations,
                                                   random_state=config.random_state)
                            for o in config.outcomes}
    return result


@dataclass
class DemoResult:
    """What :func:`build_demo` did.

    Attributes
    ----------
    demo_dir : pathlib.Path
        The demo folder (``bids/`` and ``derivatives/`` inside).
    bids_dir, derivatives : pathlib.Path
        The simulated cohort and what the pipeline made of it.
    simulated : bool
        False when an existing cohort was reused.
    pipeline : PipelineResult
        Per-session status and the cohort tables.
    stats : StatsResult
        The statistics.
    seconds : float
        Wall time of the whole build.
    """

    demo_dir: Path
    bids_dir: Path
    derivatives: Path
    simulated: bool
    pipeline: object
    stats: StatsResult
    seconds: float

    @property
    def exit_code(self) -> int:
        """0 when every session worked, 1 when some failed (the rest is complete)."""
        return self.pipeline.exit_code


def build_demo(demo_dir, *, params=None, random_state: int = 0, config=None,
               stats_config: StatsConfig | None = None, n_jobs: int = DEMO_N_JOBS,
               simulate_n_jobs: int | None = None, force: bool = False,
               progress: bool = True, voxelwise: bool = False,
               voxelwise_permutations: int = 1000, log=None) -> DemoResult:
    """Simulate the demo cohort (unless it is there), process it and fit the statistics.

    The robustness grid is always computed: notebook 06 reads it.

    Parameters
    ----------
    demo_dir : str or pathlib.Path
        The demo folder; the cohort goes to ``demo_dir/bids`` and the
        pipeline's output to ``demo_dir/derivatives``.
    params : SimulationParams, optional
        The simulation (default: :class:`ketamine_nb.simulate.SimulationParams`).
    random_state : int, default=0
        Seed of the simulated cohort.
    config : PipelineConfig, optional
        Processing choices.
    stats_config : StatsConfig, optional
        Analytic choices.
    n_jobs : int, default=DEMO_N_JOBS
        Worker processes for the pipeline (and the simulation, unless
        ``simulate_n_jobs`` is given).
    simulate_n_jobs : int, optional
        Worker processes for the simulation (``--jobs`` of ``ketamine-nb
        demo``); the simulated files are the same whatever the number.
    force : bool, default=False
        Simulate and process again even when done before.
    progress : bool, default=True
        Show progress bars.
    voxelwise : bool, default=False
        Also run the voxelwise test.
    voxelwise_permutations : int, default=1000
        Its permutations.
    log : callable, optional
        Called with one line of text per step (the command line passes
        ``print``); default: silent.

    Returns
    -------
    DemoResult
        Paths, the pipeline's and the statistics' results.
    """
    from .pipeline import run_pipeline
    from .simulate import simulate_cohort

    log = log or (lambda line: None)
    t0 = time.perf_counter()
    demo = Path(demo_dir)
    bids, deriv = demo / "bids", demo / "derivatives"
    simulated = force or not (bids / "dataset_description.json").exists()
    if simulated:
        n = params.n_subjects if params is not None else "the default"
        log(f"Simulating the demo cohort ({n} participants) in {bids}")
        simulate_cohort(bids, params=params, seed=random_state,
                        n_jobs=n_jobs if simulate_n_jobs is None else simulate_n_jobs,
                        progress=progress, overwrite=True)
    else:
        log(f"Simulated cohort already in {bids} (use --force to make it again)")
    log(f"Processing every session into {deriv}")
    res = run_pipeline(bids, deriv, config=config, n_jobs=n_jobs, force=force,
                       progress=progress)
    stats = run_stats(deriv, config=stats_config, robustness=True, voxelwise=voxelwise,
                      voxelwise_permutations=voxelwise_permutations)
    return DemoResult(demo_dir=demo, bids_dir=bids, derivatives=deriv, simulated=simulated,
                      pipeline=res, stats=stats, seconds=time.perf_counter() - t0)


def _robustness(out: Path, scores, participants, *, pre: str = "pre", post: str = "post",
                control: str | None = None):
    """Compute the robustness grid of a derivatives folder, with the notes it raised.

    One code path for :func:`run_stats` and for a demo prepared without the
    grid, so that both give the same table.
    """
    roi_md = read_tsv(out / TABLES["roi_md"], missing_ok=True)
    deltas = read_tsv(out / TABLES["roi_deltas"], missing_ok=True)
    if roi_md is not None and deltas is not None and "flag" in deltas:
        # Flags the pipeline gives a participant's ΔMD (visits or atlas
        # registration not to be trusted) are in roi_deltas.tsv only.
        roi_md = pd.concat([roi_md, deltas[["participant_id", "region", "flag"]]],
                           ignore_index=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StudyWarning)
        voxels = load_cohort_voxels(out, float_dtype="float32")   # 15 M rows on the demo
        grid = robustness_grid(voxels, scores, pre=pre, post=post,
                               participants=participants, control=control, qc=roi_md)
    return grid, [str(w.message) for w in caught if issubclass(w.category, StudyWarning)]


def _add_robustness_grid(deriv: Path) -> None:
    """Add ``robustness.tsv`` to a demo prepared without it (by an earlier ketamine-nb).

    Only the grid is computed: the other statistics, possibly made with the
    user's own settings, are left as they are. A demo that cannot be written
    (shared read-only) stays without the grid, with a warning.
    """
    scores = read_tsv(deriv / TABLES["scores"])
    participants = read_tsv(deriv / TABLES["participants"], missing_ok=True)
    table = read_tsv(deriv / TABLES["stats_roi"], missing_ok=True)
    control = (table["control_arm"].iloc[0]           # the control arm the statistics used
               if table is not None and "control_arm" in table and len(table) else None)
    grid, _ = _robustness(deriv, scores, participants, control=control)
    try:
        write_tsv(grid, deriv / TABLES["robustness"])
    except OSError as exc:
        warnings.warn(f"{deriv}: cannot write robustness.tsv ({exc}); notebook 06's "
                      "robustness part needs it: run 'ketamine-nb demo' where you can write",
                      stacklevel=3)


def demo_results(data_dir=None, *, prepare: bool = True, n_subjects: int | None = None,
                 n_jobs: int = DEMO_N_JOBS) -> Results:
    """Load the demo's results, preparing the demo first when it is missing.

    The notebooks start here. The demo lives in the data home
    (``data_dir``, else ``KETAMINE_NB_DATA``, else ``~/ketamine_nb_data``);
    when it is missing it is built by :func:`build_demo` with progress bars
    (benchmarks/RESULTS.md gives the time on 2 cores; Binder's postBuild
    builds it at image build time).

    Parameters
    ----------
    data_dir : str or pathlib.Path, optional
        Data home.
    prepare : bool, default=True
        Build the demo when missing; with False a missing demo is an error.
    n_subjects : int, optional
        Cohort size when building (default: the simulation's, 98).
    n_jobs : int, default=DEMO_N_JOBS
        Worker processes when building.

    Returns
    -------
    Results
        The demo's results.
    """
    from .datasets import get_demo_dir

    demo = get_demo_dir(data_dir)
    deriv = demo / "derivatives"
    if prepare and (deriv / TABLES["stats_roi"]).is_file() \
            and not (deriv / TABLES["robustness"]).is_file():
        _add_robustness_grid(deriv)
    if not (deriv / TABLES["stats_roi"]).is_file():
        if not prepare:
            raise InputError(f"{deriv}: the demo is not prepared; run 'ketamine-nb demo'")
        params = None
        if n_subjects is not None:
            from .simulate import SimulationParams

            params = SimulationParams(n_subjects=n_subjects)
        build_demo(demo, params=params, n_jobs=n_jobs)
    return load_results(deriv)
