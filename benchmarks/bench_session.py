#!/usr/bin/env python
"""Where the time of one pipeline session goes (input for the performance issue).

One simulated session (sub-001 ses-pre of a 3-subject cohort written by
``simulate_cohort``) through ``ketamine_nb.pipeline.process_session(dwi, tmpdir,
"sub-001", "pre")`` with the default configuration (WLS, no denoising, rigid
registration, regions in native space):

* cold: a fresh Python process that imports the pipeline and runs the session
  once (lazy imports, MNI template resampling and the region maps read from the
  data-home cache included); the data-home caches themselves already exist;
* warm: the same call again in a process that has run it once, median of
  ``--repeats`` (default 3), each into a new output folder;
* breakdown: the steps of ``process_session`` called one by one, as it calls
  them (under one BLAS thread): ``load_dwi``, ``brain_mask``, ``fit_dti``,
  ``qc_session``, ``mean_b0`` + ``register_to_template``, ``load_region_maps``
  + ``apply_transform`` + ``extract_region_voxels``, the OLS MD of the region
  voxels (``_md_at``), MD on the 3 mm template grid, and writing the outputs;
  median per step;
* a pyinstrument call tree of one warm call, when pyinstrument is installed
  (the ``bench`` extra).

No goal is set here; ``bench_session_vs_script.py`` judges one session against a
plain dipy + nilearn script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np

COLD_CODE = """
import json, sys, time
t0 = time.perf_counter()
from ketamine_nb.pipeline import process_session
t1 = time.perf_counter()
res = process_session(sys.argv[1], sys.argv[2], "sub-001", "pre")
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "call": t2 - t1, "status": res["status"]}))
"""


def steps(dwi_path: Path, out: Path) -> dict[str, float]:
    """Run process_session's steps one by one (default config); seconds per step."""
    from threadpoolctl import threadpool_limits

    from ketamine_nb._utils import save_nifti, write_json
    from ketamine_nb.derivatives import write_region_voxels
    from ketamine_nb.dwi import brain_mask, load_dwi, mean_b0, qc_session
    from ketamine_nb.pipeline import _md_at, _md_on_template_grid
    from ketamine_nb.regions import load_region_maps
    from ketamine_nb.registration import (
        apply_transform,
        register_to_template,
        write_transform,
    )
    from ketamine_nb.roi import extract_region_voxels
    from ketamine_nb.tensor import fit_dti

    t = {}

    def tick(name, t0):
        t[name] = time.perf_counter() - t0
        return time.perf_counter()

    out.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(limits=1, user_api="blas"):
        t0 = time.perf_counter()
        img, gtab = load_dwi(dwi_path)
        t0 = tick("load_dwi (read .nii.gz, check gradients)", t0)
        mask = brain_mask(img, gtab)
        t0 = tick("brain_mask", t0)
        md, fa = fit_dti(img, gtab, mask=mask, fit_method="WLS")
        t0 = tick("fit_dti (WLS)", t0)
        qc = qc_session(img, gtab, mask)
        t0 = tick("qc_session", t0)
        b0 = mean_b0(img, gtab)
        A = register_to_template(b0, transform="rigid")
        t0 = tick("mean_b0 + register_to_template (rigid)", t0)
        maps = load_region_maps()
        t0 = tick("load_region_maps", t0)
        regions_native = apply_transform(maps.img, A, target=b0, direction="to_native")
        t0 = tick("apply_transform (7 region maps to native)", t0)
        voxels = extract_region_voxels(md, fa, mask, regions_native, maps.names)
        t0 = tick("extract_region_voxels", t0)
        voxels["md_ols"] = _md_at(img, gtab, voxels, "OLS")
        t0 = tick("OLS MD of the region voxels (_md_at, dipy)", t0)
        md_on_grid = _md_on_template_grid(md, mask, A)
        t0 = tick("MD and mask to the 3 mm template grid", t0)
    save_nifti(mask, out / "mask.nii.gz")
    save_nifti(md, out / "md.nii.gz")
    save_nifti(fa, out / "fa.nii.gz")
    save_nifti(md_on_grid, out / "md_mni.nii.gz")
    write_transform(A, out / "xfm.txt")
    write_region_voxels(voxels, out / "voxels.tsv.gz")
    for name in ("md", "fa"):
        write_json({"Description": name, "Model": "DTI"}, out / f"{name}.json")
    write_json(qc, out / "qc.json")
    tick("write outputs (4 NIfTI, transform, voxel table, JSONs)", t0)
    return t


