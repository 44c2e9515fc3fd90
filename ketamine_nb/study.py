"""Load a BIDS DWI study: participants, arms, pre/post diffusion files and depression scores.

This is the first layer of the package (study/io -> processing -> tables ->
plotting). :func:`load_study` reads a BIDS dataset with the trial's shape, the
simulated cohort (``ketamine-nb simulate``) or a user's own data, and returns
a :class:`Study`: tidy tables of who is in which arm, where each session's
DWI series and gradient files are, and the MADRS and QIDS-SR scores at both
sessions. It reads file names, tables and NIfTI headers only, never voxel
data, and never writes into the dataset.

What it cannot use is reported, not silently dropped: a participant with one
session, a DWI folder for someone missing from ``participants.tsv``, a score
row for an unknown participant, a series without its ``.bval``. Each such
problem is one line in :attr:`Study.problems` and a :class:`StudyWarning`;
the loader keeps going. A dataset that cannot be used at all raises
:class:`ketamine_nb.exceptions.InputError`.

Preprocessed input. A BIDS-Derivatives dataset (``"DatasetType":
"derivative"`` in ``dataset_description.json``, or, without a
``DatasetType``, a ``GeneratedBy`` entry), such as
a QSIPrep output folder, is read the same way: its preprocessed series
``sub-*/ses-*/dwi/*_space-T1w_desc-preproc_dwi.nii.gz`` (or ``space-ACPC``)
with the ``.bval``/``.bvec`` written beside it (or only QSIPrep's MRtrix
``.b`` table), sessions from the file names. With ``preprocessed=True``
(the default ``"auto"`` for a derivatives dataset) every row of
:attr:`Study.sessions` has ``preprocessed`` set, and the pipeline skips its
own realignment (the data are already motion and eddy-current corrected,
with topup-grade distortion correction where the acquisition allowed it).
Participants and scores come from the folder itself or, with ``raw_dir=``,
from the raw BIDS dataset it was made from.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from .exceptions import InputError, StudyWarning

__all__ = [
    "ARMS",
    "DEFAULT_OUTCOMES",
    "SessionFiles",
    "Study",
    "StudyWarning",
    "load_study",
]

#: The two arms of the trial, spelled as ``participants.tsv`` must spell them.
ARMS = ("ketamine", "saline")

#: Score columns collected by default: the clinician-rated MADRS total
#: (0-60) and the self-rated QIDS-SR16 total (0-27), the trial's two outcomes.
#: In :attr:`Study.scores` a trailing ``_total`` is dropped (``madrs_pre``).
DEFAULT_OUTCOMES = ("madrs_total", "qids_total")

# Cell values read as missing. BIDS writes ``n/a``; the others are what
# spreadsheets and pandas write. A missing score is NaN, never zero.
_MISSING = ("n/a", "N/A", "NA", "NaN", "nan", "")

_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_DWI_NAME = re.compile(
    r"^(?P<stem>sub-(?P<sub>[A-Za-z0-9]+)_ses-(?P<ses>[A-Za-z0-9]+)"
    r"(?P<rest>(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*)_dwi)\.nii(?:\.gz)?$"
)
_SESSION_FLAGS = "pre=/post= (--pre-session/--post-session)"
_SELECT_FLAGS = "acq= and/or run= (--acq/--run)"


class SessionFiles(NamedTuple):
    """The files of one DWI session.

    Attributes
    ----------
    dwi : pathlib.Path
        The 4D series (``.nii`` or ``.nii.gz``).
    bval : pathlib.Path
        b-values in s/mm², one row (FSL layout).
    bvec : pathlib.Path
        Unit gradient directions, three rows (FSL layout, voxel frame).
    sidecar : pathlib.Path or None
        The JSON sidecar with the acquisition parameters, if there is one.
    """

    dwi: Path
    bval: Path
    bvec: Path
    sidecar: Path | None


@dataclass(repr=False)
class Study:
    """A loaded BIDS study: participants, DWI sessions, scores and problems.

    Made by :func:`load_study`; the tables are tidy pandas DataFrames.

    Attributes
    ----------
    bids_dir : pathlib.Path
        Root of the BIDS dataset (absolute).
    pre, post : str
        Session labels of the time points before and after the infusion
        (``ses-<pre>``, ``ses-<post>``).
    participants : pandas.DataFrame
        One row per row of ``participants.tsv``, in its order:
        ``participant_id``, ``arm`` (``"ketamine"`` or ``"saline"``) and
        every other column of the file (numbers where a column holds only
        numbers and ``n/a``).
    sessions : pandas.DataFrame
        One row per participant (in ``participants.tsv``) and session with a
        usable DWI series, ordered by participant then ``pre``, ``post``:
        ``participant_id``, ``session`` (the label, e.g. ``"pre"`` or
        ``"24h"``), ``timepoint`` (``"pre"`` or ``"post"`` whatever the
        labels), ``dwi``, ``bval``, ``bvec`` (``pathlib.Path``) and
        ``sidecar`` (``pathlib.Path`` or ``None``) and ``preprocessed``
        (bool: realignment already done). For QSIPrep's ``.b`` table,
        ``bval`` and ``bvec`` are both that file. Participants with one
        usable session keep that row; see :meth:`complete_participants`.
    scores : pandas.DataFrame
        One row per participant: ``participant_id``, ``arm``, ``age`` and
        ``sex`` when ``participants.tsv`` has them, then ``<name>_pre`` and
        ``<name>_post`` (float, NaN when missing) for each outcome, where
        ``<name>`` is the outcome column without ``_total``
        (``madrs_pre``, ``madrs_post``, ``qids_pre``, ``qids_post``). The
        suffixes are the time points, not the session labels.
    problems : list of str
        One line per thing that could not be used (file or participant,
        problem, fix). Also issued as :class:`StudyWarning`.
    outcomes : tuple of str
        The score columns that were collected (e.g. ``"madrs_total"``).
    acq, run : str or None
        The ``acq-``/``run-`` selection used where a session had several
        DWI series.
    preprocessed : bool
        The series are preprocessed (a BIDS-Derivatives dataset such as
        QSIPrep's): the pipeline does not realign them again.
    raw_dir : pathlib.Path or None
        The raw BIDS dataset that gave the participants and scores, when
        they did not come from ``bids_dir``.
    """

    bids_dir: Path
    pre: str
    post: str
    participants: pd.DataFrame
    sessions: pd.DataFrame
    scores: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    outcomes: tuple[str, ...] = DEFAULT_OUTCOMES
    acq: str | None = None
    run: str | None = None
    preprocessed: bool = False
    raw_dir: Path | None = None

    def __repr__(self) -> str:
        arms = self.participants["arm"].value_counts()
        return (f"<Study {self.bids_dir}: {len(self.participants)} participants "
                f"({arms.get('ketamine', 0)} ketamine, {arms.get('saline', 0)} saline), "
                f"{len(self.complete_participants())} with ses-{self.pre} and "
                f"ses-{self.post} DWI, {len(self.problems)} problems>")

    def complete_participants(self) -> list[str]:
        """Return the participants with a usable DWI series at both sessions.

        Returns
        -------
        list of str
            ``participant_id`` values, in the order of ``participants.tsv``.
        """
        have = self.sessions.groupby("participant_id", sort=False)["timepoint"].agg(set)
        both = {pid for pid, tps in have.items() if {"pre", "post"} <= tps}
        return [pid for pid in self.participants["participant_id"] if pid in both]

    def session_files(self, participant_id: str, session: str) -> SessionFiles:
        """Return the DWI, b-value, b-vector and sidecar files of one session.

        Parameters
        ----------
        participant_id : str
            ``"sub-001"`` (or ``"001"``).
        session : str
            The session label (``"pre"``, ``"ses-pre"``, ``"24h"``) or the
            time point (``"pre"`` or ``"post"``).

        Returns
        -------
        SessionFiles
            ``(dwi, bval, bvec, sidecar)``; ``sidecar`` may be ``None``.

        Raises
        ------
        KeyError
            If the study has no usable DWI for that participant and session.
        """
        pid = _normalise_pid(participant_id)
        label = str(session).removeprefix("ses-")
        rows = self.sessions[(self.sessions["participant_id"] == pid)
                             & (self.sessions["session"] == label)]
        if rows.empty:
            rows = self.sessions[(self.sessions["participant_id"] == pid)
                                 & (self.sessions["timepoint"] == label)]
        if rows.empty:
            have = self.sessions.loc[self.sessions["participant_id"] == pid, "session"]
            have = ", ".join(f"ses-{s}" for s in have) or "none"
            raise KeyError(f"{pid} has no usable ses-{label} DWI in {self.bids_dir} "
                           f"(usable sessions: {have}); see Study.problems")
        row = rows.iloc[0]
        return SessionFiles(row["dwi"], row["bval"], row["bvec"], row["sidecar"])


# --------------------------------------------------------------------------
# The loader


def load_study(bids_dir, *, pre: str = "pre", post: str = "post", acq: str | None = None,
               run: str | int | None = None,
               outcomes: tuple[str, ...] | list[str] = DEFAULT_OUTCOMES,
               preprocessed: bool | str = "auto", raw_dir=None) -> Study:
    """Load a BIDS DWI dataset with a pre/post design and two arms.

    Reads (and never writes):

    * ``dataset_description.json`` (must exist and be valid JSON);
    * ``participants.tsv``: ``participant_id``, ``arm`` (``ketamine`` or
      ``saline``), optional ``age``, ``sex`` and any other columns (kept);
    * ``sub-<label>/ses-<pre|post>/dwi/sub-<label>_ses-<pre|post>[_acq-<label>]
      [_run-<index>]_dwi.nii[.gz]`` with ``.bval`` and ``.bvec`` (FSL layout:
      one row of b-values, three rows of directions) and an optional
      ``.json`` sidecar beside it, or inherited from a higher folder as the
      BIDS inheritance principle allows (e.g. a dataset-level ``dwi.bval``);
      only the NIfTI header is read, to check the number of volumes;
    * scores, from any of these, merged:

      a. ``sub-<label>/sub-<label>_sessions.tsv``: ``session_id``
         (``ses-pre``) and one column per outcome (what ``ketamine-nb
         simulate`` writes);
      b. long ``phenotype/*.tsv``: ``participant_id``, ``session_id``
         (``pre`` or ``ses-pre``) and one column per outcome;
      c. wide ``phenotype/*.tsv`` or ``participants.tsv``: ``participant_id``
         and ``<outcome>_<label>`` columns (``madrs_total_pre``,
         ``madrs_total_post``; ``madrs_total_ses-pre`` also works).

    ``n/a`` (and an empty cell) is a missing value, never zero. Where two
    sources give different values for the same participant, session and
    outcome, the score is set to missing and a problem is reported.

    Parameters
    ----------
    bids_dir : str or pathlib.Path
        Root of the BIDS dataset.
    pre : str, default="pre"
        Label of the session before the infusion (``ses-<pre>``).
    post : str, default="post"
        Label of the session after it (the trial's is 24 h later).
    acq : str, optional
        ``acq-`` label of the series to use where a session has several
        DWI series (``"b1000"`` or ``"acq-b1000"``).
    run : str or int, optional
        ``run-`` index of the series to use where a session has several
        (``1`` matches ``run-01``).
    outcomes : sequence of str, default=DEFAULT_OUTCOMES
        Score columns to collect (``("madrs_total", "qids_total")``).
    preprocessed : {"auto", True, False}, default="auto"
        Whether the series are already preprocessed (motion, eddy currents):
        ``"auto"`` is True for a BIDS-Derivatives dataset (``DatasetType``
        ``"derivative"`` in ``dataset_description.json``; without a
        ``DatasetType``, a ``GeneratedBy`` entry). A ``"raw"`` dataset is raw
        even with a ``GeneratedBy`` (the simulated cohort has one). Where a
        session holds several series, a preprocessed or derivatives study
        prefers ``desc-preproc`` and then the ``T1w`` and ``ACPC`` spaces.
    raw_dir : str or pathlib.Path, optional
        Raw BIDS dataset to read ``participants.tsv`` and the scores from
        (a QSIPrep folder has neither); default: ``bids_dir`` itself.

    Returns
    -------
    Study
        Participants, usable sessions, scores (one row per participant) and
        the list of problems.

    Raises
    ------
    ketamine_nb._utils.InputError
        If the dataset as a whole cannot be used: the folder is missing or
        not a folder; ``dataset_description.json`` or ``participants.tsv``
        is missing or unreadable; ``participants.tsv`` has no
        ``participant_id`` or ``arm`` column, an arm other than ketamine or
        saline, or a duplicate ``participant_id``; no DWI at all for
        ``ses-<pre>`` or ``ses-<post>`` (the message lists the sessions
        present); a score that is not a number; or a session with several DWI
        series that ``acq``/``run`` do not narrow to one.

    Warns
    -----
    StudyWarning
        Once per entry of :attr:`Study.problems`.

    Notes
    -----
    ``participant_id`` values without the ``sub-`` prefix (``001``) are
    read as ``sub-001``. A session with exactly one DWI series uses it,
    whatever its entities; ``acq``/``run`` only choose among several.
    """
    pre = _session_label(pre, "pre")
    post = _session_label(post, "post")
    if pre == post:
        raise InputError(f"pre and post are both {pre!r}; pass two different session labels "
                         f"as {_SESSION_FLAGS}")
    acq = None if acq is None else _entity_value(acq, "acq")
    run = None if run is None else _entity_value(run, "run")
    outcomes = _outcome_names(outcomes)

    root = _check_root(bids_dir, need_participants=raw_dir is None)
    derivative = _is_derivative(root)
    if isinstance(preprocessed, str) and preprocessed == "auto":
        preprocessed = derivative
    elif not isinstance(preprocessed, bool | np.bool_):
        raise InputError(f"preprocessed={preprocessed!r}: use 'auto', True or False")
    preprocessed = bool(preprocessed)
    meta_root = root if raw_dir is None else _check_root(raw_dir)
    problems: list[str] = []
    participants = _read_participants(meta_root / "participants.tsv")
    known = list(participants["participant_id"])
    known_set = set(known)

    # DWI: what exists, then what is usable.
    tree, labels_with_dwi, sessionless = _scan_dwi(root, problems)
    missing = [lab for lab in (pre, post) if lab not in labels_with_dwi]
    if missing:
        what = " or ".join(f"ses-{lab}" for lab in missing)
        present = ", ".join(sorted(labels_with_dwi)) or "none"
        hint = ""
        if sessionless and not labels_with_dwi:
            hint = (f" (DWI found without session folders, e.g. {sessionless[0]}; this "
                    "loader needs sub-<label>/ses-<label>/dwi/)")
        raise InputError(f"{root}: no {what} DWI found; sessions present: {present}{hint}; "
                         f"pass {_SESSION_FLAGS}")

    for pid in tree:
        if pid not in known_set:
            problems.append(f"{pid}/: has a folder but is not in participants.tsv; its DWI and "
                            "scores are ignored; add a row with its arm to participants.tsv")

    rows = []
    for pid in known:
        sessions = tree.get(pid)
        if sessions is None:
            problems.append(f"participants.tsv: {pid} has no folder {pid}/ in the dataset; no "
                            "DWI for it; add its ses-<label>/dwi/ folders if they exist")
            continue
        usable = []
        for label, timepoint in ((pre, "pre"), (post, "post")):
            series = sessions.get(label)
            if not series:
                continue
            if preprocessed or derivative:
                series = _prefer_preprocessed(series)
            files = _usable_series(root, pid, label, series, acq, run, problems)
            if files is not None:
                usable.append(label)
                rows.append({"participant_id": pid, "session": label, "timepoint": timepoint,
                             "dwi": files.dwi, "bval": files.bval, "bvec": files.bvec,
                             "sidecar": files.sidecar, "preprocessed": preprocessed})
        fixes = []
        for lab in (pre, post):
            if lab in usable:
                continue
            if sessions.get(lab):
                fixes.append(f"fix its ses-{lab} files named above")
            else:
                fixes.append(f"add {pid}/ses-{lab}/dwi/ if that visit happened")
        fix = "; ".join(fixes)
        if not usable:
            problems.append(f"{pid}: no usable ses-{pre} or ses-{post} DWI; left out of the "
                            f"imaging analysis; {fix}")
        elif len(usable) == 1:
            miss = post if usable[0] == pre else pre
            problems.append(f"{pid}: usable DWI for ses-{usable[0]} only, none for ses-{miss}; "
                            f"left out of complete_participants(); {fix}")
    sessions_df = pd.DataFrame(rows, columns=["participant_id", "session", "timepoint", "dwi",
                                              "bval", "bvec", "sidecar", "preprocessed"])
    sessions_df["preprocessed"] = sessions_df["preprocessed"].astype(bool)

    scores = _collect_scores(meta_root, participants, tree, pre, post, outcomes, problems)

    for msg in problems:
        warnings.warn(msg, StudyWarning, stacklevel=2)
    return Study(bids_dir=root, pre=pre, post=post, participants=participants,
                 sessions=sessions_df, scores=scores, problems=problems, outcomes=outcomes,
                 acq=acq, run=run, preprocessed=preprocessed,
                 raw_dir=None if raw_dir is None else meta_root)


# --------------------------------------------------------------------------
# Arguments and the dataset root


def _session_label(value, name: str) -> str:
    label = str(value).strip().removeprefix("ses-")
    if not _LABEL.match(label):
        raise InputError(f"{name}={value!r} is not a BIDS session label (letters and digits, "
                         f"as in ses-pre); pass the part after 'ses-' as {_SESSION_FLAGS}")
    return label


def _entity_value(value, name: str) -> str:
    text = str(value).strip().removeprefix(f"{name}-")
    if not _LABEL.match(text):
        raise InputError(f"{name}={value!r} is not a BIDS {name}- value (letters and digits); "
                         f"pass the part after '{name}-' of the file name as {_SELECT_FLAGS}")
    return text


def _outcome_names(outcomes) -> tuple[str, ...]:
    if isinstance(outcomes, str):
        outcomes = (outcomes,)
    outcomes = tuple(str(o).strip() for o in outcomes)
    short = [_short_name(o) for o in outcomes]
    if not outcomes or any(not o for o in outcomes) or len(set(short)) != len(short):
        raise InputError(f"outcomes={outcomes!r}: give distinct, non-empty score column names, "
                         "e.g. ('madrs_total', 'qids_total')")
    return outcomes


def _short_name(outcome: str) -> str:
    return outcome.removesuffix("_total") or outcome


def _is_derivative(root: Path) -> bool:
    """Tell a BIDS-Derivatives dataset from raw data.

    ``DatasetType`` decides when it is given: BIDS allows ``GeneratedBy`` in a
    raw dataset too (a converter or a simulator that wrote it; this package's
    own simulated cohort says ``"DatasetType": "raw"`` with a ``GeneratedBy``).
    Without ``DatasetType``, a ``GeneratedBy`` or the older
    ``PipelineDescription`` marks derivatives, as older pipelines wrote them.
    """
    desc = json.loads((root / "dataset_description.json").read_text(encoding="utf-8-sig"))
    if not isinstance(desc, dict):
        return False
    kind = str(desc.get("DatasetType", "")).strip().lower()
    if kind:
        return kind == "derivative"
    return bool(desc.get("GeneratedBy")) or bool(desc.get("PipelineDescription"))


#: Spaces a preprocessed series may be in, preferred first (QSIPrep wrote
#: ``space-T1w`` before version 0.18 and ``space-ACPC`` since).
_PREPROCESSED_SPACES = ("T1w", "ACPC")


def _prefer_preprocessed(series: list) -> list:
    """Among a session's series, the ``desc-preproc`` ones, then the preferred space."""
    chosen = [s for s in series if s.get("desc") == "preproc"] or series
    for space in _PREPROCESSED_SPACES:
        in_space = [s for s in chosen if s.get("space") == space]
        if in_space:
            return in_space
    return chosen


def _check_root(bids_dir, need_participants: bool = True) -> Path:
    root = Path(bids_dir).expanduser().absolute()
    if not root.exists():
        raise InputError(f"{root}: folder not found; check the path, or make the simulated "
                         f"cohort with: ketamine-nb simulate {root}")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; pass the root folder of the BIDS dataset "
                         "(the one holding dataset_description.json)")
    desc = root / "dataset_description.json"
    if not desc.is_file():
        raise InputError(f"{desc}: not found, so {root} is not a BIDS dataset root; pass the "
                         "folder that holds dataset_description.json, or add the file "
                         "(at least Name and BIDSVersion)")
    try:
        json.loads(desc.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{desc}: not valid JSON ({_first_line(exc)}); fix the file") from None
    if need_participants and not (root / "participants.tsv").is_file():
        fix = ("add it with the columns participant_id and arm (ketamine or saline), one row "
               "per participant")
        if _is_derivative(root):
            fix = ("this is a derivatives folder (e.g. QSIPrep's): pass the raw BIDS dataset "
                   f"with the participants and scores as --raw-dir (raw_dir= in Python), or {fix}")
        raise InputError(f"{root / 'participants.tsv'}: not found; {fix}")
    return root


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --------------------------------------------------------------------------
# Tables


def _read_tsv(path: Path) -> pd.DataFrame:
    """Read a BIDS TSV as strings (stripped), with ``n/a`` and empty cells as NaN."""
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, na_values=list(_MISSING),
                         keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: file is empty; write a tab-separated table with a header "
                         "row") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise InputError(f"{path}: not a readable tab-separated table ({_first_line(exc)}); "
                         "save it as UTF-8 text with one tab between columns") from None
    df.columns = [str(c).strip() for c in df.columns]
    for col in df.columns:
        s = df[col].astype("str").str.strip() if df[col].notna().any() else df[col]
        df[col] = s.mask(s.isin(_MISSING))
    return df


def _line(i: int) -> int:
    """File line of data row ``i`` (the header is line 1)."""
    return i + 2


def _normalise_pid(value) -> str:
    text = str(value).strip()
    return text if text.startswith("sub-") else f"sub-{text}"


def _listing(items, limit: int = 6) -> str:
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _read_participants(path: Path) -> pd.DataFrame:
    df = _read_tsv(path)
    cols = list(df.columns)
    hint = ""
    if len(cols) == 1 and ("," in cols[0] or ";" in cols[0]):
        hint = " (the header has no tabs: BIDS tables are tab-separated, not comma-separated)"
    for col, what in (("participant_id", "sub-<label> of each participant"),
                      ("arm", "ketamine or saline")):
        if col not in df.columns:
            raise InputError(f"{path}: no {col!r} column (columns: {', '.join(cols)}){hint}; "
                             f"add the {col} column ({what})")
    empty = [f"line {_line(i)}" for i in np.flatnonzero(df["participant_id"].isna())]
    if empty:
        raise InputError(f"{path}: no participant_id on {_listing(empty)}; fill it in or "
                         "delete the row")
    df["participant_id"] = [_normalise_pid(v) for v in df["participant_id"]]
    dup = df["participant_id"].duplicated(keep=False)
    if dup.any():
        where = [f"{pid} (line {_line(i)})" for i, pid in zip(np.flatnonzero(dup),
                                                              df["participant_id"][dup],
                                                              strict=True)]
        raise InputError(f"{path}: duplicate participant_id: {_listing(where)}; keep one row "
                         "per participant")
    bad = ~df["arm"].isin(ARMS)
    if bad.any():
        where = [f"{'n/a' if pd.isna(a) else repr(a)} on line {_line(i)} ({pid})"
                 for i, a, pid in zip(np.flatnonzero(bad), df["arm"][bad],
                                      df["participant_id"][bad], strict=True)]
        raise InputError(f"{path}: arm must be 'ketamine' or 'saline'; found {_listing(where)}; "
                         "correct these rows")
    out = {"participant_id": df["participant_id"], "arm": df["arm"]}
    for col in df.columns:
        if col in out:
            continue
        num = pd.to_numeric(df[col], errors="coerce")
        numeric = df[col].notna().any() and bool((num.notna() == df[col].notna()).all())
        out[col] = num if numeric else df[col]
    return pd.DataFrame(out, columns=list(df.columns)).reset_index(drop=True)


def _numeric(df: pd.DataFrame, col: str, path: Path, ids=None) -> np.ndarray:
    """Column as float (NaN for missing); InputError naming the cells that are not numbers."""
    raw = df[col]
    num = pd.to_numeric(raw, errors="coerce").astype(float)
    bad = raw.notna() & ~np.isfinite(num)
    if bad.any():
        where = []
        for i in np.flatnonzero(bad):
            who = f", {ids[i]}" if ids is not None else ""
            where.append(f"{raw.iloc[i]!r} on line {_line(i)}{who}")
        raise InputError(f"{path}: column {col!r} has values that are not numbers: "
                         f"{_listing(where)}; write a number, or n/a for a missing score")
    return num.to_numpy()


class _ScoreStore:
    """Score values per (participant, time point, outcome), with where each came from."""

    def __init__(self):
        self.values: dict[tuple[str, str, str], list[tuple[float, str]]] = {}
        self.seen: set[str] = set()

    def add(self, pid, timepoint, outcome, value, where):
        self.values.setdefault((pid, timepoint, outcome), []).append((float(value), where))


def _collect_scores(root, participants, tree, pre, post, outcomes, problems) -> pd.DataFrame:
    known = set(participants["participant_id"])
    timepoint = {pre: "pre", post: "post"}
    store = _ScoreStore()

    def session_of(value):
        return None if pd.isna(value) else timepoint.get(str(value).removeprefix("ses-"))

    # (a) sub-<label>/sub-<label>_sessions.tsv
    for pid in participants["participant_id"]:
        path = root / pid / f"{pid}_sessions.tsv"
        if pid not in tree or not path.is_file():
            continue
        df = _read_tsv(path)
        rel = path.relative_to(root)
        cols = [o for o in outcomes if o in df.columns]
        if not cols:
            continue
        if "session_id" not in df.columns:
            problems.append(f"{rel}: no session_id column, so its scores are ignored; add "
                            f"session_id (ses-{pre}, ses-{post})")
            continue
        ids = [f"{pid} {s}" for s in df["session_id"]]
        for o in cols:
            store.seen.add(o)
            vals = _numeric(df, o, path, ids)
            for i, ses in enumerate(df["session_id"]):
                tp = session_of(ses)
                if tp is not None:
                    store.add(pid, tp, o, vals[i], f"{rel} line {_line(i)}")

    # (b), (c) phenotype/*.tsv, long or wide; (c) participants.tsv, wide.
    phenotype = sorted((root / "phenotype").glob("*.tsv")) if (root / "phenotype").is_dir() \
        else []
    if (root / "phenotype").is_dir():
        for other in sorted((root / "phenotype").iterdir()):
            if other.is_file() and other.suffix.lower() in {".csv", ".xlsx", ".xls", ".txt"}:
                problems.append(f"{other.relative_to(root)}: not read; BIDS phenotype tables "
                                f"are tab-separated .tsv files: save it as "
                                f"phenotype/{other.stem}.tsv (with a .json sidecar)")
    tables = [(p, None) for p in phenotype] + [(root / "participants.tsv", participants)]
    for path, df in tables:
        rel = path.relative_to(root)
        if df is None:
            df = _read_tsv(path)
        long = "session_id" in df.columns
        if long:
            used = [(o, o, None) for o in outcomes if o in df.columns]
        else:
            used = [(o, c, tp) for o in outcomes for lab, tp in timepoint.items()
                    for c in (f"{o}_{lab}", f"{o}_ses-{lab}") if c in df.columns]
        if not used:
            continue
        if "participant_id" not in df.columns:
            problems.append(f"{rel}: score columns but no participant_id column; ignored; add "
                            "participant_id (sub-<label>)")
            continue
        pids = [None if pd.isna(v) else _normalise_pid(v) for v in df["participant_id"]]
        unknown = [f"{'n/a' if p is None else p} (line {_line(i)})"
                   for i, p in enumerate(pids) if p not in known]
        if unknown:
            problems.append(f"{rel}: rows for participants not in participants.tsv: "
                            f"{_listing(unknown)}; ignored; add them to participants.tsv or "
                            "correct their participant_id")
        sessions = df["session_id"] if long else None
        for o, col, tp in used:
            store.seen.add(o)
            vals = _numeric(df, col, path, pids)
            for i, pid in enumerate(pids):
                if pid not in known:
                    continue
                t = session_of(sessions.iloc[i]) if long else tp
                if t is not None:
                    store.add(pid, t, o, vals[i], f"{rel} line {_line(i)}")

    for o in outcomes:
        s = _short_name(o)
        if o not in store.seen:
            problems.append(f"{o}: no such column in any score table (sub-*/sub-*_sessions.tsv, "
                            f"phenotype/*.tsv, participants.tsv); {s}_pre and {s}_post are all "
                            f"n/a; add the scores (wide tables: {o}_{pre} and {o}_{post}), or "
                            "name the columns used with --outcomes (outcomes= in Python)")
            continue
        for tp, lab in (("pre", pre), ("post", post)):
            if not any(t == tp and out == o for _, t, out in store.values):
                problems.append(
                    f"{o}: no score for ses-{lab} in any table, so every {s}_{tp} is n/a; "
                    f"a wide table needs a column {o}_{lab} (or {o}_ses-{lab}), a long one "
                    f"rows with session_id ses-{lab}: check the column names and the session "
                    "labels (--pre-session/--post-session)")

    keep = ["participant_id", "arm"] + [c for c in ("age", "sex") if c in participants.columns]
    scores = participants[keep].copy()
    if "age" in scores.columns:
        age = pd.to_numeric(scores["age"], errors="coerce").astype(float)
        bad = [f"{p} ({a!r})" for p, a, x in zip(scores["participant_id"], scores["age"], age,
                                                  strict=True) if pd.notna(a) and math.isnan(x)]
        if bad:
            problems.append(f"participants.tsv: age is not a number for {_listing(bad)}; read "
                            "as n/a; write the age in years")
        scores["age"] = age
    for o in outcomes:
        for tp in ("pre", "post"):
            col = np.full(len(scores), np.nan)
            for k, pid in enumerate(scores["participant_id"]):
                col[k] = _resolve(store.values.get((pid, tp, o), []), pid,
                                  pre if tp == "pre" else post, o, problems)
            scores[f"{_short_name(o)}_{tp}"] = col
    return scores.reset_index(drop=True)


