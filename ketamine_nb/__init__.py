"""Reanalyse DTI mean diffusivity before and 24 h after IV ketamine, in notebooks."""

__version__ = "0.1.0"
