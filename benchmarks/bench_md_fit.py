#!/usr/bin/env python
"""Speed and agreement of our MD map against dipy and MRtrix3; brain mask against median_otsu.

Two volumes, each a real int16 NIfTI (``.nii.gz``) with FSL ``.bval``/``.bvec``
and a mask on disk:

* **session**: one simulated session (sub-001 ses-pre of a 3-subject cohort
  written by ``simulate_cohort``: 52 x 65 x 50 voxels of 3 mm, 3 b0 + 30
  directions, LAS), masked with ``ketamine_nb.dwi.brain_mask``;
* **issue**: the performance issue's size, 96 x 96 x 60 voxels of 2.5 mm,
  6 b0 + 64 directions at b = 1000 (``simulate.gradient_scheme(64, 6)``), a
  synthetic brain built here with known tensors (an ellipsoid of grey matter
  around white matter along a smooth orientation field, ventricles and a rim
  of CSF, partial volume at the edges, Rician noise at a b0 SNR of 25 in grey
  matter) and its ellipsoid mask of ~221,000 voxels (the issue's 221,024).

On each, timed side by side in one process and one run, median of
``--repeats`` (default 3) interleaved repeats after one untimed warm-up each:

(a)  ``ketamine_nb.compute_md_map(img, gtab, mask=mask, fit_method="WLS")`` in
     memory, with its default threads (the BLAS limit: every CPU here) and
     with one BLAS thread as ``process_session`` runs it; file to file
     (``load_dwi`` + read the mask + fit + write the MD ``.nii.gz``), the fair
     match for MRtrix3; the reading alone; and file to file from an
     uncompressed ``.nii`` to a ``.nii`` (no gzip on either side); then a
     pyinstrument profile of five file-to-file calls;
(b)  dipy ``TensorModel(gtab, fit_method="WLS").fit(data, mask=mask).md``;
(c)  MRtrix3 ``dwi2tensor -fslgrad BVEC BVAL -mask MASK DWI TENSOR.mif`` then
     ``tensor2metric -adc MD.nii.gz TENSOR.mif`` (``-nthreads 2``), file to
     file from the same ``.nii.gz`` (and from the same ``.nii`` to ``.nii``).

Judged by ``_render.GOALS`` (performance issue): ours / MRtrix3 wall time,
both file to file (read the DWI, fit, write the MD map), and the share of the
mask's voxels with |ours - dipy| / |dipy| <= 1e-4. Also measured: Pearson r of
our MD with MRtrix3's ADC (MRtrix3 fits iteratively reweighted least squares,
dipy one WLS pass, so small differences are expected) and the share within
1e-6 of dipy.

Brain mask (session only): dipy ``median_otsu(data, vol_idx=<b0 volumes>)``
with its default parameters against ``ketamine_nb.dwi.brain_mask``, timed side
by side, with the Dice coefficient of the two masks.

MRtrix3 comes from Debian: when ``dwi2tensor`` is missing the script runs
``apt-get update``, checks ``apt-cache policy mrtrix3`` and installs it (as root,
or through passwordless sudo); otherwise that part is skipped with a message.
Both volumes are LAS (negative determinant), where FSL b-vectors need no x
flip, so MRtrix3 reads them as they are; MD is rotation-invariant anyway.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np

ISSUE_SHAPE = (96, 96, 60)
ISSUE_VOXEL = 2.5  # mm
ISSUE_DIRS, ISSUE_B0 = 64, 6


# --------------------------------------------------------------------------
# MRtrix3 from Debian


def _root_prefix():
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"],
                                               capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def ensure_mrtrix(install: bool = True) -> tuple[bool, str]:
    """Return (available, note); install Debian's mrtrix3 when missing and allowed."""
    if shutil.which("dwi2tensor") and shutil.which("tensor2metric"):
        return True, "already installed"
    if not install:
        return False, "dwi2tensor not found and --no-install given: MRtrix3 part skipped"
    if not shutil.which("apt-get"):
        return False, "dwi2tensor not found and no apt-get here: MRtrix3 part skipped"
    prefix = _root_prefix()
    if prefix is None:
        return False, ("dwi2tensor not found; installing mrtrix3 needs root or passwordless "
                       "sudo: MRtrix3 part skipped (install it with "
                       "`apt-get install mrtrix3` and rerun)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("MRtrix3 missing: apt-get update", flush=True)
    up = subprocess.run([*prefix, "apt-get", "update"], env=env, capture_output=True,
                        text=True)
    if up.returncode != 0:
        return False, f"apt-get update failed ({up.stderr.strip()[-200:]}): MRtrix3 skipped"
    pol = subprocess.run(["apt-cache", "policy", "mrtrix3"], capture_output=True, text=True)
    cand = [ln.split(":", 1)[1].strip() for ln in pol.stdout.splitlines()
            if ln.strip().startswith("Candidate:")]
    if not cand or cand[0] == "(none)":
        return False, "Debian has no mrtrix3 package here (apt-cache policy): MRtrix3 skipped"
    print(f"installing mrtrix3 {cand[0]} from Debian", flush=True)
    t0 = time.perf_counter()
    inst = subprocess.run([*prefix, "apt-get", "install", "-y", "--no-install-recommends",
                           "mrtrix3"], env=env, capture_output=True, text=True)
    if inst.returncode != 0 or not shutil.which("dwi2tensor"):
        return False, f"apt-get install mrtrix3 failed ({inst.stderr.strip()[-300:]})"
    return True, f"installed Debian mrtrix3 {cand[0]} ({time.perf_counter() - t0:.0f} s)"


def mrtrix_version() -> str:
    try:
        out = subprocess.run(["dwi2tensor", "-version"], capture_output=True, text=True)
        first = (out.stdout or out.stderr).splitlines()[0]
        return first.strip("= ").strip()
    except (OSError, IndexError):
        return "unknown"


# --------------------------------------------------------------------------
# The issue-sized volume


def make_issue_volume(out_dir, *, seed: int = 7) -> tuple[Path, Path]:
    """Write the issue-sized synthetic DWI and its mask; return (dwi .nii.gz, mask .nii.gz).

    96 x 96 x 60 voxels of 2.5 mm (LAS), 6 b0 + 64 directions at b = 1000 s/mm²
    from ``ketamine_nb.simulate.gradient_scheme``, int16. Per voxel
    ``S = S0 * sum_k f_k s_k exp(-b g^T D_k g)`` with the simulator's default
    tissue tensors (GM 0.9/0.75/0.75e-3, WM 1.4/0.35/0.35e-3 along a smooth
    orientation field, free water 3.0e-3 mm²/s) and relative b0 signals
    (1.0, 0.8, 1.6); S0 = 1000 and Rician noise of sigma 40 (b0 SNR 25 in
    grey matter). The mask is the ellipsoid of the brain (about 221,000
    voxels), so its edge holds partial-volume voxels.
    """
    import nibabel as nib

    from ketamine_nb.simulate import SimulationParams, gradient_scheme

    p = SimulationParams()
    rng = np.random.default_rng(seed)
    bvals, bvecs = gradient_scheme(ISSUE_DIRS, ISSUE_B0, p.bval)
    shape = ISSUE_SHAPE
    c = (np.array(shape) - 1) / 2
    i, j, k = np.indices(shape, dtype=np.float32)
    x, y, z = (i - c[0]) / 43.0, (j - c[1]) / 44.5, (k - c[2]) / 27.6  # semi-axes (voxels)
    r = np.sqrt(x * x + y * y + z * z)
    brain = np.clip((1.0 - r) * 12 + 0.5, 0, 1)                     # ~1 voxel soft edge
    vent = np.clip((0.25 - np.sqrt((np.abs(x) - 0.18) ** 2 / 0.5 + y * y + 2 * z * z)) * 10,
                   0, 1)
    f_csf = np.maximum(vent, np.clip((r - 0.9) * 10, 0, 1)) * brain
    f_wm = np.clip((0.72 - r) * 8, 0, 1) * (1 - f_csf) * brain
    f_gm = np.clip(brain - f_wm - f_csf, 0, None)
    orient = np.stack([np.cos(3 * y + z), np.sin(2 * x) + 0.3, np.cos(2 * x - y)], -1)
    orient /= np.linalg.norm(orient, axis=-1, keepdims=True)
    cos2 = (orient.reshape(-1, 3) @ bvecs.T) ** 2
    b = bvals[None]

    def tissue(evals):
        l1, l2, _ = evals
        return np.exp(-b * (l2 + (l1 - l2) * cos2))

    sig = (f_gm.reshape(-1, 1) * p.s0_gm * tissue(p.gm_evals)
           + f_wm.reshape(-1, 1) * p.s0_wm * tissue(p.wm_evals)
           + f_csf.reshape(-1, 1) * p.s0_csf * np.exp(-b * p.csf_d))
    s0, sigma = 1000.0, 1000.0 / p.snr
    clean = (s0 * sig).astype(np.float32)
    re = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    im = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    data = np.rint(np.hypot(re, im)).astype(np.int16).reshape(*shape, -1)
    affine = np.diag([-ISSUE_VOXEL, ISSUE_VOXEL, ISSUE_VOXEL, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ c
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dwi = out_dir / "issue_dwi.nii.gz"
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, dwi)
    (out_dir / "issue_dwi.bval").write_text(" ".join(f"{v:g}" for v in bvals) + "\n")
    (out_dir / "issue_dwi.bvec").write_text(
        "\n".join(" ".join(f"{v:.6f}" for v in row) for row in bvecs.T) + "\n")
    mask = out_dir / "issue_mask.nii.gz"
    nib.save(nib.Nifti1Image((r <= 1.0).astype(np.uint8), affine), mask)
    return dwi, mask


# --------------------------------------------------------------------------
# Helpers


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / s) if s else 1.0


def on_grid(img, ref):
    """Data of ``img`` reoriented to ``ref``'s voxel axes (MRtrix may change strides)."""
    import nibabel as nib

    if np.allclose(img.affine, ref.affine, atol=1e-4) and img.shape[:3] == ref.shape[:3]:
        return np.asarray(img.dataobj, np.float64)
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                           nib.orientations.io_orientation(ref.affine))
    out = img.as_reoriented(ornt)
    if not np.allclose(out.affine, ref.affine, atol=1e-3):
        raise SystemExit("MRtrix3's output grid does not match the input grid")
    return np.asarray(out.dataobj, np.float64)


