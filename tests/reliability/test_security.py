"""SQL injection through user-supplied names is inert; passwords never leak; libpq settings pass through as given."""

from __future__ import annotations

import io
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.faults import FAULT_PASSWORD, FAULT_ROLE, FaultServers, free_port

import hvcore
from hvcore.cli import main as hv_main

pytestmark = pytest.mark.postgres

CANARY = ("canary-row", "do-not-read-or-change")
NAME_PAYLOADS = [
    "colour' OR '1'='1",
    'colour" OR 1=1 --',
    "x'); DROP TABLE public.canary; --",
    "colour') OR true --",
    "*/ SELECT secret FROM public.canary /*",
    "colour'=>'red",  # hstore's own syntax
    '{"colour": "red"}',
    "$.colour",
    "%s",
    "%(x)s",
]
VALUE_PAYLOADS = [
    "' OR '1'='1",
    "red' OR 'a'='a",
    "'); DROP TABLE public.canary; --",
    'red"} OR true --',
    "red'=>'x",
    "%s",
    "\\",
    "red\\' OR 1=1 --",
]


class Canary:
    """A table beside the shards: whatever a query does, it must not be read, changed or dropped."""

    def __init__(self, fault_pg: FaultServers, settings: dict[str, Any]) -> None:
        self.fault_pg = fault_pg
        self.dbname = settings["dbname"]
        fault_pg.sql(0, "CREATE TABLE public.canary (name text, secret text)", dbname=self.dbname)
        fault_pg.sql(0, "INSERT INTO public.canary VALUES (%s, %s)", CANARY, dbname=self.dbname)
        self.before = self.snapshot()

    def snapshot(self) -> tuple[Any, ...]:
        sql = self.fault_pg.sql
        return (
            sql(0, "SELECT name, secret FROM public.canary", dbname=self.dbname),
            sql(0, "SELECT count(*) FROM pg_class WHERE relkind IN ('r', 'i')", dbname=self.dbname),
            sql(0, "SELECT count(*) FROM shard0001.entities", dbname=self.dbname),
            sql(0, "SELECT count(*) FROM pg_roles", dbname=self.dbname),
        )

    def intact(self) -> None:
        assert self.snapshot() == self.before


@pytest.fixture(params=["hstore", "jsonb"])
def guarded(request: pytest.FixtureRequest, fault_pg: FaultServers) -> Iterator[tuple[hvcore.Datastore, Canary]]:
    """A datastore logging in with a password, two rows stored, and a canary table beside the shards."""
    settings = fault_pg.fresh_db(0)
    db = hvcore.Datastore(
        [dict(shards="0-4", **{**settings, "user": FAULT_ROLE, "password": FAULT_PASSWORD})], backend=request.param
    )
    db.provision()
    db.put(1, 1, colour="red")
    db.put(1, 1, colour="blue")
    yield db, Canary(fault_pg, settings)
    db.close()


def test_sql_injection_in_where_names_and_values_is_inert(guarded: tuple[hvcore.Datastore, Canary]) -> None:
    db, canary = guarded
    tried = 0
    for name in NAME_PAYLOADS:
        for value in ["red", *VALUE_PAYLOADS]:
            assert list(db.query(where={name: value})) == []  # no such field: nothing, never everything
            tried += 1
    for value in VALUE_PAYLOADS:
        assert list(db.query(where={"colour": value})) == []
        tried += 1
    assert [r.data for r in db.query(where={"colour": "red"})] == [{"colour": "red"}]
    canary.intact()
    print(f"\nwhere injection ({db.backend}): {tried} attempts, 0 extra rows, canary intact")


def test_injection_text_is_stored_literally(guarded: tuple[hvcore.Datastore, Canary]) -> None:
    db, canary = guarded
    body = dict(zip(NAME_PAYLOADS, VALUE_PAYLOADS * 2, strict=False))
    key = db.put(1, 1, **body)
    record = db.get(key)
    assert record is not None and record.data == body
    for name, value in body.items():  # each field finds exactly that row
        assert [r.key for r in db.query(where={name: value})] == [key]
    db.update(key, **{"x'); DROP TABLE public.canary; --": "y"})
    assert db.delete(key)
    canary.intact()


def test_shard_kind_key_and_limit_strings_are_rejected(guarded: tuple[hvcore.Datastore, Canary]) -> None:
    db, canary = guarded
    shard_strings: list[Any] = ["1", "1; DROP TABLE public.canary", "0 OR 1=1", "1'", "shard0001"]
    for shard in shard_strings:
        with pytest.raises(hvcore.InvalidShard):
            db.put(shard, 1, a="b")
        with pytest.raises(hvcore.InvalidShard):
            db.get_connection(shard)
        with pytest.raises(hvcore.InvalidShard):
            list(db.query(shards=[shard]))
    bad_kind: Any = "1 OR 1=1"
    with pytest.raises(hvcore.InvalidKind):
        db.put(1, bad_kind, a="b")
    with pytest.raises(hvcore.InvalidKind):
        list(db.query(kind=bad_kind))
    for key in ("1 OR 1=1", "0; DROP TABLE public.canary"):
        with pytest.raises(hvcore.InvalidKey):
            db.get(key)  # type: ignore[arg-type]
    bad_limit: Any = "1; DROP TABLE public.canary"
    with pytest.raises(hvcore.InvalidQuery):
        list(db.query(limit=bad_limit))
    canary.intact()


