"""Logging of every embedstream process, set up once in ``main()``: text or JSON lines.

JSON lines carry ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``pid``,
``role`` (the command: serve, gateway, worker, ...), ``model`` where known (a worker's
model, or a record's own), ``trace_id``/``span_id`` while a span is current, and
``exception`` (the traceback) when the record has one.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from embedstream import tracing

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s"

_process: dict[str, str] = {"role": ""}
_json = False


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            **_process,
        }
        model = getattr(record, "model", None)
        if model:
            line["model"] = str(model)
        ids = tracing.ids()
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup(level: str, fmt: str, role: str) -> None:
    """Route every log record of this process to stderr, as text or as JSON lines."""
    global _json
    _process["role"] = role
    _json = fmt == "json"
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if _json else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # httpx logs each request at INFO: a pull (or a worker fetching an hf: model) would print one
    # line per file of the model. Their warnings and errors still come through.
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if _json:
        # Warnings and uncaught exceptions would otherwise reach stderr as plain text.
        logging.captureWarnings(True)
        sys.excepthook = _uncaught
        threading.excepthook = lambda args: _uncaught(args.exc_type, args.exc_value, args.exc_traceback)


def set_model(name: str) -> None:
    """Name the model this process serves in every later line."""
    _process["model"] = name


def json_lines() -> bool:
    """Whether this process logs JSON lines."""
    return _json


def announce(message: str) -> None:
    """Print ``message`` on stdout whatever the log level (the line tests and scripts wait
    for): as it is, or as a JSON line like the log's."""
    if _json:
        record = logging.makeLogRecord({"name": "embedstream", "levelname": "INFO", "levelno": logging.INFO})
        record.msg = message
        message = JsonFormatter().format(record)
    print(message, flush=True)


def _uncaught(kind: type[BaseException], value: BaseException | None, tb: TracebackType | None) -> None:
    if value is not None:
        logging.getLogger("embedstream").critical("uncaught %s", kind.__name__, exc_info=(kind, value, tb))
