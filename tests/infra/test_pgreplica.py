"""The streaming-replica fixture: writes reach the standby, paused replay holds them, a stopped standby catches up."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import psycopg
import pytest
from fixtures.pgreplica import ReplicaLag, ReplicaPair

_tables = itertools.count()


def _new_table(pair: ReplicaPair) -> str:
    name = f"infra_replica_{next(_tables)}_{time.monotonic_ns()}"
    with pair.connect("primary") as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, note text)")
    return name


def _rows(pair: ReplicaPair, which: str, table: str) -> list[tuple[int, str]]:
    with pair.connect(which) as conn:
        return [(int(i), str(n)) for i, n in conn.execute(f"SELECT id, note FROM {table} ORDER BY id").fetchall()]


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_row_written_on_the_primary_shows_up_on_the_standby(pg_replica_pair: ReplicaPair) -> None:
    pair = pg_replica_pair
    assert pair.primary.port != pair.standby.port
    with pair.connect("standby") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    table = _new_table(pair)
    with pair.connect("primary") as conn:
        conn.execute(f"INSERT INTO {table} VALUES (1, 'hello')")
    pair.wait_replayed()
    assert _rows(pair, "standby", table) == [(1, "hello")]
    with pair.connect("standby") as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute(f"INSERT INTO {table} VALUES (2, 'refused')")


def test_paused_replay_hides_writes_until_resumed(pg_replica_pair: ReplicaPair) -> None:
    pair = pg_replica_pair
    table = _new_table(pair)
    pair.wait_replayed()
    pair.pause_replay()
    assert pair.replay_paused()
    with pair.connect("primary") as conn:
        conn.execute(f"INSERT INTO {table} VALUES (1, 'held back')")
    written = pair.primary_lsn()
    time.sleep(0.3)  # streamed by now, but not replayed
    assert _rows(pair, "standby", table) == []
    with pytest.raises(TimeoutError):
        pair.wait_replayed(written, timeout=0.2)
    lag = pair.lag()
    assert lag.bytes > 0
    assert lag.seconds is not None and lag.seconds >= 0.3
    pair.resume_replay()
    pair.wait_replayed(written)
    assert _rows(pair, "standby", table) == [(1, "held back")]
    assert _eventually(lambda: pair.lag() == ReplicaLag(0, 0.0))


def test_a_stopped_standby_catches_up_when_started(pg_replica_pair: ReplicaPair) -> None:
    pair = pg_replica_pair
    table = _new_table(pair)
    pair.stop_standby()
    with pytest.raises(psycopg.OperationalError):
        pair.connect("standby")
    with pair.connect("primary") as conn:
        conn.execute(f"INSERT INTO {table} SELECT g, 'while down' FROM generate_series(1, 1000) g")
    written = pair.primary_lsn()
    pair.start_standby()
    pair.wait_replayed(written)
    assert len(_rows(pair, "standby", table)) == 1000


def test_leaves_replay_paused(pg_replica_pair: ReplicaPair) -> None:
    """Leaves the shared pair dirty on purpose: the next test must find replay resumed."""
    pg_replica_pair.pause_replay()
    assert pg_replica_pair.replay_paused()


def test_finds_replay_resumed_and_leaves_the_standby_stopped(pg_replica_pair: ReplicaPair) -> None:
    assert not pg_replica_pair.replay_paused()
    pg_replica_pair.stop_standby("immediate")


def test_finds_the_standby_running(pg_replica_pair: ReplicaPair) -> None:
    assert pg_replica_pair.standby.running
    table = _new_table(pg_replica_pair)
    pg_replica_pair.wait_replayed(timeout=5)
    assert _rows(pg_replica_pair, "standby", table) == []
