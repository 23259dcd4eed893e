"""`show_value`: a short, never-raising repr of any value, for error messages (no I/O)."""

from __future__ import annotations

__all__ = ["show_value"]


def show_value(value: object, limit: int = 60) -> str:
    """A short repr of ``value`` for error messages: cut at ``limit`` characters, never raising.

    ``repr`` itself can raise (an int of more than 4,300 digits exceeds Python's int/str conversion limit, a class
    may have a broken ``__repr__``): such values are described by type (and size) instead.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1000:
        return f"an int of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        text = repr(value)
    except Exception:
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 1] + "…"
