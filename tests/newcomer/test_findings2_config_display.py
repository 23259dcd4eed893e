"""A second newcomer's findings: `hv config` ("the file as read") shows a conninfo URL with its options cut off."""

from __future__ import annotations

import io
import json
from pathlib import Path

from hvcore.cli import main


def test_hv_config_keeps_the_url_options_after_a_masked_password(tmp_path: Path) -> None:
    path = tmp_path / "hv.toml"
    url = "postgresql://app@127.0.0.1/app?password=hunter2&sslmode=disable&application_name=app"
    path.write_text(f'[[servers]]\nshards = "0-16"\nconninfo = "{url}"\n')
    out = io.StringIO()
    assert main(["config", "--config", str(path), "--json"], out) == 0
    shown = json.loads(out.getvalue())["servers"][0]["conninfo"]
    assert "hunter2" not in shown
    assert shown == "postgresql://app@127.0.0.1/app?password=***&sslmode=disable&application_name=app", shown
