"""OpenTelemetry tracing through a real server and its batcher, and through the batch job to the server.

Spans go to the SDK's in-memory exporter, exported as each span ends; the server, its batcher, ONNX
Runtime and the gRPC clients are the real ones.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cnnserve.protos import inference_pb2, inference_pb2_grpc
from cnnserve.serving.jobs.job import JobConfig, run_job
from cnnserve.serving.observability.logs import ACCESS_LOGGER
from cnnserve.serving.observability.tracing import (
    TracingConfigError,
    TracingSettings,
    require_exporters,
    start_tracing,
    tracing_settings,
)

MODEL = "mnist_cnn"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SPAN_NAME = "cnnserve.v1/Classify"


def in_memory_tracing(sampler: str = "parentbased_always_on"):  # type: ignore[no-untyped-def]
    exporter = InMemorySpanExporter()
    tracing = start_tracing(TracingSettings(sampler=sampler), exporter=exporter, synchronous=True)
    assert tracing is not None
    return tracing, exporter


def seconds(span: ReadableSpan) -> float:
    assert span.start_time is not None and span.end_time is not None
    return (span.end_time - span.start_time) / 1e9


def test_settings_follow_the_otel_variables_and_name_a_bad_one() -> None:
    assert not tracing_settings({}).enabled  # off unless asked for
    assert not tracing_settings({"OTEL_TRACES_EXPORTER": "none"}).enabled
    assert not tracing_settings({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}).enabled
    settings = tracing_settings(
        {
            "OTEL_TRACES_EXPORTER": "otlp,console",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
            "OTEL_SERVICE_NAME": "classifier",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }
    )
    assert settings == TracingSettings(
        ("otlp", "console"), "parentbased_traceidratio", 0.01, "http/protobuf", "classifier"
    )
    for variable, value in [
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
        ("OTEL_TRACES_SAMPLER_ARG", "half"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
    ]:
        environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "traceidratio", variable: value}
        with pytest.raises(TracingConfigError, match=variable):
            tracing_settings(environ)
    # The OTLP exporter over HTTP is not installed here (the otlp extra brings the gRPC one): said at once.
    with pytest.raises(TracingConfigError, match="opentelemetry-exporter-otlp-proto-http"):
        require_exporters(TracingSettings(("otlp",), protocol="http/protobuf"))
    require_exporters(TracingSettings(("otlp",), protocol="grpc"))


def test_a_classify_merged_with_another_callers_is_traced_through_the_batcher(
    start_server: Callable[..., object], model_repository: Path, digits, caplog: pytest.LogCaptureFixture
) -> None:
    tracing, exporter = in_memory_tracing()
    # A fixed 400 ms batching wait: the two calls sent together are merged into one batch.
    server = start_server(
        model_repository, tracing=tracing, batch_wait="fixed", max_queue_delay_us=400_000, access_log=True
    )
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    barrier = threading.Barrier(2)
    answers: dict[str, int] = {}

    def call(name: str, count: int, metadata: tuple[tuple[str, str], ...]) -> None:
        with grpc.insecure_channel(server.address) as channel:  # type: ignore[attr-defined]
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            request = inference_pb2.ClassifyRequest(
                model=MODEL, images=[inference_pb2.Image(encoded=d) for d in digits.png[:count]]
            )
            barrier.wait()
            answers[name] = len(stub.Classify(request, timeout=30, metadata=metadata).results)

    traceparent = (("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"),)
    threads = [
        threading.Thread(target=call, args=("traced", 3, traceparent)),
        threading.Thread(target=call, args=("other", 2, ())),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == {"traced": 3, "other": 2}

    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    assert sorted(s.name for s in servers) == [SPAN_NAME, SPAN_NAME]
    (traced,) = [s for s in servers if f"{s.context.trace_id:032x}" == CALLER_TRACE]
    (other,) = [s for s in servers if s is not traced]
    # The server span continues the caller's trace, under the caller's span.
    assert traced.parent is not None and f"{traced.parent.span_id:016x}" == CALLER_SPAN
    assert traced.attributes is not None
    assert traced.attributes["cnnserve.model"] == MODEL and traced.attributes["cnnserve.model.version"] == 1
    assert traced.attributes["cnnserve.images"] == 3 and traced.attributes["rpc.response.status_code"] == "OK"

    # Its parts: decode, queue wait, compute, response -- inside the call, adding up to no more than it.
    children = {
        s.name: s
        for s in spans
        if s.parent is not None and s.parent.span_id == traced.context.span_id and s.name != "batch"
    }
    assert set(children) == {"decode", "queue", "compute", "response"}
    assert traced.start_time is not None and traced.end_time is not None
    for child in children.values():
        assert child.start_time is not None and child.end_time is not None
        assert traced.start_time <= child.start_time <= child.end_time <= traced.end_time, child.name
    assert sum(seconds(c) for c in children.values()) <= seconds(traced)
    assert seconds(children["queue"]) > 0.2  # the fixed wait for company

    # One batch computed both callers: its span has the size of both and links to both calls.
    (batch,) = [s for s in spans if s.name == "batch"]
    assert batch.attributes is not None
    assert batch.attributes["cnnserve.batch.size"] == 5 and batch.attributes["cnnserve.batch.requests"] == 2
    assert {link.context.span_id for link in batch.links} == {traced.context.span_id, other.context.span_id}
    # ... and sits in the trace of one of them (the first sampled call of the batch).
    assert batch.parent is not None and batch.parent.span_id in {
        traced.context.span_id,
        other.context.span_id,
    }
    compute = children["compute"]
    assert compute.attributes is not None and compute.attributes["cnnserve.batch.size"] == 5
    assert [link.context.span_id for link in compute.links] == [batch.context.span_id]

    # The access log names the caller's trace for the traced call.
    lines = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    by_trace = {r.access["trace_id"]: r.access for r in lines}  # type: ignore[attr-defined]
    assert by_trace[CALLER_TRACE]["batch_size"] == 5 and by_trace[CALLER_TRACE]["images"] == 3

    # A caller that sampled its trace out (flags 00) gets no spans recorded for its call.
    exporter.clear()
    with grpc.insecure_channel(server.address) as channel:  # type: ignore[attr-defined]
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = inference_pb2.ClassifyRequest(
            model=MODEL, images=[inference_pb2.Image(encoded=digits.png[0])]
        )
        stub.Classify(request, timeout=30, metadata=(("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"),))
    assert exporter.get_finished_spans() == ()


def test_the_batch_job_traces_itself_and_its_chunks_into_the_server(
    start_server: Callable[..., object], model_repository: Path, digits, tmp_path: Path
) -> None:
    server_tracing, server_spans = in_memory_tracing()
    server = start_server(model_repository, tracing=server_tracing)
    job_tracing, job_spans = in_memory_tracing()
    config = JobConfig(
        folder=digits.png_paths[0].parent,
        output=tmp_path / "out.csv",
        model=MODEL,
        server=server.address,  # type: ignore[attr-defined]
        batch_size=16,
        workers=2,
        progress="none",
        report=False,
    )
    summary = run_job(config, job_tracing)
    assert summary.classified == len(digits.png_paths) == 40

    spans = job_spans.get_finished_spans()
    (job,) = [s for s in spans if s.name == "classify-folder"]
    chunks = [s for s in spans if s.name == "chunk"]
    assert len(chunks) == 3  # 40 files in chunks of 16
    assert all(c.parent is not None and c.parent.span_id == job.context.span_id for c in chunks)
    assert sorted(c.attributes["cnnserve.job.files"] for c in chunks) == [8, 16, 16]  # type: ignore[index]
    assert job.attributes is not None and job.attributes["cnnserve.job.classified"] == 40

    # Every Classify the remote engine made is a server span in the job's trace, under its chunk.
    calls = [
        s for s in server_spans.get_finished_spans() if s.kind == SpanKind.SERVER and s.name == SPAN_NAME
    ]
    assert len(calls) == 3
    chunk_ids = {c.context.span_id for c in chunks}
    for call in calls:
        assert call.context.trace_id == job.context.trace_id
        assert call.parent is not None and call.parent.span_id in chunk_ids
