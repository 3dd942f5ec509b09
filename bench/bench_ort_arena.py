"""What ONNX Runtime's CPU memory arena is worth, and what shrinking it costs, in one run.

Serving runs every session with the arena and shrinks it at the end of a run at most once every 10 s
(freeing what lies beyond its first region and is no longer in use), so a batch bigger than any before
leaves no memory behind for long. This measures four sessions of the same model file, created the way
serving creates them (one intra-op thread, as each server worker and job worker runs them, in a process
whose glibc mmap threshold is fixed at 1 MiB as a worker's is): serving's, the arena never shrunk (ONNX
Runtime's default), the arena shrunk after every run, and no arena at all. Each runs the same preloaded
batch in interleaved rounds at each batch size. The figure is the median over rounds of the CPU time per
image in the calling thread (with one intra-op thread ONNX Runtime computes in the caller, so a shared
machine's other work does not inflate it); the ratios are taken within each round.

    python bench/bench_ort_arena.py --repo model_repository --model mnist_cnn --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cnnserve.serving.memory import return_big_buffers_to_the_system
from cnnserve.serving.model.repository import open_model_version
from cnnserve.serving.model.runtime import ModelRuntime, SessionOptions

ONE_THREAD = SessionOptions(device="cpu", intra_op_threads=1)
VARIANTS = {
    "serving (arena, shrunk every 10 s)": ONE_THREAD,
    "arena, never shrunk": replace(ONE_THREAD, arena_shrink_interval_s=-1.0),
    "arena, shrunk after every run": replace(ONE_THREAD, arena_shrink_interval_s=0.0),
    "no arena": replace(ONE_THREAD, cpu_memory_arena=False),
}
SERVING = next(iter(VARIANTS))


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
    runtimes = {name: ModelRuntime(version, options) for name, options in VARIANTS.items()}
    others = [name for name in VARIANTS if name != SERVING]
    rng = np.random.default_rng(0)
    print(f"{args.model}: CPU µs per image in the calling thread, one intra-op thread, {args.rounds} rounds")
    print(
        "| batch | "
        + " | ".join(VARIANTS)
        + " | "
        + " | ".join(f"{other} / serving" for other in others)
        + " |"
    )
    print("|---:|" + "---:|" * (len(VARIANTS) + len(others)))
    for size in args.batch_sizes:
        batch = rng.random((size, *runtimes[SERVING].input_dims), dtype=np.float32)
        figures: dict[str, list[float]] = {name: [] for name in VARIANTS}
        names = list(VARIANTS)
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                figures[name].append(cpu_per_image(runtimes[name], batch, args.min_seconds))
        medians = [f"{statistics.median(figures[name]):.1f}" for name in VARIANTS]
        ratios = []
        for other in others:
            per_round = [b / a for a, b in zip(figures[SERVING], figures[other], strict=True)]
            ratios.append(f"{statistics.median(per_round):.2f} ({min(per_round):.2f}-{max(per_round):.2f})")
        print(f"| {size} | " + " | ".join(medians) + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
