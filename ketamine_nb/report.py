"""One self-contained HTML report a clinician can share.

Key figures (embedded as PNG), the region and statistics tables, the
parameters of every step and the software versions, in one file with no
external resources. ``pseudonymise=True`` replaces every participant id with
a random pseudonym (the key is not written into the report).
"""

from __future__ import annotations

import base64
import html
import io
import platform
import secrets
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ._utils import atomic_write_text
from .regions import GLOBAL_GM

__all__ = ["pseudonym_map", "write_report"]


def pseudonym_map(ids, *, seed: int | None = None) -> dict:
    """Map participant ids to pseudonyms ``P01``, ``P02``... in a random order.

    Parameters
    ----------
    ids : iterable of str
        Participant ids.
    seed : int, optional
        Fix the order (tests); by default a fresh random order each call, so
        pseudonyms cannot be mapped back by sorting.

    Returns
    -------
    dict
        id -> pseudonym.
    """
    import numpy as np

    ids = sorted(set(ids))
    rng = np.random.default_rng(seed if seed is not None else secrets.randbits(64))
    width = max(2, len(str(len(ids))))
    order = rng.permutation(len(ids))
    return {pid: f"P{k + 1:0{width}d}" for pid, k in zip(ids, order, strict=True)}


def _fig_html(fig, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/>' \
           f"<figcaption>{html.escape(alt)}</figcaption></figure>"


def _table_html(df: pd.DataFrame, *, digits: int = 4) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.{digits}g}", na_rep="n/a",
                      border=0, classes="tbl", escape=True)


