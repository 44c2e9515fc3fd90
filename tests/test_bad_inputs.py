"""A corpus of bad inputs: each gives its exit code and a one-line message, loses nothing.

Every case starts from a small valid dataset (two participants from the
simulated cohort), breaks one thing, runs ``ketamine-nb run`` and checks:
the exit code (0 done, 1 some subjects failed, 2 nothing could be done), a
message that names the file or subject and says the fix, no traceback, the
raw tree byte-identical afterwards, and the good participant's outputs and
deltas complete. The sessions (and halfway steps) a case does not touch are
seeded from the shared run's outputs and reused by the pipeline (same
processing key, same raw-file size and time: ``shutil.copytree`` keeps both).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import tree_hashes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketamine_nb.cli import main
from ketamine_nb.derivatives import participant_paths, session_paths
from ketamine_nb.dwi import check_gradients, read_gradients
from ketamine_nb.exceptions import InputError
from ketamine_nb.pipeline import run_pipeline

GOOD, BAD = "sub-001", "sub-002"


def _dwi(root, pid=BAD, ses="post", ext=".nii.gz"):
    return root / pid / f"ses-{ses}" / "dwi" / f"{pid}_ses-{ses}_dwi{ext}"


@pytest.fixture(scope="module")
def base(processed_cohort, tmp_path_factory):
    """Two participants' raw data and their processed derivatives (to seed each case)."""
    src = processed_cohort["bids"]
    root = tmp_path_factory.mktemp("base")
    raw = root / "raw"
    raw.mkdir()
    for name in ("dataset_description.json", "participants.json", "sessions.json", "README"):
        shutil.copy2(src / name, raw / name)
    parts = pd.read_csv(src / "participants.tsv", sep="\t")
    parts[parts["participant_id"].isin([GOOD, BAD])].to_csv(raw / "participants.tsv",
                                                            sep="\t", index=False)
    for pid in (GOOD, BAD):
        shutil.copytree(src / pid, raw / pid)   # copy2: sizes and times kept
    # Their outputs from the shared run (processed there, by two worker
    # processes): this run only reuses them and writes the two-participant tables.
    deriv = root / "deriv"
    for pid in (GOOD, BAD):
        shutil.copytree(processed_cohort["out"] / pid, deriv / pid)
    res = run_pipeline(raw, deriv, progress=False)
    assert res.exit_code == 0
    assert set(res.sessions["status"]) == {"reused"}, res.sessions
    assert set(res.participants["status"]) == {"reused"}, res.participants
    return {"raw": raw, "deriv": deriv}


def _case(base, tmp_path, mutate, *, seed_sessions=((GOOD, "pre"), (GOOD, "post"),
                                                   (BAD, "pre"), (BAD, "post"))):
    raw, out = tmp_path / "raw", tmp_path / "out"
    shutil.copytree(base["raw"], raw)
    # Seed the derivatives of the sessions the case does not touch (reused, fast),
    # and the halfway-space outputs of a participant whose two sessions are seeded
    # (reused too, unless the case changes one of its sessions).
    for pid, ses in seed_sessions:
        d = session_paths(base["deriv"], pid, ses)["dir"]
        shutil.copytree(d, out / pid / f"ses-{ses}" / "dwi")
    for pid in dict.fromkeys(p for p, _ in seed_sessions):
        if {(pid, "pre"), (pid, "post")} <= set(seed_sessions):
            shutil.copytree(participant_paths(base["deriv"], pid)["dir"], out / pid / "dwi")
    extra = mutate(raw, out) or []
    return raw, out, extra


def _run(capsys, raw, out, extra=()):
    before = tree_hashes(raw) if raw.exists() else None
    code = main(["run", str(raw), str(out), "--quiet", *extra])
    err = capsys.readouterr().err
    if before is not None:
        assert tree_hashes(raw) == before, "the raw tree was modified"
    assert "Traceback" not in err
    return code, err


def _good_complete(out):
    deltas = pd.read_csv(out / "roi_deltas.tsv", sep="\t")
    assert set(deltas.loc[deltas["participant_id"] == GOOD, "region"]) == {
        "BA10_L", "BA10_R", "amygdala_L", "amygdala_R", "hippocampus_L", "hippocampus_R",
        "vACC", "global_gm"}
    assert deltas.loc[deltas["participant_id"] == GOOD, "delta_md"].notna().all()
    for ses in ("pre", "post"):
        for key in ("md", "fa", "mask", "xfm", "voxels", "qc", "md_mni"):
            assert session_paths(out, GOOD, ses)[key].exists()
    return deltas