def _profile(fn, n=5):
    try:
        from pyinstrument import Profiler
    except ImportError:
        return "(pyinstrument not installed: pip install -e '.[bench]')"
    prof = Profiler(interval=0.001)
    prof.start()
    for _ in range(n):
        fn()
    prof.stop()
    tree = prof.output_text(unicode=False, color=False).splitlines()
    start = next((i for i, ln in enumerate(tree) if ln.lstrip()[:1].isdigit()), 0)
    return "\n".join(ln.rstrip() for ln in tree[start:] if ln.strip())


def bench_volume(name, dwi_path, mask_path, work, *, repeats, have_mrtrix, profile):
    """Time ours, dipy and MRtrix3 on one volume; return a dict of results."""
    import nibabel as nib
    from dipy.reconst.dti import TensorModel
    from threadpoolctl import threadpool_limits

    import ketamine_nb
    from ketamine_nb._utils import save_nifti
    from ketamine_nb.dwi import load_dwi

    load0 = C.loadavg()
    stem = dwi_path.name.removesuffix(".nii.gz")
    bval, bvec = dwi_path.with_name(stem + ".bval"), dwi_path.with_name(stem + ".bvec")
    img, gtab = load_dwi(dwi_path)
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    data = np.asarray(img.dataobj, np.float32)
    # Uncompressed copies: the same images without gzip on either side.
    raw = nib.load(dwi_path)
    nii = work / f"{name}_dwi.nii"
    nib.save(nib.Nifti1Image(np.asarray(raw.dataobj), raw.affine, raw.header), nii)
    mask_nii = work / f"{name}_mask.nii"
    nib.save(nib.load(mask_path), mask_nii)
    print(f"{name}: {data.shape}, {int(mask.sum())} voxels in the mask", flush=True)

    def ours():
        return ketamine_nb.compute_md_map(img, gtab, mask=mask, fit_method="WLS")

    def ours_1thread():
        with threadpool_limits(limits=1, user_api="blas"):  # as process_session
            return ours()

    def read_only():
        i, _ = load_dwi(dwi_path, bval, bvec)
        return i, np.asarray(nib.load(mask_path).dataobj) > 0

    def files(src, msk, out):
        def run():
            i, g = load_dwi(src, bval, bvec)
            m = np.asarray(nib.load(msk).dataobj) > 0
            md = ketamine_nb.compute_md_map(i, g, mask=m, fit_method="WLS")
            save_nifti(md, work / out)
            return md
        return run

    def dipy_md():
        return TensorModel(gtab, fit_method="WLS").fit(data, mask=mask).md

    def mrtrix(src, msk, out):
        def run():
            common = ["-nthreads", "2", "-force", "-quiet"]
            subprocess.run(["dwi2tensor", "-fslgrad", str(bvec), str(bval), "-mask", str(msk),
                            str(src), str(work / "tensor.mif"), *common], check=True)
            subprocess.run(["tensor2metric", "-adc", str(work / out), str(work / "tensor.mif"),
                            *common], check=True)
            return nib.load(work / out)
        return run

    fits = {"ours": ours, "ours_1thread": ours_1thread, "read": read_only,
            "ours_files": files(dwi_path, mask_path, f"{name}_ours_md.nii.gz"),
            "ours_nii": files(nii, mask_nii, f"{name}_ours_md.nii"), "dipy": dipy_md}
    if have_mrtrix:
        fits["mrtrix"] = mrtrix(dwi_path, mask_path, f"{name}_mrtrix_md.nii.gz")
        fits["mrtrix_nii"] = mrtrix(nii, mask_nii, f"{name}_mrtrix_md.nii")
    times = {k: [] for k in fits}
    results = {}
    for k, fn in fits.items():  # warm-up: imports, page cache
        results[k] = fn()
    for _ in range(repeats):  # interleaved, so drifting load hits all alike
        for k, fn in fits.items():
            t0 = time.perf_counter()
            results[k] = fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}

    # Agreement
    our_md = np.asarray(results["ours"].dataobj, np.float64)[mask]
    np.testing.assert_array_equal(our_md, np.asarray(results["ours_files"].dataobj)[mask])
    dp = np.asarray(results["dipy"], np.float64)[mask]
    rel = np.abs(our_md - dp) / np.where(dp != 0, np.abs(dp), 1.0)
    rel[(dp == 0) & (our_md == 0)] = 0.0
    rel[~np.isfinite(dp)] = np.inf  # ours writes 0 where dipy gives NaN
    agree = {"frac6": float(np.mean(rel <= 1e-6)), "frac4": float(np.mean(rel <= 1e-4)),
             "max_rel": float(np.max(rel[np.isfinite(rel)])) if np.isfinite(rel).any()
             else np.nan, "n_nonfinite_dipy": int(np.count_nonzero(~np.isfinite(dp)))}
    if have_mrtrix:
        mr = on_grid(results["mrtrix"], img)[mask]
        ok = np.isfinite(mr) & np.isfinite(our_md)
        both = ok & (mr > 0) & (our_md > 0)
        agree.update(r=float(np.corrcoef(our_md[ok], mr[ok])[0, 1]), n_used=int(ok.sum()),
                     median_ratio=float(np.median(our_md[both] / mr[both])),
                     mean_ours=float(our_md[ok].mean()), mean_mr=float(mr[ok].mean()),
                     rel_1pct=float(np.mean(np.abs(our_md[both] - mr[both]) / mr[both]
                                            <= 0.01)))
    prof = _profile(fits["ours_files"]) if profile else None
    return {"name": name, "shape": data.shape, "n_mask": int(mask.sum()), "times": times,
            "med": med, "agree": agree, "profile": prof, "img": img, "gtab": gtab,
            "data": data, "load": f"{load0} -> {C.loadavg()}"}


