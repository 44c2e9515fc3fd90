"""The simulated cohort: physics, design, ground truth, BIDS validity, determinism."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel

from ketamine_nb.exceptions import InputError
from ketamine_nb.regions import STUDY_REGIONS
from ketamine_nb.simulate import (
    DEFAULT_PATTERN,
    SimulationParams,
    _design,
    gradient_scheme,
    region_apparent_md,
    simulate_cohort,
    simulate_session,
    tensor_signal,
)


def _tree_hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------
# Physics


def test_gradient_scheme_is_a_unit_single_shell():
    bvals, bvecs = gradient_scheme(30, 3, 1000.0)
    assert bvals.shape == (33,) and bvecs.shape == (33, 3)
    assert np.count_nonzero(bvals == 0) == 3 and bvals[0] == 0
    assert set(bvals[bvals > 0]) == {1000.0}
    dw = bvecs[bvals > 0]
    np.testing.assert_allclose(np.linalg.norm(dw, axis=1), 1.0, atol=1e-12)
    # Spread out: no two directions (or their antipodes) closer than 15 degrees.
    cos = np.abs(dw @ dw.T)
    np.fill_diagonal(cos, 0)
    assert np.degrees(np.arccos(cos.max())) > 15


@pytest.mark.parametrize("evals", [(0.9e-3, 0.75e-3, 0.75e-3), (1.4e-3, 0.35e-3, 0.35e-3)])
def test_known_tensor_fits_back_to_its_md(evals, rng):
    """As dipy's test_dti: simulate a tensor with known eigenvalues, fit, check MD."""
    bvals, bvecs = gradient_scheme(30, 3, 1000.0)
    gtab = gradient_table(bvals, bvecs=bvecs)
    e1 = rng.normal(size=(20, 3))
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    signal = 100.0 * tensor_signal(evals, e1, bvals, bvecs)
    fit = TensorModel(gtab, fit_method="OLS").fit(signal)
    np.testing.assert_allclose(fit.md, np.mean(evals), rtol=1e-10)
    np.testing.assert_allclose(np.sort(fit.evals, axis=1)[:, ::-1],
                               np.tile(evals, (20, 1)), rtol=1e-8, atol=1e-12)


def test_pure_tissue_voxels_of_a_session_fit_back_to_planted_md():
    """Noise-free, GM and WM share one tensor, CSF gives no signal: every voxel is pure."""
    gm = (0.9e-3, 0.75e-3, 0.75e-3)
    params = SimulationParams.idealised(wm_evals=gm, s0_csf=0.0)
    mult, change = 1.07, -0.04
    img, bvals, bvecs, truth = simulate_session(
        params, head_transform=np.eye(4), md_multiplier=mult,
        region_change={"BA10_R": change}, noise=False, return_truth=True)
    data = np.asarray(img.dataobj, dtype=np.float64)
    frac = truth["fractions"].get_fdata()
    weight = truth["plant_weight"].get_fdata()[..., truth["names"].index("BA10_R")]
    gtab = gradient_table(bvals, bvecs=bvecs)
    pure = frac[..., :2].sum(-1) > 0.5
    outside = pure & (weight == 0)
    inside = pure & (weight > 0.99)
    edge = pure & (weight > 0.2) & (weight < 0.8)
    assert outside.sum() > 1000 and inside.sum() > 20 and edge.sum() > 20
    md_out = TensorModel(gtab, fit_method="OLS").fit(data[outside]).md
    np.testing.assert_allclose(md_out, 0.8e-3 * mult, rtol=1e-5)
    for sel in (inside, edge):  # the change scales with the planting field's weight
        md = TensorModel(gtab, fit_method="OLS").fit(data[sel]).md
        np.testing.assert_allclose(md, 0.8e-3 * mult * (1 + weight[sel] * change), rtol=1e-5)


def test_csf_raises_md_of_a_partial_volume_voxel():
    params = SimulationParams.idealised()
    img, bvals, bvecs, truth = simulate_session(params, noise=False, return_truth=True)
    frac = truth["fractions"].get_fdata()
    data = np.asarray(img.dataobj, dtype=np.float64)
    gtab = gradient_table(bvals, bvecs=bvecs)
    csfy = (frac[..., 2] > 0.3) & (frac.sum(-1) > 0.9)
    clean = (frac[..., 2] < 0.01) & (frac.sum(-1) > 0.9)
    md_csfy = TensorModel(gtab).fit(data[csfy]).md
    md_clean = TensorModel(gtab).fit(data[clean]).md
    assert np.median(md_clean) == pytest.approx(0.75e-3, rel=0.08)
    assert np.median(md_csfy) > 1.3e-3


