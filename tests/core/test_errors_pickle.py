"""Every exception class of hypervault survives pickle and copy as itself.

Exceptions cross process boundaries by pickle (``concurrent.futures.ProcessPoolExecutor``, ``multiprocessing``,
task queues). The classes are found, not listed: every exception class with a public name in any module of the
distribution's packages (read from pyproject.toml), so a class added later is tested without anyone remembering
to. Each is built from hypothesis values of its ``__init__``'s annotated parameters (or Exception's positional
forms when it keeps Exception's ``__init__``), given notes (``add_note``), and must come back from every pickle
protocol and from ``copy.copy`` / ``copy.deepcopy`` with the same class, ``args``, ``str``, ``repr``, ``__dict__``
and public attributes. A class whose ``__init__`` takes an argument hypothesis cannot build from its annotation
fails here: annotate it, or give it a strategy in ``STRATEGIES``.
"""

from __future__ import annotations

import concurrent.futures
import copy
import importlib
import inspect
import multiprocessing
import pickle
import pkgutil
import socket
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hvcore
from hvbackend_postgres._common import OperationTimeout, PipelineTimeout

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = tuple(
    sorted(
        {
            name.split(".")[0]
            for name in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
        }
    )
)
PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)  # 0 and 1 too, though 2.. is what anyone uses
Arguments = tuple[tuple[Any, ...], dict[str, Any]]

# Strategies for the arguments of a class whose __init__'s annotations do not say enough: {cls: strategy}.
STRATEGIES: dict[type[BaseException], st.SearchStrategy[Arguments]] = {
    # psycopg.Error's __init__(*args, info=, encoding=, pgconn=); the backend raises it with its message only
    OperationTimeout: st.tuples(st.tuples(st.text()), st.just({})),
    PipelineTimeout: st.tuples(st.tuples(st.text()), st.just({})),
}


def _modules() -> Iterator[ModuleType]:
    for package in PACKAGES:
        module = importlib.import_module(package)
        yield module
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            if info.name.rsplit(".", 1)[-1] != "__main__":  # `python -m hvcore.cli` runs the CLI on import
                yield importlib.import_module(info.name)


def _exception_classes() -> list[type[BaseException]]:
    """Every exception class with a public name defined in one of the packages (private ones such as
    ``_ReplicaFailed`` never leave the library), from the modules' namespaces and HypervaultError's subclasses."""
    found: set[type[BaseException]] = set()
    for module in _modules():
        found.update(obj for obj in vars(module).values() if isinstance(obj, type) and issubclass(obj, BaseException))
    pending = [hvcore.HypervaultError]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending.extend(cls.__subclasses__())
    ours = (cls for cls in found if cls.__module__.split(".")[0] in PACKAGES)
    return sorted((cls for cls in ours if not cls.__name__.startswith("_")), key=lambda c: (c.__module__, c.__name__))


CLASSES = _exception_classes()


def _arguments(cls: type[BaseException]) -> st.SearchStrategy[Arguments]:
    """Representative constructor arguments of ``cls``: from its __init__'s annotations, or Exception's forms."""
    if cls in STRATEGIES:
        return STRATEGIES[cls]
    init = cls.__init__
    if not inspect.isfunction(init):  # Exception's (or OSError's) own __init__: positional values
        forms: list[st.SearchStrategy[tuple[Any, ...]]] = [
            st.just(()),
            st.tuples(st.text()),
            st.tuples(st.text(), st.integers()),
        ]
        if issubclass(cls, OSError):  # OSError(errno, strerror[, filename[, winerror, filename2]])
            errnos = st.integers(0, 200)
            forms += [
                st.tuples(errnos, st.text()),
                st.tuples(errnos, st.text(), st.text()),
                st.tuples(errnos, st.text(), st.text(), st.none(), st.text()),
            ]
        return st.one_of(forms).map(lambda args: (args, {}))
    hints = typing.get_type_hints(init)
    positional: list[st.SearchStrategy[Any]] = []
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for parameter in list(inspect.signature(init).parameters.values())[1:]:
        assert parameter.name in hints, f"{cls.__qualname__}.__init__: annotate {parameter.name} or add a strategy"
        assert parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD), (
            f"{cls.__qualname__}.__init__ takes *{parameter.name}: add a strategy to STRATEGIES"
        )
        strategy = st.from_type(hints[parameter.name])
        if parameter.default is not parameter.empty:
            optional[parameter.name] = strategy
        elif parameter.kind is parameter.KEYWORD_ONLY:
            required[parameter.name] = strategy
        else:
            positional.append(strategy)
    return st.tuples(st.tuples(*positional), st.fixed_dictionaries(required, optional=optional))


def _build(cls: type[BaseException], arguments: Arguments, notes: list[str]) -> BaseException:
    args, kwargs = arguments
    error = cls(*args, **kwargs)
    for note in notes:
        error.add_note(note)
    return error


def _public(error: BaseException) -> dict[str, Any]:
    """Public attributes (properties and slots too, such as OSError's errno): plain values as they are, others by
    type (psycopg's ``diag`` is a new object at each access)."""
    values = {}
    for name in dir(error):
        value = getattr(error, name, AttributeError)  # OSError's characters_written is unset unless given
        if not name.startswith("_") and not callable(value):
            values[name] = value if type(value).__module__ == "builtins" else type(value)
    return values


