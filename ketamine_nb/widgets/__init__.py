"""Interactive explorers: ipywidgets around the package's plain functions and figures."""

from ._base import Explorer, RegionState
from .outcome import outcome_explorer
from .robustness import robustness_explorer
from .roi import roi_explorer
from .slices import slice_viewer
from .viewer import brain_viewer

__all__ = [
    "Explorer",
    "RegionState",
    "brain_viewer",
    "outcome_explorer",
    "robustness_explorer",
    "roi_explorer",
    "slice_viewer",
]
