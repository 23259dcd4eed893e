"""``status(rows="estimated")`` (``hv status --watch``): rows from the server's statistics, no shard table read.

A watch round used to run ``count(*)`` on every shard table (a scan of every row, every few seconds). With
estimates it reads ``pg_stat_user_tables`` once per server: the figures converge on the exact ones once the
server's statistics are flushed, and a shard table locked by another session does not hold the round up.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fixtures.datastores import SyncFacade

import hvcore
from hvcore.cli import main

KIND = 1
ROWS = {1: 3, 5: 7, 12: 2}  # shard -> rows put


def _fill(db: Any) -> None:
    for shard, rows in ROWS.items():
        db.put_many(shard, KIND, [{"i": str(i)} for i in range(rows)])


def _estimates(db: Any) -> dict[int, int]:
    return {s: n for e in db.status(rows="estimated") for s, n in e["rows_per_shard"].items() if n}


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("backend", ["memory", "hstore", "jsonb"])
def test_estimated_rows_follow_the_rows_put(backend: str, api: str, request: pytest.FixtureRequest) -> None:
    """On new databases the estimates reach the rows put once the server has the sessions' counts (a session that
    wrote within a second of its last report sends them after 10 s idle: PGSTAT_IDLE_INTERVAL). New databases, as
    on tables earlier tests filled and emptied an estimate can stay off by a constant (an ANALYZE racing a DELETE
    sets the count to what its snapshot saw): they are estimates."""
    if backend == "memory":
        servers = [dict(shards="0-8", name=f"est{id(request)}a"), dict(shards="8-16", name=f"est{id(request)}b")]
    else:
        first, second = request.getfixturevalue("pg_fresh_db"), request.getfixturevalue("pg_fresh_db2")
        servers = [{**first, "shards": "0-8"}, {**second, "shards": "8-16"}]
    options: dict[str, Any] = {"backend": backend, "worker": None}
    db: Any = hvcore.Datastore(servers, **options)
    if api == "async":
        db.close()
        db = SyncFacade(hvcore.AsyncDatastore(servers, **options))
    try:
        db.provision()
        _fill(db)
        deadline = time.monotonic() + 40
        while (found := _estimates(db)) != ROWS and time.monotonic() < deadline:
            time.sleep(0.25)
        assert found == ROWS
        status: list[dict[str, Any]] = db.status(rows="estimated")
        assert all(e["rows_estimated"] for e in status)
        exact = db.status()
        assert not any(e["rows_estimated"] for e in exact)
        assert [e["rows"] for e in exact] == [e["rows"] for e in status] == [10, 2]
        assert [e["provisioned_shards"] for e in status] == [e["provisioned_shards"] for e in exact]
    finally:
        getattr(db, "shutdown", db.close)()


def test_rows_must_be_exact_or_estimated(make_datastore: Any) -> None:
    db = make_datastore()
    with pytest.raises(hvcore.InvalidArgument, match=r"'exact'.*'estimated'"):
        db.status(rows="approximate")
    assert all(e["rows_estimated"] for e in db.status(rows="estimated"))  # every backend has estimates


@pytest.mark.postgres
def test_estimates_read_no_shard_table(pg_datastore_factory: Any) -> None:
    """A shard table locked ACCESS EXCLUSIVE by another session blocks an exact count, not an estimate."""
    db = pg_datastore_factory("jsonb")
    _fill(db)
    server = {k: v for k, v in db._config.servers[0].items() if k != "shards"}
    with psycopg.connect(**server) as locker:
        locker.execute('LOCK TABLE "shard0005".entities IN ACCESS EXCLUSIVE MODE')
        results: dict[str, Any] = {}

        def status(mode: str) -> None:
            results[mode] = db.status(rows=mode)

        estimated = threading.Thread(target=status, args=("estimated",), daemon=True)
        estimated.start()
        estimated.join(60)
        assert not estimated.is_alive(), "status(rows='estimated') waited for a lock on a shard table"
        exact = threading.Thread(target=status, args=("exact",), daemon=True)
        exact.start()
        exact.join(1.0)
        assert exact.is_alive(), "the exact count was expected to wait for the lock (the test's premise)"
        locker.rollback()
    exact.join(60)
    assert not exact.is_alive()
    assert results["exact"][0]["rows"] == 10


@pytest.mark.postgres
def test_hv_status_watch_estimates_and_says_so(pg_datastore_factory: Any, tmp_path: Path) -> None:
    db = pg_datastore_factory("jsonb")
    _fill(db)
    lines = ["backend = 'jsonb'"]
    for server in db._config.servers:
        lines.append("[[servers]]")
        lines += [
            f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}" for key, value in server.items()
        ]
    config = tmp_path / "hv.toml"
    config.write_text("\n".join(lines) + "\n")
    out = io.StringIO()
    main(["status", "--config", str(config), "--watch", "0.1", "--count", "1"], out=out)
    assert "rows (estimated)" in out.getvalue()
    out = io.StringIO()
    main(["status", "--config", str(config), "--watch", "0.1", "--count", "1", "--exact"], out=out)
    assert "rows (estimated)" not in out.getvalue() and " rows " in out.getvalue()
    out = io.StringIO()
    main(["status", "--config", str(config)], out=out)
    assert "rows (estimated)" not in out.getvalue()
