"""Connection settings as a 2015 application and a newcomer give them: checked when the store is built, never shown.

No server is needed: every check here runs before anything connects (libpq checks the values offline).
"""

from __future__ import annotations

import asyncio
import string
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hvcore
from hvcore._config import libpq_settings

SECRET = "Tr0ub4dor-s3cret"
OLD_STYLE = dict(shards="1-9", host="127.0.0.1", port="5432", user="x", password=SECRET, database="hv_old")


def message(exc: BaseException) -> str:
    return f"{exc} {exc!r} {exc.args!r}"


def stored(db: hvcore.Datastore, key: hvcore.Key) -> dict[str, Any]:
    record = db.get(key)
    assert record is not None
    return record.data


# -- psycopg2's spellings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["hstore", "jsonb", "memory"])
def test_the_2015_connection_dicts_are_accepted(backend: str) -> None:
    db = hvcore.Datastore([OLD_STYLE, {**OLD_STYLE, "shards": "9-17"}], backend=backend)
    try:
        labels = [store.label for store in db.servers]
        if backend != "memory":
            assert labels == ["127.0.0.1:5432/hv_old", "127.0.0.1:5432/hv_old"]  # database= read as dbname
        assert SECRET not in repr(db)
    finally:
        db.close()


def test_database_and_dsn_are_read_as_dbname_and_conninfo() -> None:
    parsed = libpq_settings(dict(database="a", dsn="host=h port=5433", password=SECRET))
    assert parsed.params == {"dbname": "a", "host": "h", "port": "5433", "password": SECRET}
    assert parsed.conninfo == "host=h port=5433" and SECRET not in repr(parsed)
    assert libpq_settings(dict(database="a", dbname="a")).params == {"dbname": "a"}  # both, equal: fine


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        (dict(database="a", dbname="b"), ("database='a'", "dbname='b'")),
        (dict(dsn=f"host=h password={SECRET}", conninfo="host=j"), ("dsn=", "conninfo=")),
    ],
)
def test_both_spellings_with_different_values_are_a_config_error(settings: dict[str, Any], names: Any) -> None:
    with pytest.raises(hvcore.ConfigError) as info:
        hvcore.Datastore([dict(shards="0-4", password=SECRET, **settings)], backend="jsonb")
    text = message(info.value)
    assert all(name in text for name in names) and "keep one" in text
    assert SECRET not in text


# -- libpq's checks, offline ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (dict(sslmode="bogus"), 'invalid sslmode value: "bogus"'),
        (dict(target_session_attrs="nope"), "target_session_attrs"),
        (dict(port="http"), "port must be a number in 1..65535 (one per host, comma-separated), got 'http'"),
        (dict(port="70000"), "port must be a number in 1..65535 (one per host, comma-separated), got '70000'"),
        (dict(connect_timeout="soon"), "connect_timeout"),
        (dict(keepalives_idle="x"), "keepalives_idle"),
        (dict(host="a,b", port="1,2,3"), "could not match 3 port numbers to 2 hosts"),
        (dict(hostaddr="10.0.0.300"), "hostaddr"),
        (dict(sslrootcert="system", sslmode="require"), "verify-full"),
        (dict(channel_binding="maybe"), "channel_binding"),
        (dict(bogus_option="1"), "unknown connection setting 'bogus_option'"),
        (dict(sslmod="require"), "unknown connection setting 'sslmod': did you mean 'sslmode'?"),
    ],
)
@pytest.mark.parametrize("backend", ["jsonb", "hstore", "memory"])
@pytest.mark.parametrize("api", ["sync", "async"])
def test_values_libpq_would_refuse_are_config_errors_when_the_store_is_built(
    bad: dict[str, str], fragment: str, backend: str, api: str
) -> None:
    settings = [{"shards": "0-4", "host": "127.0.0.1", "user": "u", "password": SECRET, **bad}]
    make = hvcore.Datastore if api == "sync" else hvcore.AsyncDatastore
    with pytest.raises(hvcore.ConfigError) as info:
        make(settings, backend=backend)  # the async one is not opened: its settings are checked anyway
    assert fragment in str(info.value) and SECRET not in message(info.value)


