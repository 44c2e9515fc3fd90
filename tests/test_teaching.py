"""The didactic experiments, each against an answer known beforehand.

The summaries that moved from ``teaching`` to their modules (``stats``,
``robustness``, ``voxelwise``, ``dwi``, ``simulate``) are tested here too, under
their new names, until their modules' test files take them over.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ketamine_nb import dwi, plotting, robustness, simulate, stats, voxelwise
from ketamine_nb import teaching as kt
from ketamine_nb.exceptions import InputError
from ketamine_nb.simulate import gradient_scheme
from ketamine_nb.stats import STUDY_DIRECTIONS

# ---------------------------------------------------------------- synthetic data

WM = (1.4e-3, 0.35e-3, 0.35e-3)
GM = (0.9e-3, 0.75e-3, 0.75e-3)
CSF = (3.0e-3, 3.0e-3, 3.0e-3)


def _gtab():
    from dipy.core.gradients import gradient_table

    bvals, bvecs = gradient_scheme(30, 3, 1000.0)
    return gradient_table(bvals, bvecs=bvecs, b0_threshold=50)


def _phantom(rng=None, sigma=0.0):
    """12 x 12 x 6 voxels: white matter (fibres along x), grey matter, CSF, in x thirds."""
    import nibabel as nib

    gtab = _gtab()
    shape = (12, 12, 6)
    data = np.zeros((*shape, len(gtab.bvals)), np.float32)
    for x0, evals, s0 in ((0, WM, 800.0), (4, GM, 1000.0), (8, CSF, 1600.0)):
        adc = (gtab.bvecs ** 2) @ np.asarray(evals)  # tensor diagonal in the x, y, z frame
        data[x0:x0 + 4] = s0 * np.exp(-gtab.bvals * adc)
    if sigma:
        data = np.abs(data + rng.normal(0, sigma, data.shape)).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    mask = nib.Nifti1Image(np.ones(shape, np.uint8), img.affine)
    return img, gtab, mask


# ---------------------------------------------------------------- the study


def test_study_pattern_restates_the_reported_signs():
    t = stats.study_pattern().set_index("region")
    assert list(t.index) == ["BA10_L", "BA10_R", "amygdala_L", "amygdala_R", "hippocampus_L",
                             "hippocampus_R", "vACC"]
    assert t.loc["BA10_R", ["ketamine", "saline"]].tolist() == [1, 1]
    assert t.loc["BA10_L", ["ketamine", "saline"]].tolist() == [1, 0]
    assert t.loc["hippocampus_R", "ketamine"] == -1
    assert t.loc["vACC", ["ketamine", "saline"]].tolist() == [0, 0]
    for region, arms in STUDY_DIRECTIONS.items():
        for arm, sign in arms.items():
            assert t.loc[region, arm] == sign
    assert "0.007" in t.loc["BA10_R", "reported"]


def _stats(rows):
    cols = ["region", "outcome", "slope_ketamine", "slope_saline", "p_interaction", "q_fdr"]
    return pd.DataFrame(rows, columns=cols)


def test_study_comparison_sets_the_reported_pattern_beside_the_verdicts():
    t = _stats([("BA10_L", "madrs", 0.5, 0.0, 0.001, 0.01),
                ("hippocampus_L", "madrs", 0.3, 0.1, 0.2, 0.3),
                ("vACC", "madrs", 0.2, 0.1, 0.01, 0.04),
                ("BA10_R", "qids", 0.4, -0.1, 0.5, 0.6)])
    t["verdict"] = ["same direction", "opposite direction", "not reported", "not estimated"]
    out = stats.study_comparison(t)
    assert out["verdict"].tolist() == t["verdict"].tolist()  # region_stats' verdicts
    assert out["reported"].tolist() == [stats.REPORTED_PATTERN[r] for r in t["region"]]
    assert out["significant"].tolist() == [True, False, True, False]
    assert out["q"].iloc[0] == 0.01 and out["slope_ketamine"].iloc[1] == 0.3
    only = stats.study_comparison(t, outcome="qids")
    assert only["region"].tolist() == ["BA10_R"]
    assert (stats.study_comparison(t.drop(columns=["verdict"]))["verdict"]
            == "not reported").all()
    with pytest.raises(InputError):
        stats.study_comparison(t, outcome="bdi")


def test_study_comparison_on_real_stats(small_results):
    out = stats.study_comparison(small_results.stats_roi, outcome="madrs")
    assert len(out) == 7 and set(out["outcome"]) == {"madrs"}
    reported = out.set_index("region")["verdict"]
    assert reported["vACC"] == "not reported" and reported["amygdala_R"] == "not reported"


# ---------------------------------------------------------------- raw DWI and QC


def test_gradients_frame():
    gtab = _gtab()
    t = dwi.gradients_frame(gtab)
    assert len(t) == 33 and t["b0"].sum() == 3
    assert set(t.loc[t["b0"], "bval"]) == {0.0} and set(t.loc[~t["b0"], "bval"]) == {1000.0}
    norms = np.linalg.norm(t.loc[~t["b0"], ["x", "y", "z"]].to_numpy(), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)


def test_simulate_dropout_darkens_one_slice_of_one_volume():
    img, gtab, _ = _phantom()
    bad = kt.simulate_dropout(img, gtab, volume=4, slice_index=2, factor=0.25)
    a, b = np.asarray(img.dataobj), np.asarray(bad.dataobj)
    np.testing.assert_allclose(b[:, :, 2, 4], 0.25 * a[:, :, 2, 4], rtol=1e-6)
    changed = np.argwhere(np.any(a != b, axis=(0, 1)))
    assert changed.tolist() == [[2, 4]]
    assert np.asarray(img.dataobj)[0, 0, 2, 4] == a[0, 0, 2, 4]  # the input is untouched
    default = kt.simulate_dropout(img, gtab)
    dw = np.flatnonzero(~gtab.b0s_mask)
    diff = np.argwhere(np.any(np.asarray(default.dataobj) != a, axis=(0, 1)))
    assert diff.tolist() == [[3, int(dw[5])]]
    with pytest.raises(InputError):
        kt.simulate_dropout(img, gtab, factor=1.5)


def test_simulated_dropout_is_flagged_by_qc(small_results):
    from ketamine_nb.dwi import brain_mask, load_dwi, qc_session
    from ketamine_nb.tensor import fit_dti

    img, gtab = load_dwi(small_results.paths("sub-001", "pre")["dwi"])
    mask = brain_mask(img, gtab)
    bad = kt.simulate_dropout(img, gtab, volume=7, slice_index=img.shape[2] // 2, factor=0.3)
    qc = qc_session(bad, gtab, mask)
    assert "slice_dropout" in qc["flags"]
    assert [7, img.shape[2] // 2] in qc["outlier_slices"]
    # RESTORE down-weights the damaged measurement; WLS reads it as fast diffusion.
    clean = fit_dti(img, gtab, mask=kt.middle_slices(mask, n_slices=1))[0]
    t = kt.compare_fit_methods(bad, gtab, kt.middle_slices(mask, n_slices=1),
                               methods=("WLS", "RESTORE"), reference_md=clean)
    err = t.set_index("fit_method")["median_diff_percent"]
    assert err["WLS"] > 1.0 and abs(err["RESTORE"]) < err["WLS"] / 2


# ---------------------------------------------------------------- the tensor


def test_middle_slices_keeps_the_central_slices():
    import nibabel as nib

    m = np.zeros((10, 10, 20), np.uint8)
    m[2:8, 2:8, 4:15] = 1  # the image's middle slice is 10
    out = np.asarray(kt.middle_slices(nib.Nifti1Image(m, np.eye(4)), n_slices=3).dataobj)
    assert np.flatnonzero(out.any(axis=(0, 1))).tolist() == [9, 10, 11]
    assert out.sum() == 3 * 36
    one = np.asarray(kt.middle_slices(nib.Nifti1Image(m, np.eye(4)), n_slices=1).dataobj)
    assert np.flatnonzero(one.any(axis=(0, 1))).tolist() == [10]
    with pytest.raises(InputError):
        kt.middle_slices(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)))


def test_tissue_tensors_recover_known_eigenvalues():
    img, gtab, mask = _phantom()
    t = kt.tissue_tensors(img, gtab, mask).set_index("tissue")
    assert list(t.index) == ["white matter", "grey matter", "CSF"]
    for tissue, evals, x_range in (("white matter", WM, (0, 4)), ("grey matter", GM, (4, 8)),
                                   ("CSF", CSF, (8, 12))):
        row = t.loc[tissue]
        np.testing.assert_allclose(row[["l1", "l2", "l3"]].to_numpy(float), evals, rtol=1e-4)
        assert row["md"] == pytest.approx(sum(evals) / 3, rel=1e-4)
        assert x_range[0] <= row["i"] < x_range[1]
    l1, l2, l3 = WM
    fa = np.sqrt(0.5 * ((l1 - l2) ** 2 + (l2 - l3) ** 2 + (l3 - l1) ** 2)
                 / (l1 ** 2 + l2 ** 2 + l3 ** 2))
    assert t.loc["white matter", "fa"] == pytest.approx(fa, abs=1e-4)
    assert t.loc["CSF", "fa"] == pytest.approx(0.0, abs=1e-3)


def test_compare_fit_methods_agree_on_clean_data(rng):
    img, gtab, mask = _phantom(rng, sigma=0.5)
    table, maps = kt.compare_fit_methods(img, gtab, mask, return_maps=True)
    assert table["fit_method"].tolist() == ["OLS", "WLS", "NLLS", "RESTORE"]
    assert set(maps) == {"OLS", "WLS", "NLLS", "RESTORE"}
    assert (table["n_voxels"] == 12 * 12 * 6).all() and (table["seconds"] >= 0).all()
    np.testing.assert_allclose(table["us_per_voxel"], 1e6 * table["seconds"] / (12 * 12 * 6),
                               atol=0.01 + 1e6 * 0.0005 / (12 * 12 * 6))
    ref = table.set_index("fit_method").loc["WLS"]
    assert ref["median_diff_percent"] == 0 and ref["p95_abs_diff_percent"] == 0
    truth = np.mean([sum(WM) / 3, sum(GM) / 3, sum(CSF) / 3])
    np.testing.assert_allclose(table["md_mean"], truth, rtol=2e-3)
    assert (table["p95_abs_diff_percent"] < 1.0).all()
    only = kt.compare_fit_methods(img, gtab, mask, methods=("ols", "wls"))
    assert only["fit_method"].tolist() == ["OLS", "WLS"]
    with pytest.raises(InputError):
        kt.compare_fit_methods(img, gtab, mask, methods=("OLS",))
    with pytest.raises(InputError):
        kt.compare_fit_methods(img, gtab, mask, methods=("LS", "WLS"))
    with pytest.raises(InputError, match="repeats"):
        kt.compare_fit_methods(img, gtab, mask, methods=("WLS",), repeats=0)
    # repeats: the same maps (the fastest time: the next test)
    again, again_maps = kt.compare_fit_methods(img, gtab, mask, methods=("WLS",), repeats=3,
                                               return_maps=True)
    np.testing.assert_array_equal(again_maps["WLS"].get_fdata(), maps["WLS"].get_fdata())
    # Against a map given from outside: the noise-free fit of the same phantom.
    clean, _, _ = _phantom()
    truth_md = kt.compare_fit_methods(clean, gtab, mask, methods=("WLS",), return_maps=True)[1]
    vs_truth = kt.compare_fit_methods(img, gtab, mask, methods=("OLS", "NLLS"),
                                      reference_md=truth_md["WLS"])
    assert (vs_truth["p95_abs_diff_percent"] < 1.0).all()
    assert (vs_truth["p95_abs_diff_percent"] > 0).all()
    fig = plotting.plot_fit_methods(maps, mask)
    assert len(fig.axes) == 3 and fig.axes[0].get_title() == "OLS"


def test_compare_fit_methods_keeps_the_fastest_of_its_repeats(rng, monkeypatch):
    """Three runs taking 3, 1 and 2 s (a fake clock): the table says 1 s, not the last or mean."""
    img, gtab, mask = _phantom(rng, sigma=0.5)
    from types import SimpleNamespace

    ticks = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])
    # only the module's own clock is replaced (dipy and numpy keep the real one)
    monkeypatch.setattr(kt, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    t = kt.compare_fit_methods(img, gtab, mask, methods=("WLS",), repeats=3)
    assert t["seconds"].tolist() == [1.0]
    assert t["us_per_voxel"].tolist() == [round(1e6 / (12 * 12 * 6), 2)]


def test_md_percent_difference_known_values():
    import nibabel as nib

    ref = np.zeros((3, 3, 3), np.float32)
    ref[1, 1, :] = [1e-3, 2e-3, 1e-3]
    img = ref.copy()
    img[1, 1, 0] = 1.1e-3
    img[1, 1, 2] = 0  # not fitted: no difference shown
    out = np.asarray(kt.md_percent_difference(nib.Nifti1Image(img, np.eye(4)),
                                              nib.Nifti1Image(ref, np.eye(4))).dataobj)
    np.testing.assert_allclose(out[1, 1], [10.0, 0.0, 0.0], atol=1e-4)
    assert np.count_nonzero(out) == 1
    with pytest.raises(InputError):
        kt.md_percent_difference(nib.Nifti1Image(img[:2], np.eye(4)),
                                 nib.Nifti1Image(ref, np.eye(4)))
    diff = kt.md_percent_difference(nib.Nifti1Image(img, np.eye(4)),
                                    nib.Nifti1Image(ref, np.eye(4)))
    fig = plotting.plot_md_difference(diff, nib.Nifti1Image(ref, np.eye(4)), cut_coords=[1])
    assert "difference" in fig.get_suptitle()
    assert fig.axes[-1].get_ylim() == pytest.approx((-10, 10), rel=0.02)  # 99th pct of |10 %|


# ---------------------------------------------------------------- partial volume


def test_partial_volume_md_known_values():
    assert kt.partial_volume_md(0.0) == pytest.approx(0.8e-3)
    assert kt.partial_volume_md(1.0) == pytest.approx(3.0e-3)
    f = 0.2
    expected = -np.log(0.8 * np.exp(-0.8) + 0.2 * np.exp(-3.0)) / 1000
    assert kt.partial_volume_md(f) == pytest.approx(expected)
    assert kt.partial_volume_md(f) == pytest.approx(0.996e-3, abs=1e-6)  # roi.py's "about 1.0e-3"
    md = kt.partial_volume_md(np.linspace(0, 1, 11))
    assert np.all(np.diff(md) > 0)
    assert kt.partial_volume_md(f, csf_s0_ratio=1.6) > kt.partial_volume_md(f)
    with pytest.raises(InputError):
        kt.partial_volume_md(1.2)


def test_partial_volume_table_and_guard():
    t = kt.partial_volume_table([0.0, 0.1, 0.2, 0.3, 0.4])
    assert t["kept_by_guard"].tolist() == [True, True, True, False, False]
    assert t["md_bias_percent"].iloc[0] == 0
    off = kt.partial_volume_table([0.0, 0.9], csf_md_threshold=None)
    assert off["kept_by_guard"].all()
    default = kt.partial_volume_table()
    assert len(default) == 21 and default["csf_fraction"].iloc[-1] == 1.0
    fig = plotting.plot_partial_volume(t)
    ax = fig.axes[0]
    kept, dropped = ax.collections[:2]
    assert len(kept.get_offsets()) == 3 and len(dropped.get_offsets()) == 2


# ---------------------------------------------------------------- registration


def test_transform_error_of_a_translation_and_a_rotation():
    A = np.eye(4)
    T = np.eye(4)
    T[:3, 3] = [3.0, 4.0, 0.0]
    np.testing.assert_allclose(kt.transform_error(A, T), 5.0)
    np.testing.assert_allclose(kt.transform_error(A, A), 0.0)
    c, s = np.cos(np.pi / 2), np.sin(np.pi / 2)
    R = np.eye(4)
    R[:2, :2] = [[c, -s], [s, c]]  # 90 degrees about z, through the origin
    err = kt.transform_error(A, R, points=[[0, 0, 0], [10, 0, 0], [0, 0, 5]])
    np.testing.assert_allclose(err, [0.0, 10 * np.sqrt(2), 0.0], atol=1e-9)


@pytest.mark.slow  # on the idealised cohort (shared with test_pipeline); CI runs it
def test_registration_errors_on_the_simulated_cohort(processed_idealised):
    small_results = processed_idealised["results"]  # the template's brain: exact truth
    t = kt.registration_errors(small_results)
    assert len(t) == len(small_results.sessions)
    assert (t["max_error_mm"] >= t["mean_error_mm"]).all()
    assert t["planted_translation_mm"].max() > 1.0  # the heads did move
    assert t["mean_error_mm"].median() < 0.5  # most sessions land well within a voxel
    # The same numbers by hand for one session, from the files.
    import json

    motion = pd.read_csv(small_results.bids_dir / "derivatives" / "simulation"
                         / "head_motion.tsv", sep="\t")
    row = motion[(motion["participant_id"] == "sub-001") & (motion["session"] == "post")]
    T = np.array(json.loads(row["mni_to_scanner"].iloc[0]))
    A = small_results.transform("sub-001", "post")
    pts = kt.BRAIN_POINTS_MNI
    err = np.linalg.norm((pts @ A[:3, :3].T + A[:3, 3]) - (pts @ T[:3, :3].T + T[:3, 3]), axis=1)
    got = t[(t["participant_id"] == "sub-001") & (t["session"] == "post")].iloc[0]
    assert got["mean_error_mm"] == pytest.approx(err.mean())
    assert got["max_error_mm"] == pytest.approx(err.max())
    assert got["planted_translation_mm"] == pytest.approx(np.linalg.norm(
        row[["trans_x_mm", "trans_y_mm", "trans_z_mm"]].to_numpy(float)))
    # Post to pre through the halfway space: one row per participant, the same by hand.
    from ketamine_nb.registration import read_transform

    v = kt.visit_registration_errors(small_results).set_index("participant_id")
    assert sorted(v.index) == sorted(small_results.sessions["participant_id"].unique())
    P = {ses: np.array(json.loads(motion[(motion["participant_id"] == "sub-002")
                                         & (motion["session"] == ses)]["mni_to_scanner"].iloc[0]))
         for ses in ("pre", "post")}
    H = {ses: read_transform(small_results.paths("sub-002", ses)["xfm_halfway"])
         for ses in ("pre", "post")}
    E = H["post"] @ np.linalg.inv(H["pre"]) @ P["pre"]
    by_hand = np.linalg.norm((pts @ E[:3, :3].T + E[:3, 3])
                             - (pts @ P["post"][:3, :3].T + P["post"][:3, 3]), axis=1)
    assert v.loc["sub-002", "max_error_mm"] == pytest.approx(by_hand.max())
    assert v.loc["sub-002", "mean_error_mm"] == pytest.approx(by_hand.mean())
    assert v["max_error_mm"].median() < 0.5  # same brain, both visits: well within a voxel
    from dataclasses import replace

    with pytest.raises(InputError):
        kt.registration_errors(replace(small_results, bids_dir=None))
    with pytest.raises(InputError):
        kt.visit_registration_errors(replace(small_results, bids_dir=None))


@pytest.mark.slow  # on the idealised cohort (shared with test_pipeline); CI runs it
def test_registration_shift_zero_is_close_to_the_pipelines_roi_md(processed_idealised):
    small_results = processed_idealised["results"]  # the template's brain: exact truth
    t = kt.registration_shift_table(small_results, "sub-002", "post", shifts_mm=(0, 6),
                                    axis="y")
    assert set(t["shift_mm"]) == {0.0, 6.0}
    zero = t[t["shift_mm"] == 0].set_index("region")
    roi = small_results.roi_md.query("participant_id == 'sub-002' and session == 'post'")
    roi = roi.set_index("region").loc[list(zero.index)]
    # the experiment brings the atlas with the session's affine transform only; the pipeline
    # refines it (SyN, once per participant), so shift 0 is close to its numbers, not equal
    md_diff = (zero["md_mean"] / roi["md_mean"] - 1).abs()
    n_diff = (zero["n_voxels"] / roi["n_voxels"] - 1).abs()
    assert md_diff.max() < 0.05 and n_diff.max() < 0.25  # measured: 2.3 %, 10 %
    assert (zero["md_change_percent"] == 0).all()
    moved = t[t["shift_mm"] == 6].set_index("region")
    assert (moved["n_voxels"] != zero["n_voxels"]).any()
    assert (moved["md_change_percent"].abs() > 0).any()
    off = kt.registration_shift_table(small_results, "sub-002", "post", shifts_mm=(0,),
                                      csf_md_threshold=None)
    assert (off["n_excluded"] == 0).all()
    assert (off.set_index("region")["n_voxels"] >= zero["n_voxels"]).all()
    with pytest.raises(InputError):
        kt.registration_shift_table(small_results, "sub-002", "post", axis="w")
    fig = plotting.plot_registration_shift(t)
    assert len(fig.axes[0].get_lines()) == 7 + 1  # one per region and the zero line


# ---------------------------------------------------------------- cohort and deltas


SCORES = pd.DataFrame({
    "participant_id": ["a", "b", "c", "d", "e"],
    "arm": ["ketamine", "ketamine", "ketamine", "saline", "saline"],
    "age": [20, 30, 40, 50, 60], "sex": ["F", "M", "F", "F", "M"],
    "madrs_pre": [30, 40, 20, 30, 30], "madrs_post": [10, 30, 10, 28, np.nan],
    "qids_pre": [16, 20, 10, 12, 14], "qids_post": [4, 18, 6, 12, 13]})


def test_cohort_table():
    t = stats.cohort_table(SCORES).set_index("arm")
    assert t.loc["ketamine", "n"] == 3 and t.loc["saline", "n"] == 2
    assert t.loc["ketamine", "age_mean"] == 30 and t.loc["ketamine", "age_sd"] == 10
    assert t.loc["ketamine", "female_percent"] == pytest.approx(200 / 3)
    assert t.loc["saline", "madrs_post_mean"] == 28  # missing stays missing
    assert t.loc["ketamine", "qids_pre_mean"] == pytest.approx(46 / 3)
    assert "age_mean" not in stats.cohort_table(SCORES.drop(columns=["age"]))


def test_clinical_summary_response_and_remission():
    t = stats.clinical_summary(SCORES).set_index(["outcome", "arm"])
    k = t.loc[("madrs", "ketamine")]
    # deltas -20, -10, -10; responders: -20/30 and -10/20 reach 50 %; remitters: post <= 10
    assert k["n"] == 3 and k["delta_mean"] == pytest.approx(-40 / 3)
    assert k["responders_percent"] == pytest.approx(200 / 3)
    assert k["remitters_percent"] == pytest.approx(200 / 3)
    s = t.loc[("madrs", "saline")]
    assert s["n"] == 1 and s["delta_mean"] == -2 and s["responders_percent"] == 0
    q = t.loc[("qids", "ketamine")]
    assert q["remitters_percent"] == pytest.approx(100 / 3)  # only 4 <= 5


def test_plot_score_change_one_panel_per_arm():
    fig = plotting.plot_score_change(SCORES, outcome="qids")
    assert [ax.get_title() for ax in fig.axes] == ["ketamine (n = 3)", "saline (n = 2)"]
    with pytest.raises(InputError):
        plotting.plot_score_change(SCORES, outcome="bdi")  # not an outcome
    with pytest.raises(InputError, match="madrs_pre"):
        plotting.plot_score_change(SCORES.drop(columns=["madrs_pre"]), outcome="madrs")


def _deltas():
    return pd.DataFrame({
        "participant_id": ["a", "b", "c", "a", "b", "c"],
        "arm": ["ketamine", "ketamine", "saline"] * 2,
        "region": ["R1"] * 3 + ["R2"] * 3,
        "md_pre": [0.8e-3, 0.9e-3, 1.0e-3, 0.8e-3, 0.8e-3, 0.8e-3],
        "delta_md": [-2e-5, -4e-5, 1e-5, 1e-5, 3e-5, -1e-5],
        "pct_delta_md": [-2.5, -4.4, 1.0, 1.25, 3.75, -1.25]})


def test_delta_summary():
    t = stats.delta_summary(_deltas()).set_index(["region", "arm"])
    assert t.loc[("R1", "ketamine"), "n"] == 2
    assert t.loc[("R1", "ketamine"), "delta_md_mean"] == pytest.approx(-3e-5)
    assert t.loc[("R1", "ketamine"), "share_decreased"] == 1.0
    assert t.loc[("R2", "ketamine"), "share_decreased"] == 0.0
    assert t.loc[("R2", "saline"), "pct_delta_md_mean"] == -1.25


def test_truth_agreement_bias_rmse_and_r():
    truth = _deltas()
    measured = truth.copy()
    measured["delta_md"] = truth["delta_md"] + 2e-6
    measured["md_pre"] = truth["md_pre"] * 1.01
    t = simulate.truth_agreement(measured, truth).set_index("region")
    np.testing.assert_allclose(t["bias"], 2e-6)
    np.testing.assert_allclose(t["rmse"], 2e-6)
    np.testing.assert_allclose(t["r"], 1.0)
    np.testing.assert_allclose(t["md_pre_error_percent"], 1.0)
    with pytest.raises(InputError):
        simulate.truth_agreement(measured, None)


def test_truth_agreement_on_the_simulated_cohort(small_results):
    t = simulate.truth_agreement(small_results.roi_deltas, small_results.ground_truth)
    assert len(t) == 7 and (t["n"] == 8).all()
    assert (t["md_pre_error_percent"].abs() < 5).all()


# ---------------------------------------------------------------- beyond the study


def test_multiple_comparisons_known_counts():
    t = pd.DataFrame({"region": list("ABCDEF"), "outcome": "madrs",
                      "p_interaction": [0.001, 0.011, 0.02, 0.039, 0.3, np.nan]})
    out = stats.multiple_comparisons(t).set_index("correction")
    assert (out["n_tests"] == 5).all()
    # Bonferroni: p x 5 -> 0.005, 0.055...; Holm: 0.005, 0.044, 0.06 (stop);
    # BH: 0.039 <= 4/5 x 0.05 = 0.04, so the first four.
    assert out["n_significant"].to_dict() == {"none": 4, "bonferroni": 1, "holm": 2,
                                              "fdr_bh": 4}
    assert out.loc["holm", "tests"] == "A/madrs, B/madrs"
    with pytest.raises(InputError):
        stats.multiple_comparisons(t, column="p_perm_interaction")


def test_robustness_summary_known_values():
    t = pd.DataFrame({"region": ["R1"] * 4 + ["R2"] * 2,
                      "beta_interaction": [2.0, 4.0, -1.0, 6.0, 1.0, np.nan],
                      "se_interaction": [1.0, 2.0, 1.0, 2.0, 1.0, 1.0],
                      "p_interaction": [0.04, 0.04, 0.3, 0.003, 0.3, np.nan]})
    out = robustness.robustness_summary(t).set_index("region")
    assert out.loc["R1", "n_specifications"] == 4 and out.loc["R2", "n_specifications"] == 1
    assert out.loc["R1", "t_median"] == 2.0  # t = 2, 2, -1, 3
    assert out.loc["R1", "t_min"] == -1.0 and out.loc["R1", "t_max"] == 3.0
    assert out.loc["R1", "share_positive"] == 0.75
    assert out.loc["R1", "share_significant"] == 0.75


def test_voxelwise_summary_counts():
    import nibabel as nib

    t = np.zeros((4, 4, 4), np.float32)
    t[0, 0, :4] = [4.0, -3.5, 1.0, 2.9]
    logp = np.zeros_like(t)
    logp[0, 0, :4] = [2.0, 1.0, 0.1, 0.5]  # p = 0.01, 0.1, 0.79, 0.32
    res = voxelwise.VoxelwiseResult(
        outcome="madrs", t=nib.Nifti1Image(t, np.eye(4)),
        logp_max_t=nib.Nifti1Image(logp, np.eye(4)), clusters=pd.DataFrame(),
        design=pd.DataFrame(), ids=["a", "b", "c"])
    out = voxelwise.voxelwise_summary(res).iloc[0]
    assert out["n_participants"] == 3 and out["n_voxels"] == 4
    assert out["peak_abs_t"] == 4.0 and out["n_voxels_t_above"] == 2
    assert out["min_p_fwe"] == pytest.approx(0.01) and out["n_voxels_fwe"] == 1


def test_mean_delta_md_map_is_the_arms_mean(small_results):
    from ketamine_nb.voxelwise import delta_md_maps

    p = small_results.participants
    ids = list(p.loc[p["arm"] == "saline", "participant_id"])
    img = voxelwise.mean_delta_md_map(small_results.out_dir, ids)
    maps, got, mask = delta_md_maps(small_results.out_dir, ids)
    assert got == ids
    m = np.asarray(mask.dataobj) > 0
    expected = np.asarray(maps.dataobj).mean(axis=-1)
    data = np.asarray(img.dataobj)
    np.testing.assert_allclose(data[m], expected[m], rtol=1e-6)
    assert np.all(data[~m] == 0) and img.shape == mask.shape
    with pytest.raises(InputError):
        voxelwise.mean_delta_md_map(small_results.out_dir, [])