# --------------------------------------------------------------------------
# Per-session problems: exit 1, the other participant complete


def _truncate(raw, out):
    f = _dwi(raw)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


def _bit_flip(raw, out):
    """One flipped bit inside the compressed data: only the gzip CRC tells."""
    f = _dwi(raw)
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x10
    f.write_bytes(bytes(b))


def _zero_bytes(raw, out):
    _dwi(raw).write_bytes(b"")


def _not_nifti(raw, out):
    _dwi(raw).write_bytes(gzip.compress(b"this is a spreadsheet, not an image\n" * 100))


def _three_d(raw, out):
    img = nib.load(_dwi(raw))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), _dwi(raw))


def _nans(raw, out):
    img = nib.load(_dwi(raw))
    data = np.asarray(img.dataobj, np.float32)
    data[10, 10, 10, 3] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), _dwi(raw))


def _bval_count(raw, out):
    f = _dwi(raw, ext=".bval")
    f.write_text(" ".join(f.read_text().split()[:-2]) + "\n")


def _bvec_two_rows(raw, out):
    f = _dwi(raw, ext=".bvec")
    f.write_text("\n".join(f.read_text().splitlines()[:2]) + "\n")


def _no_b0(raw, out):
    f = _dwi(raw, ext=".bval")
    f.write_text(" ".join("1000" for _ in f.read_text().split()) + "\n")
    v = _dwi(raw, ext=".bvec")
    rows = [r.split() for r in v.read_text().splitlines()]
    for j in range(len(rows[0])):
        if all(float(r[j]) == 0 for r in rows):
            rows[0][j] = "1.0"
    v.write_text("\n".join(" ".join(r) for r in rows) + "\n")


def _ms_um2(raw, out):
    f = _dwi(raw, ext=".bval")
    f.write_text(" ".join(f"{float(b) / 1000:g}" for b in f.read_text().split()) + "\n")


def _mismatched_affines(raw, out):
    img = nib.load(_dwi(raw))
    q = img.affine.copy()
    q[:3, 3] += 5.0
    img.set_qform(q, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, _dwi(raw))


def _missing_bvec(raw, out):
    _dwi(raw, ext=".bvec").unlink()


def _missing_post_session(raw, out):
    shutil.rmtree(raw / BAD / "ses-post")


PER_SESSION = [
    ("truncated .nii.gz", _truncate, "sub-002_ses-post_dwi.nii.gz", "copy"),
    ("zero-byte .nii.gz", _zero_bytes, "sub-002_ses-post_dwi.nii.gz", "empty"),
    ("damaged .nii.gz (CRC)", _bit_flip, "sub-002_ses-post_dwi.nii.gz", "CRC check failed"),
    ("not a NIfTI file", _not_nifti, "sub-002_ses-post_dwi.nii.gz", "not a NIfTI"),
    ("3D image as DWI", _three_d, "sub-002_ses-post_dwi.nii.gz", "not 4D"),
    ("NaNs in the data", _nans, "sub-002_ses-post_dwi.nii.gz", "NaN"),
    ("bval count != volumes", _bval_count, "sub-002", "b-value"),
    ("bvec with two rows", _bvec_two_rows, "sub-002", "three rows"),
    ("no b0 volume", _no_b0, "sub-002", "b=0"),
    ("b-values in ms/µm²", _ms_um2, "sub-002", "ms/µm²"),
    ("sform/qform mismatch", _mismatched_affines, "sub-002_ses-post_dwi.nii.gz", "qform"),
    ("missing .bvec", _missing_bvec, "sub-002", ".bvec"),
    ("missing post session", _missing_post_session, "sub-002", "ses-post"),
]


@pytest.mark.parametrize(("name", "mutate", "where", "what"), PER_SESSION,
                         ids=[c[0] for c in PER_SESSION])
