"""Small helpers of the explorers: controls with the package's layout, tables as HTML."""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np
import pandas as pd

_STYLE = {"description_width": "initial"}

#: Sessions (MD maps, voxel tables) an explorer keeps in memory.
SESSION_CACHE_SIZE = 8


def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (where the figure is redisplayed)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def fmt(value, spec: str = ".3g") -> str:
    """Format a number as text (``–`` for missing)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def fmt_p(value) -> str:
    """P-value as text: three decimals, ``< 0.001`` below."""
    if value is None or not np.isfinite(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def html_table(table: pd.DataFrame, columns: dict) -> str:
    """HTML of a table: ``columns`` maps a header (with units) to (column, formatter)."""
    cell = "text-align:right;padding:2px 8px;white-space:nowrap"
    head = "".join(f"<th style='{cell}'>{html.escape(h)}</th>" for h in columns)
    body = []
    for _, row in table.iterrows():
        cells = []
        for col, f in columns.values():
            v = row.get(col, np.nan)
            text = f(v) if callable(f) else fmt(v, f)
            cells.append(f"<td style='{cell}'>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ("<table class='ketamine-nb-data' style='border-collapse:collapse;font-size:12px'>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def note(text: str) -> str:
    """Wrap text in a small grey line of HTML (under a table)."""
    return f"<div style='font-size:11px;color:#555'>{text}</div>"


def dropdown(description, options, value=None, **kw):
    """Make a Dropdown with the package's layout."""
    d = widgets.Dropdown(description=description, options=options, style=_STYLE,
                         layout=widgets.Layout(width="auto"), **kw)
    if value is not None:
        d.value = value
    return d


def slider(cls, description, **kw):
    """Make a slider that recomputes only on release (``continuous_update=False``)."""
    return cls(description=description, continuous_update=False, style=_STYLE,
               layout=widgets.Layout(width="auto"), **kw)


def subject_options(results):
    """``(label, participant_id)`` of every processed participant, with the arm."""
    arms = {}
    if results.participants is not None and "arm" in results.participants:
        arms = dict(zip(results.participants["participant_id"], results.participants["arm"],
                        strict=False))
    pids = list(pd.unique(results.sessions["participant_id"]))
    return [(f"{p} ({arms[p]})" if p in arms else p, p) for p in pids]


def sessions_of(results, pid) -> list:
    """Return the processed sessions of one participant."""
    s = results.sessions
    return list(s.loc[s["participant_id"] == pid, "session"])


def offer_sessions(results, controls, change) -> None:
    """When the subject changes, offer its sessions (keeping the session when it has it)."""
    if "subject" in controls and change["owner"] is controls["subject"]:
        opts = sessions_of(results, change["new"])
        old = controls["session"].value
        controls["session"].options = opts
        controls["session"].value = old if old in opts else opts[0]
