"""The hv command line, run in-process and as the installed console script."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.services import require_module

from hvcore import KeyLayout
from hvcore._cli import main


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out)
    return code, out.getvalue()


def test_decode_old_library_id_as_json() -> None:
    code, text = run("key", "decode", "307821103844175873", "--layout", "hypervault", "--json")
    assert code == 0
    assert json.loads(text) == {
        "id": "307821103844175873",
        "created": "2014-11-15T14:11:06.450Z",
        "shard_id": 12,
        "added_id": 1,
        "timestamp_ms": 1416060666450,
    }


def test_decode_with_epoch_matches_layout() -> None:
    _, by_name = run("key", "decode", "307821103844175873", "--layout", "hypervault", "--json")
    _, by_epoch = run("key", "decode", "307821103844175873", "--epoch", "1379365531352", "--json")
    assert by_name == by_epoch


def test_decode_table_output() -> None:
    code, text = run("key", "decode", "307821103844175873", "--layout", "hypervault")
    assert code == 0
    assert "2014-11-15T14:11:06.450Z" in text and "shard_id" in text


def test_decode_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("key", "decode", "12abc")
    assert code == 2
    assert "not a decimal key: '12abc'" in capsys.readouterr().err


def test_new_keys_are_unique_and_decode_to_the_shard() -> None:
    code, text = run("key", "new", "--shard", "42", "--count", "2500")
    assert code == 0
    ids = [int(line) for line in text.split()]
    assert len(ids) == len(set(ids)) == 2500
    assert {KeyLayout.DEFAULT.key(i).shard_id for i in ids} == {42}


@pytest.mark.parametrize(
    ("args", "message"), [(["--shard", "8192"], "0..8191"), (["--shard", "1", "--count", "0"], "≥ 1")]
)
def test_new_bad_input(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("key", "new", *args)
    assert code == 2
    assert message in capsys.readouterr().err


def test_demo_on_memory() -> None:
    code, text = run("demo", "--backend", "memory", "--rows", "200", "--json")
    assert code == 0
    result = json.loads(text)
    assert result["written"] == result["read_back"] == 200
    assert sum(s["rows"] for s in result["servers"]) == 200
    assert len(result["servers"]) == 2


def test_init_and_status_with_a_memory_config(tmp_path: Path) -> None:
    config = tmp_path / "hv.toml"
    config.write_text(
        'backend = "memory"\npool_max = 4\n\n[[servers]]\nshards = "0-8"\nname = "cli-a"\n\n'
        '[[servers]]\nshards = "8-16"\nname = "cli-b"\n'
    )
    code, text = run("init", "--config", str(config), "--json")
    assert code == 0 and sum(s["shards"] for s in json.loads(text)["servers"]) == 16
    code, text = run("status", "--config", str(config))
    assert code == 0 and "memory:cli-a" in text and "0-8" in text


def test_bad_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('backend = "memory"\n[[servers]]\nshards = "5-1"\n')
    assert run("status", "--config", str(config))[0] == 2
    assert "reversed" in capsys.readouterr().err
    assert run("status", "--config", str(tmp_path / "missing.toml"))[0] == 2
    assert "does not exist" in capsys.readouterr().err


def test_config_show_masks_passwords(tmp_path: Path) -> None:
    config = tmp_path / "hv.toml"
    config.write_text(
        '[[servers]]\nshards = "0-8"\nhost = "db1"\npassword = "s3cret-pw"\n\n'
        '[[servers]]\nshards = "8-16"\nconninfo = "host=db2 password=other-s3cret user=u"\n'
    )
    code, text = run("config", "--config", str(config))
    assert code == 0
    assert "s3cret" not in text and "***" in text


def test_console_script_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hvcore._cli", "key", "decode", "307821103844175873", "--layout", "hypervault"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "2014-11-15T14:11:06.450Z" in result.stdout
    hv = Path(sys.executable).parent / "hv"
    assert hv.exists(), "the hv console script is not installed next to python"


def test_demo_on_embedded_postgresql() -> None:
    require_module("pgserver")
    code, text = run("demo", "--rows", "300", "--json")
    assert code == 0
    result = json.loads(text)
    assert result["written"] == result["read_back"] == 300
    assert [s["reachable"] for s in result["servers"]] == [True, True]
    assert sum(s["rows"] for s in result["servers"]) == 300
    assert "embedded" in result["setup"]


def test_version_says_how_keys_are_made(capsys: pytest.CaptureFixture[str]) -> None:
    from hvcore._keymaker import ACCELERATED

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("hypervault ")
    assert ("C accelerator" in out and "pure Python" not in out) if ACCELERATED else "pure Python" in out