def test_a_bad_session_fails_alone(base, tmp_path, capsys, name, mutate, where, what):
    raw, out, extra = _case(base, tmp_path, mutate,
                            seed_sessions=((GOOD, "pre"), (GOOD, "post"), (BAD, "pre")))
    code, err = _run(capsys, raw, out, extra)
    assert code == 1, err
    failures = pd.read_csv(out / "failures.tsv", sep="\t")
    assert failures["participant_id"].tolist() == [BAD], failures
    # the session at fault is named, whether it failed to load or is missing
    assert failures["session"].tolist() == ["post"], failures
    msg = failures["error"].iloc[0]
    assert where in msg and what.lower() in msg.lower(), msg
    assert "\n" not in msg
    deltas = _good_complete(out)
    assert BAD not in set(deltas["participant_id"])


def test_exit_1_says_in_words_that_the_rest_is_complete(base, tmp_path, capsys):
    """A participant with one session: exit 1, and the summary says it is no crash (18.4)."""
    raw, out, extra = _case(base, tmp_path, _missing_post_session,
                            seed_sessions=((GOOD, "pre"), (GOOD, "post"), (BAD, "pre")))
    code = main(["run", str(raw), str(out), "--quiet", *extra])
    printed = capsys.readouterr().out
    assert code == 1
    assert "1 participant(s) left out" in printed and "failures.tsv" in printed
    assert "complete and usable for the other 1 participant(s)" in printed
    assert "Exit code 1 means exactly this" in printed
    assert f"failed {BAD} ses-post: " in printed
    _good_complete(out)


# --------------------------------------------------------------------------
# Dataset-level problems: exit 2, nothing processed


def _rm_participants(raw, out):
    (raw / "participants.tsv").unlink()


def _no_arm(raw, out):
    p = pd.read_csv(raw / "participants.tsv", sep="\t").drop(columns=["arm"])
    p.to_csv(raw / "participants.tsv", sep="\t", index=False)


def _unknown_arm(raw, out):
    p = pd.read_csv(raw / "participants.tsv", sep="\t")
    p.loc[1, "arm"] = "placebo"
    p.to_csv(raw / "participants.tsv", sep="\t", index=False)


def _duplicate(raw, out):
    p = pd.read_csv(raw / "participants.tsv", sep="\t")
    pd.concat([p, p.iloc[[0]]]).to_csv(raw / "participants.tsv", sep="\t", index=False)


def _non_numeric_score(raw, out):
    f = raw / BAD / f"{BAD}_sessions.tsv"
    s = pd.read_csv(f, sep="\t")
    s["madrs_total"] = s["madrs_total"].astype(object)
    s.loc[0, "madrs_total"] = "twelve"
    s.to_csv(f, sep="\t", index=False)


def _empty_dataset(raw, out):
    for pid in (GOOD, BAD):
        shutil.rmtree(raw / pid)


def _no_description(raw, out):
    (raw / "dataset_description.json").unlink()


def _bad_json(raw, out):
    (raw / "dataset_description.json").write_text("{ not json")


def _garbage_participants(raw, out):
    (raw / "participants.tsv").write_bytes(b"\x00\x01\x02\xff" * 50)


def _readonly_out(raw, out):
    out.chmod(0o555)


DATASET = [
    ("participants.tsv missing", _rm_participants, (), "participants.tsv"),
    ("participants without arm", _no_arm, (), "arm"),
    ("unknown arm", _unknown_arm, (), "placebo"),
    ("duplicate participant", _duplicate, (), "sub-001"),
    ("non-numeric score", _non_numeric_score, (), "twelve"),
    ("empty dataset", _empty_dataset, (), "DWI"),
    ("no dataset_description.json", _no_description, (), "dataset_description.json"),
    ("dataset_description not JSON", _bad_json, (), "dataset_description.json"),
    ("participants.tsv is garbage", _garbage_participants, (), "participants.tsv"),
    ("wrong --pre-session", lambda raw, out: None, ("--pre-session", "baseline"),
     "sessions present: post, pre"),
    ("unknown --participant-label", lambda raw, out: None, ("--participant-label", "sub-077"),
     "sub-077"),
    ("probability threshold > 1", lambda raw, out: None, ("--probability-threshold", "1.5"),
     "fraction"),
]


@pytest.mark.parametrize(("name", "mutate", "args", "what"), DATASET,
                         ids=[c[0] for c in DATASET])
