"""The CLI's output layer: aligned tables, JSON, progress bars and password masking (no command logic here)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from hvcore._config import redact

__all__ = ["Progress", "emit_json", "masked", "settings_text", "table"]


def table(rows: Sequence[Sequence[object]], headers: Sequence[str], out: TextIO) -> None:
    """Print an aligned plain-text table; columns whose cells are all numbers are right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True))

    print(line(cells[0]).rstrip(), file=out)
    print("  ".join("─" * w for w in widths), file=out)
    for row in cells[1:]:
        print(line(row).rstrip(), file=out)


def _is_number(text: str) -> bool:
    return text.removesuffix("/s").replace(",", "").replace(".", "", 1).replace("%", "").lstrip("-").isdigit()


def emit_json(data: object, out: TextIO, *, lines: bool = False) -> None:
    """Print JSON, indented (dict keys as strings, datetimes and other objects as ``str``); ``lines``: on one line
    (JSON Lines, for ``--watch --json``: one document per round, each readable as it comes)."""
    json.dump(data, out, indent=None if lines else 2, default=str)
    out.write("\n")


def masked(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Connection settings safe to print: passwords and other secrets as ``***``, in conninfo strings too."""
    return redact(settings)


def settings_text(settings: Mapping[str, Any], *, skip: Sequence[str] = ("shards",)) -> str:
    """Connection settings on one line, ``key=value`` pairs with secrets masked (``host=db1 password=***``)."""
    safe = masked(settings)
    return " ".join(
        f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}" for k, v in safe.items() if k not in skip
    )


class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal, or when forced)."""

    def __init__(self, label: str, total: int, *, enabled: bool | None = None) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.started = time.perf_counter()
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last_draw = 0.0

    def advance(self, count: int = 1) -> None:
        """Count finished units and redraw at most 20 times a second."""
        self.done += count
        now = time.perf_counter()
        if self.enabled and (now - self._last_draw > 0.05 or self.done >= self.total):
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(self.done / self.total, 1.0)
        bar = "█" * int(frac * 30) + "░" * (30 - int(frac * 30))
        rate = self.done / max(now - self.started, 1e-9)
        sys.stderr.write(f"\r{self.label:<12} {bar} {self.done:>6}/{self.total} {frac:6.1%} {rate:,.0f}/s")
        sys.stderr.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled:
            self._draw(time.perf_counter())
            sys.stderr.write("\n")