def _resolve(entries, pid, label, outcome, problems) -> float:
    present = [(v, w) for v, w in entries if not math.isnan(v)]
    distinct = sorted({v for v, _ in present})
    if len(distinct) > 1:
        what = " vs ".join(f"{v:g} ({w})" for v, w in present)
        problems.append(f"{pid} ses-{label} {outcome}: conflicting values {what}; read as n/a; "
                        "keep one value and correct or delete the others")
        return math.nan
    return distinct[0] if distinct else math.nan


# --------------------------------------------------------------------------
# DWI files


@dataclass(frozen=True)
class _Series:
    path: Path
    stem: str
    entities: tuple[tuple[str, str], ...]  # after sub and ses, in file-name order

    def get(self, key):
        return dict(self.entities).get(key)


def _scan_dwi(root: Path, problems: list[str]):
    """Find every ``sub-*/ses-*/dwi/*_dwi.nii[.gz]``.

    Returns ``{participant_id: {label: [_Series, ...]}}`` (every subject
    folder, even without DWI), the set of session labels that hold DWI and
    examples of DWI found outside session folders.
    """
    tree: dict[str, dict[str, list[_Series]]] = {}
    labels: set[str] = set()
    sessionless: list[str] = []
    for sub_dir in sorted(root.glob("sub-*")):
        if not sub_dir.is_dir():
            continue
        pid = sub_dir.name
        tree[pid] = {}
        if (sub_dir / "dwi").is_dir():
            sessionless += [str(p.relative_to(root)) for p in (sub_dir / "dwi").glob("*dwi.nii*")]
        for ses_dir in sorted(sub_dir.glob("ses-*")):
            dwi_dir = ses_dir / "dwi"
            if not dwi_dir.is_dir():
                continue
            label = ses_dir.name.removeprefix("ses-")
            found = []
            for f in sorted(dwi_dir.iterdir()):
                name = f.name
                if name.startswith(".") or not name.endswith(("_dwi.nii", "_dwi.nii.gz")):
                    continue
                labels.add(label)
                m = _DWI_NAME.match(name)
                if m is None or m["sub"] != pid[4:] or m["ses"] != label:
                    problems.append(f"{f.relative_to(root)}: not a BIDS DWI name for this "
                                    f"folder; ignored; rename it {pid}_ses-{label}"
                                    "[_acq-<label>][_run-<index>]_dwi.nii.gz")
                    continue
                ents = tuple(tuple(kv.split("-", 1)) for kv in m["rest"][1:].split("_")) \
                    if m["rest"] else ()
                found.append(_Series(f, m["stem"], ents))
            stems = [s.stem for s in found]
            for stem in sorted({s for s in stems if stems.count(s) > 1}):
                problems.append(f"{dwi_dir.relative_to(root)}/{stem}: both .nii and .nii.gz; "
                                "ignored; delete one of them")
            found = [s for s in found if stems.count(s.stem) == 1]
            if found:
                tree[pid][label] = found
    return tree, labels, sessionless


