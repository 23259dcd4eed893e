"""`show_value`: a short, never-raising repr of any value, for error messages (no I/O)."""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["show_value"]


class _Shower(reprlib.Repr):
    """`reprlib.Repr` (long strings and containers cut short) that also shows ints too long for ``repr``."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 1000:  # repr raises past 4300 digits (Python's int/str limit); cut anyway
            return f"<int of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)


_shower = _Shower()
_shower.maxstring = 60
_shower.maxother = 60
_shower.maxlevel = 3


def show_value(value: Any, limit: int = 80) -> str:
    """A short repr of ``value`` for error messages: long strings and containers cut short, never raising.

    ``repr`` itself can raise (an int of more than 4,300 digits exceeds Python's int/str conversion limit, also
    inside a list; a class may have a broken ``__repr__``): such values are shown by type (and size) instead.
    """
    try:
        text = _shower.repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"
