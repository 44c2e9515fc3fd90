"""The pipeline on the simulated cohort: known answers at every step."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from dipy.reconst.dti import TensorModel

from ketamine_nb.derivatives import session_paths
from ketamine_nb.dwi import brain_mask, check_gradients, load_dwi
from ketamine_nb.exceptions import InputError
from ketamine_nb.pipeline import PipelineConfig, process_session, run_pipeline
from ketamine_nb.regions import GLOBAL_GM, STUDY_REGIONS
from ketamine_nb.registration import read_transform
from ketamine_nb.roi import summarise_regions
from ketamine_nb.simulate import SimulationParams, simulate_session
from ketamine_nb.tensor import compute_md_map, fit_dti


def _hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def processed(processed_cohort):
    """The 8-participant cohort run once through the pipeline (two worker processes; conftest).

    Serial runs of some of its participants (``test_dask_workers_give_identical_outputs``,
    byte for byte; ``test_other_session_labels_and_uncompressed_nifti``, tables), Dask's
    distributed scheduler and spawned workers are compared with it below.
    """
    return processed_cohort


# --------------------------------------------------------------------------
# Per-session functions


def test_md_map_equals_a_direct_dipy_fit(small_cohort):
    dwi = small_cohort / "sub-001" / "ses-pre" / "dwi" / "sub-001_ses-pre_dwi.nii.gz"
    img, gtab = load_dwi(dwi)
    assert img.get_data_dtype() == np.float32
    mask = np.asarray(brain_mask(img, gtab).dataobj) > 0
    for method in ("WLS", "OLS"):
        ours = compute_md_map(img, gtab, mask=mask, fit_method=method)
        assert isinstance(ours, nib.Nifti1Image)
        np.testing.assert_array_equal(ours.affine, img.affine)
        direct = TensorModel(gtab, fit_method=method).fit(
            np.asarray(img.dataobj), mask=mask).md
        md = np.asarray(ours.dataobj)
        rel = np.abs(md[mask] - direct[mask]) / np.abs(direct[mask])
        assert rel.max() <= 1e-6
        assert np.all(md[~mask] == 0)
    # A mask given as an image works the same.
    as_img = compute_md_map(img, gtab, mask=nib.Nifti1Image(mask.astype(np.uint8), img.affine))
    np.testing.assert_array_equal(np.asarray(as_img.dataobj),
                                  np.asarray(compute_md_map(img, gtab, mask=mask).dataobj))


@pytest.mark.parametrize("kind", ["nifti1.nii.gz", "nifti2.nii.gz", "nifti1.nii"])
def test_dwi_reads_the_same_values_whatever_the_file_kind(small_cohort, tmp_path, kind,
                                                         monkeypatch):
    """ISA-L reads .nii.gz, nibabel the rest; the values are nibabel's either way."""
    src = small_cohort / "sub-001" / "ses-pre" / "dwi" / "sub-001_ses-pre_dwi.nii.gz"
    raw = nib.load(src)
    expected = np.asarray(raw.dataobj, dtype=np.float32)
    klass = nib.Nifti2Image if kind.startswith("nifti2") else nib.Nifti1Image
    img = klass(np.asarray(raw.dataobj), raw.affine, raw.header if klass is nib.Nifti1Image
                else None)
    img.header.set_slope_inter(0.5, 10.0)   # scaling must be applied on either path
    path = tmp_path / f"sub-001_ses-pre_dwi.{kind.split('.', 1)[1]}"
    nib.save(img, path)
    for ext in (".bval", ".bvec"):
        shutil.copy(src.with_name("sub-001_ses-pre_dwi" + ext), path.with_name(
            "sub-001_ses-pre_dwi" + ext))
    if kind == "nifti1.nii.gz":  # must not need nibabel's own (zlib) reader
        pytest.importorskip("isal")

        def no_zlib_reader(*args, **kwargs):
            raise AssertionError("nibabel.load used for a NIfTI-1 .nii.gz")
        monkeypatch.setattr(nib, "load", no_zlib_reader)
    loaded, gtab = load_dwi(path)
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), expected * 0.5 + 10.0)
    np.testing.assert_array_equal(loaded.affine, raw.affine)
    assert gtab.bvals.shape == (expected.shape[3],)


def test_fit_methods_agree_on_grey_matter_md(small_cohort):
    dwi = small_cohort / "sub-002" / "ses-pre" / "dwi" / "sub-002_ses-pre_dwi.nii.gz"
    img, gtab = load_dwi(dwi)
    mask = np.asarray(brain_mask(img, gtab).dataobj) > 0
    # A small block in the middle of the brain keeps NLLS/RESTORE quick.
    sub = np.zeros_like(mask)
    c = np.array(mask.shape) // 2
    sub[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, c[2] - 2:c[2] + 2] = True
    sub &= mask
    mds = {m: np.asarray(fit_dti(img, gtab, mask=sub, fit_method=m)[0].dataobj)[sub]
           for m in ("OLS", "WLS", "NLLS", "RESTORE")}
    for m in ("OLS", "NLLS", "RESTORE"):
        assert np.median(np.abs(mds[m] / mds["WLS"] - 1)) < 0.02, m


