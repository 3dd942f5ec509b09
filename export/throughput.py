"""Speed of two ONNX files side by side: what decides where activation outputs live and what variants gain.

Runs of the two files are interleaved, so a burst of load on a shared machine hits both alike.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cnnserve.export.sessions import make_session


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
