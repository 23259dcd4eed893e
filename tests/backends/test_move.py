"""Moving a shard between real PostgreSQL servers online: under load, interrupted at every phase, killed, stale maps."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hvcore
from hvbackend_postgres._move import shard_state
from hvcore import cli as _cli
from hvcore._placement import MoveReport
from hvcore.errors import MoveError

pytestmark = pytest.mark.postgres

SHARDS = ("0-8", "8-16")
MOVED = 3  # the shard the tests move from server 0 to server 1
_dbs = itertools.count()


class MoveSetup:
    """Two fresh databases (servers 0 and 1 of the suite's cluster) provisioned for shards 0-8 and 8-16."""

    def __init__(self, cluster: Any, backend: str) -> None:
        self.backend = backend
        self.servers: list[dict[str, Any]] = []
        name = f"hvmove_{os.getpid()}_{next(_dbs)}"
        for index, shards in enumerate(SHARDS):
            settings = cluster.settings(index)
            with psycopg.connect(**settings, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            self.servers.append({**settings, "dbname": name, "shards": shards})
        self.made: list[hvcore.Datastore] = []
        with self.datastore() as store:
            store.provision()

    def datastore(self, **options: Any) -> hvcore.Datastore:
        """A new Datastore from the original config (a process that never heard of any move)."""
        store = hvcore.Datastore([dict(s) for s in self.servers], backend=self.backend, **options)
        self.made.append(store)
        return store

    def conn(self, index: int) -> psycopg.Connection[Any]:
        """A direct autocommit connection to server ``index``'s database."""
        settings = {k: v for k, v in self.servers[index].items() if k != "shards"}
        return psycopg.connect(**settings, autocommit=True)

    def states(self, shard: int = MOVED) -> list[str]:
        """``live``/``stub``/``none`` of the shard on each server."""
        out = []
        for index in range(len(self.servers)):
            with self.conn(index) as conn:
                out.append(shard_state(conn, shard))
        return out

    def rows(self, index: int, schema: str) -> dict[int, tuple[int, str]]:
        """id → (kind, body as text) of one table, read directly."""
        with self.conn(index) as conn:
            found = conn.execute(f"SELECT id, kind, body::text FROM {schema}.entities").fetchall()
        return {int(r[0]): (int(r[1]), str(r[2])) for r in found}

    def config_file(self, directory: Path) -> Path:
        """A TOML config of the two servers (for the CLI)."""
        lines = [f'backend = "{self.backend}"']
        for server in self.servers:
            lines.append("[[servers]]")
            lines += [f"{k} = {v!r}".replace("'", '"') for k, v in server.items()]
        path = directory / "hv.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def close(self) -> None:
        for store in self.made:
            store.close()


@pytest.fixture(params=["jsonb", "hstore"])
def setup(request: pytest.FixtureRequest, pg_cluster: Any) -> Iterator[MoveSetup]:
    made = MoveSetup(pg_cluster, request.param)
    yield made
    made.close()


@pytest.fixture
def jsonb_setup(pg_cluster: Any) -> Iterator[MoveSetup]:
    made = MoveSetup(pg_cluster, "jsonb")
    yield made
    made.close()


def fill(store: hvcore.Datastore, shard: int, count: int) -> dict[int, dict[str, Any]]:
    """Write ``count`` rows into ``shard``: key → body."""
    bodies = [{"n": str(i), "tag": f"t{i % 7}"} for i in range(count)]
    written: dict[int, dict[str, Any]] = {}
    for start in range(0, count, 5000):
        part = bodies[start : start + 5000]
        for key, body in zip(store.put_many(shard, 1, part), part, strict=True):
            written[int(key)] = body
    return written


def test_move_keeps_every_row_and_forwards_stale_processes(setup: MoveSetup) -> None:
    mover = setup.datastore()
    stale = setup.datastore()  # opened before the move, never told about it
    written = fill(mover, MOVED, 500)
    other = fill(mover, 4, 10)
    phases: list[str] = []
    report = mover.move_shard(MOVED, 1, progress=lambda phase, done, total: phases.append(phase))
    assert isinstance(report, MoveReport)
    assert report.rows == 500 and report.version == 1
    assert [p for p, _ in itertools.groupby(phases)] == ["prepare", "copy", "catchup", "fence", "verify", "switch"]
    assert setup.states() == ["stub", "live"]
    assert mover.shard_map.server_for(MOVED) == 1
    assert setup.rows(1, "shard0003") == setup.rows(0, "hv_src_0003")
    # the stale process: reads, writes, updates and deletes are refused by the old server and follow the move
    key = next(iter(written))
    record = stale.get(key)
    assert record is not None and record.data == written[key]
    assert stale.shard_map.server_for(MOVED) == 1 and stale.placement_version(MOVED) == 1
    fresh = setup.datastore()
    new_key = fresh.put(MOVED, 2, late="yes")
    assert new_key in setup.rows(1, "shard0003")
    assert fresh.update(key, extra="1") and fresh.delete(next(iter(list(written)[1:])))
    assert len(setup.datastore().get_many(list(written))) == 499
    # other shards did not move
    assert all(mover.get(k) is not None for k in other) and mover.shard_map.server_for(4) == 0
    # a new process learns the placement from PostgreSQL without being refused first
    assert setup.datastore().reload_placement().server_for(MOVED) == 1
    # moving it back (a chain) and dropping the old copies
    back = mover.move_shard(MOVED, 0, drop_source=True)
    assert back.version == 2 and back.dropped_source
    assert setup.states() == ["live", "stub"]
    assert stale.get(new_key) is not None  # stale map at v1 pointed at server 1: forwarded again to 0
    assert stale.shard_map.server_for(MOVED) == 0


def test_stale_write_blocked_by_the_fence_is_refused_then_lands_on_the_target(jsonb_setup: MoveSetup) -> None:
    setup = jsonb_setup
    mover = setup.datastore()
    stale = setup.datastore()
    fill(mover, MOVED, 100)
    landed: list[int] = []

    def during(phase: str, done: int, total: int) -> None:
        if phase == "verify" and done == 0:  # writes to the shard wait on the fence right now
            thread = threading.Thread(target=lambda: landed.append(int(stale.put(MOVED, 1, late="1"))))
            thread.start()
            time.sleep(0.2)
            assert thread.is_alive(), "the write was not held by the fence"
            threads.append(thread)

    threads: list[threading.Thread] = []
    mover.move_shard(MOVED, 1, progress=during)
    threads[0].join(10)
    assert len(landed) == 1 and landed[0] in setup.rows(1, "shard0003")
    assert landed[0] not in setup.rows(0, "hv_src_0003")


class Writers:
    """Threads writing (put, update, delete) through one Datastore until stopped, timing every write."""

    def __init__(self, store: hvcore.Datastore, shards: list[int]) -> None:
        self.store = store
        self.shards = shards
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.expected: dict[int, dict[int, dict[str, Any] | None]] = {s: {} for s in shards}
        self.timings: dict[int, list[tuple[float, float]]] = {s: [] for s in shards}  # (end time, seconds)
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self.run, args=(i, s), name=f"writer-{i}") for i, s in enumerate(shards)
        ]

    def run(self, index: int, shard: int) -> None:
        rng = random.Random(index)
        mine: list[int] = []
        counter = 0
        while not self.stop.is_set():
            counter += 1
            started = time.perf_counter()
            try:
                if mine and counter % 5 == 0:
                    key = rng.choice(mine)
                    body = {"n": f"u{counter}", "by": str(index)}
                    assert self.store.replace(key, **body)
                    result: tuple[int, dict[str, Any] | None] = (key, body)
                elif mine and counter % 7 == 0:
                    key = mine.pop(rng.randrange(len(mine)))
                    assert self.store.delete(key)
                    result = (key, None)
                else:
                    body = {"n": f"w{counter}", "by": str(index)}
                    key = int(self.store.put(shard, 2, **body))
                    mine.append(key)
                    result = (key, body)
            except BaseException as exc:
                self.errors.append(exc)
                return
            ended = time.perf_counter()
            with self.lock:
                self.expected[shard][result[0]] = result[1]
                self.timings[shard].append((ended, ended - started))

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


