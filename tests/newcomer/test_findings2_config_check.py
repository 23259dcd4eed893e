"""A second newcomer's findings: `hv config` ("the file as read") shows files that Datastore.from_config refuses.

The first newcomer's finding of this kind was fixed for `backend` and `sequence`; these settings still pass
`hv config` (exit 0, no complaint) and then fail every command that opens the store.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import hvcore
from hvcore.cli import main

SERVER = '[[servers]]\nshards = "0-16"\nhost = "127.0.0.1"\ndbname = "app"\n'


@pytest.mark.parametrize("setting", ["worker = { bits = 9 }", "layout = 99999999999999"])
def test_hv_config_refuses_what_the_datastore_refuses(setting: str, tmp_path: Path) -> None:
    path = tmp_path / "hv.toml"
    path.write_text(f"{setting}\n{SERVER}")
    with pytest.raises(hvcore.ConfigError):
        hvcore.Datastore.from_config(path)
    assert main(["config", "--config", str(path)], io.StringIO()) == 2


def test_a_config_file_with_a_byte_order_mark_is_read_or_named(tmp_path: Path) -> None:
    path = tmp_path / "hv.toml"
    path.write_bytes(b"\xef\xbb\xbf" + f'backend = "jsonb"\n{SERVER}'.encode())
    try:
        store = hvcore.Datastore.from_config(path)
    except hvcore.ConfigError as exc:
        assert "byte order mark" in str(exc).lower() or "BOM" in str(exc), str(exc)
        return
    store.close()
