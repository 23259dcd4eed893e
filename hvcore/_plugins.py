"""The plugin manager: loads backends and sequence sources from entry points, lazily and once."""

from __future__ import annotations

import difflib
import importlib.metadata
import threading
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import pluggy

from hvcore import hookspecs
from hvcore._backend import AsyncBackendFactory, BackendFactory
from hvcore.errors import PluginError

__all__ = ["ENTRY_POINT_GROUPS", "EXTRA_FOR_MODULE", "EXTRA_FOR_NAME", "PluginRegistry", "default_registry"]

ENTRY_POINT_GROUPS = ("hypervault.backends", "hypervault.plugins")

EXTRA_FOR_MODULE = {
    "psycopg": "postgres",
    "psycopg_pool": "postgres",
    "pglast": "postgres",
    "redis": "redis",
    "pgserver": "embedded",
    "opentelemetry": "otel",
    "prometheus_client": "otel",
}
"""Missing top-level module → the ``hypervault[extra]`` that installs it (named in error messages)."""

EXTRA_FOR_NAME = {"hstore": "postgres", "jsonb": "postgres", "redis": "redis", "rediss": "redis"}
"""Built-in backend names and sequence schemes → the extra whose plugin registers them."""


def install_hint(extra: str) -> str:
    """``pip install 'hypervault[extra]'``, as error messages spell it."""
    return f"pip install 'hypervault[{extra}]'"


