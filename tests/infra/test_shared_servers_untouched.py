"""Fault tests stop only what the suite started: the guard on signals, and a scan of the sources for server-wide faults.

`fixtures.shared_guard` refuses any signal to a process of the machine's shared PostgreSQL or Redis (tested here
with SIGCONT, which would do no harm if the guard let it through). Statements cannot be caught at run time, so the
test sources are scanned: every server-wide or other-session fault (``pg_terminate_backend``, ``ALTER SYSTEM``,
``FLUSHALL``, ``CONFIG SET``, ``CLIENT KILL``, a signal...) must be in a function listed in `ALLOWED` with the reason
it touches only what the suite started (or only the test's own session).
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fixtures import shared_guard
from fixtures.faults import FaultServers
from fixtures.services import REDIS_URL, missing_service
from fixtures.shared_guard import SharedServerSignalled, shared_owner, shared_roots

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("tests", "benchmarks")

# a fault that reaches past the test's own session: signals, sessions ended, server-wide settings and data
FAULT = re.compile(
    r"os\.kill\(|os\.killpg\(|\.send_signal\(|signal\.SIGSTOP|pthread_kill\(|pg_terminate_backend|pg_cancel_backend"
    r"|ALTER SYSTEM|pg_reload_conf|\bCHECKPOINT\b|pg_ctl\b.*\b(stop|restart|kill)\b|FLUSHALL|FLUSHDB|flushall\("
    r"|flushdb\(|CONFIG SET|config_set\(|CLIENT KILL|client_kill|CLIENT PAUSE|client_pause|DEBUG SLEEP"
    r"|\bSHUTDOWN\b|replicaof\(|slaveof\(|script_flush\(|SCRIPT FLUSH|systemctl|pg_ctlcluster"
    r"|service (postgresql|redis)|\[\s*[\"']p?kill(all)?[\"']\s*,|\bpkill\b|\bkillall\b"
    r"|execute_command\(\s*[\"'](CONFIG|CLIENT|DEBUG|SHUTDOWN|FLUSHALL|FLUSHDB|REPLICAOF|SLAVEOF|FAILOVER)",
)

# (file, enclosing function): why its faults reach only servers or processes the suite started, or only the test's
# own session. A new fault elsewhere fails `test_every_fault_in_the_sources_is_on_what_the_suite_started`.
ALLOWED: dict[tuple[str, str], str] = {
    ("tests/fixtures/localpg.py", "kill_recorded"): "a pid file of a server the suite started, checked by name",
    ("tests/fixtures/localpg.py", "sweep_orphans"): "servers of the suite's own directories whose run died",
    ("tests/fixtures/localpg.py", "stop"): "LocalServer.stop: pg_ctl on a data directory the suite made",
    ("tests/fixtures/redis_cluster.py", "sweep_orphans"): "the suite's own cluster nodes whose run died",
    ("tests/fixtures/faults.py", "frozen_session"): "a session of fault_pg only (its postmaster's child)",
    ("tests/fixtures/faults.py", "stop_redis"): "a redis-server the suite started",
    ("tests/fixtures/redis_replica.py", "freeze_replica"): "the suite's own replica redis-server",
    ("tests/fixtures/redis_replica.py", "thaw_replica"): "the suite's own replica redis-server",
    ("tests/fixtures/redis_replica.py", "stop"): "the suite's own redis-servers",
    ("tests/infra/test_shared_servers_untouched.py", "*"): "the guard's tests (SIGCONT, refused)",
    (
        "tests/reliability/test_server_faults.py",
        "test_server_restart_under_load_loses_no_acknowledged_write",
    ): "fault_pg",
    ("tests/reliability/test_server_faults.py", "test_async_server_restart_under_load_loses_no_acknowledged_write"): (
        "fault_pg"
    ),
    ("tests/reliability/test_server_faults.py", "test_terminated_sessions_fail_at_most_one_operation_per_connection"): (
        "fault_pg: the sessions of the test's own database"
    ),
    ("tests/reliability/test_server_faults.py", "test_a_frozen_server_fails_put_within_a_bound.freeze"): (
        "every process of fault_pg server 1"
    ),
    ("tests/reliability/test_server_faults.py", "test_a_frozen_server_fails_put_within_a_bound"): "fault_pg server 1",
    ("tests/reliability/test_old_library_failures.py", "terminate"): "fault_pg",
    ("tests/reliability/test_write_outcomes.py", "cut_while_waiting"): "fault_pg",
    ("tests/reliability/test_write_outcomes.py", "commits_without_reply"): "fault_pg (ALTER SYSTEM, reset after)",
    (
        "tests/reliability/test_write_outcomes.py",
        "test_a_write_ended_between_its_statement_and_its_commit_is_aborted_and_runs_again",
    ): "fault_pg",
    ("tests/reliability/test_write_positions.py", "commits_without_reply"): "fault_pg (ALTER SYSTEM, reset after)",
    ("tests/backends/test_postgres.py", "test_terminated_backend_next_operation_succeeds"): "pg_cluster",
    ("tests/backends/test_postgres_async.py", "terminate"): "pg_cluster: the suite's own servers",
    ("tests/backends/test_replicas_pg.py", "_freeze"): "pg_replica_pair: the suite's own standby",
    ("tests/backends/test_replicas_pg.py", "test_a_standby_that_stops_answering_fails_over_within_its_timeout"): (
        "pg_replica_pair: the suite's own standby (_freeze)"
    ),
    ("tests/backends/test_indexes_pg.py", "test_an_interrupted_build_resumes"): "SchemaSetup: pg_cluster",
    ("tests/backends/test_migrate.py", "test_a_migrator_killed_by_sigkill_is_finished_by_the_next_run"): (
        "the test's own migrator child"
    ),
    ("tests/backends/test_migrate.py", "test_statements_outside_a_transaction_and_an_interrupted_concurrent_build"): (
        "SchemaSetup: pg_cluster"
    ),
    ("tests/backends/test_move.py", "test_killed_cli_move_leaves_one_server_and_resumes"): "the test's own mover child",
    ("tests/backends/test_lease.py", "test_a_killed_leasing_process_frees_its_number"): "the test's own child",
    ("tests/backends/test_lease.py", "cut_role.cut"): "sessions of a role the test created (uuid name)",
    ("tests/backends/test_coalesce_pg.py", "test_a_grouped_insert_ended_while_a_lock_holds_it_runs_each_row_alone"): (
        "a session of the test's own datastore, in its own fresh database"
    ),
    (
        "tests/backends/test_transactions_pg.py",
        "test_a_session_terminated_mid_transaction_is_server_unavailable_and_nothing_is_written",
    ): "its own transaction's session (pg_backend_pid), on pg_cluster",
    ("tests/backends/test_pool_interrupts.py", "_signal_storm.sender"): "a thread of the test's own process",
    ("tests/newcomer/test_findings_demo_signals.py", "test_sigterm_during_the_demo_leaves_no_embedded_server_behind"): (
        "the test's own hv demo and the embedded servers in its own TMPDIR"
    ),
    (
        "tests/newcomer/test_findings_demo_config_interrupt.py",
        "test_an_interrupted_demo_on_configured_servers_deletes_its_rows",
    ): "the test's own hv demo process",
    ("tests/citus/test_adopt_interrupted.py", "test_an_adoption_killed_midway_resumes_where_it_stopped"): (
        "the test's own hv citus adopt process"
    ),
    ("tests/plugins/test_redis_cluster.py", "test_a_node_that_lost_its_data_serves_none_of_its_old_milliseconds"): (
        "redis_cluster: a node of the suite's own cluster"
    ),
    ("tests/plugins/test_redis_sequence.py", "test_script_is_loaded_again_after_a_script_flush"): "fakeredis",
    ("tests/plugins/test_redis_sequence.py", "test_a_frozen_redis_times_out_within_the_bound_then_recovers"): (
        "own_redis"
    ),
    ("tests/plugins/test_redis_sequence.py", "test_async_source_times_out_within_the_bound.main"): "own_redis",
    ("tests/plugins/test_redis_sequence.py", "test_wait_replicas_hands_out_only_blocks_the_replica_holds"): (
        "redis_replica_pair: the suite's own"
    ),
    ("tests/plugins/test_redis_sequence.py", "test_a_promoted_replica_serves_no_number_the_old_primary_handed_out"): (
        "redis_replica_pair: the suite's own"
    ),
    ("benchmarks/_shared.py", "syscalls_per_call"): "the benchmark's own tracer process",
    ("benchmarks/bench_concurrency.py", "run"): "ALTER SYSTEM on local_servers, the benchmark's own",
    ("benchmarks/bench_scaling.py", "run"): "ALTER SYSTEM on local_servers, the benchmark's own",
    ("benchmarks/bench_peers.py", "run"): "ALTER SYSTEM on local_servers, the benchmark's own",
    ("benchmarks/bench_datastore.py", "run"): "ALTER SYSTEM on local_servers, the benchmark's own",
    ("benchmarks/bench_fanout.py", "_recommend"): "ALTER SYSTEM and a restart of local_servers, the benchmark's own",
    ("benchmarks/bench_put_blocks.py", "measure_layout"): "CHECKPOINT on a LocalServer, the benchmark's own",
}


def _functions(tree: ast.AST) -> list[tuple[int, int, str]]:
    return [
        (node.lineno, node.end_lineno or node.lineno, node.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def _docstring_lines(tree: ast.AST) -> set[int]:
    """Lines of docstrings (prose about faults, not faults)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                lines.update(range(value.lineno, (value.end_lineno or value.lineno) + 1))
    return lines


