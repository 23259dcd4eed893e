"""A newcomer's findings on settings: values accepted in one place and refused in another."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import hvcore
from hvcore.cli import main

SERVER = '[[servers]]\nshards = "0-16"\nhost = "127.0.0.1"\ndbname = "app"\n'


def _hv(*argv: str) -> int:
    return main(list(argv), io.StringIO())


def test_hv_config_refuses_a_backend_the_datastore_refuses(tmp_path: Path) -> None:
    """`hv config` is how a user checks a file ('the file as read'): a file it shows without complaint must open."""
    path = tmp_path / "hv.toml"
    path.write_text('backend = "JSONB"\n' + SERVER)
    with pytest.raises(hvcore.HypervaultError):
        hvcore.Datastore.from_config(path)
    assert _hv("config", "--config", str(path)) == 2


def test_hv_config_refuses_a_sequence_url_the_datastore_refuses(tmp_path: Path) -> None:
    path = tmp_path / "hv.toml"
    path.write_text('sequence = "redis://127.0.0.1:6379/0?foo=1"\n' + SERVER)
    with pytest.raises(hvcore.ConfigError):
        hvcore.Datastore.from_config(path)
    assert _hv("config", "--config", str(path)) == 2


@pytest.mark.parametrize("token", [None, ""])
def test_a_too_short_timeline_secret_is_refused_with_an_empty_token(token: str | None) -> None:
    """tl.token(secret='short') and Timeline.from_token(real_token, secret='short') raise ConfigError; so should
    the first call a web app makes, with no cookie yet."""
    with pytest.raises(hvcore.ConfigError, match="secret"):
        hvcore.Timeline.from_token(token, secret="short")


def test_key_generator_takes_the_layout_names_the_datastore_takes() -> None:
    """README 'Coming from hv 0.1': layout='hypervault' for Datastore; a KeyGenerator for ids stored elsewhere
    should read the same setting."""
    with hvcore.Datastore([dict(shards="0-16")], backend="memory", layout="hypervault") as db:
        assert db.put(3, 1).layout is hvcore.KeyLayout.HYPERVAULT
    key = hvcore.KeyGenerator(layout="hypervault").next_key(3)
    assert key.layout is hvcore.KeyLayout.HYPERVAULT