def test_rician_noise_level_in_background_and_grey_matter():
    params = SimulationParams.idealised()
    img, bvals, _, truth = simulate_session(params, rng=np.random.default_rng(1),
                                            return_truth=True)
    assert img.get_data_dtype() == np.int16
    data = np.asarray(img.dataobj, dtype=np.float64)
    frac = truth["fractions"].get_fdata()
    background = frac.sum(-1) == 0
    # Magnitude of pure complex noise is Rayleigh: mean sigma * sqrt(pi / 2).
    assert data[background].mean() == pytest.approx(2.0 * np.sqrt(np.pi / 2), rel=0.03)
    gm = frac[..., 0] > 0.95
    b0 = data[gm][:, bvals == 0]
    # GM b0 = snr * sigma = 50 units (times a smooth bias within +/- 8 %).
    assert b0.mean() == pytest.approx(50, rel=0.1)


def test_each_session_has_its_own_head_position():
    params = SimulationParams.idealised()
    T = np.eye(4)
    T[:3, 3] = [3.0, -2.0, 4.0]
    ang = np.deg2rad(3.0)
    T[:3, :3] = [[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]]
    _, _, _, t0 = simulate_session(params, noise=False, return_truth=True)
    _, _, _, t1 = simulate_session(params, head_transform=T, noise=False, return_truth=True)

    def centroid(truth):
        f = truth["fractions"].get_fdata()[..., :2].sum(-1)
        ijk = np.array(np.nonzero(f > 0.5))
        w = f[f > 0.5]
        c = (ijk * w).sum(1) / w.sum()
        aff = truth["fractions"].affine
        return aff[:3, :3] @ c + aff[:3, 3]

    c0, c1 = centroid(t0), centroid(t1)
    np.testing.assert_allclose(c1, T[:3, :3] @ c0 + T[:3, 3], atol=0.6)


def _centroid_and_volume(truth):
    f = truth["fractions"].get_fdata()[..., :3].sum(-1)
    ijk = np.array(np.nonzero(f > 0.5))
    aff = truth["fractions"].affine
    xyz = aff[:3, :3] @ ijk + aff[:3, 3:4]
    return xyz.mean(1), (f > 0.5).sum() * abs(np.linalg.det(aff[:3, :3])) / 1000.0


def test_a_warp_of_known_displacement_moves_the_brain_by_it():
    """A uniform 6 mm warp along x, then a 10 % larger head: known shift, known volume."""
    from ketamine_nb.simulate import ParticipantAnatomy, participant_anatomy

    params = SimulationParams.idealised()
    shape = participant_anatomy(SimulationParams.realistic()).warp.shape
    shift = np.zeros(shape)
    shift[0] = 6.0  # B-spline coefficients of a constant field are the constant
    _, _, _, t0 = simulate_session(params, noise=False, return_truth=True)
    _, _, _, t1 = simulate_session(params, noise=False, return_truth=True,
                                   anatomy=ParticipantAnatomy(warp=shift))
    big = ParticipantAnatomy(linear=np.eye(3) / 1.1)
    _, _, _, t2 = simulate_session(params, noise=False, return_truth=True, anatomy=big)
    (c0, v0), (c1, v1), (c2, v2) = (_centroid_and_volume(t) for t in (t0, t1, t2))
    # template point y shows at head point x = y - 6 mm
    np.testing.assert_allclose(c1 - c0, [-6.0, 0, 0], atol=0.3)
    assert v1 == pytest.approx(v0, rel=0.01)
    assert big.head_size == pytest.approx(1.1)
    assert v2 / v0 == pytest.approx(1.1 ** 3, rel=0.03)


def test_participants_have_their_own_brain_size_and_ventricles():
    """Brain-mask volume varies across participants as in real cohorts (CV >= 5 %)."""
    from ketamine_nb.simulate import ParticipantAnatomy, participant_anatomy

    params = SimulationParams.realistic()
    vols = []
    for i in range(10):
        a = participant_anatomy(params, seed=4, index=i, age=40)
        _, _, _, t = simulate_session(params, noise=False, return_truth=True, anatomy=a)
        vols.append(_centroid_and_volume(t)[1])
        assert vols[-1] / 1937 == pytest.approx(a.head_size ** 3, rel=0.06)
    assert np.std(vols) / np.mean(vols) >= 0.05
    # the warp moves points by a few millimetres, differently for each participant
    a, b = (participant_anatomy(params, seed=4, index=i) for i in (0, 1))
    pts = np.array([[0, 50, 0], [40, -20, 10], [-30, -60, 30]], float).T
    warp_only = [ParticipantAnatomy(warp=x.warp).to_template(pts) - pts for x in (a, b)]
    for d in warp_only:
        assert 0.5 < np.sqrt((d ** 2).sum(0).mean()) < 10  # a few millimetres
    assert not np.allclose(warp_only[0], warp_only[1], atol=0.5)
    # ventricles grow with age (no random spread here): at 65 larger than at 20
    p0 = SimulationParams.realistic(ventricle_sd=None)
    old, young = (participant_anatomy(p0, index=0, age=age) for age in (65, 20))
    assert (1 - old.ventricle) ** -3 == pytest.approx(np.exp(0.02 * 25), rel=1e-6)
    assert (1 - young.ventricle) ** -3 == pytest.approx(np.exp(-0.02 * 20), rel=1e-6)
    fields = []
    for a in (old, young):
        _, _, _, t = simulate_session(p0, noise=False, return_truth=True, anatomy=a)
        fields.append(t["fractions"].get_fdata()[..., 2].sum())
    assert fields[0] > fields[1]
    # switched off: the template for everyone
    a = participant_anatomy(SimulationParams.idealised(), seed=4, index=3, age=60)  # all off
    np.testing.assert_allclose(a.to_template(pts), pts, atol=1e-12)


