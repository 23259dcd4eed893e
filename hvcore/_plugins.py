"""The plugin manager: loads backends and sequence sources from entry points, lazily and once."""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pluggy

from hvcore import hookspecs
from hvcore._backend import AsyncBackendFactory, BackendFactory
from hvcore.errors import PluginError

__all__ = ["ENTRY_POINT_GROUPS", "PluginRegistry", "default_registry"]

ENTRY_POINT_GROUPS = ("hypervault.backends", "hypervault.plugins")


class PluginRegistry:
    """Backends and sequence sources by name, collected from pluggy plugins.

    Entry points are loaded on first use (``load_entry_points=False`` for tests that register by hand).
    """

    __module__ = "hvcore"

    def __init__(self, *, load_entry_points: bool = True, entry_points: Iterable[Any] | None = None) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self._load_entry_points = load_entry_points
        self._entry_points = entry_points
        self._loaded = False
        self._lock = threading.RLock()
        self._backends: dict[str, tuple[BackendFactory, str]] = {}
        self._async_backends: dict[str, tuple[AsyncBackendFactory, str]] = {}
        self._sequences: dict[str, tuple[hookspecs.SequenceFactory, str]] = {}
        self.broken: dict[str, str] = {}  # entry point name -> why it failed to load

    def __repr__(self) -> str:
        return f"<PluginRegistry backends={sorted(self._backends)} sequences={sorted(self._sequences)}>"

    def register(self, plugin: object, name: str | None = None) -> None:
        """Add a plugin object or module and collect what it registers."""
        with self._lock:
            self._ensure_loaded()
            self._add(plugin, name)

    def backend(self, name: str) -> BackendFactory:
        """The factory of backend ``name``; `PluginError` lists the installed ones if it is unknown."""
        self._ensure_loaded()
        try:
            return self._backends[name][0]
        except KeyError:
            installed = ", ".join(sorted(self._backends)) or "none"
            raise PluginError(
                f"unknown backend {name!r}: installed backends are {installed}{self._broken_note()}"
            ) from None

    def async_backend(self, name: str) -> AsyncBackendFactory:
        """The asyncio factory of backend ``name``."""
        self.backend(name)
        try:
            return self._async_backends[name][0]
        except KeyError:
            raise PluginError(f"backend {name!r} has no asyncio form: use Datastore, not AsyncDatastore") from None

    def sequence(self, scheme: str) -> hookspecs.SequenceFactory:
        """The factory of the sequence source for URL scheme ``scheme``."""
        self._ensure_loaded()
        try:
            return self._sequences[scheme][0]
        except KeyError:
            installed = ", ".join(sorted(self._sequences)) or "none"
            raise PluginError(
                f"no sequence source for {scheme!r} URLs: installed schemes are {installed} "
                f"(the redis one needs `pip install hypervault[redis]`){self._broken_note()}"
            ) from None

    def _broken_note(self) -> str:
        if not self.broken:
            return ""
        return "; plugins that failed to load: " + "; ".join(f"{n} ({why})" for n, why in sorted(self.broken.items()))

    def backend_names(self) -> list[str]:
        """Sorted names of every registered backend."""
        self._ensure_loaded()
        return sorted(self._backends)

    def sequence_schemes(self) -> list[str]:
        """Sorted URL schemes of every registered sequence source."""
        self._ensure_loaded()
        return sorted(self._sequences)

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True  # set first: a plugin that fails to load is not retried in a loop
            if self._entry_points is not None:
                points: Iterable[Any] = self._entry_points
            elif self._load_entry_points:
                points = [ep for group in ENTRY_POINT_GROUPS for ep in importlib.metadata.entry_points(group=group)]
            else:
                points = []
            for ep in points:
                if self.manager.get_plugin(ep.name) is not None:
                    continue
                try:
                    plugin = ep.load()
                except Exception as exc:  # one broken or half-installed plugin must not take the others down
                    self.broken[ep.name] = f"{type(exc).__name__}: {exc}"
                    continue
                self._add(plugin, ep.name)

    def _add(self, plugin: object, name: str | None) -> None:
        origin: str = name or str(getattr(plugin, "__name__", repr(plugin)))
        if self.manager.is_registered(plugin):
            return
        self.manager.register(plugin, name=name)
        caller = self.manager.subset_hook_caller  # call only the new plugin's hooks
        others = [p for p in self.manager.get_plugins() if p is not plugin]
        plain = self._registrar(self._backends, origin)
        asynchronous = self._registrar(self._async_backends, origin)

        def register_backend(name: str, factory: Any, *, async_factory: Any = None) -> None:
            plain(name, factory)
            if async_factory is not None:
                asynchronous(name, async_factory)

        caller("hypervault_register_backends", others)(register=register_backend)
        caller("hypervault_register_sequences", others)(register=self._registrar(self._sequences, origin))

    @staticmethod
    def _registrar(table: dict[str, tuple[Any, str]], origin: str) -> Callable[[str, Any], None]:
        def register(name: str, factory: Any) -> None:
            if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
                raise PluginError(f"plugin {origin!r} registered an invalid name {name!r}: use a lower-case identifier")
            if not callable(factory):
                raise PluginError(f"plugin {origin!r} registered {name!r} with a non-callable factory {factory!r}")
            if name in table:
                raise PluginError(
                    f"{name!r} is registered twice: by {table[name][1]!r} and by {origin!r}; uninstall one of them"
                )
            table[name] = (factory, origin)

        return register


_default: PluginRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> PluginRegistry:
    """The process-wide registry loaded from installed entry points."""
    global _default
    with _default_lock:
        if _default is None:
            _default = PluginRegistry()
        return _default
