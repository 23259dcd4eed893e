"""A newcomer's findings on what a Datastore that is never closed leaves behind."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from typing import Any

import hvcore
from hvbackend_postgres import _lease


def _lease_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("hypervault-lease")]


def test_a_dropped_datastore_leaves_no_lease_thread(pg_fresh_db: dict[str, Any]) -> None:
    """A newcomer's web handler or test helper that builds a Datastore and forgets close(): once the object is
    gone, nothing of it should keep running."""
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb") as db:
        db.provision()
    before = set(_lease_threads())

    def handler() -> weakref.ref[hvcore.Datastore]:
        db = hvcore.Datastore(servers, backend="jsonb")
        db.put(3, 1, n="x")
        return weakref.ref(db)

    try:
        refs = [handler() for _ in range(3)]
        gc.collect()
        assert all(ref() is None for ref in refs), "the dropped datastores were not collected"
        deadline = time.monotonic() + 3
        while set(_lease_threads()) - before and time.monotonic() < deadline:
            time.sleep(0.1)
        left = sorted(set(_lease_threads()) - before)
        assert not left, f"lease threads of collected datastores still running: {left}"
    finally:  # stop what the test leaked, before its database is dropped
        for lease in list(_lease._LEASES):
            thread = getattr(lease, "_thread", None)
            if thread is not None and thread.name not in before:
                lease.close()
