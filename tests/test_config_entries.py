"""Server entries are checked once, the same way for `hv config` and for `Datastore`: before any SQL, a refused entry
is named (``server #N``, its shards), with the key and what would be right (a close match for a typo)."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hvcore
from hvcore.cli import main

GOOD = {"shards": "0-4", "host": "127.0.0.1", "dbname": "app"}


def _toml_value(value: object) -> str:
    return json.dumps(value)  # a JSON string or integer is a TOML basic string or integer


def _write(path: Path, entries: list[dict[str, Any]]) -> Path:
    lines = ['backend = "jsonb"']
    for entry in entries:
        lines.append("[[servers]]")
        lines += [f"{json.dumps(key)} = {_toml_value(value)}" for key, value in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _hv_config(path: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["config", "--config", str(path)], io.StringIO())
    return code, err.getvalue()


def _datastore_error(entries: list[dict[str, Any]]) -> hvcore.ConfigError | None:
    try:
        hvcore.Datastore(entries, backend="jsonb", worker=None).close()
    except hvcore.ConfigError as exc:
        return exc
    return None


# (the bad part of the second entry, texts its error must hold)
BAD_ENTRIES = [
    ({"hots": "db2"}, ["server #1", "'hots'", "did you mean 'host'"]),
    ({"dbnmae": "app"}, ["server #1", "'dbnmae'", "did you mean 'dbname'"]),
    ({"sslmod": "require"}, ["server #1", "'sslmod'", "did you mean 'sslmode'"]),
    ({"port": "abc"}, ["server #1", "port", "'abc'", "1..65535"]),
    ({"port": 99999}, ["server #1", "port", "99999", "1..65535"]),
    ({"port": 0}, ["server #1", "port", "1..65535"]),
    ({"conninfo": "host=db2 port"}, ["server #1", "conninfo", "key=value", "postgresql://"]),
    ({"dsn": "host=db2 prot=5432"}, ["server #1", "'prot'", "did you mean 'port'"]),
    ({"conninfo": "postgresql://u:b@db2:99999/app"}, ["server #1", "port", "99999", "1..65535"]),
    ({"conninfo": "postgresql://db2:abc/app"}, ["server #1", "port", "'abc'", "1..65535"]),
]


@pytest.mark.parametrize(("bad", "expected"), BAD_ENTRIES)
def test_hv_config_and_datastore_refuse_a_bad_entry_naming_it(
    bad: dict[str, Any], expected: list[str], tmp_path: Path
) -> None:
    entries = [dict(GOOD), {"shards": "4-8", "host": "127.0.0.1", **bad}]
    error = _datastore_error(entries)
    assert error is not None, bad
    code, stderr = _hv_config(_write(tmp_path / "hv.toml", entries))
    assert code == 2, (bad, stderr)
    for text in (str(error), stderr):
        for part in expected:
            assert part in text, (part, text)
        assert "server #0" not in text, text
        assert "num***er" not in text and ":b@" not in text, text  # the password "b" is masked, nothing else


def test_every_bad_entry_is_named_at_once(tmp_path: Path) -> None:
    entries = [{"shards": "0-4", "hots": "a"}, {"shards": "4-8", "port": "x"}]
    error = _datastore_error(entries)
    assert error is not None and "server #0" in str(error) and "server #1" in str(error), error


# -- whatever `hv config` accepts, Datastore accepts, and the other way round --------------------------------

_KEYS = st.sampled_from(
    ["host", "hots", "port", "prot", "dbname", "database", "dbnmae", "user", "usr", "sslmode", "connect_timeout"]
)
_VALUES = st.one_of(
    st.sampled_from(["127.0.0.1", "db2", "abc", "5432", "99999", "0", "-1", "require", "bogus", "5", ""]),
    st.integers(min_value=-2, max_value=70000),
)
_CONNINFOS = st.sampled_from(
    [
        None,
        "host=db2 port=5433",
        "host=db2 port",
        "host=db2 prot=1",
        "postgresql://db2:5433/app",
        "postgresql://db2:abc/app",
        "postgresql://u:pw@db2:99999/app",
        "postgresql://db2/app?sslmode=nope",
        "dbname='unterminated",
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extra=st.dictionaries(_KEYS, _VALUES, max_size=3), conninfo=_CONNINFOS)
def test_hv_config_accepts_exactly_what_datastore_accepts(extra: dict[str, Any], conninfo: str | None) -> None:
    entry: dict[str, Any] = {"shards": "0-4", **extra}
    if conninfo is not None:
        entry["conninfo"] = conninfo
    error = _datastore_error([entry])
    with tempfile.TemporaryDirectory() as tmp:
        code, stderr = _hv_config(_write(Path(tmp) / "hv.toml", [entry]))
    assert (code == 0) == (error is None), (entry, code, stderr, error)
    if error is not None:
        assert "server #0" in str(error) and "server #0" in stderr, (str(error), stderr)
