"""Figures: one builder per figure, used by the static ``plot_*`` functions and the explorers."""

from ._base import (
    ARM_COLORS,
    DELTA_MD_LABEL,
    DELTA_MD_SCALE,
    MD_LABEL,
    MD_SCALE,
    REGION_PALETTE,
    FigureHandle,
    choice_label,
)
from .anatomy import colour_fa, plot_atlas_maps, plot_colour_fa
from .captions import ALT_TEXT
from .experiments import plot_fit_methods, plot_partial_volume, plot_registration_shift
from .inference import plot_permutation_null
from .maps import (
    plot_delta_md_map,
    plot_dwi_slices,
    plot_framewise_displacement,
    plot_glass_stat,
    plot_gradients,
    plot_md_difference,
    plot_md_map,
    plot_registration,
    plot_session_qc,
)
from .measurement import plot_bland_altman, plot_paired_md
from .outcomes import (
    ScatterFigure,
    plot_delta_by_arm,
    plot_forest,
    plot_power,
    plot_scatter,
    plot_score_change,
    plot_truth_vs_measured,
)
from .slices import RegionFigure, SliceFigure, plot_region_voxels, plot_slice
from .specification import SpecCurveFigure, plot_robustness, select_specifications

__all__ = [
    "ALT_TEXT",
    "ARM_COLORS",
    "DELTA_MD_LABEL",
    "DELTA_MD_SCALE",
    "MD_LABEL",
    "MD_SCALE",
    "REGION_PALETTE",
    "FigureHandle",
    "RegionFigure",
    "ScatterFigure",
    "SliceFigure",
    "SpecCurveFigure",
    "choice_label",
    "colour_fa",
    "plot_atlas_maps",
    "plot_bland_altman",
    "plot_colour_fa",
    "plot_delta_by_arm",
    "plot_delta_md_map",
    "plot_dwi_slices",
    "plot_framewise_displacement",
    "plot_fit_methods",
    "plot_forest",
    "plot_glass_stat",
    "plot_gradients",
    "plot_power",
    "plot_md_difference",
    "plot_md_map",
    "plot_paired_md",
    "plot_partial_volume",
    "plot_permutation_null",
    "plot_region_voxels",
    "plot_registration",
    "plot_registration_shift",
    "plot_robustness",
    "plot_scatter",
    "plot_score_change",
    "plot_session_qc",
    "plot_slice",
    "plot_truth_vs_measured",
    "select_specifications",
]
