"""The ``hv`` entry point: parse, run the command, turn every expected failure into one ``hv: error:`` line."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import TextIO

from hvcore._attempts import one_attempt_per_server
from hvcore._plugins import describe_load_error
from hvcore.cli._parser import build_parser
from hvcore.errors import HypervaultError

__all__ = ["main"]


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (``docker stop``, ``timeout``, a CI job's end): unwinds like Ctrl-C, so that what the command
    started (the demo's embedded servers, its rows on configured servers) is stopped and cleaned up first."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a command runs on the main thread with SIGTERM's default action, SIGTERM raises `Terminated`."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of ``hv``: run one command, print to ``out`` (stdout), return the exit code.

    A server that does not answer a connection attempt is not tried again by the same command (one
    ``connect_timeout`` per silent server, `hvcore._attempts`). Exit codes: the command's own (0 ok, 1 some check
    failed), 2 for a `HypervaultError` or a missing optional dependency (one line on stderr, no traceback, naming
    the ``pip install 'hypervault[extra]'`` to run), 130 when interrupted (Ctrl-C), 143 when terminated (SIGTERM:
    cleaned up as for Ctrl-C). Bad arguments exit 2 through argparse (`SystemExit`).
    """
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_unwinds(), one_attempt_per_server():  # a server that did not answer is not tried again
            code: int = args.func(args, out)
    except Terminated:
        print("hv: terminated", file=sys.stderr)
        return 143
    except HypervaultError as exc:
        print(f"hv: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency that a plugin or command imports late
        print(f"hv: error: {describe_load_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code
