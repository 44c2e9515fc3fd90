"""The BIDS study loader: layouts, session labels, series selection, problems, refusals."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketamine_nb.exceptions import InputError
from ketamine_nb.study import (
    DEFAULT_OUTCOMES,
    SessionFiles,
    Study,
    StudyWarning,
    load_study,
)

N_VOL = 7

# --------------------------------------------------------------------------
# Small hand-made datasets


def write_table(path, rows):
    """Write rows (lists of cells, header first) as a TSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(str(c) for c in row) + "\n" for row in rows))


def write_dwi(dwi_dir, stem, *, ext=".nii.gz", n_vol=N_VOL, bval=True, bvec=True,
              sidecar=True):
    """A tiny 4D series of shape (4, 4, 4, n_vol) with FSL gradient files."""
    dwi_dir.mkdir(parents=True, exist_ok=True)
    data = np.arange(4 * 4 * 4 * n_vol, dtype=np.int16).reshape(4, 4, 4, n_vol)
    nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(dwi_dir / f"{stem}{ext}")
    if bval:
        (dwi_dir / f"{stem}.bval").write_text(" ".join(["0"] + ["1000"] * (N_VOL - 1)) + "\n")
    if bvec:
        rng = np.random.default_rng(0)
        v = rng.normal(size=(3, N_VOL))
        v /= np.linalg.norm(v, axis=0)
        v[:, 0] = 0
        (dwi_dir / f"{stem}.bvec").write_text(
            "\n".join(" ".join(f"{x:.6f}" for x in row) for row in v) + "\n")
    if sidecar:
        (dwi_dir / f"{stem}.json").write_text(json.dumps({"EchoTime": 0.089}))
    return dwi_dir / f"{stem}{ext}"


def make_bids(root, arms, *, sessions=("pre", "post"), ext=".nii.gz", extra_cols=None,
              dwi=True, scores=False):
    """A BIDS dataset: participants.tsv with ``arms`` ({pid: arm}) and DWI at ``sessions``.

    With ``scores``, each participant gets a sessions.tsv with MADRS 30 then 15 and
    QIDS-SR 14 then 7.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "test", "BIDSVersion": "1.10.0"}))
    extra_cols = extra_cols or {}
    header = ["participant_id", "arm", *extra_cols]
    rows = [[pid, arm, *(extra_cols[c][i] for c in extra_cols)]
            for i, (pid, arm) in enumerate(arms.items())]
    write_table(root / "participants.tsv", [header, *rows])
    if dwi:
        for pid in arms:
            for ses in sessions:
                write_dwi(root / pid / f"ses-{ses}" / "dwi", f"{pid}_ses-{ses}_dwi", ext=ext)
    if scores:
        for pid in arms:
            write_sessions_tsv(root, pid, [[f"ses-{s}", m, q] for s, m, q in
                                           zip(sessions, (30, 15), (14, 7), strict=False)])
    return root


def write_sessions_tsv(root, pid, rows, *, header=("session_id", "madrs_total", "qids_total")):
    write_table(root / pid / f"{pid}_sessions.tsv", [list(header), *rows])


def load_quietly(root, **kwargs):
    """Load, and fail on any StudyWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", StudyWarning)
        return load_study(root, **kwargs)


def load_with_problems(root, **kwargs):
    with pytest.warns(StudyWarning) as record:
        study = load_study(root, **kwargs)
    warned = [str(w.message) for w in record if issubclass(w.category, StudyWarning)]
    assert warned == study.problems
    assert all("\n" not in p for p in study.problems)
    return study


def problem_with(study, *needles):
    hits = [p for p in study.problems if all(n in p for n in needles)]
    assert len(hits) == 1, (needles, study.problems)
    return hits[0]


ARMS3 = {"sub-01": "ketamine", "sub-02": "saline", "sub-03": "ketamine"}


# --------------------------------------------------------------------------
# Score layouts


