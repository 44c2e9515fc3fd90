"""The pipeline on two real DTI datasets (``../shared/realdata``, read in place).

Known answers: ``uih-retest`` sub-01 is one person scanned twice the same day
(the second time on a grid rotated ~14°), so the true ΔMD is 0; sub-03 is the
same person with the phase-encoding direction reversed; ``philips-slab``
covers the basal ganglia to the vertex, so the amygdala, hippocampus and
vACC are not in it.

Measured here (and reported in benchmarks/RESULTS.md, bench_realdata): the UIH
slab ends at about MNI z = 0, so part of each Talairach BA10 lies below it;
its coverage sits near the default threshold of 0.8. On 2026-12-02, after two
corrections (the brain mask keeps the slab's lowest slice, which a
morphological closing had emptied, while registrations still leave the grid's
outer layer out; the atlas registration in a slab also tries the head tilted,
which on simulated slabs took the coverage error from 0.18 to 0.08),
coverage_fov is 0.86 (left) and 0.78 (right), coverage_brain 0.85 / 0.79 left
(pre / post) and 0.75 / 0.70 right: both BA10 are ``n/a`` at the defaults,
with the reason. Before the corrections the code gave 0.93 / 0.90 (fov) and
0.85 / 0.79 (brain): on simulated slabs that placement overstated BA10's
coverage by 0.18 on average. Reported anyway (no coverage threshold) the
same-day ΔMD is -1.06 % (left) and -1.63 % (right; -0.87 and -1.43 % before)
on an Intel Xeon, and -1.18 / -1.43 % with the same code and packages on an
AMD EPYC (the slab's atlas placement is that weakly held): the left within
the issue's 1.5 % on both, the right on one machine only, neither within its
1 % goal. Relative to the slab's grey matter (-0.58 %) they are -0.48 and
-1.05 % on the Intel Xeon, -0.60 and -0.86 % on the AMD EPYC. The atlas
placement in this 84 mm slab moves by a few mm with small changes of the
input (BA10 coverage 0.67-0.93 across runs of the development).

At PIPELINE_VERSION 12 (sampled post-to-pre registration; the atlas affine
still on every voxel in a slab) the same-day ΔMD is -0.34 / -0.66 % (AMD
EPYC), coverage_fov 0.85 / 0.77, coverage_brain 0.77 / 0.69: within the 1 %
goal at the package's seed of the registration's sample, but -0.66 to +1.22
% (left) and -0.64 to -1.18 % (right) over four seeds. The tests assert the
issue's 1.5 % for both; the 1 % goal is ``bench_realdata``'s verdict.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
pytestmark = pytest.mark.skipif(
    not (REAL / "uih-retest").is_dir() or not (REAL / "philips-slab").is_dir(),
    reason=f"real DTI data not found at {REAL} (the shared folder beside the repository; "
           "CI has it)")


@pytest.fixture(scope="module")
def uih(tmp_path_factory):
    import warnings

    from ketamine_nb.pipeline import PipelineConfig, run_pipeline

    out = tmp_path_factory.mktemp("uih")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sub-02 has one visit: a StudyWarning, tested below
        res = run_pipeline(REAL / "uih-retest", out, config=PipelineConfig(), progress=False)
    return res


@pytest.fixture(scope="module")
def philips(tmp_path_factory):
    from ketamine_nb.pipeline import PipelineConfig, run_pipeline

    out = tmp_path_factory.mktemp("philips")
    # Pre and post are the same series: realignment changes nothing here.
    return run_pipeline(REAL / "philips-slab", out, config=PipelineConfig(realign=None),
                        progress=False)


def _qc(res, pid):
    from ketamine_nb.derivatives import participant_paths

    return json.loads(participant_paths(res.out_dir, pid)["qc"].read_text())


def _deltas(res, min_coverage):
    from ketamine_nb.pipeline import PipelineConfig, roi_tables

    ok = res.sessions[res.sessions["status"] != "failed"]
    ok = ok[ok["participant_id"].isin(["sub-01", "sub-03"])]
    participants = pd.read_csv(REAL / "uih-retest" / "participants.tsv", sep="\t")
    _, d = roi_tables(res.out_dir, ok, participants, pre="pre", post="post",
                      config=PipelineConfig(min_coverage=min_coverage))
    return d.set_index(["participant_id", "region"])


def test_uih_incomplete_participant_is_listed_and_the_others_run(uih):
    assert "sub-02" in set(uih.failures["participant_id"])
    assert {"sub-01", "sub-03"} <= set(uih.roi_deltas["participant_id"])
    # One visit: no ΔMD rows (not rows flagged with its one visit's coverage), and the
    # summary counts the two participants that completed.
    assert "sub-02" not in set(uih.roi_deltas["participant_id"])
    assert "usable for the other 2 participant(s)" in uih.summary()


def test_uih_ba10_coverage_is_measured_and_the_regions_below_the_slab_are_flagged(uih):
    md = uih.roi_md.set_index(["participant_id", "session", "region"])
    for ses in ("pre", "post"):
        for region in ("BA10_L", "BA10_R"):
            row = md.loc[("sub-01", ses, region)]
            # The 84 mm slab ends near the frontal pole's lower edge, so part
            # of BA10 lies outside it. How much depends on where the atlas
            # lands in a partial field of view, which is not stable: 0.86 / 0.78
            # (L / R) once the atlas registration tried the head tilted and the
            # mask kept the lowest slice (2026-12-02), 0.73 with
            # the rigid visit registration started from the identity, 0.93 /
            # 0.90 (L / R) started from the centres of mass, 0.88 / 0.77 with
            # each volume interpolated once, 0.93 / 0.90 once the shells' link
            # to the b0s also started from the b0s' motion (measured;
            # bench_realdata).
            assert 0.65 < row["coverage_fov"] < 0.97, row["coverage_fov"]
            assert row["coverage_brain"] <= row["coverage_fov"] + 1e-6
        for region in ("amygdala_L", "amygdala_R"):
            row = md.loc[("sub-01", ses, region)]
            assert row["coverage_fov"] < 0.1 and np.isnan(row["md_wmean"])
            assert "coverage_fov<0.8" in row["flag"]
    d = uih.roi_deltas.set_index(["participant_id", "region"])
    for region in ("BA10_R", "amygdala_L", "hippocampus_L", "vACC"):
        assert np.isnan(d.loc[("sub-01", region), "delta_md"])
        assert d.loc[("sub-01", region), "flag"] != ""
    assert re.search(r"BA10_R: (coverage_fov<0\.8;)?coverage_brain<0\.8 \(sub-01", uih.summary())


def test_uih_single_visit_participant_has_its_coverage_checked(uih):
    # sub-02 has one visit, so no halfway step: its session's own registration
    # places the atlas, and its coverage is measured and applied all the same
    # (it used to report amygdala MD from 38 voxels with no coverage at all).
    rows = uih.roi_md[uih.roi_md["participant_id"] == "sub-02"]
    assert len(rows) == 7
    assert rows[["coverage_fov", "coverage_brain"]].notna().all().all()
    low = (rows["coverage_fov"] < 0.8) | (rows["coverage_brain"] < 0.8)
    assert low.any()
    assert rows.loc[low, "md_wmean"].isna().all()
    assert rows.loc[low, "flag"].str.contains("coverage").all()
    assert rows.loc[~low, "md_wmean"].notna().all()


def test_uih_same_day_rescan_ba10_reported_without_threshold_within_1_5_percent(uih):
    d = _deltas(uih, None)
    pct = d.loc[("sub-01", "BA10_L"), "pct_delta_md"]
    # the "at most": measured -0.34 % (2026-12-02, AMD EPYC, version 12;
    # -0.66 to +1.22 % over four seeds of the post-to-pre registration's
    # sample, see the right BA10's test below); -1.06 % (Intel Xeon) and
    # -1.18 % (AMD EPYC) at version 11; -0.87 % before the
    # mask kept the slab's lowest slice and the atlas registration tried the
    # head tilted; -1.16 % before the realignment's start fix; -1.5 % before
    # the visit registration started from the centres of mass
    assert np.isfinite(pct) and abs(pct) <= 1.5, pct
    # The grey-matter reference: the same tissue in both visits. Measured
    # -0.33 % at version 12 (-0.58 % at version 11, -0.52 % before; its
    # coverage of the slab is 0.56, so it is flagged by default).
    assert abs(d.loc[("sub-01", "global_gm"), "pct_delta_md"]) <= 0.75


def test_uih_same_day_rescan_right_ba10_without_threshold(uih):
    """The right BA10 within the issue's 1.5 % "at most" (the 1.0 % goal: ``bench_realdata``).

    Measured (2026-12-02, AMD EPYC, PIPELINE_VERSION 12): -0.66 % (left -0.34 %).
    In this 84 mm slab the atlas placement is weakly held and the frontal
    pole's lower edge lies at the slab's edge, so BA10's ΔMD moves with any
    sub-voxel change of the registrations: over four seeds of the post-to-pre
    registration's sample it was -0.64 to -1.18 % (left -0.66 to +1.22 %);
    with every voxel in that metric (version 11) -1.43 % on this machine and
    -1.63 % on an Intel Xeon, when this bound was 1.75 %. The 1.0 % goal
    therefore sits inside the registrations' own noise on this pair:
    ``bench_realdata`` gives its verdict rather than a test here.
    """
    d = _deltas(uih, None)
    pct = d.loc[("sub-01", "BA10_R"), "pct_delta_md"]
    assert np.isfinite(pct) and abs(pct) <= 1.5, pct


def test_uih_reversed_phase_encoding_is_warned_about(uih):
    from ketamine_nb.longitudinal import MIN_VISIT_SIMILARITY

    same = _qc(uih, "sub-01")["summary"]
    reversed_pe = _qc(uih, "sub-03")["summary"]
    assert same["visit_similarity"] >= MIN_VISIT_SIMILARITY
    assert "visits_dissimilar" not in same["flags"]
    assert reversed_pe["visit_similarity"] < MIN_VISIT_SIMILARITY
    assert "visits_dissimilar" in reversed_pe["flags"]
    assert "atlas_partial_fov" in same["flags"]       # an 84 mm slab
    assert "visits_dissimilar" in uih.summary()


def test_philips_slab_regions_it_does_not_contain_are_never_confident(philips):
    md = philips.roi_md.set_index(["participant_id", "session", "region"])
    d = philips.roi_deltas.set_index(["participant_id", "region"])
    for region in ("amygdala_L", "amygdala_R", "hippocampus_L", "hippocampus_R", "vACC"):
        for ses in ("pre", "post"):
            row = md.loc[("sub-01", ses, region)]
            assert row["coverage_fov"] < 0.1, (region, row["coverage_fov"])
            assert np.isnan(row["md_wmean"]) and "coverage_fov" in row["flag"]
        assert np.isnan(d.loc[("sub-01", region), "delta_md"])
    assert "atlas_partial_fov" in _qc(philips, "sub-01")["summary"]["flags"]
    # Same series twice: the post-to-pre registration should find the identity.
    # With every voxel in the metric it did to 1e-6 mm (ΔMD a few parts per
    # million). The metric now samples a quarter of the brain's voxels (a fifth
    # of the CPU, closer to the truth on 24 simulated participants), and a sample's
    # gradient is not exactly 0 at the identity: over 8 seeds of the sample
    # the largest displacement over the brain was 0.004-0.32 mm, 0.13 mm at
    # the package's seed, and global ΔMD -0.015 %. dipy's regular sample (every
    # 4th voxel, 2 of 8 slices of this slab's coarse level) gave 0.47 mm and
    # 0.3 degrees, 0.58 mm at most over the brain, and ΔMD 0.095 %.
    import nibabel as nib

    from ketamine_nb.derivatives import session_paths

    E = np.asarray(_qc(philips, "sub-01")["post_to_pre"]) - np.eye(4)
    mask = nib.load(session_paths(philips.out_dir, "sub-01", "pre")["mask"])
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0).T
    xyz = mask.affine[:3, :3] @ ijk + mask.affine[:3, 3:4]
    assert np.linalg.norm(E[:3, :3] @ xyz + E[:3, 3:4], axis=0).max() < 0.5   # mm
    assert abs(d.loc[("sub-01", "global_gm"), "pct_delta_md"]) < 0.05