def test_mppca_denoising_lowers_the_noise_and_keeps_the_signal():
    from dipy.core.gradients import gradient_table

    from ketamine_nb.tensor import denoise

    params = SimulationParams.idealised()
    clean, bvals, bvecs = simulate_session(params, noise=False)
    noisy, _, _ = simulate_session(params, rng=np.random.default_rng(8))
    sl = (slice(18, 34), slice(24, 40), slice(20, 30))  # a block of deep brain
    c = np.asarray(clean.dataobj)[sl]
    n = np.asarray(noisy.dataobj, np.float32)[sl]
    gtab = gradient_table(bvals, bvecs=bvecs)
    den = np.asarray(denoise(nib.Nifti1Image(n, noisy.affine), gtab, method="mppca").dataobj)
    err_noisy = np.sqrt(np.mean((n - c) ** 2))
    err_den = np.sqrt(np.mean((den - c) ** 2))
    assert err_noisy == pytest.approx(2.0, rel=0.15)   # sigma = 2 units
    assert err_den < 0.7 * err_noisy
    assert abs(den.mean() / c.mean() - 1) < 0.02
    with pytest.raises(InputError, match="mppca"):
        denoise(noisy, gtab, method="nlmeans")


def test_brain_mask_matches_the_simulated_brain():
    params = SimulationParams.idealised()
    T = np.eye(4)
    T[:3, 3] = [2.0, -3.0, 1.0]
    img, bvals, bvecs, truth = simulate_session(params, head_transform=T,
                                                rng=np.random.default_rng(4),
                                                return_truth=True)
    from dipy.core.gradients import gradient_table

    gtab = gradient_table(bvals, bvecs=bvecs)
    mask = np.asarray(brain_mask(img, gtab).dataobj) > 0
    true = truth["fractions"].get_fdata().sum(-1) > 0.5
    dice = 2 * (mask & true).sum() / (mask.sum() + true.sum())
    assert dice >= 0.93


def test_brain_mask_keeps_the_edge_slices_of_a_slab():
    # A field of view whose first and last slices cut through the brain: those
    # slices hold brain and must stay in the mask (scipy's closing used to
    # erode them away against its border of 0, so the lowest slice of a slab,
    # where the frontal pole is, had no brain voxel).
    params = SimulationParams.idealised(fov_slab=(-10.0, 50.0))
    img, bvals, bvecs, truth = simulate_session(params, rng=np.random.default_rng(4),
                                                return_truth=True)
    from dipy.core.gradients import gradient_table

    gtab = gradient_table(bvals, bvecs=bvecs)
    mask = np.asarray(brain_mask(img, gtab).dataobj) > 0
    true = truth["fractions"].get_fdata().sum(-1) > 0.5
    for k in (0, -1):
        assert true[..., k].sum() > 500
        dice = 2 * (mask[..., k] & true[..., k]).sum() / (mask[..., k].sum() + true[..., k].sum())
        assert dice >= 0.9, (k, dice)


@pytest.mark.parametrize(("bvals", "bvecs", "match"), [
    (np.r_[0, np.ones(7)], np.r_[np.zeros((1, 3)), np.eye(3), np.eye(3), [[0.6, 0.8, 0]]],
     "ms/µm²"),
    (np.r_[0, np.full(7, 1000.0)], np.eye(3)[[0, 0, 1, 2, 0, 1, 2, 0]][:7], "b-vectors"),
    (np.full(8, 1000.0), np.tile(np.eye(3), (3, 1))[:8], "no b=0"),
    (np.r_[0, np.full(7, 1000.0)], np.r_[np.zeros((1, 3)), 2 * np.tile(np.eye(3), (3, 1))[:7]],
     "unit"),
])
def test_gradient_checks_name_the_problem_and_the_fix(bvals, bvecs, match):
    with pytest.raises(InputError, match=match) as err:
        check_gradients(bvals, bvecs, 8, source="sub-01_dwi.bval")
    assert "sub-01_dwi.bval" in str(err.value)


# --------------------------------------------------------------------------
# The pipeline on the cohort


def test_outputs_are_bids_derivatives(processed):
    out, res = processed["out"], processed["res"]
    assert res.exit_code == 0 and len(res.failures) == 0
    assert set(res.sessions["status"]) == {"processed"}
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "ketamine-nb"
    p = session_paths(out, "sub-001", "pre")
    for key in ("mask", "md", "fa", "xfm", "voxels", "qc"):
        assert p[key].exists(), key
    assert "desc-brain_mask" in p["mask"].name and "desc-MD" in p["md"].name
    md = nib.load(p["md"])
    raw = nib.load(processed["bids"] / "sub-001" / "ses-pre" / "dwi"
                   / "sub-001_ses-pre_dwi.nii.gz")
    np.testing.assert_array_equal(md.affine, raw.affine)  # native DWI grid
    assert md.shape == raw.shape[:3]
    qc = json.loads(p["qc"].read_text())
    assert qc["qc"]["snr_b0"] == pytest.approx(25, rel=0.25)
    assert qc["qc"]["flags"] == []


