"""The ``hv`` command line (layers: ``_parser`` → ``_cmd_*`` commands → ``_output``); only `main` is public."""

from hvcore.cli._main import main

__all__ = ["main"]