def describe_load_error(exc: BaseException) -> str:
    """Why a plugin failed to load, in one line; a missing module of a known extra says what to install."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        extra = EXTRA_FOR_MODULE.get(exc.name.partition(".")[0])
        if extra is not None:
            text += f": {install_hint(extra)}"
    return text


def unknown_hooks(manager: pluggy.PluginManager, plugin: object) -> list[str]:
    """Names of ``plugin``'s hook implementations that match no hookspec (pluggy's ``check_pending``, one plugin)."""
    found = []
    for caller in manager.get_hookcallers(plugin) or []:
        if caller.has_spec():
            continue
        if any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()):
            found.append(caller.name)
    return sorted(found)


def _spec_names() -> list[str]:
    return sorted(name for name in hookspecs.__all__ if name.startswith(f"{hookspecs.PROJECT_NAME}_"))


class PluginRegistry:
    """Backends and sequence sources by name, collected from pluggy plugins.

    Entry points are loaded on first use (``load_entry_points=False`` for tests that register by hand). A plugin
    that fails to import, asks for hook arguments its hookspec lacks, or implements a hook no hookspec declares
    (a misspelling) is left out and recorded in ``broken`` (plugin name → why); the others keep working, and
    every `PluginError` about a missing name lists the broken plugins.
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
        """Add a plugin object or module and collect what it registers.

        Raises `PluginError` naming the plugin if it implements a hook no hookspec declares, or asks for
        arguments a hookspec lacks; nothing of such a plugin is registered.
        """
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
                f"unknown backend {name!r}: installed backends are {installed}{self._name_hint(name)}"
                f"{self._broken_note()}"
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
                f"no sequence source for {scheme!r} URLs: installed schemes are {installed}"
                f"{self._name_hint(scheme)}{self._broken_note()}"
            ) from None

    def demo_servers(self, count: int) -> AbstractContextManager[hookspecs.DemoServers] | None:
        """The first plugin's answer to `hypervault_demo_servers` (a context manager), or None if none can."""
        self._ensure_loaded()
        result: AbstractContextManager[hookspecs.DemoServers] | None = self.manager.hook.hypervault_demo_servers(
            count=count
        )
        return result

    @staticmethod
    def _name_hint(name: str) -> str:
        extra = EXTRA_FOR_NAME.get(name)
        return f" ({name!r} comes with {install_hint(extra)})" if extra else ""

    def broken_note(self) -> str:
        """``"; plugins that failed to load: name (why); ..."`` or ``""`` when every plugin loaded."""
        return self._broken_note()

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

    def describe(self) -> dict[str, Any]:
        """What is installed, for ``hv plugins``: backends, sequence schemes, demo providers and broken plugins.

        Shape: ``{"backends": [{"name", "plugin", "asyncio"}], "sequences": [{"scheme", "plugin"}],
        "demo_servers": [plugin names], "broken": {plugin: why}}``, every list sorted.
        """
        self._ensure_loaded()
        demo = [
            self.manager.get_name(impl.plugin) or repr(impl.plugin)
            for impl in self.manager.hook.hypervault_demo_servers.get_hookimpls()
        ]
        return {
            "backends": [
                {"name": name, "plugin": origin, "asyncio": name in self._async_backends}
                for name, (_, origin) in sorted(self._backends.items())
            ],
            "sequences": [
                {"scheme": scheme, "plugin": origin} for scheme, (_, origin) in sorted(self._sequences.items())
            ],
            "demo_servers": sorted(demo),
            "broken": dict(sorted(self.broken.items())),
        }

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
                    self.broken[ep.name] = describe_load_error(exc)
                    continue
                try:
                    self._validate(plugin, ep.name)
                except PluginError as exc:
                    self.broken[ep.name] = str(exc)
                    continue
                self._collect(plugin, ep.name)

    def _add(self, plugin: object, name: str | None) -> None:
        if self.manager.is_registered(plugin):
            return
        self._validate(plugin, name)
        self._collect(plugin, name)

    def _validate(self, plugin: object, name: str | None) -> None:
        """Register ``plugin`` with pluggy, or refuse it whole (`PluginError`) if a hook matches no hookspec."""
        origin = name or str(getattr(plugin, "__name__", repr(plugin)))
        try:
            self.manager.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:  # asks for arguments its hookspec lacks
            raise PluginError(f"plugin {origin!r} does not fit its hookspec: {exc}") from None
        unknown = unknown_hooks(self.manager, plugin)
        if unknown:
            self.manager.unregister(plugin)
            specs = _spec_names()
            parts = []
            for hook in unknown:
                close = difflib.get_close_matches(hook, specs, n=1)
                parts.append(f"{hook!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise PluginError(
                f"plugin {origin!r} implements unknown hook(s) {', '.join(parts)}: no hookspec has that name "
                f"(known hooks: {', '.join(specs)}); the plugin was not loaded"
            )

    def _collect(self, plugin: object, name: str | None) -> None:
        """Call ``plugin``'s registration hooks (only its own) and file what it registers."""
        origin: str = name or str(getattr(plugin, "__name__", repr(plugin)))
        caller = self.manager.subset_hook_caller  # call only the new plugin's hooks
        others = [p for p in self.manager.get_plugins() if p is not plugin]
        plain = _Registrar(self._backends, origin)
        asynchronous = _Registrar(self._async_backends, origin)

        def register_backend(
            name: str, factory: BackendFactory, *, async_factory: AsyncBackendFactory | None = None
        ) -> None:
            plain(name, factory)
            if async_factory is not None:
                asynchronous(name, async_factory)

        backends: hookspecs.BackendRegistrar = register_backend
        sequences: hookspecs.SequenceRegistrar = _Registrar(self._sequences, origin)
        caller("hypervault_register_backends", others)(register=backends)
        caller("hypervault_register_sequences", others)(register=sequences)


class _Registrar:
    """One plugin's ``register(name, factory)`` into one table: checks the name, the factory and duplicates."""

    __slots__ = ("origin", "table")

    def __init__(self, table: dict[str, tuple[Any, str]], origin: str) -> None:
        self.table = table
        self.origin = origin

    def __call__(self, name: str, factory: Any) -> None:
        """File ``factory`` under ``name``; `PluginError` for a bad name, a non-callable or a duplicate."""
        if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
            raise PluginError(
                f"plugin {self.origin!r} registered an invalid name {name!r}: use a lower-case identifier"
            )
        if not callable(factory):
            raise PluginError(f"plugin {self.origin!r} registered {name!r} with a non-callable factory {factory!r}")
        if name in self.table:
            raise PluginError(
                f"{name!r} is registered twice: by {self.table[name][1]!r} and by {self.origin!r}; "
                "uninstall one of them"
            )
        self.table[name] = (factory, self.origin)


_default: PluginRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> PluginRegistry:
    """The process-wide registry loaded from installed entry points."""
    global _default
    with _default_lock:
        if _default is None:
            _default = PluginRegistry()
        return _default