def test_layout_a_per_subject_sessions_tsv(tmp_path):
    root = make_bids(tmp_path / "bids", ARMS3,
                     extra_cols={"age": [41, "n/a", 29], "sex": ["F", "M", "F"],
                                 "site": ["A", "B", "A"]})
    write_sessions_tsv(root, "sub-01", [["ses-pre", 30, 14], ["ses-post", 12, 6]])
    write_sessions_tsv(root, "sub-02", [["ses-pre", 28, "n/a"], ["ses-post", "n/a", 0]])
    write_sessions_tsv(root, "sub-03", [["ses-post", 20, 9], ["ses-pre", 35.5, 16]])

    study = load_quietly(root)

    assert isinstance(study, Study)
    assert study.bids_dir == root and study.pre == "pre" and study.post == "post"
    assert study.problems == [] and study.outcomes == DEFAULT_OUTCOMES
    assert list(study.participants.columns) == ["participant_id", "arm", "age", "sex", "site"]
    assert list(study.participants["site"]) == ["A", "B", "A"]
    expected = pd.DataFrame({
        "participant_id": ["sub-01", "sub-02", "sub-03"],
        "arm": ["ketamine", "saline", "ketamine"],
        "age": [41.0, np.nan, 29.0],
        "sex": ["F", "M", "F"],
        "madrs_pre": [30.0, 28.0, 35.5], "madrs_post": [12.0, np.nan, 20.0],
        "qids_pre": [14.0, np.nan, 16.0], "qids_post": [6.0, 0.0, 9.0],
    })
    pd.testing.assert_frame_equal(study.scores, expected, check_dtype=False)
    assert study.scores["madrs_post"].dtype == float
    # n/a is missing, never zero; a real 0 stays 0.
    assert math.isnan(study.scores.loc[1, "qids_pre"]) and study.scores.loc[1, "qids_post"] == 0

    s = study.sessions
    assert list(s.columns) == ["participant_id", "session", "timepoint", "dwi", "bval", "bvec",
                               "sidecar", "preprocessed"]
    assert s["preprocessed"].dtype == bool and not s["preprocessed"].any()
    assert study.preprocessed is False and study.raw_dir is None
    assert list(zip(s["participant_id"], s["session"], strict=True)) == [
        ("sub-01", "pre"), ("sub-01", "post"), ("sub-02", "pre"), ("sub-02", "post"),
        ("sub-03", "pre"), ("sub-03", "post")]
    row = s.iloc[3]
    base = root / "sub-02" / "ses-post" / "dwi" / "sub-02_ses-post_dwi"
    assert row["dwi"] == base.with_name(base.name + ".nii.gz")
    assert row["bval"] == base.with_name(base.name + ".bval")
    assert row["bvec"] == base.with_name(base.name + ".bvec")
    assert row["sidecar"] == base.with_name(base.name + ".json")
    assert study.complete_participants() == ["sub-01", "sub-02", "sub-03"]
    files = study.session_files("sub-02", "post")
    assert isinstance(files, SessionFiles) and files.dwi == row["dwi"]
    assert study.session_files("02", "ses-post") == files
    assert "3 participants (2 ketamine, 1 saline)" in repr(study)


def test_layout_b_long_phenotype(tmp_path):
    root = make_bids(tmp_path / "bids", ARMS3)
    write_table(root / "phenotype" / "depression.tsv", [
        ["participant_id", "session_id", "madrs_total", "qids_total", "notes"],
        ["sub-01", "pre", 31, 15, "x"],
        ["sub-01", "ses-post", 10, 5, "y"],
        ["sub-02", "ses-pre", "n/a", 12, ""],
        ["sub-02", "post", 22, 11, "z"],
        ["sub-03", "pre", 33, 17, "w"],
        ["sub-03", "screening", 40, 20, "not a study session"],
    ])
    study = load_quietly(root)
    sc = study.scores.set_index("participant_id")
    assert sc.loc["sub-01", ["madrs_pre", "madrs_post", "qids_pre", "qids_post"]].tolist() \
        == [31.0, 10.0, 15.0, 5.0]
    assert math.isnan(sc.loc["sub-02", "madrs_pre"]) and sc.loc["sub-02", "madrs_post"] == 22
    assert sc.loc["sub-03", "madrs_pre"] == 33 and math.isnan(sc.loc["sub-03", "madrs_post"])
    assert list(sc.columns) == ["arm", "madrs_pre", "madrs_post", "qids_pre", "qids_post"]


