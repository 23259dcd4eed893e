"""``hv metrics URL``: an application's hypervault figures, read from its Prometheus endpoint, as terminal tables.

The figures are the ones `hvcore.metrics` records (operation durations per operation and server, pool gauges,
hypervault's counters), exposed by the application through the OpenTelemetry SDK and its Prometheus exporter (README
"Metrics"). The exposition format is parsed by ``prometheus_client`` (``pip install 'hypervault[otel]'``).
"""

from __future__ import annotations

import argparse
import base64
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from hvcore._attempts import one_attempt_per_server
from hvcore._config import redact_conninfo
from hvcore.cli._output import emit_json, table
from hvcore.errors import ConfigError, HypervaultError, InvalidArgument, ServerUnavailable

__all__ = ["cmd_metrics", "figures", "scrape", "watch"]

_DURATION = "db_client_operation_duration_seconds"
_WAIT = "db_client_connection_wait_time_seconds"
_HIDDEN_LABELS = ("otel_scope_name", "otel_scope_version", "otel_scope_schema_url")


def scrape(url: str, timeout: float = 5.0) -> str:
    """The text of a Prometheus endpoint; `ConfigError` for a URL that is not http(s), `ServerUnavailable` if down.

    A user and password in the URL (``http://user:pw@host:9464/metrics``) are sent as HTTP basic authentication,
    never shown: errors name the URL with the password masked.
    """
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"not an http(s) URL: {redact_conninfo(url)!r} (give the application's endpoint: http://host:9464/metrics)"
        )
    parts = urllib.parse.urlsplit(url)
    shown = redact_conninfo(url)
    request = urllib.request.Request(url)
    if parts.username is not None or parts.password is not None:
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        user = urllib.parse.unquote(parts.username or "")
        secret = urllib.parse.unquote(parts.password or "")
        credentials = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
        request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)))
        request.add_header("Authorization", f"Basic {credentials}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        waited = f" (no answer within {timeout:g} s)" if isinstance(reason, TimeoutError) else ""
        raise ServerUnavailable(f"cannot read {shown}: {redact_conninfo(str(exc))}{waited}") from None
    return body.decode("utf-8", "replace")


def _labels(sample: Any) -> dict[str, str]:
    return {k: v for k, v in sample.labels.items() if k not in _HIDDEN_LABELS}


def _server(labels: dict[str, str]) -> str:
    """``host[:port][/database]``: two databases of one server are two rows (their figures are kept apart)."""
    address = labels.get("server_address", "?")
    server = f"{address}:{labels['server_port']}" if "server_port" in labels else address
    return f"{server}/{labels['db_namespace']}" if labels.get("db_namespace") else server


def _quantile(buckets: list[tuple[float, float]], count: float, q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (seconds); None past the last finite bound."""
    for bound, cumulative in sorted(buckets):
        if cumulative >= q * count:
            return None if math.isinf(bound) else bound
    return None


def figures(text: str) -> dict[str, list[dict[str, Any]]]:
    """hypervault's figures in a Prometheus scrape: ``operations``, ``pools`` and ``counters`` (hypervault.*)."""
    from prometheus_client.parser import text_string_to_metric_families

    ops: dict[tuple[str, str, str], dict[str, Any]] = {}
    pools: dict[str, dict[str, Any]] = {}
    counters: list[dict[str, Any]] = []

    def pool(labels: dict[str, str]) -> dict[str, Any]:
        name = labels.get("db_client_connection_pool_name", "?")
        return pools.setdefault(name, {"pool": name})

    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:  # not the Prometheus text format: an HTML page, JSON, another endpoint
        start = " ".join(text.strip().split())[:60]
        raise HypervaultError(
            f"the endpoint did not answer in the Prometheus text format ({exc}; it began {start!r}): give the "
            "application's metrics URL, usually ending in /metrics"
        ) from None
    for family in families:
        for sample in family.samples:
            labels = _labels(sample)
            if family.name == _DURATION:
                key = (labels.get("db_operation_name", "?"), _server(labels), labels.get("error_type", ""))
                op = ops.setdefault(key, {"operation": key[0], "server": key[1], "error": key[2], "buckets": []})
                if sample.name.endswith("_bucket"):
                    op["buckets"].append((float(labels["le"]), sample.value))
                elif sample.name.endswith("_count"):
                    op["count"] = int(sample.value)
                elif sample.name.endswith("_sum"):
                    op["seconds"] = sample.value
            elif family.name == "db_client_connection_count":
                pool(labels)[labels.get("db_client_connection_state", "?")] = int(sample.value)
            elif family.name == "db_client_connection_max":
                pool(labels)["max"] = int(sample.value)
            elif family.name == "db_client_connection_pending_requests":
                pool(labels)["pending"] = int(sample.value)
            elif family.name == "db_client_connection_timeouts":
                pool(labels)["timeouts"] = int(sample.value)
            elif family.name == _WAIT and sample.name.endswith(("_count", "_sum")):
                pool(labels)["waits" if sample.name.endswith("_count") else "wait_seconds"] = sample.value
            elif family.name.startswith("hypervault_") and not sample.name.endswith("_bucket"):
                counters.append({"name": sample.name, "labels": labels, "value": sample.value})
    operations = []
    for op in ops.values():
        buckets = op.pop("buckets")
        count = op.setdefault("count", 0)
        seconds = op.pop("seconds", 0.0)
        op["mean_ms"] = round(seconds / count * 1000, 3) if count else None
        p95 = _quantile(buckets, count, 0.95) if count else None
        op["p95_le_ms"] = None if p95 is None else round(p95 * 1000, 3)
        operations.append(op)
    operations.sort(key=lambda o: (o["operation"], o["server"], o["error"]))
    return {"operations": operations, "pools": [pools[name] for name in sorted(pools)], "counters": counters}


def _text(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def print_figures(found: dict[str, list[dict[str, Any]]], out: TextIO) -> None:
    """The figures as three tables: operations, pools, hypervault counters."""
    rows: Iterable[tuple[Any, ...]] = [
        (o["operation"], o["server"], o["error"] or "-", _text(o["count"]), _text(o["mean_ms"]), _text(o["p95_le_ms"]))
        for o in found["operations"]
    ]
    table(list(rows), ["operation", "server", "error", "count", "mean ms", "p95 <= ms"], out)
    print(file=out)
    pool_rows = []
    for p in found["pools"]:
        waits = p.get("waits", 0)
        wait_ms = round(p.get("wait_seconds", 0.0) / waits * 1000, 3) if waits else None
        pool_rows.append(
            (
                p["pool"],
                _text(p.get("used")),
                _text(p.get("idle")),
                _text(p.get("max")),
                _text(p.get("pending")),
                _text(p.get("timeouts", 0)),
                _text(wait_ms),
            )
        )
    table(pool_rows, ["pool", "used", "idle", "max", "pending", "timeouts", "wait ms"], out)
    if found["counters"]:
        print(file=out)
        counter_rows = [
            (c["name"], ", ".join(f"{k}={v}" for k, v in sorted(c["labels"].items())) or "-", f"{c['value']:g}")
            for c in found["counters"]
        ]
        table(counter_rows, ["hypervault", "labels", "value"], out)


def watch(
    every: float | None, count: int | None, title: str, show: Callable[[], int], out: TextIO, *, clear: bool = True
) -> int:
    """Run ``show()`` once, or every ``every`` seconds as watch(1) does (``hv metrics --watch``, ``hv status --watch``).

    With ``every`` and ``clear`` (not for JSON), each round clears the terminal and prints ``title`` and the time
    first. Stops after ``count`` rounds if given (else at Ctrl-C); returns the last round's exit code.
    """
    check_watch(every, count)
    rounds = 0
    while True:
        if every and clear:
            out.write("\x1b[H\x1b[J")  # clear the terminal, as watch(1) does
            print(f"{title}  {time.strftime('%H:%M:%S')}  (every {every:g} s, Ctrl-C to stop)", file=out)
        with one_attempt_per_server(fresh=True):  # each round tries every server again (one attempt each)
            code = show()
        out.flush()
        rounds += 1
        if not every or (count is not None and rounds >= count):
            return code
        time.sleep(every)


def check_watch(every: float | None, count: int | None) -> None:
    """`InvalidArgument` for ``--count`` without ``--watch`` (it counts refreshes: alone it would be ignored)."""
    if count is not None and not every:
        raise InvalidArgument(
            f"--count {count} counts the refreshes of --watch: give --watch SECONDS too (without it hv shows one round)"
        )


def cmd_metrics(args: argparse.Namespace, out: TextIO) -> int:
    """Print the figures of an application's Prometheus endpoint; ``--watch N`` repeats every N seconds."""

    def show() -> int:
        found = figures(scrape(args.url))
        if args.json:
            emit_json(found, out, lines=bool(args.watch))
        else:
            print_figures(found, out)
        return 0

    check_watch(args.watch, args.count)
    return watch(args.watch, args.count, args.url, show, out, clear=not args.json)
