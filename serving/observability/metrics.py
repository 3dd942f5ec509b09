"""Prometheus metrics an operator can graph: requests, failures, latency, queue and compute time, batches.

Each server owns its `ServingMetrics` (its own registry, no global state), so several servers can live in
one process (tests). With several worker processes, prometheus_client's multiprocess mode is used: the
supervisor sets PROMETHEUS_MULTIPROC_DIR before starting the workers, every worker's values land in files
there, and the supervisor's `/metrics` sums them (`multiprocess_registry`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cnnserve.serving.core.calls import Call

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
QUEUE_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ModelMetrics:
    """The batch observer of one model: bound label children, so the hot path does no label lookups."""

    def __init__(self, metrics: ServingMetrics, model: str) -> None:
        self._batch_size = metrics.batch_size.labels(model)
        self._queue = metrics.queue_seconds.labels(model)
        self._compute = metrics.compute_seconds.labels(model)
        self._dropped = metrics.dropped.labels(model)

    def observe_batch(self, size: int, queue_seconds: Sequence[float], compute_seconds: float) -> None:
        self._batch_size.observe(size)
        self._compute.observe(compute_seconds)
        for seconds in queue_seconds:
            self._queue.observe(seconds)

    def observe_dropped(self, count: int) -> None:
        self._dropped.inc(count)


class ServingMetrics:
    """All of a server's metrics, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cnnserve_requests", "RPCs received, by model and RPC", ["model", "rpc"], registry=r
        )
        self.failures = Counter(
            "cnnserve_request_failures",
            "RPCs answered with an error, by model, RPC and gRPC status code",
            ["model", "rpc", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "cnnserve_request_latency_seconds",
            "Time from receiving an RPC to answering it",
            ["model", "rpc"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            "cnnserve_images", "Images answered (rate() of it is images/s)", ["model", "rpc"], registry=r
        )
        self.queue_seconds = Histogram(
            "cnnserve_queue_seconds",
            "Time a request waited in the batch queue before its batch started",
            ["model"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "cnnserve_compute_seconds",
            "ONNX Runtime time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "cnnserve_batch_size",
            "Images per ONNX Runtime call",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.dropped = Counter(
            "cnnserve_dropped_requests",
            "Requests dropped from the queue unanswered (deadline passed or caller cancelled)",
            ["model"],
            registry=r,
        )
        self.model_versions = Gauge(
            "cnnserve_model_versions_available",
            "Versions of a model that are loaded and serving",
            ["model"],
            registry=r,
            multiprocess_mode="max",
        )

    def for_model(self, model: str) -> ModelMetrics:
        return ModelMetrics(self, model)


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
    """The call hook that counts every call: requests, failures by status code, latency, images.

    Label children are bound once per (model, method), so the hot path does no label lookups.
    """

    def __init__(self, metrics: ServingMetrics, known_model: Callable[[str], bool]) -> None:
        self.metrics = metrics
        self.known_model = known_model
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}

    def _label(self, name: str) -> str:
        if not name or self.known_model(name):
            return name
        return OTHER_MODEL

    def _bound(self, model: str, method: str) -> tuple[Any, Any, Any]:
        children = self._children.get((model, method))
        if children is None:
            m = self.metrics
            children = (
                m.requests.labels(model, method),
                m.latency.labels(model, method),
                m.images.labels(model, method),
            )
            self._children[(model, method)] = children
        return children

    def begin(self, call: Call) -> None:
        self._bound(self._label(call.model), call.method)[0].inc()

    def end(self, call: Call) -> None:
        model = self._label(call.model)
        _, latency, images = self._bound(model, call.method)
        latency.observe(time.perf_counter() - call.start)
        if call.status is not None:
            self.metrics.failures.labels(model, call.method, call.status.name).inc()
        elif call.images:
            images.inc(call.images)