def test_a_phenotype_csv_is_named_not_silently_ignored(tmp_path):
    root = make_bids(tmp_path / "bids", ARMS3)
    write_sessions_tsv(root, "sub-01", [["ses-pre", 30, 14], ["ses-post", 12, 6]])
    (root / "phenotype").mkdir()
    (root / "phenotype" / "depression.csv").write_text("participant_id,madrs_total_pre\n")
    (root / "phenotype" / "depression.json").write_text("{}")  # a sidecar: no note
    study = load_with_problems(root)
    msg = problem_with(study, "phenotype/depression.csv")
    assert "not read" in msg and "save it as phenotype/depression.tsv" in msg
    assert not any("depression.json" in p for p in study.problems)


@pytest.mark.parametrize("where", ["phenotype", "participants"])
@pytest.mark.parametrize("suffix", ["{}", "ses-{}"])
def test_layout_c_wide_columns(tmp_path, where, suffix):
    cols = {f"madrs_total_{suffix.format('pre')}": [30, 25, "n/a"],
            f"madrs_total_{suffix.format('post')}": [10, 24, 8],
            f"qids_total_{suffix.format('pre')}": [14, 11, 16],
            f"qids_total_{suffix.format('post')}": [4, 12, "n/a"]}
    if where == "participants":
        root = make_bids(tmp_path / "bids", ARMS3, extra_cols=cols)
    else:
        root = make_bids(tmp_path / "bids", ARMS3)
        write_table(root / "phenotype" / "scores.tsv",
                    [["participant_id", *cols],
                     *[[pid, *(v[i] for v in cols.values())] for i, pid in enumerate(ARMS3)]])
    study = load_quietly(root)
    sc = study.scores
    np.testing.assert_array_equal(sc["madrs_pre"], [30, 25, np.nan])
    np.testing.assert_array_equal(sc["madrs_post"], [10, 24, 8])
    np.testing.assert_array_equal(sc["qids_pre"], [14, 11, 16])
    np.testing.assert_array_equal(sc["qids_post"], [4, 12, np.nan])


def test_sources_merge_and_conflicts_become_missing(tmp_path):
    root = make_bids(tmp_path / "bids", ARMS3)
    write_sessions_tsv(root, "sub-01", [["ses-pre", 30, 14], ["ses-post", 12, "n/a"]])
    write_table(root / "phenotype" / "qids.tsv", [
        ["participant_id", "qids_total_pre", "qids_total_post"],
        ["sub-01", 14, 7],    # pre agrees, post fills the n/a
        ["sub-02", 10, 9],
    ])
    write_table(root / "phenotype" / "madrs.tsv", [
        ["participant_id", "session_id", "madrs_total"],
        ["sub-01", "post", 13],  # disagrees with sub-01_sessions.tsv (12)
    ])
    study = load_with_problems(root)
    sc = study.scores.set_index("participant_id")
    assert sc.loc["sub-01", "qids_pre"] == 14 and sc.loc["sub-01", "qids_post"] == 7
    assert sc.loc["sub-02", "qids_post"] == 9
    assert sc.loc["sub-01", "madrs_pre"] == 30 and math.isnan(sc.loc["sub-01", "madrs_post"])
    msg = problem_with(study, "sub-01 ses-post madrs_total", "conflicting")
    assert "sub-01_sessions.tsv" in msg and "phenotype/madrs.tsv" in msg and "12" in msg
    assert len(study.problems) == 1


