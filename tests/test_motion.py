"""Within-scan realignment: planted motion is recovered, b-vectors rotate with the head."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table

from ketamine_nb.exceptions import InputError
from ketamine_nb.motion import (
    FD_THRESHOLD_MM,
    MAX_EXCLUDED_FRACTION,
    MOTION_MODELS,
    _params,
    _rotation,
    drop_volumes,
    framewise_displacement,
    motion_qc,
    realign_series,
)
from ketamine_nb.simulate import SimulationParams, simulate_session
from ketamine_nb.tensor import fit_dti


def _rigid(translation_mm, rotation_deg):
    T = np.eye(4)
    T[:3, :3] = _rotation(np.radians(rotation_deg))
    T[:3, 3] = translation_mm
    return T


#: Head positions (head frame -> scanner, about the scanner origin): a few
#: millimetres and degrees, the size of the motion in a restless patient.
POSITIONS = [np.eye(4), _rigid([1.5, -1.0, 0.8], [2.0, -1.0, 1.5]),
             _rigid([-1.0, 2.0, -0.5], [-1.5, 2.5, 0.0]), _rigid([0.5, 0.5, 2.0], [0, 0, -3.0])]


@pytest.fixture(scope="module")
def series():
    """Noise-free series of one head at each position (no receive bias, which is scanner-fixed)."""
    params = SimulationParams.idealised(bias_amplitude=0.0)
    images = []
    for T in POSITIONS:
        img, bvals, bvecs = simulate_session(params, seed=0, noise=False, head_transform=T)
        images.append(np.asarray(img.dataobj, np.float32))
    return images, bvals, bvecs, img.affine


def _noisy(clean, rng, level=0.02):
    sigma = level * np.percentile(clean[..., 0], 99)
    return np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2
                   + rng.normal(0, sigma, clean.shape) ** 2).astype(np.float32)


@pytest.fixture(scope="module")
def moved(series):
    """Each volume from a random one of the positions; volume 0 (the reference b0) at the first."""
    images, bvals, bvecs, affine = series
    rng = np.random.default_rng(1)
    assign = rng.integers(0, len(POSITIONS), len(bvals))
    assign[0] = 0
    data = np.stack([images[assign[v]][..., v] for v in range(len(bvals))], axis=-1)
    img = nib.Nifti1Image(_noisy(data, rng), affine)
    return img, gradient_table(bvals, bvecs=bvecs), assign


def _truth(table, assign, centre):
    """Planted minus estimated parameters per volume: mm and degrees."""
    C = np.eye(4)
    C[:3, 3] = centre
    err = []
    for v, k in enumerate(assign):
        true = _params(np.linalg.inv(C) @ POSITIONS[k] @ C)
        row = table.iloc[v]
        est = np.array([row.tx, row.ty, row.tz, *np.radians([row.rx, row.ry, row.rz])])
        e = est - true
        err.append(np.concatenate([e[:3], np.degrees(e[3:])]))
    return np.abs(np.array(err))


def _centre(img, gtab):
    from ketamine_nb.dwi import brain_mask

    m = np.asarray(brain_mask(img, gtab).dataobj) > 0
    idx = np.array(np.nonzero(m))
    return (img.affine[:3, :3] @ idx + img.affine[:3, 3:4]).mean(axis=1)


@pytest.mark.parametrize("model", MOTION_MODELS)
def test_planted_motion_is_recovered(moved, model):
    img, gtab, assign = moved
    out, new_gtab, table = realign_series(img, gtab, model=model, exclude_volumes=False)
    err = _truth(table, assign, _centre(img, gtab))
    b0 = gtab.b0s_mask
    # b0 volumes against the reference b0: a tenth of a millimetre.
    assert err[b0, :3].max() < 0.1 and err[b0, 3:].max() < 0.1
    # DW volumes (other contrast): typically < 0.1 mm / 0.1 deg; at worst 0.3 mm / 0.3 deg.
    worst = 0.3
    assert np.median(err[~b0, :3]) < 0.1 and np.median(err[~b0, 3:]) < 0.15
    assert err[:, :3].max() < worst and err[:, 3:].max() < worst
    assert table["resampled"].sum() >= (assign > 0).sum() - 1
    assert out.shape == img.shape and len(new_gtab.bvals) == len(gtab.bvals)


def test_bvecs_rotate_with_the_head(moved):
    img, gtab, assign = moved
    _, new_gtab, table = realign_series(img, gtab, exclude_volumes=False)
    A = img.affine[:3, :3]
    D = A / np.sqrt((A ** 2).sum(axis=0))
    F = np.diag([-1.0, 1, 1]) if np.linalg.det(D) > 0 else np.eye(3)
    for v in np.flatnonzero(~gtab.b0s_mask):
        R = POSITIONS[assign[v]][:3, :3]
        # The head turned by R sees the scanner's gradient g as R^T g.
        expected = F @ D.T @ R.T @ D @ F @ gtab.bvecs[v]
        cos = abs(float(expected @ new_gtab.bvecs[v]))
        assert np.degrees(np.arccos(min(cos, 1.0))) < 0.5, v
    assert np.allclose(new_gtab.bvecs[gtab.b0s_mask], 0)


def test_realignment_restores_md(series, moved):
    images, bvals, bvecs, affine = series
    img, gtab, _ = moved
    from ketamine_nb.dwi import brain_mask

    still = nib.Nifti1Image(images[0], affine)
    mask = np.asarray(brain_mask(still, gtab).dataobj) > 0
    md_still = np.asarray(fit_dti(still, gtab, mask=mask)[0].dataobj)[mask]
    md_moved = np.asarray(fit_dti(img, gtab, mask=mask)[0].dataobj)[mask]
    out, new_gtab, _ = realign_series(img, gtab, exclude_volumes=False)
    md_fixed = np.asarray(fit_dti(out, new_gtab, mask=mask)[0].dataobj)[mask]
    before = np.median(np.abs(md_moved / md_still - 1))
    after = np.median(np.abs(md_fixed / md_still - 1))
    assert after < 0.5 * before
    assert after < 0.05


def test_still_series_is_left_as_acquired(series):
    images, bvals, bvecs, affine = series
    gtab = gradient_table(bvals, bvecs=bvecs)
    img = nib.Nifti1Image(_noisy(images[0], np.random.default_rng(2)), affine)
    out, new_gtab, table = realign_series(img, gtab)
    assert not table["resampled"].any()
    assert table["fd"].max() < 0.3 and table["displacement"].max() < 0.1
    assert np.array_equal(np.asarray(out.dataobj), np.asarray(img.dataobj))
    assert np.array_equal(new_gtab.bvecs, gtab.bvecs)
    qc = motion_qc(table)
    assert qc["outlier_volumes"] == [] and qc["flags"] == []
    assert len(qc["fd"]) == len(bvals) and qc["fd_threshold"] == FD_THRESHOLD_MM


def test_dropout_volume_is_left_out(series):
    images, bvals, bvecs, affine = series
    gtab = gradient_table(bvals, bvecs=bvecs)
    data = _noisy(images[0], np.random.default_rng(3))
    bad = int(np.flatnonzero(~gtab.b0s_mask)[5])
    data[..., bad] *= 0.6                                       # signal dropout
    img = nib.Nifti1Image(data, affine)
    out, new_gtab, table = realign_series(img, gtab)
    assert table.loc[bad, "outlier"] and "signal_dropout" in table.loc[bad, "reason"]
    assert table["outlier"].sum() == 1 and table.loc[bad, "excluded"]
    assert out.shape[3] == len(bvals) - 1 and len(new_gtab.bvals) == len(bvals) - 1
    assert motion_qc(table)["excluded_volumes"] == [bad]
    _, _, kept = realign_series(img, gtab, exclude_volumes=False)
    assert kept["outlier"].sum() == 1 and not kept["excluded"].any()


def test_framewise_displacement_known_values():
    params = np.zeros((3, 6))
    params[1, :3] = [1.0, -0.5, 0.0]                            # 1.5 mm of translation
    params[2, :3] = params[1, :3]
    params[2, 3] = np.radians(1.0)                              # 1 degree = 50 pi / 180 mm
    fd = framewise_displacement(params)
    assert fd == pytest.approx([0.0, 1.5, 50 * np.pi / 180])
    with pytest.raises(InputError):
        framewise_displacement(np.zeros((3, 3)))


def test_drop_volumes_and_bad_arguments(series):
    images, bvals, bvecs, affine = series
    gtab = gradient_table(bvals, bvecs=bvecs)
    img = nib.Nifti1Image(images[0], affine)
    out, g = drop_volumes(img, gtab, [1, 2])
    assert out.shape[3] == len(bvals) - 2
    assert np.array_equal(g.bvals, np.delete(bvals, [1, 2]))
    with pytest.raises(InputError, match="motion model"):
        realign_series(img, gtab, model="nonlinear")
    with pytest.raises(InputError, match="reference"):
        realign_series(img, gtab, reference="first")


def test_too_many_outliers_are_kept_and_flagged(series):
    images, bvals, bvecs, affine = series
    gtab = gradient_table(bvals, bvecs=bvecs)
    data = _noisy(images[0], np.random.default_rng(4))
    dw = np.flatnonzero(~gtab.b0s_mask)
    n_max = int(MAX_EXCLUDED_FRACTION * len(bvals))             # 6 of 33
    data[..., dw[:n_max]] *= 0.6
    _, new_gtab, table = realign_series(nib.Nifti1Image(data, affine), gtab)
    assert table["excluded"].sum() == n_max and len(new_gtab.bvals) == len(bvals) - n_max
    data[..., dw[n_max]] *= 0.6                                 # one more: the session is in doubt
    _, new_gtab, table = realign_series(nib.Nifti1Image(data, affine), gtab)
    assert table["outlier"].sum() == n_max + 1 and not table["excluded"].any()
    assert len(new_gtab.bvals) == len(bvals)
    assert {"motion_outliers", "outliers_kept"} <= set(motion_qc(table)["flags"])


def test_half_millimetre_shift_of_one_volume_is_found(series):
    """The quick check (coarse level) must not hide a small motion of one volume."""
    from scipy.ndimage import affine_transform

    images, bvals, bvecs, affine = series
    gtab = gradient_table(bvals, bvecs=bvecs)
    data = _noisy(images[0], np.random.default_rng(5))
    v = int(np.flatnonzero(~gtab.b0s_mask)[8])
    T = np.eye(4)
    T[:3, 3] = [0.0, 0.5, 0.0]
    M = np.linalg.inv(affine) @ np.linalg.inv(T) @ affine
    data[..., v] = affine_transform(data[..., v], M[:3, :3], M[:3, 3], order=3, mode="nearest")
    _, _, table = realign_series(nib.Nifti1Image(data, affine), gtab)
    assert table.loc[v, "resampled"]
    assert table.loc[v, "ty"] == pytest.approx(0.5, abs=0.1)
    assert table.loc[v, "displacement"] == pytest.approx(0.5, abs=0.1)


def test_an_early_step_with_signal_drift_is_found_for_every_volume():
    """A head that turns 2.5 degrees and drops 3 mm after the reference b0, with 2 % drift.

    Every DW volume inherits the one mutual-information link of its shell's
    mean to the b0s; started from the identity alone it ended in a wrong
    optimum here (rotation about x traded for z: 2.0 degrees off in every DW
    volume). Started also from where the b0s were found, it is right.
    """
    from ketamine_nb.simulate import REALISTIC

    params = SimulationParams.idealised(signal_drift=REALISTIC["signal_drift"])
    n = params.n_b0 + params.n_directions
    step_rot, step_tr = np.array([0.15, 0.05, 2.5]), np.array([0.0, 0.0, -3.0])
    rot, tr = np.zeros((n, 3)), np.zeros((n, 3))
    rot[1:], tr[1:] = step_rot, step_tr
    img, bvals, bvecs = simulate_session(params, seed=0, motion=(rot, tr))
    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=50)
    _, _, table = realign_series(img, gtab, exclude_volumes=False)
    rot_err = np.abs(table[["rx", "ry", "rz"]].to_numpy()[1:] - step_rot)
    assert rot_err.max() < 0.5, rot_err.max(axis=0)
    assert np.median(rot_err) < 0.2


def _true_transforms(bids, pid, ses, img):
    """The simulator's truth for each volume, read from the cohort's truth folder."""
    import json

    import pandas as pd

    from ketamine_nb.simulate import true_volume_transforms

    truth = bids / "derivatives" / "simulation"
    heads = pd.read_csv(truth / "head_motion.tsv", sep="\t", dtype={"session": str})
    row = heads[(heads["participant_id"] == pid) & (heads["session"] == ses)].iloc[0]
    sidecar = json.loads((bids / pid / f"ses-{ses}" / "dwi"
                          / f"{pid}_ses-{ses}_dwi.json").read_text())
    motion = pd.read_csv(truth / f"{pid}_ses-{ses}_motion.tsv", sep="\t")
    return true_volume_transforms(motion, json.loads(row["mni_to_scanner"]), img,
                                  sidecar["PhaseEncodingDirection"])


@pytest.mark.parametrize("pid, ses, jump", [("sub-003", "pre", True), ("sub-001", "pre", False),
                                          ("sub-008", "post", False)])
def test_realistic_sessions_realign_to_the_simulators_truth(small_cohort, pid, ses, jump):
    """On the realistic test cohort, every volume is found where the simulator put it.

    Error: RMS displacement over a 50 mm sphere at the head's centre between
    the estimated and the true transform (motion with the eddy-current
    displacement, reduced to rigid). Measured on the 16 sessions of this
    cohort (2026-12-01): b0 volumes <= 0.05 mm; DW volumes <= 0.60 mm and
    <= 0.40 mm on average per session, mostly the error of the shell's
    mutual-information link to the b0s (<= 0.35 mm). sub-003 pre has the
    largest head jump (true FD 4.9 mm, 3 mm RMS), sub-001 pre the largest
    link error; sub-008 post had the largest (0.49 mm, DW 0.55 mm on average)
    when the link also looked two voxels beyond the brain, into the noise
    floor. Where the head moved little (sub-008 post: 0.57 mm on average),
    the link's error is a good part of the motion.
    """
    from ketamine_nb.motion import _rms_displacement

    stem = small_cohort / pid / f"ses-{ses}" / "dwi" / f"{pid}_ses-{ses}_dwi"
    img = nib.load(stem.with_name(stem.name + ".nii.gz"))
    bvals = np.loadtxt(stem.with_name(stem.name + ".bval"))
    gtab = gradient_table(bvals, bvecs=np.loadtxt(stem.with_name(stem.name + ".bvec")),
                          b0_threshold=50)
    _, _, table = realign_series(img, gtab, exclude_volumes=False)
    truth, centre = _true_transforms(small_cohort, pid, ses, img)
    assert gtab.b0s_mask[0] and np.allclose(truth[0], np.eye(4))  # the reference: unmoved
    C = np.eye(4)
    C[:3, 3] = centre

    def error(T_est, T_true):
        return _rms_displacement(np.linalg.inv(C) @ T_est @ np.linalg.inv(T_true) @ C)

    est = [np.array(t) for t in table.attrs["transforms"]]
    err = np.array([error(a, b) for a, b in zip(est, truth, strict=True)])
    moved = np.array([error(np.eye(4), b) for b in truth])   # no realignment at all
    b0 = gtab.b0s_mask
    assert err[b0].max() < 0.1, err[b0]
    assert err[~b0].mean() < 0.5 and err.max() < 0.8, (err[~b0].mean(), err.max())
    # Without realignment (DW 0.58-2.43 mm on average) every session fails the line above.
    assert err[~b0].mean() < moved[~b0].mean(), (err[~b0].mean(), moved[~b0].mean())
    if jump:  # the head jumped: realignment removes most of the displacement
        assert moved.max() > 2.5 and err.mean() < 0.5 * moved.mean(), (err.mean(),
                                                                         moved.mean())
