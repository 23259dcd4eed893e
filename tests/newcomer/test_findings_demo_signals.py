"""A newcomer's findings: `hv demo` stopped by SIGTERM (docker stop, a CI timeout, `timeout 60 hv demo`)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HV = str(Path(sys.executable).with_name("hv"))


def _embedded_dirs() -> set[str]:
    return set(glob.glob("/tmp/hv-embedded-*"))


def _server_pids(dirs: set[str]) -> list[int]:
    """PIDs of processes whose command line names one of ``dirs`` (the demo's embedded servers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(d in cmdline for d in dirs):
            pids.append(int(entry.name))
    return pids


def test_sigterm_during_the_demo_leaves_no_embedded_server_behind() -> None:
    before = _embedded_dirs()
    demo = subprocess.Popen([HV, "demo", "--rows", "300000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(_server_pids(_embedded_dirs() - before)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_server_pids(_embedded_dirs() - before)) >= 2, "the demo's servers did not start within 60 s"
        time.sleep(2)  # both servers up, the demo writing
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=30)
        time.sleep(2)
        new = _embedded_dirs() - before
        left = _server_pids(new)
        assert not left and not new, f"left running: {left}; left on disk: {sorted(new)}"
    finally:
        if demo.poll() is None:
            demo.kill()
        new = _embedded_dirs() - before
        for pid in _server_pids(new):  # stop what the demo left behind: its own servers only
            os.kill(pid, signal.SIGQUIT)
        time.sleep(1)
        for path in new:
            shutil.rmtree(path, ignore_errors=True)
