"""Pieces several benchmark scripts share: the 2015 server-side id function and the interleaved timer."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["NEXT_ID_SQL", "callgrind_instructions", "measure"]

# The 2015 library's ids made on the server (Instagram's next_id()), on a table with the same indexes as ours,
# so that "client keys vs server keys" compares only where the id is made.
NEXT_ID_SQL = """
CREATE SEQUENCE IF NOT EXISTS {schema}.old_id_seq;
CREATE OR REPLACE FUNCTION {schema}.next_id(OUT result bigint) AS $$
DECLARE
    our_epoch bigint := 1379365531352;
    seq_id bigint;
    now_millis bigint;
    shard_id int := {shard};
BEGIN
    SELECT nextval('{schema}.old_id_seq') % 1024 INTO seq_id;
    SELECT FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) INTO now_millis;
    result := (now_millis - our_epoch) << 23;
    result := result | (shard_id << 10);
    result := result | (seq_id);
END;
$$ LANGUAGE PLPGSQL;
CREATE TABLE IF NOT EXISTS {schema}.entities_old (
    id bigint NOT NULL DEFAULT {schema}.next_id() PRIMARY KEY, kind smallint NOT NULL, body jsonb NOT NULL);
CREATE INDEX IF NOT EXISTS entities_old_kind_id_idx ON {schema}.entities_old (kind, id);
CREATE INDEX IF NOT EXISTS entities_old_body_idx ON {schema}.entities_old USING gin (body jsonb_path_ops);
"""


def measure(candidates: Mapping[str, Callable[[], object]], ops: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each candidate; ``ops`` calls per block, blocks in rotating order, one warm-up."""
    names = list(candidates)
    for name in names:
        for _ in range(max(ops // 5, 1)):
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            fn = candidates[name]
            started = time.perf_counter()
            for _ in range(ops):
                fn()
            times[name].append((time.perf_counter() - started) / ops)
    return {name: statistics.median(values) for name, values in times.items()}


SYSCALLS = ("openat", "close", "lseek", "pread64", "pwrite64")  # relation files opened/closed, sized, read, written


def syscalls_per_call(pids: list[int], fn: Callable[[], None], ops: int) -> dict[str, float]:
    """`SYSCALLS` per call of ``fn`` made by the server sessions ``pids`` (``strace -c -f`` attached meanwhile;
    raises OSError where strace is missing). Load does not move these counts, unlike times."""
    report = Path(f"/tmp/hv_bench_strace_{os.getpid()}.txt")
    attach = [arg for pid in pids for arg in ("-p", str(pid))]
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(report), *attach], stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # attached
        for _ in range(ops):
            fn()
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    counts: dict[str, float] = dict.fromkeys(SYSCALLS, 0.0)
    for line in report.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in counts and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3]) / ops
    report.unlink()
    return counts


def callgrind_instructions(script: str, *args: str, timeout: float = 1800) -> int:
    """Instructions valgrind's callgrind counts for ``python script *args`` run in a fresh process (the script's
    worker mode), with ``PYTHONHASHSEED=0`` so that two runs hash alike. ``RuntimeError`` with the end of the
    worker's stderr if it fails or callgrind prints no count."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, script, *args]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=timeout)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind worker failed: {done.stderr[-2000:]}")
    return int(found.group(1))