def volume_lines(v, repeats, have_mrtrix, mrtrix_ver):
    med, times, a = v["med"], v["times"], v["agree"]

    def row(label, k, note=""):
        return (f"| {label} | {med[k]:.3f} | {min(times[k]):.3f} | {C.fmt_times(times[k])} | "
                f"{med[k] / med['dipy']:.3f} | {note} |")

    lines = ["| MD map | median (s) | min (s) | repeats (s) | median / dipy's | |",
             "|---|---|---|---|---|---|",
             row("(a) `compute_md_map(..., fit_method=\"WLS\")`, in memory, default threads",
                 "ours", f"{C.n_cpus()} CPUs"),
             row("(a) same, 1 BLAS thread (as `process_session`: 1 fit thread)",
                 "ours_1thread"),
             row("(a) same, file to file (`load_dwi` + mask + fit + write .nii.gz)",
                 "ours_files"),
             row("(a) of which reading (`load_dwi` + mask, no fit)", "read"),
             row("(a) same, file to file, uncompressed .nii in and out", "ours_nii"),
             row("(b) dipy `TensorModel(WLS).fit(data, mask=mask).md`", "dipy")]
    if have_mrtrix:
        lines += [row("(c) MRtrix3 `dwi2tensor` + `tensor2metric -adc`, file to file, "
                      "2 threads", "mrtrix", mrtrix_ver or ""),
                  row("(c) same, uncompressed .nii in and out", "mrtrix_nii")]
    lines += ["", f"- ratio ours/dipy (in memory): **{med['ours'] / med['dipy']:.3f}** "
              f"(dipy {med['dipy'] / med['ours']:.0f}x slower; one thread: "
              f"{med['dipy'] / med['ours_1thread']:.0f}x)"]
    if have_mrtrix:
        lines.append(f"- ours / MRtrix3: file to file (.nii.gz) "
                     f"**{med['ours_files'] / med['mrtrix']:.2f}**, uncompressed "
                     f"{med['ours_nii'] / med['mrtrix_nii']:.2f}, ours in memory "
                     f"{med['ours'] / med['mrtrix']:.2f}; reading the .nii.gz is "
                     f"{100 * med['read'] / med['ours_files']:.0f} % of ours file to file")
    lines.append(f"- ours vs dipy WLS: {100 * a['frac4']:.3f} % of voxels within 1e-4, "
                 f"{100 * a['frac6']:.3f} % within 1e-6, largest relative difference "
                 f"{a['max_rel']:.2e} (our maps are float32); voxels where dipy's MD is not "
                 f"finite: {a['n_nonfinite_dipy']}")
    if have_mrtrix:
        lines.append(f"- ours vs MRtrix3 ADC: r = {a['r']:.5f} ({a['n_used']} of {v['n_mask']} "
                     f"voxels finite); median MD ratio ours/MRtrix3 {a['median_ratio']:.5f}; "
                     f"mean MD {a['mean_ours']:.4e} vs {a['mean_mr']:.4e} mm²/s; "
                     f"{100 * a['rel_1pct']:.1f} % of voxels within 1 %")
    lines.append(f"- load average (1/5/15 min) at the start -> end of this volume: {v['load']}")
    return lines


