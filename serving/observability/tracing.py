"""OpenTelemetry tracing, configured by the standard OTEL_* environment variables; off unless asked for.

    OTEL_TRACES_EXPORTER        otlp, console or none (a comma-separated list is allowed); default none
    OTEL_EXPORTER_OTLP_ENDPOINT where OTLP goes (read by the exporter; default http://localhost:4317)
    OTEL_EXPORTER_OTLP_PROTOCOL grpc (default) or http/protobuf (also ..._TRACES_PROTOCOL)
    OTEL_SERVICE_NAME           the service name on every span (default cnnserve, or the command's own)
    OTEL_RESOURCE_ATTRIBUTES    more resource attributes (key=value,...)
    OTEL_TRACES_SAMPLER         always_on, always_off, traceidratio, parentbased_always_on (default),
                                parentbased_always_off, parentbased_traceidratio
    OTEL_TRACES_SAMPLER_ARG     the ratio of the *traceidratio samplers (default 1.0)
    OTEL_SDK_DISABLED           true: no tracing whatever the rest says

The default exporter is `none` rather than the specification's `otlp`: a server that nobody asked to trace
must not try to reach a collector, nor pay for spans. With tracing off nothing of OpenTelemetry is even
imported (this module imports only the standard library at import time), so it costs nothing; callers
hold `Tracing | None` and check for None. Each `Tracing` owns its TracerProvider (never the global one),
so several servers in one process (tests) trace independently; the context they continue and propagate
is OpenTelemetry's, carried in contextvars. Propagation is W3C trace context (`traceparent`,
`tracestate`), in gRPC metadata and HTTP headers alike.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnserve.serving.errors import SettingsError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from cnnserve.serving.observability.sampling import Decision, DrawnTraceIds, SamplingPolicy

LOG = logging.getLogger(__name__)

EXPORTERS = ("otlp", "console", "none")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_SERVICE_NAME = "cnnserve"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
OTLP_EXTRA_HINT = "pip install 'cnnserve[otlp]' (the serving image has it)"


class TracingConfigError(SettingsError):
    """An OTEL_* variable has a value cnnserve cannot use, or asks for an exporter that is not installed;
    the message names the variable."""


@dataclass(frozen=True)
class TracingSettings:
    """What the OTEL_* variables ask for; `exporters` empty means tracing is off."""

    exporters: tuple[str, ...] = ()
    sampler: str = "parentbased_always_on"
    ratio: float = 1.0
    protocol: str = "grpc"
    service_name: str = DEFAULT_SERVICE_NAME

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def tracing_settings(
    environ: Mapping[str, str] | None = None, default_service: str = DEFAULT_SERVICE_NAME
) -> TracingSettings:
    """The tracing settings the OTEL_* variables give (see the module doc); TracingConfigError names a
    variable whose value is not one of those listed there."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TracingSettings()
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={environ['OTEL_TRACES_EXPORTER']!r}: unknown exporter "
            f"{unknown[0]!r}; use {', '.join(EXPORTERS)}"
        )
    exporters = tuple(dict.fromkeys(n for n in names if n != "none"))
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if sampler not in SAMPLERS:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER={sampler!r} is not supported; use {', '.join(SAMPLERS)}"
        )
    ratio = 1.0
    argument = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if sampler.endswith("traceidratio") and argument:
        try:
            ratio = float(argument)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise TracingConfigError(
                f"OTEL_TRACES_SAMPLER_ARG={argument!r} must be a ratio between 0 and 1"
            ) from None
    found = _first(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = found[1] if found else "grpc"
    if "otlp" in exporters and protocol not in PROTOCOLS:
        assert found is not None
        raise TracingConfigError(f"{found[0]}={protocol!r} is not supported; use {' or '.join(PROTOCOLS)}")
    service = environ.get("OTEL_SERVICE_NAME", "").strip() or default_service
    return TracingSettings(exporters, sampler, ratio, protocol, service)


_OTLP_MODULES = {
    "grpc": (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry-exporter-otlp-proto-grpc",
    ),
    "http/protobuf": (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry-exporter-otlp-proto-http",
    ),
}


def require_exporters(settings: TracingSettings) -> None:
    """Fail at start-up, not in a worker later, when OTLP is asked for and its exporter is not installed."""
    if "otlp" not in settings.exporters:
        return
    module, package = _OTLP_MODULES[settings.protocol]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER=otlp over {settings.protocol} needs {package}, which is not installed: "
            f"{OTLP_EXTRA_HINT}"
        )


def _sampler(settings: TracingSettings) -> Any:
    from opentelemetry.sdk.trace import sampling

    samplers = {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(settings.ratio),
        "parentbased_always_on": lambda: sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": lambda: sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: sampling.ParentBasedTraceIdRatio(settings.ratio),
    }
    return samplers[settings.sampler]()