def test_custom_outcomes_and_missing_outcome(tmp_path):
    root = make_bids(tmp_path / "bids", ARMS3)
    for pid, (a, b) in zip(ARMS3, [(20, 8), (18, 17), (25, 12)], strict=True):
        write_sessions_tsv(root, pid, [["ses-pre", a], ["ses-post", b]],
                           header=("session_id", "hamd_total"))
    study = load_quietly(root, outcomes=("hamd_total",))
    assert list(study.scores.columns) == ["participant_id", "arm", "hamd_pre", "hamd_post"]
    np.testing.assert_array_equal(study.scores["hamd_post"], [8, 17, 12])
    # The default outcomes are nowhere: all n/a, one problem each, no crash.
    study = load_with_problems(root)
    assert study.scores[["madrs_pre", "madrs_post", "qids_pre", "qids_post"]].isna().all().all()
    assert "--outcomes" in problem_with(study, "madrs_total", "no such column")
    problem_with(study, "qids_total", "no such column")


def test_scores_for_one_visit_only_are_named_with_the_columns_looked_for(tmp_path):
    """A misspelt pre column: the post scores are there, the pre ones nowhere."""
    root = make_bids(tmp_path / "bids", ARMS3)
    for pid, (a, b) in zip(ARMS3, [(20, 8), (18, 17), (25, 12)], strict=True):
        write_sessions_tsv(root, pid, [["ses-before", a], ["ses-post", b]],
                           header=("session_id", "madrs_total"))
    study = load_with_problems(root)
    assert study.scores["madrs_pre"].isna().all() and study.scores["madrs_post"].notna().all()
    msg = problem_with(study, "madrs_total", "no score for ses-pre")
    assert "madrs_total_pre" in msg and "session_id ses-pre" in msg and "--pre-session" in msg
    assert not any("no score for ses-post" in p for p in study.problems)


# --------------------------------------------------------------------------
# Files and session labels


def test_nii_and_nii_gz_both_read(tmp_path):
    root = make_bids(tmp_path / "bids", {"sub-01": "ketamine"}, ext=".nii")
    root = make_bids(root, {"sub-01": "ketamine", "sub-02": "saline"}, dwi=False, scores=True)
    for ses in ("pre", "post"):
        write_dwi(root / "sub-02" / f"ses-{ses}" / "dwi", f"sub-02_ses-{ses}_dwi")
    study = load_quietly(root)
    names = [p.name for p in study.sessions["dwi"]]
    assert names == ["sub-01_ses-pre_dwi.nii", "sub-01_ses-post_dwi.nii",
                     "sub-02_ses-pre_dwi.nii.gz", "sub-02_ses-post_dwi.nii.gz"]
    assert study.complete_participants() == ["sub-01", "sub-02"]


def test_other_session_labels(tmp_path):
    root = make_bids(tmp_path / "bids", ARMS3, sessions=("baseline", "24h"))
    write_sessions_tsv(root, "sub-01", [["ses-baseline", 30, 14], ["ses-24h", 12, 5]])
    study = load_quietly(root, pre="baseline", post="ses-24h")
    assert study.pre == "baseline" and study.post == "24h"
    assert list(study.sessions["session"][:2]) == ["baseline", "24h"]
    assert list(study.sessions["timepoint"][:2]) == ["pre", "post"]
    assert study.sessions["dwi"][1].name == "sub-01_ses-24h_dwi.nii.gz"
    assert study.scores.loc[0, ["madrs_pre", "madrs_post"]].tolist() == [30.0, 12.0]
    assert study.complete_participants() == list(ARMS3)
    assert study.session_files("sub-01", "post") == study.session_files("sub-01", "24h")

    with pytest.raises(InputError) as err:
        load_study(root)
    msg = str(err.value)
    assert str(root) in msg and "no ses-pre or ses-post DWI found" in msg
    assert "sessions present: 24h, baseline" in msg and "--pre-session/--post-session" in msg
    with pytest.raises(InputError, match="no ses-post DWI found; sessions present: 24h, baseline"):
        load_study(root, pre="baseline")


