"""Every bad input gets its status code, names the image at fault, and the server keeps serving."""

from __future__ import annotations

import io
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from cnnserve.protos import inference_pb2, inference_pb2_grpc, model_config_pb2
from cnnserve.serving.grpc.client import CnnserveClient, ServerError

MODEL = "mnist_cnn"
pytestmark = pytest.mark.timeout(180)


def _code(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ServerError) as caught:
        call(*args, **kwargs)
    return caught.value.code, caught.value.message


def _failures(server, code: str) -> float:
    """Classify failures counted under `code`, whatever version label the call got."""
    labels = {"model": MODEL, "rpc": "Classify", "code": code}
    return sum(server.metric("cnnserve_request_failures_total", {**labels, "version": v}) for v in ("", "1"))


def _until(condition, what: str, timeout: float = 60.0) -> None:
    """Wait until `condition()` holds (a loaded machine may take its time), failing after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def _tensor(data_type: int, shape: list[int], data: bytes) -> inference_pb2.Image:
    return inference_pb2.Image(tensor=inference_pb2.Tensor(data_type=data_type, shape=shape, data=data))


def _classify(address: str, images: list[inference_pb2.Image], **fields) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        try:
            stub.Classify(inference_pb2.ClassifyRequest(model=MODEL, images=images, **fields), timeout=30)
        except grpc.RpcError as error:
            return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def test_not_found_lists_what_is_available(served, digits) -> None:
    with CnnserveClient(served.address) as client:
        code, message = _code(client.classify, digits.png[:1], "no_such_model")
        assert code == grpc.StatusCode.NOT_FOUND and "no_such_model" in message and MODEL in message
        code, message = _code(client.classify, digits.png[:1], MODEL, version=7)
        assert code == grpc.StatusCode.NOT_FOUND and "version 7" in message and "1" in message
        code, message = _code(client.activations, digits.png[:1], MODEL, layers=["conv1", "nope"])
        assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in message and "conv1" in message
        code, _ = _code(client.metadata, "no_such_model")
        assert code == grpc.StatusCode.NOT_FOUND


def test_invalid_images_name_their_index(served, digits) -> None:
    good = inference_pb2.Image(encoded=digits.png[0])
    fp32 = model_config_pb2.TYPE_FP32
    right = np.zeros((28, 28, 1), np.float32).tobytes()
    cases = {
        "undecodable": inference_pb2.Image(encoded=b"definitely not an image"),
        "empty": inference_pb2.Image(encoded=b""),
        "no content": inference_pb2.Image(),
        "dtype": _tensor(model_config_pb2.TYPE_UINT8, [28, 28, 1], bytes(784)),
        "shape": _tensor(fp32, [28, 28], right),
        "byte length": _tensor(fp32, [28, 28, 1], right[:-4]),
    }
    for name, bad in cases.items():
        code, message = _classify(served.address, [good, good, bad])
        assert code == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "image 2" in message, (name, message)
    truncated = digits.png[0][: len(digits.png[0]) // 2]
    code, message = _classify(served.address, [inference_pb2.Image(encoded=truncated)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "image 0" in message


def test_top_k_out_of_range(served, digits) -> None:
    image = inference_pb2.Image(encoded=digits.png[0])
    for top_k in (-1, 11):
        code, message = _classify(served.address, [image], top_k=top_k)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in message
    assert _classify(served.address, [image], top_k=10)[0] == grpc.StatusCode.OK
    code, message = _classify(served.address, [])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no image" in message


@pytest.fixture
def strict(start_server, model_repository):
    """A server with small limits: 4 images per request, 10,000 pixels, 200 kB messages, a 12-image queue
    where every batch waits 300 ms for others."""
    return start_server(
        model_repository,
        max_images=4,
        max_pixels=10_000,
        max_message_bytes=200_000,
        max_queue_size=12,
        max_queue_delay_us=300_000,
        batch_wait="fixed",
    )


def test_limits_on_images_pixels_and_message_size(strict, digits) -> None:
    with CnnserveClient(strict.address) as client:
        code, message = _code(client.classify, digits.png[:5], MODEL)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "5 images" in message and "4" in message
        buffer = io.BytesIO()
        Image.new("L", (200, 200)).save(buffer, format="PNG")  # 40,000 pixels, a few hundred bytes
        code, message = _code(client.classify, [digits.png[0], buffer.getvalue()], MODEL)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "image 1" in message and "10,000" in message
        noise = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
        code, _ = _code(client.classify, [noise], MODEL)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(client.classify(digits.png[:4], MODEL).predictions) == 4  # still serving


def test_full_queue_and_expired_deadlines(strict, digits) -> None:
    with grpc.insecure_channel(strict.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = inference_pb2.ClassifyRequest(
            model=MODEL, images=[inference_pb2.Image(encoded=d) for d in digits.png[:4]]
        )
        waiting = [
            stub.Classify.future(request, timeout=30) for _ in range(3)
        ]  # 12 images: the queue is full
        batcher = strict.server.registry.get(MODEL).batcher
        _until(lambda: batcher.queued_images == 12, "the three requests are queued")
        with pytest.raises(grpc.RpcError) as caught:
            stub.Classify(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "full" in caught.value.details()
        assert all(len(f.result().results) == 4 for f in waiting)
        # A caller whose deadline passes while queued: dropped, never computed, nothing left behind.
        batches = strict.metric("cnnserve_batch_size_count", {"model": MODEL, "version": "1"})
        with pytest.raises(grpc.RpcError) as caught:
            stub.Classify(request, timeout=0.1)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        dropped = {"model": MODEL, "version": "1"}
        _until(
            lambda: strict.metric("cnnserve_dropped_requests_total", dropped) == 1, "the request is dropped"
        )
        _until(lambda: _failures(strict, "DEADLINE_EXCEEDED") == 1, "the failure is counted")
        # The server's own answer, not the client's timeout: counted as DEADLINE_EXCEEDED.
        codes = {code: _failures(strict, code) for code in ("DEADLINE_EXCEEDED", "CANCELLED", "INTERNAL")}
        assert codes == {"DEADLINE_EXCEEDED": 1.0, "CANCELLED": 0.0, "INTERNAL": 0.0}
        assert strict.metric("cnnserve_batch_size_count", {"model": MODEL, "version": "1"}) == batches
        loaded = strict.server.registry.get(MODEL)
        assert loaded.batcher.queued_images == 0
        assert len(stub.Classify(request, timeout=30).results) == 4
    failures = {"model": MODEL, "version": "", "rpc": "Classify", "code": "RESOURCE_EXHAUSTED"}
    assert strict.metric("cnnserve_request_failures_total", failures) == 1


def test_filters_and_explain_are_wired(served) -> None:
    """GetFilters answers through the insight path: an unknown model is NOT_FOUND naming it and the models."""
    with grpc.insecure_channel(served.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetFilters(inference_pb2.FiltersRequest(model="no_such_model", layer="conv1"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no_such_model" in caught.value.details() and MODEL in caught.value.details()
