"""Sync and asyncio twins: the generated modules are current, and every public method pair matches.

The sync modules are written from their asyncio sources by tools/async_to_sync.py; these tests fail when a generated
module was edited by hand or not regenerated, and compare each pair's public surface (names, signatures with their
defaults, docstrings), with the tool's own names map applied to the async side.
"""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import hvcore
from hvbackend_memory import AsyncMemoryServerStore, MemoryServerStore
from hvbackend_postgres import AsyncPostgresServerStore, PostgresServerStore
from hvbackend_postgres._atransaction import AsyncPostgresTransaction
from hvbackend_postgres._transaction import PostgresTransaction
from hvcore._acoalesce import ReadCoalescer, WriteCoalescer
from hvcore._areadrouter import AsyncReadRouter
from hvcore._coalesce import ThreadReadCoalescer, ThreadWriteCoalescer
from hvcore._readrouter import ReadRouter

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "async_to_sync.py"

# Public names only one side has, and why.
ONE_SIDED = {
    # AsyncDatastore runs moves (and Citus's operator work) on a sync Datastore in a worker thread
    "PostgresServerStore": {"shard_mover", "shard_cluster"},
    # the async memory store wraps the sync one: its cursor reads rows through the sync store, and its
    # non-blocking borrow is the sync store's get_connection_nowait
    "MemoryServerStore": {"rows", "get_connection_nowait"},
}
# Async classes that wrap their sync twin rather than mirror it: no code is written twice, so their docstrings
# (which point at the sync ones) are not compared; names and signatures still are.
WRAPPERS: set[type] = {MemoryServerStore}


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("async_to_sync", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pairs() -> list[tuple[type, type]]:
    pairs: list[tuple[type, type]] = [
        (hvcore.Datastore, hvcore.AsyncDatastore),
        (PostgresServerStore, AsyncPostgresServerStore),
        (MemoryServerStore, AsyncMemoryServerStore),
        (hvcore.ShardTransaction, hvcore.AsyncShardTransaction),
        (PostgresTransaction, AsyncPostgresTransaction),
        (ReadRouter, AsyncReadRouter),
        (ThreadReadCoalescer, ReadCoalescer),
        (ThreadWriteCoalescer, WriteCoalescer),
    ]
    try:
        from hvplugin_redis import AsyncRedisSequence, RedisSequence
    except ImportError:  # pragma: no cover - the redis extra is part of dev
        return pairs
    return [*pairs, (RedisSequence, AsyncRedisSequence)]


def test_generated_modules_are_current() -> None:
    done = subprocess.run(
        [sys.executable, str(TOOL), "--check", "--diff"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, f"{done.stderr}\n{done.stdout[:4000]}"


def test_every_generated_module_says_so_and_names_its_source() -> None:
    for source, target in _tool().PAIRS:
        head = (ROOT / target).read_text(encoding="utf-8").splitlines()[:2]
        assert head[0].startswith(f"# WARNING: generated from {source}"), target
        assert "Do not edit" in head[1], target


def _public(cls: type) -> dict[str, Any]:
    names = {n for klass in cls.__mro__ if klass.__module__.split(".")[0] != "builtins" for n in vars(klass)}
    wanted = [n for n in names if not n.startswith("_") or n in ("__enter__", "__aenter__")]
    return {n: inspect.getattr_static(cls, n) for n in wanted}


def _function(attr: Any) -> Any:
    if isinstance(attr, staticmethod | classmethod):
        return attr.__func__
    if isinstance(attr, property):
        return attr.fget
    return attr


@pytest.mark.parametrize("sync_cls, async_cls", _pairs(), ids=lambda c: c.__name__)
def test_twins_match_in_names_signatures_defaults_and_docstrings(sync_cls: type, async_cls: type) -> None:
    sync_text = _tool().sync_annotation
    sync, asynchronous = _public(sync_cls), _public(async_cls)
    asynchronous = {sync_text(name): attr for name, attr in asynchronous.items()}
    only = ONE_SIDED.get(sync_cls.__name__, set())
    assert set(sync) - only == set(asynchronous) - only, "public names differ"
    problems = []
    for name in sorted(set(sync) & set(asynchronous)):
        mine, theirs = _function(sync[name]), _function(asynchronous[name])
        if not callable(mine) or not callable(theirs):
            continue
        doc_sync, doc_async = inspect.getdoc(mine) or "", sync_text(inspect.getdoc(theirs) or "")
        if doc_sync != doc_async and sync_cls not in WRAPPERS:
            problems.append(f"{name}: docstrings differ:\n  sync:  {doc_sync!r}\n  async: {doc_async!r}")
        try:
            sig_sync, sig_async = inspect.signature(mine), inspect.signature(theirs)
        except (TypeError, ValueError):
            continue
        if sync_text(str(sig_async)) != str(sig_sync):
            problems.append(f"{name}: signatures differ:\n  sync:  {sig_sync}\n  async: {sig_async}")
    assert not problems, "\n".join(problems)


def test_a_hand_edit_of_a_generated_module_is_caught(tmp_path: Path) -> None:
    tool = _tool()
    source, target = tool.PAIRS[0]
    generated = tool.convert((ROOT / source).read_text(encoding="utf-8"), source, target)
    assert generated == (ROOT / target).read_text(encoding="utf-8")
    edited = generated.replace('"""Open every server', '"""Opens every server', 1)
    assert edited != generated  # what --check would report
