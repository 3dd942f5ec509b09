"""Log lines as text or as JSON objects (one per line), carrying the active trace's ids; the access log.

Standard library only: every `cnnserve` command configures logging through `configure_logging` before it
imports anything heavy. The trace ids come from OpenTelemetry's current span when OpenTelemetry has been
imported by this process (tracing is on); otherwise no span can be active and none is looked up, so a
process without tracing never pays for importing it.

The access log is the `cnnserve.access` logger: one record per call whose fields (method, model, version,
images, status, latency, queue and compute time, batch size, peer, client, trace id) travel in the
record's `access` attribute. In JSON they become keys of the line's object; in text they follow the
message as `key=value` pairs. Those fields are all a record holds: never image bytes, never a token.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
LOG_FORMAT_VARIABLE = "CNNSERVE_LOG_FORMAT"
DEFAULT_LOG_FORMAT = "text"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "cnnserve.access"

# What every LogRecord carries; anything else on a record came from `extra=` and is logged as a field.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class LogFormatError(ValueError):
    """An unknown log format; the message names the flag or variable that gave it."""


def resolve_log_format(flag: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The log format from `--log-format`, else CNNSERVE_LOG_FORMAT, else text."""
    environ = os.environ if environ is None else environ
    if flag is not None:
        source, value = "--log-format", flag
    elif environ.get(LOG_FORMAT_VARIABLE, ""):
        source, value = LOG_FORMAT_VARIABLE, environ[LOG_FORMAT_VARIABLE]
    else:
        return DEFAULT_LOG_FORMAT
    if value.strip().lower() not in LOG_FORMATS:
        raise LogFormatError(f"{source}={value!r} must be one of {', '.join(LOG_FORMATS)}")
    return value.strip().lower()


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the active span as lowercase hex, or None when no span is active."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:  # tracing never started in this process: no span can be active
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    access = getattr(record, "access", None)
    if isinstance(access, Mapping):
        fields.update(access)
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRIBUTES and key != "access":
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, then trace_id/span_id
    when a span is active, the record's extra fields, and the exception's traceback when there is one."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        ids = current_trace_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        for key, value in _extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic `time LEVEL logger: message` line, then the record's extra fields as key=value pairs
    and the active span's trace_id/span_id."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = [f"{key}={_text_value(value)}" for key, value in _extra_fields(record).items()]
        ids = current_trace_ids()
        if ids is not None and "trace_id" not in _extra_fields(record):
            pairs += [f"trace_id={ids[0]}", f"span_id={ids[1]}"]
        if not pairs:
            return line
        head, newline, tail = line.partition("\n")  # keep a traceback below the pairs
        return f"{head} {' '.join(pairs)}{newline}{tail}"


def _text_value(value: Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    return json.dumps(text) if (" " in text or '"' in text or "=" in text) else text


def formatter(
    log_format: str, text_format: str = TEXT_FORMAT, static: Mapping[str, Any] | None = None
) -> logging.Formatter:
    """The formatter of a log format; `static` fields go into every JSON line (e.g. the worker)."""
    if log_format == "json":
        return JsonFormatter(static)
    return TextFormatter(text_format)


def configure_logging(
    level: int | str,
    log_format: str = DEFAULT_LOG_FORMAT,
    text_format: str = TEXT_FORMAT,
    static: Mapping[str, Any] | None = None,
    stream: TextIO | None = None,
) -> None:
    """One stderr handler on the root logger in the chosen format (replacing any handler set before);
    Python's warnings go through it too, so a JSON log stays JSON line by line."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(log_format, text_format, static))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


def enable_access_log() -> logging.Logger:
    """The access logger, emitting at INFO whatever the root level (an access log is asked for
    explicitly, so --log-level WARNING must not silence it)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.INFO)
    return logger
