"""Hook specifications: the public contract between hypervault and its plugins.

A plugin is a module (or object) with functions marked ``@hvcore.hookimpl``, found through the entry-point
groups ``hypervault.backends`` and ``hypervault.plugins``::

    # pyproject.toml of a third-party backend
    [project.entry-points."hypervault.backends"]
    mybackend = "my_package.hv_plugin"

    # my_package/hv_plugin.py
    import hvcore
    from hvcore.hookspecs import BackendRegistrar

    @hvcore.hookimpl
    def hypervault_register_backends(register: BackendRegistrar) -> None:
        register("mybackend", make_server_store)

Every hook name starts with ``hypervault_``. A plugin implementing a hook that is not specified here (a
misspelling such as ``hypervault_register_backendz``) is refused as a whole when it is loaded: the registry
records it in ``PluginRegistry.broken`` with the misspelled name (pluggy's ``check_pending``, per plugin), and the
other plugins keep working.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import pluggy

from hvcore._backend import AsyncBackendFactory, BackendFactory
from hvcore._sequence import AsyncSequenceSource, SequenceSource
from hvcore.errors import PluginError

__all__ = [
    "PROJECT_NAME",
    "BackendRegistrar",
    "DemoServers",
    "SequenceFactory",
    "SequenceRegistrar",
    "hookimpl",
    "hookspec",
    "hypervault_demo_servers",
    "hypervault_register_backends",
    "hypervault_register_sequences",
]

PROJECT_NAME = "hypervault"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class SequenceFactory(Protocol):
    """Makes a sequence source from a URL: ``factory(url, *, asyncio=False, layout=KeyLayout.DEFAULT)``.

    Returns a `SequenceSource`, or an `AsyncSequenceSource` when ``asyncio`` is true; raises `ConfigError` for a
    URL or option it cannot use, before connecting.
    """

    def __call__(self, url: str, *, asyncio: bool = False, **options: Any) -> SequenceSource | AsyncSequenceSource:
        """The source for ``url`` (``options`` carry ``layout``, a `KeyLayout`)."""
        ...


class BackendRegistrar(Protocol):
    """The ``register`` callback of `hypervault_register_backends`.

    ``register(name, factory, *, async_factory=None)``: ``name`` is a lower-case identifier; ``factory(settings,
    options)`` returns a `ServerStore`, ``async_factory`` an `AsyncServerStore`. Raises `PluginError` for an invalid
    name, a non-callable factory, or a name another plugin registered already (naming both plugins).
    """

    def __call__(self, name: str, factory: BackendFactory, *, async_factory: AsyncBackendFactory | None = None) -> None:
        """Register backend ``name``."""
        ...


class SequenceRegistrar(Protocol):
    """The ``register`` callback of `hypervault_register_sequences`: ``register(scheme, factory)``.

    ``scheme`` is a URL scheme (lower-case identifier, e.g. ``"redis"``); raises `PluginError` as
    `BackendRegistrar` does.
    """

    def __call__(self, name: str, factory: SequenceFactory) -> None:
        """Register the sequence source for URLs ``name://...``."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoServers:
    """Throwaway servers for ``hv demo``, as yielded by a `hypervault_demo_servers` context manager.

    ``settings``: one mapping of connection settings per server (without ``shards``; the demo assigns them);
    ``backend``: the registered backend name to use on them; ``description``: one line saying what they are.
    """

    settings: tuple[Mapping[str, Any], ...]
    backend: str
    description: str

    def __post_init__(self) -> None:
        if not self.settings or not all(isinstance(s, Mapping) for s in self.settings):
            raise PluginError(f"DemoServers.settings must be a non-empty tuple of mappings, got {self.settings!r}")
        if not isinstance(self.backend, str) or not self.backend:
            raise PluginError(f"DemoServers.backend must be a backend name such as 'jsonb', got {self.backend!r}")

    def __repr__(self) -> str:
        return f"DemoServers(backend={self.backend!r}, servers={len(self.settings)}, description={self.description!r})"


@hookspec
def hypervault_register_backends(register: BackendRegistrar) -> None:
    """Register storage backends: call ``register(name, factory, async_factory=None)`` once per backend.

    ``factory(connection_settings, options)`` returns a `ServerStore` for one physical server;
    ``async_factory`` (optional) the `AsyncServerStore` used by `AsyncDatastore`. Names are lower-case
    identifiers; registering a name another plugin already registered raises `PluginError`.
    """


@hookspec
def hypervault_register_sequences(register: SequenceRegistrar) -> None:
    """Register sequence sources by URL scheme: ``register("redis", factory)``.

    ``factory(url, *, asyncio=False, layout=KeyLayout.DEFAULT)`` returns a `SequenceSource` (or
    `AsyncSequenceSource` when ``asyncio``), used when a `Datastore` or `KeyGenerator` is given
    ``sequence="scheme://..."``.
    """


@hookspec(firstresult=True)
def hypervault_demo_servers(count: int) -> AbstractContextManager[DemoServers] | None:
    """Provide ``count`` (≥ 1) throwaway servers for ``hv demo``, or None if this plugin cannot.

    Return a context manager, without starting anything yet: entering it starts the servers and yields a
    `DemoServers`; leaving it stops them and deletes their data, whatever happened inside. Return None when
    what the servers need is not installed (``hv demo`` then says which extra to install). The first plugin
    returning a context manager wins. The PostgreSQL backend implements it with embedded servers (pgserver).
    """
