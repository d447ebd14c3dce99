"""Logging for entry points (the ``usae`` command and workflow scripts), never on import.

Sends records to stderr and, for a workflow job, to the rule's ``log:`` file, and logs
uncaught exceptions there too, so a failed job's log says why it failed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import TracebackType

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(log_path: str | Path | None = None, level: int = logging.INFO) -> None:
    """Route ``usae`` logging to stderr and ``log_path``; record uncaught exceptions."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=level, format=FORMAT, handlers=handlers, force=True)

    def excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        logging.getLogger("usae").error("stage failed: %s: %s", kind.__name__, value, exc_info=(kind, value, tb))

    sys.excepthook = excepthook
