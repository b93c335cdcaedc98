"""The log of casd processes: one JSON object per line on stderr (or plain text for terminals).

Each line is written whole, with one ``write()``, so the lines of several worker processes that
share stderr never interleave. No token reaches the log: every record is cleaned by
``casd.redact`` before it is formatted. The standard library is enough for this (a formatter of
twenty lines); python-json-logger or structlog would add a dependency and a second way of
logging without giving casd anything it lacks.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.handlers
import os
import queue
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from casd import redact

TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"

# Fields that a record carries for the JSON line beside its message: logger.info(...,
# extra={FIELDS: {...}}). The access log uses it.
FIELDS = "fields"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "pid", "message", ...fields, "exception"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, FIELDS, None) or {})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        cleaned = {key: redact.redact(v) if isinstance(v, str) else v for key, v in entry.items()}
        return json.dumps(cleaned, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, for a person at a terminal; cleaned of tokens as a whole."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact.redact(super().format(record))


class LineHandler(logging.Handler):
    """Writes each formatted record, and its newline, with one ``os.write`` to a descriptor."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(self.fd, data) :]
        except Exception:
            self.handleError(record)


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer thread with their message and traceback rendered (the
    objects they refer to may change before the thread gets to them), fields kept."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = record.exc_text or logging.Formatter().formatException(
                record.exc_info
            )
            record.exc_info = None
        return record


def configure_logging(level: str, fmt: str, *, threaded: bool) -> Callable[[], None]:
    """Log to stderr in ``fmt`` ("json" or "text"). ``threaded``: from a thread of its own, so
    that formatting and writing (to a slow terminal or a full pipe) never stall an event loop;
    call the function returned to write what is still queued. A process that forks logs
    without a thread (a fork copies no thread)."""
    output = LineHandler(sys.stderr.fileno())
    output.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    redact.install([output])  # no token ever reaches the log, whoever logs it
    logging.captureWarnings(True)
    if not threaded:
        logging.basicConfig(level=level.upper(), handlers=[output], force=True)
        return lambda: None
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, output)
    listener.start()
    logging.basicConfig(level=level.upper(), handlers=[_Enqueue(records)], force=True)
    return listener.stop