def measure(*, repeats: int = 3, profile: bool = True) -> dict:
    """One session cold (new process), warm (median of ``repeats``), step by step."""
    R = repeats
    tmp = Path(tempfile.mkdtemp(prefix="bench_session_"))
    try:
        print("simulating one session (3-subject cohort, sub-001 ses-pre)", flush=True)
        dwi = C.make_session(tmp)

        # Cold: a fresh interpreter.
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", COLD_CODE, str(dwi), str(tmp / "cold")],
                           capture_output=True, text=True, env=dict(os.environ))
        cold_wall = time.perf_counter() - t0
        if p.returncode != 0:
            print(p.stdout, p.stderr)
            raise SystemExit("the cold process_session run failed")
        cold = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"cold: {cold_wall:.1f} s in all ({cold['import']:.2f} s import, "
              f"{cold['call']:.1f} s process_session)", flush=True)

        from ketamine_nb.pipeline import process_session

        process_session(dwi, tmp / "warmup", "sub-001", "pre")
        warm_t = []
        for k in range(R):
            t0 = time.perf_counter()
            res = process_session(dwi, tmp / f"warm{k}", "sub-001", "pre")
            warm_t.append(time.perf_counter() - t0)
            assert res["status"] == "processed"
        warm = float(np.median(warm_t))
        print(f"warm: median {warm:.2f} s ({C.fmt_times(warm_t)})", flush=True)

        step_runs = [steps(dwi, tmp / f"steps{k}") for k in range(R)]
        names = list(step_runs[0])
        step_med = {n: float(np.median([s[n] for s in step_runs])) for n in names}
        total_steps = sum(step_med.values())

        prof_tree = None
        if profile:
            try:
                from pyinstrument import Profiler
            except ImportError:
                prof_tree = "(pyinstrument not installed: pip install -e '.[bench]')"
            else:
                prof = Profiler(interval=0.005)
                prof.start()
                process_session(dwi, tmp / "profiled", "sub-001", "pre")
                prof.stop()
                prof_tree = prof.output_text(unicode=False, color=False)
                # drop the banner; keep the call tree
                tree = prof_tree.splitlines()
                start = next((i for i, ln in enumerate(tree) if ln.lstrip()[:1].isdigit()), 0)
                prof_tree = "\n".join(ln.rstrip() for ln in tree[start:] if ln.strip())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = ["`process_session(dwi, tmpdir, \"sub-001\", \"pre\")`, default `PipelineConfig`, "
             "one session (52 x 65 x 50 voxels of 3 mm, 33 volumes); the data-home caches exist.",
             "",
             "| run | seconds |", "|---|---|",
             f"| cold: new Python process, import + first call (wall incl. start-up) | "
             f"{cold_wall:.2f} |",
             f"| cold: of which `import ketamine_nb.pipeline` | {cold['import']:.2f} |",
             f"| cold: of which the first `process_session` call | {cold['call']:.2f} |",
             f"| warm: `process_session`, median of {R} ({C.fmt_times(warm_t)}) | {warm:.2f} |",
             "", f"Breakdown, steps called one by one as `process_session` calls them "
             f"(median of {R}):", "", "| step | seconds | share |", "|---|---|---|"]
    for n in sorted(names, key=lambda n: -step_med[n]):
        lines.append(f"| {n} | {step_med[n]:.3f} | {100 * step_med[n] / total_steps:.0f} % |")
    lines.append(f"| **sum of steps** (warm `process_session`: {warm:.2f}) | "
                 f"**{total_steps:.3f}** | 100 % |")
    rest = warm - total_steps
    if rest > 0.1 * warm:  # process_session does more than the breakdown knows
        lines.append(f"\n- **{rest:.2f} s of the warm `process_session` is not in the "
                     f"breakdown**: it now does steps this script does not call; update "
                     f"`steps()` to match `ketamine_nb/pipeline.py`")
    if prof_tree:
        lines += ["", "pyinstrument call tree of one warm call (seconds; library frames "
                  "collapsed):", "", "```", prof_tree, "```"]
    metrics = {"cold_wall_s": cold_wall, "cold_import_s": cold["import"],
               "cold_call_s": cold["call"], "warm_wall_s": warm,
               "sum_of_steps_s": total_steps}
    for n in names:
        key = re.sub(r"[^a-z0-9]+", "_", n.lower()).strip("_")
        metrics[f"step_{key}_s"] = step_med[n]
    return C.result("bench_session", "one session end to end",
                    options={"repeats": repeats, "profile": profile}, metrics=metrics,
                    details=lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_session.json and regenerate RESULTS.md")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    ap.add_argument("--no-profile", action="store_true", help="skip the pyinstrument profile")
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(repeats=args.repeats, profile=not args.no_profile), args.record)


if __name__ == "__main__":
    sys.exit(main())
