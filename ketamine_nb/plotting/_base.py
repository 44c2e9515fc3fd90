"""Shared conventions of every figure: colours, units, labels and the figure handle."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

__all__ = [
    "ARM_COLORS",
    "DELTA_MD_LABEL",
    "DELTA_MD_SCALE",
    "MD_LABEL",
    "MD_SCALE",
    "REGION_PALETTE",
    "FigureHandle",
    "choice_label",
]

#: One colour per arm everywhere (Okabe-Ito palette, safe for colour-blind readers).
ARM_COLORS = {"ketamine": "#D55E00", "saline": "#0072B2"}

#: MD is shown in 10⁻³ mm²/s: multiply values in mm²/s by this.
MD_SCALE = 1e3

#: ΔMD is shown in 10⁻⁶ mm²/s, the unit of the study's model (its slopes are
#: score points per 10⁻⁶ mm²/s): multiply values in mm²/s by this.
DELTA_MD_SCALE = 1e6

#: Axis labels with units.
MD_LABEL = "MD (10⁻³ mm²/s)"
DELTA_MD_LABEL = "ΔMD = post − pre (10⁻⁶ mm²/s)"

#: One colour per brain structure (``_L``/``_R`` share one; left solid, right
#: dashed): the Okabe-Ito palette without the two arm colours and without
#: black, then Paul Tol's light olive. Colour-blind safe, and every colour is
#: bright enough to be seen on the black background of an MD map.
REGION_PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#CC79A7", "#BBCC33")

#: Colours of the voxels a region keeps and drops by the CSF guard, of a
#: region's outline, of selected items and of a mean line (Okabe-Ito).
KEPT_COLOR = "#009E73"
DROPPED_COLOR = "#CC79A7"
OUTLINE_COLOR = "#F0E442"
HIGHLIGHT_COLOR = "#E69F00"
MEAN_COLOR = "#56B4E9"

_OTHER_ARM = "#999999"
_Z95 = 1.959964  # two-sided 95 % normal quantile: estimate ± 1.96 SE
_DIVERGING = "RdBu_r"  # ColorBrewer, colour-blind safe; blue = decrease
_SEQUENTIAL = "YlOrRd"  # ColorBrewer, for maps that are never negative (−log10 p)

# Layout of the nilearn figures: brain views left, colorbar right, legend below.
_BRAIN_RECT = (0.0, 0.04, 0.88, 0.86)
_BRAIN_RECT_LEGEND = (0.0, 0.16, 0.88, 0.74)
_CBAR_RECT = (0.9, 0.18, 0.018, 0.64)


class FigureHandle:
    """A figure built once, and the artists its ``update`` changes in place.

    Every figure of the package that an explorer redraws is a subclass: its
    ``__init__`` makes the figure and its artists (``self.artists``, by
    name), its ``update(...)`` sets their data and returns ``self``. The
    static ``plot_*`` function builds one and updates it once; an explorer
    builds one and updates it on every change of its controls.

    Attributes
    ----------
    figure : matplotlib.figure.Figure
        The figure.
    artists : dict
        The artists ``update`` changes, by name.
    """

    def __init__(self, figure, artists=None):
        self.figure = figure
        self.artists = {} if artists is None else artists

    def update(self, *args, **kwargs):  # pragma: no cover - overridden
        """Change the artists for new data; return ``self``."""
        raise NotImplementedError


def plain_figure(width: float, height: float):
    """Make a matplotlib figure outside pyplot (no auto-display, no global registry).

    What an explorer draws into: it is rendered to PNG by the explorer.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def choice_value(value):
    """One robustness-choice value, comparable whether it came from memory or a TSV.

    ``None``, ``""``, ``"none"``, ``"n/a"``, NaN and ``inf`` (a guard that is
    off) become ``None``; booleans (also ``"True"``/``"False"``) stay booleans;
    numbers become floats; anything else a string.
    """
    if value is None or (isinstance(value, str) and value in ("", "none", "n/a")):
        return None
    if isinstance(value, bool | np.bool_) or (isinstance(value, str)
                                              and value in ("True", "False")):
        return value in (True, "True")
    if isinstance(value, tuple):
        return "+".join(value) if value else None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    return None if not np.isfinite(x) else x


def choice_label(choice: str, value) -> str:
    """Name one value of a robustness choice, with its unit.

    Parameters
    ----------
    choice : str
        One of :data:`ketamine_nb.robustness.CHOICES`.
    value : object
        Its value (as in the grid or the table; ``None``/NaN/``inf`` = off).

    Returns
    -------
    str
        E.g. ``"CSF guard: MD ≤ 1.1×10⁻³ mm²/s"``, ``"atlas probability ≥ 0.25"``,
        ``"outcome: madrs"``.
    """
    value = choice_value(value)
    if choice == "csf_md_threshold":
        return "CSF guard: none" if value is None else \
            f"CSF guard: MD ≤ {value * MD_SCALE:g}×10⁻³ mm²/s"
    if choice == "probability_threshold":
        return f"atlas probability ≥ {value:g}"
    names = {"fit_method": "fit", "outcome": "outcome", "change": "score change",
             "covariates": "covariates"}
    name = names.get(choice, choice.replace("_", " "))
    if isinstance(value, bool):
        return f"{name}: {'yes' if value else 'no'}"
    return f"{name}: {'none' if value is None else value}"


def _fmt_p(p) -> str:
    return "n/a" if p is None or not np.isfinite(p) else (
        f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")


def _axes(ax, figsize):
    """Return ``(figure, ax)``: the given axes' figure, or a new figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return _root_figure(ax), ax


def _root_figure(ax):
    fig = ax.figure
    while getattr(fig, "figure", fig) is not fig:  # a SubFigure's parent
        fig = fig.figure
    return fig


def _new_figure(figure, figsize):
    """Return ``figure`` cleared, or a new figure."""
    import matplotlib.pyplot as plt

    if figure is None:
        return plt.figure(figsize=figsize)
    figure.clf()
    return figure


def _arm_order(arms) -> list:
    present = list(pd.unique(pd.Series(arms).dropna()))
    return [a for a in ARM_COLORS if a in present] + [a for a in present if a not in ARM_COLORS]


def _arm_color(arm) -> str:
    return ARM_COLORS.get(arm, _OTHER_ARM)


def _region_styles(names) -> dict:
    """Colour per structure (``_L``/``_R`` share one), solid left, dashed right."""
    bases = list(dict.fromkeys(re.sub(r"_[LR]$", "", n) for n in names))
    colour = {b: REGION_PALETTE[k % len(REGION_PALETTE)] for k, b in enumerate(bases)}
    return {n: (colour[re.sub(r"_[LR]$", "", n)], "--" if n.endswith("_R") else "-")
            for n in names}


def _colorbar(fig, rect, cmap, vmin, vmax, label):
    """Add a labelled colorbar in its own axes; return the axes."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cax = fig.add_axes(rect)
    fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), cax=cax, label=label)
    return cax


def _scaled(img, scale):
    import nibabel as nib

    return nib.Nifti1Image(np.asarray(img.dataobj, np.float32) * np.float32(scale), img.affine)
