"""The plugin system: entry points, registration, duplicates, unknown names; every hook has a test."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import pytest

import hvcore
from hvcore import PluginError, PluginRegistry, hookimpl, hookspecs


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint."""

    def __init__(self, name: str, plugin: object) -> None:
        self.name = name
        self.plugin = plugin
        self.loads = 0

    def load(self) -> object:
        self.loads += 1
        return self.plugin


def backend_plugin(*names: str) -> object:
    class Plugin:
        @hookimpl
        def hypervault_register_backends(self, register: Any) -> None:
            for name in names:
                register(name, lambda settings, options, name=name: SimpleNamespace(name=name))

    return Plugin()


def sequence_plugin(scheme: str) -> object:
    class Plugin:
        @hookimpl
        def hypervault_register_sequences(self, register: Any) -> None:
            register(scheme, lambda url, **kw: ("source", url))

    return Plugin()


def test_backends_come_from_entry_points_lazily_and_once() -> None:
    ep = FakeEntryPoint("custom", backend_plugin("custom"))
    registry = PluginRegistry(entry_points=[ep])
    assert ep.loads == 0
    assert registry.backend_names() == ["custom"]
    registry.backend("custom")
    assert ep.loads == 1


def test_hypervault_register_backends_hook() -> None:
    registry = PluginRegistry(entry_points=[FakeEntryPoint("two", backend_plugin("alpha", "beta"))])
    assert registry.backend("beta")({}, hvcore.BackendOptions()).name == "beta"  # type: ignore[attr-defined]


def test_hypervault_register_sequences_hook() -> None:
    registry = PluginRegistry(entry_points=[FakeEntryPoint("seq", sequence_plugin("myseq"))])
    assert registry.sequence("myseq")("myseq://x") == ("source", "myseq://x")
    assert registry.sequence_schemes() == ["myseq"]


def test_unknown_backend_lists_installed() -> None:
    registry = PluginRegistry(entry_points=[FakeEntryPoint("a", backend_plugin("alpha", "beta"))])
    with pytest.raises(PluginError, match="unknown backend 'gamma': installed backends are alpha, beta"):
        registry.backend("gamma")
    with pytest.raises(LookupError):
        registry.backend("gamma")


def test_a_plugin_that_fails_to_import_does_not_hide_the_others() -> None:
    class Broken(FakeEntryPoint):
        def load(self) -> object:
            raise ModuleNotFoundError("No module named 'redis'")

    registry = PluginRegistry(entry_points=[Broken("redis", None), FakeEntryPoint("ok", backend_plugin("fine"))])
    assert registry.backend_names() == ["fine"]
    with pytest.raises(PluginError, match=r"redis \(ModuleNotFoundError: No module named 'redis'\)"):
        registry.sequence("redis")


def test_unknown_sequence_scheme() -> None:
    with pytest.raises(PluginError, match="no sequence source for 'zk'"):
        PluginRegistry(entry_points=[]).sequence("zk")


def test_duplicate_names_are_rejected_with_both_origins() -> None:
    registry = PluginRegistry(
        entry_points=[FakeEntryPoint("first", backend_plugin("same")), FakeEntryPoint("second", backend_plugin("same"))]
    )
    with pytest.raises(PluginError, match="'same' is registered twice: by 'first' and by 'second'"):
        registry.backend_names()


@pytest.mark.parametrize("name", ["Bad", "with space", "", "1x"])
def test_invalid_names_are_rejected(name: str) -> None:
    registry = PluginRegistry(entry_points=[FakeEntryPoint("p", backend_plugin(name))])
    with pytest.raises(PluginError, match="invalid name"):
        registry.backend_names()


def test_register_by_hand_and_use_in_a_datastore() -> None:
    registry = PluginRegistry(load_entry_points=False)
    import hvbackend_memory

    registry.register(hvbackend_memory, "memory")
    registry.register(hvbackend_memory, "memory")  # idempotent
    with hvcore.Datastore([dict(shards="0-4")], backend="memory", registry=registry) as store:
        key = store.put(1, 1, a="b")
        assert store.get(key) is not None


def test_installed_entry_points_provide_builtin_backends() -> None:
    names = hvcore.default_registry().backend_names()
    assert {"memory", "hstore", "jsonb"} <= set(names)


def test_datastore_with_unknown_backend() -> None:
    with pytest.raises(PluginError, match="installed backends are"):
        hvcore.Datastore([dict(shards="0-4")], backend="nope")


def test_every_hook_has_a_test() -> None:
    hooks = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("hypervault_")]
    source = inspect.getsource(inspect.getmodule(test_every_hook_has_a_test))  # type: ignore[arg-type]
    assert hooks
    for hook in hooks:
        assert f"def test_{hook}" in source, f"hook {hook} has no test named test_{hook}"
