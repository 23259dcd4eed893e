"""The pure part of read replicas: settings checks, the lag bound by WAL position, timelines and their tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hvcore
from hvcore import ConfigError, Datastore, InvalidToken, Timeline
from hvcore._config import DatastoreConfig, redact
from hvcore._replicas import PIN, TOKEN_MAX_CHARS, LagTracker, replica_settings, settle_lsn, split_replicas

PRIMARY = dict(shards="0-4", host="db1", port=5432, dbname="app", user="u", password="pw-primary")


# -- settings -------------------------------------------------------------------------------------------------------


def test_a_replica_inherits_the_servers_settings_but_host_and_port() -> None:
    assert replica_settings(PRIMARY, dict(host="db1r", port=5433)) == dict(
        dbname="app", user="u", password="pw-primary", host="db1r", port=5433
    )
    assert replica_settings(PRIMARY, dict(conninfo="host=x")) == dict(conninfo="host=x")
    primaries, standbys = split_replicas([{**PRIMARY, "replicas": [dict(host="r1"), dict(host="r2", port=6)]}])
    assert "replicas" not in primaries[0]
    assert [s["host"] for s in standbys[0]] == ["r1", "r2"]


@pytest.mark.parametrize(
    ("replicas", "words"),
    [
        ("db2", "must be a list of dicts"),
        (dict(host="db2"), "must be a list of dicts"),
        ([["db2"]], "replicas[0] must be a dict"),
        ([dict(host="db2", shards="0-4")], "has no shards of its own"),
        ([dict(host="db2", replicas=[])], "has no replicas of its own"),
        ([{}], "replicas[0] is empty"),
        ([{1: "x"}], "not a string"),
    ],
)
def test_bad_replica_lists_are_config_errors_before_any_io(replicas: Any, words: str) -> None:
    with pytest.raises(ConfigError, match="server #0") as info:
        Datastore([{**PRIMARY, "replicas": replicas}], backend="memory")
    assert words in str(info.value)
    assert "pw-primary" not in str(info.value)


def test_a_replica_setting_libpq_refuses_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        Datastore([{**PRIMARY, "replicas": [dict(host="r", sslmode="bogus", password="pw-replica")]}])
    assert "sslmode" in str(info.value) and "pw-replica" not in str(info.value)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (dict(read_from="standby"), "read_from must be 'primary' or 'replica'"),
        (dict(read_from=None), "read_from must be"),
        (dict(max_replica_lag=0), "max_replica_lag must be"),
        (dict(max_replica_lag=float("nan")), "max_replica_lag must be"),
        (dict(max_replica_lag=True), "max_replica_lag must be"),
        (dict(max_replica_lag="1"), "max_replica_lag must be"),
        (dict(read_your_writes=1), "read_your_writes must be True or False"),
    ],
)
def test_bad_read_options_are_config_errors(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Datastore([PRIMARY], backend="memory", **options)


def test_a_bad_read_from_per_call_is_a_config_error() -> None:
    with Datastore([PRIMARY], backend="memory") as db:
        key = db.put(1, 1, a="b")
        with pytest.raises(ConfigError, match="read_from"):
            db.get(key, read_from="secondary")
        with pytest.raises(ConfigError, match="read_from"):
            db.get_many([key], read_from="secondary")
        with pytest.raises(ConfigError, match="read_from"):
            db.query(read_from="secondary")


def test_reprs_and_redaction_hide_replica_passwords() -> None:
    server = {**PRIMARY, "replicas": [dict(host="r", password="pw-replica"), dict(conninfo="postgresql://u:pw2@r/db")]}
    config = DatastoreConfig(servers=(server,), backend="memory")
    text = repr(config) + repr(redact(server))
    assert "pw-replica" not in text and "pw2" not in text and "pw-primary" not in text


def test_the_memory_backend_reads_from_its_primaries_whatever_read_from_says() -> None:
    servers = [{**PRIMARY, "replicas": [dict(host="r1", port=5433)]}]
    with Datastore(servers, backend="memory", read_from="replica") as db:
        key = db.put(1, 1, a="b")
        assert db.get(key) is not None
        assert set(db.get_many([key], read_from="replica")) == {key}
        assert [r.key for r in db.query(read_from="replica")] == [key]
        assert "replicas" not in db.status()[0]


def test_config_file_options(tmp_path: Any) -> None:
    path = tmp_path / "hv.toml"
    path.write_text(
        'read_from = "replica"\nmax_replica_lag = 0.5\n[[servers]]\nshards = "0-4"\nhost = "db1"\n'
        '[[servers.replicas]]\nhost = "db1r"\n[[servers.replicas]]\nhost = "db1s"\nport = 6000\n',
        encoding="utf-8",
    )
    config = hvcore._config.load_config(path)
    assert config.read_from == "replica" and config.max_replica_lag == 0.5
    assert config.servers[0]["replicas"] == [{"host": "db1r"}, {"host": "db1s", "port": 6000}]
    with Datastore.from_config(path, backend="memory") as db:
        assert db.read_from == "replica" and db.max_replica_lag == 0.5
    path.write_text('read_from = 1\n[[servers]]\nshards = "0-4"\nreplicas = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        hvcore._config.load_config(path)
    assert "read_from" in str(info.value) and "replicas must be a list" in str(info.value)


# -- the lag bound ---------------------------------------------------------------------------------------------------


def test_a_standby_is_as_stale_as_the_newest_primary_position_it_replayed() -> None:
    tracker = LagTracker(["r"], max_lag=1.0)
    assert tracker.choose(0.0) is None  # nothing known: the primary
    tracker.add_primary(10.0, 100)
    tracker.add_replica(0, 10.1, 99)
    assert tracker.staleness(0, 10.2) is None and tracker.choose(10.2) is None
    tracker.add_replica(0, 10.3, 100)
    assert tracker.staleness(0, 10.5) == pytest.approx(0.5)
    assert tracker.choose(10.5) == 0
    assert tracker.choose(11.01) is None  # nothing newer known: it ages out of the bound by itself
    tracker.add_primary(11.0, 100)  # an idle primary: the standby is still caught up
    assert tracker.choose(11.5) == 0
    tracker.add_primary(11.6, 500)  # writes it has not replayed
    assert tracker.choose(11.7) == 0 and tracker.choose(12.1) is None
    assert tracker.choose(11.7, need=500) is None  # read-your-writes past what it replayed
    tracker.mark_down(0, 11.7, "ServerUnavailable: down")
    assert tracker.choose(11.8) is None and tracker.describe(0, 11.8)["state"] == "down"


def test_a_standby_replaced_by_one_further_behind_is_not_taken_for_fresh() -> None:
    tracker = LagTracker(["r"], max_lag=1.0)
    tracker.add_primary(0.0, 100)
    tracker.add_replica(0, 0.1, 100)
    tracker.add_primary(0.5, 200)
    tracker.add_replica(0, 0.6, 50)  # the same address, a standby rebuilt from an older backup
    assert tracker.choose(0.7) is None


def test_a_long_bound_keeps_samples_over_the_whole_bound() -> None:
    tracker = LagTracker(["r"], max_lag=3600.0)
    tracker.add_primary(0.0, 0)
    tracker.add_replica(0, 0.0, 1000)
    for step in range(1, 8001):  # 2000 s of refreshes every 250 ms, the primary writing all along
        tracker.add_primary(step * 0.25, 1000 + step)
    staleness = tracker.staleness(0, 2000.0)
    assert staleness is not None and 1990 < staleness <= 2000
    assert tracker.choose(2000.0) == 0  # within the hour


def test_round_robin_over_usable_standbys() -> None:
    tracker = LagTracker(["a", "b", "c"], max_lag=1.0)
    tracker.add_primary(0.0, 10)
    for index, lsn in enumerate((10, 10, 5)):
        tracker.add_replica(index, 0.1, lsn)
    assert [tracker.choose(0.2) for _ in range(4)] == [0, 1, 0, 1]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["primary", "replica", "read"]), st.floats(0.0, 0.5), st.integers(0, 50)),
        max_size=60,
    ),
    st.floats(0.05, 2.0),
)
def test_no_standby_is_chosen_staler_than_the_bound(steps: list[tuple[str, float, int]], max_lag: float) -> None:
    """Model: the primary's position grows with time; a standby replays some prefix. A chosen standby must hold
    every position the primary had at ``now - max_lag`` or earlier."""
    tracker = LagTracker(["r"], max_lag=max_lag)
    now, primary, replayed = 0.0, 0, 0
    history: list[tuple[float, int]] = [(0.0, 0)]  # (time, primary position from then on)
    for action, dt, amount in steps:
        now += dt
        if action == "primary":
            primary += amount
            history.append((now, primary))
            tracker.add_primary(now, primary)
        elif action == "replica":
            replayed = min(replayed + amount, primary)
            tracker.add_replica(0, now, replayed)
        elif tracker.choose(now) == 0:
            must = max((p for at, p in history if at <= now - max_lag), default=0)
            assert replayed >= must, (now, replayed, must)


def test_a_primary_position_just_past_a_wal_page_header_is_the_page_start() -> None:
    assert settle_lsn(8192 * 5 + 24, 8192) == 8192 * 5
    assert settle_lsn(8192 * 5 + 40, 8192) == 8192 * 5
    assert settle_lsn(8192 * 5 + 48, 8192) == 8192 * 5 + 48


# -- timelines -------------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_write_position_is_needed_until_it_expires_and_a_moved_shard_pins_its_primary() -> None:
    clock = Clock()
    tl = Timeline(max_age=10, clock=clock)
    tl.note(3, 7, 1000)
    tl.note(3, 7, 900)  # an older position of the same server does not go back
    assert tl.need(3, 7) == 1000 and tl.need(4, 7) is None
    assert tl.need(3, 8) == PIN  # written on another server: the shard moved since
    clock.now += 11
    assert tl.need(3, 7) is None and len(tl) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.integers(0, 8191),
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**63 - 1), st.floats(0, 59)),
        max_size=40,
    ),
    st.one_of(st.none(), st.text(min_size=16).filter(lambda s: len(s.encode()) >= 16), st.binary(min_size=16)),
)
def test_tokens_round_trip(entries: dict[int, tuple[int, int, float]], secret: str | bytes | None) -> None:
    """Read back, a token needs at least what the timeline needed, for the same shards: per server written to, the
    highest position (a pin stays a pin), until max_age after that server's newest write."""
    clock = Clock()
    tl = Timeline(clock=clock)
    for shard, (server, lsn, age) in entries.items():
        tl.note(shard, server, lsn, at=clock.now - age)
    back = Timeline.from_token(tl.token(secret=secret), secret=secret, clock=clock)
    assert back.positions().keys() == tl.positions().keys()
    assert_at_least_as_strict(back, tl, {server for server, _, _ in entries.values()} | {12345})


