"""Metrics through the OpenTelemetry API: operation durations, pool gauges, and hypervault's own counters.

hypervault depends on the OpenTelemetry **API** only (``pip install 'hypervault[otel]'``), never on the SDK: an
application that configures a ``MeterProvider`` (SDK, Prometheus or OTLP exporter: its choice) gets the figures;
one that does not pays one attribute check per operation (``metrics.on``, False) and no instrument is ever made.
Without ``opentelemetry-api`` installed, ``metrics.on`` stays False for good.

Names and attributes follow the OpenTelemetry semantic conventions for database clients
(https://opentelemetry.io/docs/specs/semconv/database/database-metrics/): ``db.client.operation.duration`` (stable),
``db.client.connection.*`` (development stability, as the conventions are), plus ``hypervault.*`` counters for
what only hypervault knows (key collisions retried, `ShardMoved` refusals followed, replica fall-backs, shard moves
and their write pause). Pool figures are read from each store's ``stats()`` when a reader collects (observable
instruments), never on the hot path.

The provider is looked up when a datastore opens its pools and on `Metrics.refresh` / `Metrics.use` (configure
OpenTelemetry at start-up, before opening datastores, as its documentation advises); the hot path never looks it up.

Durations are **deferred**: an operation appends ``(histogram, seconds, attributes, context)`` to a queue (about a
microsecond) and the measurements reach the SDK's ``Histogram.record`` in batches: when a reader collects (the
observable callbacks drain the queue first, so a collection includes everything recorded before it began), and on
a background thread once `FLUSH_AT` are waiting. Measured (benchmarks/bench_metrics.py): one SDK measurement costs
5–6 µs in a tight loop but 15–20 µs between two database calls (its code and data are no longer in the CPU's
caches), which is what the caller paid before; drained in batches it costs the tight-loop figure, off the caller's
path. The data exported is the same; exemplars keep the caller's context (trace and span ids) and carry the time
they were handed to the SDK.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

__all__ = ["DURATION_BUCKETS", "FLUSH_AT", "METER_NAME", "Metrics", "metrics"]

_log = logging.getLogger("hvcore.metrics")

METER_NAME = "hypervault"
# The bucket boundaries the semantic conventions advise for db.client.operation.duration (seconds).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
# Finer ones for the pool's wait time: a free connection is handed out in microseconds.
WAIT_BUCKETS = (0.00001, 0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)

FLUSH_AT = 4096
"""Deferred measurements waiting for the SDK before the background thread hands them over (a collection drains
the queue whatever its length)."""
STORE_ATTRS = "_hv_metric_attrs"
"""The attribute under which a store keeps its operations' attributes dicts ({operation name, or (name, shard)
with ``shard_attribute``: attributes}), made on its first recorded operation; the same dicts as the label cache's."""
SETTLE_WAIT = 0.05
"""Seconds a collection waits at most for drains running on other threads to hand over what they took (s)."""

Pending = tuple[Any, float, Mapping[str, Any], Any]  # (histogram, value, attributes, OpenTelemetry context)

PoolSource = Callable[[], Iterable[tuple[str, Mapping[str, Any]]]]


def _real_provider(provider: Any) -> bool:
    """True for a provider that records: not the API's no-op one, not its proxy waiting for a real one."""
    if provider is None:
        return False
    try:
        from opentelemetry.metrics import NoOpMeterProvider
    except ImportError:  # pragma: no cover - a provider object exists only with the API installed
        return False
    return not isinstance(provider, NoOpMeterProvider) and type(provider).__name__ != "_ProxyMeterProvider"


def _global_provider() -> Any:
    try:
        from opentelemetry.metrics import get_meter_provider
    except ImportError:
        return None
    return get_meter_provider()  # also resolves OTEL_PYTHON_METER_PROVIDER on first call


DEFAULT_PORT = 5432
"""PostgreSQL's default port: the conventions ask for ``server.port`` only when another one is used."""