def faults(root: Path = ROOT) -> list[tuple[str, int, str, str]]:
    """(file, line, enclosing functions joined by dots (``test.helper``) or "<module>", text) of every fault-looking
    line in the sources."""
    found = []
    for top in SCANNED:
        for path in sorted((root / top).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if not FAULT.search(text):
                continue
            tree = ast.parse(text)
            functions = _functions(tree)
            prose = _docstring_lines(tree)
            for number, line in enumerate(text.splitlines(), 1):
                if number in prose or not FAULT.search(line.split("  # ", 1)[0]) or line.lstrip().startswith("#"):
                    continue
                around = sorted((f for f in functions if f[0] <= number <= f[1]), key=lambda f: (f[0], -f[1]))
                name = ".".join(f[2] for f in around) or "<module>"
                found.append((path.relative_to(root).as_posix(), number, name, line.strip()))
    return found


def unexplained(found: list[tuple[str, int, str, str]]) -> list[str]:
    """The faults in no `ALLOWED` function."""
    out = []
    for file, number, function, line in found:
        if (file, function) in ALLOWED or (file, "*") in ALLOWED:
            continue
        out.append(f"{file}:{number} ({function}): {line}")
    return out


def test_every_fault_in_the_sources_is_on_what_the_suite_started() -> None:
    bad = unexplained(faults())
    assert not bad, (
        "faults that may reach the machine's shared PostgreSQL/Redis or other sessions: run them on a server the "
        "suite starts (fault_pg, pg_cluster, own_redis, ...) or on the test's own session only, and list the "
        "function in ALLOWED with the reason:\n" + "\n".join(bad)
    )


def test_the_scan_finds_the_shared_server_sigstop_of_the_old_frozen_session_tests(tmp_path: Path) -> None:
    """The frozen-session tests as they were (SIGSTOP to a session of the shared server, a skip on PermissionError)."""
    old = """
def test_a_frozen_session_cut_off_is_closed_after_a_short_grace(pg_fresh_db, call):
    try:
        os.kill(pid, signal.SIGSTOP)
    except PermissionError:
        pytest.skip("cannot stop the server's session process (not its owner)")
"""
    (tmp_path / "tests" / "backends").mkdir(parents=True)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "tests" / "backends" / "test_pipeline_timeouts.py").write_text(old, encoding="utf-8")
    bad = unexplained(faults(tmp_path))
    assert len(bad) == 1 and "test_a_frozen_session_cut_off_is_closed_after_a_short_grace" in bad[0], bad


