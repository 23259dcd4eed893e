"""Sixth newcomer: a Redis sequence URL whose password holds an unescaped ``/``, ``#`` or ``?`` is shown whole.

README (the Redis sequence): an unknown option or a bad value "is a ``ConfigError`` before anything connects, naming
the option and what is valid, never the password (credentials go in the URL: ``redis://user:password@host``)".
A password with a ``/`` (or ``#``, ``?``) not percent-encoded is an everyday mistake; the URL parser then reads
part of the password as the port, and the error quotes the whole URL back: ``invalid Redis URL
'redis://u:S3cret/Redis@127.0.0.1:6379/0': Port could not be cast to integer value as 'S3cret'`` -- from
``Datastore(sequence=...)``, ``KeyGenerator(sequence=...)``, ``hv key new --sequence`` and ``hv config``. The fifth
newcomer's fix covered PostgreSQL URLs only.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

import hvcore
from hvcore.cli import main

SECRET = "S3cretRedis"
URLS = [
    f"redis://app:{SECRET}/x@127.0.0.1:6379/0",
    f"redis://:{SECRET}/x@127.0.0.1:6379/0",
    f"redis://app:{SECRET}#x@127.0.0.1:6379/0",
    f"redis://app:{SECRET}?x@127.0.0.1:6379/0",
]
REASON = (
    "a Redis URL whose password holds an unescaped '/', '#' or '?' is quoted back whole in the ConfigError (and by "
    "hv key new / hv config): the password is shown; the error should mask the user:password@ part and say to "
    "percent-encode it"
)


@pytest.mark.parametrize("url", URLS)
def test_a_redis_url_password_with_a_reserved_character_is_not_shown(url: str) -> None:
    with pytest.raises(hvcore.ConfigError) as datastore:
        hvcore.Datastore([{"shards": "0-8"}], backend="memory", sequence=url)
    with pytest.raises(hvcore.ConfigError) as generator:
        hvcore.KeyGenerator(sequence=url)
    assert SECRET not in str(datastore.value)
    assert SECRET not in str(generator.value)


@pytest.mark.parametrize("command", ["key new", "config"])
def test_hv_never_prints_a_redis_url_password_with_a_slash(command: str, tmp_path: Path) -> None:
    url = URLS[0]
    config = tmp_path / "hv.toml"
    config.write_text(f'backend = "memory"\nsequence = "{url}"\n[[servers]]\nshards = "0-8"\n')
    args = (
        ["key", "new", "--shard", "5", "--sequence", url]
        if command == "key new"
        else ["config", "--config", str(config)]
    )
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        main(args, out=out)
    assert SECRET not in out.getvalue() + err.getvalue()
