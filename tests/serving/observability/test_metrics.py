"""The metrics a real server exports: version labels, fine latency buckets, in-flight calls, model events,
queue depth, and the process's memory and file descriptors."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from cnnserve.protos import inference_pb2, inference_pb2_grpc
from cnnserve.serving.observability import resources
from cnnserve.serving.observability.metrics import LATENCY_BUCKETS

MODEL = "mnist_cnn"


def test_latency_buckets_resolve_a_tenth_of_a_millisecond_to_a_hundred() -> None:
    inside = [b for b in LATENCY_BUCKETS if 0.0001 <= b <= 0.1]
    assert inside[0] == 0.0001 and inside[-1] == 0.1
    # No step wider than 2.5x between 0.1 ms and 100 ms.
    assert all(high / low <= 2.5 for low, high in itertools.pairwise(inside))


def test_a_server_exports_versions_in_flight_events_queues_and_its_process(
    start_server: Callable[..., Any], repo_copy: Path, digits
) -> None:
    server = start_server(repo_copy)
    with grpc.insecure_channel(server.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = inference_pb2.ClassifyRequest(
            model=MODEL, images=[inference_pb2.Image(encoded=d) for d in digits.png[:3]]
        )
        stub.Classify(request, timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.Classify(inference_pb2.ClassifyRequest(model="nope", images=request.images), timeout=30)
    call = {"model": MODEL, "version": "1", "rpc": "Classify"}
    assert server.metric("cnnserve_requests_total", call) == 1
    assert server.metric("cnnserve_images_total", call) == 3
    assert server.metric("cnnserve_request_latency_seconds_count", call) == 1
    failed = {"model": "_other", "version": "", "rpc": "Classify", "code": "NOT_FOUND"}
    assert server.metric("cnnserve_request_failures_total", failed) == 1
    assert server.metric("cnnserve_inflight_requests", {"model": MODEL, "rpc": "Classify"}) == 0
    version = {"model": MODEL, "version": "1"}
    assert server.metric("cnnserve_batch_size_sum", version) == 3
    assert server.metric("cnnserve_queue_seconds_count", version) == 1
    assert server.metric("cnnserve_model_events_total", {**version, "event": "load"}) == 1

    server.run(_sample(server))
    assert server.metric("cnnserve_process_resident_memory_bytes") > 50e6  # ONNX Runtime and numpy loaded
    assert server.metric("cnnserve_process_open_fds") > 3
    assert server.metric("cnnserve_queue_images", version) == 0
    capacity = server.server.registry.get(MODEL).batcher.settings.max_queue_images
    assert server.metric("cnnserve_queue_capacity_images", version) == capacity > 0

    # The model leaves the repository: an unload event, and its queue gauges go.
    shutil.rmtree(repo_copy / MODEL)
    server.poll()
    assert server.metric("cnnserve_model_events_total", {**version, "event": "unload"}) == 1
    assert server.server.metrics.registry.get_sample_value("cnnserve_queue_capacity_images", version) is None


async def _sample(server: Any) -> None:
    server.server.sample_resources()


def test_process_readings_come_from_proc() -> None:
    sample = resources.process_sample()
    assert sample.resident_bytes is not None and sample.resident_bytes > 1e6
    assert sample.open_fds is not None and sample.open_fds >= 3
    started = resources.process_start_time()
    import time

    assert started is not None and 0 < time.time() - started < 24 * 3600


def test_without_nvidia_ml_py_or_a_gpu_there_are_simply_no_gpu_readings() -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA execution provider")
    probe = resources.GpuProbe()
    assert not probe.available and probe.sample() == []
    probe.close()
    assert resources._visible_indices(4, {"CUDA_VISIBLE_DEVICES": "2,0"}) == [2, 0]
    assert resources._visible_indices(2, {"CUDA_VISIBLE_DEVICES": "GPU-8f6c"}) == [0, 1]