def _assert_same(copied: BaseException, error: BaseException) -> None:
    assert type(copied) is type(error)
    assert copied.args == error.args
    assert str(copied) == str(error)
    assert repr(copied) == repr(error)
    assert vars(copied) == vars(error)  # every attribute, notes (__notes__) included
    assert _public(copied) == _public(error)


def _round_trips(error: BaseException) -> Iterator[BaseException]:
    for protocol in PROTOCOLS:
        yield pickle.loads(pickle.dumps(error, protocol))
    yield copy.copy(error)
    yield copy.deepcopy(error)


def test_every_exception_class_is_enumerated() -> None:
    exported = {getattr(hvcore, name) for name in hvcore.__all__}
    exported = {obj for obj in exported if isinstance(obj, type) and issubclass(obj, BaseException)}
    assert len(exported) > 30
    assert exported <= set(CLASSES), exported - set(CLASSES)
    assert OperationTimeout in CLASSES  # a ServerUnavailable the postgres backend raises


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__qualname__)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), notes=st.lists(st.text(), max_size=2))
def test_every_error_survives_pickle_and_copy(cls: type[BaseException], data: st.DataObject, notes: list[str]) -> None:
    error = _build(cls, data.draw(_arguments(cls)), notes)
    before = dict(vars(error))
    for copied in _round_trips(error):
        _assert_same(copied, error)
    assert vars(error) == before, "pickling changed the error itself"


class _KeywordOnly(Exception):
    """What ShardMoved was: Exception's __reduce__ rebuilds by cls(*args), without the keyword."""

    def __init__(self, message: str, *, shard_id: int) -> None:
        super().__init__(message)
        self.shard_id = shard_id


def test_the_round_trip_check_fails_a_class_without_support() -> None:
    with pytest.raises(TypeError, match="shard_id"):
        list(_round_trips(_KeywordOnly("moved", shard_id=5)))


def test_cause_and_traceback_are_not_pickled() -> None:
    """As for every Python exception: the cause (a driver's error, possibly unpicklable) is dropped, not an obstacle."""
    with socket.socket() as unpicklable:
        try:
            try:
                raise OSError("the driver's error") from None
            except OSError as exc:
                exc.socket = unpicklable  # type: ignore[attr-defined]
                raise hvcore.ShardMoved("shard 5 moved", shard_id=5, server="h2:5432/app", version=3) from exc
        except hvcore.ShardMoved as error:
            assert error.__cause__ is not None and error.__traceback__ is not None
            for copied in pickle.loads(pickle.dumps(error)), copy.deepcopy(error):
                _assert_same(copied, error)
                assert copied.__cause__ is None and copied.__context__ is None and copied.__traceback__ is None


def test_pickling_leaves_the_error_itself_alone() -> None:
    """psycopg.Error.__reduce__ (first in OperationTimeout's MRO) sets ``_pgconn`` to None in the state it is given:
    in a copy of the error's __dict__, not in the error still being handled."""
    pgconn = object()
    error = OperationTimeout("PostgreSQL server h1:5432/app did not answer", pgconn=cast(Any, pgconn))
    copied = pickle.loads(pickle.dumps(error))
    assert error.pgconn is pgconn and copied.pgconn is None and str(copied) == str(error)


def test_a_pickled_error_holds_no_password() -> None:
    secret = "s3cr3tPW"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    conninfo = f"host=127.0.0.1 port={port} dbname=app user=hv password={secret} connect_timeout=2"
    servers = [{"shards": "0-8", "conninfo": conninfo}]
    with (
        pytest.raises(hvcore.ServerUnavailable) as caught,
        hvcore.Datastore(servers, backend="jsonb", worker=None) as db,
    ):
        db.get(1)
    for protocol in PROTOCOLS:
        assert secret.encode() not in pickle.dumps(caught.value, protocol)


def _raise(error: BaseException) -> None:
    raise error


@pytest.fixture(scope="module")
def pools() -> Iterator[list[concurrent.futures.ProcessPoolExecutor]]:
    """One spawn pool for the module, replaced when a test breaks it (so one class's failure is not every class's)."""
    held: list[concurrent.futures.ProcessPoolExecutor] = []
    yield held
    for pool in held:
        pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__qualname__)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), notes=st.lists(st.text(), max_size=2))
def test_every_error_raised_in_a_process_pool_worker_reaches_the_caller(
    pools: list[concurrent.futures.ProcessPoolExecutor], cls: type[BaseException], data: st.DataObject, notes: list[str]
) -> None:
    """The error goes to the worker and comes back by pickle; before, ShardMoved broke the pool (BrokenProcessPool)."""
    error = _build(cls, data.draw(_arguments(cls)), notes)
    if not pools:
        pools.append(concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
    try:
        with pytest.raises(cls) as caught:
            pools[-1].submit(_raise, error).result(timeout=120)
        assert pools[-1].submit(sum, [1, 2]).result(timeout=120) == 3, "the pool still works"
    except concurrent.futures.process.BrokenProcessPool:
        pools.append(concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
        raise
    _assert_same(caught.value, error)