def test_sql_injection_in_config_values_is_inert(fault_pg: FaultServers) -> None:
    settings = fault_pg.fresh_db(0)
    with hvcore.Datastore([dict(shards="0-4", **settings)], backend="jsonb") as db:
        db.provision()
        db.put(1, 1, a="b")
    canary = Canary(fault_pg, settings)
    attempts: list[dict[str, Any]] = [
        {"dbname": f"{settings['dbname']}' OR '1'='1"},
        {"dbname": f"{settings['dbname']}; DROP TABLE public.canary"},
        {"dbname": f"{settings['dbname']} user=postgres"},  # libpq keyword smuggled into a value
        {"user": "postgres' --"},
        {"user": "postgres password=x"},
        {"host": "127.0.0.1 dbname=postgres"},
        {"port": f"{settings['port']} dbname=postgres"},
        {"options": "-c search_path=public'; DROP TABLE public.canary; --"},
    ]
    outcomes = []
    for override in attempts:
        try:
            with hvcore.Datastore([dict(shards="0-4", **{**settings, **override})], backend="jsonb") as db:
                db.get(db.generator.next_key(1))
            outcomes.append("connected")
        except hvcore.HypervaultError as exc:  # refused: the value was taken as one whole value
            outcomes.append(type(exc).__name__)
    canary.intact()
    print(f"\nconfig injection: {len(attempts)} attempts → {outcomes}, canary intact")
    assert all(isinstance(o, str) for o in outcomes)
    # a hostile application_name is sent as data, shown verbatim by the server
    name = "x'; DROP TABLE public.canary; --"
    with hvcore.Datastore([dict(shards="0-4", application_name=name, **settings)], backend="jsonb") as db:
        db.provision()
        with db.cursor(1) as cur:
            cur.execute("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")
            row = cur.fetchone()
            assert row is not None and row["application_name"] == name
    canary.intact()


# -- passwords -------------------------------------------------------------------------------------------------


