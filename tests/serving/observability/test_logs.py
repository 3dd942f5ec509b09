"""Log lines as text or JSON with trace ids, and the access log of a real `cnnserve serve`."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import signal
import socket
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from cnnserve.protos import inference_pb2, inference_pb2_grpc
from cnnserve.serving.observability.logs import (
    ACCESS_LOGGER,
    TEXT_FORMAT,
    JsonFormatter,
    LogFormatError,
    TextFormatter,
    configure_logging,
    enable_access_log,
    resolve_log_format,
)
from cnnserve.serving.observability.tracing import TracingSettings, start_tracing

MODEL = "mnist_cnn"
TOKEN = "s3cr3t-t0ken-never-logged"


def record(message: str = "hello %s", *args: Any, **extra: Any) -> logging.LogRecord:
    made = logging.getLogger("cnnserve.test").makeRecord(
        "cnnserve.test", logging.WARNING, __file__, 1, message, args or ("world",), None, extra=extra
    )
    return made


def test_log_format_comes_from_the_flag_then_the_variable() -> None:
    assert resolve_log_format(None, {}) == "text"
    assert resolve_log_format(None, {"CNNSERVE_LOG_FORMAT": "JSON"}) == "json"
    assert resolve_log_format("text", {"CNNSERVE_LOG_FORMAT": "json"}) == "text"
    with pytest.raises(LogFormatError, match="CNNSERVE_LOG_FORMAT='xml'"):
        resolve_log_format(None, {"CNNSERVE_LOG_FORMAT": "xml"})


def test_json_lines_carry_time_level_logger_message_and_the_active_span() -> None:
    entry = json.loads(JsonFormatter({"worker": 1}).format(record(access={"status": "OK"})))
    assert entry["level"] == "WARNING" and entry["logger"] == "cnnserve.test"
    assert entry["message"] == "hello world" and entry["worker"] == 1 and entry["status"] == "OK"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"])
    assert "trace_id" not in entry

    tracing = start_tracing(TracingSettings(), exporter=_NullExporter(), synchronous=True)
    assert tracing is not None
    with tracing.tracer.start_as_current_span("work") as span:
        context = span.get_span_context()
        entry = json.loads(JsonFormatter().format(record()))
        text = TextFormatter().format(record())
    assert entry["trace_id"] == f"{context.trace_id:032x}" and entry["span_id"] == f"{context.span_id:016x}"
    assert f"trace_id={context.trace_id:032x}" in text and text.split(" ", 4)[3] == "cnnserve.test:"

    try:
        raise ValueError("bad thing")
    except ValueError:
        failed = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "oops", (), sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(failed))
    assert "ValueError: bad thing" in entry["exception"]


def test_configure_logging_writes_one_json_object_per_line() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(logging.INFO, "json", stream=stream)
        logging.getLogger("cnnserve.a").info("first\nsecond line")
        logging.getLogger("cnnserve.b").warning("third")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["first\nsecond line", "third"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _NullExporter:
    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


@pytest.mark.slow
def test_serve_logs_json_and_one_access_line_per_call_without_images_or_tokens(
    serve_subprocess: Callable[..., Any], model_repository, digits, tmp_path
) -> None:
    """Two workers under a supervisor, as in the image: every line of the log parses as JSON, each call
    has its access line with the right status, and /metrics shows the new gauges per worker process."""
    metrics_port = free_port()
    server = serve_subprocess(
        "--repo",
        str(model_repository),
        "--workers",
        "2",
        "--access-log",
        "--metrics-port",
        str(metrics_port),
        "--poll-interval",
        "0",
        env={"CNNSERVE_LOG_FORMAT": "json"},
    )
    auth = (("authorization", f"Bearer {TOKEN}"),)
    image = digits.png[0]
    with grpc.insecure_channel(server.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        ok = stub.Classify(
            inference_pb2.ClassifyRequest(model=MODEL, images=[inference_pb2.Image(encoded=image)] * 2),
            timeout=30,
            metadata=auth,
        )
        assert len(ok.results) == 2
        for request, code in [
            (
                inference_pb2.ClassifyRequest(
                    model="no_such_model", images=[inference_pb2.Image(encoded=image)]
                ),
                grpc.StatusCode.NOT_FOUND,
            ),
            (
                inference_pb2.ClassifyRequest(model=MODEL, images=[inference_pb2.Image(encoded=image[:40])]),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.Classify(request, timeout=30, metadata=auth)
            assert caught.value.code() == code
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    server.signal(signal.SIGTERM)
    assert server.wait(60) == 0, server.log()
    log = server.log()

    entries = []
    for line in log.splitlines():
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any("worker" in e for e in entries) and any("worker" not in e for e in entries)
    access = [e for e in entries if e["logger"] == "cnnserve.access"]
    assert [(e["model"], e["status"]) for e in access] == [
        (MODEL, "OK"),
        ("no_such_model", "NOT_FOUND"),
        (MODEL, "INVALID_ARGUMENT"),
    ]
    good = access[0]
    assert good["method"] == "Classify" and good["version"] == 1 and good["images"] == 2
    assert good["batch_size"] == 2 and good["latency_ms"] >= good["queue_ms"] + good["compute_ms"]
    assert good["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:")) and good["trace_id"] is None
    assert "no_such_model" in access[1]["error"] and access[2]["error"].startswith("image 0")
    # Neither the images (raw, base64 or as a bytes literal) nor the token is anywhere in the log.
    for secret in (TOKEN, base64.b64encode(image[:24]).decode(), repr(image[:16])[2:-1], "IHDR"):
        assert secret not in log, secret

    assert re.search(r'cnnserve_requests_total\{model="mnist_cnn",rpc="Classify",version="1"\} 1.0', metrics)
    assert re.search(
        r'cnnserve_model_events_total\{event="load",model="mnist_cnn",version="1"\} 2.0', metrics
    )
    for gauge in ("resident_memory_bytes", "open_fds", "start_time_seconds"):
        pids = re.findall(rf'cnnserve_process_{gauge}\{{pid="(\d+)"\}} (\S+)', metrics)
        assert len(pids) == 2 and all(float(value) > 0 for _, value in pids), (gauge, metrics[:3000])


@pytest.mark.parametrize(
    ("log_format", "text_format"),
    [("json", None), ("text", None), ("text", "%(asctime)s %(levelname)s worker-1 %(name)s: %(message)s")],
)
def test_an_access_line_written_directly_is_the_line_its_log_record_gives(
    log_format: str, text_format: str | None
) -> None:
    """With the handler configure_logging sets, AccessLog writes its line without a LogRecord; the line is
    the one the record would give. With any other handler (a test's capture), the record goes out."""
    fields = {"method": "Classify", "model": MODEL, "version": 1, "status": "OK", "latency_ms": 1.5}
    fields |= {"peer": "ipv4:127.0.0.1:5", "client": None, "error": 'a "quoted" = message', "trace_id": None}
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    access = enable_access_log()
    try:
        configure_logging(logging.WARNING, log_format, text_format or TEXT_FORMAT, {"worker": 1}, stream)
        assert access._direct_handler() is root.handlers[0]
        access.write("Classify OK", fields)
        (line,) = stream.getvalue().splitlines()
        # A plain LogRecord: a library's record factory (if one is installed) may add attributes of its own.
        record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, "%s", ("Classify OK",), None)
        record.access = fields
        expected = root.handlers[0].format(record)
        captured: list[logging.LogRecord] = []
        capture = logging.Handler()
        capture.emit = captured.append  # type: ignore[method-assign]
        root.addHandler(capture)
        assert access._direct_handler() is None
        access.write("Classify OK", fields)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    if log_format == "json":
        written, made = json.loads(line), json.loads(expected)
        stamps = [written.pop("time"), made.pop("time")]
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", t) for t in stamps)
        assert written == made
        assert written["worker"] == 1 and written["error"] == fields["error"]
    else:
        # Equal but for the clock: "YYYY-MM-DD HH:MM:SS,mmm" in both.
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
        assert re.match(stamp, line) and re.match(stamp, expected) and line[23:] == expected[23:]
        assert 'error="a \\"quoted\\" = message"' in line and line.endswith("trace_id=-")
    assert [r.access for r in captured] == [fields]  # type: ignore[attr-defined]
