"""Fifth newcomer: a URL whose password holds an unescaped ``/`` shows the password as a "port".

``postgresql://app:S3cretPW/x@db/app`` is an everyday mistake (a password with a slash, not percent-encoded).
libpq then reads ``app`` as the host and ``S3cretPW`` as its port, and hypervault's own port check quotes it back:
``port must be a number in 1..65535 (one per host, comma-separated), got 'S3cretPW'`` -- in the ConfigError of
``Datastore(...)``, and in ``hv config`` / ``hv status`` output. The README says messages never contain a password.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

import hvcore
from hvcore.cli import main

SECRET = "S3cretPW"
URLS = [
    f"postgresql://app:{SECRET}/x@127.0.0.1:5432/app",
    f"postgresql://app:{SECRET}/x@127.0.0.1/app",
    "postgresql://app:271828/x@127.0.0.1/app",  # a numeric password: shown as a port out of range
]
REASON = (
    "a URL password with an unescaped '/' is read by libpq as the port, and the port check quotes it ('got "
    "'S3cretPW''); the port value of a URL that has a user:… part should be masked (or the error should say the "
    "password needs percent-encoding, without showing it)"
)


def _secret(url: str) -> str:
    return url.split(":")[2].split("/")[0]


@pytest.mark.parametrize("url", URLS)
def test_a_url_password_with_a_slash_is_not_shown_by_the_config_error(url: str) -> None:
    with pytest.raises(hvcore.ConfigError) as caught:
        hvcore.Datastore([{"conninfo": url, "shards": "0-8"}], backend="jsonb")
    assert _secret(url) not in str(caught.value), str(caught.value)


@pytest.mark.parametrize("command", ["config", "status"])
def test_hv_never_prints_a_url_password_with_a_slash(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hv.toml"
    path.write_text(f'backend = "jsonb"\n[[servers]]\nshards = "0-8"\nconninfo = "{URLS[0]}"\n')
    out = io.StringIO()
    with contextlib.suppress(SystemExit):
        main([command, "--config", str(path)], out)
    captured = capsys.readouterr()
    shown = out.getvalue() + captured.out + captured.err
    assert SECRET not in shown, shown