def test_inherited_gradient_files_and_missing_sidecar(tmp_path):
    root = make_bids(tmp_path / "bids", {"sub-01": "ketamine"}, dwi=False, scores=True)
    for ses in ("pre", "post"):
        write_dwi(root / "sub-01" / f"ses-{ses}" / "dwi", f"sub-01_ses-{ses}_dwi",
                  bval=False, bvec=False, sidecar=False)
    write_dwi(tmp_path / "scratch", "dwi")  # gradient files only are moved to the root
    for ext in (".bval", ".bvec"):
        (tmp_path / "scratch" / f"dwi{ext}").rename(root / f"dwi{ext}")
    study = load_quietly(root)
    assert list(study.sessions["bval"]) == [root / "dwi.bval"] * 2
    assert list(study.sessions["bvec"]) == [root / "dwi.bvec"] * 2
    assert list(study.sessions["sidecar"]) == [None, None]


# --------------------------------------------------------------------------
# acq- / run- selection


@pytest.fixture
def multi_acq(tmp_path):
    root = make_bids(tmp_path / "bids", {"sub-01": "ketamine", "sub-02": "saline"}, dwi=False,
                     scores=True)
    for ses in ("pre", "post"):
        d = root / "sub-01" / f"ses-{ses}" / "dwi"
        write_dwi(d, f"sub-01_ses-{ses}_acq-b1000_dwi")
        write_dwi(d, f"sub-01_ses-{ses}_acq-b2000_dwi")
        # One series only, with entities: used whatever they are.
        write_dwi(root / "sub-02" / f"ses-{ses}" / "dwi", f"sub-02_ses-{ses}_acq-b3000_run-2_dwi")
    return root


def test_several_series_are_refused_without_a_choice(multi_acq):
    with pytest.raises(InputError) as err:
        load_study(multi_acq)
    msg = str(err.value)
    assert str(multi_acq / "sub-01" / "ses-pre" / "dwi") in msg
    assert "sub-01_ses-pre_acq-b1000_dwi.nii.gz" in msg
    assert "sub-01_ses-pre_acq-b2000_dwi.nii.gz" in msg
    assert "acq=" in msg and "--acq/--run" in msg and "b1000, b2000" in msg
    with pytest.raises(InputError, match=r"0 of its 2 DWI series match acq='b5000'"):
        load_study(multi_acq, acq="b5000")


@pytest.mark.parametrize("acq", ["b2000", "acq-b2000"])
def test_acq_chooses_one_series(multi_acq, acq):
    study = load_quietly(multi_acq, acq=acq)
    assert [p.name for p in study.sessions["dwi"]] == [
        "sub-01_ses-pre_acq-b2000_dwi.nii.gz", "sub-01_ses-post_acq-b2000_dwi.nii.gz",
        "sub-02_ses-pre_acq-b3000_run-2_dwi.nii.gz", "sub-02_ses-post_acq-b3000_run-2_dwi.nii.gz"]
    assert study.acq == "b2000"


def test_run_chooses_one_series_and_matches_zero_padding(tmp_path):
    root = make_bids(tmp_path / "bids", {"sub-01": "ketamine"}, dwi=False, scores=True)
    for ses in ("pre", "post"):
        for run in ("01", "02"):
            write_dwi(root / "sub-01" / f"ses-{ses}" / "dwi", f"sub-01_ses-{ses}_run-{run}_dwi")
    with pytest.raises(InputError, match=r"2 DWI series: .*run=.*run: 01, 02"):
        load_study(root)
    study = load_quietly(root, run=2)
    assert [p.name for p in study.sessions["dwi"]] == ["sub-01_ses-pre_run-02_dwi.nii.gz",
                                                       "sub-01_ses-post_run-02_dwi.nii.gz"]
    assert load_quietly(root, run="run-1").sessions["dwi"][0].name \
        == "sub-01_ses-pre_run-01_dwi.nii.gz"


# --------------------------------------------------------------------------
# Problems: reported, warned, and the rest loaded


