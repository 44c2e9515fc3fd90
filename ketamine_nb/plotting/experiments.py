"""Figures of the didactic experiments of :mod:`ketamine_nb.teaching`.

Each takes the table or maps the experiment returned; none recomputes them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..exceptions import InputError
from ._base import DROPPED_COLOR, KEPT_COLOR, MD_SCALE, _axes, _region_styles

__all__ = ["plot_fit_methods", "plot_partial_volume", "plot_registration_shift"]


def plot_fit_methods(maps: dict, mask, *, reference: str = "WLS"):
    """Voxel MD of each fit method against the reference method.

    Parameters
    ----------
    maps : dict of str -> nibabel.Nifti1Image
        MD maps by method (from
        ``ketamine_nb.teaching.compare_fit_methods(..., return_maps=True)``).
    mask : nibabel.Nifti1Image
        The voxels compared.
    reference : str, default="WLS"
        The method on the x-axis (the pipeline's default fit).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per other method: a point per voxel (10⁻³ mm²/s) and the
        identity line; points off the line are voxels where the methods
        disagree.
    """
    import matplotlib.pyplot as plt

    if reference not in maps:
        raise InputError(f"no map for the reference {reference!r}")
    m = np.asarray(mask.dataobj) > 0
    others = [k for k in maps if k != reference]
    n = max(len(others), 1)
    fig, axs = plt.subplots(1, n, figsize=(3.3 * n, 3.4), layout="constrained", squeeze=False)
    x = np.asarray(maps[reference].dataobj, float)[m] * MD_SCALE
    for ax, name in zip(axs[0], others, strict=False):
        y = np.asarray(maps[name].dataobj, float)[m] * MD_SCALE
        ax.scatter(x, y, s=3, alpha=0.3, color="#0072B2", edgecolor="none", gid=f"points:{name}")
        ax.plot([0, 3.5], [0, 3.5], color="0.3", lw=0.8, ls="--")
        ax.set(xlim=(0, 3.5), ylim=(0, 3.5), aspect="equal", title=name,
               xlabel=f"{reference} MD (10⁻³ mm²/s)", ylabel=f"{name} MD (10⁻³ mm²/s)")
    fig.suptitle(f"Tensor fit methods against {reference}, {int(m.sum())} voxels", fontsize=10)
    return fig


def plot_partial_volume(table: pd.DataFrame, *, csf_md_threshold=1.1e-3, ax=None):
    """Apparent MD against the CSF fraction, with the CSF guard.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`ketamine_nb.teaching.partial_volume_table`.
    csf_md_threshold : float or None, default=1.1e-3
        Guard drawn as a horizontal line (mm²/s; the pipeline's default).
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.

    Returns
    -------
    matplotlib.figure.Figure
        The curve in 10⁻³ mm²/s: points kept by the guard filled, dropped open.
    """
    fig, ax = _axes(ax, (5.2, 3.8))
    x, y = 100 * table["csf_fraction"].to_numpy(), table["apparent_md"].to_numpy() * MD_SCALE
    kept = table["kept_by_guard"].to_numpy(bool)
    ax.plot(x, y, color="0.5", lw=1)
    ax.scatter(x[kept], y[kept], color=KEPT_COLOR, zorder=3, label="kept by the CSF guard",
               gid="kept")
    ax.scatter(x[~kept], y[~kept], facecolor="white", edgecolor=DROPPED_COLOR, zorder=3,
               label="dropped by the CSF guard", gid="dropped")
    if csf_md_threshold is not None:
        ax.axhline(csf_md_threshold * MD_SCALE, color=DROPPED_COLOR, ls="--", lw=1,
                   label=f"guard: MD ≤ {csf_md_threshold * MD_SCALE:g}")
    ax.set(xlabel="CSF in the voxel (% of its volume)", ylabel="apparent MD (10⁻³ mm²/s)",
           title="Partial volume: a little CSF raises MD a lot")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def plot_registration_shift(table: pd.DataFrame, *, ax=None):
    """Percent change of each region's MD against a deliberate registration shift.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`ketamine_nb.teaching.registration_shift_table`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.

    Returns
    -------
    matplotlib.figure.Figure
        One line per region in the region palette
        (:data:`~ketamine_nb.plotting.REGION_PALETTE`: colour-blind safe, no
        black; left solid, right dashed, dark-edged markers so the light
        colours read on white), the legend to the right.
    """
    fig, ax = _axes(ax, (6.6, 3.8))
    styles = _region_styles([str(r) for r in pd.unique(table["region"])])
    for region, g in table.groupby("region", sort=False):
        colour, ls = styles[str(region)]
        ax.plot(g["shift_mm"], g["md_change_percent"], marker="o", color=colour, ls=ls,
                lw=2, ms=6, mec="0.2", mew=0.7, label=region, gid=f"region:{region}")
    ax.axhline(0, color="0.5", lw=0.8, ls=":")
    ax.set(xlabel="regions shifted by (mm)", ylabel="change in regional MD (%)",
           title="What a registration error does to regional MD")
    # Outside the axes: the lines fan out over the whole plot.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              handlelength=2.6)
    return fig
