"""A newcomer's findings: `hv demo` stopped by SIGTERM (docker stop, a CI timeout, `timeout 60 hv demo`)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HV = str(Path(sys.executable).with_name("hv"))


def _embedded_dirs(top: Path) -> set[str]:
    return set(glob.glob(str(top / "hv-embedded-*")))


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
    """The demo makes its servers in a temporary directory of the test's own (TMPDIR): only they are looked for and
    stopped afterwards, never the embedded servers of another session's demo in the machine's /tmp."""
    top = Path(tempfile.mkdtemp(prefix="hv-demo-signals-"))
    top.chmod(0o755)  # under root the embedded servers run as their own user, who must reach their data
    demo = subprocess.Popen(
        [HV, "demo", "--rows", "300000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(top)},
    )
    try:
        deadline = time.monotonic() + 60
        while len(_server_pids(_embedded_dirs(top))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_server_pids(_embedded_dirs(top))) >= 2, "the demo's servers did not start within 60 s"
        time.sleep(2)  # both servers up, the demo writing
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=30)
        time.sleep(2)
        new = _embedded_dirs(top)
        left = _server_pids(new)
        assert not left and not new, f"left running: {left}; left on disk: {sorted(new)}"
    finally:
        if demo.poll() is None:
            demo.kill()
        for pid in _server_pids(_embedded_dirs(top)):  # stop what the demo left behind: its own servers only
            os.kill(pid, signal.SIGQUIT)
        time.sleep(1)
        shutil.rmtree(top, ignore_errors=True)
