#!/usr/bin/env python
"""One DWI session to a table of mean MD per study region, as a plain dipy + nilearn script.

The yardstick of ``bench_session_vs_script.py``: what a competent user would
write from dipy's tutorials without ``ketamine_nb``'s processing, on the same
input and with the same atlas (``ketamine_nb.regions.load_region_maps()``, so
the comparison is about the processing, not the atlas):

1. ``read_bvals_bvecs`` + ``gradient_table``, ``load_nifti``;
2. ``median_otsu`` on the b0 volumes (dipy's defaults);
3. ``TensorModel(gtab, fit_method="WLS").fit(data, mask=mask)``, MD;
4. the mean b0 registered rigidly to nilearn's 2 mm MNI152 template with
   ``AffineRegistration`` and ``MutualInformationMetric`` at the parameters of
   dipy's affine-registration tutorial (centres of mass, 32 bins, all voxels,
   ``level_iters=[10000, 1000, 100]``, ``sigmas=[3, 1, 0]``, ``factors=[4, 2, 1]``);
5. the region probability maps (1 mm MNI) brought to the DWI grid with
   ``AffineMap.transform`` (linear);
6. mean MD per region over the brain-mask voxels with probability >= 0.25,
   without and with the CSF guard MD <= 1.1e-3 mm²/s (the study's definition).

    python benchmarks/plain_script.py DWI.nii.gz OUT.tsv [--json]

``--json`` prints the seconds per step and the transform as one JSON line
(for the benchmark).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from dipy.align.imaffine import (
    AffineMap,
    AffineRegistration,
    MutualInformationMetric,
    transform_centers_of_mass,
)
from dipy.align.transforms import RigidTransform3D
from dipy.core.gradients import gradient_table
from dipy.io import read_bvals_bvecs
from dipy.io.image import load_nifti
from dipy.reconst.dti import TensorModel
from dipy.segment.mask import median_otsu
from nilearn.datasets import load_mni152_template

from ketamine_nb.regions import load_region_maps

PROBABILITY_THRESHOLD = 0.25  # as the study (and ketamine_nb's default)
CSF_MD_THRESHOLD = 1.1e-3  # mm²/s, as the study (and ketamine_nb's default)


def run(dwi_path: str, out_tsv: str):
    """Process one session; write the region table.

    Returns the seconds per step (dict) and the rigid transform (4x4, MNI mm
    to DWI mm).
    """
    t = {}
    t0 = time.perf_counter()

    def tick(name):
        nonlocal t0
        now = time.perf_counter()
        t[name] = now - t0
        t0 = now

    stem = dwi_path.removesuffix(".gz").removesuffix(".nii")
    data, affine = load_nifti(dwi_path)
    bvals, bvecs = read_bvals_bvecs(stem + ".bval", stem + ".bvec")
    gtab = gradient_table(bvals, bvecs=bvecs)
    tick("load (load_nifti, read_bvals_bvecs, gradient_table)")

    _, mask = median_otsu(data, vol_idx=np.flatnonzero(gtab.b0s_mask))
    tick("median_otsu on the b0s")

    md = TensorModel(gtab, fit_method="WLS").fit(data, mask=mask).md
    md = np.nan_to_num(md)
    tick("TensorModel(WLS).fit")

    b0 = data[..., gtab.b0s_mask].mean(axis=-1)
    template = load_mni152_template(resolution=2)
    static = np.asarray(template.dataobj, dtype=np.float32)
    c_of_mass = transform_centers_of_mass(static, template.affine, b0, affine)
    affreg = AffineRegistration(metric=MutualInformationMetric(nbins=32, sampling_proportion=None),
                                level_iters=[10000, 1000, 100], sigmas=[3.0, 1.0, 0.0],
                                factors=[4, 2, 1], verbosity=0)
    rigid = affreg.optimize(static, b0, RigidTransform3D(), None,
                            static_grid2world=template.affine, moving_grid2world=affine,
                            starting_affine=c_of_mass.affine)
    tick("rigid registration to the 2 mm MNI template (MI)")

    maps = load_region_maps()
    prob = np.asarray(maps.img.dataobj, dtype=np.float32)
    # rigid.affine maps template mm to DWI mm; its inverse takes each DWI voxel
    # to where it samples the atlas.
    to_native = AffineMap(np.linalg.inv(rigid.affine),
                          domain_grid_shape=b0.shape, domain_grid2world=affine,
                          codomain_grid_shape=prob.shape[:3],
                          codomain_grid2world=maps.img.affine)
    native = [to_native.transform(prob[..., k], interpolation="linear")
              for k in range(prob.shape[-1])]
    tick("regions to the DWI grid (AffineMap.transform)")

    rows = ["region\tmd_mean\tn_voxels\tmd_mean_csf_guard\tn_voxels_csf_guard"]
    for name, p in zip(maps.names, native, strict=True):
        sel = (p >= PROBABILITY_THRESHOLD) & mask & (md > 0)
        guard = sel & (md <= CSF_MD_THRESHOLD)
        rows.append(f"{name}\t{md[sel].mean():.6g}\t{int(sel.sum())}\t"
                    f"{md[guard].mean():.6g}\t{int(guard.sum())}")
    with open(out_tsv, "w") as fh:
        fh.write("\n".join(rows) + "\n")
    tick("mean MD per region, table")
    return t, rigid.affine


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dwi", help="4D DWI .nii.gz with .bval/.bvec beside it")
    ap.add_argument("out", help="region table to write (TSV)")
    ap.add_argument("--json", action="store_true",
                    help="print the seconds per step and the transform as JSON")
    args = ap.parse_args(argv)
    seconds, affine = run(args.dwi, args.out)
    if args.json:
        print(json.dumps({"seconds": seconds, "mni_to_native": np.asarray(affine).tolist()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
