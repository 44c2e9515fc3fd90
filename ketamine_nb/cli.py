"""The ``ketamine-nb`` command line: one subcommand per job, ``--help`` on each."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _add_simulation_args(p: argparse.ArgumentParser) -> None:
    from .simulate import PRESETS, SimulationParams

    d = SimulationParams()
    g = p.add_argument_group(
        "simulated cohort",
        "presets: teaching = a strong planted effect (default); paper = the effect the "
        "paper's p values imply (ketamine-arm r about 0.3, interaction power 25-60 %); "
        "null = no relation between MD change and score change. The cohort is realistic "
        "by default: each participant's own anatomy and the scanner's artefacts (motion "
        "within the series, eddy currents, susceptibility distortion, drift, multi-channel "
        "noise); --idealised switches them off (see data/README.md)")
    g.add_argument("--preset", choices=PRESETS, default="teaching",
                   help="planted effect (default teaching)")
    real = g.add_mutually_exclusive_group()
    real.add_argument("--realistic", dest="realistic", action="store_true", default=True,
                      help="own anatomy per participant and scanner artefacts at realistic "
                           "values (the default)")
    real.add_argument("--idealised", dest="realistic", action="store_false",
                      help="every participant the template's brain, no artefacts within a "
                           "series, single-channel noise: the idealised cohort (faster to "
                           "process; what each artefact costs the pipeline is in "
                           "data/README.md)")
    g.add_argument("--subjects", type=int, default=d.n_subjects, metavar="N",
                   help=f"number of participants, randomised 2:1 (default {d.n_subjects})")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of everything random in the cohort (default 0)")
    g.add_argument("--directions", type=int, default=d.n_directions, metavar="N",
                   help=f"diffusion directions (default {d.n_directions})")
    g.add_argument("--b0", type=int, default=d.n_b0, metavar="N",
                   help=f"b=0 volumes (default {d.n_b0})")
    g.add_argument("--bval", type=float, default=d.bval,
                   help=f"b-value in s/mm² (default {d.bval:g})")
    g.add_argument("--voxel-size", type=float, default=d.voxel_size, metavar="MM",
                   help=f"isotropic voxel size in mm (default {d.voxel_size:g})")
    g.add_argument("--snr", type=float, default=d.snr,
                   help=f"b0 SNR in grey matter (default {d.snr:g})")
    g.add_argument("--effect-slope", type=float, default=None, metavar="S",
                   help="planted relative MD change per MADRS point (default: the "
                        f"preset's, {d.effect_slope:g} for teaching; 0 plants no effect)")
    g.add_argument("--jobs", dest="jobs", type=int,
                   default=min(2, os.cpu_count() or 1), metavar="N",
                   help="worker processes of the simulation (default: up to 2)")


def _params_from_args(args):
    from .simulate import SimulationParams

    extra = {} if args.effect_slope is None else {"effect_slope": args.effect_slope}
    return SimulationParams.preset(args.preset, realistic=args.realistic,
                                   n_subjects=args.subjects, n_directions=args.directions,
                                   n_b0=args.b0, bval=args.bval, voxel_size=args.voxel_size,
                                   snr=args.snr, **extra)


def _cmd_simulate(args) -> int:
    from .simulate import simulate_cohort

    t0 = time.perf_counter()
    out = simulate_cohort(args.out_dir, params=_params_from_args(args), seed=args.seed,
                          n_jobs=args.jobs, progress=not args.quiet, overwrite=args.overwrite)
    print(f"Simulated {args.subjects} participants x 2 sessions in "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"  BIDS dataset:  {out}")
    print(f"  ground truth:  {out / 'derivatives' / 'simulation'}")
    return 0


def _config_from_args(args):
    from .pipeline import PipelineConfig

    def off_is_none(v):  # "off" is None inside the package; 0 (or less) on the command line
        return None if v is None or v <= 0 else v

    return PipelineConfig(fit_method=args.fit_method, denoise=args.denoise,
                          transform=args.transform, space=args.space,
                          probability_threshold=args.probability_threshold,
                          csf_md_threshold=off_is_none(args.csf_md_threshold),
                          fa_threshold=off_is_none(args.fa_threshold), regions=args.regions,
                          realign=None if args.realign == "none" else args.realign,
                          exclude_volumes=args.exclude_volumes,
                          max_bval=args.max_bval,
                          atlas_registration=(None if args.atlas_registration == "none"
                                              else args.atlas_registration),
                          min_coverage=off_is_none(args.min_coverage))


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    from .pipeline import (
        ATLAS_REGISTRATIONS,
        DENOISE_METHODS,
        REALIGN_MODELS,
        SPACES,
        TRANSFORMS,
        PipelineConfig,
    )
    from .tensor import FIT_METHODS

    def bval_or_none(text):
        if text.strip().lower() in ("none", "off", "all"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a b-value; give s/mm² "
                                             "(e.g. 1500) or none") from None
        if not value > 0:
            raise argparse.ArgumentTypeError("the b-value must be positive (or none)")
        return value

    d = PipelineConfig()
    g = p.add_argument_group("processing")
    g.add_argument("--fit-method", default=d.fit_method, choices=FIT_METHODS,
                   help=f"tensor fit (default {d.fit_method})")
    g.add_argument("--denoise", default=None, choices=DENOISE_METHODS,
                   help="denoise before the fit (default: off)")
    g.add_argument("--transform", default=d.transform, choices=TRANSFORMS,
                   help=f"registration to MNI (default {d.transform})")
    g.add_argument("--space", default=d.space, choices=SPACES,
                   help="where MD meets the regions (default native: regions move, MD not)")
    g.add_argument("--probability-threshold", type=float, default=d.probability_threshold,
                   metavar="P", help=f"atlas probability threshold, 0-1 "
                                     f"(default {d.probability_threshold})")
    g.add_argument("--csf-md-threshold", type=float, default=d.csf_md_threshold, metavar="MD",
                   help=f"drop voxels with MD above this, mm²/s (default "
                        f"{d.csf_md_threshold:g}; 0 = keep all)")
    g.add_argument("--fa-threshold", type=float, default=None, metavar="FA",
                   help="drop voxels with FA above this (default and 0: off)")
    g.add_argument("--regions", default=None, metavar="TSV",
                   help="region table (default: the study's seven regions)")
    g.add_argument("--realign", default=d.realign or "none",
                   choices=(*REALIGN_MODELS, "none"),
                   help=f"realign the volumes of a series to its b0 (default {d.realign}; "
                        "affine also corrects eddy currents; none: as acquired)")
    g.add_argument("--exclude-volumes", action=argparse.BooleanOptionalAction,
                   default=d.exclude_volumes,
                   help="leave outlier volumes (motion, signal dropout) out of the fit "
                        f"(default {'on' if d.exclude_volumes else 'off'})")
    g.add_argument("--max-bval", type=bval_or_none, default=d.max_bval, metavar="B",
                   help=f"fit only volumes with b <= B s/mm² (default {d.max_bval:g}; "
                        "none = every shell)")
    g.add_argument("--atlas-registration", default=d.atlas_registration or "none",
                   choices=(*ATLAS_REGISTRATIONS, "none"),
                   help="both visits in one halfway space, the atlas registered once: "
                        f"affine then SyN (syn) or affine only (default "
                        f"{d.atlas_registration}; none: each session rigidly to MNI)")
    g.add_argument("--min-coverage", type=float, default=d.min_coverage, metavar="F",
                   help=f"report a region only when this share of it, 0-1, lies in the "
                        f"field of view and the brain mask (default {d.min_coverage:g}; "
                        "0 = report all)")
    g.add_argument("--n-jobs", "--workers", dest="n_jobs", type=int, default=1, metavar="N",
                   help="N > 1 runs N sessions at once in N Dask worker processes "
                        "(default 1: no Dask; --workers is the old name)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="send the sessions to a running dask.distributed scheduler, "
                        "e.g. tcp://host:8786")


def _cmd_run(args) -> int:
    from .pipeline import run_pipeline

    t0 = time.perf_counter()
    res = run_pipeline(args.bids_dir, args.out_dir, pre=args.pre_session,
                       post=args.post_session, config=_config_from_args(args),
                       n_jobs=args.n_jobs, scheduler=args.scheduler,
                       participant_label=args.participant_label, force=args.force,
                       acq=args.acq, run=args.run, progress=not args.quiet,
                       raw_dir=args.raw_dir)
    for problem in res.problems:
        print(f"note: {problem}", file=sys.stderr)
    print(f"Done in {time.perf_counter() - t0:.0f} s.")
    print(res.summary())
    return res.exit_code


def _stats_config_from_args(args):
    from .stats import StatsConfig

    return StatsConfig(outcomes=tuple(args.outcomes) if args.outcomes else None,
                       covariates=tuple(args.covariates), control=args.control,
                       global_covariate=args.global_covariate,
                       change=args.change, md_change=args.md_change,
                       statistic=args.statistic, q_from=args.q_from,
                       n_permutations=args.permutations or None,
                       n_bootstrap=args.bootstrap or None,
                       correction=args.correction, random_state=args.random_state,
                       keep_flagged=args.keep_flagged)


def _add_stats_args(p: argparse.ArgumentParser) -> None:
    from .stats import CHANGES, CORRECTIONS, Q_SOURCES, STATISTICS, StatsConfig

    d = StatsConfig()
    g = p.add_argument_group("statistics")
    g.add_argument("--outcomes", nargs="+", default=None, metavar="NAME",
                   help="outcomes to model, any <NAME>_pre/<NAME>_post score columns "
                        "(default: every such pair, e.g. madrs qids)")
    g.add_argument("--covariates", nargs="*", default=[], metavar="COLUMN",
                   help="extra covariates from participants.tsv, e.g. age sex")
    g.add_argument("--control", default=None, metavar="ARM",
                   help="label of the control arm, e.g. midazolam (default: the arm named "
                        "saline, placebo, midazolam, sham or control); the other arm is "
                        "the treated one")
    g.add_argument("--global-covariate", action="store_true",
                   help="adjust for the whole-brain grey-matter ΔMD (the global_gm row)")
    g.add_argument("--keep-flagged", action="store_true",
                   help="keep in the model the regional ΔMD values the pipeline flagged but "
                        "kept (visits or atlas registration not to be trusted, e.g. "
                        "visits_dissimilar); by default they are left out with a note")
    g.add_argument("--change", default=d.change, choices=CHANGES,
                   help="score change in points or percent of baseline (default absolute)")
    g.add_argument("--md-change", default=d.md_change, choices=CHANGES,
                   help="ΔMD in 1e-6 mm²/s or percent of pre (default absolute)")
    g.add_argument("--statistic", default=d.statistic, choices=STATISTICS,
                   help="interaction statistic: Aspin-Welch v with the arms as variance "
                        "groups and within-arm permutations, or the equal-variance t "
                        f"(default {d.statistic})")
    g.add_argument("--permutations", type=int, default=d.n_permutations, metavar="N",
                   help=f"Freedman-Lane permutations (default {d.n_permutations}; 0 = none)")
    g.add_argument("--bootstrap", type=int, default=d.n_bootstrap, metavar="N",
                   help=f"bootstrap resamples for correlation CIs (default {d.n_bootstrap})")
    g.add_argument("--correction", default=d.correction, choices=CORRECTIONS,
                   help="multiple-comparison correction across rows (default fdr_bh)")
    g.add_argument("--q-from", default=d.q_from, choices=Q_SOURCES,
                   help="correct the permutation p or the parametric p (default "
                        f"{d.q_from}; parametric when there are no permutations)")
    g.add_argument("--random-state", "--stats-seed", dest="random_state", type=int,
                   default=d.random_state, metavar="SEED",
                   help=f"seed of permutations and bootstrap (default {d.random_state}; "
                        "--stats-seed is the old name)")
    g.add_argument("--robustness", action="store_true",
                   help="also rerun the ROI model over a grid of analytic choices "
                        "(robustness.tsv)")
    g.add_argument("--voxelwise", action="store_true",
                   help="also run the voxelwise permutation test on ΔMD maps (voxelwise/)")
    g.add_argument("--voxelwise-permutations", type=int, default=1000, metavar="N",
                   help="permutations of the voxelwise test (default 1000)")


def _print_stats(res, out_dir) -> None:
    t = res.stats_roi
    treated, control = t["treated_arm"].iloc[0], t["control_arm"].iloc[0]
    cols = ["region", "outcome", f"n_{treated}", f"n_{control}", f"slope_{treated}",
            f"slope_{control}", "beta_interaction", "p_interaction", "p_perm_interaction"]
    qcol = "q_fdr" if "q_fdr" in t else "q_holm"
    print(t[[*cols, qcol, "verdict"]].to_string(index=False, float_format="%.3g"))
    print(f"{qcol}: {t['family'].iloc[0]}")
    for note in getattr(res, "notes", []):
        print(f"note: {note}", file=sys.stderr)
    for row in res.dropped.itertuples():
        print(f"note: {row.region} {row.outcome}: {row.n_dropped} participant(s) left out for "
              f"missing values ({row.participants})", file=sys.stderr)
    print(f"tables: {Path(out_dir) / 'stats_roi.tsv'} (columns: stats_roi.json)")
    print(f"        {Path(out_dir) / 'stats_input.tsv'}")
    if res.reliability is not None:
        print(f"        {Path(out_dir) / 'reliability.tsv'}")
    if res.robustness is not None:
        print(f"        {Path(out_dir) / 'robustness.tsv'}")
    for outcome, v in res.voxelwise.items():
        print(f"voxelwise {outcome}: {v.n_significant(0.05)} voxels with FWE p < 0.05 "
              f"({Path(out_dir) / 'voxelwise'})")


def _cmd_stats(args) -> int:
    from .workflows import run_stats

    res = run_stats(args.out_dir, bids_dir=args.bids, config=_stats_config_from_args(args),
                    pre=args.pre_session, post=args.post_session,
                    robustness=args.robustness, voxelwise=args.voxelwise,
                    voxelwise_permutations=args.voxelwise_permutations)
    _print_stats(res, args.out_dir)
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    path = write_report(args.out_dir, path=args.output, pseudonymise=args.pseudonymise,
                        viewer=args.viewer)
    print(f"Report: {path}")
    return 0


def _notebooks_dir() -> Path:
    here = Path(__file__).resolve().parents[1] / "notebooks"
    if not (here / "00_start_here.ipynb").is_file():
        from .exceptions import InputError

        raise InputError(f"{here}: the notebooks are not there; they come with the source "
                         "checkout (git clone), install it with pip install -e .")
    return here


def _cmd_lab(args) -> int:
    from .datasets import DATA_ENV_VAR

    if args.data_dir:
        os.environ[DATA_ENV_VAR] = str(Path(args.data_dir).expanduser().resolve())
    nb = _notebooks_dir()
    cmd = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={nb}",
           "--ServerApp.default_url=/lab/tree/00_start_here.ipynb"]
    if args.no_browser:
        cmd.append("--no-browser")
    if args.port:
        cmd.append(f"--ServerApp.port={args.port}")
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    from .workflows import demo_results

    demo_results()  # prepares the demo (with progress bars) when it is missing
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover


def _cmd_demo(args) -> int:
    from .datasets import DATA_ENV_VAR, get_demo_dir
    from .workflows import build_demo

    if args.data_dir:  # the caches (atlases, anatomy) follow the data home too
        os.environ[DATA_ENV_VAR] = str(Path(args.data_dir).expanduser().resolve())
    demo = Path(args.out) if args.out else get_demo_dir(args.data_dir)
    built = build_demo(demo, params=_params_from_args(args), random_state=args.seed,
                       config=_config_from_args(args), stats_config=_stats_config_from_args(args),
                       n_jobs=args.n_jobs, simulate_n_jobs=args.jobs, force=args.force,
                       progress=not args.quiet,
                       voxelwise=args.voxelwise,
                       voxelwise_permutations=args.voxelwise_permutations, log=print)
    bids, deriv = built.bids_dir, built.derivatives
    _print_stats(built.stats, deriv)
    print(f"Done in {built.seconds:.0f} s.")
    print(f"  BIDS dataset:  {bids}")
    print(f"  ground truth:  {bids / 'derivatives' / 'simulation' / 'ground_truth_roi.tsv'}")
    print(f"  derivatives:   {deriv}")
    print(f"  statistics:    {deriv / 'stats_roi.tsv'}")
    print(built.pipeline.summary())
    print(f"Next: compare {deriv / 'roi_deltas.tsv'} (measured) with "
          f"{bids / 'derivatives' / 'simulation' / 'ground_truth_roi.tsv'} (planted), "
          f"or load them in Python with ketamine_nb.load_results({str(demo)!r})")
    return built.exit_code


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``ketamine-nb``."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="ketamine-nb",
        description="Reanalyse DTI mean diffusivity before and 24 h after IV ketamine.")
    parser.add_argument("--version", action="version", version=f"ketamine-nb {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("simulate", help="write the simulated cohort as a BIDS dataset",
                       description="Write a simulated BIDS cohort with the study's design and "
                                   "a planted, known ground truth (derivatives/simulation/).")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to create")
    _add_simulation_args(p)
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("demo", help="prepare the demo: simulate the cohort (and analyse it)",
                       description="Prepare the demo in the data home (KETAMINE_NB_DATA, else "
                                   "~/ketamine_nb_data) or in --out: simulate the cohort, "
                                   "process every session, fit the study's model and the "
                                   "robustness grid (what the notebooks read).")
    p.add_argument("--out", metavar="DIR", help="demo folder (default: <data home>/demo)")
    p.add_argument("--data-dir", metavar="DIR", help="data home (wins over KETAMINE_NB_DATA)")
    p.add_argument("--force", action="store_true", help="redo every step")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_simulation_args(p)
    _add_pipeline_args(p)
    _add_stats_args(p)
    # The demo feeds the notebooks, and notebook 06 needs the robustness grid
    # (about a second on the demo), so the demo always computes it.
    p.set_defaults(func=_cmd_demo, n_jobs=min(2, os.cpu_count() or 1), robustness=True)

    p = sub.add_parser("run", help="process a BIDS study: DWI -> MD maps -> region tables",
                       description="Process every session of a BIDS DWI study into a "
                                   "BIDS-Derivatives folder with roi_md.tsv and "
                                   "roi_deltas.tsv. Done sessions are reused.")
    p.add_argument("bids_dir", metavar="BIDS_DIR", help="raw BIDS dataset (read only)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="derivatives folder (outside BIDS_DIR)")
    p.add_argument("--pre-session", default="pre", metavar="LABEL",
                   help="session label before the infusion (default pre)")
    p.add_argument("--post-session", default="post", metavar="LABEL",
                   help="session label after the infusion (default post)")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL",
                   help="only these participants (sub- optional); the cohort tables "
                        "(roi_md.tsv, roi_deltas.tsv) then hold only them: run again without "
                        "it to rebuild the whole cohort's (the others' sessions are reused)")
    p.add_argument("--acq", default=None, help="acq- entity of the DWI series to use")
    p.add_argument("--run", default=None, help="run- entity of the DWI series to use")
    p.add_argument("--raw-dir", default=None, metavar="DIR",
                   help="raw BIDS dataset with participants.tsv and the scores, when BIDS_DIR "
                        "is a derivatives folder such as QSIPrep's (read only)")
    p.add_argument("--force", action="store_true", help="recompute every session")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_pipeline_args(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("stats", help="the study's model per region and outcome",
                       description="Fit delta_score ~ delta_md * arm + score_pre per region and "
                                   "outcome on the tables of 'ketamine-nb run'; write "
                                   "stats_roi.tsv and stats_input.tsv into OUT_DIR.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder written by 'ketamine-nb run'")
    p.add_argument("--bids", metavar="BIDS_DIR", default=None,
                   help="read the scores from this raw dataset (default: OUT_DIR/scores.tsv)")
    p.add_argument("--pre-session", default="pre", metavar="LABEL")
    p.add_argument("--post-session", default="post", metavar="LABEL")
    _add_stats_args(p)
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("report", help="write one self-contained HTML report",
                       description="Write a self-contained HTML report (figures, region and "
                                   "statistics tables, parameters, versions) of OUT_DIR.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder of 'run' and 'stats'")
    p.add_argument("--output", metavar="FILE", default=None,
                   help="report file (default OUT_DIR/report.html)")
    p.add_argument("--pseudonymise", action="store_true",
                   help="replace participant ids with random pseudonyms")
    p.add_argument("--viewer", action=argparse.BooleanOptionalAction, default=True,
                   help="embed the 3D viewer of the cohort's mean ΔMD (default on; it works "
                        "offline and adds a few MB)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("lab", help="open JupyterLab on the notebooks, demo ready",
                       description="Prepare the demo if needed, then open JupyterLab on "
                                   "notebooks/00_start_here.ipynb.")
    p.add_argument("--data-dir", metavar="DIR", help="data home (wins over KETAMINE_NB_DATA)")
    p.add_argument("--port", type=int, default=None, help="JupyterLab port")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--dry-run", action="store_true", help="print the command and stop")
    p.set_defaults(func=_cmd_lab)
    return parser


def main(argv=None) -> int:
    """Run the command line; return the exit code.

    Exit codes: 0 all done; 1 some subjects failed and the rest completed;
    2 the invocation or the input cannot be used.
    """
    import warnings

    from .exceptions import KetamineNBError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        # The loader's warnings are printed once each as "note:" lines instead.
        from .exceptions import StudyWarning

        warnings.simplefilter("ignore", StudyWarning)
    try:
        return int(args.func(args) or 0)
    except KetamineNBError as exc:
        if args.debug:
            raise
        print(f"ketamine-nb {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # permissions, full disk...: say which file, no traceback
        if args.debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"ketamine-nb {args.command}: error: {where}{exc.strerror or exc}; check the "
              "path, its permissions and free disk space", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ketamine-nb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
