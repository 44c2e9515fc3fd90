#!/usr/bin/env python
"""One session end to end: ``process_session`` against a plain dipy + nilearn script.

Same input (sub-001 ses-pre of a 3-subject cohort written by
``simulate_cohort``; 3 is the simulator's smallest cohort), same atlas
(``load_region_maps()``), from the DWI file to a table of mean MD per study
region:

* ours: ``process_session(dwi, out, "sub-001", "pre")`` (default
  ``PipelineConfig``: load, brain mask, batched WLS fit, QC, rigid
  registration to the cropped 4 mm template, regions to native space, region
  voxel table, OLS MD of the region voxels, MD on the 3 mm template grid, all
  outputs written) then ``summarise_regions(load_region_voxels(...))``, the
  ROI table;
* the script: ``benchmarks/plain_script.py`` (dipy ``median_otsu``,
  ``TensorModel(WLS)``, ``AffineRegistration`` rigid with mutual information
  to nilearn's 2 mm template at dipy's tutorial parameters, ``AffineMap``,
  mean MD per region).

Timed two ways, side by side, interleaved, median of ``--repeats``
(default 3) after one untimed warm-up of each:

* new process: ``python -c <ours>`` against ``python plain_script.py`` (wall
  time with interpreter start-up and imports: what running it once costs);
  this is the number judged;
* in process: both called again in this warm process (what each further
  session costs in a notebook or a loop).

Judged by ``_render.GOALS`` (performance issue): ours / the script's wall
time, and the agreement of the two ROI MD values ("within a few %", read as
the largest difference over regions, for the study's measure: probability
>= 0.25, brain mask, MD <= 1.1e-3 mm²/s; without the CSF guard as
information).

ours runs the fit under one BLAS thread (as ``process_session`` always
does); the script gets the library default (2 threads here).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np

OURS_CODE = """
import json, sys, time
t0 = time.perf_counter()
from ketamine_nb.derivatives import load_region_voxels
from ketamine_nb.pipeline import process_session
from ketamine_nb.roi import summarise_regions
t1 = time.perf_counter()
res = process_session(sys.argv[1], sys.argv[2], "sub-001", "pre")
t2 = time.perf_counter()
roi = summarise_regions(load_region_voxels(sys.argv[2], "sub-001", "pre"))
roi.to_csv(sys.argv[3], sep="\\t", index=False)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "process_session": t2 - t1, "roi_table": t3 - t2,
                  "status": res["status"]}))