def test_truth_separates_the_planted_change_from_the_default_definition():
    """The change is planted in smooth fields around the regions, not in the atlas labels."""
    from ketamine_nb.simulate import _anatomy, simulate_tables

    params = SimulationParams.idealised()
    anat = _anatomy(params)
    for k, name in enumerate(anat.region_names):
        label = anat.region_weight[..., k] >= 0.5
        field = anat.plant_weight[..., k] >= 0.5
        dice = 2 * (label & field).sum() / (label.sum() + field.sum())
        assert 0.3 < dice < 0.9, (name, dice)  # overlapping, not the same
    # one region changed by +5 %: the field's tissue MD moves by about 5 %, the
    # default region sees a part of it, a neighbour a little, a far region nothing
    md0 = {r: region_apparent_md(params, r, 1.0, {}) for r in STUDY_REGIONS}
    md1 = {r: region_apparent_md(params, r, 1.0, {"amygdala_L": 0.05}) for r in STUDY_REGIONS}
    seen = {r: md1[r] / md0[r] - 1 for r in STUDY_REGIONS}
    assert 0.02 < seen["amygdala_L"] < 0.05
    assert 0 < seen["hippocampus_L"] < seen["amygdala_L"] / 2
    assert seen["BA10_R"] == 0 and seen["amygdala_R"] == 0
    truth = simulate_tables(SimulationParams.idealised(n_subjects=30), seed=2)["ground_truth"]
    for col in ("md_pre", "md_post", "delta_md", "tissue_md_pre", "tissue_md_post",
                "tissue_delta_md", "planted_change"):
        assert truth[col].notna().all(), col
    np.testing.assert_allclose(truth["tissue_delta_md"],
                               truth["tissue_md_post"] - truth["tissue_md_pre"], atol=1e-12)
    for _, g in truth.groupby("region"):  # the two truths agree, without being one
        r = np.corrcoef(g["delta_md"], g["tissue_delta_md"])[0, 1]
        assert 0.9 < r < 0.99999


@pytest.mark.parametrize("name", ["teaching", "paper", "null"])
def test_presets(name):
    from ketamine_nb.simulate import IDEALISED, PRESETS, REALISTIC

    assert name in PRESETS
    p = SimulationParams.preset(name, realistic=False)
    expected = {"teaching": SimulationParams().effect_slope, "paper": 0.0006, "null": 0.0}
    assert p.effect_slope == pytest.approx(expected[name])
    for key, value in IDEALISED.items():
        assert getattr(p, key) == value
    r = SimulationParams.preset(name, n_subjects=12)  # realistic by default
    assert r.n_subjects == 12 and r.effect_slope == p.effect_slope
    for key, value in REALISTIC.items():
        assert getattr(r, key) == value


def test_the_defaults_are_realistic_and_idealised_switches_every_artefact_off():
    """Issue 13: each artefact has a realistic default and can be switched off."""
    from ketamine_nb.simulate import IDEALISED, REALISTIC

    d, off = SimulationParams(), SimulationParams.idealised(n_subjects=5)
    assert set(IDEALISED) == set(REALISTIC)
    for key, value in REALISTIC.items():
        assert getattr(d, key) == value and value != IDEALISED[key], key
        assert getattr(off, key) == IDEALISED[key], key
    assert off.n_subjects == 5 and off.n_coils == 1
    assert SimulationParams.realistic() == d
    # Everything else is the same in both.
    same = {k: v for k, v in vars(d).items() if k not in REALISTIC}
    assert same == {k: v for k, v in vars(SimulationParams.idealised()).items()
                    if k not in REALISTIC}
    with pytest.raises(InputError, match="preset"):
        SimulationParams.preset("huge")


def test_parameters_are_validated():
    with pytest.raises(InputError, match="n_directions"):
        SimulationParams.idealised(n_directions=3)
    with pytest.raises(InputError, match="s/mm"):
        SimulationParams.idealised(bval=1.0)


# --------------------------------------------------------------------------
# Design and planted truth (tables only: fast at any n)


