"""The one parser for datastore settings: keyword arguments and TOML config files go through here."""

from __future__ import annotations

import logging
import math
import re
import tomllib
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvcore._key import KeyLayout
from hvcore._worker import WorkerSlice
from hvcore.errors import ConfigError, ShardMapError

__all__ = ["DatastoreConfig", "load_config", "parse_layout", "redact", "server_endpoint"]

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
    }
)


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
        elif name == "conninfo" and isinstance(value, str):
            out[name] = redact_conninfo(value)
        else:
            out[name] = value
    return out


def redact_conninfo(conninfo: str) -> str:
    """Mask the password in a libpq conninfo string or URL."""
    masked = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", conninfo, flags=re.IGNORECASE)
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", masked)


def server_endpoint(settings: Mapping[str, Any]) -> tuple[str, int, str]:
    """Where one server's connection settings point: ``(host, port, dbname)``, never the password.

    Reads every way a server can be given: separate keys (``host``, ``hostaddr``, ``port``, ``dbname``, ``user``),
    a ``conninfo`` keyword string (``"host=db2 port=5433 dbname=app"``) or URL (``"postgresql://u:pw@db2:5433/app"``),
    or both, where the separate keys win (as in ``psycopg.connect(conninfo, **keys)``); ``shards`` is ignored.
    Defaults are those of the PostgreSQL backends' server labels: host ``localhost``, port 5432, dbname the user
    name, else ``postgres`` (environment variables such as ``PGHOST`` are not read). Raises `ConfigError`, without
    the password, for settings libpq would refuse, a bad port, or several hosts (``host=a,b``: name one node).
    The parsing is libpq's, through psycopg (imported here, not by the package); without psycopg only separate
    keys can be read.
    """
    keys = {k: v for k, v in settings.items() if k not in ("shards", "conninfo") and v is not None}
    conninfo = settings.get("conninfo") or ""
    if not isinstance(conninfo, str):
        raise ConfigError(f"conninfo must be a string, got {type(conninfo).__name__}")
    try:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
    except ImportError:
        if conninfo:
            raise ConfigError(
                "reading a conninfo string or URL needs psycopg: pip install 'hypervault[postgres]'"
            ) from None
        params: dict[str, Any] = {k: str(v) for k, v in keys.items()}
    else:
        try:
            params = conninfo_to_dict(make_conninfo(conninfo, **keys))
        except ProgrammingError as exc:
            secrets = [str(keys.get("password") or ""), urllib.parse.urlsplit(conninfo).password or ""]
            text = redact_conninfo(str(exc).strip())
            for secret in filter(None, secrets):
                text = text.replace(secret, "***")
            raise ConfigError(f"invalid PostgreSQL connection settings {redact(settings)!r}: {text}") from None
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
    row_factory: str = "dict"
    operation_timeout: float | None = 60.0
    worker: Any = None  # None, a WorkerSlice, "lease", or a mapping: {id, bits} (fixed) or lease options
    logger: logging.Logger | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if type(self.pool_max) is not int or self.pool_max < 1:
            problems.append(f"pool_max must be an int ≥ 1, got {self.pool_max!r}")
        timeout = self.pool_block_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            problems.append(f"pool_block_timeout must be a number of seconds > 0, got {timeout!r}")
        if not isinstance(self.backend, str) or not self.backend:
            problems.append(
                f"backend must be a backend name such as 'hstore', 'jsonb' or 'memory', got {self.backend!r}"
            )
        bound = self.operation_timeout
        if bound is not None and (
            isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound) or bound <= 0
        ):
            problems.append(f"operation_timeout must be a number of seconds > 0 or None, got {bound!r}")
        if self.row_factory not in ("dict", "tuple"):
            problems.append(f"row_factory must be 'dict' or 'tuple', got {self.row_factory!r}")
        if self.sequence is not None and (not isinstance(self.sequence, str) or "://" not in self.sequence):
            problems.append(f"sequence must be a URL such as 'redis://127.0.0.1:6379/0', got {self.sequence!r}")
        try:
            object.__setattr__(self, "worker", parse_worker(self.worker))
        except ConfigError as exc:
            problems.append(str(exc))
        if self.worker is not None and self.sequence is not None:
            problems.append(
                "worker and sequence cannot be combined: a worker number owns a slice of the in-process sequence, "
                "a shared sequence (Redis) hands out every number; choose one"
            )
        if problems:
            raise ConfigError("; ".join(problems))

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
        if not isinstance(servers, list) or not servers:
            raise ShardMapError([f'{source}: no [[servers]] entries: add one per server with shards = "a-b"'])
        for index, server in enumerate(servers):
            if not isinstance(server, Mapping):
                raise ShardMapError([f"{source}: servers[{index}] must be a table"])
        options: dict[str, Any] = {k: v for k, v in raw.items() if k != "servers"}
        if "layout" in options:
            options["layout"] = parse_layout(options["layout"])
        return cls(servers=tuple(dict(s) for s in servers), **options)


LEASE_OPTIONS = frozenset({"bits", "namespace", "ttl", "acquire_timeout"})
"""What ``worker = {...}`` may set for a leased worker number (see `hvbackend_postgres.lease_worker`)."""


def parse_worker(worker: object) -> WorkerSlice | dict[str, Any] | None:
    """``Datastore(worker=...)`` checked: None; a `WorkerSlice`; ``"lease"`` or a mapping of lease options (a dict);
    a mapping with ``id`` (and ``bits``) is a fixed `WorkerSlice`. `ConfigError` for anything else."""
    if worker is None or isinstance(worker, WorkerSlice):
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
        return {str(k): v for k, v in worker.items()}
    raise ConfigError(
        f"worker must be None, 'lease', a mapping of lease options (bits, namespace, ttl, acquire_timeout) or a "
        f"WorkerSlice / {{id, bits}} for a fixed number, got {type(worker).__name__} {worker!r}"
    )


def load_config(path: str | Path) -> DatastoreConfig:
    """Read a TOML config file into a `DatastoreConfig`."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(file)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(file)!r} is not valid TOML: {exc}") from None
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
