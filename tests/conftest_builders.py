"""Fixtures of the in-memory results builder (``tests/_builders.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def memory_results():
    """A small Results built in memory from known tables (read-only in tests)."""
    from _builders import make_results

    return make_results()