def write_config(path: Path, servers: list[dict[str, Any]], backend: str = "jsonb") -> Path:
    lines = [f'backend = "{backend}"', "pool_block_timeout = 2", ""]
    for server in servers:
        lines.append("[[servers]]")
        for name, value in server.items():
            lines.append(f"{name} = {value!r}".replace("'", '"') if isinstance(value, str) else f"{name} = {value}")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_hv(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = hv_main(list(argv), out)
    captured = capsys.readouterr()
    return code, out.getvalue() + captured.out + captured.err


def test_passwords_absent_from_logs_reprs_errors_and_hv_output(
    fault_pg: FaultServers, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: hypervault's, psycopg's, psycopg_pool's
    logger = logging.getLogger("hvtest.security")
    wrong = "wr0ng-Pa55word-x9"
    db_settings = fault_pg.fresh_db(0)
    good = {**db_settings, "user": FAULT_ROLE, "password": FAULT_PASSWORD}
    url = (
        f"postgresql://{FAULT_ROLE}:{FAULT_PASSWORD}@127.0.0.1:{db_settings['port']}/{db_settings['dbname']}"
        "?sslmode=disable"
    )
    down = {"host": "127.0.0.1", "port": free_port(), "user": FAULT_ROLE, "password": FAULT_PASSWORD}
    texts: list[str] = []
    errors: list[BaseException] = []

    with hvcore.Datastore(
        [dict(shards="0-4", **good), dict(shards="4-8", conninfo=url)], backend="jsonb", logger=logger
    ) as db:
        db.provision()
        key = db.put(1, 1, a="b")
        db.get(key)
        list(db.query(where={"a": "b"}))
        texts += [repr(db), repr(db._config), *map(repr, db.servers), repr(db.status())]
    for settings in (
        {**good, "password": wrong},
        down,
        {"conninfo": url.replace(FAULT_PASSWORD, wrong)},
    ):
        with hvcore.Datastore([dict(shards="0-4", **settings)], backend="jsonb", pool_block_timeout=2) as db:
            for call in (lambda: db.put(1, 1, a="b"), db.provision, lambda: db.get_connection(1)):
                try:
                    call()
                except hvcore.HypervaultError as exc:
                    errors.append(exc)
            texts += [repr(db), repr(db.status())]
    try:
        hvcore.Datastore([dict(shards="0-4", **good, bogus_libpq_option="1")], backend="jsonb")
    except hvcore.ConfigError as exc:
        errors.append(exc)
    assert len(errors) == 10
    texts += ["".join(traceback.format_exception(exc)) for exc in errors]  # chained causes included

    config = write_config(tmp_path / "hv.toml", [dict(shards="0-4", **good), dict(shards="4-8", **down)])
    url_config = write_config(tmp_path / "url.toml", [dict(shards="0-4", conninfo=url)])
    outputs: list[int] = []
    for argv in (
        ("init", "--config", str(url_config)),
        ("status", "--config", str(config)),
        ("status", "--json", "--config", str(config)),
        ("status", "--config", str(url_config)),
        ("config", "--config", str(config)),
        ("config", "--json", "--config", str(url_config)),
        ("demo", "--config", str(config), "--rows", "10"),
    ):
        code, output = run_hv(capsys, *argv)
        outputs.append(code)
        texts.append(output)
    texts.append(caplog.text)
    texts += [r.getMessage() for r in caplog.records]
    everything = "\n".join(texts)
    print(
        f"\npasswords: {len(texts)} texts checked ({len(everything):,} chars: logs, reprs, status, "
        f"{len(errors)} errors with tracebacks, hv exit codes {outputs})"
    )
    assert "statement:" in caplog.text  # the logger option did log statements
    assert "password authentication failed" in everything and "unavailable" in everything
    assert outputs == [0, 1, 0, 0, 0, 0, 2]  # status exits 1 with a server down; demo fails on it (typed, exit 2)
    assert FAULT_PASSWORD not in everything
    assert wrong not in everything


# -- libpq settings pass through untouched ---------------------------------------------------------------------


def test_libpq_settings_pass_through_untouched(fault_pg: FaultServers) -> None:
    settings = fault_pg.fresh_db(0)
    passed = dict(
        sslmode="disable",
        application_name="hv-security-test",
        options="-c statement_timeout=4321 -c lock_timeout=1234",
        target_session_attrs="read-write",
        keepalives="1",
    )
    with hvcore.Datastore([dict(shards="0-4", **settings, **passed)], backend="jsonb") as db:
        db.provision()
        with db.cursor(1) as cur:
            cur.execute(
                "SELECT a.application_name, s.ssl, current_setting('statement_timeout') AS st, "
                "current_setting('lock_timeout') AS lt FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                "WHERE a.pid = pg_backend_pid()"
            )
            row = cur.fetchone()
    assert row == {"application_name": "hv-security-test", "ssl": False, "st": "4321ms", "lt": "1234ms"}
    # sslmode=require reaches libpq: this server has no SSL, so the connection is refused, not downgraded
    for form in (
        dict(sslmode="require", **settings),
        dict(conninfo=f"host=127.0.0.1 port={settings['port']} dbname={settings['dbname']} sslmode=require"),
    ):
        db = hvcore.Datastore([dict(shards="0-4", **form)], backend="jsonb", pool_block_timeout=2)
        with db, pytest.raises(hvcore.ServerUnavailable, match="SSL"):
            db.put(1, 1, a="b")


@pytest.mark.redis  # a redis-server of its own, with a password
def test_redis_sequence_password_absent_from_reprs_errors_logs_and_hv_output(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess

    from fixtures.faults import start_redis, stop_redis

    from hvplugin_redis import RedisSequence

    caplog.set_level(logging.DEBUG)
    secret, wrong = "r3dis-Pa55word-q1", "r3dis-wr0ng-z8"
    port = free_port()
    proc = start_redis(port)  # then require a password, as a production Redis would
    subprocess.run(
        ["redis-cli", "-p", str(port), "CONFIG", "SET", "requirepass", secret], check=True, capture_output=True
    )
    texts: list[str] = []
    try:
        url = f"redis://:{secret}@127.0.0.1:{port}/0"
        with hvcore.Datastore([dict(shards="0-4", name=f"seq-{port}")], backend="memory", sequence=url) as db:
            time_ok = False
            try:
                db.put(1, 1, a="b")
                time_ok = True
            except hvcore.SequenceUnavailable as exc:  # a fresh Redis may ask to wait: still no password shown
                texts.append("".join(traceback.format_exception(exc)))
            texts += [repr(db), repr(db.generator), repr(db._sequence), repr(db._config)]
        for bad in (f"redis://:{wrong}@127.0.0.1:{port}/0", f"redis://:{secret}@127.0.0.1:{free_port()}/0"):
            source = RedisSequence(bad, connect_timeout=0.3, read_timeout=0.3, retries=0)
            with pytest.raises(hvcore.SequenceUnavailable) as info:
                source.reserve(1, 10**9, 1)
            texts += [repr(source), "".join(traceback.format_exception(info.value))]
            source.close()
        code, output = run_hv(capsys, "key", "new", "--shard", "1", "--count", "2", "--sequence", url)
        texts.append(output)
        code_bad, output_bad = run_hv(capsys, "key", "new", "--shard", "1", "--sequence", url.replace(secret, wrong))
        texts.append(output_bad)
    finally:
        stop_redis(proc)
    texts.append(caplog.text)
    everything = "\n".join(texts)
    print(f"\nredis passwords: {len(texts)} texts checked, put ok={time_ok}, hv exit codes {code}, {code_bad}")
    assert code_bad == 2 and "hv: error" in output_bad
    assert secret not in everything and wrong not in everything
