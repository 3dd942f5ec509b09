"""The Open Inference Protocol's gRPC service through cnnserve's own generated stubs: typed and raw tensor
contents, the status codes and messages of bad input, what is not implemented, and shared call hooks."""

from __future__ import annotations

import struct
from typing import Any

import grpc
import numpy as np
import pytest

from cnnserve.protos import oip_pb2, oip_pb2_grpc
from cnnserve.serving.grpc.client import CnnserveClient
from cnnserve.serving.grpc.oip_client import OipGrpcClient
from cnnserve.serving.model.preprocessing import PreprocessSpec, preprocess_encoded
from cnnserve.serving.model.repository import open_model_version

MODEL = "mnist_cnn"


@pytest.fixture(scope="module")
def stub(served: Any) -> Any:
    channel = grpc.insecure_channel(served.address)
    yield oip_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def tensor(digits: Any, model_repository: Any) -> np.ndarray:
    spec = PreprocessSpec.from_model_config(open_model_version(model_repository, MODEL).config)
    return np.stack([preprocess_encoded(png, spec) for png in digits.png[:2]])


def _request(
    datatype: str = "FP32", shape: tuple[int, ...] = (2, 28, 28, 1), raw: bytes | None = None
) -> Any:
    request = oip_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


def _error(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value.code(), caught.value.details()


def test_server_metadata_and_typed_contents(stub: Any, served: Any, tensor: np.ndarray, digits: Any) -> None:
    metadata = stub.ServerMetadata(oip_pb2.ServerMetadataRequest())
    assert metadata.name == "cnnserve" and "model_repository" in metadata.extensions
    request = _request()
    request.inputs[0].contents.fp32_contents.extend(tensor.reshape(-1).tolist())
    response = stub.ModelInfer(request)
    probs = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 10)
    with CnnserveClient(served.address) as client:
        expected = client.classify(digits.png[:2], MODEL, top_k=1).predictions
    assert probs.argmax(axis=1).tolist() == [p[0].index for p in expected]
    images = _request("BYTES", (2,))
    images.inputs[0].contents.bytes_contents.extend(digits.png[:2])
    response = stub.ModelInfer(images)
    assert np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 10).argmax(1).tolist() == [
        p[0].index for p in expected
    ]


def test_the_oip_client_classifies_like_classify(served: Any, digits: Any) -> None:
    with OipGrpcClient(served.address) as oip, CnnserveClient(served.address) as v1:
        ours = oip.classify(digits.png[:5], MODEL, top_k=2)
        theirs = v1.classify(digits.png[:5], MODEL, top_k=2)
    assert [[(p.label, p.index) for p in row] for row in ours.predictions] == [
        [(p.label, p.index) for p in row] for row in theirs.predictions
    ]
    assert ours.version == 1


BAD = {
    "raw size": (lambda t, d: _request(raw=t.tobytes()[:-4]), "needs 6272 bytes"),
    "raw count": (lambda t, d: _two_raw(t), "2 raw_input_contents"),
    "element past the end": (
        lambda t, d: _request(
            "BYTES", (2,), struct.pack("<I", len(d[0])) + d[0] + struct.pack("<I", 999) + b"x"
        ),
        "element 1 claims 999 bytes",
    ),
    "element missing": (
        lambda t, d: _request("BYTES", (2,), struct.pack("<I", len(d[0])) + d[0]),
        "element 1 is missing",
    ),
    "not an image": (
        lambda t, d: _request(
            "BYTES", (2,), struct.pack("<I", len(d[0])) + d[0] + struct.pack("<I", 3) + b"abc"
        ),
        "image 1",
    ),
    "unknown datatype": (lambda t, d: _request("FP7", (1,), b"1234"), "FP7"),
    "negative dimension": (lambda t, d: _request("FP32", (-2, 28, 28, 1), b""), "cannot be negative"),
    "classification as text": (lambda t, d: _classification_text(t), "must be an integer"),
}


def _two_raw(tensor: np.ndarray) -> Any:
    request = _request(raw=tensor.tobytes())
    request.raw_input_contents.append(b"")
    return request


def _classification_text(tensor: np.ndarray) -> Any:
    request = _request(raw=tensor.tobytes())
    output = request.outputs.add(name="probabilities")
    output.parameters["classification"].string_param = "3"
    return request


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_invalid_argument_naming_the_culprit(
    stub: Any, tensor: np.ndarray, digits: Any, case: str
) -> None:
    build, fragment = BAD[case]
    code, message = _error(stub.ModelInfer, build(tensor, digits.png))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in message, message
    assert "0x" not in message and "Traceback" not in message


def test_not_found_unimplemented_and_shared_hooks(stub: Any, served: Any, tensor: np.ndarray) -> None:
    request = _request(raw=tensor.tobytes())
    request.model_name = "nope"
    assert _error(stub.ModelInfer, request)[0] == grpc.StatusCode.NOT_FOUND
    request.model_name, request.model_version = MODEL, "abc"
    assert _error(stub.ModelInfer, request)[0] == grpc.StatusCode.NOT_FOUND
    statistics = oip_pb2.ModelStatisticsRequest(name="nope")
    assert _error(stub.ModelStatistics, statistics)[0] == grpc.StatusCode.NOT_FOUND
    load = oip_pb2.RepositoryModelLoadRequest(model_name="nope")
    assert _error(stub.RepositoryModelLoad, load)[0] == grpc.StatusCode.NOT_FOUND
    # RPCs of the protocol that cnnserve leaves out answer UNIMPLEMENTED.
    channel = grpc.insecure_channel(served.address)
    stream = channel.unary_unary("/inference.GRPCInferenceService/CudaSharedMemoryStatus")
    with pytest.raises(grpc.RpcError) as caught:
        stream(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel.close()
    # The same call hooks as cnnserve.v1: Prometheus counts the protocol's calls by method.
    before = served.metric("cnnserve_requests_total", {"model": MODEL, "version": "1", "rpc": "ModelInfer"})
    stub.ModelInfer(_request(raw=tensor.tobytes()))
    assert (
        served.metric("cnnserve_requests_total", {"model": MODEL, "version": "1", "rpc": "ModelInfer"})
        == before + 1
    )
