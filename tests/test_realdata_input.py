"""Real scans in: MD equals dipy's WLS, real series realign, QSIPrep-style derivatives load.

The real series live in ``../shared/realdata/`` (two small DTI datasets in BIDS, read in
place); the tests that need them skip with the reason where the folder is missing. dipy's own
real crops (``small_64D``, ``small_101D``, ``small_25``) come with every dipy install.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ketamine_nb.dwi import brain_mask, load_dwi
from ketamine_nb.exceptions import InputError, StudyWarning
from ketamine_nb.study import load_study
from ketamine_nb.tensor import fit_dti

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
SERIES = sorted(REALDATA.glob("*/sub-*/ses-*/dwi/*_dwi.nii.gz"))
needs_realdata = pytest.mark.skipif(
    not SERIES, reason=f"real DWI not found in {REALDATA} (the shared realdata folder of the "
                       "project; CI has it)")


def _md_vs_dipy(img, gtab, mask):
    from dipy.reconst.dti import TensorModel

    data = np.asarray(img.dataobj, np.float32)
    md, fa = fit_dti(img, gtab, mask=mask)
    ref = TensorModel(gtab, fit_method="WLS").fit(data, mask=mask)
    return (np.asarray(md.dataobj)[mask].astype(float), ref.md[mask],
            np.asarray(fa.dataobj)[mask].astype(float), np.nan_to_num(ref.fa[mask]))


@needs_realdata
@pytest.mark.parametrize("path", SERIES, ids=[str(p.relative_to(REALDATA)) for p in SERIES])
def test_md_equals_dipy_wls_on_real_series(path):
    img, gtab = load_dwi(path)
    mask = np.asarray(brain_mask(img, gtab).dataobj) > 0
    assert mask.sum() > 10000                                   # a brain, not a sliver
    md, md_dipy, fa, fa_dipy = _md_vs_dipy(img, gtab, mask)
    # Same algorithm; float32 rounding only (about 6e-8 relative measured).
    np.testing.assert_allclose(md, md_dipy, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(fa, fa_dipy, atol=1e-6)
    assert 0.5e-3 < np.median(md) < 1.2e-3                      # brain tissue, mm²/s


@pytest.mark.parametrize("name, max_bval", [("small_64D", 1500.0), ("small_101D", 1500.0),
                                            ("small_25", None)])
def test_md_equals_dipy_wls_on_dipy_crops(name, max_bval):
    from dipy.data import get_fnames

    dwi, bval, bvec = get_fnames(name=name)
    img, gtab = load_dwi(dwi, bval, bvec, max_bval=max_bval)
    mask = np.ones(img.shape[:3], bool)
    md, md_dipy, fa, fa_dipy = _md_vs_dipy(img, gtab, mask)
    np.testing.assert_allclose(md, md_dipy, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(fa, fa_dipy, atol=1e-6)


@needs_realdata
def test_real_datasets_load_as_studies():
    with pytest.warns(Warning):
        uih = load_study(REALDATA / "uih-retest")
    assert uih.complete_participants() == ["sub-01", "sub-03"]
    assert any("sub-02" in p for p in uih.problems)
    assert not uih.preprocessed and not uih.sessions["preprocessed"].any()
    slab = load_study(REALDATA / "philips-slab")
    assert slab.complete_participants() == ["sub-01"]


@needs_realdata
def test_planted_motion_in_a_real_series_is_recovered():
    """A real series with one DW volume moved by a known 2 mm / 2 degrees."""
    from scipy.ndimage import affine_transform

    from ketamine_nb.motion import _rms_displacement, _rotation, realign_series

    img, gtab = load_dwi(REALDATA / "uih-retest/sub-01/ses-pre/dwi/sub-01_ses-pre_dwi.nii.gz")
    _, _, before = realign_series(img, gtab, exclude_volumes=False)
    centre = np.array(before.attrs["centre_mm"])
    C = np.eye(4)
    C[:3, 3] = centre
    T = np.eye(4)
    T[:3, :3] = _rotation(np.radians([2.0, 0.0, 0.0]))
    T[:3, 3] = [0.0, 2.0, 0.0]
    T = C @ T @ np.linalg.inv(C)                                # about the brain's centre
    v = 6
    data = np.asarray(img.dataobj, np.float32).copy()
    M = np.linalg.inv(img.affine) @ np.linalg.inv(T) @ img.affine
    data[..., v] = affine_transform(data[..., v], M[:3, :3], M[:3, 3], order=3,
                                    mode="nearest")
    _, _, after = realign_series(nib.Nifti1Image(data, img.affine), gtab, exclude_volumes=False)
    # Against the other DW volumes (the series' DW volumes as a whole may settle a little
    # differently relative to the b0 once motion is found): the planted 2 mm / 2 deg come back.
    errors = []
    for u in np.flatnonzero(~gtab.b0s_mask):
        if u == v:
            continue
        b_u, b_v = (np.array(before.attrs["transforms"][k]) for k in (u, v))
        a_u, a_v = (np.array(after.attrs["transforms"][k]) for k in (u, v))
        expected = T @ b_v @ np.linalg.inv(b_u)
        err = np.linalg.inv(C) @ np.linalg.inv(expected) @ a_v @ np.linalg.inv(a_u) @ C
        errors.append(_rms_displacement(err))
    assert np.median(errors) < 0.3                              # mm, over a 50 mm sphere
    assert after.loc[v, "displacement"] > 1.5 and after.loc[v, "resampled"]


# --------------------------------------------------------------------------
# QSIPrep-like derivatives


def _qsiprep_tree(tmp_path, *, b_table_for=("sub-02", "post")):
    """A fake QSIPrep output (derivative) and the raw BIDS folder with participants and scores."""
    from ketamine_nb.simulate import SimulationParams, simulate_session

    params = SimulationParams.idealised(n_directions=12, n_b0=2)
    img, bvals, bvecs = simulate_session(params, seed=0)
    deriv, raw = tmp_path / "qsiprep", tmp_path / "raw"
    deriv.mkdir()
    raw.mkdir()
    (deriv / "dataset_description.json").write_text(json.dumps({
        "Name": "QSIPrep output", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "qsiprep", "Version": "0.19.0"}]}))
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "raw",
                                                              "BIDSVersion": "1.8.0"}))
    (raw / "participants.tsv").write_text("participant_id\tarm\nsub-01\tketamine\n"
                                          "sub-02\tsaline\n")
    A = img.affine[:3, :3]
    D = A / np.linalg.norm(A, axis=0)
    F = np.diag([-1.0, 1, 1]) if np.linalg.det(D) > 0 else np.eye(3)
    for pid, score in (("sub-01", (30, 12)), ("sub-02", (28, 25))):
        (raw / pid).mkdir()
        (raw / pid / f"{pid}_sessions.tsv").write_text(
            f"session_id\tmadrs_total\tqids_total\nses-pre\t{score[0]}\t{score[0] // 2}\n"
            f"ses-post\t{score[1]}\t{score[1] // 2}\n")
        for ses in ("pre", "post"):
            folder = deriv / pid / f"ses-{ses}" / "dwi"
            folder.mkdir(parents=True)
            stem = folder / f"{pid}_ses-{ses}_space-T1w_desc-preproc_dwi"
            nib.save(img, f"{stem}.nii.gz")
            if (pid, ses) == b_table_for:   # MRtrix table only: world-frame directions
                world = (D @ F @ bvecs.T).T
                Path(f"{stem}.b").write_text("".join(
                    f"{x:.8f} {y:.8f} {z:.8f} {b:g}\n" for (x, y, z), b in zip(world, bvals,
                                                                                strict=True)))
            else:
                Path(f"{stem}.bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
                Path(f"{stem}.bvec").write_text("\n".join(" ".join(f"{x:.8f}" for x in row)
                                                          for row in bvecs.T) + "\n")
            nib.save(nib.Nifti1Image(np.ones(img.shape[:3], np.uint8), img.affine),
                     folder / f"{pid}_ses-{ses}_space-T1w_desc-brain_mask.nii.gz")
    # A second space for one session: the T1w one is preferred.
    src = deriv / "sub-01" / "ses-pre" / "dwi"
    for ext in (".nii.gz", ".bval", ".bvec"):
        (src / f"sub-01_ses-pre_space-ACPC_desc-preproc_dwi{ext}").write_bytes(
            (src / f"sub-01_ses-pre_space-T1w_desc-preproc_dwi{ext}").read_bytes())
    return deriv, raw, bvals, bvecs


def test_qsiprep_derivatives_load_as_preprocessed(tmp_path):
    deriv, raw, bvals, bvecs = _qsiprep_tree(tmp_path)
    study = load_study(deriv, raw_dir=raw)
    assert study.preprocessed and study.raw_dir == raw.absolute()
    s = study.sessions
    assert len(s) == 4 and s["preprocessed"].all()
    assert study.complete_participants() == ["sub-01", "sub-02"]
    assert all("desc-preproc" in p.name and "space-T1w" in p.name for p in s["dwi"])
    assert study.scores["madrs_pre"].tolist() == [30, 28]
    assert study.scores["madrs_post"].tolist() == [12, 25]
    # The session with only QSIPrep's .b table: the same gradients as the FSL files.
    files = study.session_files("sub-02", "post")
    assert files.bval == files.bvec and files.bval.suffix == ".b"
    _, gtab_b = load_dwi(files.dwi, files.bval, files.bvec)
    _, gtab_fsl = load_dwi(study.session_files("sub-02", "pre").dwi)
    np.testing.assert_allclose(gtab_b.bvals, gtab_fsl.bvals)
    np.testing.assert_allclose(gtab_b.bvecs, gtab_fsl.bvecs, atol=1e-6)
    _, gtab_auto = load_dwi(files.dwi)                          # finds the .b by itself
    np.testing.assert_allclose(gtab_auto.bvecs, gtab_fsl.bvecs, atol=1e-6)


def test_derivatives_flag_can_be_overridden_and_needs_participants(tmp_path):
    deriv, raw, _, _ = _qsiprep_tree(tmp_path)
    study = load_study(deriv, raw_dir=raw, preprocessed=False)
    assert not study.preprocessed and not study.sessions["preprocessed"].any()
    with pytest.raises(InputError, match=r"derivatives folder.*raw_dir"):
        load_study(deriv)
    with pytest.raises(InputError, match="preprocessed"):
        load_study(deriv, raw_dir=raw, preprocessed="yes")
    # With its own participants.tsv, a derivatives folder needs no raw_dir.
    (deriv / "participants.tsv").write_bytes((raw / "participants.tsv").read_bytes())
    with pytest.warns(StudyWarning, match="no such column"):  # scores are in raw/ only
        study = load_study(deriv)
    assert study.preprocessed and study.raw_dir is None


def test_run_on_qsiprep_output_takes_the_participants_from_raw_dir(tmp_path, capsys):
    # The command-line route the error hint names: QSIPrep's folder as BIDS_DIR,
    # the raw dataset (participants, scores) as --raw-dir; neither is written to.
    from ketamine_nb.cli import main

    deriv, raw, _, _ = _qsiprep_tree(tmp_path)
    before = {p: p.read_bytes() for p in [*deriv.rglob("*"), *raw.rglob("*")] if p.is_file()}
    assert main(["run", str(deriv), str(tmp_path / "out")]) == 2      # bad input
    assert "--raw-dir" in capsys.readouterr().err
    code = main(["run", str(deriv), str(tmp_path / "out"), "--raw-dir", str(raw), "--quiet",
                 "--atlas-registration", "none"])
    out = tmp_path / "out"
    assert code == 0, capsys.readouterr().out
    assert (out / "roi_md.tsv").is_file()
    assert (out / "scores.tsv").is_file() and "madrs" in (out / "scores.tsv").read_text()
    assert set(np.unique([ln.split("\t")[0] for ln in
                          (out / "participants.tsv").read_text().splitlines()[1:]])) == {
        "sub-01", "sub-02"}
    after = {p: p.read_bytes() for p in [*deriv.rglob("*"), *raw.rglob("*")] if p.is_file()}
    assert after == before
