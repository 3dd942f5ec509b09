"""Classify, GetActivations, ListModels and GetModelMetadata against in-process ONNX Runtime."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnserve.serving.core.inputs import RequestLimits, build_batch
from cnnserve.serving.grpc import converters
from cnnserve.serving.grpc.client import CnnserveClient
from cnnserve.serving.model.preprocessing import PreprocessSpec
from cnnserve.serving.model.repository import open_model_version
from cnnserve.serving.model.runtime import ModelRuntime, SessionOptions

MODEL = "mnist_cnn"
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def reference(model_repository: Path) -> ModelRuntime:
    """The same model file in this process, on ONNX Runtime directly (no RPC)."""
    return ModelRuntime(
        open_model_version(model_repository, MODEL), SessionOptions(device="cpu", intra_op_threads=1)
    )


def _expected_top3(model_repository: Path, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Classify's answer worked out without serving's code: Pillow decodes each 28x28 digit, pixels times
    the config's float32 scale, ONNX Runtime runs the exported file, numpy sorts (ties: lower index)."""
    import onnxruntime as ort

    scale = np.float32(1 / 255)  # the exported config's scale, stored as a float32
    pixels = [np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) for data in images]
    batch = (np.stack(pixels) * scale).reshape(-1, 28, 28, 1)
    path = model_repository / MODEL / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities = session.run(["output"], {"input": batch})[0]  # a softmax head: already probabilities
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :3]
    return order, np.take_along_axis(probabilities, order, axis=1)


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_classify_equals_onnx_runtime_on_the_exported_file(
    served, digits, model_repository, encoding
) -> None:
    images = digits.png if encoding == "png" else digits.jpeg
    expected_index, expected_score = _expected_top3(model_repository, images)
    labels = (model_repository / MODEL / "labels.txt").read_text().splitlines()
    with CnnserveClient(served.address) as client:
        result = client.classify(images, MODEL, top_k=3)
    assert (result.model, result.version) == (MODEL, 1)
    assert len(result.predictions) == len(images)
    for row, predictions in enumerate(result.predictions):
        assert [p.index for p in predictions] == expected_index[row].tolist()
        assert [p.label for p in predictions] == [labels[i] for i in expected_index[row]]
        # Another session (threads, batch composition) may round the last bit differently.
        np.testing.assert_allclose([p.score for p in predictions], expected_score[row], rtol=1e-5, atol=1e-7)


def test_trained_model_reads_the_digits(served, digits) -> None:
    with CnnserveClient(served.address) as client:
        result = client.classify(digits.png, MODEL)
    accuracy = np.mean(np.array([p[0].index for p in result.predictions]) == digits.labels)
    assert accuracy >= 0.5, f"top-1 accuracy {accuracy:.2f} on 40 real digits"


def test_tensor_input_equals_encoded_input(served, digits, reference) -> None:
    spec = PreprocessSpec.from_model_config(reference.model.config)
    tensors = list(build_batch(digits.png[:5], spec, RequestLimits()))
    with CnnserveClient(served.address) as client:
        from_tensors = client.classify(tensors, MODEL, top_k=2)
        from_png = client.classify(digits.png[:5], MODEL, top_k=2)
    assert from_tensors.predictions == from_png.predictions


def test_activations_match_onnx_runtime_and_draw_mosaics(served, digits, reference) -> None:
    spec = PreprocessSpec.from_model_config(reference.model.config)
    layers = [layer.name for layer in reference.model.config.activation_layers]
    assert layers, "export wrote no activation layers"
    expected = reference.activations(build_batch(digits.png[:2], spec, RequestLimits()), layers)
    with CnnserveClient(served.address) as client:
        result = client.activations(digits.png[:2], MODEL, mosaic=True)
        one = client.activations(digits.png[:1], MODEL, layers=[layers[0]])
    assert list(result.layers) == layers
    for layer in layers:
        np.testing.assert_array_equal(result.layers[layer].values, expected[layer])
        picture = Image.open(io.BytesIO(result.layers[layer].mosaic_png))
        assert picture.format == "PNG" and picture.width >= 32
    assert list(one.layers) == [layers[0]]
    assert one.layers[layers[0]].mosaic_png == b""


def test_list_models_and_metadata(served, model_repository) -> None:
    parity = json.loads((model_repository / MODEL / "1" / "parity.json").read_text())
    with CnnserveClient(served.address) as client:
        listing = client.list_models()
        metadata = client.metadata(MODEL)
        assert client.metadata(MODEL, version=1).version == 1
    assert [(m.name, [(v.version, v.state) for v in m.versions]) for m in listing.models] == [
        (MODEL, [(1, "AVAILABLE")])
    ]
    assert (metadata.name, metadata.version) == (MODEL, 1)
    assert list(metadata.execution_providers) == ["CPUExecutionProvider"]
    # Export's record as a client may read it: the training run's absolute folder cut to its name.
    assert json.loads(metadata.parity_json) == converters.without_paths(parity)
    assert json.loads(metadata.parity_json)["run_dir"] == Path(parity["run_dir"]).name
    assert list(metadata.labels) == [str(i) for i in range(10)]
    assert list(metadata.input.dims) == [28, 28, 1]
    assert [a.name for a in metadata.activation_layers][:2] == ["conv1", "pool1"]
    assert metadata.max_batch_size == 64  # export's default
    assert metadata.preprocessing.height == 28


def test_server_health_serving_overall_and_per_model(served) -> None:
    with CnnserveClient(served.address) as client:
        assert client.health() == "SERVING"
        assert client.health(MODEL) == "SERVING"
        assert client.health("cnnserve.v1.InferenceService") == "SERVING"


def test_reflection_lists_the_services(served) -> None:
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(served.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"cnnserve.v1.InferenceService", "grpc.health.v1.Health"} <= names
