"""The Prometheus route: OpenTelemetry SDK + its Prometheus exporter on a loopback port, scraped; ``hv metrics``."""

from __future__ import annotations

import base64
import http.server
import io
import json
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from hvcore import cli, metrics
from hvcore.cli import _cmd_metrics as cli_metrics


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def endpoint() -> Iterator[str]:
    """The README's setup: an SDK provider with the Prometheus reader, served on a free loopback port."""
    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.use(provider)
    metrics.wait_time = "all"  # every checkout's wait, so the test knows how many
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    yield f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    metrics.use(None)
    metrics.wait_time = "waits"
    provider.shutdown()  # unregisters the reader's collector from prometheus_client's registry


def _samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if not k.startswith("otel_scope"))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_scrape_exposes_operations_and_pools(pg_datastore_factory: Any, endpoint: str) -> None:
    ds = pg_datastore_factory("jsonb", pool_max=3)
    key = ds.put(3, 1, n="a")
    ds.get(key)
    ds.get(key)
    ds.get_many([key, ds.put(12, 1, n="b")])
    conn = ds.get_connection(5)
    try:
        samples = _samples(endpoint)
        stats = ds._stores[0].stats()
    finally:
        ds.put_connection(conn)
    host, _, rest = ds._stores[0].label.partition(":")
    port, _, dbname = rest.partition("/")
    server = {("server_address", host), ("db_namespace", dbname), ("db_system_name", "postgresql")}
    if port != "5432":  # the conventions want server.port only for a port other than PostgreSQL's default
        server.add(("server_port", port))
    gets = frozenset({*server, ("db_operation_name", "get")})
    assert samples[("db_client_operation_duration_seconds_count", gets)] == 2
    assert 0 < samples[("db_client_operation_duration_seconds_sum", gets)] < 10
    assert samples[("db_client_operation_duration_seconds_bucket", frozenset({*gets, ("le", "+Inf")}))] == 2
    pool = ("db_client_connection_pool_name", ds._stores[0].label)
    used = frozenset({pool, ("db_client_connection_state", "used")})
    idle = frozenset({pool, ("db_client_connection_state", "idle")})
    assert samples[("db_client_connection_count", used)] == stats["borrowed"] == 1
    assert samples[("db_client_connection_count", idle)] == stats["available"]
    assert samples[("db_client_connection_max", frozenset({pool}))] == 3
    assert samples[("db_client_connection_pending_requests", frozenset({pool}))] == 0
    assert samples[("db_client_connection_wait_time_seconds_count", frozenset({pool}))] >= 3


def test_hv_metrics_prints_the_scraped_figures(pg_datastore_factory: Any, endpoint: str) -> None:
    ds = pg_datastore_factory("hstore")
    keys = [ds.put(3, 1, n=str(i)) for i in range(3)]
    assert len(ds.get_many(keys)) == 3
    metrics.replica_fallback("primary:5432/app", "standby:5432/app", "lag")
    out = io.StringIO()
    assert cli.main(["metrics", endpoint], out=out) == 0
    text = out.getvalue()
    host_port = ds._stores[0].label  # host:port/database: two databases of one server are two rows
    lines = [line.split() for line in text.splitlines()]
    assert ["put", host_port, "-", "3"] in [line[:4] for line in lines]
    assert ["get_many", host_port, "-", "1"] in [line[:4] for line in lines]
    pool_line = next(line for line in lines if line and line[0] == ds._stores[0].label)
    assert pool_line[1:5] == ["0", str(ds._stores[0].stats()["available"]), "10", "0"]  # used idle max pending
    assert any(
        line[:1] == ["hypervault_replica_fallbacks_total"] and "hypervault_reason=lag," in line for line in lines
    )

    out = io.StringIO()
    assert cli.main(["metrics", endpoint, "--json"], out=out) == 0
    found = json.loads(out.getvalue())
    puts = [o for o in found["operations"] if o["operation"] == "put" and o["server"] == host_port]
    assert puts[0]["count"] == 3 and puts[0]["mean_ms"] > 0 and puts[0]["p95_le_ms"] is not None
    assert {p["pool"] for p in found["pools"]} == {s.label for s in ds._stores}

    out = io.StringIO()  # --watch: scraped again each round, the terminal cleared first (shared with hv status)
    assert cli.main(["metrics", endpoint, "--watch", "0.05", "--count", "2"], out=out) == 0
    assert out.getvalue().count("\x1b[H\x1b[J") == 2 and out.getvalue().count(f"{endpoint}  ") == 2
    assert out.getvalue().count("get_many") == 2


