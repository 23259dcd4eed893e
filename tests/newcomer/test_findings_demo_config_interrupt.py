"""A newcomer's findings: `hv demo --config FILE` interrupted with Ctrl-C leaves its rows in the user's servers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hvcore

HV = str(Path(sys.executable).with_name("hv"))


def test_an_interrupted_demo_on_configured_servers_deletes_its_rows(
    pg_fresh_db: dict[str, Any], tmp_path: Path
) -> None:
    config = tmp_path / "hv.toml"
    db_settings = "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in pg_fresh_db.items())
    config.write_text(f'backend = "jsonb"\n[[servers]]\nshards = "0-8"\n{db_settings}\n'.replace("'", '"'))
    with hvcore.Datastore.from_config(config) as db:
        db.provision()

        def demo_rows() -> int:
            return sum(1 for r in db.query() if "hv_demo" in r.data)

        demo = subprocess.Popen(
            [HV, "demo", "--config", str(config), "--rows", "40000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 60
            while demo_rows() < 500 and time.monotonic() < deadline and demo.poll() is None:
                time.sleep(0.2)
            demo.send_signal(signal.SIGINT)
            out, _ = demo.communicate(timeout=60)
        finally:
            if demo.poll() is None:
                demo.kill()
        assert demo.returncode == 130, out.decode()
        left = demo_rows()
        assert left == 0, f"{left} demo rows left in the configured database; the CLI said: {out.decode()[-200:]!r}"
