"""Test-suite wiring: fixture modules, automatic markers, server versions in the report header, fresh sequence
tables per test."""

from __future__ import annotations

import weakref

import pytest

from hvcore import _sharedseq

pytest_plugins = [
    "fixtures.services",
    "fixtures.shared_guard",
    "fixtures.datastores",
    "fixtures.pgservers",
    "fixtures.faults",
    "fixtures.redis_cluster",
    "fixtures.redis_replica",
    "fixtures.pgbouncer",
    "fixtures.pgreplica",
    "fixtures.citus",
]

# A test using one of these fixtures gets the marker, so `-m "not postgres"` selects fast tests.
MARKERS_BY_FIXTURE = {
    "postgres": (
        "pg_main",
        "pg_fresh_db",
        "fault_pg",
        "pg_cluster",
        "pg_datastore",
        "pg_datastore_factory",
        "pgbouncer_factory",
        "pgbouncer_transaction",
        "pgbouncer_session",
        "pg_replica_pair",
        "citus_cluster",
        "citus_cluster_factory",
    ),
    "redis": ("redis_url", "redis_client"),
    "pgbouncer": ("pgbouncer_factory", "pgbouncer_transaction", "pgbouncer_session"),
    "replica": ("pg_replica_pair",),
    "citus": ("citus_cluster", "citus_cluster_factory"),
}
EXTRA_MARKERS = {
    "pgbouncer": "starts real PgBouncer processes (fixtures.pgbouncer)",
    "replica": "starts a PostgreSQL primary and streaming standby (fixtures.pgreplica)",
    "citus": "starts a Citus cluster, building Citus first if missing (fixtures.citus)",
}


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers of the fixture modules that pyproject.toml does not list."""
    for name, description in EXTRA_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the servers their fixtures need."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in MARKERS_BY_FIXTURE.items():
            if names.intersection(fixtures):
                item.add_marker(getattr(pytest.mark, marker))
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend_name") in ("hstore", "jsonb", "jsonb-pgbouncer"):
            item.add_marker(pytest.mark.postgres)
        if callspec is not None and str(callspec.params.get("backend_name", "")).endswith("-pgbouncer"):
            item.add_marker(pytest.mark.pgbouncer)


@pytest.fixture(autouse=True)
def fresh_sequence_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generators made in a test make new sequence tables, as in a process of its own. One table serves every
    clock of a layout, so a generator an earlier test left alive (or a table an earlier test forked, whose lanes
    are kept for good) would share its fake clock's milliseconds with this test's (same T0): keys would not start
    where the test expects, and a fake clock that stands still could wait for ever for a used-up millisecond."""
    monkeypatch.setattr(_sharedseq, "_registry", weakref.WeakValueDictionary())
