"""Reanalyse DTI mean diffusivity before and 24 h after IV ketamine, in notebooks."""

__version__ = "0.1.0"

# Public names, imported on first use so that ``import ketamine_nb`` stays
# fast (dipy, nilearn and dask load only when a function needs them).
_LAZY = {
    "load_study": "study",
    "Study": "study",
    "simulate_cohort": "simulate",
    "SimulationParams": "simulate",
    "load_region_maps": "regions",
    "load_region_table": "regions",
    "atlas_labels": "regions",
    "STUDY_REGIONS": "regions",
    "load_dwi": "dwi",
    "brain_mask": "dwi",
    "compute_md_map": "tensor",
    "realign_series": "motion",
    "fit_dti": "tensor",
    "register_to_template": "registration",
    "process_session": "pipeline",
    "run_pipeline": "pipeline",
    "PipelineConfig": "pipeline",
    "summarise_regions": "roi",
    "get_data_home": "datasets",
    "find_derivatives": "derivatives",
    "InputError": "exceptions",
    "KetamineNBError": "exceptions",
    "StudyWarning": "exceptions",
    "load_results": "results",
    "demo_results": "workflows",
    "build_demo": "workflows",
    "Results": "results",
    "run_stats": "workflows",
    "region_stats": "stats",
    "StatsConfig": "stats",
    "StatsResult": "workflows",
    "VoxelwiseResult": "voxelwise",
    "robustness_grid": "robustness",
    "voxelwise_inference": "voxelwise",
    "simulate_tables": "simulate",
    "power_analysis": "power",
    "roi_explorer": "widgets",
    "outcome_explorer": "widgets",
    "robustness_explorer": "widgets",
    "slice_viewer": "widgets",
    "RegionState": "widgets",
    "brain_viewer": "widgets",
    "write_report": "report",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ketamine_nb' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