WAIT_TIME_MODES = ("off", "waits", "all")


def _endpoint(label: str) -> dict[str, Any]:
    """``host:port/dbname`` (a PostgreSQL store's label) as semantic-convention attributes; other labels as they are.

    ``server.port`` is left out for the default port 5432, as the conventions say (it is "conditionally required:
    if using a port other than the default port for this DBMS"): one attribute less per measurement.
    """
    where, _, dbname = label.partition("/")
    host, _, port = where.rpartition(":")
    if host and port.isdigit():
        attrs: dict[str, Any] = {"server.address": host.strip("[]")}
        if int(port) != DEFAULT_PORT:
            attrs["server.port"] = int(port)
        if dbname:
            attrs["db.namespace"] = dbname
        return attrs
    return {"server.address": label}


def _system_name(store: Any) -> str:
    """``postgresql`` for the hstore/jsonb stores; ``hypervault.<backend>`` for others (``hypervault.memory``)."""
    module = type(store).__module__.split(".")[0]
    if module == "hvbackend_postgres":
        return "postgresql"
    return "hypervault." + module.removeprefix("hvbackend_")


def _error_type(exc: BaseException) -> str:
    return type(exc).__qualname__


def _no_span() -> Any:
    """A truthy OpenTelemetry context holding no span (see `_Instruments.no_span`)."""
    from opentelemetry.context import Context
    from opentelemetry.trace import INVALID_SPAN, set_span_in_context

    return set_span_in_context(INVALID_SPAN, Context())


class _Instruments:
    """The instruments, made once per provider from its meter."""

    def __init__(self, meter: Any, owner: Metrics) -> None:
        from opentelemetry.context import get_current

        # the caller's context, kept with a deferred measurement (exemplars): the public function, whatever runtime
        # context OTEL_PYTHON_CONTEXT names (reading the default one's ContextVar directly saved 734 instructions
        # per operation but read the API's private _RUNTIME_CONTEXT: docs/benchmarks.md, Metrics, "Every operation")
        self.context: Callable[[], Any] = get_current
        # What a deferred measurement made outside any span is handed over with: OpenTelemetry's empty Context is
        # falsy, and ``Histogram.record`` replaces a falsy context with the current one, which on the draining
        # thread is the drainer's (a collection or `flush` made inside a span would lend it its trace).
        self.no_span = _no_span()
        self.duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="The time it took to obtain an open connection from the pool.",
            explicit_bucket_boundaries_advisory=WAIT_BUCKETS,
        )
        self.timeouts = meter.create_counter(
            "db.client.connection.timeouts",
            unit="{timeout}",
            description="Connection requests that timed out waiting for a free connection of the pool.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[owner._observe_count],
            unit="{connection}",
            description="The number of connections that are currently in state described by the state attribute.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[owner._observe_max],
            unit="{connection}",
            description="The maximum number of open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            callbacks=[owner._observe_pending],
            unit="{request}",
            description="The number of current pending requests for an open connection.",
        )
        self.collisions = meter.create_counter(
            "hypervault.key.collisions",
            unit="{collision}",
            description="Writes that found their new key already stored (another process made it) and retried.",
        )
        self.moved_followed = meter.create_counter(
            "hypervault.shard_moved.followed",
            unit="{refusal}",
            description="Operations refused by a shard's old server (ShardMoved) and retried where the shard is now.",
        )
        self.replica_fallbacks = meter.create_counter(
            "hypervault.replica.fallbacks",
            unit="{read}",
            description="Reads meant for a replica that went elsewhere (lagging, down, or read-your-writes).",
        )
        self.moves = meter.create_counter(
            "hypervault.shard.moves",
            unit="{move}",
            description="Shard moves run by this process (error.type set on failures).",
        )
        self.move_pause = meter.create_histogram(
            "hypervault.shard.move.pause",
            unit="s",
            description="How long writes to a moving shard paused (fence to switch).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.move_duration = meter.create_histogram(
            "hypervault.shard.move.duration",
            unit="s",
            description="Duration of whole shard moves.",
            explicit_bucket_boundaries_advisory=(0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0),
        )