def _same_value(a: str, b: str) -> bool:
    if a.isdigit() and b.isdigit():
        return int(a) == int(b)
    return a == b


def _usable_series(root, pid, label, series, acq, run, problems) -> SessionFiles | None:
    """Choose the session's series and find its files; ``None`` (and a problem) if unusable."""
    chosen = series[0] if len(series) == 1 else _select(root, pid, label, series, acq, run)
    rel = chosen.path.relative_to(root)
    found = {}
    mrtrix = chosen.path.parent / f"{chosen.stem}.b"
    if mrtrix.is_file() and _companion(root, chosen, ".bval") is None:
        # QSIPrep's MRtrix table (x y z b per volume, scanner frame) only.
        found[".bval"] = found[".bvec"] = mrtrix
    for ext, what in ((".bval", "b-values (one row)"), (".bvec", "b-vectors (three rows)")):
        if ext in found:
            continue
        path = _companion(root, chosen, ext)
        if path is None:
            problems.append(f"{rel}: no {ext} file ({chosen.stem}{ext} or an inherited one); "
                            f"session ignored; write its {what} beside the image, FSL layout")
            return None
        found[ext] = path
    trouble = _check_gradients(chosen.path, found[".bval"], found[".bvec"])
    if trouble:
        problems.append(f"{rel}: {trouble}; session ignored")
        return None
    return SessionFiles(chosen.path, found[".bval"], found[".bvec"],
                        _companion(root, chosen, ".json"))