def test_one_session_subject_is_a_problem_not_an_error(tmp_path):
    root = make_bids(tmp_path / "bids", ARMS3)
    for f in (root / "sub-02" / "ses-post" / "dwi").iterdir():
        f.unlink()
    (root / "sub-02" / "ses-post" / "dwi").rmdir()
    study = load_with_problems(root)
    msg = problem_with(study, "sub-02")
    assert "ses-pre only" in msg and "ses-post" in msg and "complete_participants" in msg
    assert study.complete_participants() == ["sub-01", "sub-03"]
    assert list(study.sessions.loc[study.sessions["participant_id"] == "sub-02", "session"]) \
        == ["pre"]
    assert "sub-02" in list(study.scores["participant_id"])
    with pytest.raises(KeyError, match="sub-02 has no usable ses-post DWI"):
        study.session_files("sub-02", "post")


def test_unknown_subjects_in_dwi_tree_and_score_tables(tmp_path):
    root = make_bids(tmp_path / "bids", ARMS3)
    for ses in ("pre", "post"):
        write_dwi(root / "sub-99" / f"ses-{ses}" / "dwi", f"sub-99_ses-{ses}_dwi")
    write_table(root / "phenotype" / "madrs.tsv", [
        ["participant_id", "session_id", "madrs_total", "qids_total"],
        ["sub-01", "pre", 30, 14], ["sub-77", "pre", 25, 10], ["sub-77", "post", 5, 3]])
    study = load_with_problems(root)
    assert "participants.tsv" in problem_with(study, "sub-99/", "not in participants.tsv")
    msg = problem_with(study, "phenotype/madrs.tsv", "sub-77 (line 3)")
    assert "sub-77 (line 4)" in msg and "participants.tsv" in msg
    assert "sub-99" not in set(study.sessions["participant_id"])
    assert "sub-99" not in set(study.scores["participant_id"])
    assert study.complete_participants() == list(ARMS3)
    # The only post scores are sub-77's: no known participant has one, and that is said.
    problem_with(study, "madrs_total", "no score for ses-post")
    problem_with(study, "qids_total", "no score for ses-post")
    assert len(study.problems) == 4


def test_participant_without_dwi_folder(tmp_path):
    root = make_bids(tmp_path / "bids", ARMS3)
    write_table(root / "participants.tsv",
                [["participant_id", "arm"], *ARMS3.items(), ["sub-04", "saline"]])
    study = load_with_problems(root)
    assert "sub-04/" in problem_with(study, "participants.tsv", "sub-04")
    assert list(study.scores["participant_id"]) == [*ARMS3, "sub-04"]
    assert study.complete_participants() == list(ARMS3)


def test_bvec_with_one_row_per_volume_is_accepted(tmp_path):
    # N rows of three: not FSL layout, but ketamine_nb.dwi.read_gradients transposes it.
    root = make_bids(tmp_path / "bids", ARMS3, scores=True)
    path = root / "sub-02" / "ses-pre" / "dwi" / "sub-02_ses-pre_dwi.bvec"
    np.savetxt(path, np.loadtxt(path).T)
    study = load_quietly(root)
    assert study.session_files("sub-02", "pre").bvec == path


def test_misnamed_and_doubled_series_are_problems(tmp_path):
    root = make_bids(tmp_path / "bids", ARMS3, scores=True)
    # A file named for another participant, and a series saved twice (.nii and .nii.gz).
    write_dwi(root / "sub-01" / "ses-pre" / "dwi", "sub-02_ses-pre_dwi")
    write_dwi(root / "sub-03" / "ses-post" / "dwi", "sub-03_ses-post_dwi", ext=".nii")
    study = load_with_problems(root)
    assert "rename it sub-01_ses-pre" in problem_with(
        study, "sub-01/ses-pre/dwi/sub-02_ses-pre_dwi.nii.gz", "not a BIDS DWI name")
    assert "delete one" in problem_with(study, "sub-03_ses-post_dwi: both .nii and .nii.gz")
    problem_with(study, "sub-03: usable DWI for ses-pre only")
    assert study.complete_participants() == ["sub-01", "sub-02"]
    assert study.sessions["dwi"][0].name == "sub-01_ses-pre_dwi.nii.gz"