@pytest.mark.slow
def test_move_100k_rows_while_4_threads_write(jsonb_setup: MoveSetup) -> None:
    setup = jsonb_setup
    mover = setup.datastore()
    initial = fill(mover, MOVED, 100_000)
    writers = Writers(setup.datastore(pool_max=8), [MOVED, MOVED, 4, 12])  # shard 12 lives on the other server
    marks: dict[str, float] = {}

    def progress(phase: str, done: int, total: int) -> None:
        marks.setdefault(phase, time.perf_counter())
        if phase == "switch" and done == total:
            marks["switched"] = time.perf_counter()

    with writers:
        time.sleep(0.5)
        report = mover.move_shard(MOVED, 1, progress=progress)
        time.sleep(0.5)
    assert not writers.errors, writers.errors[:3]
    # 0 lost writes, every row identical on the target
    expected = {k: v for k, v in initial.items()}
    for key, body in writers.expected[MOVED].items():
        if body is None:
            expected.pop(key, None)
        else:
            expected[key] = body
    with setup.conn(1) as conn:
        target = {int(r[0]): r[1] for r in conn.execute("SELECT id, body FROM shard0003.entities")}
    assert target == expected
    assert report.rows >= 100_000 and len(target) > 100_000
    for shard in (4, 12):
        stored = mover.get_many(list(writers.expected[shard]))
        assert {int(k): r.data for k, r in stored.items()} == {
            k: v for k, v in writers.expected[shard].items() if v is not None
        }
    # the pause: the mover's own measure, and the slowest write each shard saw
    fence_start, fence_end = marks["fence"], marks["switched"]
    slowest = {s: max(t for _, t in writers.timings[s]) for s in (MOVED, 4, 12)}
    during_fence = {s: sum(1 for end, _ in writers.timings[s] if fence_start <= end <= fence_end) for s in (4, 12)}
    print(
        f"\nmove of {report.rows:,} rows: copy {report.copy_seconds:.2f} s, {report.catchup_rounds} catch-up rounds "
        f"({report.catchup_rows:,} changes), write pause {report.pause_seconds * 1000:.0f} ms "
        f"(fence attempts {report.fence_attempts}), total {report.seconds:.2f} s; slowest write: shard {MOVED} "
        f"{slowest[MOVED] * 1000:.0f} ms, shard 4 {slowest[4] * 1000:.0f} ms, shard 12 {slowest[12] * 1000:.0f} ms; "
        f"writes to other shards during the fence: {during_fence}; {'; '.join(report.notes)}; writes: "
        + ", ".join(f"shard {s} {len(t):,}" for s, t in writers.timings.items())
    )
    assert report.pause_seconds <= 1.0
    assert slowest[MOVED] <= 2.0
    # other shards never paused: they kept completing writes while the moved shard was fenced
    if fence_end - fence_start > 0.05:
        assert during_fence[4] > 0 and during_fence[12] > 0