def _select(root, pid, label, series, acq, run) -> _Series:
    picked = [s for s in series
              if (acq is None or (s.get("acq") is not None and _same_value(s.get("acq"), acq)))
              and (run is None or (s.get("run") is not None and _same_value(s.get("run"), run)))]
    if (acq is not None or run is not None) and len(picked) == 1:
        return picked[0]
    folder = root / pid / f"ses-{label}" / "dwi"
    names = ", ".join(s.path.name for s in series)
    if acq is None and run is None:
        why = f"{len(series)} DWI series"
    else:
        sel = " ".join(f"{k}={v!r}" for k, v in (("acq", acq), ("run", run)) if v is not None)
        why = f"{len(picked)} of its {len(series)} DWI series match {sel}"
    values = []
    for key in ("acq", "run"):
        vals = sorted({s.get(key) for s in series if s.get(key) is not None})
        if vals:
            values.append(f"{key}: {', '.join(vals)}")
    values = f" (values here: {'; '.join(values)})" if values else ""
    raise InputError(f"{folder}: {why}: {names}; pass {_SELECT_FLAGS} to choose one{values}")


def _companion(root: Path, series: _Series, ext: str) -> Path | None:
    """Find the series' ``.bval``/``.bvec``/``.json``: beside it, else by BIDS inheritance.

    Inheritance: the nearest folder (``dwi/``, ``ses-*/``, ``sub-*/``, the
    root) holding a ``[<entities>_]dwi<ext>`` whose entities are all
    entities of the series; in one folder the most specific wins, and a tie
    finds nothing.
    """
    exact = series.path.parent / f"{series.stem}{ext}"
    if exact.is_file():
        return exact
    mine = {"sub": series.path.parents[2].name[4:], "ses": series.path.parents[1].name[4:],
            **dict(series.entities)}
    dwi_dir = series.path.parent
    for folder in (dwi_dir, dwi_dir.parent, dwi_dir.parent.parent, root):
        best, best_n, tie = None, -1, False
        for f in folder.glob(f"*dwi{ext}"):
            stem = f.name[: -len(ext)]
            if stem == "dwi":
                ents = []
            elif stem.endswith("_dwi"):
                ents = [kv.split("-", 1) for kv in stem[:-4].split("_")]
                if any(len(kv) != 2 for kv in ents):
                    continue
            else:
                continue
            if all(mine.get(k) == v for k, v in ents):
                if len(ents) > best_n:
                    best, best_n, tie = f, len(ents), False
                elif len(ents) == best_n:
                    tie = True
        if best is not None:
            return None if tie else best
    return None