def test_dwi_without_session_folders_is_refused_with_a_hint(tmp_path):
    root = make_bids(tmp_path / "bids", ARMS3, dwi=False)
    write_dwi(root / "sub-01" / "dwi", "sub-01_dwi")
    with pytest.raises(InputError, match=r"sessions present: none \(DWI found without session "
                                         r"folders, e.g. sub-01/dwi/sub-01_dwi.nii.gz"):
        load_study(root)


@pytest.mark.parametrize("damage, expect", [
    ("no_bval", "no .bval file"),
    ("no_bvec", "no .bvec file"),
    ("short_bval", "7 volumes but 6 b-values"),
    ("two_row_bvec", "has 2 rows and no side of 3"),
    ("short_bvec", "7 volumes but 7 b-values and 6 b-vectors"),
])
def test_unusable_gradient_files(tmp_path, damage, expect):
    root = make_bids(tmp_path / "bids", ARMS3)
    d = root / "sub-03" / "ses-post" / "dwi"
    stem = "sub-03_ses-post_dwi"
    if damage == "no_bval":
        (d / f"{stem}.bval").unlink()
    elif damage == "no_bvec":
        (d / f"{stem}.bvec").unlink()
    elif damage == "short_bval":
        (d / f"{stem}.bval").write_text("0 1000 1000 1000 1000 1000\n")
    elif damage == "two_row_bvec":
        np.savetxt(d / f"{stem}.bvec", np.loadtxt(d / f"{stem}.bvec")[:2])
    else:
        np.savetxt(d / f"{stem}.bvec", np.loadtxt(d / f"{stem}.bvec")[:, :6])
    study = load_with_problems(root)
    msg = problem_with(study, f"sub-03/ses-post/dwi/{stem}.nii.gz", expect)
    assert "session ignored" in msg
    problem_with(study, "sub-03: usable DWI for ses-pre only")
    assert study.complete_participants() == ["sub-01", "sub-02"]


# --------------------------------------------------------------------------
# Refusals: the dataset as a whole cannot be used


def _no_description(root):
    (root / "dataset_description.json").unlink()


def _no_participants(root):
    (root / "participants.tsv").unlink()


def _no_participant_id(root):
    write_table(root / "participants.tsv", [["subject", "arm"], ["sub-01", "ketamine"]])


def _no_arm(root):
    write_table(root / "participants.tsv", [["participant_id", "group"], ["sub-01", "ketamine"]])


def _bad_arms(root):
    write_table(root / "participants.tsv", [["participant_id", "arm"], ["sub-01", "Ketamine"],
                                            ["sub-02", "saline"], ["sub-03", "n/a"]])


def _duplicate(root):
    write_table(root / "participants.tsv", [["participant_id", "arm"], ["sub-01", "ketamine"],
                                            ["sub-02", "saline"], ["sub-01", "ketamine"]])


def _bad_score(root):
    write_sessions_tsv(root, "sub-02", [["ses-pre", 30, 14], ["ses-post", "twelve", 5]])


def _bad_phenotype_score(root):
    write_table(root / "phenotype" / "qids.tsv", [["participant_id", "qids_total_pre"],
                                                  ["sub-01", 14], ["sub-03", "14?"]])


@pytest.mark.parametrize("damage, file, needles", [
    (_no_description, "dataset_description.json", ["not found", "pass the folder"]),
    (_no_participants, "participants.tsv", ["not found", "add it", "participant_id and arm"]),
    (_no_participant_id, "participants.tsv",
     ["no 'participant_id' column", "columns: subject, arm", "add the participant_id column"]),
    (_no_arm, "participants.tsv", ["no 'arm' column", "add the arm column (ketamine or saline)"]),
    (_bad_arms, "participants.tsv",
     ["'Ketamine' on line 2 (sub-01)", "n/a on line 4 (sub-03)", "correct these rows"]),
    (_duplicate, "participants.tsv",
     ["duplicate participant_id", "sub-01 (line 2)", "sub-01 (line 4)", "one row per"]),
    (_bad_score, "sub-02/sub-02_sessions.tsv",
     ["column 'madrs_total'", "'twelve' on line 3", "sub-02 ses-post", "n/a for a missing"]),
    (_bad_phenotype_score, "phenotype/qids.tsv",
     ["column 'qids_total_pre'", "'14?' on line 3, sub-03", "write a number"]),
])
def test_refusals_name_the_file_and_the_fix(tmp_path, damage, file, needles):
    root = make_bids(tmp_path / "bids", ARMS3)
    damage(root)
    with pytest.raises(InputError) as err:
        load_study(root)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(root / file) in msg
    for needle in needles:
        assert needle in msg


