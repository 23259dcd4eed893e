"""A newcomer's findings on `hv demo`: bad arguments are run instead of refused."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from hvcore.cli import main


def _hv(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out)
    return code, out.getvalue()


@pytest.mark.parametrize("rows", ["-5", "0"])
def test_demo_refuses_a_row_count_below_one(rows: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:  # argparse's usage error: nothing runs
        _hv("demo", "--backend", "memory", "--rows", rows)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "hv demo: error: argument --rows" in err and "above 0" in err, err


def test_demo_refuses_backend_with_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A user asking for the memory backend must not get rows written into the servers of the file; the config
    names a server that does not exist, so honouring --backend memory or refusing the pair both pass quickly."""
    path = tmp_path / "hv.toml"
    path.write_text('[[servers]]\nshards = "0-16"\nhost = "127.0.0.1"\nport = 1\ndbname = "nowhere"\n')
    code, _out = _hv("demo", "--config", str(path), "--backend", "memory", "--rows", "10")
    err = capsys.readouterr().err
    assert code == 0 or "--backend" in err, (code, err)