def test_hv_metrics_on_a_bad_url_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["metrics", "ftp://x/metrics"]) == 2
    assert "not an http(s) URL" in capsys.readouterr().err
    assert cli.main(["metrics", f"http://127.0.0.1:{_free_port()}/metrics"]) == 2
    assert "cannot read http://127.0.0.1:" in capsys.readouterr().err


def _duration_series(db: str, count: int, total: float) -> str:
    labels = (
        f'db_namespace="{db}",db_operation_name="put",db_system_name="postgresql",'
        'server_address="127.0.0.1",server_port="5433"'
    )
    return (
        f'db_client_operation_duration_seconds_bucket{{{labels},le="0.005"}} {count}.0\n'
        f'db_client_operation_duration_seconds_bucket{{{labels},le="+Inf"}} {count}.0\n'
        f"db_client_operation_duration_seconds_count{{{labels}}} {count}.0\n"
        f"db_client_operation_duration_seconds_sum{{{labels}}} {total}\n"
    )


def test_two_databases_of_one_server_are_two_rows() -> None:
    """Both series were one row holding the last one's count and sum and both's buckets (96 puts shown of 200)."""
    text = "# TYPE db_client_operation_duration_seconds histogram\n"
    text += _duration_series("app", 104, 0.5) + _duration_series("app2", 96, 0.25)
    found = {o["server"]: o for o in cli_metrics.figures(text)["operations"]}
    assert set(found) == {"127.0.0.1:5433/app", "127.0.0.1:5433/app2"}
    assert [found["127.0.0.1:5433/app"]["count"], found["127.0.0.1:5433/app2"]["count"]] == [104, 96]


@pytest.mark.parametrize("argv", [["--watch", "-1"], ["--watch", "0"], ["--watch", "soon"], ["--count", "0"]])
def test_bad_watch_and_count_values_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["metrics", "http://127.0.0.1:1/metrics", *argv])
    assert info.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_a_password_in_the_url_is_sent_as_basic_auth_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = b"# TYPE hypervault_key_collisions_total counter\nhypervault_key_collisions_total 2.0\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        out = io.StringIO()
        assert cli.main(["metrics", f"http://ops:s3cr%40t@127.0.0.1:{port}/metrics"], out=out) == 0
        assert seen == ["Basic " + base64.b64encode(b"ops:s3cr@t").decode()]
        assert "hypervault_key_collisions_total" in out.getvalue()
    finally:
        server.shutdown()
        server.server_close()
    assert cli.main(["metrics", f"http://ops:s3cr3tPW@127.0.0.1:{_free_port()}/metrics"]) == 2
    err = capsys.readouterr().err
    assert "s3cr3tPW" not in err and "cannot read http://ops:***@127.0.0.1:" in err


def test_the_readme_route_with_the_global_provider(tmp_path: Any) -> None:
    """The README's steps in a fresh process: exporter server, global provider, then a datastore; scraped."""
    port = _free_port()
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import urllib.request
            from opentelemetry import metrics as otel
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from opentelemetry.sdk.metrics import MeterProvider
            from prometheus_client import start_http_server
            from hvcore import Datastore

            start_http_server({port}, addr="127.0.0.1")
            otel.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
            db = Datastore([dict(shards="0-16", name="readme")], backend="memory")
            db.provision()
            db.get(db.put(5, 1, beep="boop"))
            print(urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
            """
        ),
        encoding="utf-8",
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    counts = {
        s.labels["db_operation_name"]: s.value
        for family in text_string_to_metric_families(done.stdout)
        for s in family.samples
        if s.name == "db_client_operation_duration_seconds_count"
    }
    assert counts == {"put": 1, "get": 1}
    assert 'db_client_connection_max{db_client_connection_pool_name="memory:readme"' in done.stdout