def test_refusals_of_the_folder_itself(tmp_path):
    with pytest.raises(InputError, match="folder not found; check the path"):
        load_study(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="file.txt: not a folder; pass the root folder"):
        load_study(tmp_path / "file.txt")
    root = make_bids(tmp_path / "bids", ARMS3, dwi=False)
    with pytest.raises(InputError, match="no ses-pre or ses-post DWI found; sessions present: "
                                         "none; pass pre=/post="):
        load_study(root)


def test_bad_arguments(tmp_path):
    root = make_bids(tmp_path / "bids", ARMS3)
    with pytest.raises(InputError, match="pre and post are both 'pre'"):
        load_study(root, post="ses-pre")
    with pytest.raises(InputError, match="is not a BIDS session label"):
        load_study(root, pre="pre infusion")


# --------------------------------------------------------------------------
# The simulated cohort


def _tree_hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from ketamine_nb.simulate import SimulationParams, simulate_cohort

    out = tmp_path_factory.mktemp("simulated") / "bids"
    simulate_cohort(out, params=SimulationParams.idealised(n_subjects=4), progress=False)
    return out


def test_simulated_cohort_loads_exactly_and_read_only(simulated):
    before = _tree_hashes(simulated)
    study = load_quietly(simulated)
    assert _tree_hashes(simulated) == before

    truth = pd.read_csv(simulated / "derivatives" / "simulation" / "scores_wide.tsv", sep="\t")
    got = study.scores[truth.columns]
    pd.testing.assert_frame_equal(got, truth, check_dtype=False)
    assert (got[["madrs_pre", "madrs_post", "qids_pre", "qids_post"]].to_numpy()
            == truth[["madrs_pre", "madrs_post", "qids_pre", "qids_post"]].to_numpy()).all()

    participants = pd.read_csv(simulated / "participants.tsv", sep="\t")
    assert list(study.participants["participant_id"]) == list(participants["participant_id"])
    assert list(study.participants["arm"]) == list(participants["arm"])
    assert list(study.scores["arm"]) == list(participants["arm"])
    assert study.complete_participants() == list(participants["participant_id"])
    assert len(study.sessions) == 8
    assert all(p.is_file() for col in ("dwi", "bval", "bvec", "sidecar")
               for p in study.sessions[col])
    # Raw data ("DatasetType": "raw") with a GeneratedBy: realigned like any raw scan.
    # (It was read as preprocessed, so the pipeline never realigned the simulated cohort.)
    assert not study.sessions["preprocessed"].any()


@pytest.mark.parametrize("desc, derivative", [
    ({}, False),
    ({"DatasetType": "raw"}, False),
    ({"DatasetType": "raw", "GeneratedBy": [{"Name": "a converter"}]}, False),
    ({"DatasetType": "derivative"}, True),
    ({"DatasetType": "Derivative", "GeneratedBy": [{"Name": "qsiprep"}]}, True),
    ({"GeneratedBy": [{"Name": "qsiprep"}]}, True),               # no DatasetType: legacy
    ({"PipelineDescription": {"Name": "qsiprep"}}, True),
])
def test_dataset_type_decides_raw_or_preprocessed(tmp_path, desc, derivative):
    from ketamine_nb.study import _is_derivative

    (tmp_path / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "BIDSVersion": "1.10.0", **desc}))
    assert _is_derivative(tmp_path) is derivative


def test_import_does_not_load_nibabel_or_dipy():
    code = ("import sys, ketamine_nb.study; "
            "print(sorted(m for m in ('nibabel', 'dipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