def test_cli_move_plan_export_status(
    jsonb_setup: MoveSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = jsonb_setup
    store = setup.datastore()
    fill(store, MOVED, 300)
    fill(store, 5, 200)
    fill(store, 9, 10)
    config = str(setup.config_file(tmp_path))
    assert _cli.main(["shard", "plan", "--servers", "2", "--config", config, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [m["shard"] for m in plan["moves"]] == [5]  # 510 vs 0 rows: shard 5 (200) comes closest to half the gap
    assert _cli.main(["shard", "plan", "--servers", "3", "--config", config]) == 0
    assert "new server #2" in capsys.readouterr().out
    assert _cli.main(["shard", "move", str(MOVED), "--to", "1", "--config", config, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 300 and report["shards_per_server"] == ["0-3,4-8", "3-4,8-16"]
    assert _cli.main(["status", "--config", config, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [s["rows"] for s in status] == [200, 310] and status[1]["shards"] == "3-4,8-16"
    assert _cli.main(["shard", "export", "--format", "json", "--config", config]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["version"] == 1 and exported["shards"][str(MOVED)] == {"schema": "shard0003", "server": 1}
    assert _cli.main(["shard", "export", "--format", "citus", "--config", config]) == 0
    assert "SELECT citus_schema_move('shard0003', '127.0.0.1'," in capsys.readouterr().out
    assert _cli.main(["shard", "export", "--format", "pgdog", "--config", config]) == 0
    pgdog = tomllib.loads(capsys.readouterr().out)
    assert {"database": "hypervault", "name": "shard0003", "shard": 1} in pgdog["sharded_schemas"]
    assert len(pgdog["databases"]) == 2
    assert _cli.main(["shard", "move", str(MOVED), "--rollback", "--config", config]) == 2
    assert "nothing to roll back" in capsys.readouterr().err
    assert _cli.main(["shard", "move", str(MOVED), "--to", "1", "--config", config]) == 0  # already there
    said = capsys.readouterr().out
    assert said.startswith(f"shard {MOVED} is already on ") and "nothing to move" in said and "copied" not in said


class Boom(Exception):
    """The injected interruption."""


BOUNDARIES = [
    ("prepare", 0),
    ("prepare", 1),
    ("copy", 0),
    ("catchup", 0),
    ("fence", 0),
    ("fence", 1),  # under the lock
    ("verify", 1),
    ("switch", 0),  # source DDL not done yet
    ("switch", 1),  # the target committed its switch, the source did not
    ("switch", 2),  # switched
    ("drop", 0),
]


def served_by(setup: MoveSetup, written: dict[int, dict[str, Any]]) -> int:
    """The server a process with the original config reaches for the shard: every row readable, writes land there."""
    store = setup.datastore()
    found = store.get_many(list(written))
    assert {int(k): r.data for k, r in found.items()} == written
    key = store.put(MOVED, 1, probe="1")
    written[int(key)] = {"probe": "1"}
    index = store.shard_map.server_for(MOVED)
    schema = "shard0003"
    assert int(key) in setup.rows(index, schema)
    assert store.get(key) is not None
    return index


@pytest.mark.parametrize("boundary", BOUNDARIES, ids=[f"{p}-{d}" for p, d in BOUNDARIES])
@pytest.mark.parametrize("then", ["resume", "rollback"])
def test_interrupted_at_each_phase_serves_from_one_server_and_resumes_or_rolls_back(
    jsonb_setup: MoveSetup, boundary: tuple[str, int], then: str
) -> None:
    setup = jsonb_setup
    mover = setup.datastore()
    written = fill(mover, MOVED, 300)

    def interrupt(phase: str, done: int, total: int) -> None:
        if (phase, done) == boundary:
            raise Boom(f"{phase} {done}/{total}")

    with pytest.raises(Boom):
        mover.move_shard(MOVED, 1, drop_source=True, progress=interrupt)
    switched = boundary in (("switch", 2), ("drop", 0))
    states = setup.states()
    if switched:
        assert states == ["stub", "live"]
    elif boundary == ("switch", 1):
        assert states == ["live", "live"]  # the target's copy exists but nothing routes to it
    else:
        assert states == ["live", "none"]
    assert served_by(setup, written) == (1 if switched else 0)
    if then == "rollback":
        if switched:
            with pytest.raises(MoveError, match=r"move the shard back|nothing to roll back"):
                setup.datastore().rollback_move(MOVED)
            return
        assert "rolled back" in setup.datastore().rollback_move(MOVED)
        assert setup.states() == ["live", "none"]
        with setup.conn(0) as conn:
            assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'hv_%'").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'hv_src%'").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM hypervault.moves").fetchone() == (0,)
        with setup.conn(1) as conn:
            assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'hv_dst%'").fetchone() == (0,)
        assert served_by(setup, written) == 0
        return
    report = setup.datastore().move_shard(MOVED, 1, drop_source=True)
    assert report.dropped_source
    if not switched:
        assert report.resumed_from is not None
    assert setup.states() == ["stub", "live"]
    with setup.conn(0) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'hv_%'").fetchone() == (0,)
    assert served_by(setup, written) == 1
    assert set(setup.rows(1, "shard0003")) == set(written)


@pytest.mark.slow
def test_killed_cli_move_leaves_one_server_and_resumes(jsonb_setup: MoveSetup, tmp_path: Path) -> None:
    setup = jsonb_setup
    written = fill(setup.datastore(), MOVED, 100_000)
    config = str(setup.config_file(tmp_path))
    command = [sys.executable, "-m", "hvcore.cli", "shard", "move", str(MOVED), "--to", "1", "--config", config]
    for phase in ("copy", "copy"):  # killed during the bulk copy, then again during the resumed one
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        seen = None
        while time.monotonic() < deadline and proc.poll() is None:
            with setup.conn(0) as conn, contextlib.suppress(psycopg.errors.UndefinedTable):
                row = conn.execute("SELECT phase FROM hypervault.moves").fetchone()
                seen = row[0] if row else None
            if seen == phase:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the move ended before phase {phase}: {proc.communicate()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        assert setup.states() == ["live", "none"]
        assert served_by(setup, written) == 0
    state = setup.datastore().move_state(MOVED)
    assert state is not None and state["target"] == setup.datastore().servers[1].label
    resume = [sys.executable, "-m", "hvcore.cli", "shard", "move", str(MOVED), "--resume", "--drop-source"]
    done = subprocess.run([*resume, "--config", config, "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["resumed_from"] == "copy"
    assert setup.states() == ["stub", "live"]
    assert served_by(setup, written) == 1
    assert set(setup.rows(1, "shard0003")) == set(written)


def test_async_datastore_moves_a_shard_and_routes_there(jsonb_setup: MoveSetup) -> None:
    import asyncio

    async def scenario() -> tuple[MoveReport, list[str], hvcore.Record | None, int]:
        async with hvcore.AsyncDatastore([dict(s) for s in jsonb_setup.servers], backend="jsonb") as db:
            key = await db.put(MOVED, 1, before="move")
            report = await db.move_shard(MOVED, 1)
            after = await db.put(MOVED, 1, after="move")
            return report, jsonb_setup.states(), await db.get(key), db.shard_map.server_for(after.shard_id)

    report, states, record, server = asyncio.run(scenario())
    assert report.rows == 1 and states == ["stub", "live"]
    assert record is not None and record.data == {"before": "move"}
    assert server == 1


def test_provision_with_the_old_config_after_a_move(jsonb_setup: MoveSetup) -> None:
    with jsonb_setup.datastore() as mover:
        key = mover.put(MOVED, 1, a="b")
        mover.move_shard(MOVED, 1)
    with jsonb_setup.datastore() as stale:  # the config still says shard 3 is on server 0
        reports = stale.provision()
        assert sum(r.created for r in reports) == 0
        assert stale.get(key) is not None
    assert jsonb_setup.states() == ["stub", "live"]


def test_status_with_the_old_config_after_a_move_counts_the_other_shards(jsonb_setup: MoveSetup) -> None:
    """The moved shard's forwarding view raised ShardMoved while counting rows: the old server, up and serving its
    other shards, was shown unreachable."""
    with jsonb_setup.datastore() as mover:
        mover.put(MOVED, 1, a="moved")
        mover.put(2, 1, a="stays")
        mover.move_shard(MOVED, 1)
    with jsonb_setup.datastore() as stale:  # the config still says shard 3 is on server 0
        first = stale.status()[0]
        assert first["reachable"] is True, first
        assert first["rows_per_shard"].get(2) == 1 and MOVED not in first["rows_per_shard"]


def test_a_stale_query_follows_the_move(jsonb_setup: MoveSetup) -> None:
    with jsonb_setup.datastore() as stale, jsonb_setup.datastore() as mover:
        keys = [*stale.put_many(MOVED, 1, [{"n": str(i)} for i in range(1200)]), stale.put(12, 1, n="other")]
        stream = stale.query(shards=[MOVED, 12])
        first = next(stream)  # an open stream holds no connection or lock between its round trips (pages by key)
        mover.move_shard(MOVED, 1)  # so the move goes ahead under it
        rest = [r.key for r in stream]  # and the open stream follows it: resumed after the last key it yielded
        assert [first.key, *rest] == sorted(keys)
        assert [r.key for r in stale.query(shards=[MOVED, 12])] == sorted(keys)  # the stale map is followed
        assert [r.key for r in stale.query(shards=[MOVED], limit=5)] == keys[:5]
        assert stale.shard_map.server_for(MOVED) == 1


def test_a_stale_async_datastore_follows_the_move(jsonb_setup: MoveSetup) -> None:
    import asyncio

    async def scenario() -> None:
        servers = [dict(s) for s in jsonb_setup.servers]
        async with hvcore.AsyncDatastore(servers, backend="jsonb") as stale:
            key = await stale.put(MOVED, 1, n="before")
            with jsonb_setup.datastore() as mover:
                mover.move_shard(MOVED, 1)
            assert [r.key async for r in stale.query(shards=[MOVED])] == [key]  # the stale map is followed
            assert (await stale.get(key)).data == {"n": "before"}  # type: ignore[union-attr]
            assert stale.shard_map.server_for(MOVED) == 1 and stale.placement_version(MOVED) >= 1
            after = await stale.put(MOVED, 1, n="after")
            assert await stale.update(after, extra="x") is True
            assert set(await stale.get_many([key, after])) == {key, after}
            assert await stale.delete(key) is True

    asyncio.run(scenario())
    with jsonb_setup.conn(1) as conn:
        rows = conn.execute(f"SELECT body->>'n' FROM shard{MOVED:04d}.entities").fetchall()
    assert rows == [("after",)]


def test_an_interrupted_bulk_copy_resumes_after_its_last_committed_chunk(
    jsonb_setup: MoveSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of the bulk copy commit one by one: a resume copies only the rest; a row written meanwhile with an
    older key than the copy had reached is caught up from the change log."""
    from hvbackend_postgres import _move

    monkeypatch.setattr(_move, "COPY_CHUNK", 100)
    setup = jsonb_setup
    mover = setup.datastore()
    written = fill(mover, MOVED, 350)
    old_key = hvcore.Key.from_parts(timestamp_ms=1_704_067_200_001, shard_id=MOVED, added_id=5)  # below every key

    def interrupt(phase: str, done: int, total: int) -> None:
        if phase == "copy" and done >= 150:  # inside the second chunk: the first is committed on the target
            mover.put_many(MOVED, 1, [{"late": "1"}])
            raise Boom(f"{phase} {done}/{total}")

    with pytest.raises(Boom):
        mover.move_shard(MOVED, 1, progress=interrupt)
    with setup.conn(1) as conn:
        assert conn.execute("SELECT count(*) FROM hv_dst_0003.entities").fetchone() == (100,)
    with setup.conn(0) as conn:  # a row with a key the copy has already passed, written before the resume
        conn.execute(
            "INSERT INTO shard0003.entities (id, kind, body) VALUES (%s, 1, %s)", (int(old_key), '{"old": "1"}')
        )
    report = setup.datastore().move_shard(MOVED, 1)
    assert report.resumed_from == "copy"
    assert "the bulk copy resumed after 100 rows already on the target" in report.notes
    assert setup.states() == ["stub", "live"]
    target = setup.rows(1, "shard0003")
    assert set(written) < set(target) and int(old_key) in target
    assert len(target) == 350 + 1 + 1  # the fill, the late put, the old-key row
    assert set(target) == set(setup.rows(0, "hv_src_0003"))


def test_a_move_interrupted_after_its_copy_resumes_at_the_catch_up(jsonb_setup: MoveSetup) -> None:
    setup = jsonb_setup
    mover = setup.datastore()
    written = fill(mover, MOVED, 200)

    def interrupt(phase: str, done: int, total: int) -> None:
        if phase == "catchup":
            raise Boom(phase)

    with pytest.raises(Boom):
        mover.move_shard(MOVED, 1, progress=interrupt)
    more = fill(mover, MOVED, 20)  # captured by the change log while nothing runs
    report = setup.datastore().move_shard(MOVED, 1)
    assert report.resumed_from == "catchup" and report.rows == 0
    assert "the bulk copy was complete: resumed at the catch-up" in report.notes
    assert report.catchup_rows >= 20
    assert set(setup.rows(1, "shard0003")) == set(written) | set(more)