def test_valid_settings_do_not_connect() -> None:
    """A host that does not exist and an unused port: building the store only checks, it never connects."""
    settings = [dict(shards="0-4", host="no-such-host.invalid", port=1, sslmode="verify-full", connect_timeout=3)]
    db = hvcore.Datastore(settings, backend="jsonb")
    db.close()
    asyncio.run(hvcore.AsyncDatastore(settings, backend="jsonb").close())


@pytest.mark.parametrize(
    "conninfo",
    [
        f"postgresql://u:{SECRET}%zz@h/db",
        f"postgresql://u:%{SECRET}@h/db",
        f"postgresql://u:{SECRET}@h:5432,h2/db?sslmode=bogus",
        f"host=h password={SECRET} sslmode=bogus",
        f"host=h password='{SECRET}",
    ],
)
def test_no_error_shows_the_password(conninfo: str) -> None:
    for backend in ("jsonb", "memory"):
        with pytest.raises(hvcore.ConfigError) as info:
            hvcore.Datastore([dict(shards="0-4", conninfo=conninfo)], backend=backend)
        assert SECRET not in message(info.value) and SECRET not in str(info.getrepr())


def test_a_bad_percent_encoding_in_the_password_is_named_not_shown() -> None:
    with pytest.raises(hvcore.ConfigError, match="percent-encoded") as info:
        hvcore.Datastore([dict(shards="0-4", conninfo=f"postgresql://u:{SECRET}%zz@h/db")], backend="jsonb")
    assert "urllib.parse.quote" in str(info.value)


@pytest.mark.parametrize(
    "server",
    [
        dict(host=f"postgresql://app:{SECRET}@127.0.0.1/app"),
        dict(host=f"127.0.0.1 password={SECRET}"),
        dict(host=f"app:{SECRET}@127.0.0.1"),
        dict(hostaddr=f"postgres://app:{SECRET}@10.0.0.1"),
        dict(host="127.0.0.1", replicas=[dict(host=f"postgresql://app:{SECRET}@127.0.0.2/app")]),
    ],
    ids=["url", "keywords", "user-at-host", "hostaddr-url", "replica-url"],
)
@pytest.mark.parametrize("backend", ["jsonb", "hstore", "memory"])
@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_connection_string_given_as_host_is_refused_unshown(server: dict[str, Any], backend: str, api: str) -> None:
    """``host=os.environ["DATABASE_URL"]``: refused when the store is built, the string never shown (libpq would
    take it as a host name, and the server's label in reprs, status and errors would carry the password)."""
    make = hvcore.Datastore if api == "sync" else hvcore.AsyncDatastore
    with pytest.raises(hvcore.ConfigError, match="conninfo=") as info:
        make([{"shards": "0-4", **server}], backend=backend)
    assert SECRET not in message(info.value) and SECRET not in str(info.getrepr())


@given(
    secret=st.text(alphabet=string.ascii_letters + string.digits + "!$%^*()-_+.~", min_size=6, max_size=30),
    form=st.sampled_from(["postgresql://app:{}@db/app", "db password={}", "app:{}@db", "host=db password={} x=1"]),
    name=st.sampled_from(["host", "hostaddr"]),
)
def test_no_connection_string_in_a_host_setting_is_ever_shown(secret: str, form: str, name: str) -> None:
    """The kind, not the reported case: whatever the password and the way it is written into host/hostaddr, the
    store is refused before anything is made and the error never holds it."""
    with pytest.raises(hvcore.ConfigError) as info:
        hvcore.Datastore([{"shards": "0-4", name: form.format(secret)}], backend="jsonb")
    assert secret not in message(info.value)


@pytest.mark.parametrize("host", ["db-2.internal", "127.0.0.1", "::1", "/var/run/postgresql", "a,b"])
def test_host_names_addresses_and_socket_directories_are_accepted(host: str) -> None:
    hvcore.Datastore(
        [dict(shards="0-4", host=host, port="5432,5432" if "," in host else 5432)], backend="jsonb"
    ).close()


# -- the memory backend takes the production list --------------------------------------------------------------------


def test_memory_backend_takes_the_production_list_and_never_connects() -> None:
    production = [dict(OLD_STYLE, host="db1.invalid"), dict(OLD_STYLE, shards="9-17", sslmode="verify-full")]
    with hvcore.Datastore(production, backend="memory") as db:
        key = db.put(12, 1, beep="boop")
        assert db.get(key) == hvcore.Record(key, 1, {"beep": "boop"})


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [(dict(colour="red"), "unknown connection setting 'colour'"), (dict(sslmode="bogus"), "sslmode")],
)
def test_memory_backend_refuses_unknown_settings_with_config_error(bad: dict[str, str], fragment: str) -> None:
    with pytest.raises(hvcore.ConfigError) as info:
        hvcore.Datastore([dict(OLD_STYLE, **bad)], backend="memory")
    assert not isinstance(info.value, hvcore.InvalidData)
    text = message(info.value)
    assert fragment in text and "name, values, provisioned" in text and SECRET not in text