def test_roi_tables_have_the_documented_columns(processed):
    out = processed["out"]
    roi_md = pd.read_csv(out / "roi_md.tsv", sep="\t")
    deltas = pd.read_csv(out / "roi_deltas.tsv", sep="\t")
    assert roi_md.columns[:8].tolist() == ["participant_id", "session", "region", "md_mean",
                                           "md_median", "md_wmean", "n_voxels", "n_excluded"]
    # Seven study regions and the whole-brain grey-matter reference, per session.
    assert len(roi_md) == 8 * 2 * 8 and (roi_md["n_voxels"] > 5).all()
    assert set(roi_md["region"]) == {*STUDY_REGIONS, GLOBAL_GM}
    assert {"coverage_fov", "coverage_brain", "flag"} <= set(roi_md.columns)
    # The simulated heads are whole down to the cerebellum: every study region is
    # inside the field of view and the brain. The field of view ends at scanner
    # z = -60 mm, so the lowest cerebellar grey matter (0.4 % of the MNI
    # template's below z = -60, 1.2 % below -56) falls out when a head sits low:
    # global_gm measured 0.986 at least (sub-007 post, 2026-12-02).
    study = roi_md["region"] != GLOBAL_GM
    assert (roi_md.loc[study, "coverage_fov"] > 0.99).all()
    assert (roi_md.loc[~study, "coverage_fov"] > 0.97).all()
    assert (roi_md.loc[roi_md["region"] != GLOBAL_GM, "coverage_brain"] >= 0.8).all()
    assert deltas.columns.tolist() == ["participant_id", "arm", "region", "md_pre", "md_post",
                                       "delta_md", "pct_delta_md", "flag"]
    assert len(deltas) == 8 * 8 and deltas["delta_md"].notna().all()
    np.testing.assert_allclose(deltas["delta_md"], deltas["md_post"] - deltas["md_pre"],
                               atol=1e-12)
    np.testing.assert_allclose(deltas["pct_delta_md"], 100 * deltas["delta_md"] / deltas["md_pre"],
                               rtol=1e-6)
    arms = pd.read_csv(processed["bids"] / "participants.tsv", sep="\t")
    assert (deltas["arm"] == deltas["participant_id"].map(arms.set_index("participant_id")["arm"])
            ).all()


@pytest.mark.parametrize("cohort, min_r", [
    pytest.param("idealised", 0.9, marks=pytest.mark.slow),  # a second cohort: CI runs it
    ("realistic", 0.78)])
def test_regional_md_and_its_change_recover_the_ground_truth(cohort, min_r, request):
    """Regional MD within 5 % of the truth; ΔMD follows the truth.

    The realistic cohort (the simulator's defaults: own anatomy, motion, eddy
    currents, susceptibility distortion, multi-channel noise) is harder: on
    these 8 participants r = 0.80 (seed 3, 2026-12-02; 0.81 before the masks
    kept the grid's edge slices, which registrations leave out); the issue's
    r >= 0.85 is judged on the default 98 by benchmarks/bench_artefacts.py.
    """
    # Only the cohort asked for: the idealised one costs a pipeline run of its own.
    run = request.getfixturevalue("processed" if cohort == "realistic"
                                  else "processed_idealised")
    truth = pd.read_csv(run["bids"] / "derivatives" / "simulation" / "ground_truth_roi.tsv",
                        sep="\t")
    d = pd.read_csv(run["out"] / "roi_deltas.tsv", sep="\t").merge(
        truth, on=["participant_id", "region"], suffixes=("", "_true"))
    assert len(d) == 56
    for s in ("pre", "post"):
        rel = d[f"md_{s}"] / d[f"md_{s}_true"] - 1
        assert rel.abs().max() < 0.05, rel.abs().max()     # within a few percent
        assert abs(rel.mean()) < 0.03
    r = np.corrcoef(d["delta_md"], d["delta_md_true"])[0, 1]
    assert r >= min_r, r


@pytest.mark.slow  # the idealised cohort's pipeline run (about 80 s); CI runs it
def test_registration_recovers_the_true_head_position(processed_idealised):
    """Each session's rigid registration to MNI finds the planted head position.

    On the idealised cohort, where the head is the template's brain and the
    planted rigid position is the whole truth (a participant's own brain is
    scaled and warped as well, which a rigid registration cannot absorb).
    """
    processed = processed_idealised
    motion = pd.read_csv(processed["bids"] / "derivatives" / "simulation" / "head_motion.tsv",
                         sep="\t")
    pts = np.array([[0, 0, 0], [50, 30, 30], [-50, -70, 0], [25, -20, -25], [0, 60, 10]], float)
    for row in motion.itertuples():
        A = read_transform(session_paths(processed["out"], row.participant_id,
                                         row.session)["xfm"])
        T = np.array(json.loads(row.mni_to_scanner))
        err = np.linalg.norm(pts @ A[:3, :3].T + A[:3, 3] - (pts @ T[:3, :3].T + T[:3, 3]),
                             axis=1)
        assert err.max() < 1.5, (row.participant_id, row.session, err)


