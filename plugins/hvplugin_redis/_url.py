"""The one parser of Redis sequence URLs: the source's own options and redis-py's connection options in the query.

``redis://[user:password@]host:port/db?key_prefix=myapp&connect_timeout=0.5&wait_replicas=1&client_name=api``

- the source's options are its constructor's keyword arguments (`SOURCE_OPTIONS`), by the same names;
- redis-py's ``socket_timeout`` / ``socket_connect_timeout`` are the source's ``read_timeout`` / ``connect_timeout``
  (one setting each, so `max_wait` stays the bound it documents);
- a few more of redis-py's connection options pass through to the client (`REDIS_OPTIONS`);
- anything else is refused with a `ConfigError` naming the option and listing the valid ones, before any connection.

Passwords stay out of every message: they belong in the URL's user-info, which `redact` masks, and a ``password``
query option is refused without its value being repeated.
"""

from __future__ import annotations

import difflib
import math
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hvcore.errors import ConfigError

__all__ = ["REDIS_OPTIONS", "SOURCE_OPTIONS", "ParsedURL", "parse_url", "redact"]

_INT = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _as_int(name: str, raw: str) -> int:
    if not _INT.fullmatch(raw):
        raise ConfigError(f"option {name!r} in the Redis URL must be an int, got {raw!r}")
    return int(raw)


def _as_int_or_none(name: str, raw: str) -> int | None:
    if raw.lower() == "none":
        return None
    if not _INT.fullmatch(raw):
        raise ConfigError(f"option {name!r} in the Redis URL must be an int or 'none', got {raw!r}")
    return int(raw)


def _as_seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"option {name!r} in the Redis URL must be a number of seconds, got {raw!r}")
    return value


def _as_bool(name: str, raw: str) -> bool:
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"option {name!r} in the Redis URL must be true or false (or 1/0, yes/no, on/off), got {raw!r}")


def _as_text(name: str, raw: str) -> str:
    if not raw:
        raise ConfigError(f"option {name!r} in the Redis URL must not be empty")
    return raw


SOURCE_OPTIONS: dict[str, Callable[[str, str], Any]] = {
    "block_size": _as_int_or_none,
    "check_clock": _as_bool,
    "cluster": _as_bool,
    "connect_timeout": _as_seconds,
    "expire_ms": _as_int,
    "key_prefix": _as_text,
    "max_block": _as_int_or_none,
    "max_skew_ms": _as_int_or_none,
    "min_block": _as_int,
    "read_timeout": _as_seconds,
    "retries": _as_int,
    "wait_replicas": _as_int,
    "wait_timeout": _as_seconds,
}
"""The source's own options in a URL query: its constructor's keyword arguments (all but ``layout``)."""

_ALIASES = {"socket_timeout": "read_timeout", "socket_connect_timeout": "connect_timeout"}


def _redis_bool(name: str, raw: str) -> str:
    return "true" if _as_bool(name, raw) else "false"


def _redis_int(low: int, high: int | None = None) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = _as_int(name, raw)
        if value < low or (high is not None and value > high):
            valid = f"{low}..{high}" if high is not None else f">= {low}"
            raise ConfigError(f"option {name!r} in the Redis URL must be an int {valid}, got {raw!r}")
        return str(value)

    return parse


def _redis_choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if raw.lower() not in choices:
            raise ConfigError(f"option {name!r} in the Redis URL must be one of {', '.join(choices)}, got {raw!r}")
        return raw.lower()

    return parse


def _redis_text(name: str, raw: str) -> str:
    return _as_text(name, raw)


REDIS_OPTIONS: dict[str, Callable[[str, str], str]] = {
    "client_name": _redis_text,
    "db": _redis_int(0),
    "health_check_interval": _redis_int(0),
    "max_connections": _redis_int(1),
    "protocol": _redis_int(2, 3),
    "socket_keepalive": _redis_bool,
    "ssl_ca_certs": _redis_text,
    "ssl_cert_reqs": _redis_choice("none", "optional", "required"),
    "ssl_certfile": _redis_text,
    "ssl_check_hostname": _redis_bool,
    "ssl_keyfile": _redis_text,
}
"""redis-py's connection options passed through to the client (checked here, parsed again by redis-py)."""

_REFUSED = {
    "max_wait": (
        "it is derived, (retries + 1) * (connect_timeout + read_timeout), plus wait_timeout per attempt with "
        "wait_replicas: set those instead"
    ),
    "layout": "the key layout comes from the Datastore or KeyGenerator using the source",
    "password": "credentials belong in the URL's user-info: redis://user:password@host:port/0",
    "username": "credentials belong in the URL's user-info: redis://user:password@host:port/0",
    "retry_on_timeout": "the source retries by itself (retries=N), so that max_wait stays a bound",
    "retry_on_error": "the source retries by itself (retries=N), so that max_wait stays a bound",
    "decode_responses": "the source reads raw replies",
}

_SCHEMES = ("redis", "rediss", "unix")


