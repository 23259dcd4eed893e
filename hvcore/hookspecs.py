"""Hook specifications: the public contract between hypervault and its plugins.

A plugin is a module (or object) with functions marked ``@hvcore.hookimpl``, found through the entry-point
groups ``hypervault.backends`` and ``hypervault.plugins``::

    # pyproject.toml of a third-party backend
    [project.entry-points."hypervault.backends"]
    mybackend = "my_package.hv_plugin"

    # my_package/hv_plugin.py
    import hvcore

    @hvcore.hookimpl
    def hypervault_register_backends(register):
        register("mybackend", make_server_store)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec", "hypervault_register_backends", "hypervault_register_sequences"]

PROJECT_NAME = "hypervault"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

SequenceFactory = Callable[..., Any]
"""``factory(url: str, *, asyncio: bool = False, layout: KeyLayout) -> SequenceSource | AsyncSequenceSource``."""


@hookspec
def hypervault_register_backends(register: Callable[..., None]) -> None:
    """Register storage backends: call ``register(name, factory, async_factory=None)`` once per backend.

    ``factory(connection_settings, options)`` returns a `ServerStore` for one physical server;
    ``async_factory`` (optional) the `AsyncServerStore` used by `AsyncDatastore`. Names are lower-case
    identifiers; registering a name another plugin already registered raises `PluginError`.
    """


@hookspec
def hypervault_register_sequences(register: Callable[[str, SequenceFactory], None]) -> None:
    """Register sequence sources by URL scheme: ``register("redis", factory)``.

    ``factory(url, *, asyncio=False, layout=KeyLayout.DEFAULT)`` returns a `SequenceSource` (or
    `AsyncSequenceSource` when ``asyncio``),
    used when a `Datastore` or `KeyGenerator` is given ``sequence="scheme://..."``.
    """