def assert_at_least_as_strict(back: Timeline, original: Timeline, servers: set[int]) -> None:
    for shard in original.positions():
        for server in servers:
            need, was = back.need(shard, server), original.need(shard, server)
            assert was is None or (need is not None and need >= was), (shard, server, need, was)


@settings(max_examples=100, deadline=None)
@given(
    shards=st.lists(st.integers(0, 2**20), min_size=1, max_size=9000, unique=True),
    servers=st.integers(1, 9000),
    data=st.data(),
)
def test_tokens_stay_cookie_sized_and_never_lose_a_write(shards: list[int], servers: int, data: st.DataObject) -> None:
    """Any number of shards and servers: at most TOKEN_MAX_CHARS, and every write still needed once read back
    (pinned to the primary when its position could not be carried)."""
    clock = Clock()
    tl = Timeline(clock=clock)
    for index, shard in enumerate(shards):
        server = data.draw(st.integers(0, servers - 1)) if index < 50 else index % servers
        tl.note(shard, server, 1000 + index, at=clock.now - (index % 50))
    token = tl.token(secret=b"0123456789abcdef")
    assert len(token) <= TOKEN_MAX_CHARS
    back = Timeline.from_token(token, secret=b"0123456789abcdef", clock=clock)
    assert_at_least_as_strict(back, tl, set(range(min(servers, 3))))
    clock.now += 61  # and everything expires as before
    assert back.need(shards[0], 0) is None and len(back) == 0


