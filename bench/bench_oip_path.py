"""The server's own cost of one OIP gRPC ModelInfer call, without the transport, in CPU time.

    .venv/bin/python bench/bench_oip_path.py --repo REPO --model mnist_cnn [--clients 32] [--seconds 3]

One process builds the server as a one-core worker builds it (`--workers 2` on 2 cores: one ONNX Runtime
thread, quick batches on the event loop) and calls its ModelInfer handler from C concurrent coroutines with
a raw FP32 [1, ...] request, parsed from bytes and its answer serialised, as gRPC would: everything a call
costs the server except the gRPC transport itself, which `serve --echo` measures (bench_oip.py). CPU time
(user + system of the whole process) per call holds on a shared machine where rates do not; ONNX Runtime's
share is the CPU time of its runs (one intra-op thread: the calling thread's time), the rest is the Python
request path: parsing, checks, call hooks, the batcher, the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np


class _Context:
    """What the handler reads of a gRPC ServicerContext: no deadline pressure, no metadata."""

    def time_remaining(self) -> float:
        return 30.0

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    async def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(message)


async def measure(repo: Path, model: str, clients: int, seconds: float, rounds: int) -> None:
    from cnnserve.protos import oip_pb2
    from cnnserve.serving.grpc.server import InferenceServer
    from cnnserve.serving.settings import ServerSettings

    settings = ServerSettings(repo=repo, host="127.0.0.1", port=0, workers=2, threads=1, poll_interval=0)
    server = InferenceServer(settings, cpu_count=2)
    await server.start()
    try:
        loaded = server.registry.get(model)
        dims = tuple(int(d) for d in loaded.model.config.input.dims)
        tensor = np.random.default_rng(0).random((1, *dims), dtype=np.float32)
        request = oip_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name=loaded.model.config.input.name, datatype="FP32", shape=tensor.shape)
        request.raw_input_contents.append(tensor.tobytes())
        body = request.SerializeToString()
        servicer = server.oip_servicer
        stats = server.statistics.for_version(loaded.name, loaded.version)
        state = {"calls": 0, "stop": False}
        ort_cpu = [0.0]  # ONNX Runtime's CPU seconds: one intra-op thread, so the calling thread's time
        run = loaded.batcher.run

        def timed_run(batch: np.ndarray) -> np.ndarray:
            start = time.thread_time()
            try:
                return run(batch)
            finally:
                ort_cpu[0] += time.thread_time() - start

        loaded.batcher.run = timed_run

        async def client() -> None:
            context = _Context()
            while not state["stop"]:
                answer = await servicer.ModelInfer(oip_pb2.ModelInferRequest.FromString(body), context)
                answer.SerializeToString()
                state["calls"] += 1

        tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
        await asyncio.sleep(1.0)
        for _ in range(rounds):
            calls, cpu, compute = state["calls"], time.process_time(), ort_cpu[0]
            images, batches = stats.inference_count, stats.execution_count
            await asyncio.sleep(seconds)
            calls = state["calls"] - calls
            cpu_us = 1e6 * (time.process_time() - cpu) / calls
            ort_us = 1e6 * (ort_cpu[0] - compute) / calls
            batch = (stats.inference_count - images) / max(1, stats.execution_count - batches)
            print(
                f"{clients} clients x 1 image: {calls / seconds:8,.0f} calls/s, {cpu_us:6.1f} us CPU per "
                f"call: ONNX Runtime {ort_us:5.1f} us (batches of {batch:4.1f} images), request path "
                f"{cpu_us - ort_us:5.1f} us",
                flush=True,
            )
        state["stop"] = True
        await asyncio.gather(*tasks)
    finally:
        await server.stop(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--clients", type=int, default=32, help="concurrent calls (one worker's share of 64)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(measure(args.repo, args.model, args.clients, args.seconds, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
