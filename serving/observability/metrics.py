"""Prometheus metrics an operator can graph: calls, failures, latency, queue and compute time, batches,
models, and the process (memory, file descriptors, GPUs). Every name cnnserve exports is defined here, once
(the README's metrics table lists them; the Grafana dashboard and alert rules read them).

Each server owns its `ServingMetrics` (its own registry, no global state), so several servers can live in
one process (tests). With several worker processes, prometheus_client's multiprocess mode is used: the
supervisor sets PROMETHEUS_MULTIPROC_DIR before starting the workers, every worker's values land in files
there, and the supervisor's `/metrics` sums them (`multiprocess_registry`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cnnserve.serving.core.calls import Call
from cnnserve.serving.observability.resources import GpuSample, ProcessSample

# Request, queue and compute times: buckets that resolve 0.1 ms to 100 ms (1-2-5 steps), then up to 10 s.
LATENCY_BUCKETS = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
QUEUE_BUCKETS = LATENCY_BUCKETS
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# How often a server reads its process's memory, file descriptors, queue depths and GPUs into gauges.
RESOURCE_INTERVAL_S = 2.0
# Model events (cnnserve_model_events_total's `event` label).
LOADED = "load"
LOAD_FAILED = "load_failure"
UNLOADED = "unload"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ModelMetrics:
    """The batch observer of one model version: bound label children, so the hot path does no lookups."""

    def __init__(self, metrics: ServingMetrics, model: str, version: int) -> None:
        labels = (model, str(version))
        self._batch_size = metrics.batch_size.labels(*labels)
        self._queue = metrics.queue_seconds.labels(*labels)
        self._compute = metrics.compute_seconds.labels(*labels)
        self._dropped = metrics.dropped.labels(*labels)

    def observe_batch(self, size: int, queue_seconds: Sequence[float], compute_seconds: float) -> None:
        self._batch_size.observe(size)
        self._compute.observe(compute_seconds)
        for seconds in queue_seconds:
            self._queue.observe(seconds)

    def observe_dropped(self, count: int) -> None:
        self._dropped.inc(count)


class ServingMetrics:
    """All of a server's metrics, registered in `registry`: every metric name cnnserve exports is here.

    `version` is the model version that answered ("" when none did: an unknown model, a bad request
    refused before a version was chosen). With several workers, the process gauges carry a `pid` label.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        call = ["model", "version", "rpc"]
        model_version = ["model", "version"]
        # -- calls (every RPC of every protocol, counted when answered) ----------------------------
        self.requests = Counter(
            "cnnserve_requests", "RPCs answered, by model, version and RPC", call, registry=r
        )
        self.failures = Counter(
            "cnnserve_request_failures",
            "RPCs answered with an error, by model, version, RPC and status code (gRPC code name)",
            [*call, "code"],
            registry=r,
        )
        self.refused = Counter(
            "cnnserve_refused_calls",
            "Calls refused before any work (UNAUTHENTICATED, PERMISSION_DENIED, or RESOURCE_EXHAUSTED for "
            "a client over its in-flight cap), by client name, method and status code",
            ["client", "method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "cnnserve_request_latency_seconds",
            "Time from receiving an RPC to answering it",
            call,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            "cnnserve_images", "Images answered (rate() of it is images/s)", call, registry=r
        )
        self.inflight = Gauge(
            "cnnserve_inflight_requests",
            "RPCs received and not answered yet",
            ["model", "rpc"],
            registry=r,
            multiprocess_mode="livesum",
        )
        # -- batching (per model version) ----------------------------------------------------------
        self.queue_seconds = Histogram(
            "cnnserve_queue_seconds",
            "Time a request waited in the batch queue before its batch started",
            model_version,
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "cnnserve_compute_seconds",
            "ONNX Runtime time per batch",
            model_version,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "cnnserve_batch_size",
            "Images per ONNX Runtime call",
            model_version,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.dropped = Counter(
            "cnnserve_dropped_requests",
            "Requests dropped from the queue unanswered (deadline passed or caller cancelled)",
            model_version,
            registry=r,
        )
        self.queue_images = Gauge(
            "cnnserve_queue_images",
            "Images waiting in (or computing from) the batch queue, sampled every few seconds",
            model_version,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_capacity = Gauge(
            "cnnserve_queue_capacity_images",
            "The batch queue's bound in images (more is refused with RESOURCE_EXHAUSTED)",
            model_version,
            registry=r,
            multiprocess_mode="livesum",
        )
        # -- models --------------------------------------------------------------------------------
        self.model_versions = Gauge(
            "cnnserve_model_versions_available",
            "Versions of a model that are loaded and serving",
            ["model"],
            registry=r,
            multiprocess_mode="max",
        )
        self.model_events = Counter(
            "cnnserve_model_events",
            "Model versions loaded, failed to load, and unloaded (event: load, load_failure, unload)",
            [*model_version, "event"],
            registry=r,
        )
        # -- the process ---------------------------------------------------------------------------
        self.resident_memory = Gauge(
            "cnnserve_process_resident_memory_bytes",
            "Resident memory of the server process",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.open_fds = Gauge(
            "cnnserve_process_open_fds",
            "Open file descriptors of the server process",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.start_time = Gauge(
            "cnnserve_process_start_time_seconds",
            "When the server process started (seconds since the epoch); a worker restart shows as a change",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.gpu_memory_used = Gauge(
            "cnnserve_gpu_memory_used_bytes",
            "GPU memory in use on a device a CUDA session runs on (all processes; needs nvidia-ml-py)",
            ["gpu"],
            registry=r,
            multiprocess_mode="max",
        )
        self.gpu_memory_total = Gauge(
            "cnnserve_gpu_memory_total_bytes",
            "GPU memory of a device a CUDA session runs on (needs nvidia-ml-py)",
            ["gpu"],
            registry=r,
            multiprocess_mode="max",
        )
        self.gpu_utilization = Gauge(
            "cnnserve_gpu_utilization_ratio",
            "Share of the last sample period a kernel ran on the device (0-1; needs nvidia-ml-py)",
            ["gpu"],
            registry=r,
            multiprocess_mode="max",
        )

    def for_model(self, model: str, version: int) -> ModelMetrics:
        return ModelMetrics(self, model, version)

    def model_event(self, model: str, version: int, event: str) -> None:
        self.model_events.labels(model, str(version), event).inc()

    def observe_process(self, sample: ProcessSample) -> None:
        if sample.resident_bytes is not None:
            self.resident_memory.set(sample.resident_bytes)
        if sample.open_fds is not None:
            self.open_fds.set(sample.open_fds)

    def observe_gpus(self, samples: Sequence[GpuSample]) -> None:
        for gpu in samples:
            self.gpu_memory_used.labels(gpu.index).set(gpu.memory_used_bytes)
            self.gpu_memory_total.labels(gpu.index).set(gpu.memory_total_bytes)
            self.gpu_utilization.labels(gpu.index).set(gpu.utilization)

    def observe_queue(self, model: str, version: int, images: int, capacity: int) -> None:
        self.queue_images.labels(model, str(version)).set(images)
        self.queue_capacity.labels(model, str(version)).set(capacity)

    def forget_version(self, model: str, version: int) -> None:
        """An unloaded version's queue gauges go (its counters stay, as Prometheus expects); with several
        workers, where prometheus_client cannot remove a series, they drop to 0."""
        for gauge in (self.queue_images, self.queue_capacity):
            if multiprocess_dir() is not None:
                gauge.labels(model, str(version)).set(0)
                continue
            with contextlib.suppress(KeyError):
                gauge.remove(model, str(version))


def multiprocess_registry(path: str | Path) -> CollectorRegistry:
    """A registry that sums the values every worker process wrote under `path`."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))
    return registry


# The model label of a call naming a model that is not in the repository: any name a client sends would
# otherwise become a label value (unbounded cardinality).
OTHER_MODEL = "_other"


class CallMetrics:
    """The call hook that counts every call: in flight, answered, failures by status code, latency, images.

    Label children are bound once per (model, version, method), so the hot path does no label lookups.
    """

    def __init__(self, metrics: ServingMetrics, known_model: Callable[[str], bool]) -> None:
        self.metrics = metrics
        self.known_model = known_model
        self._children: dict[tuple[str, int, str], tuple[Any, Any, Any]] = {}
        self._inflight: dict[tuple[str, str], Any] = {}

    def _label(self, name: str) -> str:
        if not name or self.known_model(name):
            return name
        return OTHER_MODEL

    def _bound(self, model: str, version: int, method: str) -> tuple[Any, Any, Any]:
        children = self._children.get((model, version, method))
        if children is None:
            m = self.metrics
            labels = (model, str(version) if version else "", method)
            children = (m.requests.labels(*labels), m.latency.labels(*labels), m.images.labels(*labels))
            self._children[(model, version, method)] = children
        return children

    def _inflight_gauge(self, model: str, method: str) -> Any:
        gauge = self._inflight.get((model, method))
        if gauge is None:
            gauge = self._inflight[(model, method)] = self.metrics.inflight.labels(model, method)
        return gauge

    def begin(self, call: Call) -> None:
        self._inflight_gauge(self._label(call.model), call.method).inc()

    def end(self, call: Call) -> None:
        model = self._label(call.model)
        self._inflight_gauge(model, call.method).dec()
        requests, latency, images = self._bound(model, call.version, call.method)
        requests.inc()
        latency.observe(time.perf_counter() - call.start)
        if call.status is not None:
            version = str(call.version) if call.version else ""
            self.metrics.failures.labels(model, version, call.method, call.status.name).inc()
        elif call.images:
            images.inc(call.images)
