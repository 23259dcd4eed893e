"""The one parser for datastore settings: keyword arguments and TOML config files go through here."""

from __future__ import annotations

import difflib
import logging
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hvcore._hosts import host_problem
from hvcore._key import KeyLayout
from hvcore._replicas import check_max_replica_lag, check_read_from, replica_problems
from hvcore._show import show_value
from hvcore._worker import WorkerSlice, lease_option_problems
from hvcore.errors import ConfigError, ShardMapError

__all__ = [
    "LIBPQ_ALIASES",
    "PGBOUNCER_MODES",
    "DatastoreConfig",
    "ServerSettings",
    "check_server_entries",
    "libpq_settings",
    "load_config",
    "parse_layout",
    "pgbouncer_mode",
    "redact",
    "server_endpoint",
]

_SECRET_NAMES = frozenset({"password", "passwd", "sslpassword", "secret", "token"})
_TOP_LEVEL = frozenset(
    {
        "backend",
        "worker",
        "pool_max",
        "pool_block_timeout",
        "servers",
        "layout",
        "sequence",
        "allow_gaps",
        "row_factory",
        "operation_timeout",
        "values",
        "log_values",
        "read_from",
        "max_replica_lag",
        "read_your_writes",
    }
)
TIMEOUT_LIMIT = 2_147_483
"""Longest timeout in seconds (about 24.8 days): 2**31 - 1 ms, what poll() and libpq's connect_timeout take."""
POOL_MAX_LIMIT = 10_000
"""Most connections per server a pool may hold (PostgreSQL's max_connections is 100 by default)."""
ROW_FACTORIES = ("row", "dict", "tuple")
"""Rows from ``cursor()``/``get_connection()``: `Row` (tuple and mapping at once, the default), dict, or tuple."""
VALUE_RULES = {"jsonb": "jsonb", "json": "jsonb", "text": "text", "hstore": "text"}
"""Spellings of the ``values`` option → the value rules: ``jsonb`` (JSON types) or ``text`` (hstore: strings)."""
_BACKEND_VALUES = {"hstore": "text", "jsonb": "jsonb"}


def parse_layout(value: object) -> KeyLayout:
    """A layout from a `KeyLayout`, a preset name (``"default"``, ``"hypervault"``) or an epoch in Unix ms."""
    if isinstance(value, KeyLayout):
        return value
    if isinstance(value, str):
        presets = {"default": KeyLayout.DEFAULT, "hypervault": KeyLayout.HYPERVAULT}
        try:
            return presets[value.lower()]
        except KeyError:
            raise ConfigError(
                f"unknown layout {value!r}: expected 'default', 'hypervault' or an epoch in Unix ms"
            ) from None
    if type(value) is int and value >= 0:
        return KeyLayout(epoch_ms=value)
    raise ConfigError(f"layout must be 'default', 'hypervault', an epoch in Unix ms or a KeyLayout, got {value!r}")


