"""The one config parser: TOML files and keyword arguments, validated before anything connects."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import hvcore
from hvcore import ConfigError, KeyLayout, ShardMapError
from hvcore._config import DatastoreConfig, load_config, parse_layout, redact, redact_conninfo


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hv.toml"
    path.write_text(text)
    return path


def test_full_config(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            'backend = "jsonb"\npool_max = 4\npool_block_timeout = 2.5\nlayout = "hypervault"\n'
            '[[servers]]\nshards = "1-9"\nhost = "127.0.0.1"\nport = 5432\ndbname = "test"\npassword = "pw"\n'
            '[[servers]]\nshards = "9-17"\nconninfo = "host=127.0.0.1 dbname=test"\n',
        )
    )
    assert cfg.backend == "jsonb" and cfg.pool_max == 4 and cfg.pool_block_timeout == 2.5
    assert cfg.layout == KeyLayout.HYPERVAULT
    assert len(cfg.servers) == 2
    assert "pw" not in repr(cfg)


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ('pool_max = 0\n[[servers]]\nshards="0-1"\n', ConfigError, "pool_max"),
        ('pool_max = "10"\n[[servers]]\nshards="0-1"\n', ConfigError, "pool_max"),
        ('pool_block_timeout = -1\n[[servers]]\nshards="0-1"\n', ConfigError, "pool_block_timeout"),
        ('pool_block_timeout = nan\n[[servers]]\nshards="0-1"\n', ConfigError, "pool_block_timeout"),
        ('colour = "red"\n[[servers]]\nshards="0-1"\n', ConfigError, "unknown setting"),
        ('backend = "jsonb"\n', ShardMapError, "no \\[\\[servers\\]\\]"),
        ('[servers]\nshards = "0-1"\n', ShardMapError, r"\[servers\] is a single table; write \[\[servers\]\]"),
        ('[[servers]]\nshards = "0-1"\n[servers.replicas]\nhost = "h"\n', ConfigError, r"\[\[servers.replicas\]\]"),
        ('layout = "nope"\n[[servers]]\nshards="0-1"\n', ConfigError, "unknown layout"),
        ("this is = not toml = at all", ConfigError, "not valid TOML"),
        ('sequence = "redis"\n[[servers]]\nshards="0-1"\n', ConfigError, "URL"),
    ],
)
def test_bad_configs(tmp_path: Path, text: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        load_config(write(tmp_path, text))


def test_datastore_from_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'backend = "memory"\n[[servers]]\nshards = "0-4"\n[[servers]]\nshards = "4-8"\n')
    with hvcore.Datastore.from_config(path) as store:
        key = store.put(5, 1, a="b")
        assert store.get(key) is not None
        assert store.shard_map.server_for(5) == 1


@pytest.mark.parametrize("make", [hvcore.Datastore, hvcore.AsyncDatastore])
def test_from_config_overrides_are_checked_like_the_files_settings(tmp_path: Path, make: Any) -> None:
    """A misspelt override was a builtins TypeError; the same misspelling in the file was a ConfigError."""
    path = write(tmp_path, 'backend = "memory"\n[[servers]]\nshards = "0-4"\n')
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'pool_maxx'.*pool_max"):
        make.from_config(path, pool_maxx=3)
    store = make.from_config(path, coalesce_reads=False, pool_max=3)  # every constructor option may be overridden
    assert store._options.pool_max == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pool_max": 0}, "pool_max"),
        ({"pool_max": True}, "pool_max"),
        ({"pool_block_timeout": 0}, "pool_block_timeout"),
        ({"row_factory": "objects"}, "row_factory"),
        ({"operation_timeout": 0}, "operation_timeout"),
        ({"operation_timeout": "30"}, "operation_timeout"),
        ({"layout": -5}, "layout"),
    ],
)
def test_bad_datastore_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        hvcore.Datastore([dict(shards="0-4")], backend="memory", **kwargs)  # type: ignore[arg-type]


def test_connections_must_be_a_list() -> None:
    with pytest.raises(ShardMapError, match="list of dicts"):
        hvcore.Datastore(dict(shards="0-4"), backend="memory")  # type: ignore[arg-type]


def test_layouts() -> None:
    assert parse_layout("HYPERVAULT") is KeyLayout.HYPERVAULT
    assert parse_layout(1379365531352) == KeyLayout.HYPERVAULT
    assert parse_layout(KeyLayout.DEFAULT) is KeyLayout.DEFAULT


def test_redaction() -> None:
    assert redact({"host": "h", "password": "pw", "PASSWORD": "x"}) == {
        "host": "h",
        "password": "***",
        "PASSWORD": "***",
    }
    assert redact_conninfo("host=a password=secret user=b") == "host=a password=*** user=b"
    assert redact_conninfo("host=a password='se cret' user=b") == "host=a password=*** user=b"
    assert redact_conninfo("postgresql://bob:secret@db:5432/x") == "postgresql://bob:***@db:5432/x"


def test_config_repr_hides_secrets() -> None:
    cfg = DatastoreConfig(servers=({"shards": "0-1", "password": "hunter2"},))
    assert "hunter2" not in repr(cfg)


_SECRET_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=4)


@given(_SECRET_TEXT)
def test_a_masked_keyword_conninfo_keeps_every_other_setting(secret: str) -> None:
    conninfo = make_conninfo(host="h1", password=secret, user="u", sslpassword=secret, application_name="my app")
    masked = redact_conninfo(conninfo)
    assert conninfo_to_dict(masked) == {
        "host": "h1",
        "password": "***",
        "user": "u",
        "sslpassword": "***",
        "application_name": "my app",
    }


@given(_SECRET_TEXT)
def test_a_masked_url_conninfo_keeps_every_other_setting(secret: str) -> None:
    quoted = quote(secret, safe="")
    url = f"postgresql://bob:{quoted}@db:5432/x?password={quoted}&sslmode=disable&application_name=app#frag"
    assert (
        redact_conninfo(url) == "postgresql://bob:***@db:5432/x?password=***&sslmode=disable&application_name=app#frag"
    )
    assert redact_conninfo(f"postgresql://bob@db/x?sslmode=disable&PassWord={quoted}") == (
        "postgresql://bob@db/x?sslmode=disable&PassWord=***"
    )


@given(_SECRET_TEXT, st.sampled_from(["postgresql", "postgres", "http", "https"]))
def test_a_url_of_any_scheme_has_its_userinfo_password_masked(secret: str, scheme: str) -> None:
    quoted = quote(secret, safe="")
    assert (
        redact_conninfo(f"{scheme}://ops:{quoted}@127.0.0.1:9464/metrics")
        == f"{scheme}://ops:***@127.0.0.1:9464/metrics"
    )


_WORD = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&*+,-./:;<>?@^_~"), min_size=6
)


@given(st.lists(_WORD, min_size=2, max_size=4), st.sampled_from(["", " sslmode=require", " dbname=app user=u"]))
def test_a_password_written_unquoted_with_spaces_is_never_shown(words: list[str], rest: str) -> None:
    """A password holding spaces written without quotes (``password=my s3cret``) is text libpq cannot read: neither
    the ConfigError nor any masked display shows a word of it (libpq's own message quotes the word it stumbled on)."""
    conninfo = f"host=127.0.0.1 password={' '.join(words)}{rest}"
    shown = redact_conninfo(conninfo)
    with pytest.raises(hvcore.ConfigError) as caught:
        hvcore.Datastore([{"shards": "0-8", "conninfo": conninfo}], backend="jsonb")
    for word in words:
        assert word not in shown, shown
        assert word not in str(caught.value), str(caught.value)


@given(st.lists(_WORD, min_size=2, max_size=3), st.sampled_from(["127.0.0.1", "127.0.0.1:5432", "db"]))
def test_a_url_password_with_an_unescaped_slash_is_never_shown(words: list[str], host: str) -> None:
    """``postgresql://app:pa/ss@host/db``: libpq reads ``pa`` as a port (the password's tail); neither the masked
    URL nor the ConfigError shows any part of the password."""
    words = [w.replace("@", "").replace("/", "").replace("?", "").replace("#", "") or "xxxxxx" for w in words]
    url = f"postgresql://app:{'/'.join(words)}@{host}/app"
    shown = redact_conninfo(url)
    try:
        hvcore.Datastore([{"shards": "0-8", "conninfo": url}], backend="jsonb", worker=None).close()
        said = ""
    except hvcore.HypervaultError as exc:
        said = str(exc)
    for word in words:
        if len(word) >= 6:
            assert word not in shown, shown
            assert word not in said, said