def test_every_allowed_function_still_exists() -> None:
    """An entry whose function is gone (renamed, moved) would allow a new fault of that name unseen."""
    found = faults()
    listed = {(f, fn) for f, fn in ALLOWED if fn != "*"}
    have = {(file, function) for file, _, function, _ in found}
    assert listed <= have, sorted(listed - have)
    whole = {f for f, fn in ALLOWED if fn == "*"}
    assert whole <= {file for file, _, _, _ in found}, sorted(whole - {file for file, _, _, _ in found})
    files = {f for f, _ in ALLOWED}
    assert all((ROOT / f).exists() for f in files), [f for f in files if not (ROOT / f).exists()]


# -- the run-time guard --------------------------------------------------------------------------------------


def _refused(call: Any, *args: int) -> str:
    with pytest.raises(SharedServerSignalled) as caught:
        call(*args)
    shared_guard.violations.clear()  # refused as it must be: not this test's failure
    return str(caught.value)


def test_a_signal_to_a_session_of_the_shared_postgresql_is_refused(pg_main: dict[str, Any]) -> None:
    with psycopg.connect(**pg_main, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        pid = int(row[0])
        if shared_owner(pid) is None:
            missing_service(f"the PostgreSQL at {pg_main['host']}:{pg_main['port']} does not run on this machine")
        message = _refused(os.kill, pid, signal.SIGCONT)  # harmless had it been sent
        assert f"process {pid} belongs to the shared PostgreSQL" in message, message
        with pytest.raises(SharedServerSignalled):  # not a PermissionError, which a test might turn into a skip
            try:
                os.kill(pid, signal.SIGSTOP)
            except PermissionError:
                pytest.fail("the guard raised a PermissionError")
        shared_guard.violations.clear()
        postmaster = next(p for p, name in shared_roots().items() if "PostgreSQL" in name)
        _refused(os.kill, postmaster, signal.SIGCONT)
        _refused(os.killpg, os.getpgid(postmaster), signal.SIGCONT)
        os.kill(pid, 0)  # asking whether it exists sends nothing: allowed
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_signal_to_the_shared_redis_is_refused() -> None:
    import redis
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        pid = int(client.info("server")["process_id"])
    except redis.RedisError as exc:
        missing_service(f"Redis not reachable at {REDIS_URL}: {exc}")
    finally:
        client.close()
    if shared_owner(pid) is None:
        missing_service(f"the Redis at {REDIS_URL} does not run on this machine")
    assert "the shared Redis" in _refused(os.kill, pid, signal.SIGCONT)


def test_a_swallowed_refusal_still_fails_the_test(pg_main: dict[str, Any]) -> None:
    """A refusal caught somewhere (a thread, a broad except) is recorded: the check after the test fails it."""
    with psycopg.connect(**pg_main, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        if shared_owner(int(row[0])) is None:
            missing_service("the shared PostgreSQL does not run on this machine")
        with contextlib.suppress(BaseException):  # as a careless test would
            os.kill(int(row[0]), signal.SIGCONT)
    assert len(shared_guard.violations) == 1 and "refused" in shared_guard.violations[0]
    shared_guard.violations.clear()


def test_a_session_of_a_server_the_suite_started_may_be_signalled(fault_pg: FaultServers) -> None:
    with psycopg.connect(**fault_pg.settings(0), autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        pid = int(row[0])
        assert shared_owner(pid) is None
        with fault_pg.frozen_session(0, pid):
            pass
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with (
            pytest.raises(AssertionError, match="not a session process of fault server 1"),
            fault_pg.frozen_session(1, pid),  # a session of server 0 is not one of server 1
        ):
            pass


@pytest.mark.parametrize("ci", [True, False])
def test_a_session_the_suite_may_not_stop_fails_with_ci_true_and_skips_locally(
    fault_pg: FaultServers, monkeypatch: pytest.MonkeyPatch, ci: bool
) -> None:
    """A PermissionError from the SIGSTOP (a server process of another owner) is a failure with CI=true."""
    from fixtures import services

    with psycopg.connect(**fault_pg.settings(0), autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None

        def not_permitted(pid: int, sig: int) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "kill", not_permitted)
        monkeypatch.setattr(services, "IN_CI", ci)
        with (
            pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as caught,
            fault_pg.frozen_session(0, int(row[0])),
        ):
            raise AssertionError("the block ran without its session stopped")
    assert caught.type is (pytest.fail.Exception if ci else pytest.skip.Exception), caught.value
    assert ("CI=true" in str(caught.value)) is ci and "cannot stop session process" in str(caught.value), caught.value