def redact(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of connection settings safe to print: secrets and conninfo passwords masked."""
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if name.lower() in _SECRET_NAMES:
            out[name] = "***"
        elif name == "replicas" and isinstance(value, list | tuple):
            out[name] = [redact(r) if isinstance(r, Mapping) else r for r in value]
        elif name in ("conninfo", "dsn") and isinstance(value, str):
            out[name] = redact_conninfo(value)
        else:
            out[name] = value
    return out


_URL_SCHEME = re.compile(r"\s*[a-z][a-z0-9+.-]*://", re.IGNORECASE)  # postgresql://, and http:// (hv metrics)
# user:password@ up to the last @ before ? or #: a password with an unescaped / (or @) is masked whole too
_URL_USERINFO_SECRET = re.compile(r"(://[^:/@?#\s]*:)[^?#]*@")
_URL_QUERY_SECRET = re.compile(r"((?:^|&)(?:ssl)?password=)[^&#]*", re.IGNORECASE)
_KEYWORD_SECRET = re.compile(
    r"((?<![\w])(?:ssl)?password\s*=\s*)"
    # the value: quoted (an unterminated quote runs to the end, as libpq reads it) or a word, then any words that
    # are not ``key=`` pairs: the rest of a password holding an unquoted space, which libpq refuses (masked too)
    r"('(?:[^'\\]|\\.)*'?|(?:[^\s'\\]|\\.)+)(?:\s+(?![\w.-]+\s*=)(?:[^\s\\]|\\.)+)*",
    re.IGNORECASE,
)


def redact_conninfo(conninfo: str) -> str:
    """Mask the password (and ``sslpassword``) in a libpq conninfo or any URL, as ``***``, keeping the rest as written.

    Both forms libpq reads (https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING): a URL
    (``user:password@`` and ``?password=...``, which ends at ``&`` or ``#``) and ``keyword = value`` pairs (a value
    quoted in single quotes, or unquoted with backslash escapes).
    """
    if _URL_SCHEME.match(conninfo):
        head, mark, query = conninfo.partition("?")
        head = _URL_USERINFO_SECRET.sub(r"\1***@", head)
        return head + mark + _URL_QUERY_SECRET.sub(r"\1***", query)
    return _KEYWORD_SECRET.sub(r"\1***", conninfo)


LIBPQ_ALIASES = {"database": "dbname", "dsn": "conninfo"}
"""psycopg2-era spellings of connection settings → the libpq/psycopg 3 ones (the 2015 library passed its dicts to
psycopg2, whose ``connect()`` took ``database`` as a deprecated alias of ``dbname`` and ``dsn`` for the connection
string: https://www.psycopg.org/docs/module.html#psycopg2.connect)."""

_PROBE_HOST = "/dev/null/hypervault-check"  # a socket directory that cannot exist: libpq fails there, offline
_INTEGER_OPTIONS = ("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout")
_LIBPQ_INT = re.compile(r"\s*[-+]?\d+\s*")  # what libpq's parse_int_param accepts


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """One server's connection settings as libpq reads them: psycopg2 spellings resolved, checked, never connected.

    ``conninfo`` is the connection string or URL as given (``""`` if none), ``keywords`` the separate settings
    (``None`` values dropped) to pass beside it (``psycopg.connect(conninfo, **keywords)``), ``params`` the merged
    result as libpq parses it (keywords win over the string; empty when psycopg is not installed). The repr masks
    the password.
    """

    conninfo: str
    keywords: Mapping[str, Any]
    params: Mapping[str, str]

    def __repr__(self) -> str:
        return (
            f"ServerSettings(conninfo={redact_conninfo(self.conninfo)!r}, keywords={redact(self.keywords)!r}, "
            f"params={redact(self.params)!r})"
        )

    @property
    def password(self) -> str | None:
        """The password libpq will send, if one is given (for masking messages; never print it)."""
        value = self.params.get("password") or self.keywords.get("password")
        return str(value) if value else None


def _resolve_aliases(raw: dict[str, Any]) -> None:
    """Rename psycopg2's spellings in place; `ConfigError` if both spellings are given with different values."""
    for old, new in LIBPQ_ALIASES.items():
        if old not in raw:
            continue
        value = raw.pop(old)
        given = raw.get(new)
        if given is not None and value is not None and given != value:
            shown = [redact_conninfo(str(v)) if new == "conninfo" else repr(v) for v in (value, given)]
            raise ConfigError(
                f"connection settings give both {old}={shown[0]} (psycopg2's spelling of {new}) and "
                f"{new}={shown[1]}: keep one of them"
            )
        if given is None:
            raw[new] = value


def _masked_inputs(conninfo: str, keywords: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The same settings with every password replaced by ``***`` (to report a parse error without the password)."""
    return redact_conninfo(conninfo), {k: ("***" if k == "password" else v) for k, v in keywords.items()}


PGBOUNCER_MODES = ("auto", "transaction", "session", "off")
"""The ``pgbouncer`` setting of a server entry: how the PostgreSQL stores treat a pooler between them and the server.

``"transaction"``: a pooler in transaction mode (PgBouncer ``pool_mode = transaction``), so each transaction may
run on another server session: no prepared statements, ``SET LOCAL`` only; ``"session"``: a pooler in session mode
(behaves like a direct connection); ``"off"``: a direct connection; ``"auto"`` (the default): detected on the first
connection (see README "Behind PgBouncer")."""
SERVER_OPTIONS = ("shards", "pgbouncer", "replicas")
"""The names of a server entry that are hypervault's own, not libpq connection settings."""


_LIBPQ_NAMES: frozenset[str] = frozenset()
_CONNINFO_FORMS = (
    "write key=value pairs separated by spaces (host=db2 port=5432 dbname=app) or a URL "
    "(postgresql://user@db2:5432/app)"
)
_BAD_OPTION = re.compile(
    r'invalid (?:connection|URI query parameter) option "([^"]*)"|invalid URI query parameter: "([^"]*)"'
)


def _libpq_names() -> frozenset[str]:
    """The connection settings this libpq knows (psycopg is imported here, not by the package)."""
    global _LIBPQ_NAMES
    if not _LIBPQ_NAMES:
        from psycopg import pq

        _LIBPQ_NAMES = frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())
    return _LIBPQ_NAMES


def _unknown_setting(name: str, where: str = "") -> str:
    """The problem of a setting name libpq does not know, with the closest known name if one is close."""
    known = sorted(_libpq_names() | set(SERVER_OPTIONS) | set(LIBPQ_ALIASES))
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.75)
    hint = f": did you mean {close[0]!r}?" if close else ""
    return (
        f"unknown connection setting {name!r}{where}{hint} (libpq's are host, port, dbname, user, password, sslmode, "
        f"connect_timeout, ... ; hypervault's own {', '.join(SERVER_OPTIONS)})"
    )


def _port_problem(params: Mapping[str, str], conninfo: str) -> str | None:
    """What is wrong with the parsed ``port`` (each of a comma-separated list must be an int in 1..65535), or None."""
    text = params.get("port") or ""
    for part in text.split(","):
        part = part.strip()
        if part and not (part.isdigit() and 0 < int(part) < 65536):
            userinfo = conninfo.split("?", 1)[0].rpartition("@")[0]  # "" without an @
            if _URL_SCHEME.match(conninfo) and part in userinfo:  # the "port" is a password's tail: not shown
                return (
                    "the URL in conninfo has a port that is not a number in 1..65535 (not shown: with a user:password@ "
                    "part, a password holding '/', '@', '?' or '#' makes libpq read its tail as host:port): "
                    "percent-encode the password, urllib.parse.quote(password, safe='')"
                )
            where = " (in conninfo)" if conninfo and "port" in conninfo else ""
            return f"port{where} must be a number in 1..65535 (one per host, comma-separated), got {part!r}"
    return None


_T = TypeVar("_T")


def check_server_entries(
    entries: Sequence[Mapping[str, Any]], build: Callable[[Mapping[str, Any]], _T], shards: Sequence[object] = ()
) -> list[_T]:
    """Each server entry built by ``build`` (its backend's store factory with the datastore's options: it checks the
    settings, no I/O), in order: the one check of server entries, shared by `Datastore` and ``hv config``.

    `ConfigError` naming every refused entry (``server #N``, its ``shards`` when given) and why, at once.
    """
    built: list[_T] = []
    problems: list[str] = []
    for index, entry in enumerate(entries):
        try:
            built.append(build(entry))
        except ConfigError as exc:
            range_ = f" (shards {shards[index]!r})" if index < len(shards) else ""
            problems.append(f"server #{index}{range_}: {exc}")
    if problems:
        raise ConfigError("; ".join(problems))
    return built


def pgbouncer_mode(settings: Mapping[str, Any]) -> str:
    """The ``pgbouncer`` setting of one server entry (default ``"auto"``); `ConfigError` naming the choices if bad."""
    value = settings.get("pgbouncer", "auto")
    if not isinstance(value, str) or value not in PGBOUNCER_MODES:
        choices = ", ".join(repr(mode) for mode in PGBOUNCER_MODES)
        raise ConfigError(f"pgbouncer must be one of {choices} (the pooler's pool_mode), got {show_value(value)}")
    return value


def libpq_settings(settings: Mapping[str, Any], *, ignore: Sequence[str] = SERVER_OPTIONS) -> ServerSettings:
    """Check one server's connection settings the way libpq will read them, without connecting.

    ``settings`` are libpq keywords (``host``, ``port``, ``dbname``, ``user``, ``password``, ``sslmode``...) and/or
    a ``conninfo`` string or URL; psycopg2's spellings ``database`` (for ``dbname``) and ``dsn`` (for
    ``conninfo``) are accepted too (`LIBPQ_ALIASES`); names in ``ignore`` (hypervault's own ``shards``,
    ``replicas`` and ``pgbouncer``, whose value is checked: `pgbouncer_mode`) are left out. Raises `ConfigError`,
    never showing the password, for: both spellings of one setting with different values; a ``conninfo`` that is
    not a string; a name libpq does not know; a string or URL libpq cannot parse (a bad percent-encoding...);
    values libpq would refuse when connecting (``sslmode="bogus"``, ``port="abc"``, a bad ``target_session_attrs``,
    ``connect_timeout`` or ``keepalives*``, more ports than hosts, ...).

    The names and the string are parsed by libpq through psycopg's conninfo functions (``make_conninfo``,
    ``conninfo_to_dict``); values are checked by libpq itself: its connection start validates every option before
    it opens a socket, so the settings are started against a socket directory that cannot exist
    (``/dev/null/...``, no network) and only an error raised before that socket is reported. Options libpq reads
    only on a TCP connection (``connect_timeout``, ``keepalives*``, ``tcp_user_timeout``) are checked here as
    libpq parses them (integers). psycopg is imported here, not by the package: without it only the aliases and
    types are checked.
    """
    if "pgbouncer" in settings:
        pgbouncer_mode(settings)  # hypervault's own setting: checked here too, so every backend refuses a bad one
    raw = {k: v for k, v in settings.items() if k not in ignore}
    for name in raw:
        if not isinstance(name, str):
            raise ConfigError(f"connection setting names must be strings, got {type(name).__name__} {name!r}")
    _resolve_aliases(raw)
    conninfo = raw.pop("conninfo", None) or ""
    if not isinstance(conninfo, str):
        raise ConfigError(f"conninfo must be a string (a libpq keyword string or URL), got {type(conninfo).__name__}")
    keywords = {k: v for k, v in raw.items() if v is not None}
    problem = host_problem(keywords)
    if problem is not None:
        raise ConfigError(problem)
    for name, value in keywords.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            shown = "***" if name == "password" else repr(value)
            raise ConfigError(
                f"connection setting {name!r} must be a string or a number, got {type(value).__name__} {shown}"
            )
    try:
        from psycopg import Error as PsycopgError
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
    except ImportError:
        return ServerSettings(conninfo, keywords, {})
    for name in keywords:
        if name not in _libpq_names():
            raise ConfigError(_unknown_setting(name))
    try:
        params = conninfo_to_dict(make_conninfo(conninfo, **keywords))
    except (PsycopgError, UnicodeDecodeError) as first:  # a percent-encoded byte sequence that is not UTF-8 too
        masked_conninfo, masked_keywords = _masked_inputs(conninfo, keywords)
        try:  # the same settings without the password: an error then names no secret
            conninfo_to_dict(make_conninfo(masked_conninfo, **masked_keywords))
        except UnicodeDecodeError:
            raise ConfigError(
                "invalid PostgreSQL connection settings: the URL in conninfo holds percent-encoded bytes that are "
                "not UTF-8 (a %XX sequence): percent-encode text with urllib.parse.quote(text, safe='')"
            ) from None
        except PsycopgError as exc:
            said = str(exc).strip()
            bad = _BAD_OPTION.search(said)
            if bad is not None:
                raise ConfigError(_unknown_setting(bad.group(1) or bad.group(2), " in conninfo")) from None
            raise ConfigError(
                f"invalid PostgreSQL connection settings: conninfo cannot be read ({said}): {_CONNINFO_FORMS}"
            ) from None
        what = "an invalid percent-encoded token" if "percent-encoded" in str(first) else "text libpq cannot parse"
        raise ConfigError(
            f"invalid PostgreSQL connection settings: the password in conninfo holds {what} (not shown here); "
            "in a URL, percent-encode the password: urllib.parse.quote(password, safe='')"
        ) from None
    parsed = ServerSettings(conninfo, keywords, {k: str(v) for k, v in params.items()})
    problem = _port_problem(parsed.params, conninfo)
    if problem is None:  # checked without the passwords, so that the message holds none (and nothing is masked)
        problem = _libpq_problem({k: v for k, v in parsed.params.items() if k not in _SECRET_NAMES})
    if problem is not None:
        raise ConfigError(f"invalid PostgreSQL connection settings: {redact_conninfo(problem)}")
    return parsed


def _libpq_problem(params: Mapping[str, str]) -> str | None:
    """What libpq would refuse in these parsed settings before connecting, or None (see `libpq_settings`)."""
    from psycopg import Error as PsycopgError
    from psycopg import pq
    from psycopg.conninfo import make_conninfo, timeout_from_conninfo

    for name in _INTEGER_OPTIONS:
        value = params.get(name)
        if value is not None and value != "" and not _LIBPQ_INT.fullmatch(value):
            return f"invalid integer value {value!r} for connection option {name!r}"
    try:
        timeout_from_conninfo(dict(params))
    except PsycopgError as exc:
        return str(exc).strip()
    hosts, addresses = (str(params[n]).split(",") if params.get(n) else [] for n in ("host", "hostaddr"))
    if hosts and addresses and len(hosts) != len(addresses):
        return f"could not match {len(hosts)} host names to {len(addresses)} hostaddr values"
    for address in addresses:
        if address and not _is_ip_address(address):
            return f"could not parse network address {address!r} (hostaddr takes IP addresses)"
    # hostaddr is emptied so that libpq uses the impossible socket directory (for as many hosts as given)
    probe = {**params, "host": ",".join([_PROBE_HOST] * max(len(hosts), len(addresses), 1)), "hostaddr": ""}
    pgconn = pq.PGconn.connect_start(make_conninfo("", **probe).encode())
    try:
        message = pgconn.error_message.decode("utf-8", "replace").strip()
        refused = pgconn.status == pq.ConnStatus.BAD
    finally:
        pgconn.finish()
    if not refused or _PROBE_HOST in message or "over a local socket" in message:
        return None  # libpq accepted every option and went on to the (impossible) socket
    return message


def _is_ip_address(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def server_endpoint(settings: Mapping[str, Any]) -> tuple[str, int, str]:
    """Where one server's connection settings point: ``(host, port, dbname)``, never the password.

    Reads every way a server can be given: separate keys (``host``, ``hostaddr``, ``port``, ``dbname``, ``user``),
    a ``conninfo`` keyword string (``"host=db2 port=5433 dbname=app"``) or URL (``"postgresql://u:pw@db2:5433/app"``),
    or both, where the separate keys win (as in ``psycopg.connect(conninfo, **keys)``); psycopg2's ``database``
    and ``dsn`` are read as ``dbname`` and ``conninfo``; ``shards`` is ignored.
    Defaults are those of the PostgreSQL backends' server labels: host ``localhost``, port 5432, dbname the user
    name, else ``postgres`` (environment variables such as ``PGHOST`` are not read). Raises `ConfigError`, without
    the password, for settings libpq would refuse (see `libpq_settings`), a bad port, or several hosts
    (``host=a,b``: name one node). The parsing is libpq's, through psycopg (imported here, not by the package);
    without psycopg only separate keys can be read.
    """
    parsed = libpq_settings(settings)
    if parsed.conninfo and not parsed.params:
        raise ConfigError("reading a conninfo string or URL needs psycopg: pip install 'hypervault[postgres]'")
    params: Mapping[str, Any] = parsed.params or {k: str(v) for k, v in parsed.keywords.items()}
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port_text = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or params.get("user") or "postgres")
    if "," in host or "," in port_text:
        raise ConfigError(f"server {redact(settings)!r} names several hosts ({host}): name one node per server")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ConfigError(f"server {redact(settings)!r} has port {port_text!r}: expected an int in 1..65535")
    return host, port, dbname


@dataclass(frozen=True, slots=True, kw_only=True)
class DatastoreConfig:
    """Validated settings of a `Datastore`: servers (with their ``shards``) and options."""

    servers: tuple[Mapping[str, Any], ...]
    backend: str = "hstore"
    pool_max: int = 10
    pool_block_timeout: float = 5.0
    layout: KeyLayout = KeyLayout.DEFAULT
    sequence: str | None = None
    allow_gaps: bool = False
    row_factory: str = "row"
    operation_timeout: float | None = 60.0
    values: str | None = None
    log_values: bool = False
    worker: Any = "auto"  # "auto", None, a WorkerSlice, "lease", or a mapping: {id, bits} (fixed) or lease options
    read_from: str = "primary"
    max_replica_lag: float = 1.0
    read_your_writes: bool = True
    logger: logging.Logger | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if type(self.pool_max) is not int or not 1 <= self.pool_max <= POOL_MAX_LIMIT:
            problems.append(f"pool_max must be an int in 1..{POOL_MAX_LIMIT}, got {show_value(self.pool_max)}")
        timeout = self.pool_block_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= TIMEOUT_LIMIT  # False for NaN too; no float() of a huge int
        ):
            problems.append(
                f"pool_block_timeout must be a number of seconds in (0, {TIMEOUT_LIMIT}], got {show_value(timeout)}"
            )
        if not isinstance(self.backend, str) or not self.backend:
            problems.append(
                f"backend must be a backend name such as 'hstore', 'jsonb' or 'memory', got {show_value(self.backend)}"
            )
        bound = self.operation_timeout
        if bound is not None and (
            isinstance(bound, bool) or not isinstance(bound, int | float) or not 0 < bound <= TIMEOUT_LIMIT
        ):
            problems.append(
                f"operation_timeout must be a number of seconds in (0, {TIMEOUT_LIMIT}] or None, "
                f"got {show_value(bound)}"
            )
        if not isinstance(self.row_factory, str) or self.row_factory not in ROW_FACTORIES:
            problems.append(f"row_factory must be 'row', 'dict' or 'tuple', got {show_value(self.row_factory)}")
        if not isinstance(self.allow_gaps, bool):
            problems.append(f"allow_gaps must be True or False, got {show_value(self.allow_gaps)}")
        if self.logger is not None and not isinstance(self.logger, logging.Logger | logging.LoggerAdapter):
            problems.append(
                f"logger must be a logging.Logger (or LoggerAdapter) or None, got {show_value(self.logger)}"
            )
        problems += _values_problems(self.values, self.backend)
        for index, server in enumerate(self.servers):
            if isinstance(server, Mapping) and "pgbouncer" in server:
                try:
                    pgbouncer_mode(server)
                except ConfigError as exc:
                    problems.append(f"servers[{index}]: {exc}")
        if not isinstance(self.log_values, bool):
            problems.append(f"log_values must be True or False, got {show_value(self.log_values)}")
        if self.sequence is not None and (not isinstance(self.sequence, str) or "://" not in self.sequence):
            problems.append(
                f"sequence must be a URL such as 'redis://127.0.0.1:6379/0', got {show_value(self.sequence)}"
            )
        try:
            object.__setattr__(self, "worker", parse_worker(self.worker))
        except ConfigError as exc:
            problems.append(str(exc))
        if self.worker not in (None, "auto") and self.sequence is not None:
            problems.append(
                "worker and sequence cannot be combined: a worker number owns a slice of the in-process sequence, "
                "a shared sequence (Redis) hands out every number; choose one"
            )
        problems += _replica_option_problems(self)
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def value_rules(self) -> str | None:
        """The value rules asked for (``"jsonb"`` or ``"text"``), or None for the backend's own."""
        return VALUE_RULES[self.values] if isinstance(self.values, str) else None

    @property
    def auto_worker(self) -> bool:
        """True when ``worker="auto"`` (the default) and no sequence: lease a start per process where possible."""
        return self.worker == "auto" and self.sequence is None

    @property
    def lease_options(self) -> dict[str, Any] | None:
        """The worker-lease options when ``worker`` asks for a leased number, else None."""
        return dict(self.worker) if isinstance(self.worker, Mapping) else None

    def __repr__(self) -> str:
        servers = [redact(s) for s in self.servers]
        return (
            f"DatastoreConfig(backend={self.backend!r}, pool_max={self.pool_max}, "
            f"pool_block_timeout={self.pool_block_timeout}, servers={servers!r})"
        )

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, source: str = "config") -> DatastoreConfig:
        """Validate a parsed TOML document (top-level options plus ``[[servers]]``)."""
        unknown = sorted(set(raw) - _TOP_LEVEL)
        if unknown:
            raise ConfigError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; expected {', '.join(sorted(_TOP_LEVEL))}"
            )
        servers = raw.get("servers")
        if isinstance(servers, Mapping):  # [servers] (one table) where [[servers]] (a list of tables) was meant
            raise ShardMapError(
                [
                    f"{source}: [servers] is a single table; write [[servers]] (double brackets: one entry per "
                    'server, each with shards = "a-b"), and [[servers.replicas]] for standbys'
                ]
            )
        if not isinstance(servers, list) or not servers:
            raise ShardMapError([f'{source}: no [[servers]] entries: add one per server with shards = "a-b"'])
        for index, server in enumerate(servers):
            if not isinstance(server, Mapping):
                raise ShardMapError([f"{source}: servers[{index}] must be a table"])
        options: dict[str, Any] = {k: v for k, v in raw.items() if k != "servers"}
        if "layout" in options:
            options["layout"] = parse_layout(options["layout"])
        return cls(servers=tuple(dict(s) for s in servers), **options)