def test_a_token_of_a_few_servers_keeps_positions_and_a_version_1_token_is_still_read() -> None:
    clock = Clock()
    tl = Timeline(clock=clock)
    for shard in range(200):
        tl.note(shard, shard % 2, 5000 + shard)
    token = tl.token()
    assert len(token) < 200  # 200 shards: a bitmap each
    back = Timeline.from_token(token, clock=clock)
    assert back.need(7, 1) == 5199 and back.need(8, 0) == 5198 and back.need(8, 1) == PIN and back.need(300, 0) is None
    v1 = struct.pack(">BQ", 1, int(clock.now * 1000)) + struct.pack(">IIQI", 3, 9, 777, 10)
    v1 += hmac.new(b"hypervault-timeline-v1", v1, hashlib.sha256).digest()[:12]
    old = Timeline.from_token(base64.urlsafe_b64encode(v1).decode().rstrip("="), clock=clock)
    assert old.need(3, 9) == 777 and old.positions() == {3: (9, 777)}


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_edit_of_a_signed_token_is_refused(data: st.DataObject) -> None:
    clock = Clock()
    tl = Timeline(clock=clock)
    for shard in data.draw(st.lists(st.integers(0, 8191), min_size=1, max_size=5)):
        tl.note(shard, 1, 12345)
    secret = b"0123456789abcdef"
    raw = bytearray(base64.urlsafe_b64decode(tl.token(secret=secret) + "=="))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] ^= data.draw(st.integers(1, 255))
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        Timeline.from_token(forged, secret=secret, clock=clock)


