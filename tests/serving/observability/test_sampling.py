"""Sampling decided up front: the same answers as OpenTelemetry's samplers, the ratio kept exactly, and a
server that gives a call it does not sample no span, no record and no context."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from cnnserve.protos import inference_pb2, inference_pb2_grpc
from cnnserve.serving.core.calls import Call
from cnnserve.serving.observability.calls import current_call
from cnnserve.serving.observability.logs import ACCESS_LOGGER
from cnnserve.serving.observability.sampling import (
    NOT_SAMPLED,
    DrawnTraceIds,
    SamplingPolicy,
    parse_traceparent,
    ratio_bound,
)
from cnnserve.serving.observability.tracing import SAMPLERS, TracingSettings, _sampler, start_tracing

MODEL = "mnist_cnn"
SPAN_NAME = "cnnserve.v1/Classify"
SEED = 11


def traceparent(trace_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-00f067aa0ba902b7-{'01' if sampled else '00'}"


def sdk_decides(sampler: str, ratio: float, header: str | None, trace_id: int) -> bool:
    """What OpenTelemetry's own sampler decides for a span under the caller's `header` (or a new trace
    whose id is `trace_id`)."""
    parent = TraceContextTextMapPropagator().extract({"traceparent": header}) if header else None
    if parent is not None and trace.get_current_span(parent).get_span_context().is_valid:
        trace_id = trace.get_current_span(parent).get_span_context().trace_id
    result = _sampler(TracingSettings(sampler=sampler, ratio=ratio)).should_sample(parent, trace_id, "call")
    return bool(result.decision.is_sampled())


def test_traceparent_is_read_as_the_w3c_propagator_reads_it() -> None:
    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert parse_traceparent(traceparent(trace_id, True)) == (trace_id, True)
    assert parse_traceparent(traceparent(trace_id, False)) == (trace_id, False)
    assert parse_traceparent(f"01-{trace_id:032x}-00f067aa0ba902b7-03-future") == (trace_id, True)
    for bad in [
        "",
        "garbage",
        f"ff-{trace_id:032x}-00f067aa0ba902b7-01",  # version ff is invalid
        f"00-{trace_id:032x}-00f067aa0ba902b7-01-extra",  # version 00 has nothing after the flags
        f"00-{0:032x}-00f067aa0ba902b7-01",  # all-zero trace id
        f"00-{trace_id:032x}-{0:016x}-01",  # all-zero parent id
        f"00-{trace_id:032X}-00f067aa0ba902b7-01",  # upper case
        f"00-{trace_id:032x}-00f067aa0ba902b7-01" + " " * 600,  # longer than 512 characters
    ]:
        assert parse_traceparent(bad) is None, bad
        context = TraceContextTextMapPropagator().extract({"traceparent": bad})
        assert not trace.get_current_span(context).get_span_context().is_valid, bad


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_decision_is_the_one_opentelemetrys_sampler_makes(sampler: str) -> None:
    rng = random.Random(sampler)
    ratio = 0.3
    policy = SamplingPolicy(sampler, ratio, rng.getrandbits)
    for _ in range(300):
        caller = rng.getrandbits(128) or 1
        for header in (traceparent(caller, True), traceparent(caller, False), "not-a-traceparent", None):
            decision = policy.decide(header)
            # A sampled new trace's id is the drawn one (given to the SDK); an unsampled one has none.
            trace_id = decision.trace_id or rng.getrandbits(128) or 1
            if decision.sampled or decision.continues or not policy.by_ratio:
                assert decision.sampled == sdk_decides(sampler, ratio, header, trace_id), (header, decision)
            if decision.continues:
                assert decision.trace_id == caller


def test_a_sampled_caller_is_always_continued_and_an_unsampled_one_never_by_the_parent_based_samplers() -> (
    None
):
    caller = 0x0AF7651916CD43DD8448EB211C80319C
    for sampler in ("parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"):
        for ratio in (0.0, 0.5, 1.0):
            policy = SamplingPolicy(sampler, ratio)
            for _ in range(50):
                assert policy.decide(traceparent(caller, True)).sampled
                assert not policy.decide(traceparent(caller, False)).sampled
            assert policy.decide(traceparent(caller, False)).trace_id == caller  # for the access log
    # The samplers that are not parent-based decide alone, whatever the caller's flag says.
    assert SamplingPolicy("always_on").decide(traceparent(caller, False)).sampled
    assert not SamplingPolicy("always_off").decide(traceparent(caller, True)).sampled
    assert SamplingPolicy("always_on").decide(None).sampled
    assert SamplingPolicy("parentbased_always_on").decide(None).sampled
    assert SamplingPolicy("parentbased_always_off").decide(None) is NOT_SAMPLED
    assert SamplingPolicy("always_off").decide(None) is NOT_SAMPLED
    # traceidratio applies the ratio to the caller's trace id, the same id deciding the same way.
    low = SamplingPolicy("traceidratio", 0.5)
    assert low.decide(traceparent(1 << 64 | 5, False)).sampled  # low 64 bits far below 2^63
    assert not low.decide(traceparent((1 << 64) - 5, True)).sampled


@pytest.mark.parametrize(
    ("sampler", "ratio", "draws"),
    [("parentbased_traceidratio", 0.01, 200_000), ("traceidratio", 0.25, 40_000)],
)
def test_new_traces_are_sampled_at_the_ratio_with_ids_the_sdk_samples_too(
    sampler: str, ratio: float, draws: int
) -> None:
    policy = SamplingPolicy(sampler, ratio, random.Random(2026).getrandbits)
    decisions = [policy.decide(None) for _ in range(draws)]
    sampled = [d for d in decisions if d.sampled]
    expected = draws * ratio
    assert abs(len(sampled) - expected) < 5 * (expected * (1 - ratio)) ** 0.5  # 5 standard deviations
    # Each sampled trace's drawn id is one the SDK's ratio sampler samples: it stays exactly the ratio.
    sdk = TraceIdRatioBased(ratio)
    assert sdk.bound == ratio_bound(ratio)
    assert all(sdk.should_sample(None, d.trace_id, "call").decision.is_sampled() for d in sampled)
    assert len({d.trace_id for d in sampled}) == len(sampled) and all(d.trace_id for d in sampled)
    assert all(d is NOT_SAMPLED for d in decisions if not d.sampled)


def test_the_drawn_id_goes_to_the_next_new_trace_only() -> None:
    ids = DrawnTraceIds()
    ids.preset(12345)
    assert ids.generate_trace_id() == 12345
    assert ids.generate_trace_id() != 12345  # used once; then random as usual
    ids.preset(0)
    assert ids.generate_trace_id() not in (0, 12345)


class CallProbe:
    """A call hook after the tracing one: notes whether the call it sees has a record open."""

    def __init__(self, recorded: list[bool]) -> None:
        self.recorded = recorded

    def begin(self, call: Call) -> None:
        self.recorded.append(current_call() is not None)

    def end(self, call: Call) -> None:
        pass


def test_a_server_traces_exactly_the_calls_it_samples_and_records_nothing_for_the_others(
    start_server: Callable[..., object],
    model_repository: Path,
    digits,
) -> None:
    ratio = 0.25
    exporter = InMemorySpanExporter()
    tracing = start_tracing(
        TracingSettings(sampler="parentbased_traceidratio", ratio=ratio),
        exporter=exporter,
        synchronous=True,
        draw=random.Random(SEED).getrandbits,
    )
    assert tracing is not None
    server = start_server(model_repository, tracing=tracing)
    recorded: list[bool] = []  # whether each call had a record open while the other hooks ran
    server.server.hooks.add(CallProbe(recorded))  # type: ignore[attr-defined]
    request = inference_pb2.ClassifyRequest(model=MODEL, images=[inference_pb2.Image(encoded=digits.png[0])])
    calls = 40
    with grpc.insecure_channel(server.address) as channel:  # type: ignore[attr-defined]
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        for _ in range(calls):
            stub.Classify(request, timeout=30)
        # The caller decides for its trace, whatever the ratio.
        caller = 0x4BF92F3577B34DA6A3CE929D0E0E4736
        stub.Classify(request, timeout=30, metadata=(("traceparent", traceparent(caller, True)),))
        stub.Classify(request, timeout=30, metadata=(("traceparent", traceparent(caller + 1, False)),))

    # The same seed replayed: the decisions the server made.
    replay = SamplingPolicy("parentbased_traceidratio", ratio, random.Random(SEED).getrandbits)
    decisions = [replay.decide(None) for _ in range(calls)]
    expected = [d.trace_id for d in decisions if d.sampled]
    assert 0 < len(expected) < calls
    # A call that is not sampled had no record: the batcher and the data plane found none.
    assert recorded == [*(d.sampled for d in decisions), True, False]
    servers = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert all(s.name == SPAN_NAME for s in servers)
    # Exactly the calls the seeded draw sampled, each in the trace whose id it drew, then the caller's.
    assert [s.context.trace_id for s in servers] == [*expected, caller]
    # Every exported span belongs to a sampled call: an unsampled call's batch left no span behind.
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {*expected, caller}
    batches = [s for s in exporter.get_finished_spans() if s.name == "batch"]
    assert len(batches) == len(expected) + 1 and all(len(b.links) == 1 for b in batches)


def test_an_unsampled_call_still_gets_its_access_line_with_the_callers_trace(
    start_server: Callable[..., object], model_repository: Path, digits, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = InMemorySpanExporter()
    tracing = start_tracing(
        TracingSettings(sampler="parentbased_traceidratio", ratio=0.0), exporter=exporter, synchronous=True
    )
    assert tracing is not None
    server = start_server(model_repository, tracing=tracing, access_log=True)
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    request = inference_pb2.ClassifyRequest(model=MODEL, images=[inference_pb2.Image(encoded=digits.png[0])])
    caller = 0x0AF7651916CD43DD8448EB211C80319C
    with grpc.insecure_channel(server.address) as channel:  # type: ignore[attr-defined]
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        stub.Classify(request, timeout=30)
        stub.Classify(request, timeout=30, metadata=(("traceparent", traceparent(caller, False)),))
    assert exporter.get_finished_spans() == ()
    lines = [r.access for r in caplog.records if r.name == ACCESS_LOGGER]  # type: ignore[attr-defined]
    assert [line["trace_id"] for line in lines] == [None, f"{caller:032x}"]
    for line in lines:  # the batcher's timings are there without a span
        assert line["status"] == "OK" and line["batch_size"] == 1 and line["compute_ms"] > 0