def _replica_option_problems(config: DatastoreConfig) -> list[str]:
    """``read_from``, ``max_replica_lag`` and every server's ``replicas`` list checked (`hvcore._replicas`)."""
    problems: list[str] = []
    for check, value in ((check_read_from, config.read_from), (check_max_replica_lag, config.max_replica_lag)):
        try:
            check(value)
        except ConfigError as exc:
            problems.append(str(exc))
    if not isinstance(config.read_your_writes, bool):
        problems.append(f"read_your_writes must be True or False, got {show_value(config.read_your_writes)}")
    for index, server in enumerate(config.servers):
        if isinstance(server, Mapping):
            problems += replica_problems(server, index)
    return problems


def _values_problems(values: object, backend: object) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, str) or values not in VALUE_RULES:
        return [
            f"values must be 'jsonb' (JSON types; also spelt 'json') or 'text' (strings only, the hstore rules; also "
            f"spelt 'hstore'), got {show_value(values)}"
        ]
    own = _BACKEND_VALUES.get(backend) if isinstance(backend, str) else None
    if own is not None and own != VALUE_RULES[values]:
        return [
            f"values={values!r} does not fit backend={backend!r}, which stores {own} values: "
            "values= chooses the rules of the memory backend (to stand in for hstore or jsonb)"
        ]
    return []


