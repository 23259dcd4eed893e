"""The ``hstore`` and ``jsonb`` backends: logical shards as schemas on real PostgreSQL servers (psycopg 3 pools)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from hvbackend_postgres._astore import AsyncPostgresServerStore
from hvbackend_postgres._lease import LeaseOptions, PostgresWorkerLease, alease_worker, lease_worker
from hvbackend_postgres._move import PostgresMover
from hvbackend_postgres._schema import ShardSQL, shard_ddl, shard_schema
from hvbackend_postgres._store import PostgresServerStore
from hvcore._backend import BackendOptions
from hvcore.hookspecs import BackendRegistrar, DemoServers, hookimpl

# psycopg_pool warns on its own logger about what hypervault turns into typed errors anyway (a failed connection
# attempt, a connection it closed on purpose after a timeout); an application that configured no logging got
# those lines on stderr from Python's last-resort handler. A NullHandler only replaces that fallback: handlers the
# application configures still receive every record.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())

__all__ = [
    "AsyncPostgresServerStore",
    "LeaseOptions",
    "PostgresMover",
    "PostgresServerStore",
    "PostgresWorkerLease",
    "ShardSQL",
    "alease_worker",
    "async_hstore_store",
    "async_jsonb_store",
    "hstore_store",
    "hypervault_demo_servers",
    "hypervault_register_backends",
    "jsonb_store",
    "lease_worker",
    "shard_ddl",
    "shard_schema",
]


def hstore_store(settings: Mapping[str, Any], options: BackendOptions) -> PostgresServerStore:
    """The ``hstore`` backend's store of one server: bodies are text to text, like the 2015 library's."""
    return PostgresServerStore(settings, options, backend="hstore")


def jsonb_store(settings: Mapping[str, Any], options: BackendOptions) -> PostgresServerStore:
    """The ``jsonb`` backend's store of one server: JSON types preserved, GIN index on the body."""
    return PostgresServerStore(settings, options, backend="jsonb")


def async_hstore_store(settings: Mapping[str, Any], options: BackendOptions) -> AsyncPostgresServerStore:
    """The ``hstore`` backend's store for `AsyncDatastore`."""
    return AsyncPostgresServerStore(settings, options, backend="hstore")


def async_jsonb_store(settings: Mapping[str, Any], options: BackendOptions) -> AsyncPostgresServerStore:
    """The ``jsonb`` backend's store for `AsyncDatastore`."""
    return AsyncPostgresServerStore(settings, options, backend="jsonb")


@hookimpl
def hypervault_register_backends(register: BackendRegistrar) -> None:
    """Register the ``hstore`` and ``jsonb`` backends (sync and asyncio)."""
    register("hstore", hstore_store, async_factory=async_hstore_store)
    register("jsonb", jsonb_store, async_factory=async_jsonb_store)


@hookimpl
def hypervault_demo_servers(count: int) -> AbstractContextManager[DemoServers] | None:
    """Embedded PostgreSQL servers (pgserver) for ``hv demo``; None when pgserver is not installed."""
    from hvbackend_postgres._embedded import demo_servers  # pgserver is optional: imported only for the demo

    return demo_servers(count)
