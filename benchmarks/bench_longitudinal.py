#!/usr/bin/env python
"""Registration per participant: ours against a plain dipy script at the tutorials' settings.

Per participant the package registers the post visit to the pre visit
(rigid) and the atlas once to the mean MD of the aligned visits (affine +
SyN; :mod:`ketamine_nb.longitudinal`). Measured side by side, in one process,
on the same inputs:

* **ours**: ``register_visits`` + ``register_atlas(method="syn")`` with the
  package's settings (mutual information on a random quarter of the brain's
  voxels, 4 mm template, few SyN iterations);
* **script**: what dipy's tutorials write ("Affine Registration in 3D",
  "Symmetric Diffeomorphic Registration in 3D"): mutual information with 32
  bins, ``level_iters=[10000, 1000, 100]``, ``sigmas=[3, 1, 0]``,
  ``factors=[4, 2, 1]``, translation -> rigid (visits) and translation ->
  rigid -> affine then SyN with ``CCMetric(3)`` and ``level_iters=[10, 10, 5]``
  against the same synthetic MD template at 2 mm.

Accuracy on a simulated participant whose head positions are known
(``simulate_session`` with two rigid head transforms): post-to-pre error and
the distance between where each brain voxel is mapped in MNI space and where
it truly is. Both timed as CPU time of this process (one thread: BLAS and
OpenMP limited to 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _rigid(angles, shift):
    import numpy as np

    from ketamine_nb.simulate import _rotation

    M = np.eye(4)
    M[:3, :3] = _rotation(angles)
    M[:3, 3] = shift
    return M


def _pair():
    import nibabel as nib
    import numpy as np
    from dipy.core.gradients import gradient_table

    from ketamine_nb import longitudinal as L
    from ketamine_nb.dwi import brain_mask
    from ketamine_nb.simulate import SimulationParams, simulate_session

    Tpre, Tpost = _rigid((2, -1, 3), (1, -2, 0.5)), _rigid((-3, 2, -1), (-2, 1, 3))
    visits = {}
    for ses, T, seed in (("pre", Tpre, 5), ("post", Tpost, 6)):
        img, bvals, bvecs = simulate_session(
            SimulationParams.idealised(), seed=1, head_transform=T,
            rng=np.random.default_rng(seed))
        img = nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine)
        g = gradient_table(bvals, bvecs=bvecs)
        visits[ses] = L.Visit(img, g, brain_mask(img, g))
    return visits, Tpre, Tpost


def _script(pre_dwi, post_dwi, md_img, tpl):
    """The tutorials' registration, as a user would copy it."""
    import numpy as np
    from dipy.align.imaffine import (
        AffineRegistration,
        MutualInformationMetric,
        transform_centers_of_mass,
    )
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric
    from dipy.align.transforms import (
        AffineTransform3D,
        RigidTransform3D,
        TranslationTransform3D,
    )

    reg = AffineRegistration(metric=MutualInformationMetric(32, None),
                             level_iters=[10000, 1000, 100], sigmas=[3.0, 1.0, 0.0],
                             factors=[4, 2, 1], verbosity=0)

    def affine(static, s_aff, moving, m_aff, stages):
        r = transform_centers_of_mass(static, s_aff, moving, m_aff)
        for tr in stages:
            r = reg.optimize(static, moving, tr, None, static_grid2world=s_aff,
                             moving_grid2world=m_aff, starting_affine=r.affine)
        return r

    a = np.asarray(pre_dwi.dataobj, np.float32)
    b = np.asarray(post_dwi.dataobj, np.float32)
    visits = affine(a, pre_dwi.affine, b, post_dwi.affine,
                    [TranslationTransform3D(), RigidTransform3D()])
    static = np.asarray(tpl.dataobj, np.float32)
    moving = np.asarray(md_img.dataobj, np.float32)
    r = affine(static, tpl.affine, moving, md_img.affine,
               [TranslationTransform3D(), RigidTransform3D(), AffineTransform3D()])
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=[10, 10, 5])
    mapping = sdr.optimize(static, moving, tpl.affine, md_img.affine, r.affine)
    return visits.affine, r.affine, mapping