LEASE_OPTIONS = frozenset({"bits", "namespace", "ttl", "acquire_timeout"})
"""What ``worker = {...}`` may set for a leased worker number (see `hvbackend_postgres.lease_worker`)."""


def parse_worker(worker: object) -> WorkerSlice | dict[str, Any] | str | None:
    """``Datastore(worker=...)`` checked: ``"auto"``; None; a `WorkerSlice`; ``"lease"`` or a mapping of lease options;
    a mapping with ``id`` (and ``bits``) is a fixed `WorkerSlice`. `ConfigError` for anything else."""
    if worker is None or isinstance(worker, WorkerSlice) or worker == "auto":
        return worker
    if worker == "lease":
        return {}
    if isinstance(worker, Mapping):
        names = set(worker)
        if "id" in names:
            unknown = sorted(str(n) for n in names - {"id", "bits"})
            if unknown:
                raise ConfigError(
                    f"worker = {{id, bits}} is a fixed worker number; unknown key(s) {', '.join(unknown)}"
                )
            return WorkerSlice(**{str(k): v for k, v in worker.items()})
        unknown = sorted(str(n) for n in names - LEASE_OPTIONS)
        if unknown:
            raise ConfigError(
                f"unknown worker lease option(s) {', '.join(unknown)}: expected {', '.join(sorted(LEASE_OPTIONS))} "
                "(or id and bits for a fixed worker number)"
            )
        problems = lease_option_problems(worker)
        if problems:
            raise ConfigError("invalid worker lease options: " + "; ".join(problems))
        return {str(k): v for k, v in worker.items()}
    raise ConfigError(
        f"worker must be 'auto', None, 'lease', a mapping of lease options (bits, namespace, ttl, acquire_timeout) "
        f"or a WorkerSlice / {{id, bits}} for a fixed number, got {type(worker).__name__} {show_value(worker)}"
    )


def load_config(path: str | Path) -> DatastoreConfig:
    """Read a TOML config file into a `DatastoreConfig`."""
    if not isinstance(path, str | Path):
        raise ConfigError(
            f"a config file is a path (str or pathlib.Path), got {type(path).__name__} {show_value(path)}"
        )
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"config file {show_value(str(file))} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {show_value(str(file))} is not valid TOML: {exc}") from None
    except (OSError, ValueError) as exc:  # a directory, no permission, a NUL in the path, not UTF-8
        raise ConfigError(f"config file {show_value(str(file))} cannot be read: {type(exc).__name__}: {exc}") from None
    return DatastoreConfig.from_mapping(raw, source=str(file))


def check_servers(connections: object) -> Sequence[Mapping[str, Any]]:
    """Reject a connections argument that is not a list of dicts, before anything else reads it."""
    if isinstance(connections, Mapping | str | bytes) or not isinstance(connections, Sequence):
        raise ShardMapError(
            [
                "connections must be a list of dicts such as [dict(shards='1-9', host=...)], "
                f"got {type(connections).__name__}"
            ]
        )
    return connections