def test_template_cache_gives_the_template_nilearn_builds(tmp_path, monkeypatch):
    from ketamine_nb import registration

    monkeypatch.setenv("KETAMINE_NB_DATA", str(tmp_path))
    registration._template.cache_clear()
    try:
        first = registration.load_template(3.0, crop=True)      # built, then cached
        cached = list((tmp_path / "template_cache").glob("*res-3mm_desc-head*.nii.gz"))
        assert len(cached) == 1
        registration._template.cache_clear()
        again = registration.load_template(3.0, crop=True)      # read from the cache
        fresh = registration._build_template(3.0, True)
        for img in (first, again):
            assert img.shape == fresh.shape == (51, 62, 54)
            np.testing.assert_array_equal(img.affine, fresh.affine)
            np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(fresh.dataobj))
        cached[0].write_bytes(b"damaged")                        # rebuilt, not an error
        registration._template.cache_clear()
        np.testing.assert_array_equal(
            np.asarray(registration.load_template(3.0, crop=True).dataobj),
            np.asarray(fresh.dataobj))
    finally:
        registration._template.cache_clear()


@pytest.mark.parametrize("order", [0, 1, 3])
def test_apply_transform_equals_interpolating_every_point(order):
    """Interpolating only near each volume's non-zero box changes no value."""
    from scipy.ndimage import map_coordinates

    from ketamine_nb.registration import apply_transform

    rng = np.random.default_rng(order)
    vol = np.zeros((30, 34, 28, 2), np.float32)
    vol[8:14, 10:20, 5:9, 0] = rng.uniform(0.1, 1, (6, 10, 4))   # a box, as a region map
    vol[19:23, 3:7, 18:22, 1] = 1.0                              # a blob elsewhere
    src = nib.Nifti1Image(vol, np.diag([2.0, 2.0, 2.0, 1.0]))
    target = nib.Nifti1Image(np.zeros((25, 27, 23), np.float32),
                             np.diag([2.5, 2.5, 2.5, 1.0]))
    angle = 0.2
    A = np.eye(4)
    A[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    A[:3, 3] = [3.3, -2.1, 1.7]
    got = np.asarray(apply_transform(src, A, target=target, order=order).dataobj)
    vox = np.linalg.inv(src.affine) @ np.linalg.inv(A) @ target.affine
    ijk = np.indices(target.shape, dtype=np.float32).reshape(3, -1)
    coords = vox[:3, :3] @ ijk + vox[:3, 3:4]
    for k in range(2):
        want = map_coordinates(vol[..., k], coords, order=order, mode="constant", cval=0.0,
                               prefilter=False).reshape(target.shape)
        np.testing.assert_array_equal(got[..., k], want)
        assert np.count_nonzero(want) > 0


def test_thresholds_recompute_from_cached_voxels_without_refitting(processed):
    out = processed["out"]
    voxels = pd.read_csv(session_paths(out, "sub-001", "pre")["voxels"], sep="\t")
    assert set(voxels["region"]) == set(STUDY_REGIONS)
    loose = summarise_regions(voxels, probability_threshold=0.1, csf_md_threshold=None)
    strict = summarise_regions(voxels, probability_threshold=0.5, csf_md_threshold=None)
    guarded = summarise_regions(voxels, probability_threshold=0.1, csf_md_threshold=1.0e-3)
    for region in STUDY_REGIONS:
        n_loose = loose.set_index("region").loc[region, "n_voxels"]
        n_strict = strict.set_index("region").loc[region, "n_voxels"]
        g = guarded.set_index("region").loc[region]
        v = voxels[(voxels["region"] == region) & (voxels["probability"] >= 0.1)]
        assert n_loose == len(v) and n_strict < n_loose
        assert g["n_excluded"] == (v["md"] > 1.0e-3).sum()
        assert g["n_voxels"] + g["n_excluded"] == n_loose
        assert g["md_mean"] == pytest.approx(v.loc[v["md"] <= 1.0e-3, "md"].mean())
        # Dropping CSF-like voxels can only lower the mean.
        assert g["md_mean"] <= loose.set_index("region").loc[region, "md_mean"]


def test_rerun_reuses_changed_parameters_recompute_force_recomputes(processed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(processed["out"], out)
    labels = ["sub-001"]
    res = run_pipeline(processed["bids"], out, participant_label=labels, progress=False)
    assert res.sessions["status"].tolist() == ["reused", "reused"]
    md_before = session_paths(out, "sub-001", "pre")["md"].read_bytes()
    res = run_pipeline(processed["bids"], out, participant_label=labels, progress=False,
                       config=PipelineConfig(fit_method="OLS"))
    assert res.sessions["status"].tolist() == ["processed", "processed"]
    assert session_paths(out, "sub-001", "pre")["md"].read_bytes() != md_before
    res = run_pipeline(processed["bids"], out, participant_label=labels, progress=False,
                       config=PipelineConfig(fit_method="OLS"), force=True)
    assert res.sessions["status"].tolist() == ["processed", "processed"]
    # Thresholds are not processing parameters: sessions are reused, tables change.
    res = run_pipeline(processed["bids"], out, participant_label=labels, progress=False,
                       config=PipelineConfig(fit_method="OLS", probability_threshold=0.6))
    assert res.sessions["status"].tolist() == ["reused", "reused"]


def test_dask_workers_give_identical_outputs(processed, tmp_path):
    from dask.distributed import LocalCluster

    labels = ["sub-002", "sub-003"]
    out = tmp_path / "dask"
    # Serially (the shared run used Dask's local multiprocessing scheduler, 2 processes).
    res = run_pipeline(processed["bids"], out, participant_label=labels[:1], progress=False)
    assert set(res.sessions["status"]) == {"processed"}
    # --scheduler ADDRESS: join a cluster started elsewhere (as dask-jobqueue would).
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster:
        res = run_pipeline(processed["bids"], out, participant_label=labels, progress=False,
                           scheduler=cluster.scheduler_address)
    assert res.sessions["status"].tolist() == ["reused", "reused", "processed", "processed"]
    for pid in labels:
        for ses in ("pre", "post"):
            a, b = session_paths(out, pid, ses), session_paths(processed["out"], pid, ses)
            for key in ("md", "fa", "mask", "xfm", "voxels"):
                assert a[key].read_bytes() == b[key].read_bytes(), (pid, ses, key)
    local = pd.read_csv(processed["out"] / "roi_deltas.tsv", sep="\t")
    distributed = pd.read_csv(out / "roi_deltas.tsv", sep="\t")
    pd.testing.assert_frame_equal(distributed, local[local["participant_id"].isin(labels)]
                                  .reset_index(drop=True), check_exact=True)


def test_spawned_workers_give_identical_outputs(processed, tmp_path, monkeypatch):
    """Where fork is not used (macOS, Windows), workers are spawned and start cold."""
    import ketamine_nb.pipeline as pipeline

    calls = []
    monkeypatch.setattr(pipeline, "_start_method", lambda: "spawn")
    monkeypatch.setattr(pipeline, "_warm_up", lambda config: calls.append(config))
    out = tmp_path / "spawn"
    res = run_pipeline(processed["bids"], out, participant_label=["sub-002"], n_jobs=2,
                       progress=False)
    assert res.sessions["status"].tolist() == ["processed", "processed"]
    assert calls == []  # nothing to inherit: the parent does not warm up for spawn
    for ses in ("pre", "post"):
        a, b = session_paths(out, "sub-002", ses), session_paths(processed["out"], "sub-002", ses)
        for key in ("md", "mask", "xfm", "voxels"):
            assert a[key].read_bytes() == b[key].read_bytes(), (ses, key)


def test_a_dying_worker_fails_its_sessions_instead_of_hanging(processed, tmp_path,
                                                              monkeypatch):
    """A worker killed (as the kernel's OOM killer does) must not hang the run."""
    import os
    import signal

    import ketamine_nb.pipeline as pipeline

    real_task = pipeline._task

    def task(args):
        if args[4] == "sub-003" and args[5] == "post":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_task(args)

    monkeypatch.setattr(pipeline, "_task", task)
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("the run hung"))
    signal.alarm(300)
    try:
        res = run_pipeline(processed["bids"], tmp_path / "out",
                           participant_label=["sub-002", "sub-003"], n_jobs=2,
                           progress=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    status = res.sessions.set_index(["participant_id", "session"])["status"]
    assert status[("sub-003", "post")] == "failed"
    assert set(status) <= {"processed", "failed"} and len(status) == 4
    failed = res.failures.set_index(["participant_id", "session"])
    assert "worker process died" in failed.loc[("sub-003", "post"), "error"]
    # 1 when a participant completed beside the failure; 2 when the dying pool took every
    # session with it (as here, usually: both participants' sessions were in flight).
    assert res.exit_code == (1 if len(res.roi_deltas) else 2)
    assert (tmp_path / "out" / "failures.tsv").is_file()
    # The sessions that finished are kept and reused by the rerun that is advised.
    monkeypatch.setattr(pipeline, "_task", real_task)
    again = run_pipeline(processed["bids"], tmp_path / "out",
                         participant_label=["sub-002", "sub-003"], n_jobs=2, progress=False)
    done = status[status == "processed"].index
    assert set(again.sessions.set_index(["participant_id", "session"])
               .loc[done, "status"]) <= {"reused"}
    assert again.exit_code == 0


def test_a_rerun_with_nothing_to_do_starts_no_worker(processed, tmp_path, monkeypatch):
    import ketamine_nb.pipeline as pipeline

    out = tmp_path / "out"
    shutil.copytree(processed["out"], out)   # the shared tables stay as they are

    def no_pool(*args, **kwargs):
        raise AssertionError("workers started for sessions that are done")
    monkeypatch.setattr(pipeline, "_run_local", no_pool)
    res = run_pipeline(processed["bids"], out, participant_label=["sub-001"], n_jobs=2,
                       progress=False)
    assert res.sessions["status"].tolist() == ["reused", "reused"]


def test_other_session_labels_and_uncompressed_nifti(processed, tmp_path):
    """A participant's sessions renamed to baseline/24h and stored as .nii.

    Run serially (the CLI's default), compared with the shared run's two worker
    processes: the same tables.
    """
    src, bids = processed["bids"], tmp_path / "bids"
    bids.mkdir()
    for name in ("dataset_description.json", "participants.json"):
        shutil.copy(src / name, bids / name)
    parts = pd.read_csv(src / "participants.tsv", sep="\t")
    parts[parts["participant_id"] == "sub-004"].to_csv(bids / "participants.tsv", sep="\t",
                                                       index=False)
    pid, labels = "sub-004", {"pre": "baseline", "post": "24h"}
    for old, new in labels.items():
        d = bids / pid / f"ses-{new}" / "dwi"
        d.mkdir(parents=True)
        stem_old = src / pid / f"ses-{old}" / "dwi" / f"{pid}_ses-{old}_dwi"
        stem_new = d / f"{pid}_ses-{new}_dwi"
        (d / f"{stem_new.name}.nii").write_bytes(
            gzip.decompress(stem_old.with_name(stem_old.name + ".nii.gz").read_bytes()))
        for ext in (".bval", ".bvec", ".json"):
            shutil.copy(stem_old.with_name(stem_old.name + ext),
                        stem_new.with_name(stem_new.name + ext))
    sessions = (src / pid / f"{pid}_sessions.tsv").read_text()
    (bids / pid / f"{pid}_sessions.tsv").write_text(
        sessions.replace("ses-pre", "ses-baseline").replace("ses-post", "ses-24h"))
    exe = [sys.executable, "-m", "ketamine_nb.cli", "run", str(bids), str(tmp_path / "out"),
           "--pre-session", "baseline", "--post-session", "24h", "--quiet"]
    proc = subprocess.run(exe, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "sessions: 2 processed" in proc.stdout, proc.stdout
    new = pd.read_csv(tmp_path / "out" / "roi_deltas.tsv", sep="\t")
    old = pd.read_csv(processed["out"] / "roi_deltas.tsv", sep="\t")
    old = old[old["participant_id"] == pid].reset_index(drop=True)
    pd.testing.assert_frame_equal(new, old)
    # Wrong labels: a one-line error listing the labels found, exit 2.
    bad = subprocess.run(exe[:-5] + ["--pre-session", "pre", "--quiet"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "24h" in bad.stderr and "baseline" in bad.stderr


def test_raw_data_untouched_and_out_dir_inside_raw_refused(processed):
    bids = processed["bids"]
    assert _hashes(bids) == processed["raw_hashes"]
    with pytest.raises(InputError, match="inside the raw dataset"):
        run_pipeline(bids, bids / "derivatives" / "ours", progress=False)
    with pytest.raises(InputError, match="inside the raw dataset"):
        run_pipeline(bids, bids, progress=False)
    assert _hashes(bids) == processed["raw_hashes"]


def test_a_broken_session_fails_alone(processed, tmp_path):
    bids, out = tmp_path / "bids", tmp_path / "out"
    shutil.copytree(processed["bids"], bids, ignore=shutil.ignore_patterns("derivatives"))
    # The other participant is done already (the shared run's outputs, reused); the
    # broken session is the first of the run, so work goes on after it fails.
    shutil.copytree(processed["out"] / "sub-006", out / "sub-006")
    broken = bids / "sub-005" / "ses-pre" / "dwi" / "sub-005_ses-pre_dwi.nii.gz"
    broken.write_bytes(broken.read_bytes()[:5000])  # a half-copied file
    res = run_pipeline(bids, out, participant_label=["sub-005", "sub-006"], progress=False)
    assert res.exit_code == 1
    assert res.failures[["participant_id", "session"]].values.tolist() == [["sub-005", "pre"]]
    assert "sub-005_ses-pre_dwi.nii.gz" in res.failures["error"].iloc[0]
    status = res.sessions.set_index(["participant_id", "session"])["status"]
    assert status[("sub-005", "post")] == "processed"
    assert status[("sub-006", "pre")] == status[("sub-006", "post")] == "reused"
    assert set(res.participants.loc[res.participants["participant_id"] == "sub-006",
                                    "status"]) == {"reused"}
    assert set(res.roi_deltas["participant_id"]) == {"sub-006"}
    failures = pd.read_csv(tmp_path / "out" / "failures.tsv", sep="\t")
    assert failures["participant_id"].tolist() == ["sub-005"]


def test_process_session_alone_for_a_notebook(small_cohort, tmp_path):
    dwi = small_cohort / "sub-006" / "ses-pre" / "dwi" / "sub-006_ses-pre_dwi.nii.gz"
    info = process_session(dwi, tmp_path, "sub-006", "pre")
    assert info["status"] == "processed" and info["seconds"] > 0
    again = process_session(dwi, tmp_path, "sub-006", "pre")
    assert again["status"] == "reused"


def test_a_session_alone_measures_its_coverage(small_cohort, tmp_path):
    # Without a halfway step (one visit, or --atlas-registration none) a
    # session still says how much of each region its field of view holds: all
    # of it for the whole simulated head, almost none of the amygdala for a
    # slab of the upper 40 % of the head.
    from ketamine_nb.regions import load_region_maps

    dwi = small_cohort / "sub-006" / "ses-pre" / "dwi" / "sub-006_ses-pre_dwi.nii.gz"
    process_session(dwi, tmp_path / "whole", "sub-006", "pre")
    cov = json.loads(session_paths(tmp_path / "whole", "sub-006", "pre")["qc"].read_text())[
        "coverage"]
    names = load_region_maps().names
    assert set(cov["fov"]) == set(names) == set(cov["brain"])
    assert min(cov["fov"].values()) > 0.99 and min(cov["brain"].values()) > 0.8
    img = nib.load(dwi)
    half = int(img.shape[2] * 0.6)            # the slab starts 60 % up the head
    affine = img.affine.copy()
    affine[:3, 3] += affine[:3, 2] * half
    slab_dir = tmp_path / "slab"
    slab_dir.mkdir()
    slab = slab_dir / "sub-006_ses-pre_dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, half:], affine), slab)
    for ext in ("bval", "bvec"):
        (slab_dir / f"sub-006_ses-pre_dwi.{ext}").write_bytes(
            dwi.with_name(f"sub-006_ses-pre_dwi.{ext}").read_bytes())
    process_session(slab, tmp_path / "slab_out", "sub-006", "pre")
    cov = json.loads(session_paths(tmp_path / "slab_out", "sub-006", "pre")["qc"].read_text())[
        "coverage"]
    assert cov["fov"]["amygdala_L"] < 0.2 and cov["fov"]["amygdala_R"] < 0.2, cov["fov"]
    assert cov["brain"]["amygdala_L"] <= cov["fov"]["amygdala_L"] + 1e-9


def test_qc_flags_an_injected_dropout_and_draws_it(small_cohort):
    from ketamine_nb.dwi import qc_session
    from ketamine_nb.plotting import plot_session_qc

    dwi = small_cohort / "sub-003" / "ses-post" / "dwi" / "sub-003_ses-post_dwi.nii.gz"
    img, gtab = load_dwi(dwi)
    mask = brain_mask(img, gtab)
    clean = qc_session(img, gtab, mask)
    assert clean["flags"] == [] and clean["outlier_volumes"] == []
    assert clean["snr_b0"] == pytest.approx(25, rel=0.25)
    assert 1200 < clean["mask_volume_ml"] < 2400  # intracranial volume, CSF included
    data = np.asarray(img.dataobj).copy()
    data[..., 7] *= 0.5                  # a whole volume loses half its signal
    data[:, :, 25, 12] *= 0.3            # one slice of another volume drops out
    bad = qc_session(nib.Nifti1Image(data, img.affine), gtab, mask)
    assert bad["outlier_volumes"] == [7]
    assert [12, 25] in bad["outlier_slices"]
    assert {"outlier_volumes", "slice_dropout"} <= set(bad["flags"])
    fig = plot_session_qc(nib.Nifti1Image(data, img.affine), gtab, mask, bad, title="sub-003")
    assert len(fig.axes) == 4
    assert "outlier_volumes" in fig.texts[0].get_text()
    marked = [ln for ln in fig.axes[3].lines if ln.get_label() == "outlier volume"]
    assert marked and marked[0].get_xdata().tolist() == [7]


def test_mni_space_option_gives_similar_regional_md(processed, tmp_path):
    dwi = processed["bids"] / "sub-002" / "ses-pre" / "dwi" / "sub-002_ses-pre_dwi.nii.gz"
    process_session(dwi, tmp_path, "sub-002", "pre", config=PipelineConfig(space="MNI"))
    mni = summarise_regions(pd.read_csv(session_paths(tmp_path, "sub-002", "pre")["voxels"],
                                        sep="\t")).set_index("region")
    native = summarise_regions(pd.read_csv(session_paths(processed["out"], "sub-002",
                                                         "pre")["voxels"], sep="\t"))
    native = native.set_index("region")
    rel = (mni["md_mean"] / native["md_mean"] - 1).abs()
    assert rel.max() < 0.05


@pytest.mark.slow
def test_the_halfway_step_resamples_each_volume_once_with_the_sessions_realignment(
        tmp_path, monkeypatch):
    # A participant whose head moves within both scans (noise-free, so that
    # only motion and interpolation differ): the halfway step takes the
    # realignment the session step estimated (stored in its QC JSON) and
    # composes it with its own resampling instead of realigning again and
    # interpolating twice. Against the same head held still, one interpolation
    # is closer in every region (measured below).
    import ketamine_nb.motion as motion
    from ketamine_nb.derivatives import load_region_voxels
    from ketamine_nb.pipeline import process_participant

    def participant(tag, motion_rms):
        visits = {}
        for k, ses in enumerate(("pre", "post")):
            img, bvals, bvecs = simulate_session(
                SimulationParams.idealised(motion_rms=motion_rms, motion_spikes=0.0), seed=11,
                rng=np.random.default_rng(k), noise=False)
            d = tmp_path / tag / f"ses-{ses}"
            d.mkdir(parents=True)
            dwi = d / f"sub-01_ses-{ses}_dwi.nii.gz"
            nib.save(img, dwi)
            np.savetxt(d / f"sub-01_ses-{ses}_dwi.bval", bvals[None], fmt="%g")
            np.savetxt(d / f"sub-01_ses-{ses}_dwi.bvec", bvecs.T, fmt="%.6f")
            process_session(dwi, tmp_path / f"out_{tag}", "sub-01", ses)
            visits[ses] = (ses, dwi, None, None, False)
        return visits

    still = participant("still", 0.0)
    process_participant(tmp_path / "out_still", "sub-01", still)
    moving = participant("moving", 0.6)
    for ses in moving:
        qc = json.loads(session_paths(tmp_path / "out_moving", "sub-01", ses)["qc"].read_text())
        T = np.asarray(qc["realignment"]["transforms"])
        assert T.shape == (33, 4, 4)
        assert np.abs(T[:, :3, 3]).max() > 0.3           # the head did move within the scan
    shutil.copytree(tmp_path / "out_moving", tmp_path / "out_twice")

    def no_second_realignment(*a, **k):
        raise AssertionError("the halfway step realigned the series again")

    monkeypatch.setattr(motion, "realign_series", no_second_realignment)
    assert process_participant(tmp_path / "out_moving", "sub-01", moving)["status"] == "processed"
    monkeypatch.undo()
    for ses in moving:                      # without the stored realignment: the two-step path
        p = session_paths(tmp_path / "out_twice", "sub-01", ses)["qc"]
        doc = json.loads(p.read_text())
        del doc["realignment"]
        p.write_text(json.dumps(doc))
    process_participant(tmp_path / "out_twice", "sub-01", moving, force=True)

    def md(tag, ses):
        t = summarise_regions(load_region_voxels(tmp_path / f"out_{tag}", "sub-01", ses))
        return t.set_index("region")["md_wmean"]

    for ses in moving:
        once = (md("moving", ses) / md("still", ses) - 1).abs()
        twice = (md("twice", ses) / md("still", ses) - 1).abs()
        table = pd.DataFrame({"once": once, "twice": twice})
        assert (once < twice).all(), table
        # Measured (pre): 0.6-3.1 % once against 1.5-3.6 % twice on an Intel
        # Xeon, 0.7-2.5 % against 1.7-3.3 % on an AMD EPYC (same code and
        # wheels: the registrations' floating point differs); vACC, small and
        # beside CSF, is the largest on both.
        assert once.max() < 0.035, table


_ORPHAN_SCRIPT = '''
import os, sys, time
from contextlib import nullcontext
import ketamine_nb.pipeline as P

P._warm_up = lambda config: None          # not needed to start two sleepers


def task(t):
    open(os.path.join(sys.argv[2], str(os.getpid())), "w").close()
    time.sleep(90)
    return {}


if __name__ == "__main__":
    P._start_method = lambda: sys.argv[1]
    P._run_local([(i,) for i in range(2)], 2, nullcontext, P.PipelineConfig(), fn=task)
'''


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_end_when_the_parent_is_killed(tmp_path, method):
    """kill -9 of the pipeline's process leaves no worker holding memory."""
    import signal
    import subprocess
    import time

    script = tmp_path / "parent.py"
    script.write_text(_ORPHAN_SCRIPT)
    started = tmp_path / "started"           # each worker leaves its pid here
    started.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), method, str(started)])
    pids = []
    try:
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = [int(f.name) for f in started.iterdir()]
        assert len(pids) == 2, "the workers did not start"
        assert all(_alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids), "a worker outlived its killed parent"
    finally:
        proc.kill()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_exit_code_2_and_its_words_when_no_participant_completed(tmp_path):
    from ketamine_nb.pipeline import PipelineResult

    failures = pd.DataFrame({"participant_id": ["sub-01"], "session": ["pre"],
                             "error": ["x.nii.gz: truncated; copy it again"]})
    sessions = pd.DataFrame({"participant_id": ["sub-01"], "session": ["pre"],
                             "status": ["failed"]})
    none = PipelineResult(tmp_path, sessions, failures, pd.DataFrame(), pd.DataFrame())
    assert none.exit_code == 2
    assert "none completed" in none.summary() and "exit code 2" in none.summary()
    one = PipelineResult(tmp_path, sessions, failures, pd.DataFrame(),
                         pd.DataFrame({"participant_id": ["sub-02"], "region": ["BA10_L"],
                                       "delta_md": [1e-6], "flag": [""]}))
    assert one.exit_code == 1 and "Exit code 1 means exactly this" in one.summary()
    ok = PipelineResult(tmp_path, sessions.iloc[:0], failures.iloc[:0], pd.DataFrame(),
                        pd.DataFrame())
    assert ok.exit_code == 0