def _otlp_exporter(protocol: str) -> SpanExporter:
    module, package = _OTLP_MODULES[protocol]
    try:
        exporter = importlib.import_module(module).OTLPSpanExporter
    except ImportError as error:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER=otlp over {protocol} needs {package}, which is not installed "
            f"({error.name}): {OTLP_EXTRA_HINT}"
        ) from None
    return exporter()


def _exporter(name: str, protocol: str) -> SpanExporter:
    if name == "otlp":
        return _otlp_exporter(protocol)
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    # stderr: stdout belongs to the commands' own output (`classify --json` prints results there).
    return ConsoleSpanExporter(out=sys.stderr)


class Tracing:
    """A tracer over a TracerProvider of its own, W3C trace-context propagation, and the sampler's
    decision for a call made before any span exists (sampling.py)."""

    def __init__(
        self,
        provider: TracerProvider,
        sampling: SamplingPolicy,
        ids: DrawnTraceIds,
        instrumentation: str = "cnnserve",
    ) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(instrumentation)
        self.propagator = TraceContextTextMapPropagator()
        self.sampling = sampling
        self.ids = ids

    def extract(self, carrier: Mapping[str, str]) -> Context | None:
        """The caller's context from `traceparent`/`tracestate` (lowercase keys), None without one."""
        if TRACEPARENT not in carrier:
            return None
        return self.propagator.extract(carrier)

    def decide(self, carrier: Mapping[str, str]) -> Decision:
        """Whether a call whose trace headers are `carrier` (`trace_carrier`) is sampled."""
        traceparent = carrier.get(TRACEPARENT)
        return self.sampling.decide(traceparent if isinstance(traceparent, str) else None)

    def start_sampled_span(
        self, name: str, decision: Decision, parent: Context | None, **options: Any
    ) -> Span:
        """A span decided sampled up front: the caller's child, or the root of the new trace whose id the
        decision drew (so the SDK's sampler agrees). `options` are `Tracer.start_span`'s."""
        self.ids.preset(0 if decision.continues else decision.trace_id)
        try:
            return self.tracer.start_span(name, context=parent, **options)
        finally:
            self.ids.preset(0)

    def flush(self, timeout_s: float = 5.0) -> bool:
        return bool(self.provider.force_flush(int(timeout_s * 1000)))

    def shutdown(self) -> None:
        """Export what is still buffered, then stop the exporters."""
        self.provider.shutdown()


def start_tracing(
    settings: TracingSettings,
    exporter: SpanExporter | None = None,
    synchronous: bool = False,
    draw: Callable[[int], int] = random.getrandbits,
) -> Tracing | None:
    """A Tracing per `settings` (None when they leave tracing off and no `exporter` is given).

    `exporter` replaces the configured ones (tests pass an in-memory one); `synchronous` exports every
    span as it ends instead of in background batches (so a test sees a call's spans when it returns);
    `draw(bits)` is where sampling decisions take their random bits (tests pass a seeded generator).
    """
    if not settings.enabled and exporter is None:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    exporters = (
        [exporter] if exporter is not None else [_exporter(n, settings.protocol) for n in settings.exporters]
    )
    from cnnserve.serving.observability.sampling import DrawnTraceIds, SamplingPolicy

    ids = DrawnTraceIds()
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; OTEL_SERVICE_NAME is already in settings.
    provider = TracerProvider(
        sampler=_sampler(settings),
        resource=Resource.create({"service.name": settings.service_name}),
        id_generator=ids,
    )
    for each in exporters:
        provider.add_span_processor(SimpleSpanProcessor(each) if synchronous else BatchSpanProcessor(each))
    LOG.info(
        "tracing on: %s exporter(s), sampler %s%s, service %s",
        ", ".join(settings.exporters) if exporter is None else type(exporter).__name__,
        settings.sampler,
        f" ({settings.ratio:g})" if settings.sampler.endswith("traceidratio") else "",
        settings.service_name,
    )
    return Tracing(provider, SamplingPolicy.of(settings, draw), ids)


def trace_carrier(pairs: Iterable[tuple[str, Any]] | None) -> dict[str, Any]:
    """The W3C trace headers among gRPC metadata or HTTP header (key, value) pairs; the first of each."""
    carrier: dict[str, Any] = {}
    for key, value in pairs or ():
        if key in (TRACEPARENT, TRACESTATE):
            carrier.setdefault(key, value)
    return carrier


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """`traceparent` (and `tracestate`) of the active span, for an outgoing call's metadata or headers;
    empty when no span is active. Free when tracing never started in this process."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return ()
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return ()
    header = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    state = context.trace_state.to_header() if context.trace_state else ""
    return ((TRACEPARENT, header), (TRACESTATE, state)) if state else ((TRACEPARENT, header),)