def redact(url: str) -> str:
    """``url`` without its password (and user), for messages and reprs: the user-info becomes ``***``. When the
    parser misread a password (`_misread`), everything up to the last ``@`` is masked: a password holding ``/``,
    ``?`` or ``#`` that is not percent-encoded ends the URL's authority early for the parser
    (``redis://app:pa/ss@host`` has host ``app`` and port ``pa``), and would otherwise be shown whole. An ``@`` in
    a query option (``?client_name=a@b``) is shown as written."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    try:
        netloc = urllib.parse.urlsplit(url).netloc
    except ValueError:
        netloc = ""
    userinfo = netloc.rpartition("@")[0]
    if "@" in netloc and rest.startswith(userinfo + "@"):  # the parser's user-info (the rest kept as written)
        return f"{scheme}://***@{rest[len(userinfo) + 1 :]}"
    if _misread(url):
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


def _misread(url: str) -> bool:
    """True when the parser found no user-info but an ``@`` ends one it cut short: its port is not a number (the
    password's start read as the port: ``redis://app:pa/ss@host``, ``?`` and ``#`` alike) or the ``@`` is in a
    redis:// path (``redis://app:1234/ss@host``; a unix:// path is a file name and may hold one)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "@" in url
    if "@" in parts.netloc:
        return False
    try:
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return "@" in url.partition("://")[2]
    return parts.scheme != "unix" and "@" in parts.path


def _encoding_hint(url: str) -> str:
    """What to do when the parser cut a password short (`_misread`), else ``""``."""
    if _misread(url):
        return (
            "; a password holding '/', '?', '#' or '@' must be percent-encoded in the URL "
            "(urllib.parse.quote(password, safe=''))"
        )
    return ""


def _parse_problem(exc: ValueError, url: str) -> str:
    """The parser's complaint, without quoting a value from the URL (a misread port may be part of a password)."""
    if "port" in str(exc).lower():
        return "the port must be a number in 0..65535"
    return "not a URL the parser reads" if redact(url) != url else str(exc)


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedURL:
    """A Redis sequence URL taken apart: what goes to redis-py, and the source's own options."""

    redis_url: str
    """The URL for redis-py: its own options only in the query."""
    options: dict[str, Any]
    """The source's options found in the query, by constructor argument name, already typed."""
    name: str
    """The URL without password and without query, for reprs and messages."""
    db: int
    """The database number (path or ``db`` option), 0 if none."""
    unix: bool
    """A ``unix://`` socket URL."""


def parse_url(url: str) -> ParsedURL:
    """Take ``url`` apart; `ConfigError` for a bad scheme, port, or an unknown, repeated or bad option."""
    safe = redact(url)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {safe!r}: {_parse_problem(exc, url)}{_encoding_hint(url)}") from None
    if _encoding_hint(url):
        raise ConfigError(f"invalid Redis URL {safe!r}: the host is not where the last '@' says{_encoding_hint(url)}")
    name = urllib.parse.urlunsplit(urllib.parse.urlsplit(safe)._replace(query="", fragment=""))
    if parts.scheme not in _SCHEMES:
        raise ConfigError(f"invalid Redis URL {name!r}: the scheme must be redis://, rediss:// or unix://")
    options: dict[str, Any] = {}
    kept: list[tuple[str, str]] = []
    seen: set[str] = set()
    for option, raw in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        target = _ALIASES.get(option, option)
        if target in seen:
            also = f" (as {option!r})" if option != target else ""
            raise ConfigError(f"option {target!r} is given twice in the Redis URL {name!r}{also}")
        seen.add(target)
        if target in SOURCE_OPTIONS:
            options[target] = SOURCE_OPTIONS[target](option, raw)
        elif option in REDIS_OPTIONS:
            if option.startswith("ssl_") and parts.scheme != "rediss":
                raise ConfigError(f"option {option!r} in the Redis URL {name!r} needs a rediss:// (TLS) URL")
            kept.append((option, REDIS_OPTIONS[option](option, raw)))
        elif option in _REFUSED:
            raise ConfigError(f"option {option!r} is not accepted in a Redis sequence URL: {_REFUSED[option]}")
        else:
            raise ConfigError(_unknown(option, name))
    db = 0
    path = parts.path.strip("/")
    if "db" in seen:
        db = int(dict(kept)["db"])
    elif parts.scheme != "unix" and path:
        if not path.isdigit():
            raise ConfigError(f"invalid Redis URL {name!r}: the path must be a database number, got {path!r}")
        db = int(path)
    redis_url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept), fragment=""))
    return ParsedURL(redis_url=redis_url, options=options, name=name, db=db, unix=parts.scheme == "unix")


def _unknown(option: str, name: str) -> str:
    """The message for an unknown option: its name only (its value could be a secret), a guess, the valid ones."""
    valid = sorted(SOURCE_OPTIONS) + sorted(_ALIASES) + sorted(REDIS_OPTIONS)
    close = difflib.get_close_matches(option, valid, n=1, cutoff=0.6)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown option {option!r} in the Redis URL {name!r}{guess}: the source takes "
        f"{', '.join(sorted(SOURCE_OPTIONS))}; redis-py's {', '.join(sorted(_ALIASES) + sorted(REDIS_OPTIONS))} "
        f"pass through"
    )