def measure(*, repeats: int = 3, profile: bool = True, install: bool = True,
            only: str | None = None) -> dict:
    """Time and compare the MD fits (and the brain masks) on the chosen volumes."""
    import nibabel as nib
    from dipy.segment.mask import median_otsu

    from ketamine_nb.dwi import brain_mask

    have_mrtrix, mrtrix_note = ensure_mrtrix(install=install)
    print(f"MRtrix3: {mrtrix_note}", flush=True)
    mrtrix_ver = mrtrix_version() if have_mrtrix else None
    R = repeats
    names = [only] if only else ["session", "issue"]

    tmp = Path(tempfile.mkdtemp(prefix="bench_md_fit_"))
    vols = {}
    try:
        if "session" in names:
            print("simulating one session (3-subject cohort, sub-001 ses-pre)", flush=True)
            from ketamine_nb.dwi import load_dwi

            dwi = C.make_session(tmp)
            img, gtab = load_dwi(dwi)
            mask_path = tmp / "session_mask.nii.gz"
            nib.save(nib.Nifti1Image((np.asarray(brain_mask(img, gtab).dataobj) > 0)
                                     .astype(np.uint8), img.affine), mask_path)
            vols["session"] = bench_volume("session", dwi, mask_path, tmp, repeats=R,
                                           have_mrtrix=have_mrtrix, profile=profile)
        if "issue" in names:
            print("writing the issue-sized volume (96 x 96 x 60, 6 b0 + 64 directions)",
                  flush=True)
            dwi, mask_path = make_issue_volume(tmp / "issue")
            vols["issue"] = bench_volume("issue", dwi, mask_path, tmp, repeats=R,
                                         have_mrtrix=have_mrtrix, profile=profile)

        masks = None
        if "session" in vols:  # brain masks
            v = vols["session"]
            img, gtab, data = v["img"], v["gtab"], v["data"]
            b0_idx = np.flatnonzero(gtab.b0s_mask)
            mtimes = {"ours": [], "median_otsu": []}
            mout = {}
            mfns = {"ours": lambda: np.asarray(brain_mask(img, gtab).dataobj) > 0,
                    "median_otsu": lambda: median_otsu(data, vol_idx=b0_idx)[1]}
            for k, fn in mfns.items():
                mout[k] = fn()
            for _ in range(R):
                for k, fn in mfns.items():
                    t0 = time.perf_counter()
                    mout[k] = fn()
                    mtimes[k].append(time.perf_counter() - t0)
            masks = {"times": mtimes, "med": {k: float(np.median(t)) for k, t in mtimes.items()},
                     "out": mout, "dice": dice(mout["ours"], mout["median_otsu"]),
                     "vox_ml": float(np.prod(img.header.get_zooms()[:3])) / 1000}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ numbers
    keys = {"ours": "ours_memory", "ours_1thread": "ours_1thread", "read": "read",
            "ours_files": "ours_files", "ours_nii": "ours_nii", "dipy": "dipy_wls",
            "mrtrix": "mrtrix_files", "mrtrix_nii": "mrtrix_nii"}
    metrics = {}
    for name, v in vols.items():
        med, a = v["med"], v["agree"]
        metrics[f"{name}_mask_voxels_count"] = v["n_mask"]
        for k, m in keys.items():
            if k in med:
                metrics[f"{name}_{m}_wall_s"] = med[k]
        metrics[f"{name}_ours_over_dipy_ratio"] = med["ours"] / med["dipy"]
        if have_mrtrix:
            metrics[f"{name}_ours_over_mrtrix_files_ratio"] = med["ours_files"] / med["mrtrix"]
            metrics[f"{name}_ours_over_mrtrix_nii_ratio"] = med["ours_nii"] / med["mrtrix_nii"]
            metrics[f"{name}_ours_memory_over_mrtrix_ratio"] = med["ours"] / med["mrtrix"]
            metrics[f"{name}_pearson_vs_mrtrix_r"] = a["r"]
            metrics[f"{name}_within_1pct_of_mrtrix_fraction"] = a["rel_1pct"]
        metrics[f"{name}_within_1e-4_of_dipy_fraction"] = a["frac4"]
        metrics[f"{name}_within_1e-6_of_dipy_fraction"] = a["frac6"]
        metrics[f"{name}_max_rel_diff_from_dipy_ratio"] = a["max_rel"]
        metrics[f"{name}_read_share_of_ours_files_fraction"] = med["read"] / med["ours_files"]
    if masks:
        metrics["brain_mask_wall_s"] = masks["med"]["ours"]
        metrics["median_otsu_wall_s"] = masks["med"]["median_otsu"]
        metrics["brain_mask_over_median_otsu_ratio"] = (masks["med"]["ours"]
                                                        / masks["med"]["median_otsu"])
        metrics["brain_mask_dice_with_median_otsu_fraction"] = masks["dice"]

    # ------------------------------------------------------------------ details
    titles = {"session": "One simulated session", "issue": "Issue-sized volume"}
    lines = [f"Median of {R} interleaved repeats after one warm-up each; ours with its default "
             f"threads unless said (BLAS limit, here {C.n_cpus()}); MRtrix3 with 2 threads "
             f"({mrtrix_note}).", ""]
    for name, v in vols.items():
        desc = ("sub-001 ses-pre of `simulate_cohort`, 3 mm, 3 b0 + 30 directions, "
                "`brain_mask`" if name == "session" else
                f"synthetic, {ISSUE_VOXEL} mm, {ISSUE_B0} b0 + {ISSUE_DIRS} directions, "
                "ellipsoid mask")
        lines += [f"**{titles[name]}**: {v['shape']} int16 .nii.gz, {v['n_mask']} voxels in "
                  f"the mask ({desc}).", ""]
        lines += volume_lines(v, R, have_mrtrix, mrtrix_ver) + [""]
    if masks:
        mm, mt, mo = masks["med"], masks["times"], masks["out"]
        lines += ["| brain mask (session) | median (s) | repeats (s) | volume (mL) |",
                  "|---|---|---|---|",
                  f"| `ketamine_nb.dwi.brain_mask` | {mm['ours']:.3f} | "
                  f"{C.fmt_times(mt['ours'])} | {mo['ours'].sum() * masks['vox_ml']:.0f} |",
                  f"| dipy `median_otsu(data, vol_idx=b0)` (defaults) | "
                  f"{mm['median_otsu']:.3f} | {C.fmt_times(mt['median_otsu'])} | "
                  f"{mo['median_otsu'].sum() * masks['vox_ml']:.0f} |", "",
                  f"- ratio brain_mask / median_otsu: **{mm['ours'] / mm['median_otsu']:.3f}**; "
                  f"Dice between the masks: **{masks['dice']:.3f}**"]
    for name, v in vols.items():
        if v["profile"]:
            lines += ["", f"pyinstrument call tree of ours file to file, {titles[name].lower()} "
                      "(`load_dwi` + mask + `compute_md_map` + write .nii.gz), 5 calls "
                      "(seconds; library frames collapsed):", "", "```", v["profile"], "```"]
    return C.result(
        "bench_md_fit", "MD fit vs dipy and MRtrix3 (session and issue-sized volume); brain mask",
        options={"repeats": repeats, "profile": profile, "volumes": list(vols),
                 "mrtrix": mrtrix_ver or mrtrix_note},
        metrics=metrics, details=lines,
        notes=[] if have_mrtrix else [f"MRtrix3 skipped: {mrtrix_note}"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_md_fit.json and regenerate RESULTS.md")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    ap.add_argument("--no-profile", action="store_true",
                    help="skip the pyinstrument profiles of ours file to file")
    ap.add_argument("--no-install", action="store_true",
                    help="never install MRtrix3 (skip it when missing)")
    ap.add_argument("--only", choices=("session", "issue"),
                    help="run one volume only (default: both)")
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(repeats=args.repeats, profile=not args.no_profile,
                            install=not args.no_install, only=args.only), args.record)


if __name__ == "__main__":
    sys.exit(main())