@pytest.mark.parametrize("token", ["!!!", "abc", "A" * 7, 12, b"bytes"])
def test_things_that_are_not_tokens_are_invalid_tokens(token: Any) -> None:
    with pytest.raises(InvalidToken):
        Timeline.from_token(token)


def test_old_tokens_restore_empty_and_short_secrets_are_refused() -> None:
    clock = Clock()
    tl = Timeline(clock=clock)
    tl.note(1, 1, 5)
    token = tl.token()
    clock.now += 61
    assert len(Timeline.from_token(token, clock=clock)) == 0
    assert len(Timeline.from_token(None)) == 0 and len(Timeline.from_token("")) == 0
    with pytest.raises(ConfigError, match="16 bytes"):  # the setting is wrong, not a token
        tl.token(secret="short")
    with pytest.raises(ConfigError, match="max_age"):
        Timeline(max_age=0)
    with pytest.raises(ConfigError, match="timeline must be"):
        Datastore([PRIMARY], backend="memory").timeline("not a timeline")  # type: ignore[arg-type]


def test_timeline_blocks_belong_to_their_thread_or_task() -> None:
    import asyncio
    import threading

    from hvcore._replicas import current_timeline

    default = Timeline()
    seen: dict[str, Timeline] = {}

    async def task(name: str) -> None:
        with Datastore([PRIMARY], backend="memory").timeline() as mine:
            await asyncio.sleep(0.01)
            assert current_timeline(default) is mine
            seen[name] = mine

    async def both() -> None:
        await asyncio.gather(task("a"), task("b"))

    asyncio.run(both())
    assert seen["a"] is not seen["b"]

    def thread() -> None:
        seen["thread"] = current_timeline(default)

    with Datastore([PRIMARY], backend="memory").timeline():
        worker = threading.Thread(target=thread)
        worker.start()
        worker.join()
    assert seen["thread"] is default  # a new thread starts outside the block
    assert current_timeline(default) is default