def measure(*, repeats: int = 1) -> dict:
    """Time and score ours and the plain script on the same simulated participant."""
    import nibabel as nib
    import numpy as np
    from threadpoolctl import threadpool_limits

    from ketamine_nb import longitudinal as L

    visits, Tpre, Tpost = _pair()
    pre_dwi = L.mean_dwi(visits["pre"].img, visits["pre"].gtab)
    post_dwi = L.mean_dwi(visits["post"].img, visits["post"].gtab)
    maps = None
    from ketamine_nb.regions import load_region_maps

    maps = load_region_maps()
    al = L.align_visits(visits["pre"], visits["post"], maps)  # the halfway mean MD, once
    md_img = nib.Nifti1Image(np.where(al.common_mask, al.mean_md, 0).astype(np.float32),
                             al.affine)
    mask_img = nib.Nifti1Image(al.common_mask.astype(np.uint8), al.affine)
    tpl2, _ = L.synthetic_md_template(2.0)
    L.synthetic_md_template(4.0)

    true_visit = Tpost @ np.linalg.inv(Tpre)
    pts = np.argwhere(np.asarray(visits["pre"].mask.dataobj) > 0)[::10].T
    w = visits["pre"].img.affine[:3, :3] @ pts + visits["pre"].img.affine[:3, 3:4]

    def visit_err(A):
        d = A - true_visit
        return float(np.median(np.linalg.norm(d[:3, :3] @ w + d[:3, 3:4], axis=0)))

    ijk = np.argwhere(al.common_mask).T
    x_half = al.affine[:3, :3] @ ijk + al.affine[:3, 3:4]
    x_pre = al.to_visit["pre"][:3, :3] @ x_half + al.to_visit["pre"][:3, 3:4]
    inv = np.linalg.inv(Tpre)
    true_mni = inv[:3, :3] @ x_pre + inv[:3, 3:4]

    ours_t, script_t, ours_acc, script_acc = [], [], None, None
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            c = time.process_time()
            A, _ = L.register_visits(pre_dwi, post_dwi, pre_mask=visits["pre"].mask,
                                     post_mask=visits["post"].mask)
            mapping = L.register_atlas(md_img, mask_img, method="syn")
            ours_t.append(time.process_time() - c)
            mni = mapping.mni_coordinates(al.affine, al.shape, within=al.common_mask)
            e = np.linalg.norm(mni - true_mni, axis=0)
            ours_acc = (visit_err(A), float(np.median(e)), float(np.percentile(e, 95)))

            c = time.process_time()
            A2, aff2, mp2 = _script(pre_dwi, post_dwi, md_img, tpl2)
            script_t.append(time.process_time() - c)
            # Where each halfway voxel lands in MNI: warp the template's coordinates.
            grid = np.indices(tpl2.shape, dtype=np.float32)
            xyz = np.einsum("ab,b...->a...", tpl2.affine[:3, :3].astype(np.float32), grid)
            xyz += tpl2.affine[:3, 3].astype(np.float32)[:, None, None, None]
            warped = np.stack([mp2.transform_inverse(np.ascontiguousarray(x)) for x in xyz])
            mni2 = warped[:, ijk[0], ijk[1], ijk[2]]
            e2 = np.linalg.norm(mni2 - true_mni, axis=0)
            script_acc = (visit_err(A2), float(np.median(e2)), float(np.percentile(e2, 95)))

    ours, script = statistics.median(ours_t), statistics.median(script_t)
    lines = [
        f"- ours (post-to-pre rigid + atlas affine/SyN at 4 mm): CPU {ours:.2f} s per "
        f"participant; post-to-pre error {ours_acc[0]:.2f} mm (median), atlas error median "
        f"{ours_acc[1]:.2f} mm, 95th percentile {ours_acc[2]:.2f} mm",
        f"- plain dipy script at the tutorials' settings (2 mm template): CPU {script:.2f} s; "
        f"post-to-pre {script_acc[0]:.2f} mm, atlas median {script_acc[1]:.2f} mm, 95th "
        f"percentile {script_acc[2]:.2f} mm",
        f"- ours / script: {ours / script:.3f}",
    ]
    return C.result(
        "bench_longitudinal", "Registration per participant: ours vs the dipy tutorials",
        options={"repeats": repeats},
        metrics={"ours_cpu_s": ours, "script_cpu_s": script,
                 "ours_over_script_ratio": ours / script,
                 "ours_visit_error_mm": ours_acc[0], "script_visit_error_mm": script_acc[0],
                 "ours_atlas_median_error_mm": ours_acc[1],
                 "ours_atlas_p95_error_mm": ours_acc[2],
                 "script_atlas_median_error_mm": script_acc[1],
                 "script_atlas_p95_error_mm": script_acc[2]},
        details=lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_longitudinal.json and regenerate "
                         "RESULTS.md")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(repeats=args.repeats), args.record)


if __name__ == "__main__":
    sys.exit(main())