def test_design_is_randomised_two_to_one():
    participants, scores, *_ = _design(SimulationParams.idealised(), seed=0)
    assert len(participants) == 98
    assert participants["participant_id"].tolist() == [f"sub-{i:03d}" for i in range(1, 99)]
    assert (participants["arm"] == "ketamine").sum() == 65
    assert (participants["arm"] == "saline").sum() == 33
    assert participants["age"].between(18, 65).all()
    assert scores["madrs_pre"].between(20, 60).all()
    assert scores["qids_pre"].between(0, 27).all()


def test_clinical_change_is_larger_under_ketamine_and_qids_tracks_madrs():
    _, scores, *_ = _design(SimulationParams.idealised(n_subjects=3000), seed=5)
    d = scores["madrs_post"] - scores["madrs_pre"]
    ket = scores["arm"] == "ketamine"
    assert d[ket].mean() == pytest.approx(-14, abs=1.0)
    assert d[~ket].mean() == pytest.approx(-6, abs=1.0)
    dq = scores["qids_post"] - scores["qids_pre"]
    assert np.corrcoef(d, dq)[0, 1] > 0.7


def test_planted_slopes_follow_the_reported_pattern():
    params = SimulationParams.idealised(n_subjects=4000)
    _, scores, _, _, changes, _ = _design(params, seed=11)
    d = (scores["madrs_post"] - scores["madrs_pre"]).to_numpy(float)
    for region in STUDY_REGIONS:
        for arm in ("ketamine", "saline"):
            m = (scores["arm"] == arm).to_numpy()
            slope = np.polyfit(d[m], changes[region][m], 1)[0]
            expected = params.effect_slope * DEFAULT_PATTERN[region][arm]
            assert slope == pytest.approx(expected, abs=2.5e-4), (region, arm)


# --------------------------------------------------------------------------
# The written dataset


def test_tables_ground_truth_and_images_agree(small_cohort):
    root = small_cohort
    participants = pd.read_csv(root / "participants.tsv", sep="\t")
    assert participants.columns.tolist() == ["participant_id", "arm", "age", "sex"]
    sim = root / "derivatives" / "simulation"
    truth = pd.read_csv(sim / "ground_truth_roi.tsv", sep="\t")
    wide = pd.read_csv(sim / "scores_wide.tsv", sep="\t")
    assert len(truth) == len(participants) * 7
    arms = dict(zip(participants.participant_id, participants.arm, strict=True))
    assert (truth["arm"] == truth["participant_id"].map(arms)).all()
    assert (wide["arm"] == wide["participant_id"].map(arms)).all()
    # written with ten significant digits: MD to 1e-13 mm²/s
    np.testing.assert_allclose(truth["delta_md"], truth["md_post"] - truth["md_pre"],
                               rtol=0, atol=1e-12)
    assert truth["md_pre"].between(0.6e-3, 1.0e-3).all()
    for row in wide.itertuples():
        ses = pd.read_csv(root / row.participant_id / f"{row.participant_id}_sessions.tsv",
                          sep="\t")
        assert ses["session_id"].tolist() == ["ses-pre", "ses-post"]
        assert ses["madrs_total"].tolist() == [row.madrs_pre, row.madrs_post]
        assert ses["qids_total"].tolist() == [row.qids_pre, row.qids_post]
        for s in ("pre", "post"):
            pid = row.participant_id
            stem = root / pid / f"ses-{s}" / "dwi" / f"{pid}_ses-{s}_dwi"
            img = nib.load(f"{stem}.nii.gz")
            assert img.ndim == 4 and img.get_data_dtype() == np.int16
            assert max(img.header.get_zooms()[:3]) <= 3.0
            bvals = np.loadtxt(f"{stem}.bval")
            bvecs = np.loadtxt(f"{stem}.bvec")
            assert bvecs.shape == (3, img.shape[3]) and bvals.shape == (img.shape[3],)
            assert np.count_nonzero(bvals > 0) >= 20 and np.count_nonzero(bvals == 0) >= 2
            assert json.loads(open(f"{stem}.json").read())["PhaseEncodingDirection"]
    motion = pd.read_csv(sim / "head_motion.tsv", sep="\t")
    assert len(motion) == 2 * len(participants)
    assert motion[["rot_x_deg", "rot_y_deg", "rot_z_deg"]].abs().max().max() <= 3.0
    assert motion[["trans_x_mm", "trans_y_mm", "trans_z_mm"]].abs().max().max() <= 4.0
    params = json.loads((sim / "simulation_parameters.json").read_text())
    assert params["seed"] == 3 and params["n_subjects"] == 8