_scalar = st.none() | st.booleans() | st.integers(-10, 70000) | st.text(max_size=8)
_value = _scalar | st.lists(_scalar, max_size=3) | st.dictionaries(st.text(max_size=8), _scalar, max_size=3)
_json = _value | st.lists(_value | st.dictionaries(st.text(max_size=8), _value, max_size=3), max_size=3)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_any_replicas_value_is_accepted_or_a_config_error(replicas: Any) -> None:
    try:
        Datastore([{**PRIMARY, "replicas": replicas}], backend="memory")
    except ConfigError as exc:
        assert "pw-primary" not in str(exc)


def test_hv_config_shows_where_reads_go_and_no_replica_password(tmp_path: Any) -> None:
    from io import StringIO

    from hvcore.cli import main

    path = tmp_path / "hv.toml"
    path.write_text(
        'read_from = "replica"\n[[servers]]\nshards = "0-4"\nhost = "db1"\npassword = "pw-primary"\n'
        '[[servers.replicas]]\nhost = "db1r"\npassword = "pw-replica"\n',
        encoding="utf-8",
    )
    out = StringIO()
    assert main(["config", "--config", str(path)], out) == 0
    text = out.getvalue()
    assert "reads from          replica (1 standby(s), max lag 1 s, read-your-writes)" in text
    assert "pw-primary" not in text and "pw-replica" not in text and "db1r" in text


@pytest.mark.parametrize("secret", [b"short", "", 16, bytearray(b"x" * 20)])
def test_a_bad_timeline_secret_is_a_config_error_on_both_sides(secret: Any) -> None:
    """A short or mistyped secret is the caller's setting, not a bad token: it was InvalidToken."""
    timeline = Timeline()
    with pytest.raises(hvcore.ConfigError, match="at least 16 bytes"):
        timeline.token(secret=secret)
    token = timeline.token()
    with pytest.raises(hvcore.ConfigError, match="at least 16 bytes"):
        Timeline.from_token(token, secret=secret)


@settings(max_examples=200, deadline=None)
@given(order=st.lists(st.integers(0, 2), min_size=1, max_size=8))
def test_timeline_scopes_nested_in_any_order_restore_what_each_replaced(order: list[int]) -> None:
    """Scopes (the same object several times included) entered in any nesting: inside each block its timeline is
    current, after it the one before; after all of them none (a scope object keeps no per-entry state)."""
    from hvcore._replicas import TimelineScope, _scoped

    timelines = [Timeline() for _ in range(3)]
    scopes = [TimelineScope(tl) for tl in timelines]

    def nest(depth: int, before: Timeline | None) -> None:
        if depth == len(order):
            return
        with scopes[order[depth]] as entered:
            assert entered is timelines[order[depth]] and _scoped.get() is entered
            nest(depth + 1, entered)
            assert _scoped.get() is entered
        assert _scoped.get() is before

    nest(0, None)
    assert _scoped.get() is None


def test_one_timeline_scope_shared_by_threads_restores_each_threads_own_timeline() -> None:
    """A module-level scope object entered by many threads at once: each thread sees the scope's timeline inside and
    nothing after; no thread's exit undoes another's."""
    from hvcore._replicas import TimelineScope, _scoped

    scope = TimelineScope(Timeline())
    barrier = threading.Barrier(8)
    failures: list[str] = []

    def work() -> None:
        for _ in range(50):
            with scope:
                barrier.wait(5) if _ == 0 else None
                if _scoped.get() is not scope.timeline:
                    failures.append("inside")
            if _scoped.get() is not None:
                failures.append("after")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
