"""What ONNX Runtime's CPU memory arena is worth: the same model, two sessions, one run.

Serving keeps the arena for the classification session (its batches never exceed max_batch_size, and the
warm-up's full batch fills the arena that every later batch reuses) and runs the activation and Grad-CAM
sessions, whose batch shapes the requests choose, without it (each new, bigger shape would add memory the
arena never gives back). This measures the price of running without it: two sessions of the same model
file, created the way serving creates them (one intra-op thread, as each server worker and job worker
runs them, in a process whose glibc mmap threshold is fixed at 1 MiB as a worker's is), one with the
arena and one without, run on the same preloaded batch in interleaved rounds at each batch size. The
figure is the median over rounds of the CPU time per image in the calling thread (with one intra-op
thread ONNX Runtime computes in the caller, so a shared machine's other work does not inflate it); the
ratio is taken within the run.

    python bench/bench_ort_arena.py --repo model_repository --model mnist_cnn --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from cnnserve.serving.memory import return_big_buffers_to_the_system
from cnnserve.serving.model.repository import open_model_version
from cnnserve.serving.model.runtime import ModelRuntime, SessionOptions


def cpu_per_image(runtime: ModelRuntime, batch: np.ndarray, min_seconds: float) -> float:
    """Thread CPU time per image (µs) over enough repeats of `batch` to take `min_seconds`."""
    runtime.classify(batch)  # this shape's first run allocates; steady state is what is measured
    repeats = 0
    start = time.thread_time()
    while time.thread_time() - start < min_seconds:
        runtime.classify(batch)
        repeats += 1
    return (time.thread_time() - start) / (repeats * len(batch)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--model", default="mnist_cnn")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--min-seconds", type=float, default=0.3, help="CPU time per measurement")
    args = parser.parse_args()

    return_big_buffers_to_the_system()  # as every server worker does first
    version = open_model_version(args.repo, args.model)
    runtimes = {
        arena: ModelRuntime(version, SessionOptions(device="cpu", intra_op_threads=1, cpu_memory_arena=arena))
        for arena in (True, False)
    }
    rng = np.random.default_rng(0)
    print(f"{args.model}: CPU µs per image in the calling thread, one intra-op thread, {args.rounds} rounds")
    print("| batch | arena on | arena off | off / on |")
    print("|---:|---:|---:|---:|")
    for size in args.batch_sizes:
        batch = rng.random((size, *runtimes[True].input_dims), dtype=np.float32)
        figures: dict[bool, list[float]] = {True: [], False: []}
        for round_index in range(args.rounds):
            order = (True, False) if round_index % 2 == 0 else (False, True)
            for arena in order:
                figures[arena].append(cpu_per_image(runtimes[arena], batch, args.min_seconds))
        on, off = statistics.median(figures[True]), statistics.median(figures[False])
        ratios = [b / a for a, b in zip(figures[True], figures[False], strict=True)]
        print(
            f"| {size} | {on:.1f} | {off:.1f} | {statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f}) |"
        )


if __name__ == "__main__":
    main()
