"""hypervault: client-side 64-bit keys and logical shards over many PostgreSQL servers."""

from importlib.metadata import PackageNotFoundError, version

from hvcore._adatastore import AsyncDatastore
from hvcore._agenerator import AsyncKeyGenerator
from hvcore._atransaction import AsyncShardTransaction
from hvcore._backend import AsyncServerStore, BackendOptions, ProvisionReport, QuerySpec, Record, ServerStore
from hvcore._datastore import Datastore
from hvcore._generator import KeyGenerator
from hvcore._key import Key, KeyLayout
from hvcore._metrics import Metrics, metrics
from hvcore._placement import MoveReport
from hvcore._plugins import PluginRegistry, default_registry
from hvcore._replicas import Timeline
from hvcore._row import Row
from hvcore._schemadefs import IndexInfo, IndexReport, IndexSpec, MigrationReport, MigrationStatus
from hvcore._sequence import AsyncSequenceSource, SequenceSource
from hvcore._shardmap import ShardMap
from hvcore._transaction import ShardTransaction
from hvcore._worker import WorkerGrant, WorkerSlice
from hvcore.errors import (
    ClockMovedBackwards,
    ConfigError,
    ConnectionMisuse,
    ConstraintViolation,
    DuplicateKey,
    DuplicateValue,
    HypervaultError,
    InvalidArgument,
    InvalidData,
    InvalidKey,
    InvalidKind,
    InvalidQuery,
    InvalidShard,
    InvalidToken,
    LayoutExhausted,
    LoginRefused,
    MigrationError,
    MoveError,
    NoFreeWorker,
    NotProvisioned,
    PermissionDenied,
    PluginError,
    PoolTimeout,
    ReadOnlyServer,
    SelfDeadlock,
    SequenceUnavailable,
    ServerError,
    ServerLimitReached,
    ServerUnavailable,
    ShardMapError,
    ShardMoved,
    ShardNotFound,
    StatementTimeout,
    StoreClosed,
    TransactionConflict,
    TransactionError,
    WorkerLeaseError,
    WorkerLeaseLost,
    WriteOutcomeUnknown,
    WrongEventLoop,
)
from hvcore.hookspecs import hookimpl

try:
    __version__ = version("hypervault")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AsyncDatastore",
    "AsyncKeyGenerator",
    "AsyncSequenceSource",
    "AsyncServerStore",
    "AsyncShardTransaction",
    "BackendOptions",
    "ClockMovedBackwards",
    "ConfigError",
    "ConnectionMisuse",
    "ConstraintViolation",
    "Datastore",
    "DuplicateKey",
    "DuplicateValue",
    "HypervaultError",
    "IndexInfo",
    "IndexReport",
    "IndexSpec",
    "InvalidArgument",
    "InvalidData",
    "InvalidKey",
    "InvalidKind",
    "InvalidQuery",
    "InvalidShard",
    "InvalidToken",
    "Key",
    "KeyGenerator",
    "KeyLayout",
    "LayoutExhausted",
    "LoginRefused",
    "Metrics",
    "MigrationError",
    "MigrationReport",
    "MigrationStatus",
    "MoveError",
    "MoveReport",
    "NoFreeWorker",
    "NotProvisioned",
    "PermissionDenied",
    "PluginError",
    "PluginRegistry",
    "PoolTimeout",
    "ProvisionReport",
    "QuerySpec",
    "ReadOnlyServer",
    "Record",
    "Row",
    "SelfDeadlock",
    "SequenceSource",
    "SequenceUnavailable",
    "ServerError",
    "ServerLimitReached",
    "ServerStore",
    "ServerUnavailable",
    "ShardMap",
    "ShardMapError",
    "ShardMoved",
    "ShardNotFound",
    "ShardTransaction",
    "StatementTimeout",
    "StoreClosed",
    "Timeline",
    "TransactionConflict",
    "TransactionError",
    "WorkerGrant",
    "WorkerLeaseError",
    "WorkerLeaseLost",
    "WorkerSlice",
    "WriteOutcomeUnknown",
    "WrongEventLoop",
    "__version__",
    "default_registry",
    "hookimpl",
    "metrics",
]