def test_same_seed_gives_byte_identical_files_serial_or_parallel(tmp_path):
    params = SimulationParams.idealised(n_subjects=3)
    a = simulate_cohort(tmp_path / "a", params=params, seed=9, progress=False, n_jobs=1)
    b = simulate_cohort(tmp_path / "b", params=params, seed=9, progress=False, n_jobs=2)
    ha, hb = _tree_hashes(a), _tree_hashes(b)
    assert len(ha) > 20 and ha == hb
    c = simulate_cohort(tmp_path / "c", params=params, seed=10, progress=False)
    hc = _tree_hashes(c)
    assert hc["sub-001/ses-pre/dwi/sub-001_ses-pre_dwi.nii.gz"] != \
        ha["sub-001/ses-pre/dwi/sub-001_ses-pre_dwi.nii.gz"]


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(InputError, match="not empty"):
        simulate_cohort(tmp_path, params=SimulationParams.idealised(n_subjects=3), progress=False)
    assert (tmp_path / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_official_bids_validator_reports_no_error(small_cohort):
    exe = shutil.which("bids-validator-deno") or str(
        __import__("pathlib").Path(sys.executable).with_name("bids-validator-deno"))
    proc = subprocess.run([exe, str(small_cohort), "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == []
    assert proc.returncode == 0
    # The validator looked at the images and found the two sessions.
    assert set(report["summary"]["sessions"]) == {"ses-pre", "ses-post"} or \
        set(report["summary"]["sessions"]) == {"pre", "post"}
    assert report["summary"]["subjects"] and len(report["summary"]["subjects"]) == 8


def test_cli_simulate_writes_a_cohort_and_rejects_bad_input(tmp_path):
    exe = [sys.executable, "-m", "ketamine_nb.cli"]
    ok = subprocess.run([*exe, "simulate", str(tmp_path / "c"), "--subjects", "3", "--quiet",
                         "--preset", "null"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "BIDS dataset" in ok.stdout
    saved = json.loads((tmp_path / "c" / "derivatives" / "simulation"
                        / "simulation_parameters.json").read_text())
    assert saved["effect_slope"] == 0.0 and saved["warp_rms"] == 3.0  # realistic by default
    huge = subprocess.run([*exe, "simulate", str(tmp_path / "e"), "--preset", "huge"],
                          capture_output=True, text=True)
    assert huge.returncode == 2 and "teaching" in huge.stderr
    dwi = tmp_path / "c" / "sub-003" / "ses-post" / "dwi" / "sub-003_ses-post_dwi.nii.gz"
    assert dwi.exists()
    bad = subprocess.run([*exe, "simulate", str(tmp_path / "d"), "--directions", "4"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "n_directions" in lines[0]
    again = subprocess.run([*exe, "simulate", str(tmp_path / "c"), "--subjects", "3"],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr and "--overwrite" in again.stderr


@pytest.mark.parametrize("flags, realistic", [([], True), (["--realistic"], True),
                                              (["--idealised"], False)])
def test_cli_realistic_by_default_and_idealised_on_request(flags, realistic):
    from ketamine_nb.cli import _params_from_args, build_parser
    from ketamine_nb.simulate import IDEALISED, REALISTIC

    for cmd in ("simulate", "demo"):
        args = build_parser().parse_args([cmd, *(["OUT"] if cmd == "simulate" else []),
                                          "--preset", "paper", *flags])
        p = _params_from_args(args)
        assert p.effect_slope == 0.0006
        assert {k: getattr(p, k) for k in REALISTIC} == (REALISTIC if realistic else IDEALISED)
    with pytest.raises(SystemExit):  # one or the other
        build_parser().parse_args(["simulate", "OUT", "--realistic", "--idealised"])


# --------------------------------------------------------------------------
# Scanner artefacts (each switchable; on by default)


def _weighted_moments(vol, affine):
    ijk = np.array(np.nonzero(vol > 0))
    w = vol[vol > 0]
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    c = (xyz * w).sum(1) / w.sum()
    d = xyz - c[:, None]
    return c, (d * w) @ d.T / w.sum()


def test_a_rotation_of_known_angle_moves_the_volume_by_it():
    """Volume 11 (a b0) turned by 4 degrees about z and shifted 2 mm: its moments follow."""
    from ketamine_nb.simulate import BRAIN_CENTRE, _rotation, acquisition_scheme

    params = SimulationParams.idealised()
    n = acquisition_scheme(params)[0].size
    rot, tr = np.zeros((n, 3)), np.zeros((n, 3))
    rot[11:, 2], tr[11:, 0] = 4.0, 2.0
    img, bvals, _, truth = simulate_session(params, noise=False, return_truth=True,
                                            motion=(rot, tr))
    assert bvals[0] == bvals[11] == 0
    data = np.asarray(img.dataobj)
    c0, m0 = _weighted_moments(data[..., 0], img.affine)
    c1, m1 = _weighted_moments(data[..., 11], img.affine)
    R = _rotation([0, 0, 4.0])
    centre = np.asarray(BRAIN_CENTRE)
    np.testing.assert_allclose(c1, R @ (c0 - centre) + centre + [2.0, 0, 0], atol=0.3)
    # the angle of the brain's principal axes in the xy plane turns by 4 degrees
    def angle(m):
        return np.degrees(0.5 * np.arctan2(2 * m[0, 1], m[0, 0] - m[1, 1]))

    assert angle(m1) - angle(m0) == pytest.approx(4.0, abs=0.3)
    np.testing.assert_allclose(np.linalg.eigvalsh(m1), np.linalg.eigvalsh(m0), rtol=0.01)
    vols = truth["volumes"]
    assert vols["rot_z_deg"].tolist() == rot[:, 2].tolist()
    assert vols["framewise_displacement_mm"].iloc[11] == pytest.approx(
        2.0 + np.deg2rad(4.0) * 50)
    assert (vols["framewise_displacement_mm"].drop(index=11) == 0).all()


def test_gradients_stay_in_the_scanner_when_the_head_turns():
    """A 90-degree turn about z swaps what x and y gradients see in the tissue."""
    from ketamine_nb.simulate import acquisition_scheme

    params = SimulationParams.idealised()
    n = acquisition_scheme(params)[0].size
    rot = np.zeros((n, 3))
    rot[:, 2] = 90.0
    _, bvals, bvecs, still = simulate_session(params, noise=False, return_truth=True)
    turned_img, _, _, _ = simulate_session(params, noise=False, return_truth=True,
                                           motion=(rot, np.zeros((n, 3))))
    still_img, _, _ = simulate_session(params, noise=False)
    # In a turned head, the signal seen with gradient g is what the still head
    # gives with g turned back: the per-volume means change with the direction.
    a = np.asarray(still_img.dataobj)[..., bvals > 0].reshape(-1, int((bvals > 0).sum()))
    b = np.asarray(turned_img.dataobj)[..., bvals > 0].reshape(a.shape)
    assert not np.allclose(a.mean(0) / a.mean(), b.mean(0) / b.mean(), rtol=1e-3)


def test_eddy_displacement_follows_the_gradient_along_phase_encoding():
    from ketamine_nb.simulate import _native_grid

    params = SimulationParams.idealised(eddy_mm=4.0)
    img, bvals, bvecs, truth = simulate_session(params, noise=False, return_truth=True)
    ref, _, _ = simulate_session(SimulationParams.idealised(), noise=False)
    vols = truth["volumes"]
    g_scanner = bvecs * [-1, 1, 1]  # LAS voxel frame to scanner frame
    np.testing.assert_allclose(vols[["eddy_x_per_mm", "eddy_y_per_mm", "eddy_z_per_mm"]],
                               4.0 * g_scanner * bvals[:, None] / 1000 / 100, atol=1e-12)
    assert (vols.loc[bvals == 0, "eddy_shift_mm"] == 0).all()
    shape, aff = _native_grid(3.0)
    iso = aff[:3, :3] @ ((np.array(shape) - 1) / 2) + aff[:3, 3]
    data, clean = np.asarray(img.dataobj), np.asarray(ref.dataobj)
    v = int(np.argmax(np.abs(vols["eddy_shift_mm"]) * (bvals > 0)))
    c_ref, _ = _weighted_moments(clean[..., v], aff)
    c_eddy, _ = _weighted_moments(data[..., v], aff)
    lin = vols.loc[v, ["eddy_x_per_mm", "eddy_y_per_mm", "eddy_z_per_mm"]].to_numpy(float)
    expected = lin @ (c_ref - iso) + vols.loc[v, "eddy_shift_mm"]
    # phase encoding j-: the image moves along -y by the displacement
    assert c_eddy[1] - c_ref[1] == pytest.approx(-expected, abs=0.1 + 0.1 * abs(expected))
    np.testing.assert_allclose(c_eddy[[0, 2]], c_ref[[0, 2]], atol=0.1)


def test_susceptibility_displaces_the_orbitofrontal_cortex_not_the_occipital_lobe():
    from ketamine_nb.simulate import susceptibility_field

    params = SimulationParams.idealised(susceptibility_hz=40.0)
    assert susceptibility_field(params, np.array([[0.0], [40.0], [-22.0]]))[0] == \
        pytest.approx(40.0, rel=0.01)
    assert susceptibility_field(params, np.array([[0.0], [-80.0], [10.0]]))[0] < 0.1
    from scipy.ndimage import shift as nd_shift

    img, _, _ = simulate_session(params, noise=False)
    ref, _, _ = simulate_session(SimulationParams.idealised(), noise=False)
    aff = img.affine
    b0, b0_ref = np.asarray(img.dataobj)[..., 0], np.asarray(ref.dataobj)[..., 0]
    ijk = np.indices(b0.shape).reshape(3, -1)
    xyz = (aff[:3, :3] @ ijk + aff[:3, 3:4]).T.reshape(*b0.shape, 3)
    windows = {"front": (np.abs(xyz[..., 0]) < 15) & (xyz[..., 1] > 25) & (xyz[..., 1] < 55)
               & (xyz[..., 2] > -30) & (xyz[..., 2] < -14),
               "back": (xyz[..., 1] < -60) & (xyz[..., 2] > 0)}
    steps = np.arange(-8, 8.01, 0.25)  # mm along y (the voxel axis j)
    found = {}
    for name, win in windows.items():
        err = [((b0 - nd_shift(b0_ref, (0, s / 3.0, 0), order=1))[win] ** 2).sum()
               for s in steps]
        found[name] = steps[int(np.argmin(err))]
    # j-: the orbitofrontal cortex moves towards -y, by at most 40 Hz * 0.045 s * 3 mm
    assert -5.4 <= found["front"] <= -1.5, found
    assert abs(found["back"]) <= 0.25, found


@pytest.mark.parametrize("n_coils", [1, 4])
def test_magnitude_noise_matches_its_definition(n_coils):
    """The sampler's shortcut draws the root-sum-of-squares of 2 L Gaussian parts exactly."""
    from scipy import stats

    from ketamine_nb.simulate import magnitude_noise

    rng = np.random.default_rng(11)
    sigma = 6.0
    for c in (0.0, 4.0, 30.0):
        clean = np.full((4000, 10), c, np.float32)
        if c:
            clean[:, 0] = 0.0  # a zero inside a voxel with signal: still its own law
        got = magnitude_noise(clean, sigma, n_coils, rng).astype(float)
        # The definition: signal in the first channel's real part, noise in all 2 L parts.
        parts = sigma * rng.standard_normal((2 * n_coils, *clean.shape))
        parts[0] += clean
        ref = np.rint(np.sqrt((parts ** 2).sum(0)))
        # E[M^2] = c^2 + 2 L sigma^2 (nine volumes of ten carry c)
        assert (got ** 2).mean() == pytest.approx(0.9 * c * c + 2 * n_coils * sigma ** 2,
                                                  rel=0.03)
        assert stats.ks_2samp(got[:, 1:].ravel(), ref[:, 1:].ravel()).pvalue > 1e-3
        assert stats.ks_2samp(got[:, 0], ref[:, 0]).pvalue > 1e-3
    # a per-voxel sigma is applied per voxel
    sig = np.where(np.arange(4000) < 2000, 2.0, 8.0).astype(np.float32)
    got = magnitude_noise(np.zeros((4000, 10), np.float32), sig, n_coils, rng).astype(float)
    for sel, s in ((slice(0, 2000), 2.0), (slice(2000, None), 8.0)):
        assert np.sqrt((got[sel] ** 2).mean() / (2 * n_coils)) == pytest.approx(s, rel=0.03)


def test_multi_coil_noise_level_is_estimated_back():
    """Background of a root-sum-of-squares image: E[M^2] = 2 L sigma^2 (non-central chi)."""
    params = SimulationParams.idealised(n_coils=4)
    img, bvals, _, truth = simulate_session(params, rng=np.random.default_rng(3),
                                            return_truth=True)
    data = np.asarray(img.dataobj, dtype=np.float64)
    background = truth["fractions"].get_fdata().sum(-1) == 0
    m2 = (data[background] ** 2).mean()
    assert np.sqrt(m2 / (2 * 4)) == pytest.approx(2.0, rel=0.03)
    # ... while a single coil gives the Rician (Rayleigh) background
    assert data[background].mean() > 1.5 * 2.0 * np.sqrt(np.pi / 2)
    # a spatially varying sigma: its map is known and estimated back locally
    params = SimulationParams.idealised(noise_sigma_variation=0.3)
    img, _, _, truth = simulate_session(params, rng=np.random.default_rng(4),
                                        return_truth=True)
    data = np.asarray(img.dataobj, dtype=np.float64)
    sigma = truth["noise_sigma"].get_fdata()
    assert sigma.max() - sigma.min() > 0.3 * 2.0
    assert 0.7 * 2.0 - 1e-5 <= sigma.min() and sigma.max() <= 1.3 * 2.0 + 1e-5
    background = truth["fractions"].get_fdata().sum(-1) == 0
    est = np.sqrt((data ** 2).mean(-1) / 2)  # Rayleigh: E[M^2] = 2 sigma^2
    rel = est[background] / sigma[background]
    assert np.median(rel) == pytest.approx(1.0, abs=0.03)
    s_bg, e_bg = sigma[background], est[background]
    edges = np.quantile(s_bg, np.linspace(0, 1, 6))
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):  # every fifth of the sigma range
        sel = (s_bg >= lo) & (s_bg <= hi)
        assert np.sqrt((e_bg[sel] ** 2).mean()) / np.sqrt((s_bg[sel] ** 2).mean()) == \
            pytest.approx(1.0, abs=0.03)


def test_drift_slab_and_second_shell():
    params = SimulationParams.idealised(signal_drift=0.05, fov_slab=(-10.0, 60.0),
                                        second_shell=2000.0)
    img, bvals, bvecs, truth = simulate_session(params, noise=False, return_truth=True)
    assert set(bvals) == {0.0, 1000.0, 2000.0}
    assert (bvals == 2000).sum() == (bvals == 1000).sum() == 30
    np.testing.assert_allclose(bvecs[bvals == 2000], bvecs[bvals == 1000])
    scale = truth["volumes"]["signal_scale"].to_numpy()
    assert scale[0] == 1.0 and scale[-1] == pytest.approx(0.95)
    data = np.asarray(img.dataobj)
    b0 = np.flatnonzero(bvals == 0)
    assert data[..., b0[-1]].sum() / data[..., b0[0]].sum() == pytest.approx(
        scale[b0[-1]], rel=1e-4)
    z = img.affine[2, 2] * np.arange(img.shape[2]) + img.affine[2, 3]
    assert z.min() >= -10 - 3 and z.max() <= 60 + 3 and img.shape[2] <= 25
    with pytest.raises(InputError, match="fov_slab"):
        SimulationParams.idealised(fov_slab=(0.0, 5.0))


def test_true_field_of_view_coverage_knows_where_the_regions_are():
    from ketamine_nb.regions import STUDY_REGIONS
    from ketamine_nb.simulate import true_field_of_view_coverage

    whole = true_field_of_view_coverage(SimulationParams.idealised())
    assert set(whole) == set(STUDY_REGIONS) and all(v == 1.0 for v in whole.values())
    # Above MNI z = 0 (template head, no motion): no amygdala, the vACC
    # (subcallosal) almost none, the hippocampus its upper tail only, BA10 in
    # part (measured 0.0, 0.002, 0.09 and 0.60)
    upper = true_field_of_view_coverage(SimulationParams.idealised(fov_slab=(0.0, 90.0)))
    assert upper["amygdala_L"] < 0.02 and upper["amygdala_R"] < 0.02
    assert upper["vACC"] < 0.05
    assert upper["hippocampus_L"] < 0.15 and upper["hippocampus_R"] < 0.15
    assert 0.4 < upper["BA10_L"] < 0.8 and 0.4 < upper["BA10_R"] < 0.8
    lower = true_field_of_view_coverage(SimulationParams.idealised(fov_slab=(-60.0, 0.0)))
    for r in STUDY_REGIONS:   # the two slabs split each region between them
        assert upper[r] + lower[r] == pytest.approx(1.0, abs=0.01), r
    # The head lifted by 10 mm in the scanner: the slab holds the part of BA10
    # that lay 10 mm lower
    T = np.eye(4)
    T[2, 3] = 10.0
    lifted = true_field_of_view_coverage(SimulationParams.idealised(fov_slab=(10.0, 100.0)),
                                         head_transform=T)
    assert lifted["BA10_L"] == pytest.approx(upper["BA10_L"], abs=0.03)


@pytest.mark.slow
def test_realistic_cohort_writes_motion_tables_and_stays_valid_bids(tmp_path):
    from ketamine_nb.simulate import REALISTIC

    params = SimulationParams.preset("paper", realistic=True, n_subjects=3)
    out = simulate_cohort(tmp_path / "r", params=params, seed=1, progress=False, n_jobs=2)
    sim = out / "derivatives" / "simulation"
    for pid in ("sub-001", "sub-002", "sub-003"):
        for ses in ("pre", "post"):
            mot = pd.read_csv(sim / f"{pid}_ses-{ses}_motion.tsv", sep="\t")
            assert len(mot) == 33 and mot["volume"].tolist() == list(range(33))
            assert mot[["trans_x_mm", "trans_y_mm", "trans_z_mm"]].abs().to_numpy().max() > 0
            side = json.loads((out / pid / f"ses-{ses}" / "dwi"
                               / f"{pid}_ses-{ses}_dwi.json").read_text())
            assert side["PhaseEncodingDirection"] == "j-"
            assert side["TotalReadoutTime"] == 0.045
        disp = nib.load(sim / f"{pid}_head_to_mni_displacement.nii.gz")
        assert disp.shape[-1] == 3 and np.abs(disp.get_fdata()).max() > 1.0
    anat = pd.read_csv(sim / "anatomy.tsv", sep="\t")
    assert len(anat) == 3 and (anat["warp_rms_mm"] > 0.5).all()
    saved = json.loads((sim / "simulation_parameters.json").read_text())
    assert saved["motion_rms"] == REALISTIC["motion_rms"] and saved["effect_slope"] == 0.0006
    exe = shutil.which("bids-validator-deno") or str(
        __import__("pathlib").Path(sys.executable).with_name("bids-validator-deno"))
    proc = subprocess.run([exe, str(out), "--format", "json"], capture_output=True, text=True,
                          timeout=300)
    report = json.loads(proc.stdout)
    assert [i for i in report["issues"]["issues"] if i["severity"] == "error"] == []