def _check_gradients(dwi: Path, bval: Path, bvec: Path) -> str | None:
    """Problem text if the gradient files do not fit the image, else ``None``."""
    import nibabel as nib

    if bval.suffix == ".b":  # MRtrix: one row "x y z b" per volume
        try:
            rows = [r.split() for r in bval.read_text().splitlines()
                    if r.strip() and not r.lstrip().startswith("#")]
            table = np.array(rows, dtype=float)
        except (ValueError, UnicodeDecodeError):
            return f"{bval.name} is not an MRtrix gradient table (x y z b per row)"
        if table.ndim != 2 or table.shape[1] != 4:
            return f"{bval.name} is not an MRtrix gradient table (four numbers per row)"
        try:
            shape = nib.load(str(dwi)).shape
        except Exception as exc:  # nibabel raises many types for a damaged file
            return (f"cannot read the NIfTI header ({_first_line(exc)}); the file is truncated "
                    "or not a NIfTI image: copy or convert it again")
        if len(shape) != 4 or shape[3] != table.shape[0]:
            return (f"{shape[3] if len(shape) == 4 else 1} volumes but {table.shape[0]} rows in "
                    f"{bval.name}; give one gradient per volume")
        return None

    try:
        bvals = np.array(bval.read_text().split(), dtype=float)
    except (ValueError, UnicodeDecodeError):
        return f"{bval.name} is not a list of numbers; write the b-values in s/mm², one row"
    try:
        rows = [r.split() for r in bvec.read_text().splitlines() if r.strip()]
        bvecs = np.array(rows, dtype=float)
    except (ValueError, UnicodeDecodeError):
        return (f"{bvec.name} is not a table of numbers; write three rows of directions "
                "(FSL layout)")
    try:
        shape = nib.load(str(dwi)).shape
    except Exception as exc:  # nibabel raises many types for a damaged file
        return (f"cannot read the NIfTI header ({_first_line(exc)}); the file is truncated or "
                "not a NIfTI image: copy or convert it again")
    if len(shape) != 4:
        return f"image has shape {shape}, not 4D; a DWI series has one volume per gradient"
    n = shape[3]
    # FSL layout is three rows; one row of three per volume is also accepted
    # (ketamine_nb.dwi.read_gradients transposes it).
    if bvecs.ndim == 2 and bvecs.shape[0] == 3:
        n_vec = bvecs.shape[1]
    elif bvecs.ndim == 2 and bvecs.shape[1] == 3:
        n_vec = bvecs.shape[0]
    else:
        rows = bvecs.shape[0] if bvecs.ndim == 2 else int(bvecs.size > 0)
        return (f"{bvec.name} has {rows} rows and no side of 3; write it in FSL layout "
                "(three rows x, y, z, one column per volume)")
    if bvals.size != n or n_vec != n:
        return (f"{n} volumes but {bvals.size} b-values and {n_vec} b-vectors; give one "
                "b-value and one b-vector per volume")
    return None
