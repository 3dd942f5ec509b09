"""Shared by the benchmarks: wait for this process to go idle before the next measurement."""

from __future__ import annotations

import time


def settle(limit_s: float = 1.0) -> None:
    """Wait until this process's threads are idle: a spinning ONNX Runtime session keeps a core busy
    for ~50 ms after its last call (measured), which would slow whatever is measured next."""
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        before = time.process_time()
        time.sleep(0.01)
        if time.process_time() - before < 0.001:
            return
