"""The host check shared by server and replica settings: a connection string in ``host`` is refused (no I/O)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["host_problem"]

_NOT_A_HOST = re.compile(r"://|[=@\s]")  # a URL, a keyword string or user@host: never a host name, address or path


def host_problem(settings: Mapping[str, Any]) -> str | None:
    """What is wrong with ``settings``' ``host``/``hostaddr``, or None: a connection URL or keyword string there.

    ``host=os.environ["DATABASE_URL"]`` is a common slip: libpq would take the whole string as a host name, and every
    label, repr and error built from the host would show its password. The message never repeats the value.
    """
    for name in ("host", "hostaddr"):
        value = settings.get(name)
        if isinstance(value, str) and _NOT_A_HOST.search(value):
            return (
                f"{name} holds a connection URL or keyword string, not a host name (its text is not shown: it may "
                f"hold a password); pass the whole string as conninfo=..., or only the host name as {name}=..."
            )
    return None
