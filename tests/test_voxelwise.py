"""Voxelwise ΔMD versus Δscore by arm: known blocks in, FWE-controlled maps out."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketamine_nb.derivatives import session_paths
from ketamine_nb.exceptions import InputError
from ketamine_nb.voxelwise import (
    DESIGN_COLUMNS,
    VoxelwiseResult,
    delta_md_maps,
    voxelwise_design,
    voxelwise_inference,
)

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


def _write_md(root, pid, ses, md):
    p = session_paths(root, pid, ses)["md_mni"]
    p.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(md, np.float32), AFFINE), p)


def test_voxelwise_finds_a_planted_block_and_nothing_else(tmp_path, rng):
    """ΔMD maps where one 3x3x3 block follows Δscore under ketamine only."""
    shape = (12, 12, 12)
    n_ket, n_sal = 30, 15
    n = n_ket + n_sal
    pids = [f"sub-{i:03d}" for i in range(1, n + 1)]
    arm = np.array(["ketamine"] * n_ket + ["saline"] * n_sal)
    pre = rng.integers(20, 40, n).astype(float)
    delta = rng.normal(-10, 8, n)
    block = (slice(4, 7),) * 3
    for i, pid in enumerate(pids):
        md_pre = np.full(shape, 0.8e-3) + rng.normal(0, 2e-6, shape)
        md_post = md_pre + rng.normal(0, 4e-6, shape)
        if arm[i] == "ketamine":
            md_post[block] += 2e-6 * (delta[i] - delta.mean())
        for md in (md_pre, md_post):  # outside the "brain": no MD
            md[:1], md[-1:], md[:, :1], md[:, -1:], md[:, :, :1], md[:, :, -1:] = 0, 0, 0, 0, 0, 0
        for ses, md in (("pre", md_pre), ("post", md_post)):
            _write_md(tmp_path, pid, ses, md)
    scores = pd.DataFrame({"participant_id": pids, "arm": arm, "madrs_pre": pre,
                           "madrs_post": pre + delta})
    res = voxelwise_inference(tmp_path, scores, n_permutations=500, random_state=0)
    logp = res.logp_max_t.get_fdata()
    sig = logp > -np.log10(0.05)
    inside = np.zeros(shape, bool)
    inside[block] = True
    assert sig[inside].mean() > 0.9
    assert sig[~inside].sum() <= 2            # FWE 5 %: almost never a false voxel
    assert not sig[0].any()                   # nothing outside the mask
    assert res.t.get_fdata()[inside].mean() > 5
    assert len(res.clusters) >= 1
    assert (tmp_path / "voxelwise").is_dir()
    assert res.design.columns[-2] == "delta_score_x_ketamine"



def test_delta_md_maps_stack_known_changes_and_mask_csf(tmp_path):
    shape = (4, 4, 4)
    pre = np.full(shape, 0.8e-3)
    pre[0] = 3.0e-3                       # a CSF slab
    pre[3] = 0.0                          # outside the brain in one visit
    for i, pid in enumerate(("sub-001", "sub-002", "sub-003")):
        _write_md(tmp_path, pid, "pre", pre)
        post = np.where(pre > 0, pre + (i + 1) * 1e-6, 0)
        _write_md(tmp_path, pid, "post", post)
    _write_md(tmp_path, "sub-004", "pre", pre)          # no post: left out
    img, ids, mask = delta_md_maps(tmp_path, ["sub-001", "sub-002", "sub-003", "sub-004"])
    assert ids == ["sub-001", "sub-002", "sub-003"]
    d = img.get_fdata()
    np.testing.assert_allclose(d[1:3, :, :, 1], 2e-6, rtol=1e-4)
    m = np.asarray(mask.dataobj) > 0
    assert not m[0].any() and not m[3].any() and m[1:3].all()
    with pytest.raises(InputError, match="no participant has template-space MD maps"):
        delta_md_maps(tmp_path, ["sub-004"])


def test_design_is_centred_with_the_interaction_second_to_last():
    scores = pd.DataFrame({"participant_id": ["a", "b", "c", "d"],
                           "arm": ["ketamine", "saline", "ketamine", "saline"],
                           "madrs_pre": [30.0, 20.0, 25.0, 25.0],
                           "madrs_post": [10.0, 18.0, 15.0, 21.0]})
    d = voxelwise_design(scores, ["a", "b", "c", "d"])
    assert tuple(d.columns) == DESIGN_COLUMNS
    assert d["delta_score"].sum() == pytest.approx(0) and d["score_pre"].sum() == pytest.approx(0)
    np.testing.assert_allclose(d["delta_score_x_ketamine"], d["delta_score"] * d["ketamine"])
    scores.loc[1, "madrs_post"] = np.nan
    with pytest.raises(InputError, match=r"scores missing for \['b'\]"):
        voxelwise_design(scores, ["a", "b", "c", "d"])


def test_a_null_cohort_gives_no_significant_voxel_and_warns_on_few_dof(tmp_path, rng):
    shape = (6, 6, 6)
    n = 12
    pids = [f"sub-{i:03d}" for i in range(n)]
    for pid in pids:
        md = np.full(shape, 0.8e-3) + rng.normal(0, 2e-6, shape)
        _write_md(tmp_path, pid, "pre", md)
        _write_md(tmp_path, pid, "post", md + rng.normal(0, 4e-6, shape))
    scores = pd.DataFrame({"participant_id": pids, "arm": ["ketamine", "saline"] * (n // 2),
                           "madrs_pre": rng.integers(20, 40, n).astype(float),
                           "madrs_post": rng.integers(5, 30, n).astype(float)})
    with pytest.warns(UserWarning, match="degrees of freedom"):
        res = voxelwise_inference(tmp_path, scores, n_permutations=200, random_state=1,
                                  write=False)
    assert isinstance(res, VoxelwiseResult) and res.outcome == "madrs"
    assert res.n_significant(0.05) <= 1
    assert res.ids == pids and not (tmp_path / "voxelwise").exists()