class Metrics:
    """hypervault's instruments, made lazily from the configured OpenTelemetry meter provider.

    One instance per process: ``hvcore.metrics``. ``on`` is the only thing the hot path reads; it is True while a
    recording provider is in use: the one given to `use`, else the global one (``opentelemetry.metrics.
    set_meter_provider``) as found by the last `refresh` (every datastore refreshes when it opens its pools).
    The recording methods do nothing while ``on`` is False. ``shard_attribute=True`` adds ``hypervault.shard`` to
    the operation durations (off by default: up to 8,192 series per operation and server). ``wait_time`` says
    which checkouts record ``db.client.connection.wait_time``: ``"waits"`` (the default: only those that found no
    idle connection and had to wait for one), ``"all"`` (every checkout: one more SDK measurement per operation,
    which costs about as much as the operation's own duration one: benchmarks/bench_metrics.py) or ``"off"``;
    True and False mean ``"all"`` and ``"off"``. Anything else raises `ConfigError`.
    """

    __module__ = "hvcore"

    def __init__(self) -> None:
        self.on = False
        self.shard_attribute = False
        self.wait_all = False  # hot-path flags of `wait_time` (read by the stores' checkouts while ``on``)
        self.wait_some = True
        self._explicit: Any = None
        self._provider: Any = None
        self._instruments: _Instruments | None = None
        self._lock = threading.Lock()
        self._watched: weakref.WeakSet[Any] = weakref.WeakSet()
        self._sources: list[PoolSource] = []
        self._attrs: dict[tuple[str, str, int | None], dict[str, Any]] = {}  # the label cache (see STORE_ATTRS)
        self._labels: dict[str, dict[str, Any]] = {}
        self._pending: deque[Pending] = deque()  # deferred histogram measurements (see the module docstring)
        self._flush_wanted = threading.Event()
        self._draining = 0  # flush() calls running (see _flush_settled)
        self._settled = threading.Condition()
        self._flusher: threading.Thread | None = None
        if hasattr(os, "register_at_fork"):  # a child must not record its parent's measurements again
            os.register_at_fork(after_in_child=self._forget_pending)

    def __repr__(self) -> str:
        return f"<Metrics {'on' if self.on else 'off'} provider={type(self._provider).__name__}>"

    # -- configuration ---------------------------------------------------------------------------------------

    @property
    def wait_time(self) -> str:
        """Which checkouts record their wait: ``"off"``, ``"waits"`` (default: those that waited) or ``"all"``."""
        return "all" if self.wait_all else "waits" if self.wait_some else "off"

    @wait_time.setter
    def wait_time(self, mode: str | bool) -> None:
        if mode is True or mode is False:
            mode = "all" if mode else "off"
        if mode not in WAIT_TIME_MODES:
            from hvcore.errors import ConfigError

            modes = ", ".join(WAIT_TIME_MODES)
            raise ConfigError(f"metrics.wait_time must be one of {modes} (or a bool), got {mode!r}")
        self.wait_all, self.wait_some = mode == "all", mode != "off"

    def use(self, meter_provider: Any) -> bool:
        """Record through ``meter_provider`` instead of the global one (None: back to the global); return ``on``.

        For tests (an SDK ``MeterProvider`` with an ``InMemoryMetricReader``) and applications that keep
        hypervault's figures apart. The API's ``NoOpMeterProvider`` turns recording off.
        """
        self._explicit = meter_provider
        return self.refresh()

    def refresh(self) -> bool:
        """Look up the provider again (the one given to `use`, else the global one); return ``on``."""
        provider = self._explicit if self._explicit is not None else _global_provider()
        if provider is not self._provider:
            self.flush()  # what was measured goes to the provider it was measured under
        with self._lock:
            if provider is not self._provider:
                self._provider = provider
                self._instruments = None  # made from the new provider's meter on first use
            self.on = _real_provider(provider)
        return self.on

    def watch(self, datastore: Any) -> None:
        """Report the pools of ``datastore`` (its ``_stores``: ``label`` and ``stats()``) while it lives; refresh."""
        self._watched.add(datastore)
        self.refresh()

    def add_pool_source(self, source: PoolSource) -> None:
        """Also report the pools ``source()`` lists as ``(pool name, stats)`` pairs (e.g. replica pools).

        ``stats`` has the keys of ``ServerStore.stats()``: ``pool_max``, ``available``, ``borrowed``, ``waiting``.
        """
        self._sources.append(source)

    def instruments(self) -> _Instruments | None:
        """The instruments (made on first call while ``on``); None while off."""
        made = self._instruments
        if made is not None or not self.on:
            return made
        with self._lock:
            if self._instruments is None and self.on:
                from hvcore import __version__

                meter = self._provider.get_meter(METER_NAME, __version__)
                self._instruments = _Instruments(meter, self)
            return self._instruments

    # -- attributes --------------------------------------------------------------------------------------------

    def _op_attrs(self, name: str, store: Any, shard: int | None) -> dict[str, Any]:
        label: str = store.label
        key = (name, label, shard if self.shard_attribute else None)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = {"db.system.name": _system_name(store), "db.operation.name": name, **_endpoint(label)}
            if key[2] is not None:
                attrs["hypervault.shard"] = key[2]
            if len(self._attrs) < 100_000:  # bounded cache
                self._attrs[key] = attrs
        return attrs

    def _store_attrs(self, name: str, store: Any, shard: int | None) -> dict[str, Any]:
        """`_op_attrs`, also kept on ``store`` itself (its `STORE_ATTRS` dict), where `operation` finds it next time.

        A store that takes no new attribute (``__slots__``) is looked up by its label every time."""
        attrs = self._op_attrs(name, store, shard)
        kept = getattr(store, STORE_ATTRS, None)
        if kept is None:
            kept = {}
            try:
                setattr(store, STORE_ATTRS, kept)
            except (AttributeError, TypeError):  # no __dict__
                return attrs
        if len(kept) < 10_000:  # bounded, like the label cache (one entry per operation name, or name and shard)
            kept[(name, shard) if self.shard_attribute else name] = attrs
        return attrs

    def _pool_attrs(self, label: str) -> dict[str, Any]:
        """``{"db.client.connection.pool.name": label}``, made once per label (bounded cache)."""
        attrs = self._labels.get(label)
        if attrs is None:
            attrs = {"db.client.connection.pool.name": label}
            if len(self._labels) < 10_000:
                self._labels[label] = attrs
        return attrs

    # -- recording (each does nothing while off) ----------------------------------------------------------------

    def operation(
        self, name: str, store: Any, seconds: float, error: BaseException | None = None, shard: int | None = None
    ) -> None:
        """One database operation ``name`` (put, get, ...) on ``store`` took ``seconds``; ``error`` if it raised."""
        inst = self._instruments or self.instruments()
        if inst is None:
            return
        # the hot path, inlined (each Python call saved is ~1,000 instructions of an operation's ~10,000 here):
        # the attributes dict made once per operation name and store (and shard, with shard_attribute) and kept on
        # the store object (no label property read, no tuple key), the queue appended without calling _defer
        try:
            attrs = store._hv_metric_attrs[(name, shard) if self.shard_attribute else name]
        except (AttributeError, KeyError):
            attrs = self._store_attrs(name, store, shard)
        if error is not None:
            attrs = {**attrs, "error.type": _error_type(error)}
        pending = self._pending
        pending.append((inst.duration, seconds, attrs, inst.context()))
        if len(pending) >= FLUSH_AT:
            self._wake_flusher()

    def connection_wait(self, pool: str, seconds: float) -> None:
        """A connection of pool ``pool`` (a server label) was obtained after waiting ``seconds``.

        Whether a checkout calls this is the store's decision, from ``wait_all`` / ``wait_some`` (`wait_time`).
        """
        inst = self._instruments or self.instruments()
        if inst is not None:
            self._defer(inst.wait_time, seconds, self._pool_attrs(pool), inst.context())

    # -- deferred measurements ---------------------------------------------------------------------------------

    def _defer(self, histogram: Any, value: float, attrs: Mapping[str, Any], context: Any) -> None:
        """Queue one histogram measurement; wake the background thread once `FLUSH_AT` are waiting."""
        pending = self._pending
        pending.append((histogram, value, attrs, context))
        if len(pending) >= FLUSH_AT:
            self._wake_flusher()

    @property
    def pending(self) -> int:
        """Deferred measurements not yet handed to the SDK (a collection or `flush` hands them over)."""
        return len(self._pending)

    def flush(self) -> int:
        """Hand every deferred measurement to its histogram now (``Histogram.record``); return how many.

        Called by the observable callbacks at each collection, by the background thread, and when the provider
        changes; safe from any thread (each measurement is taken from the queue exactly once). A measurement the
        SDK refuses with an exception is logged and dropped, never raised into the caller.
        """
        pending = self._pending
        if not pending:  # also: nothing imported from OpenTelemetry when it is not installed
            return 0
        inst = self._instruments
        no_span = inst.no_span if inst is not None else _no_span()
        popleft = pending.popleft
        done = 0
        settled = self._settled
        with settled:
            self._draining += 1
        try:
            while True:
                try:
                    histogram, value, attrs, context = popleft()
                except IndexError:
                    return done
                try:
                    histogram.record(value, attrs, context or no_span)  # see _Instruments.no_span
                except Exception:  # an SDK's own failure must not stop the drain (nor reach a collection)
                    _log.exception("hypervault: a deferred measurement was refused by %r", histogram)
                done += 1
        finally:
            with settled:
                self._draining -= 1
                if not self._draining:
                    settled.notify_all()

    def _flush_settled(self) -> None:
        """`flush`, then wait (up to `SETTLE_WAIT` s) for drains running on other threads: a measurement another
        drain took from the queue but has not recorded yet belongs in a collection beginning now, too. Bounded,
        so an SDK lock held by the collection that such a drain needs can delay it, never deadlock it."""
        self.flush()
        with self._settled:
            self._settled.wait_for(lambda: not self._draining, timeout=SETTLE_WAIT)

    def _wake_flusher(self) -> None:
        """Have the background thread drain the queue (started on first need, again after a fork)."""
        thread = self._flusher
        if thread is None or not thread.is_alive():
            with self._lock:
                thread = self._flusher
                if thread is None or not thread.is_alive():
                    thread = threading.Thread(target=self._flush_loop, name="hypervault-metrics", daemon=True)
                    thread.start()
                    self._flusher = thread
        self._flush_wanted.set()

    def _flush_loop(self) -> None:
        while True:
            self._flush_wanted.wait()
            self._flush_wanted.clear()
            self.flush()

    def _forget_pending(self) -> None:
        self._pending.clear()
        self._flusher = None
        self._flush_wanted = threading.Event()
        self._draining = 0  # flush() calls running (see _flush_settled)
        self._settled = threading.Condition()

    def connection_timeout(self, pool: str) -> None:
        """No connection of pool ``pool`` (a server label) came free within the pool's timeout."""
        inst = self._instruments or self.instruments()
        if inst is not None:
            inst.timeouts.add(1, self._pool_attrs(pool))

    def key_collision(self, store: Any, count: int = 1) -> None:
        """``count`` new keys of a write were found already stored on ``store``; each retries with a fresh one."""
        inst = self._instruments or self.instruments()
        if inst is not None:
            inst.collisions.add(count, {"hypervault.server": store.label})

    def shard_moved_followed(self, shard_id: int, server: str) -> None:
        """An operation was refused by shard ``shard_id``'s old server and follows it to ``server``."""
        inst = self._instruments or self.instruments()
        if inst is not None:
            inst.moved_followed.add(1, {"hypervault.server": server})

    def replica_fallback(self, server: str, replica: str, reason: str) -> None:
        """A read meant for a standby of ``server`` went to the primary; one call per such read.

        ``replica`` is the standby's label (``any`` when none of several was usable); ``reason`` is ``lag`` (behind
        ``max_replica_lag``, or not measured yet), ``down``, ``read_your_writes`` (behind this timeline's writes)
        or ``error`` (the read failed on the standby).
        """
        inst = self._instruments or self.instruments()
        if inst is not None:
            inst.replica_fallbacks.add(
                1, {"hypervault.server": server, "hypervault.replica": replica, "hypervault.reason": reason}
            )

    def shard_move(
        self, report: Any = None, *, source: str = "", target: str = "", error: BaseException | None = None
    ) -> None:
        """A shard move ended: ``report`` (a `MoveReport`) when it succeeded, else ``error`` with its servers."""
        inst = self._instruments or self.instruments()
        if inst is None:
            return
        if report is not None:
            attrs = {"hypervault.source": report.source, "hypervault.target": report.target}
            inst.moves.add(1, attrs)
            inst.move_pause.record(report.pause_seconds, attrs)
            inst.move_duration.record(report.seconds, attrs)
        else:
            attrs = {"hypervault.source": source, "hypervault.target": target}
            inst.moves.add(1, {**attrs, "error.type": _error_type(error) if error is not None else "unknown"})

    # -- pool gauges (observable: read when a reader collects) --------------------------------------------------

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """Pool name → summed ``pool_max``, ``available``, ``borrowed``, ``waiting`` over every watched pool."""
        totals: dict[str, dict[str, int]] = {}
        for label, stats in self._pools():
            total = totals.setdefault(label, {"pool_max": 0, "available": 0, "borrowed": 0, "waiting": 0})
            for name in total:
                total[name] += int(stats.get(name, 0) or 0)
        return totals

    def _pools(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        for datastore in list(self._watched):
            pools = getattr(datastore, "_metric_pools", None)
            if pools is not None:  # a datastore with more pools than its stores (replicas)
                yield from pools()
                continue
            for store in list(getattr(datastore, "_stores", ())):
                yield store.label, store.stats()
            router = getattr(datastore, "_router", None)  # read replicas: one pool per standby
            for group in list(getattr(router, "_stores", ())):
                for store in list(group):
                    yield store.label, store.stats()
        for source in list(self._sources):
            yield from source()

    def _observe(self, make: Callable[[str, dict[str, int]], Iterable[tuple[int, dict[str, Any]]]]) -> list[Any]:
        from opentelemetry.metrics import Observation

        self._flush_settled()  # a collection begins: the deferred durations first, so that it includes them

        return [
            Observation(value, attrs)
            for label, stats in self.pool_stats().items()
            for value, attrs in make(label, stats)
        ]

    def _observe_count(self, options: Any = None) -> list[Any]:
        def make(label: str, stats: dict[str, int]) -> list[tuple[int, dict[str, Any]]]:
            attrs = self._pool_attrs(label)
            return [
                (stats["available"], {**attrs, "db.client.connection.state": "idle"}),
                (stats["borrowed"], {**attrs, "db.client.connection.state": "used"}),
            ]

        return self._observe(make)

    def _observe_max(self, options: Any = None) -> list[Any]:
        return self._observe(lambda label, stats: [(stats["pool_max"], self._pool_attrs(label))])

    def _observe_pending(self, options: Any = None) -> list[Any]:
        return self._observe(lambda label, stats: [(stats["waiting"], self._pool_attrs(label))])


metrics = Metrics()
