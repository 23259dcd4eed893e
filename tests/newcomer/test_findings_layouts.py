"""A newcomer's findings on custom key layouts (an epoch in Unix ms, KeyLayout(...), hv key --epoch)."""

from __future__ import annotations

import io
import time

import pytest

import hvcore
from hvcore.cli import main


def test_hv_key_decode_with_a_negative_epoch_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["key", "decode", "307821103844175873", "--epoch", "-5"], io.StringIO())
    except ValueError as exc:  # what happens now: the exception escapes main()
        pytest.fail(f"traceback: {type(exc).__name__}: {exc}")
    assert code == 2
    assert capsys.readouterr().err.startswith("hv: error:")


@pytest.mark.parametrize("options", [dict(epoch_ms=-5), dict(epoch_ms="1"), dict(epoch_ms=0, time_bits=50)])
def test_a_bad_key_layout_is_a_config_error(options: dict[str, object]) -> None:
    with pytest.raises(hvcore.ConfigError):
        hvcore.KeyLayout(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("epoch_ms", [0, time.time_ns() // 1_000_000 + 365 * 86_400_000])
def test_a_layout_that_cannot_make_a_key_now_is_refused_when_the_store_is_built(epoch_ms: int) -> None:
    """README: bad input is a typed error before any SQL; the settings are checked when the store is built."""
    with pytest.raises(hvcore.ConfigError, match=r"layout|epoch"):
        hvcore.Datastore([dict(shards="0-16")], backend="memory", layout=epoch_ms).close()


def test_hv_key_decode_layout_given_as_an_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    code = main(["key", "decode", "307821103844175873", "--layout", "1379365531352"], out)
    err = capsys.readouterr().err
    assert code == 0 or "--epoch" in err, err
    if code == 0:
        assert "2014-11-15T14:11:06.450Z" in out.getvalue()


def test_hv_key_decode_refuses_layout_and_epoch_together() -> None:
    try:
        code = main(["key", "decode", "307821103844175873", "--layout", "hypervault", "--epoch", "0"], io.StringIO())
    except SystemExit as exc:  # argparse's usage error (mutually exclusive options) exits 2
        code = int(exc.code or 0)
    assert code == 2
