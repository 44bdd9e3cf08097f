"""Shared fixtures.

``shared_data`` points at ``../shared/data`` (the real public data sets beside the checkout; see its
README). Tests that need it skip with a clear reason when it is absent, as in a user's checkout.
Override the location with ``GRAPHSCALE_SHARED_DATA``.
"""
from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("GRAPHSCALE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (set GRAPHSCALE_SHARED_DATA or check out "
                    f"../shared beside the repository)")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    # Every test that reads the real data sets carries the needs_data marker, so that
    # `pytest -m "not needs_data"` runs the suite of a checkout without ../shared/data.
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_data)
