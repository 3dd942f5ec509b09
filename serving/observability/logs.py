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

import contextlib
import datetime
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO, cast

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
        fields = _extra_fields(record)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        return self.format_fields(record.created, record.levelname, record.name, record.getMessage(), fields)

    def format_fields(
        self, created: float, level: str, logger: str, message: str, fields: Mapping[str, Any]
    ) -> str:
        """The line of a record made of these values, without a LogRecord (see AccessLog)."""
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "logger": logger,
            "message": message,
            **self.static,
        }
        ids = current_trace_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        for key, value in fields.items():
            entry.setdefault(key, value)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic `time LEVEL logger: message` line, then the record's extra fields as key=value pairs
    and the active span's trace_id/span_id."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)
        # Lines can be made without a LogRecord (format_fields) when the format uses nothing else.
        self.direct = set(re.findall(r"%\((\w+)\)", self._fmt or "")) <= _DIRECT_TEXT_KEYS

    def format(self, record: logging.LogRecord) -> str:
        return self._with_fields(super().format(record), _extra_fields(record))

    def format_fields(
        self, created: float, level: str, logger: str, message: str, fields: Mapping[str, Any]
    ) -> str:
        """The line of a record made of these values, without a LogRecord (see AccessLog); only for a
        format that uses nothing but asctime, levelname, name and message (`direct`)."""
        stamp = _Stamp(created, int((created - int(created)) * 1000) + 0.0)  # as LogRecord computes it
        values = {
            "asctime": self.formatTime(cast(logging.LogRecord, stamp)),
            "levelname": level,
            "name": logger,
            "message": message,
        }
        return self._with_fields(self._fmt % values if self._fmt else message, fields)

    def _with_fields(self, line: str, fields: Mapping[str, Any]) -> str:
        pairs = [f"{key}={_text_value(value)}" for key, value in fields.items()]
        ids = current_trace_ids()
        if ids is not None and "trace_id" not in fields:
            pairs += [f"trace_id={ids[0]}", f"span_id={ids[1]}"]
        if not pairs:
            return line
        head, newline, tail = line.partition("\n")  # keep a traceback below the pairs
        return f"{head} {' '.join(pairs)}{newline}{tail}"


_DIRECT_TEXT_KEYS = frozenset({"asctime", "levelname", "name", "message"})


class _Stamp:
    """What Formatter.formatTime reads of a record."""

    __slots__ = ("created", "msecs")

    def __init__(self, created: float, msecs: float) -> None:
        self.created = created
        self.msecs = msecs


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


class AccessLog:
    """The access log: one line per call on the `cnnserve.access` logger, at INFO.

    A call's line is made straight from its fields and written to the stream when the process logs the
    way `configure_logging` sets it up (one stream handler on the root logger, with cnnserve's JSON
    formatter or a text format of time, level, logger and message; no filters): the same line a LogRecord
    would give, at a third of its cost (no record, no caller lookup, no search for extra fields). Under
    any other logging setup (more handlers, a filter, a test capturing records) it is an ordinary record
    whose fields are in its `access` attribute, so whatever handles records sees the usual one.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def write(self, message: str, fields: dict[str, Any]) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        handler = self._direct_handler()
        if handler is not None:
            formatter = handler.formatter
            assert isinstance(formatter, JsonFormatter | TextFormatter)
            line = formatter.format_fields(time.time(), "INFO", self.logger.name, message, fields)
            try:
                with handler.lock or contextlib.nullcontext():
                    handler.stream.write(line + handler.terminator)
                    handler.flush()
                return
            except Exception:  # a stream that failed: logging's own path reports it its way
                pass
        self.logger.info("%s", message, extra={"access": fields})

    def _direct_handler(self) -> logging.StreamHandler[TextIO] | None:
        """The one stream handler every access line goes to, when a line may skip the LogRecord."""
        logger, root = self.logger, logging.root
        if (
            logger.handlers
            or logger.filters
            or not logger.propagate
            or root.filters
            or len(root.handlers) != 1
        ):
            return None
        handler = root.handlers[0]
        if type(handler) is not logging.StreamHandler or handler.filters or handler.level > logging.INFO:
            return None
        formatter = handler.formatter
        if isinstance(formatter, JsonFormatter) or (
            isinstance(formatter, TextFormatter) and formatter.direct
        ):
            return handler
        return None


def enable_access_log() -> AccessLog:
    """The access log, emitting at INFO whatever the root level (an access log is asked for explicitly,
    so --log-level WARNING must not silence it)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.setLevel(logging.INFO)
    return AccessLog(logger)
