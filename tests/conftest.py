"""Test-suite wiring: fixture modules, automatic markers, server versions in the report header."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "fixtures.services",
    "fixtures.datastores",
    "fixtures.pgservers",
    "fixtures.faults",
    "fixtures.redis_cluster",
    "fixtures.redis_replica",
]

# A test using one of these fixtures gets the marker, so `-m "not postgres"` selects fast tests.
MARKERS_BY_FIXTURE = {
    "postgres": ("pg_main", "pg_cluster", "pg_datastore", "pg_datastore_factory"),
    "redis": ("redis_url", "redis_client"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the servers their fixtures need."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in MARKERS_BY_FIXTURE.items():
            if names.intersection(fixtures):
                item.add_marker(getattr(pytest.mark, marker))
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend_name") in ("hstore", "jsonb"):
            item.add_marker(pytest.mark.postgres)