def test_memory_backend_without_psycopg_takes_the_production_list() -> None:
    """``pip install hypervault`` (no extras) and unit tests on the memory backend with the production config."""
    code = f"""
        import sys
        sys.modules["psycopg"] = None
        import hvcore
        with hvcore.Datastore([{OLD_STYLE!r}], backend="memory") as db:
            print(db.get(db.put(3, 1, a="b")).data)
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'a': 'b'}"


# -- value rules: the memory backend stands in for hstore or jsonb ------------------------------------------------


def test_values_text_gives_the_memory_backend_the_hstore_rules() -> None:
    with hvcore.Datastore([dict(shards="0-4", name="vt")], backend="memory", values="text") as db:
        assert stored(db, db.put(1, 1, a="x", b=None)) == {"a": "x", "b": None}
        with pytest.raises(hvcore.InvalidData, match="text only"):
            db.put(1, 1, n=1)
    with hvcore.Datastore([dict(shards="0-4", name="vj")], backend="memory") as db:  # jsonb's rules by default
        assert stored(db, db.put(1, 1, n=1)) == {"n": 1}


@pytest.mark.parametrize("first", ["text", "jsonb"])
def test_a_named_memory_server_keeps_the_value_rules_it_was_first_used_with(first: str) -> None:
    other = "jsonb" if first == "text" else "text"
    name = f"rules-{first}-{uuid.uuid4().hex[:8]}"
    with hvcore.Datastore([dict(shards="0-4", name=name)], backend="memory", values=first) as db:
        key = db.put(1, 1, n="1")
        # another store on the same server with the other rules would read or write values its rules forbid
        with pytest.raises(hvcore.ConfigError, match=rf"keeps {first} values.*values='{other}'.*use values='{first}'"):
            hvcore.Datastore([dict(shards="0-4", name=name)], backend="memory", values=other)
        with hvcore.Datastore([dict(shards="0-4", name=name)], backend="memory", values=first) as same:
            assert stored(same, key) == {"n": "1"}


@pytest.mark.parametrize(("backend", "values"), [("hstore", "jsonb"), ("jsonb", "text"), ("memory", "xml")])
def test_values_that_contradict_the_backend_are_config_errors(backend: str, values: str) -> None:
    with pytest.raises(hvcore.ConfigError, match="values"):
        hvcore.Datastore([dict(shards="0-4", host="h")], backend=backend, values=values)


@pytest.mark.parametrize(("file_backend", "text_only"), [("hstore", True), ("jsonb", False)])
def test_from_config_with_memory_follows_the_files_backend(tmp_path: Path, file_backend: str, text_only: bool) -> None:
    config = tmp_path / "hv.toml"
    config.write_text(
        f'backend = "{file_backend}"\n[[servers]]\nshards = "0-8"\nhost = "10.0.0.1"\ndbname = "app"\n'
        f'user = "app"\npassword = "{SECRET}"\n'
    )
    with hvcore.Datastore.from_config(config, backend="memory") as db:
        assert db.backend == "memory"
        if text_only:
            with pytest.raises(hvcore.InvalidData):
                db.put(1, 1, n=1)
        else:
            assert stored(db, db.put(1, 1, n=1)) == {"n": 1}


# -- asyncio: a store used before open() says how to open it -------------------------------------------------------


def test_async_datastore_used_before_open_says_how_to_open_it() -> None:
    async def run() -> None:
        db = hvcore.AsyncDatastore([dict(shards="0-4", name="not-open")], backend="memory")
        with pytest.raises(hvcore.StoreClosed) as info:
            await db.put(1, 1, a="b")
        assert "await db.open()" in str(info.value) and "async with" in str(info.value)
        await db.open()
        await db.put(1, 1, a="b")
        await db.close()
        with pytest.raises(hvcore.StoreClosed, match="reinstantiate"):
            await db.put(1, 1, a="b")

    asyncio.run(run())
