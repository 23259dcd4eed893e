"""A fourth newcomer's findings: a password shown by errors and by `hv config`.

The README promises "Messages ... never contain a password" and that hv "masks it in every output". Two
everyday mistakes in a key=value `conninfo` break that: a password with a space that is not quoted, and a
quote that is not closed.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import hvcore
from hvcore.cli import main

SECRET = "s3cr3tPW"


@pytest.mark.parametrize("spelling", ["conninfo", "dsn"])
def test_a_password_with_a_space_is_not_quoted_in_the_config_error(spelling: str) -> None:
    server = {"shards": "0-8", spelling: f"host=127.0.0.1 dbname=app password=my {SECRET}"}
    with pytest.raises(hvcore.ConfigError) as caught:
        hvcore.Datastore([server], backend="jsonb")
    assert SECRET not in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    "conninfo",
    [
        f"host=127.0.0.1 dbname=app password='{SECRET} sslmode=require",  # the closing quote forgotten
        f"host=127.0.0.1 dbname=app password=my {SECRET}",  # a password with a space, unquoted
    ],
    ids=["unterminated-quote", "unquoted-space"],
)
@pytest.mark.parametrize("json", [False, True], ids=["text", "json"])
def test_hv_config_never_prints_the_password_of_a_malformed_conninfo(
    conninfo: str, json: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hv.toml"
    path.write_text(f'backend = "jsonb"\n[[servers]]\nshards = "0-8"\nconninfo = "{conninfo}"\n')
    out = io.StringIO()
    main(["config", "--config", str(path), *(["--json"] if json else [])], out)
    captured = capsys.readouterr()
    shown = out.getvalue() + captured.out + captured.err
    assert SECRET not in shown, shown