def _versions() -> pd.DataFrame:
    import importlib.metadata as md

    rows = [("python", platform.python_version())]
    for pkg in ("ketamine-nb", "numpy", "scipy", "pandas", "nibabel", "dipy", "nilearn",
                "statsmodels", "matplotlib"):
        try:
            rows.append((pkg, md.version(pkg)))
        except md.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    return pd.DataFrame(rows, columns=["package", "version"])


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table.tbl{border-collapse:collapse;font-size:.85em;margin:.5em 0}
table.tbl td,table.tbl th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:right}
figure{margin:1em 0}figure img{max-width:100%}figcaption{font-size:.85em;color:#555}
.note{background:#fff8e5;border-left:4px solid #E69F00;padding:.5em 1em}
"""


def write_report(out_dir, *, path=None, pseudonymise: bool = False, seed: int | None = None,
                 viewer: bool = True) -> Path:
    """Write ``report.html`` for a pipeline + statistics output folder.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Folder written by ``ketamine-nb run`` and ``ketamine-nb stats``.
    path : str or pathlib.Path, optional
        Where to write (default ``out_dir/report.html``).
    pseudonymise : bool, default=False
        Replace participant ids with random pseudonyms everywhere in the
        report.
    seed : int, optional
        Seed of the pseudonym order (for tests).
    viewer : bool, default=True
        Embed the 3D viewer of the cohort's mean ΔMD with the study regions
        (:func:`ketamine_nb.widgets.viewer.viewer_html`; NiiVue's JavaScript
        is inlined, so the page works offline, and adds a few MB). The map is
        a cohort mean: no participant's image is in it.

    Returns
    -------
    pathlib.Path
        The report.
    """
    import json

    from . import plotting
    from .results import load_results

    res = load_results(out_dir)
    out = Path(out_dir)
    path = Path(path) if path else out / "report.html"
    ids = set(res.roi_md["participant_id"])
    if res.participants is not None:
        ids |= set(res.participants["participant_id"])
    mapping = pseudonym_map(ids, seed=seed) if pseudonymise else {}

    def anon(df):
        if df is None or not mapping:
            return df
        df = df.copy()
        for col in df.columns:
            if df[col].dtype == object or str(df[col].dtype).startswith(("str", "string")):
                df[col] = df[col].replace(mapping)
        return df

    parts = [f"<h1>ketamine-nb report</h1><p>Generated {datetime.now(UTC):%Y-%m-%d %H:%M} "
             f"UTC from <code>{html.escape(out.name)}</code>.</p>"]
    if res.ground_truth is not None:
        parts.append('<p class="note">This is the <b>simulated</b> cohort: its effects were '
                     "planted (see the package's data/README.md). It checks the method; it "
                     "says nothing about ketamine.</p>")
    n_arm = (res.participants["arm"].value_counts().to_dict()
             if res.participants is not None else {})
    parts.append("<h2>Cohort</h2>" + _table_html(pd.DataFrame(
        [{"arm": a, "participants": n} for a, n in sorted(n_arm.items())]
        + [{"arm": "with pre/post ΔMD", "participants": res.roi_deltas["participant_id"]
            .nunique()}])))

    parts.append("<h2>Regional MD change by arm</h2>")
    parts.append(_fig_html(plotting.plot_delta_by_arm(res.roi_deltas),
                           "ΔMD = post − pre by arm and region"))
    # n counts the participants with a ΔMD (a region not covered is n/a, not a value);
    # 10⁻⁶ mm²/s as in the figures and the model.
    summary = (res.roi_deltas.assign(delta_e6=res.roi_deltas["delta_md"] * 1e6)
               .groupby(["region", "arm"], sort=False)["delta_e6"]
               .agg(n="count", mean="mean", sd="std").reset_index()
               .rename(columns={"mean": "mean ΔMD (10⁻⁶ mm²/s)", "sd": "SD (10⁻⁶ mm²/s)"}))
    parts.append(_table_html(summary))
    if res.ground_truth is not None:
        parts.append(_fig_html(plotting.plot_truth_vs_measured(res.roi_deltas,
                                                               res.ground_truth),
                               "Measured against planted ΔMD (simulated cohort)"))

    if res.stats_roi is not None:
        family = (str(res.stats_roi["family"].dropna().iloc[0])
                  if "family" in res.stats_roi and res.stats_roi["family"].notna().any()
                  else "every row of the table")
        parts.append("<h2>The study's model</h2><p>Per region and outcome: "
                     f"<code>{html.escape(str(res.stats_roi['formula'].iloc[0]))}</code> "
                     "(OLS; Δ = post − pre; ΔMD in 10⁻⁶ mm²/s). q values: corrected across "
                     f"{html.escape(family)}. The verdict compares each row with the "
                     "pattern the paper reported (consistent, inconclusive, contradicts); "
                     "the statistics module's docstring gives every choice.</p>")
        for outcome in pd.unique(res.stats_roi["outcome"]):
            parts.append(_fig_html(plotting.plot_forest(res.stats_roi, outcome=outcome),
                                   f"Interaction estimates ({outcome})"))
        best = res.stats_roi.dropna(subset=["p_interaction"]).sort_values("p_interaction")
        if len(best) and res.stats_input is not None:
            top = best.iloc[0]
            parts.append(_fig_html(plotting.plot_scatter(res.stats_input, top["region"],
                                                         top["outcome"], stats_roi=top),
                                   f"ΔMD vs Δscore, {top['region']} ({top['outcome']})"))
        t = res.stats_roi
        per_arm = [c for c in t.columns
                   if c.startswith(("n_", "r_", "slope_")) and not c.startswith(
                       ("r_ci", "r_boot", "r_p", "r_partial", "n_dropped"))]
        cols = [c for c in ("region", "outcome", *per_arm, "beta_interaction",
                            "se_interaction", "p_interaction", "p_perm_interaction", "q_fdr",
                            "q_holm", "verdict")
                if c in t]
        parts.append(_table_html(res.stats_roi[cols]))
    if res.reliability is not None:
        parts.append("<h2>Reliability of ΔMD</h2><p>The control arm's ΔMD spread as "
                     "measurement error; |RCI| &gt; 1.96 is a reliable change.</p>"
                     + _table_html(res.reliability))

    qc = res.roi_md.drop_duplicates(["participant_id", "session"])
    if "qc_flags" in qc:
        flagged = qc[qc["qc_flags"].fillna("").astype(str).str.len() > 0]
        parts.append("<h2>Quality control</h2>"
                     f"<p>{len(qc)} sessions; {len(flagged)} with QC flags.</p>")
        if len(flagged):
            parts.append(_table_html(anon(flagged[["participant_id", "session", "qc_snr_b0",
                                                   "qc_flags"]])))
    if "flag" in res.roi_deltas:
        d = res.roi_deltas
        gaps = d[(d["flag"].fillna("").astype(str) != "")
                 & (d["region"].astype(str) != GLOBAL_GM)]
        if len(gaps):
            gaps = gaps.assign(delta_md=np.where(gaps["delta_md"].isna(), "n/a",
                                                 "left out of the model"))
            parts.append("<h2>Regions not reported</h2><p>A region whose coverage (field "
                         "of view, brain mask) is too small has no ΔMD (n/a): the reason is "
                         "given, never a number from a sliver. A region measured in a "
                         "participant whose visits or atlas registration cannot be trusted "
                         "keeps its ΔMD in roi_deltas.tsv, flagged, and is left out of the "
                         "model (unless --keep-flagged).</p>"
                         + _table_html(anon(gaps[["participant_id", "region", "delta_md",
                                                  "flag"]])))
    if viewer:
        from .exceptions import InputError
        from .widgets.viewer import viewer_html

        try:
            page = viewer_html(res, map="mean_delta_md", arm="both")
        except InputError as exc:  # no template-space maps: say so, keep the report
            parts.append(f"<h2>3D viewer</h2><p>Not available: {html.escape(str(exc))}</p>")
        else:
            parts.append("<h2>3D viewer</h2><p>The cohort's mean ΔMD (10⁻⁶ mm²/s) on the "
                         "template with the study regions; pick a region, move the "
                         "threshold.</p><iframe title='3D brain viewer: mean ΔMD with the "
                         "study regions' style='width:100%;height:640px;border:0' srcdoc=\""
                         + html.escape(page, quote=True) + "\"></iframe>")
    failures = out / "failures.tsv"
    if failures.is_file():
        f = pd.read_csv(failures, sep="\t")
        if len(f):
            parts.append("<h2>Failures</h2>" + _table_html(anon(f)))

    params = {"pipeline": res.config}
    if (out / "stats_config.json").is_file():
        params["statistics"] = json.loads((out / "stats_config.json").read_text())
    parts.append("<h2>Parameters</h2><pre>" + html.escape(json.dumps(params, indent=2))
                 + "</pre>")
    parts.append("<h2>Software</h2>" + _table_html(_versions()))
    if mapping:
        parts.append("<p>Participant ids were replaced with random pseudonyms.</p>")
    body = "\n".join(parts)
    if mapping:  # last safety net: no original id anywhere in the text
        for pid, pseudo in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
            body = body.replace(pid, pseudo)
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
           f"<title>ketamine-nb report</title><style>{_CSS}</style></head>"
           f"<body>{body}</body></html>\n")
    return atomic_write_text(path, doc)
