"""Real-world gradient tables: near-zero b0s, NaN directions of b0s, multi-shell series."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ketamine_nb.dwi import (
    B0_THRESHOLD,
    DEFAULT_MAX_BVAL,
    check_gradients,
    load_dwi,
)
from ketamine_nb.exceptions import InputError


def _directions(n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _write(tmp_path, bvals, bvecs, name="sub-01_ses-pre_dwi"):
    """A tiny series whose volume v holds the value v + 1 everywhere; FSL-layout gradients."""
    n = len(bvals)
    data = np.ones((6, 6, 4, n), np.float32) * (np.arange(n, dtype=np.float32) + 1)
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    (tmp_path / f"{name}.bval").write_text(" ".join(str(b) for b in bvals) + "\n")
    rows = np.asarray(bvecs, dtype=object).T
    (tmp_path / f"{name}.bvec").write_text(
        "\n".join(" ".join(str(x) for x in row) for row in rows) + "\n")
    return path


def test_uih_b0_at_1_25_is_a_b0(tmp_path):
    bvals = [1.25126] + [929.75] * 16
    bvecs = np.vstack([[0, 0, 0], _directions(16)])
    img, gtab, notes = load_dwi(_write(tmp_path, bvals, bvecs), return_notes=True)
    assert gtab.b0s_mask.tolist() == [True] + [False] * 16
    assert notes == [] and img.shape[3] == 17
    assert B0_THRESHOLD == 50.0


def test_philips_b0_direction_is_set_to_zero(tmp_path):
    # Philips writes b = 0.001 ... 0.004 with a direction of (0.577, 0.577, 0.577).
    bvals = [0, 1000, 1000, 1000, 0.001, 1000, 1000, 1000, 0.002]
    d = _directions(6)
    s = np.full(3, 0.57735)
    bvecs = np.vstack([s, d[:3], s, d[3:], s])
    img, gtab = load_dwi(_write(tmp_path, bvals, bvecs))
    assert gtab.b0s_mask.sum() == 3
    assert np.all(gtab.bvecs[gtab.b0s_mask] == 0)
    assert np.allclose(np.linalg.norm(gtab.bvecs[~gtab.b0s_mask], axis=1), 1)


def test_nan_direction_of_a_b0_is_accepted_with_a_note(tmp_path):
    bvals = [0, 1000, 1000, 1000, 1000, 1000, 1000, 5]
    bvecs = np.vstack([["nan"] * 3, _directions(6), ["nan"] * 3])
    img, gtab, notes = load_dwi(_write(tmp_path, bvals, bvecs), return_notes=True)
    assert np.all(gtab.bvecs[[0, 7]] == 0) and np.all(np.isfinite(gtab.bvecs))
    assert len(notes) == 1 and "volumes 0, 7" in notes[0] and "set to zero" in notes[0]
    assert gtab.bvals.size == 8                                 # no volume left out


def test_a_series_of_b0s_is_not_mistaken_for_ms_per_um2(tmp_path):
    bvecs = np.vstack([[0, 0, 0], _directions(6)])
    with pytest.raises(InputError, match=r"no diffusion-weighted volume.*up to 1.25.*\.bval"):
        load_dwi(_write(tmp_path, [1.25] + [0] * 6, bvecs))
    with pytest.raises(InputError, match=r"ms/µm².*multiply by 1000"):
        load_dwi(_write(tmp_path, [0] + [1.0] * 6, bvecs))


def test_nan_direction_of_a_dw_volume_is_refused(tmp_path):
    bvecs = np.vstack([[0, 0, 0], _directions(6)]).astype(object)
    bvecs[3] = ["nan", "nan", "nan"]
    with pytest.raises(InputError, match=r"diffusion-weighted volumes 3 are NaN"):
        load_dwi(_write(tmp_path, [0] + [1000] * 6, bvecs))


def test_nan_bvalue_is_refused():
    bvecs = np.vstack([[0, 0, 0], _directions(6)])
    with pytest.raises(InputError, match=r"b-values of volumes 0 are NaN"):
        check_gradients([np.nan] + [1000] * 6, bvecs, 7, source="x.bval")


def test_check_gradients_notes_on_request():
    bvecs = np.vstack([[np.nan] * 3, _directions(6)])
    bvals, out, notes = check_gradients([0] + [1000] * 6, bvecs, 7, return_notes=True)
    assert np.all(out[0] == 0) and len(notes) == 1
    assert len(check_gradients([0] + [1000] * 6, bvecs, 7)) == 2


def test_multishell_is_fitted_up_to_1500_with_a_note(tmp_path):
    bvals = [0, 1000, 1000, 1000, 1000, 1000, 1000, 2000, 2000, 3000, 1505]
    bvecs = np.vstack([[0, 0, 0], _directions(10)])
    path = _write(tmp_path, bvals, bvecs)
    img, gtab, notes = load_dwi(path, return_notes=True)
    assert DEFAULT_MAX_BVAL == 1500.0
    kept = [0, 1, 2, 3, 4, 5, 6, 10]                            # 1505 is the 1500 shell
    assert gtab.bvals.tolist() == [bvals[i] for i in kept]
    # The image keeps the same volumes (volume v holds v + 1).
    assert np.asarray(img.dataobj)[0, 0, 0].tolist() == [i + 1.0 for i in kept]
    assert np.allclose(gtab.bvecs[1:], bvecs[[1, 2, 3, 4, 5, 6, 10]])
    assert len(notes) == 1 and "3 volumes with b > 1500" in notes[0]
    assert "b = 2000 to 3000" in notes[0]
    img, gtab = load_dwi(path, max_bval=None)
    assert gtab.bvals.size == 11 and img.shape[3] == 11
    img, gtab = load_dwi(path, max_bval=2000)
    assert gtab.bvals.size == 10


def test_all_dw_volumes_above_max_bval_is_refused(tmp_path):
    path = _write(tmp_path, [0] + [3000] * 6, np.vstack([[0, 0, 0], _directions(6)]))
    with pytest.raises(InputError, match=r"every diffusion-weighted volume has b > 1500.*"
                                         r"--max-bval"):
        load_dwi(path)
    assert load_dwi(path, max_bval=None)[1].bvals.size == 7


def test_max_bval_below_the_b0_threshold_is_refused(tmp_path):
    path = _write(tmp_path, [0] + [1000] * 6, np.vstack([[0, 0, 0], _directions(6)]))
    with pytest.raises(InputError, match="max_bval"):
        load_dwi(path, max_bval=20)


def test_too_few_directions_left_under_max_bval(tmp_path):
    bvals = [0] + [1000] * 3 + [2500] * 6
    path = _write(tmp_path, bvals, np.vstack([[0, 0, 0], _directions(9)]))
    with pytest.raises(InputError, match="fewer than six"):
        load_dwi(path)


@pytest.mark.parametrize("name, n_kept, has_note", [("small_64D", 65, True),
                                                    ("small_101D", 25, True),
                                                    ("small_25", None, False)])
def test_dipy_sample_data_loads(name, n_kept, has_note):
    """dipy's own real crops: small_64D has NaN on its b0's direction, small_101D is multi-shell
    (q-space up to b = 4000) and small_25 is a single shell at b = 2000."""
    from dipy.data import get_fnames

    dwi, bval, bvec = get_fnames(name=name)
    if n_kept is None:
        with pytest.raises(InputError, match="b > 1500"):
            load_dwi(dwi, bval, bvec)
        img, gtab, notes = load_dwi(dwi, bval, bvec, max_bval=None, return_notes=True)
        assert gtab.bvals.max() == pytest.approx(2000, abs=5) and notes == []
        return
    img, gtab, notes = load_dwi(dwi, bval, bvec, return_notes=True)
    assert img.shape[3] == n_kept == gtab.bvals.size
    assert bool(notes) is has_note
    assert np.all(np.isfinite(gtab.bvecs))
