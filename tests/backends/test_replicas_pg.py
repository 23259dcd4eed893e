"""Read replicas on a real primary and streaming standby (fixtures.pgreplica): where reads go, and never too stale.

Where a read ran is read on the servers themselves: ``pg_stat_activity`` of the standby (and of the primary) shows the
sessions of the datastore's pools (``application_name``) whose last statement read a shard's table after a
given server time. Background refreshes are turned off (`_manual`) where a test needs to know when positions are
read; the staleness test keeps them on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.pgreplica import ReplicaPair

import hvcore
from hvcore import AsyncDatastore, Datastore, InvalidToken, Timeline

SHARD = 1
APP_PRIMARY = "hv-test-primary"
APP_STANDBY = "hv-test-standby"


def _servers(pair: ReplicaPair, *, shards: str = "0-4") -> list[dict[str, Any]]:
    standby = pair.standby_settings
    return [
        dict(
            shards=shards,
            **pair.primary_settings,
            application_name=APP_PRIMARY,
            replicas=[dict(host=standby["host"], port=standby["port"], application_name=APP_STANDBY)],
        )
    ]


def _server_now(pair: ReplicaPair) -> Any:
    with pair.connect("primary") as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]


def _read_on(pair: ReplicaPair, which: str, since: Any, shard: int = SHARD, dbname: str = "postgres") -> int:
    """Sessions of our pools on ``which`` (database ``dbname``) whose last statement read ``shard``'s table after
    ``since``."""
    app = APP_PRIMARY if which == "primary" else APP_STANDBY
    with pair.connect(which) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND query_start > %s"
            " AND datname = %s AND ((query LIKE %s AND query NOT LIKE '%%INSERT%%' AND query NOT LIKE '%%UPDATE%%')"
            " OR query IN ('COMMIT', 'ROLLBACK', 'DEALLOCATE ALL'))",  # a query stream's page ends with its
            # COMMIT (BEGIN; SELECT ...; COMMIT), and psycopg's DEALLOCATE ALL after a rollback of a transaction
            # that prepared statements
            (app, since, dbname, f"%shard{shard:04d}%"),
        ).fetchone()
    return int(row[0]) if row else 0


def _manual(db: Datastore | AsyncDatastore) -> None:
    """No background refresh: positions are read by ``refresh_replicas()`` only."""
    assert db._router is not None
    db._router.interval = 3600.0


@pytest.fixture
def replica_db(pg_replica_pair: ReplicaPair) -> Iterator[Datastore]:
    with Datastore(_servers(pg_replica_pair), backend="jsonb", read_from="replica", max_replica_lag=1.0) as db:
        db.provision()
        pg_replica_pair.wait_replayed()
        _manual(db)
        db.refresh_replicas()
        yield db


def _where(pair: ReplicaPair, since: Any) -> str:
    on_standby, on_primary = _read_on(pair, "standby", since), _read_on(pair, "primary", since)
    if (on_standby, on_primary) not in ((1, 0), (0, 1)):
        sessions = {}
        for which in ("standby", "primary"):
            with pair.connect(which) as conn:
                sessions[which] = conn.execute(
                    "SELECT application_name, query_start > %s, left(query, 60) FROM pg_stat_activity"
                    " WHERE application_name LIKE 'hv-test-%%'",
                    (since,),
                ).fetchall()
        raise AssertionError(f"{(on_standby, on_primary)}: {sessions}")
    return "standby" if on_standby else "primary"


def test_reads_go_to_a_fresh_standby_and_writes_to_the_primary(
    pg_replica_pair: ReplicaPair, replica_db: Datastore
) -> None:
    pair, db = pg_replica_pair, replica_db
    with db.timeline():
        key = db.put(SHARD, 1, v="a")
    pair.wait_replayed()
    db.refresh_replicas()
    since = _server_now(pair)
    record = db.get(key)
    assert record is not None and record.data == {"v": "a"}
    assert _where(pair, since) == "standby"
    since = _server_now(pair)
    assert db.get(key, read_from="primary") is not None
    assert _where(pair, since) == "primary"
    since = _server_now(pair)
    assert set(db.get_many([key])) == {key}
    assert _where(pair, since) == "standby"
    since = _server_now(pair)
    assert [r.key for r in db.query(kind=1, shards=[SHARD], since=key)] == [key]
    assert _where(pair, since) == "standby"
    status = db.status()[0]
    assert [r["state"] for r in status["replicas"]] == ["in use"]
    assert status["replicas"][0]["reads"] >= 3


def test_paused_replay_past_the_bound_sends_reads_to_the_primary(
    pg_replica_pair: ReplicaPair, replica_db: Datastore
) -> None:
    pair, db = pg_replica_pair, replica_db
    with db.timeline():
        old = db.put(SHARD, 1, v="old")
    pair.wait_replayed()
    db.refresh_replicas()
    pair.pause_replay()
    with db.timeline():
        new = db.put(SHARD, 1, v="new")  # the standby does not have it
    db.refresh_replicas()
    since = _server_now(pair)
    assert db.get(new) is None  # within the bound: the standby may be this stale
    assert _where(pair, since) == "standby"
    time.sleep(1.2)
    db.refresh_replicas()
    since = _server_now(pair)
    assert db.get(new) is not None  # past the bound: the primary
    assert _where(pair, since) == "primary"
    assert set(db.get_many([old, new])) == {old, new}
    assert [r.key for r in db.query(kind=1, shards=[SHARD], since=old)] == [old, new]
    status = db.status()[0]
    assert status["replicas"][0]["state"] == "lagging"
    assert status["replica_reads_on_primary"] >= 3
    pair.resume_replay()
    pair.wait_replayed()
    db.refresh_replicas()
    since = _server_now(pair)
    assert db.get(new) is not None
    assert _where(pair, since) == "standby"


def test_a_stopped_standby_is_skipped_and_used_again_once_back(
    pg_replica_pair: ReplicaPair, replica_db: Datastore
) -> None:
    pair, db = pg_replica_pair, replica_db
    with db.timeline():
        key = db.put(SHARD, 1, v="a")
    pair.wait_replayed()
    db.refresh_replicas()
    assert db.get(key) is not None  # the standby's pool has a connection now
    pair.stop_standby()
    for _ in range(3):  # never an error while the primary is up
        assert db.get(key) is not None
        assert set(db.get_many([key])) == {key}
        assert [r.key for r in db.query(kind=1, shards=[SHARD], since=key)] == [key]
    db.refresh_replicas()
    assert db.status()[0]["replicas"][0]["state"] == "down"
    pair.start_standby()
    time.sleep(1.1)  # the retry time of a standby marked down
    db.refresh_replicas()
    since = _server_now(pair)
    assert db.get(key) is not None
    assert _where(pair, since) == "standby"


def _freeze(pair: ReplicaPair, sig: int) -> None:
    """Send ``sig`` (SIGSTOP / SIGCONT) to the standby's postmaster and its children: sockets open, no answers."""
    postmaster = int((pair.standby.data / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False).stdout
    pids = [int(p) for p in children.split()]
    for pid in [*pids, postmaster] if sig == signal.SIGSTOP else [postmaster, *pids]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def test_a_standby_that_stops_answering_fails_over_within_its_timeout(pg_replica_pair: ReplicaPair) -> None:
    pair = pg_replica_pair
    with Datastore(_servers(pair), backend="jsonb", read_from="replica", max_replica_lag=0.5) as db:
        db.provision()
        with db.timeline():
            key = db.put(SHARD, 1, v="a")
        pair.wait_replayed()
        _manual(db)
        db.refresh_replicas()
        assert db.get(key) is not None  # a pooled connection to the standby now exists
        db.refresh_replicas()
        _freeze(pair, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert db.get(key) is not None  # the standby's 2.5 s bound (5 × max_replica_lag), then the primary
            first = time.monotonic() - started
            assert db._router is not None
            assert db._router.describe(0)[0]["fallbacks"] == 1  # it was the standby's read that failed
            started = time.monotonic()
            assert db.get(key) is not None  # marked down: straight to the primary
            second = time.monotonic() - started
        finally:
            _freeze(pair, signal.SIGCONT)
    assert 2.0 < first < 20, first  # the standby's bound, not the datastore's 60 s operation_timeout
    assert second < 2.0, second


def test_a_query_stream_cut_by_its_standby_resumes_on_the_primary(
    pg_replica_pair: ReplicaPair, replica_db: Datastore
) -> None:
    pair, db = pg_replica_pair, replica_db
    with db.timeline():
        keys = db.put_many(SHARD, 7, [{"n": i} for i in range(3000)])
    pair.wait_replayed()
    db.refresh_replicas()
    seen: list[hvcore.Key] = []
    with db.timeline():
        for record in db.query(kind=7, shards=[SHARD], since=keys[0]):
            seen.append(record.key)
            if len(seen) == 150:  # past the first fetch: the rest comes from the standby's open cursor
                pair.stop_standby("immediate")
    assert seen == keys  # every row once, in key order
    assert db._router is not None and db._router.describe(0)[0]["state"] == "down"


def test_standby_reads_pools_and_fallbacks_are_in_the_metrics(
    pg_replica_pair: ReplicaPair, replica_db: Datastore
) -> None:
    from opentelemetry.sdk import metrics as sdk  # the dev extra's SDK: a missing one fails, never skips
    from opentelemetry.sdk.metrics import export

    from hvcore import metrics

    pair, db = pg_replica_pair, replica_db
    reader = export.InMemoryMetricReader()
    provider = sdk.MeterProvider(metric_readers=[reader])
    assert metrics.use(provider) is True
    try:
        with db.timeline():
            key = db.put(SHARD, 1, v="m")
        pair.wait_replayed()
        db.refresh_replicas()
        with db.timeline():
            assert db.get(key) is not None  # the standby
            assert set(db.get_many([key])) == {key}
            assert [r.key for r in db.query(kind=1, shards=[SHARD], since=key)] == [key]
        pair.pause_replay()
        with db.timeline():
            mine = db.put(SHARD, 1, v="mine")
            assert db.get(mine) is not None  # read-your-writes: the primary
        data = reader.get_metrics_data()
        assert data is not None
        points: dict[str, list[Any]] = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
    finally:
        metrics.use(None)
        provider.shutdown()
    standby_port = pair.standby_settings["port"]
    on_standby = {
        p.attributes["db.operation.name"]
        for p in points["db.client.operation.duration"]
        if p.attributes.get("server.port") == standby_port
    }
    assert on_standby == {"get", "get_many", "query"}
    pools = {p.attributes["db.client.connection.pool.name"] for p in points["db.client.connection.max"]}
    assert any(f":{standby_port}/" in name for name in pools), pools
    reasons = {p.attributes["hypervault.reason"]: p.value for p in points["hypervault.replica.fallbacks"]}
    assert reasons.get("read_your_writes", 0) >= 1, reasons


def test_read_your_writes_goes_to_the_primary_until_the_standby_replayed_the_write(
    pg_replica_pair: ReplicaPair, replica_db: Datastore
) -> None:
    pair, db = pg_replica_pair, replica_db
    pair.pause_replay()
    with db.timeline() as mine:
        key = db.put(SHARD, 1, v="mine")
        db.refresh_replicas()
        since = _server_now(pair)
        assert db.get(key) is not None  # my own write: from the primary although the standby is within the bound
        assert _where(pair, since) == "primary"
        assert db.update(key, v="mine2")
        assert db.get(key).data == {"v": "mine2"}  # type: ignore[union-attr]
    with db.timeline():
        since = _server_now(pair)
        assert db.get(key) is None  # someone else: the standby, stale within the bound
        assert _where(pair, since) == "standby"
    pair.resume_replay()
    pair.wait_replayed()
    db.refresh_replicas()
    with db.timeline(mine):
        since = _server_now(pair)
        assert db.get(key).data == {"v": "mine2"}  # type: ignore[union-attr]
        assert _where(pair, since) == "standby"  # replayed past my write: the standby again


def _count_position_reads(store: Any) -> list[int]:
    """Count the calls of ``store.wal_position()`` (a round trip each) from now on; the list holds the count."""
    calls = [0]
    read = store.wal_position

    def counted() -> Any:
        calls[0] += 1
        return read()

    store.wal_position = counted
    return calls


def test_read_your_writes_positions_ride_in_the_writes_own_exchange(
    pg_replica_pair: ReplicaPair, replica_db: Datastore
) -> None:
    db = replica_db
    primary: Any = db._stores[0]
    assert primary.track_wal is True  # a primary with a standby, read-your-writes on
    server = db._router.server_id(0)  # type: ignore[union-attr]
    _, before = primary.wal_position()
    reads = _count_position_reads(primary)
    with db.timeline() as tl:
        key = db.put(SHARD, 1, v="a")
        after_put = tl.need(SHARD, server)
        assert after_put is not None and after_put > before  # past the write's WAL, read after its commit
        assert db.update(key, v="b") and db.replace(key, v="c") and db.delete(key)
        after_delete = tl.need(SHARD, server)
        assert after_delete is not None and after_delete > after_put
        assert reads[0] == 0  # no round trip of their own
        _, now = primary.wal_position()
        assert after_delete <= now
        reads[0] = 0
        db.put_many(SHARD, 1, [{"v": "d"}])  # a COPY in its own transaction: the position is read after it
        assert reads[0] == 1 and (tl.need(SHARD, server) or 0) >= now

        primary._wal_gap()  # as after a write whose exchange was lost and settled by asking the server
        assert primary.written_position() is None
        reads[0] = 0
        db.put(SHARD, 1, v="e")  # the position is read after it, which covers the gap
        assert reads[0] == 1 and primary.written_position() is not None
        db.put(SHARD, 1, v="f")
        assert reads[0] == 1


def test_without_read_your_writes_or_standbys_writes_send_no_position_query(pg_replica_pair: ReplicaPair) -> None:
    pair = pg_replica_pair
    servers = [dict(shards="0-4", **pair.primary_settings)]
    for db in (
        Datastore(_servers(pair), backend="jsonb", read_from="replica", read_your_writes=False),
        Datastore(servers, backend="jsonb"),
    ):
        with db:
            db.provision()
            db.put(SHARD, 1, v="x")
            store: Any = db._stores[0]
            assert store.track_wal is False and store.written_position() is None


def test_writes_through_cursor_and_borrowed_connections_count_for_read_your_writes(
    pg_replica_pair: ReplicaPair, replica_db: Datastore
) -> None:
    pair, db = pg_replica_pair, replica_db
    pair.pause_replay()
    now_ms = int(time.time() * 1000)
    by_cursor, key = (hvcore.Key.from_parts(timestamp_ms=now_ms, shard_id=SHARD, added_id=n) for n in (1, 2))
    with db.timeline():
        with db.cursor(SHARD) as cur:
            cur.execute("INSERT INTO entities (id, kind, body) VALUES (%s, 1, '{}')", (by_cursor,))
        conn = db.get_connection(SHARD)
        conn.execute("INSERT INTO entities (id, kind, body) VALUES (%s, 1, '{}')", (key,))
        conn.commit()
        db.put_connection(conn)
        db.refresh_replicas()
        for written in (by_cursor, key):
            since = _server_now(pair)
            assert db.get(written) is not None  # my own writes: from the primary, the standby has not replayed them
            assert _where(pair, since) == "primary"
    with db.timeline():
        since = _server_now(pair)
        assert db.get(key) is None  # another timeline: the standby, within its bound
        assert _where(pair, since) == "standby"
    pair.resume_replay()


def test_writes_outside_a_timeline_block_pin_their_shard_for_the_whole_process(
    pg_replica_pair: ReplicaPair, replica_db: Datastore
) -> None:
    pair, db = pg_replica_pair, replica_db
    pair.pause_replay()
    key = db.put(SHARD, 1, v="x")
    db.refresh_replicas()
    assert db.get(key) is not None
    assert set(db.get_many([key])) == {key}
    assert [r.key for r in db.query(kind=1, shards=[SHARD], since=key)] == [key]


def test_read_your_writes_can_be_turned_off(pg_replica_pair: ReplicaPair) -> None:
    pair = pg_replica_pair
    with Datastore(
        _servers(pair), backend="jsonb", read_from="replica", max_replica_lag=60, read_your_writes=False
    ) as db:
        db.provision()
        pair.wait_replayed()
        _manual(db)
        db.refresh_replicas()
        pair.pause_replay()
        key = db.put(SHARD, 1, v="unseen")
        db.refresh_replicas()
        assert db.get(key) is None  # the standby, within its bound, without the write
        assert db.get(key, read_from="primary") is not None


def test_a_timeline_token_carries_read_your_writes_to_another_datastore(pg_replica_pair: ReplicaPair) -> None:
    pair = pg_replica_pair
    secret = "a secret of at least 16 bytes"
    with (
        Datastore(_servers(pair), backend="jsonb", read_from="replica", max_replica_lag=60) as db,
        Datastore(_servers(pair), backend="jsonb", read_from="replica", max_replica_lag=60) as other,
    ):
        db.provision()
        pair.wait_replayed()
        _manual(db)
        _manual(other)
        other.refresh_replicas()  # it knows the standby caught up before the write
        pair.pause_replay()
        with db.timeline() as tl:
            key = db.put(SHARD, 1, v="t")
        token = tl.token(secret=secret)
        assert len(token) < 80
        other.refresh_replicas()
        with other.timeline():
            assert other.get(key) is None  # without the token: the standby (paused, within 60 s)
        with other.timeline(Timeline.from_token(token, secret=secret)):
            assert other.get(key) is not None  # with it: the primary
        with pytest.raises(InvalidToken):
            Timeline.from_token(token, secret="another secret of 16 bytes")
        with pytest.raises(InvalidToken):
            Timeline.from_token(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1], secret=secret)


def test_no_read_is_staler_than_the_bound_while_replay_pauses_and_resumes(pg_replica_pair: ReplicaPair) -> None:
    pair = pg_replica_pair
    bound = 0.5
    with Datastore(_servers(pair), backend="jsonb", read_from="replica", max_replica_lag=bound) as db:
        db.provision()
        with db.timeline():
            key = db.put(SHARD, 1, n=0)
        pair.wait_replayed()
        committed: list[tuple[float, int]] = [(time.monotonic(), 0)]  # (update returned, value)
        stop = threading.Event()

        def writer() -> None:
            n = 0
            with db.timeline():  # the writer's own timeline: the reader's reads are not pinned by it
                while not stop.is_set():
                    n += 1
                    db.update(key, n=n)
                    committed.append((time.monotonic(), n))
                    time.sleep(0.01)

        thread = threading.Thread(target=writer)
        thread.start()
        reads = stale = 0
        try:
            deadline = time.monotonic() + 6.0
            paused_at = time.monotonic() + 1.0
            resumed = paused = False
            with db.timeline():
                while time.monotonic() < deadline:
                    now = time.monotonic()
                    if not paused and now > paused_at:
                        pair.pause_replay()
                        paused = True
                    elif paused and not resumed and now > paused_at + 2.5:
                        pair.resume_replay()
                        resumed = True
                    started = time.monotonic()
                    record = db.get(key)
                    assert record is not None
                    seen = record.data["n"]
                    # every value committed more than `bound` before the read started must be visible
                    must = max((v for at, v in list(committed) if at < started - bound), default=0)
                    reads += 1
                    stale += seen < must
                    time.sleep(0.005)
        finally:
            stop.set()
            thread.join()
            if pair.replay_paused():
                pair.resume_replay()
        served = db.status()[0]["replicas"][0]["reads"]
    assert stale == 0, f"{stale} of {reads} reads were staler than {bound} s"
    assert served > 10, f"the standby served only {served} of {reads} reads"


def test_config_file_replicas_and_hv_status(pg_replica_pair: ReplicaPair, tmp_path: Any) -> None:
    pair = pg_replica_pair
    primary, standby = pair.primary_settings, pair.standby_settings
    path = tmp_path / "hv.toml"
    path.write_text(
        f'backend = "jsonb"\nread_from = "replica"\nmax_replica_lag = 2.5\n\n'
        f'[[servers]]\nshards = "0-4"\nhost = "{primary["host"]}"\nport = {primary["port"]}\n'
        f'dbname = "{primary["dbname"]}"\nuser = "{primary["user"]}"\npassword = "s3cret-pw"\n\n'
        f'[[servers.replicas]]\nhost = "{standby["host"]}"\nport = {standby["port"]}\n',
        encoding="utf-8",
    )
    config = hvcore._config.load_config(path)
    assert config.read_from == "replica" and config.max_replica_lag == 2.5
    assert "s3cret-pw" not in repr(config)
    from io import StringIO

    from hvcore.cli import main

    out = StringIO()
    main(["init", "--config", str(path)], out)
    pair.wait_replayed()
    out = StringIO()
    code = main(["status", "--config", str(path)], out)
    text = out.getvalue()
    assert code == 0, text
    assert f":{standby['port']}/" in text and "in use" in text, text
    assert "s3cret-pw" not in text

    out = StringIO()  # --watch: the same tables again on the same datastore, the terminal cleared before each
    started = time.monotonic()
    code = main(["status", "--config", str(path), "--watch", "0.2", "--count", "3"], out)
    text = out.getvalue()
    assert code == 0, text
    assert text.count("\x1b[H\x1b[J") == 3 and text.count(f"hv status {path}") == 3
    assert text.count("in use") == 3 and time.monotonic() - started >= 0.4
    out = StringIO()
    assert main(["status", "--config", str(path), "--watch", "0.1", "--count", "2", "--json"], out) == 0
    assert "\x1b[" not in out.getvalue() and out.getvalue().count('"replicas"') == 2


def test_a_moved_shard_is_read_from_the_standby_of_its_new_server(pg_replica_pair: ReplicaPair) -> None:
    pair = pg_replica_pair
    moved, name = 2, f"hv_replica_move_{os.getpid()}_{time.monotonic_ns()}"
    names = [f"{name}_a", f"{name}_b"]  # two servers: two databases of the primary, both on its standby
    with pair.connect("primary") as conn:
        for dbname in names:
            conn.execute(f"CREATE DATABASE {dbname}")
    ranges = ("0-4", "4-8")
    servers = [{**_servers(pair, shards=shards)[0], "dbname": n} for shards, n in zip(ranges, names, strict=True)]
    try:
        with Datastore(servers, backend="jsonb", read_from="replica") as db:
            db.provision()
            with db.timeline():
                key = db.put(moved, 1, v="moving")
            db.move_shard(moved, 1)
            assert db.shard_map.server_for(moved) == 1
            pair.wait_replayed()
            _manual(db)
            db.refresh_replicas()
            since = _server_now(pair)
            with db.timeline():
                assert db.get(key).data == {"v": "moving"}  # type: ignore[union-attr]
            assert _read_on(pair, "standby", since, moved, dbname=names[1]) == 1
        with Datastore(servers, backend="jsonb", read_from="replica") as stale:  # never heard of the move
            _manual(stale)
            stale.refresh_replicas()
            with stale.timeline():
                assert stale.get(key).data == {"v": "moving"}  # type: ignore[union-attr]
            assert stale.shard_map.server_for(moved) == 1  # the standby's forwarding stub said where it went
    finally:
        with pair.connect("primary") as conn:
            for dbname in names:
                conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


# -- asyncio ---------------------------------------------------------------------------------------------------------


def test_async_reads_follow_the_same_rules(pg_replica_pair: ReplicaPair) -> None:
    pair = pg_replica_pair

    async def run() -> None:
        async with AsyncDatastore(_servers(pair), backend="jsonb", read_from="replica", max_replica_lag=1.0) as db:
            await db.provision()
            await asyncio.to_thread(pair.wait_replayed)
            _manual(db)
            with db.timeline():
                key = await db.put(SHARD, 1, v="a")
            await asyncio.to_thread(pair.wait_replayed)
            await db.refresh_replicas()
            since = await asyncio.to_thread(_server_now, pair)
            assert (await db.get(key)) is not None
            assert set(await db.get_many([key])) == {key}
            assert [r.key async for r in db.query(kind=1, shards=[SHARD], since=key)] == [key]
            assert await asyncio.to_thread(_read_on, pair, "standby", since) == 1
            await asyncio.to_thread(pair.pause_replay)
            with db.timeline():
                mine = await db.put(SHARD, 1, v="mine")
                assert (await db.get(mine)) is not None  # read-your-writes: the primary
            with db.timeline():
                assert (await db.get(mine)) is None  # another timeline: the standby, within the bound
            await asyncio.sleep(1.2)
            await db.refresh_replicas()
            with db.timeline():
                assert (await db.get(mine)) is not None  # past the bound: the primary
            await asyncio.to_thread(pair.resume_replay)
            await asyncio.to_thread(pair.stop_standby)
            with db.timeline():
                assert (await db.get(key)) is not None
                assert [r.key async for r in db.query(kind=1, shards=[SHARD], since=key)] == [key, mine]
            status = await db.status()
            assert status[0]["replicas"][0]["state"] in ("down", "lagging")

    asyncio.run(run())