def test_an_unusable_dataset_is_refused_whole(base, tmp_path, capsys, name, mutate, args,
                                              what):
    raw, out, _ = _case(base, tmp_path, mutate, seed_sessions=())
    code, err = _run(capsys, raw, out, list(args))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and what.lower() in lines[0].lower(), err
    assert not (out / "roi_deltas.tsv").exists()


def test_nonexistent_folder(tmp_path, capsys):
    code = main(["run", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and "not found" in err


def test_out_dir_inside_or_equal_to_raw_is_refused(base, tmp_path, capsys):
    raw, _, _ = _case(base, tmp_path, lambda r, o: None, seed_sessions=())
    for out in (raw / "derivatives" / "ketamine", raw):
        code, err = _run(capsys, raw, out)
        assert code == 2 and "inside the raw dataset" in err
    assert not (raw / "derivatives" / "ketamine").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_out_dir_is_refused(base, tmp_path, capsys):
    raw, out, _ = _case(base, tmp_path, _readonly_out, seed_sessions=())
    code, err = _run(capsys, raw, out)
    assert code == 2 and "not writable" in err


def test_out_dir_that_is_a_file_is_refused(base, tmp_path, capsys):
    raw, _, _ = _case(base, tmp_path, lambda r, o: None, seed_sessions=())
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    code, err = _run(capsys, raw, f)
    assert code == 2 and "not a folder" in err
    assert f.read_text() == "keep me"


def test_debug_shows_the_traceback(base, tmp_path):
    raw, out, _ = _case(base, tmp_path, _rm_participants, seed_sessions=())
    with pytest.raises(InputError):
        main(["--debug", "run", str(raw), str(out), "--quiet"])


def test_phenotype_na_is_missing_not_zero(base, tmp_path, capsys):
    def na(raw, out):
        f = raw / BAD / f"{BAD}_sessions.tsv"
        f.write_text(f.read_text().replace("\t", "\t", 1).splitlines()[0] + "\n"
                     + "ses-pre\tn/a\t12\n" + "\n".join(f.read_text().splitlines()[2:]) + "\n")
        # The model needs two arms (one participant each here: rows, but no estimate).
        p = pd.read_csv(raw / "participants.tsv", sep="\t")
        p.loc[p["participant_id"] == BAD, "arm"] = "saline"
        p.to_csv(raw / "participants.tsv", sep="\t", index=False)
    raw, out, _ = _case(base, tmp_path, na)
    code, err = _run(capsys, raw, out)
    assert code == 0, err
    scores = pd.read_csv(out / "scores.tsv", sep="\t", na_values="n/a", keep_default_na=False)
    assert np.isnan(scores.set_index("participant_id").loc[BAD, "madrs_pre"])
    assert main(["stats", str(out), "--permutations", "0", "--bootstrap", "0"]) == 0
    err = capsys.readouterr().err
    assert "sub-002" in err and "madrs" in err           # dropped from MADRS only, said so
    inp = pd.read_csv(out / "stats_input.tsv", sep="\t")
    assert BAD not in set(inp.loc[inp.outcome == "madrs", "participant_id"])
    assert BAD in set(inp.loc[inp.outcome == "qids", "participant_id"])


def test_a_changed_raw_file_is_recomputed_not_reused(base, tmp_path, capsys):
    def replace(raw, out):
        img = nib.load(_dwi(raw, GOOD, "pre"))
        data = np.asarray(img.dataobj).copy()
        data[..., 1:] = (data[..., 1:] * 0.9).astype(data.dtype)   # a different series
        nib.save(nib.Nifti1Image(data, img.affine, img.header), _dwi(raw, GOOD, "pre"))
    raw, out, _ = _case(base, tmp_path, replace)
    untouched = session_paths(out, BAD, "post")["qc"]
    seeded = untouched.stat().st_mtime_ns    # copied with its time; rewritten if redone
    code, err = _run(capsys, raw, out)
    assert code == 0, err
    qc = json.loads(session_paths(out, GOOD, "pre")["qc"].read_text())
    old = json.loads(session_paths(base["deriv"], GOOD, "pre")["qc"].read_text())
    assert qc["inputs"] != old["inputs"]
    assert session_paths(out, GOOD, "pre")["md"].read_bytes() != \
        session_paths(base["deriv"], GOOD, "pre")["md"].read_bytes()
    # The halfway step, seeded too, is redone on the new session; the other is reused.
    longitudinal = [json.loads(participant_paths(d, GOOD)["qc"].read_text())
                    for d in (out, base["deriv"])]
    assert longitudinal[0]["inputs"] != longitudinal[1]["inputs"]
    assert untouched.stat().st_mtime_ns == seeded


def test_killed_run_resumes_to_identical_tables(base, tmp_path):
    """SIGKILL in the middle, start again: byte-identical tables to an uninterrupted run.

    The uninterrupted run is the shared one (two worker processes). The other
    participant's outputs are seeded (reused), so the run that is killed is one
    participant's: its pre session, then its post session (the kill lands
    here), then its halfway step.
    """
    raw = base["raw"]
    out = tmp_path / "killed"
    shutil.copytree(base["deriv"] / BAD, out / BAD)
    cmd = [sys.executable, "-m", "ketamine_nb.cli", "run", str(raw), str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first_done = session_paths(out, GOOD, "pre")["qc"]
    deadline = time.time() + 300
    while not first_done.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "roi_deltas.tsv").exists()
    # No half-written file under a final name: every .nii.gz that exists loads.
    for f in out.rglob("*.nii.gz"):
        nib.load(f).get_fdata()
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    # It resumes: the session finished before the kill and the seeded ones are reused.
    assert "sessions: 1 processed, 3 reused, 0 failed" in again.stdout, again.stdout
    for table in ("roi_md.tsv", "roi_deltas.tsv"):
        assert (out / table).read_bytes() == (base["deriv"] / table).read_bytes(), table


# --------------------------------------------------------------------------
# Property-based tests of the readers


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_b0=st.integers(1, 4), n_dw=st.integers(6, 40),
       bval=st.sampled_from([500.0, 1000.0, 1500.0, 3000.0]), seed=st.integers(0, 2**31 - 1),
       transposed=st.booleans())
def test_gradient_files_round_trip(tmp_path, n_b0, n_dw, bval, seed, transposed):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n_dw, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    bvals = np.r_[np.zeros(n_b0), np.full(n_dw, bval)]
    bvecs = np.r_[np.zeros((n_b0, 3)), v]
    fb, fv = tmp_path / f"g{seed}.bval", tmp_path / f"g{seed}.bvec"
    fb.write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    rows = bvecs if transposed else bvecs.T
    fv.write_text("\n".join(" ".join(f"{x:.8f}" for x in r) for r in rows) + "\n")
    b, g = read_gradients(fb, fv)
    b, g = check_gradients(b, g, n_b0 + n_dw)
    np.testing.assert_allclose(b, bvals)
    np.testing.assert_allclose(g, bvecs, atol=1e-7)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_gradient_file_text_gives_either_values_or_a_clear_error(tmp_path, text):
    fb, fv = tmp_path / "x.bval", tmp_path / "x.bvec"
    fb.write_text(text)
    fv.write_text(text)
    try:
        b, g = read_gradients(fb, fv)
        check_gradients(b, g, len(b), source="x.bval")
    except InputError as exc:
        assert "\n" not in str(exc) and ("x.bval" in str(exc) or "x.bvec" in str(exc))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cells=st.lists(st.sampled_from(["n/a", "", "12", "0", "27", "3.5"]), min_size=4,
                      max_size=4))
def test_score_tables_read_na_as_missing_never_zero(base, tmp_path_factory, cells):
    from ketamine_nb.study import load_study

    raw = tmp_path_factory.mktemp("scores") / "raw"
    shutil.copytree(base["raw"], raw)
    f = raw / BAD / f"{BAD}_sessions.tsv"
    f.write_text("session_id\tmadrs_total\tqids_total\n"
                 f"ses-pre\t{cells[0]}\t{cells[1]}\nses-post\t{cells[2]}\t{cells[3]}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = load_study(raw)
    row = study.scores.set_index("participant_id").loc[BAD]
    for cell, col in zip(cells, ("madrs_pre", "qids_pre", "madrs_post", "qids_post"),
                         strict=True):
        if cell in ("n/a", ""):
            assert np.isnan(row[col])
        else:
            assert row[col] == float(cell)
