"""Which calls are traced, decided from the caller's `traceparent` before any span exists.

Asking the SDK's sampler means starting a span for every call (its attributes, ids and context) only to
drop 99 of 100 at a ratio of 0.01, which costs a traced server a tenth of its throughput on small calls.
`SamplingPolicy.decide` gives the answer the configured sampler would give, from the `traceparent` value
alone, so a call that is not sampled never gets a span:

- a caller's trace (a valid `traceparent`): the `parentbased_*` samplers follow its sampled flag;
  `always_on` and `always_off` decide alone; `traceidratio` applies the ratio to the caller's trace id;
- a new trace (no `traceparent`, or one that is not valid W3C trace context): `always_on` and
  `parentbased_always_on` sample, the `*always_off` samplers do not, and the `*traceidratio` samplers draw
  the new trace's id here and apply the ratio to it.

The ratio rule is the SDK's `TraceIdRatioBased`: the trace id's low 64 bits below ratio x 2^64. A sampled
new trace's span is started with the drawn id (`DrawnTraceIds`), so the SDK's sampler, which still decides
every span, agrees; the share of traces sampled is exactly the ratio, and another service sampling the
same trace at the same ratio decides alike. Imported only when tracing starts.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from cnnserve.serving.observability.tracing import TracingSettings

# W3C trace context, read as OpenTelemetry's propagator reads it: version-traceid-parentid-flags in
# lowercase hex, at most 512 characters; version ff is invalid, version 00 has nothing after the flags (a
# later version may add fields), all-zero ids are invalid.
TRACEPARENT_RE = re.compile(
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$"
)
TRACEPARENT_MAX_CHARS = 512
SAMPLED_FLAG = 0x01
LOW_64_BITS = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a call is sampled, and the trace it belongs to: the caller's (`continues`), or for a
    sampled new trace the id drawn for it; 0 when neither."""

    sampled: bool
    trace_id: int = 0
    continues: bool = False


NOT_SAMPLED = Decision(False)  # a new trace that is not sampled: the common case at a low ratio


def parse_traceparent(value: str) -> tuple[int, bool] | None:
    """(trace id, sampled flag) of a valid W3C `traceparent` value, None for anything else."""
    match = TRACEPARENT_RE.match(value) if len(value) <= TRACEPARENT_MAX_CHARS else None
    if match is None:
        return None
    version, trace_hex, span_hex, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_hex == "0" * 32 or span_hex == "0" * 16:
        return None
    return int(trace_hex, 16), bool(int(flags, 16) & SAMPLED_FLAG)


def ratio_bound(ratio: float) -> int:
    """The SDK's TraceIdRatioBased bound: a trace is sampled when its id's low 64 bits are below it."""
    return round(ratio * (LOW_64_BITS + 1))


class SamplingPolicy:
    """The configured sampler's decision for a call, made up front (see the module doc).

    `draw(bits)` gives random bits for a new trace's id; the default is the `random` module's generator, the
    one the SDK draws ids from (reseeded in each forked process). Tests pass a seeded one."""

    def __init__(
        self, sampler: str, ratio: float = 1.0, draw: Callable[[int], int] = random.getrandbits
    ) -> None:
        self.sampler = sampler
        self.parent_based = sampler.startswith("parentbased_")
        root = sampler.removeprefix("parentbased_")
        # The root sampler as a bound on the id's low 64 bits: everything, nothing, or the ratio's share.
        self.bound = {"always_on": LOW_64_BITS + 1, "always_off": 0}.get(root, ratio_bound(ratio))
        self.by_ratio = root == "traceidratio"
        self.draw = draw

    @classmethod
    def of(cls, settings: TracingSettings, draw: Callable[[int], int] = random.getrandbits) -> SamplingPolicy:
        return cls(settings.sampler, settings.ratio, draw)

    def decide(self, traceparent: str | None) -> Decision:
        parent = parse_traceparent(traceparent) if traceparent is not None else None
        if parent is not None:
            trace_id, parent_sampled = parent
            sampled = parent_sampled if self.parent_based else (trace_id & LOW_64_BITS) < self.bound
            return Decision(sampled, trace_id, continues=True)
        if not self.by_ratio:
            return Decision(True) if self.bound else NOT_SAMPLED
        low = self.draw(64)
        if low >= self.bound:
            return NOT_SAMPLED
        high = self.draw(64)
        while not high and not low:  # the all-zero id is invalid
            high = self.draw(64)
        return Decision(True, high << 64 | low)


class DrawnTraceIds(RandomIdGenerator):
    """The SDK's random ids, except that a new trace sampled up front gets the id its decision drew."""

    def __init__(self) -> None:
        self._next = threading.local()

    def preset(self, trace_id: int) -> None:
        """The trace id of the next new trace started in this thread (0: draw one as usual)."""
        self._next.trace_id = trace_id

    def generate_trace_id(self) -> int:
        trace_id = getattr(self._next, "trace_id", 0)
        if trace_id:
            self._next.trace_id = 0
            return int(trace_id)
        return super().generate_trace_id()
