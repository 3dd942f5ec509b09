"""Per model version inference statistics, as the Open Inference Protocol's statistics extension reports them.

Counts and total nanoseconds of successful and failed requests, of the time requests queued before their
batch started and of ONNX Runtime compute, the images inferred, the model executions (batches) and the
batch sizes seen. Each worker process keeps its own; a statistics request answers them summed over the
workers (statistics_exchange.py). Prometheus (`metrics.py`) is the place for figures to graph.
Fed by two observers: every dynamic batcher's (`for_version`) and a call hook (`StatisticsHook`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cnnserve.serving.batching.batcher import BatchObserver
from cnnserve.serving.core.calls import Call


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class VersionStatistics:
    """One model version's figures since it first loaded in this process (a batch observer)."""

    name: str
    version: int
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0  # images
    execution_count: int = 0  # batches
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)  # batch size -> compute time

    def observe_batch(self, size: int, queue_seconds: Sequence[float], compute_seconds: float) -> None:
        self.execution_count += 1
        self.inference_count += size
        self.compute_infer.add(compute_seconds, len(queue_seconds))
        for seconds in queue_seconds:
            self.queue.add(seconds)
        self.batches.setdefault(size, Duration()).add(compute_seconds)
        self.last_inference_ms = int(time.time() * 1000)

    def observe_dropped(self, count: int) -> None:
        """A dropped request fails its caller, which the call hook counts."""


class StatisticsBook:
    """Every model version's statistics in this process; a version appears when it first loads."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, int], VersionStatistics] = {}

    def for_version(self, name: str, version: int) -> VersionStatistics:
        key = (name, version)
        stats = self._versions.get(key)
        if stats is None:
            stats = self._versions[key] = VersionStatistics(name, version)
        return stats

    def select(self, name: str = "", version: int = 0) -> list[VersionStatistics]:
        """The statistics of one model (all when `name` is empty), of one version (all when 0)."""
        return [
            stats
            for (n, v), stats in sorted(self._versions.items())
            if (not name or n == name) and (not version or v == version)
        ]


class StatisticsHook:
    """The call hook that counts each answered inference as a success or failure of its model version."""

    METHODS = frozenset({"Classify", "ModelInfer"})

    def __init__(self, book: StatisticsBook) -> None:
        self.book = book

    def begin(self, call: Call) -> None:
        pass

    def end(self, call: Call) -> None:
        if call.method not in self.METHODS or not call.version:
            return
        stats = self.book.for_version(call.model, call.version)
        (stats.success if call.status is None else stats.fail).add(time.perf_counter() - call.start)


class BatchObservers:
    """Several batch observers as one (Prometheus metrics and the statistics book)."""

    def __init__(self, *observers: BatchObserver) -> None:
        self.observers = observers

    def observe_batch(self, size: int, queue_seconds: Sequence[float], compute_seconds: float) -> None:
        for observer in self.observers:
            observer.observe_batch(size, queue_seconds, compute_seconds)

    def observe_dropped(self, count: int) -> None:
        for observer in self.observers:
            observer.observe_dropped(count)
