"""load_results: one object with the tables, paths and (simulated) truth."""

from __future__ import annotations

import numpy as np
import pytest

from ketamine_nb.exceptions import InputError
from ketamine_nb.regions import GLOBAL_GM, STUDY_REGIONS
from ketamine_nb.results import load_results


def test_load_results_has_every_table_and_the_truth(small_results, processed_cohort):
    r = small_results
    assert r.bids_dir == processed_cohort["bids"].resolve()
    assert r.regions == list(STUDY_REGIONS)
    # The seven regions and the whole-brain reference (not a region to pick).
    assert len(r.roi_deltas) == 8 * 8 and len(r.sessions) == 16
    assert GLOBAL_GM in set(r.roi_deltas["region"]) and GLOBAL_GM not in r.regions
    assert len(r.stats_roi) == 7 * 2 and r.stats_input is not None
    assert r.reliability is not None and r.robustness is not None
    assert r.ground_truth is not None and len(r.ground_truth) == 8 * 7
    assert set(r.scores.columns) >= {"madrs_pre", "madrs_post", "qids_pre", "qids_post"}
    assert r.config["fit_method"] == "WLS"


def test_session_images_voxels_and_transforms(small_results):
    r = small_results
    md = r.image("sub-001", "pre", "md")
    dwi = r.image("sub-001", "pre", "dwi")
    assert md.shape == dwi.shape[:3]
    assert r.transform("sub-001", "pre").shape == (4, 4)
    v = r.voxels
    assert set(v["session"].cat.categories) == {"pre", "post"}
    one = r.session_voxels("sub-001", "pre")
    assert {"i", "j", "k", "probability", "md", "fa", "md_ols", "md_guard"} <= set(one.columns)
    # Both visits are measured in the participant's halfway space: the voxel table
    # indexes that grid, and its MD is the session's MD map there.
    half = r.image("sub-001", "pre", "md_halfway")
    mdv = np.asarray(half.dataobj)[one["i"], one["j"], one["k"]]
    np.testing.assert_allclose(one["md"], mdv, rtol=1e-5)
    post = r.session_voxels("sub-001", "post")
    assert post[["region", "i", "j", "k"]].equals(one[["region", "i", "j", "k"]])
    with pytest.raises(InputError, match="no 'fa' image|rerun"):
        r.image("sub-999", "pre", "fa")


def test_missing_results_say_what_to_run(tmp_path):
    with pytest.raises(InputError, match="ketamine-nb run"):
        load_results(tmp_path)


def test_load_results_accepts_the_demo_folder_and_points_below(tmp_path, processed_cohort):
    """``ketamine-nb demo --out X`` writes X/derivatives: X itself loads (issue 18.1)."""
    import shutil

    demo = tmp_path / "X"
    shutil.copytree(processed_cohort["out"], demo / "derivatives",
                    ignore=shutil.ignore_patterns("sub-*"))
    r = load_results(demo)
    assert r.out_dir == demo / "derivatives"
    assert len(r.roi_deltas) == 8 * 8
    # One level further up, the only derivatives folder below is still found.
    assert load_results(tmp_path).out_dir == demo / "derivatives"
    # Two result folders below: the error names them, and asks for one.
    shutil.copytree(demo, tmp_path / "Y")
    with pytest.raises(InputError, match=r"several result folders.*X/derivatives"):
        load_results(tmp_path)


def test_find_derivatives_names_a_missing_folder(tmp_path):
    from ketamine_nb.derivatives import find_derivatives

    with pytest.raises(InputError, match="no such folder"):
        find_derivatives(tmp_path / "nothing")


def test_qc_table_reads_every_session(small_results):
    t = small_results.qc_table()
    assert len(t) == len(small_results.sessions)
    assert list(t.columns) == ["participant_id", "session", "snr_b0", "mask_volume_ml",
                               "n_outlier_volumes", "n_outlier_slices", "mean_fd_mm", "max_fd_mm",
                               "n_excluded_volumes", "qc_flags"]
    # The demo's series are realigned: framewise displacement is known for each.
    assert t["mean_fd_mm"].notna().all() and (t["max_fd_mm"] >= t["mean_fd_mm"]).all()
    snr = small_results.roi_md.drop_duplicates(["participant_id", "session"])
    merged = t.merge(snr, on=["participant_id", "session"])
    np.testing.assert_allclose(merged["snr_b0"], merged["qc_snr_b0"], rtol=1e-6)


def test_true_motion_and_the_volumes_the_head_jumped_into_are_left_out(small_results):
    """The realistic cohort's sudden movements: each is found and its volume left out.

    The simulator writes every volume's true motion; where the head jumped by
    more than the outlier threshold (framewise displacement > 2 mm), the
    pipeline's realignment must leave that volume out of the fit.
    """
    import json

    from ketamine_nb.derivatives import session_paths
    from ketamine_nb.motion import FD_THRESHOLD_MM

    jumps = 0
    for pid, ses in small_results.sessions.itertuples(index=False):
        truth = small_results.true_motion(pid, ses)
        assert len(truth) == 33 and truth["framewise_displacement_mm"].iloc[0] == 0
        qc = json.loads(session_paths(small_results.out_dir, pid, ses)["qc"].read_text())
        excluded = set(qc["realignment"]["excluded_volumes"])
        for v in np.flatnonzero(truth["framewise_displacement_mm"] > FD_THRESHOLD_MM + 0.5):
            jumps += 1
            assert v in excluded, (pid, ses, v, sorted(excluded))
    assert jumps == 7  # the 8 participants' 16 series, seed 3: counted in the simulator's truth
    with pytest.raises(InputError, match="simulate"):
        small_results.true_motion("sub-099", "pre")