"""

PROFILE_CODE = """
import sys
from pyinstrument import Profiler
prof = Profiler(interval=0.005)
prof.start()
from ketamine_nb.derivatives import load_region_voxels
from ketamine_nb.pipeline import process_session
from ketamine_nb.roi import summarise_regions
process_session(sys.argv[1], sys.argv[2], "sub-001", "pre")
summarise_regions(load_region_voxels(sys.argv[2], "sub-001", "pre"))
prof.stop()
print(prof.output_text(unicode=False, color=False))
"""


def ours_in_process(dwi: Path, out: Path) -> dict:
    from ketamine_nb.derivatives import load_region_voxels
    from ketamine_nb.pipeline import process_session
    from ketamine_nb.roi import summarise_regions

    process_session(dwi, out, "sub-001", "pre")
    return summarise_regions(load_region_voxels(out, "sub-001", "pre"))


def read_table(path: Path):
    import pandas as pd

    return pd.read_csv(path, sep="\t").set_index("region")


def trim_tree(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.lstrip()[:1].isdigit()), 0)
    return "\n".join(ln.rstrip() for ln in lines[start:] if ln.strip())


def measure(*, repeats: int = 3, profile: bool = True) -> dict:
    """Ours and the plain script on one session, new processes and warm; agreement."""
    R = repeats
    py = sys.executable
    script = str(C.HERE / "plain_script.py")

    tmp = Path(tempfile.mkdtemp(prefix="bench_session_vs_script_"))
    try:
        print("simulating one session (3-subject cohort, sub-001 ses-pre)", flush=True)
        dwi = C.make_session(tmp)
        n = 0

        def fresh_ours():
            nonlocal n
            n += 1
            out, tsv = tmp / f"ours{n}", tmp / f"ours{n}.tsv"
            wall, rc, smp, text, cpu = C.run_measured([py, "-c", OURS_CODE, str(dwi), str(out),
                                                       str(tsv)])
            if rc != 0:
                print(text)
                raise SystemExit("ours failed in a new process")
            info = json.loads(text.strip().splitlines()[-1])
            return {"wall": wall, "cpu": cpu, "peak": smp.peak_pss, "info": info, "tsv": tsv,
                    "out": out}

        def fresh_script():
            nonlocal n
            n += 1
            tsv = tmp / f"script{n}.tsv"
            wall, rc, smp, text, cpu = C.run_measured([py, script, str(dwi), str(tsv),
                                                       "--json"])
            if rc != 0:
                print(text)
                raise SystemExit("plain_script.py failed")
            info = json.loads(text.strip().splitlines()[-1])
            return {"wall": wall, "cpu": cpu, "peak": smp.peak_pss, "info": info, "tsv": tsv}

        print("warm-up: one untimed run of each (data-home caches, page cache)", flush=True)
        fresh_ours()
        fresh_script()
        runs = {"ours": [], "script": []}
        for k in range(R):
            runs["ours"].append(fresh_ours())
            runs["script"].append(fresh_script())
            print(f"new process, repeat {k + 1}: ours {runs['ours'][-1]['wall']:.2f} s, "
                  f"script {runs['script'][-1]['wall']:.2f} s", flush=True)

        # In this process (warm): import the script as a module.
        sys.path.insert(0, str(C.HERE))
        import plain_script

        ours_in_process(dwi, tmp / "warm_ours0")
        plain_script.run(str(dwi), str(tmp / "warm_script0.tsv"))
        warm = {"ours": [], "script": []}
        for k in range(R):
            t0 = time.perf_counter()
            ours_in_process(dwi, tmp / f"warm_ours{k + 1}")
            warm["ours"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            plain_script.run(str(dwi), str(tmp / f"warm_script{k + 1}.tsv"))
            warm["script"].append(time.perf_counter() - t0)
            print(f"in process, repeat {k + 1}: ours {warm['ours'][-1]:.2f} s, "
                  f"script {warm['script'][-1]:.2f} s", flush=True)

        # Agreement (last new-process runs).
        ours_t = read_table(runs["ours"][-1]["tsv"])
        scr_t = read_table(runs["script"][-1]["tsv"])
        regions = list(scr_t.index)
        rel_guard = {r: ours_t.loc[r, "md_mean"] / scr_t.loc[r, "md_mean_csf_guard"] - 1
                     for r in regions}
        from ketamine_nb.derivatives import load_region_voxels
        from ketamine_nb.roi import summarise_regions

        vox = load_region_voxels(runs["ours"][-1]["out"], "sub-001", "pre")
        ours_noguard = summarise_regions(vox, csf_md_threshold=None).set_index("region")
        rel_noguard = {r: ours_noguard.loc[r, "md_mean"] / scr_t.loc[r, "md_mean"] - 1
                       for r in regions}

        # Where the two transforms put the brain (ours' mask voxels, in MNI mm).
        import nibabel as nib

        from ketamine_nb.derivatives import session_paths
        from ketamine_nb.registration import read_transform

        paths = session_paths(runs["ours"][-1]["out"], "sub-001", "pre")
        A_ours = read_transform(paths["xfm"])
        A_scr = np.asarray(runs["script"][-1]["info"]["mni_to_native"])
        m = nib.load(paths["mask"])
        ijk = np.argwhere(np.asarray(m.dataobj) > 0)
        xyz = m.affine[:3, :3] @ ijk.T + m.affine[:3, 3:4]
        xyz1 = np.vstack([xyz, np.ones(xyz.shape[1])])
        d = np.linalg.norm((np.linalg.inv(A_ours) @ xyz1 - np.linalg.inv(A_scr) @ xyz1)[:3],
                           axis=0)

        prof_tree = None
        if profile:
            try:
                import pyinstrument  # noqa: F401
            except ImportError:
                prof_tree = "(pyinstrument not installed: pip install -e '.[bench]')"
            else:
                wall, rc, _, text, _ = C.run_measured([py, "-c", PROFILE_CODE, str(dwi),
                                                       str(tmp / "profiled")])
                prof_tree = trim_tree(text) if rc == 0 else f"(profile failed: {text[-300:]})"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: float(np.median([r["wall"] for r in v])) for k, v in runs.items()}
    cpu = {k: float(np.median([r["cpu"] for r in v])) for k, v in runs.items()}
    peak = {k: max(r["peak"] for r in v) for k, v in runs.items()}
    wmed = {k: float(np.median(v)) for k, v in warm.items()}
    ratio = med["ours"] / med["script"]
    wratio = wmed["ours"] / wmed["script"]
    worst_guard = max(abs(v) for v in rel_guard.values())
    worst_noguard = max(abs(v) for v in rel_noguard.values())

    oi = [r["info"] for r in runs["ours"]]
    si = [r["info"]["seconds"] for r in runs["script"]]
    lines = [
        f"One session (52 x 65 x 50 voxels of 3 mm, 33 volumes; sub-001 ses-pre of a "
        f"3-subject `simulate_cohort`), DWI file to a table of mean MD per region; median of "
        f"{R} interleaved repeats after one warm-up each. Ours: `process_session` + "
        f"`summarise_regions` (1 BLAS thread); script: `benchmarks/plain_script.py` (dipy + "
        f"nilearn, library-default BLAS threads).", "",
        "| run | ours (s) | script (s) | ours / script |",
        "|---|---|---|---|",
        f"| new process, wall (start-up + imports + one session) | {med['ours']:.2f} | "
        f"{med['script']:.2f} | **{ratio:.2f}** |",
        f"| new process, CPU user+sys | {cpu['ours']:.2f} | {cpu['script']:.2f} | "
        f"{cpu['ours'] / cpu['script']:.2f} |",
        f"| in this warm process, wall (a further session) | {wmed['ours']:.2f} | "
        f"{wmed['script']:.2f} | {wratio:.2f} |",
        "",
        f"- repeats, new process: ours {C.fmt_times([r['wall'] for r in runs['ours']])}; "
        f"script {C.fmt_times([r['wall'] for r in runs['script']])}; in process: ours "
        f"{C.fmt_times(warm['ours'])}; script {C.fmt_times(warm['script'])}",
        f"- peak memory (PSS of the process): ours {peak['ours'] / 1e6:.0f} MB, script "
        f"{peak['script'] / 1e6:.0f} MB",
        f"- ours in a new process: import {np.median([i['import'] for i in oi]):.2f} s, "
        f"first `process_session` {np.median([i['process_session'] for i in oi]):.2f} s, "
        f"ROI table {np.median([i['roi_table'] for i in oi]):.3f} s",
        "", "Script steps, new process (median s):", "", "| step | seconds |", "|---|---|"]
    for name in si[0]:
        lines.append(f"| {name} | {np.median([s[name] for s in si]):.3f} |")
    lines += ["", "Agreement of regional mean MD (10^-3 mm²/s), ours vs the script:", "",
              "| region | ours | script | difference | ours, no CSF guard | script, no guard "
              "| difference | voxels ours / script (guard) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in regions:
        lines.append(
            f"| {r} | {1e3 * ours_t.loc[r, 'md_mean']:.4f} | "
            f"{1e3 * scr_t.loc[r, 'md_mean_csf_guard']:.4f} | {100 * rel_guard[r]:+.1f} % | "
            f"{1e3 * ours_noguard.loc[r, 'md_mean']:.4f} | {1e3 * scr_t.loc[r, 'md_mean']:.4f} "
            f"| {100 * rel_noguard[r]:+.1f} % | {int(ours_t.loc[r, 'n_voxels'])} / "
            f"{int(scr_t.loc[r, 'n_voxels_csf_guard'])} |")
    lines += ["", f"- largest \\|difference\\| of regional mean MD (probability >= 0.25, "
              f"mask, MD <= 1.1e-3): {100 * worst_guard:.1f} %; without the CSF guard "
              f"{100 * worst_noguard:.1f} %",
              f"- the two rigid transforms move ours' brain-mask voxels to MNI points "
              f"{np.mean(d):.2f} mm apart on average (max {np.max(d):.2f} mm)"]
    if prof_tree:
        lines += ["", "pyinstrument call tree of ours in a new process (import + first "
                  "`process_session` + ROI table; seconds, library frames collapsed):", "",
                  "```", prof_tree, "```"]
    metrics = {"ours_new_process_wall_s": med["ours"], "script_new_process_wall_s": med["script"],
               "ours_over_script_new_process_ratio": ratio,
               "ours_new_process_cpu_s": cpu["ours"], "script_new_process_cpu_s": cpu["script"],
               "ours_warm_wall_s": wmed["ours"], "script_warm_wall_s": wmed["script"],
               "ours_over_script_warm_ratio": wratio,
               "ours_peak_pss_bytes": peak["ours"], "script_peak_pss_bytes": peak["script"],
               "regional_md_max_abs_diff_fraction": worst_guard,
               "regional_md_max_abs_diff_no_csf_guard_fraction": worst_noguard,
               "transforms_mean_distance_mm": float(np.mean(d)),
               "transforms_max_distance_mm": float(np.max(d))}
    return C.result("bench_session_vs_script",
                    "process_session vs a plain dipy + nilearn script",
                    options={"repeats": repeats, "profile": profile}, metrics=metrics,
                    details=lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true",
                    help="write history/<date>_bench_session_vs_script.json and regenerate "
                    "RESULTS.md")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    ap.add_argument("--no-profile", action="store_true",
                    help="skip the pyinstrument profile of ours in a new process")
    args = ap.parse_args(argv)
    C.check_package()
    return C.report(measure(repeats=args.repeats, profile=not args.no_profile), args.record)


if __name__ == "__main__":
    sys.exit(main())
