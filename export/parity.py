"""Comparing ONNX Runtime with Keras: running statistics per output, head-aware probabilities, timing.

Statistics are accumulated batch by batch so a large model's activations (cats_dogs_cnn's conv1 is
148×148×32 floats per image) never need to be held for every sample at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnserve.serving.model.runtime import probabilities as serving_probabilities


def probabilities(raw: np.ndarray, kind: int) -> np.ndarray:
    """Class probabilities from a head's raw output, exactly as serving computes them (in float64)."""
    return serving_probabilities(raw, kind, np.float64)


@dataclass
class TensorStats:
    """Running max absolute / relative error of one tensor over many batches, with the worst sample.

    The relative error is the largest absolute difference divided by the largest magnitude of the Keras
    tensor (a scale-free figure that stays meaningful where individual values cross zero).
    """

    max_abs: float = 0.0
    max_ref: float = 0.0
    worst_sample: int = -1
    count: int = 0

    def update(self, reference: np.ndarray, candidate: np.ndarray, first_index: int = 0) -> None:
        reference = np.asarray(reference, dtype=np.float64)
        candidate = np.asarray(candidate, dtype=np.float64)
        if reference.shape != candidate.shape:
            raise ValueError(f"shape mismatch: Keras {reference.shape} vs ONNX {candidate.shape}")
        diff = np.abs(reference - candidate).reshape(reference.shape[0], -1)
        per_sample = diff.max(axis=1) if diff.size else np.zeros(reference.shape[0])
        if per_sample.size and float(per_sample.max()) > self.max_abs:
            self.max_abs = float(per_sample.max())
            self.worst_sample = first_index + int(per_sample.argmax())
        if reference.size:
            self.max_ref = max(self.max_ref, float(np.abs(reference).max()))
        self.count += reference.shape[0]

    @property
    def max_rel(self) -> float:
        return self.max_abs / self.max_ref if self.max_ref > 0 else self.max_abs

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_error": self.max_abs,
            "max_rel_error": self.max_rel,
            "max_abs_value": self.max_ref,
            "worst_sample": self.worst_sample,
            "samples": self.count,
        }


@dataclass
class Top1Stats:
    agree: int = 0
    count: int = 0
    disagreeing: list[int] = field(default_factory=list)

    def update(self, reference: np.ndarray, candidate: np.ndarray, first_index: int = 0) -> None:
        ref_top = np.argmax(reference, axis=1)
        cand_top = np.argmax(candidate, axis=1)
        same = ref_top == cand_top
        self.agree += int(same.sum())
        self.count += int(same.size)
        self.disagreeing.extend(first_index + int(i) for i in np.flatnonzero(~same)[:20])

    @property
    def agreement(self) -> float:
        return self.agree / self.count if self.count else 1.0


def run_onnx(session, input_name: str, names: list[str], batch: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(names, session.run(names, {input_name: batch}), strict=True))


def make_session(path: Path, threads: int = 0):
    """A CPU ONNX Runtime session with serving's optimisation level."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def best_time(run: Callable[[], object], repeats: int = 15, warmup: int = 3, budget_s: float = 3.0) -> float:
    """Best wall time of `run` in seconds over several repeats (min is the least noisy on shared CPUs)."""
    for _ in range(warmup):
        run()
    best = float("inf")
    deadline = time.perf_counter() + budget_s
    for i in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
        if i >= 2 and time.perf_counter() > deadline:
            break
    return best


def compare_throughput(
    first: Path,
    second: Path,
    batch: np.ndarray,
    rounds: int = 3,
    repeats: int = 8,
    output_name: str = "output",
    budget_s: float = 6.0,
) -> tuple[dict[str, float], dict[str, float]]:
    """Speed of two ONNX files on the same batch, measured two ways, runs of the two interleaved.

    - `cpu_ms_per_batch`: the least CPU time one batch takes on a single-threaded session (thread CPU
      time, so other processes on a shared machine do not inflate it). This is the figure decisions use.
    - `images_per_s`: wall-clock throughput with ONNX Runtime's default threads, best run.
    """
    feed = {"input": batch}
    single = (make_session(first, threads=1), make_session(second, threads=1))
    pooled = (make_session(first), make_session(second))
    for session in (*single, *pooled):
        for _ in range(2):
            session.run([output_name], feed)
    cpu = [float("inf"), float("inf")]
    wall = [float("inf"), float("inf")]
    deadline = time.perf_counter() + budget_s
    # Alternate single runs, so a burst of load on this shared machine hits both files alike.
    for i in range(max(1, rounds) * repeats):
        for index in (0, 1):
            start = time.thread_time()
            single[index].run([output_name], feed)
            cpu[index] = min(cpu[index], time.thread_time() - start)
            start = time.perf_counter()
            pooled[index].run([output_name], feed)
            wall[index] = min(wall[index], time.perf_counter() - start)
        if i >= 2 and time.perf_counter() > deadline:
            break
    return tuple(  # type: ignore[return-value]
        {
            "batch": int(batch.shape[0]),
            "cpu_ms_per_batch": cpu_s * 1000.0,
            "cpu_images_per_s": batch.shape[0] / cpu_s if cpu_s > 0 else float("inf"),
            "best_batch_ms": wall_s * 1000.0,
            "images_per_s": batch.shape[0] / wall_s if wall_s > 0 else float("inf"),
        }
        for cpu_s, wall_s in zip(cpu, wall, strict=True)
    )


def summarize(stats: Mapping[str, TensorStats]) -> dict[str, dict[str, Any]]:
    return {name: value.to_dict() for name, value in stats.items()}
