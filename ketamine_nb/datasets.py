"""Where data live: the data home, the demo cohort, fetchers that return paths."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV_VAR", "get_data_home", "get_demo_dir"]

#: Environment variable that moves the data home (as ``NILEARN_DATA`` does for nilearn).
DATA_ENV_VAR = "KETAMINE_NB_DATA"


def get_data_home(data_dir=None) -> Path:
    """Return the folder where ketamine-nb keeps its data, creating it.

    The ``data_dir`` argument wins, then the ``KETAMINE_NB_DATA``
    environment variable, then ``~/ketamine_nb_data`` (the order nilearn's
    ``get_dataset_dir`` and scikit-learn's ``get_data_home`` use).

    Parameters
    ----------
    data_dir : str or pathlib.Path, optional
        Explicit folder.

    Returns
    -------
    pathlib.Path
        The data home (it exists on return).
    """
    if data_dir is None:
        data_dir = os.environ.get(DATA_ENV_VAR) or Path.home() / "ketamine_nb_data"
    path = Path(data_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def get_demo_dir(data_dir=None) -> Path:
    """Return the folder of the prepared demo (``<data home>/demo``).

    It holds ``bids/`` (the simulated cohort) and ``derivatives/`` (what
    ``ketamine-nb demo`` computes from it). The folder may not exist yet.
    """
    return get_data_home(data_dir) / "demo"
