"""One call, observed: its server span, what the batcher measured for it, and its access-log line.

`CallObservation` is a call hook (core/calls.py), so every protocol's calls go through it: `begin` opens a
`CallRecord` when a call arrives and `end` closes it once answered. While the call runs, the record is the
context's `CURRENT_CALL`, so the data plane and the batcher, several awaits down and without knowing any
transport, can note when the call's images were decoded, how long it queued and which batch computed it.
Nothing of this exists unless tracing or the access log is on: the server then does not install the hook,
and the batcher finds None where a record would be (one contextvar read per request).

Whether a call is sampled is decided first, from its `traceparent` alone (sampling.py). With the access log
off, a call that is not sampled gets nothing more: no record, no span, no context, and the batcher finds
None as if tracing were off. A sampled call's spans are made after the fact, from the recorded monotonic
times, with explicit timestamps, so the batch loop does no span work while it batches. It gets children
`decode`, `queue`, `compute` (linked to its batch's span, with the batch size) and `response`; each batch
with a sampled call in it gets one `batch` span, a child of the first sampled call's span and linked to
every sampled call merged into it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from cnnserve.serving.core.calls import Call
from cnnserve.serving.observability.logs import AccessLog
from cnnserve.serving.observability.tracing import Tracing, trace_carrier

# gRPC codes that mean the server failed (OpenTelemetry's rule for server spans); others are the caller's.
SERVER_FAULT_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
MAX_ERROR_CHARS = 200  # of an error message in the access log and on a span
_RECORD = "_observation"  # where a call's record waits in Call.attributes between `begin` and `end`


@dataclass(eq=False, slots=True)
class BatchRecord:
    """One batch that computed a recorded call: its model, size and compute window (monotonic s)."""

    model: str
    images: int
    requests: int
    compute_start: float
    compute_end: float
    span_context: Any = None  # the batch span's, when one was recorded


@dataclass(eq=False, slots=True)
class BatchShare:
    """The part of a call that rode in one batch (a call bigger than max_batch_size rides in several)."""

    batch: BatchRecord
    enqueued: float
    started: float  # when its batch was taken from the queue
    decode_start: float | None = None  # decoded when its batch started (small requests)
    decode_end: float | None = None


@dataclass(eq=False, slots=True)
class CallRecord:
    """What is known of one call while it runs; monotonic seconds throughout."""

    method: str
    start: float
    observer: CallObservation
    span: Any = None  # the server span, when the call is sampled
    trace_id: int = 0  # the caller's trace when the call is not sampled (0: none)
    anchor_ns: int = 0  # wall-clock ns minus monotonic ns, taken at `begin`
    decode_start: float | None = None  # decoded before queueing (big requests)
    decode_end: float | None = None
    shares: list[BatchShare] = field(default_factory=list)

    def note_decode(self, start: float, end: float) -> None:
        self.decode_start, self.decode_end = start, end

    @property
    def queue_s(self) -> float | None:
        return max((s.started - s.enqueued for s in self.shares), default=None)

    @property
    def compute_s(self) -> float | None:
        if not self.shares:
            return None
        return sum(s.batch.compute_end - s.batch.compute_start for s in self.shares)

    @property
    def decode_s(self) -> float | None:
        spans = [(s.decode_start, s.decode_end) for s in self.shares]
        spans.append((self.decode_start, self.decode_end))
        seconds = [end - start for start, end in spans if start is not None and end is not None]
        return sum(seconds) if seconds else None

    @property
    def batch_size(self) -> int | None:
        return max((s.batch.images for s in self.shares), default=None)


CURRENT_CALL: ContextVar[CallRecord | None] = ContextVar("cnnserve_call", default=None)


def current_call() -> CallRecord | None:
    """The record of the call this code runs for, if its transport opened one."""
    return CURRENT_CALL.get()


def record_batch(batch: BatchRecord, shares: Sequence[tuple[CallRecord, BatchShare]]) -> None:
    """Called by the batcher once a batch computed: hand each recorded call its share, and trace the
    batch when one of its calls is sampled."""
    for call, share in shares:
        call.shares.append(share)
    sampled = next((call for call, _ in shares if call.span is not None and call.span.is_recording()), None)
    if sampled is None:
        return
    tracing = sampled.observer.tracing
    assert tracing is not None
    from opentelemetry import trace

    links = [trace.Link(call.span.get_span_context()) for call, _ in shares if call.span is not None]
    anchor = time.time_ns() - time.monotonic_ns()
    span = tracing.tracer.start_span(
        "batch",
        context=trace.set_span_in_context(sampled.span),
        links=links,
        start_time=_ns(batch.compute_start, anchor),
        attributes={
            "cnnserve.model": batch.model,
            "cnnserve.batch.size": batch.images,
            "cnnserve.batch.requests": batch.requests,
        },
    )
    span.end(end_time=_ns(batch.compute_end, anchor))
    batch.span_context = span.get_span_context()


def _ns(monotonic_s: float, anchor_ns: int) -> int:
    return int(monotonic_s * 1e9) + anchor_ns


class CallObservation:
    """The call hook that traces calls and writes the access log (whichever of the two is on).

    `begin` decides whether the call is sampled and, when it is or the access log is on, opens the call's
    record (CURRENT_CALL); a sampled call also gets its server span, continuing the caller's W3C trace
    context from the call's metadata or headers and made the active span, so every log line of the call
    carries its trace id. `end` closes both and writes the access-log line, whose `trace_id` is the sampled
    span's trace, else the caller's. It is the first hook, so its span and its latency cover every other
    hook's work.
    """

    def __init__(self, tracing: Tracing | None, access_log: AccessLog | None) -> None:
        self.tracing = tracing
        self.access_log = access_log

    def begin(self, call: Call) -> None:
        start = time.monotonic()
        tracing = self.tracing
        carrier = trace_carrier(call.metadata) if tracing is not None else {}
        decision = tracing.decide(carrier) if tracing is not None else None
        sampled = decision is not None and decision.sampled
        if not sampled and self.access_log is None:
            return  # neither a span nor an access-log line: nothing to record
        record = CallRecord(call.method, start, self)
        otel_token: object | None = None
        if tracing is not None and decision is not None and sampled:
            from opentelemetry import context, trace

            record.anchor_ns = time.time_ns() - time.monotonic_ns()
            parent = tracing.extract(carrier) if decision.continues else None
            http = "http" in call.protocol
            attributes: dict[str, Any] = {
                "rpc.system": "http" if http else "grpc",
                "rpc.service": call.protocol,
                "rpc.method": call.method,
                "network.peer.address": call.peer,
            }
            if call.model:
                attributes["cnnserve.model"] = call.model
            span = tracing.start_sampled_span(
                f"{call.protocol}/{call.method}",
                decision,
                parent,
                kind=trace.SpanKind.SERVER,
                attributes=attributes,
                start_time=_ns(record.start, record.anchor_ns),
            )
            record.span = span
            otel_token = context.attach(trace.set_span_in_context(span, parent))
        elif decision is not None:
            record.trace_id = decision.trace_id  # the caller's (or none), for the access log
        call.attributes[_RECORD] = (record, CURRENT_CALL.set(record), otel_token)

    def end(self, call: Call) -> None:
        finished = time.monotonic()
        opened = call.attributes.pop(_RECORD, None)
        if opened is None:
            return
        record, call_token, otel_token = opened
        CURRENT_CALL.reset(call_token)
        status = call.status.name if call.status is not None else "OK"
        http_status = None
        if "http" in call.protocol:
            http_status = call.status.http_status if call.status is not None else 200
        trace_id = f"{record.trace_id:032x}" if record.trace_id else ""
        if record.span is not None:
            from opentelemetry import context

            context.detach(otel_token)
            trace_id = f"{record.span.get_span_context().trace_id:032x}"
            if record.span.is_recording():
                self._finish_span(record, call, status, http_status, finished)
        timings = {
            "decode_ms": _ms(record.decode_s),
            "queue_ms": _ms(record.queue_s),
            "compute_ms": _ms(record.compute_s),
            "batch_size": record.batch_size,
        }
        call.attributes.update(timings)
        if self.access_log is not None:
            fields: dict[str, Any] = {
                "protocol": call.protocol,
                "method": call.method,
                "model": call.model,
                "version": call.version or None,
                "images": call.images,
                "status": status,
            }
            if http_status is not None:
                fields["http_status"] = http_status
            fields["latency_ms"] = _ms(finished - record.start)
            fields.update(timings)
            fields["peer"] = call.peer
            fields["client"] = call.client or None
            fields["trace_id"] = trace_id or None
            if call.message and call.status is not None:
                fields["error"] = call.message[:MAX_ERROR_CHARS]
            self.access_log.write(f"{call.method} {status}", fields)

    def _finish_span(
        self, record: CallRecord, call: Call, status: str, http_status: int | None, finished: float
    ) -> None:
        from opentelemetry import trace

        assert self.tracing is not None
        span = record.span
        span.set_attribute("rpc.response.status_code", status)
        if call.status is not None:
            span.set_attribute("rpc.grpc.status_code", call.status.grpc_code)
        if http_status is not None:
            span.set_attribute("http.response.status_code", http_status)
        if call.version:
            span.set_attribute("cnnserve.model.version", call.version)
        if call.images:
            span.set_attribute("cnnserve.images", call.images)
        if call.client:
            span.set_attribute("enduser.id", call.client)
        if status in SERVER_FAULT_CODES:
            span.set_status(trace.Status(trace.StatusCode.ERROR, call.message[:MAX_ERROR_CHARS]))
        tracer = self.tracing.tracer
        parent = trace.set_span_in_context(span)
        anchor = record.anchor_ns

        def child(name: str, start: float, end: float, **kwargs: Any) -> None:
            tracer.start_span(name, context=parent, start_time=_ns(start, anchor), **kwargs).end(
                end_time=_ns(end, anchor)
            )

        if record.decode_start is not None and record.decode_end is not None:
            child("decode", record.decode_start, record.decode_end)
        answered = record.start
        for share in record.shares:
            child("queue", share.enqueued, share.started)
            if share.decode_start is not None and share.decode_end is not None:
                child("decode", share.decode_start, share.decode_end)
            batch = share.batch
            links = [trace.Link(batch.span_context)] if batch.span_context is not None else None
            attributes = {"cnnserve.batch.size": batch.images, "cnnserve.batch.requests": batch.requests}
            child("compute", batch.compute_start, batch.compute_end, links=links, attributes=attributes)
            answered = max(answered, batch.compute_end)
        if record.shares:
            child("response", answered, finished)
        span.end(end_time=_ns(finished, anchor))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)
