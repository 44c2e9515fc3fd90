"""The shareable HTML report, with and without pseudonyms; the lab launcher."""

from __future__ import annotations

import re
import shutil

import pandas as pd

from ketamine_nb.cli import main
from ketamine_nb.report import pseudonym_map, write_report


def test_report_is_self_contained_with_figures_tables_and_versions(small_results, tmp_path):
    path = write_report(small_results.out_dir, path=tmp_path / "r.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "simulated" in text                                 # the cohort is labelled
    assert text.count("data:image/png;base64,") >= 4            # figures embedded
    assert not re.search(r"(src|href)=['\"]https?://", text)    # nothing fetched
    assert "delta_score ~ delta_md_e6" in text                  # the exact formula
    for region in small_results.regions:
        assert region in text
    assert "dipy" in text and "nilearn" in text                 # versions
    assert "fit_method&quot;: &quot;WLS" in text                # parameters
    assert "<iframe title='3D brain viewer" in text              # the linked 3D view
    assert "verdict" in text and "matches_study" not in text
    lean = write_report(small_results.out_dir, path=tmp_path / "lean.html", viewer=False)
    assert "<iframe" not in lean.read_text()
    assert len(lean.read_text()) < len(text) / 2


def test_pseudonymised_report_has_no_participant_id(processed_cohort, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(processed_cohort["out"], out)
    # A failure and a QC flag, so that ids would appear in tables.
    pd.DataFrame({"participant_id": ["sub-003"], "session": ["post"],
                  "error": ["sub-003_ses-post_dwi.nii.gz: truncated"]}).to_csv(
        out / "failures.tsv", sep="\t", index=False)
    roi = pd.read_csv(out / "roi_md.tsv", sep="\t")
    roi["qc_flags"] = roi["qc_flags"].astype(object)
    roi.loc[roi["participant_id"] == "sub-002", "qc_flags"] = "low_snr"
    roi.to_csv(out / "roi_md.tsv", sep="\t", index=False)
    plain = write_report(out, path=tmp_path / "plain.html").read_text()
    assert "sub-003" in plain and "sub-002" in plain
    anon = write_report(out, path=tmp_path / "anon.html", pseudonymise=True).read_text()
    assert "sub-" not in anon
    assert re.search(r"P0\d", anon)


def test_pseudonyms_are_a_random_bijection():
    ids = [f"sub-{i:03d}" for i in range(1, 21)]
    m = pseudonym_map(ids, seed=1)
    assert sorted(m) == ids and len(set(m.values())) == 20
    assert m != {pid: f"P{i:02d}" for i, pid in enumerate(ids, 1)}   # not in id order
    assert pseudonym_map(ids, seed=1) == m


def test_cli_report_and_lab_dry_run(small_results, tmp_path, capsys):
    assert main(["report", str(small_results.out_dir), "--output",
                 str(tmp_path / "x.html"), "--pseudonymise"]) == 0
    assert (tmp_path / "x.html").exists()
    assert main(["lab", "--dry-run", "--no-browser"]) == 0
    cmd = capsys.readouterr().out
    assert "jupyter lab" in cmd and "00_start_here.ipynb" in cmd and "--no-browser" in cmd
