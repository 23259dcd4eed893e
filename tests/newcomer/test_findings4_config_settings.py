"""A fourth newcomer's findings: `hv config` ("the file as read") passes connection settings the store refuses.

Earlier findings made `hv config` refuse bad `backend`, `sequence`, `worker` and `layout` values. The libpq
settings of a server entry are still shown as if fine (exit 0), while `Datastore.from_config` (and so `hv init`,
`hv status`, the application) refuses the same file with a ConfigError: a newcomer checking a file with
`hv config` before deploying is told it is good.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import hvcore
from hvcore.cli import main


@pytest.mark.parametrize(
    "entry",
    [
        'hots = "127.0.0.1"\ndbname = "app"',
        'host = "127.0.0.1"\ndbname = "app"\nport = "54x"',
        'host = "127.0.0.1"\ndbname = "app"\ndatabase = "other"',
        'conninfo = "host=127.0.0.1 dbname=app sslmode=bogus"',
    ],
    ids=["unknown-option", "bad-port", "dbname-and-database", "bad-sslmode"],
)
def test_hv_config_refuses_connection_settings_the_datastore_refuses(entry: str, tmp_path: Path) -> None:
    path = tmp_path / "hv.toml"
    path.write_text(f'backend = "jsonb"\n[[servers]]\nshards = "0-16"\n{entry}\n')
    with pytest.raises(hvcore.ConfigError):
        hvcore.Datastore.from_config(path)
    assert main(["config", "--config", str(path)], io.StringIO()) == 2
