"""A server that answers but refuses the connection's settings: the error says which setting, and nothing else is
printed to an application that configured no logging."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

import hvcore


@pytest.mark.parametrize(
    ("setting", "value", "said"), [("dbname", "hv_no_such_db", "database"), ("user", "hv_no_such_role", "role")]
)
def test_a_database_or_role_that_does_not_exist_names_the_setting(
    pg_main: dict[str, Any], setting: str, value: str, said: str
) -> None:
    servers = [{**pg_main, setting: value, "shards": "0-2"}]
    with (
        hvcore.Datastore(servers, backend="jsonb", worker=None, pool_block_timeout=2) as db,
        pytest.raises(hvcore.LoginRefused) as caught,  # not ServerUnavailable: the server answers
    ):
        db.put(1, 1, a=1)
    text = str(caught.value)
    assert f'{said} "{value}" does not exist' in text and f"check {setting} in the connection settings" in text, text
    assert caught.value.setting == f"{said} missing"


def test_an_application_without_logging_gets_no_stray_pool_lines(pg_main: dict[str, Any]) -> None:
    """psycopg_pool's own warnings used to reach stderr through Python's last-resort handler."""
    code = textwrap.dedent(
        f"""
        import hvcore
        servers = [dict({dict(pg_main)!r}, dbname="hv_no_such_db", shards="0-2")]
        try:
            with hvcore.Datastore(servers, backend="jsonb", worker=None, pool_block_timeout=1) as db:
                db.put(1, 1, a=1)
        except hvcore.LoginRefused:
            print("refused")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "refused"
    assert done.stderr == "", done.stderr
