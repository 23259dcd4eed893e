"""The plugin system: entry points, registration, duplicates, unknown names, misspelled hooks; every hook has a test."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest

import hvcore
import hvcore._plugins
from hvbackend_memory import AsyncMemoryServerStore, MemoryServerStore
from hvcore import PluginError, PluginRegistry, hookimpl, hookspecs
from hvcore.cli import main as hv_main
from hvcore.hookspecs import BackendRegistrar, DemoServers, SequenceRegistrar


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
    made = registry.sequence("myseq")("myseq://x")
    assert made == ("source", "myseq://x")  # type: ignore[comparison-overlap]
    assert registry.sequence_schemes() == ["myseq"]


def test_register_callbacks_fit_their_protocols() -> None:
    """A plugin typed with the public Protocols (mypy checks this module) gets callbacks of that shape."""
    seen: dict[str, inspect.Signature] = {}

    class Typed:
        @hookimpl
        def hypervault_register_backends(self, register: BackendRegistrar) -> None:
            seen["backends"] = inspect.signature(register)
            register("typed", MemoryServerStore, async_factory=AsyncMemoryServerStore)

        @hookimpl
        def hypervault_register_sequences(self, register: SequenceRegistrar) -> None:
            seen["sequences"] = inspect.signature(register)

    registry = PluginRegistry(entry_points=[FakeEntryPoint("typed", Typed())])
    assert isinstance(registry.backend("typed")({}, hvcore.BackendOptions()), MemoryServerStore)
    assert isinstance(registry.async_backend("typed")({}, hvcore.BackendOptions()), AsyncMemoryServerStore)
    backends = seen["backends"].parameters
    assert list(backends) == ["name", "factory", "async_factory"]
    assert (
        backends["async_factory"].kind is inspect.Parameter.KEYWORD_ONLY and backends["async_factory"].default is None
    )
    assert list(seen["sequences"].parameters) == ["name", "factory"]
    for protocol in (BackendRegistrar, SequenceRegistrar):
        wanted = [p for p in inspect.signature(protocol.__call__).parameters if p != "self"]
        assert wanted == list(seen["backends" if protocol is BackendRegistrar else "sequences"].parameters)


def misspelled_plugin() -> object:
    class Typo:
        @hookimpl
        def hypervault_register_backends(self, register: Any) -> None:
            register("from_typo", lambda settings, options: None)

        @hookimpl
        def hypervault_register_backendz(self, register: Any) -> None:
            register("never", lambda settings, options: None)

    return Typo()


def test_a_misspelled_hook_is_an_error_naming_plugin_and_hook() -> None:
    registry = PluginRegistry(
        entry_points=[FakeEntryPoint("typo", misspelled_plugin()), FakeEntryPoint("ok", backend_plugin("fine"))]
    )
    assert registry.backend_names() == ["fine"]  # the others keep working; nothing of the broken plugin is used
    why = registry.broken["typo"]
    assert "plugin 'typo'" in why and "'hypervault_register_backendz'" in why
    assert "did you mean 'hypervault_register_backends'?" in why
    with pytest.raises(PluginError, match=r"unknown backend 'from_typo'.*typo \(plugin 'typo' implements unknown hook"):
        registry.backend("from_typo")
    assert registry.manager.get_plugin("typo") is None


def test_registering_a_misspelled_plugin_by_hand_raises() -> None:
    registry = PluginRegistry(load_entry_points=False)
    with pytest.raises(PluginError, match=r"unknown hook.*hypervault_register_backendz"):
        registry.register(misspelled_plugin(), "by-hand")
    assert registry.backend_names() == [] and registry.manager.get_plugins() == set()


def test_a_hook_asking_for_arguments_its_spec_lacks_is_broken_not_fatal() -> None:
    class Greedy:
        @hookimpl
        def hypervault_register_backends(self, register: Any, extra: Any) -> None:
            raise AssertionError("never called")

    registry = PluginRegistry(
        entry_points=[FakeEntryPoint("greedy", Greedy()), FakeEntryPoint("ok", backend_plugin("b"))]
    )
    assert registry.backend_names() == ["b"]
    assert "plugin 'greedy' does not fit its hookspec" in registry.broken["greedy"]
    assert "extra" in registry.broken["greedy"]


def test_hv_plugins_lists_backends_and_broken_plugins(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hvbackend_memory

    registry = PluginRegistry(
        entry_points=[FakeEntryPoint("memory", hvbackend_memory), FakeEntryPoint("typo", misspelled_plugin())]
    )
    monkeypatch.setattr(hvcore._plugins, "_default", registry)
    out = io.StringIO()
    assert hv_main(["plugins"], out) == 1  # a plugin failed: exit 1
    text = out.getvalue()
    assert "memory" in text and "typo" in text and "hypervault_register_backendz" in text
    out = io.StringIO()
    assert hv_main(["plugins", "--json"], out) == 1
    info = json.loads(out.getvalue())
    assert info["backends"] == [{"name": "memory", "plugin": "memory", "asyncio": True}]
    assert list(info["broken"]) == ["typo"] and info["demo_servers"] == []


def test_hv_plugins_on_the_installed_plugins() -> None:
    out = io.StringIO()
    assert hv_main(["plugins", "--json"], out) == 0
    info = json.loads(out.getvalue())
    assert {b["name"] for b in info["backends"]} >= {"memory", "hstore", "jsonb"}
    assert {s["scheme"] for s in info["sequences"]} >= {"redis", "rediss"}
    assert info["demo_servers"] == ["postgres"] and info["broken"] == {}


def run_without(module: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where ``module`` cannot be imported (as if it were not installed)."""
    prelude = f"import sys; sys.modules[{module!r}] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_backend_missing_because_psycopg_is_not_installed_says_which_extra() -> None:
    done = run_without(
        "psycopg",
        """
        import hvcore
        try:
            hvcore.Datastore([dict(shards="0-4")], backend="jsonb")
        except hvcore.PluginError as exc:
            print(exc)
        print(sorted(hvcore.default_registry().broken))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert "unknown backend 'jsonb': installed backends are memory" in done.stdout
    assert "pip install 'hypervault[postgres]'" in done.stdout
    assert "postgres (ModuleNotFoundError: " in done.stdout and "['postgres']" in done.stdout


def test_hv_with_a_missing_extra_prints_one_error_line() -> None:
    done = run_without(
        "psycopg",
        """
        import sys
        from hvcore.cli import main
        sys.exit(main(["key", "new", "--shard", "1", "--sequence", "nope://x"]))
        """,
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hv: error: no sequence source for 'nope' URLs"), done.stderr
    assert "pip install 'hypervault[postgres]'" in lines[0]  # the broken postgres plugin says what it lacks


@pytest.mark.parametrize(
    ("module", "extra"), [("psycopg", "postgres"), ("psycopg_pool.pool", "postgres"), ("redis", "redis")]
)
def test_describe_load_error_names_the_extra(module: str, extra: str) -> None:
    why = hvcore._plugins.describe_load_error(ModuleNotFoundError(f"No module named {module!r}", name=module))
    assert why.endswith(f": pip install 'hypervault[{extra}]'")
    assert "pip install" not in hvcore._plugins.describe_load_error(ModuleNotFoundError("x", name="unknownmod"))


def test_hypervault_demo_servers_hook() -> None:
    events: list[str] = []

    class NotHere:
        @hookimpl
        def hypervault_demo_servers(self, count: int) -> None:
            events.append(f"asked not-here for {count}")
            return None

    class InMemory:
        @hookimpl
        def hypervault_demo_servers(self, count: int) -> contextlib.AbstractContextManager[DemoServers]:
            events.append(f"asked in-memory for {count}")

            @contextlib.contextmanager
            def servers() -> Iterator[DemoServers]:
                events.append("started")
                try:
                    settings = tuple({"name": f"demo-hook-{i}"} for i in range(count))
                    yield DemoServers(settings=settings, backend="memory", description="in memory")
                finally:
                    events.append("stopped")

            return servers()

    import hvbackend_memory

    registry = PluginRegistry(
        entry_points=[
            FakeEntryPoint("memory", hvbackend_memory),
            FakeEntryPoint("in-memory", InMemory()),
            FakeEntryPoint("not-here", NotHere()),
        ]
    )
    provider = registry.demo_servers(2)
    assert provider is not None and events == ["asked not-here for 2", "asked in-memory for 2"]  # None: next one
    with provider as demo:
        assert events[-1] == "started" and demo.backend == "memory" and len(demo.settings) == 2
        connections = [dict(s, shards=f"{8 * i}-{8 * i + 8}") for i, s in enumerate(demo.settings)]
        with hvcore.Datastore(connections, backend=demo.backend, registry=registry) as store:
            assert store.get(store.put(9, 1, a="b")) is not None
    assert events[-1] == "stopped"
    assert PluginRegistry(entry_points=[FakeEntryPoint("not-here", NotHere())]).demo_servers(2) is None


@pytest.mark.parametrize(
    ("settings", "backend", "fragment"),
    [((), "memory", "non-empty tuple of mappings"), (("x",), "memory", "mappings"), (({},), "", "backend name")],
)
def test_demo_servers_are_checked(settings: tuple[Mapping[str, Any], ...], backend: str, fragment: str) -> None:
    with pytest.raises(PluginError, match=fragment):
        DemoServers(settings=settings, backend=backend, description="x")


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
    assert len(hooks) >= 3
    manager = PluginRegistry(entry_points=[]).manager
    for hook in hooks:
        assert f"def test_{hook}" in source, f"hook {hook} has no test named test_{hook}"
        assert hook in hookspecs.__all__, f"hook {hook} is not exported by hvcore.hookspecs"
        spec = getattr(manager.hook, hook).spec
        assert spec is not None and spec.function.__doc__, f"hook {hook} is not a documented hookspec"
        hints = inspect.get_annotations(spec.function, eval_str=True)
        assert "return" in hints and len(hints) == len(inspect.signature(spec.function).parameters) + 1, hook
