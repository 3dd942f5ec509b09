"""What a hostile client sends gets a fair answer: the right code, a short message, nothing internal.

Non-finite inputs, names a megabyte long, undecodable images, malformed request bodies, and a seeded
mutation fuzz of encoded images and raw request bytes on every RPC. One two-worker server serves the
whole module.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import harness
import numpy as np
import pytest

from cnnserve.protos import inference_pb2

LAYERS = ["conv1", "conv2", "dense1", "output"]
FUZZ_PAYLOADS = 400
IMAGE_PAYLOADS = 300


def finite_tensor() -> np.ndarray:
    return np.zeros((28, 28, 1), dtype="<f4")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_tensor_is_refused_naming_the_image(shared_server, value: float) -> None:
    stub = harness.stub(shared_server.address)
    bad = finite_tensor()
    bad[3, 4, 0] = value
    images = [harness.tensor_image(finite_tensor()), harness.tensor_image(bad)]

    classify = harness.status_of(stub.Classify, harness.classify_request(*images), timeout=30)
    activations = harness.status_of(
        stub.GetActivations, inference_pb2.ActivationsRequest(model=harness.MODEL, images=images), timeout=30
    )
    explain = harness.status_of(
        stub.Explain, inference_pb2.ExplainRequest(model=harness.MODEL, image=images[1]), timeout=30
    )

    for code, message in (classify, activations):
        assert code == "INVALID_ARGUMENT" and "image 1" in message and "finite" in message, message
    assert explain[0] == "INVALID_ARGUMENT" and "finite" in explain[1], explain


def test_a_huge_finite_input_never_answers_a_nan(shared_server) -> None:
    stub = harness.stub(shared_server.address)
    huge = finite_tensor()
    huge[:] = 3e38
    code, message = harness.status_of(stub.Classify, harness.classify_request(harness.tensor_image(huge)))
    if code == "OK":
        response = stub.Classify(harness.classify_request(harness.tensor_image(huge)), timeout=30)
        assert all(np.isfinite(p.score) for p in response.results[0].predictions)
    else:
        assert code == "INVALID_ARGUMENT" and "image 0" in message, message

    request = inference_pb2.ExplainRequest(model=harness.MODEL, image=harness.tensor_image(finite_tensor()))
    request.occlusion.fill_value = 3e38
    code, message = harness.status_of(stub.Explain, request, timeout=60)
    if code == "OK":
        response = stub.Explain(request, timeout=60)
        assert np.isfinite(np.frombuffer(response.heatmap.data, "<f4")).all()
    else:
        assert code == "INVALID_ARGUMENT" and "finite" in message, message


@pytest.mark.parametrize("field", ["model", "layer"])
def test_a_megabyte_name_is_echoed_truncated(shared_server, field: str) -> None:
    stub = harness.stub(shared_server.address)
    name = "m" * 1_000_000
    image = harness.tensor_image(finite_tensor())
    if field == "model":
        first = harness.status_of(stub.Classify, harness.classify_request(image, model=name))
        filters = harness.status_of(stub.GetFilters, inference_pb2.FiltersRequest(model=name, layer="conv1"))
    else:
        request = inference_pb2.ActivationsRequest(model=harness.MODEL, images=[image], layers=[name])
        first = harness.status_of(stub.GetActivations, request)
        filters = harness.status_of(
            stub.GetFilters, inference_pb2.FiltersRequest(model=harness.MODEL, layer=name)
        )
    for code, message in (first, filters):
        assert code in ("NOT_FOUND", "INVALID_ARGUMENT"), (code, message[:200])
        assert len(message) < 1000 and "mmmm" in message, message[:200]


def test_an_undecodable_image_names_no_heap_address(shared_server) -> None:
    stub = harness.stub(shared_server.address)
    request = harness.classify_request(inference_pb2.Image(encoded=b"neither PNG nor JPEG"))
    code, message = harness.status_of(stub.Classify, request)
    assert code == "INVALID_ARGUMENT" and "image 0" in message
    assert not harness.HEAP_ADDRESS.search(message), message


def test_metadata_and_errors_name_no_server_path(shared_server, model_repository: Path) -> None:
    stub = harness.stub(shared_server.address)
    metadata = stub.GetModelMetadata(inference_pb2.ModelMetadataRequest(model=harness.MODEL), timeout=30)
    assert not re.search(r'"/[^"]*"', metadata.parity_json), metadata.parity_json
    assert str(model_repository) not in str(metadata)


def test_a_malformed_body_is_invalid_argument_and_logged_once(shared_server) -> None:
    import grpc

    before = shared_server.log().count("malformed")
    with grpc.insecure_channel(shared_server.address) as channel:
        callables = harness.raw_callables(channel)
        outcomes = [
            harness.call(callables, harness.HostileRequest(rpc, raw=b"\xff\xff\xff\xff\x0f"))
            for rpc in harness.RPCS
            if rpc != "ListModels"
            for _ in range(20)
        ]
    assert {o.code for o in outcomes} == {"INVALID_ARGUMENT"}, {o.code for o in outcomes}
    for outcome in outcomes:
        assert "not a valid" in outcome.message and not harness.verdict(outcome), outcome.message
    log = shared_server.log()
    assert "Traceback" not in log
    assert 1 <= log.count("malformed") - before <= 2 * 2, log[-2000:]  # at most one line per worker


def test_mutated_requests_on_every_rpc_get_fair_answers(shared_server, digit_pixels, seed: int) -> None:
    mutator = harness.Mutator(seed, harness.seed_images(digit_pixels))
    fuzzer = harness.RequestFuzzer(seed, harness.MODEL, LAYERS, mutator)
    tally = harness.fuzz(
        shared_server.address, harness.forever(fuzzer.request), FUZZ_PAYLOADS, [str(Path.cwd())]
    )
    assert not tally.faults, f"seed {seed}: {tally.summary()}: {tally.faults[:3]}"
    assert shared_server.process.poll() is None


def test_mutated_images_are_judged_like_local_pillow_and_onnx_runtime(
    shared_server, digit_pixels, model_repository: Path, seed: int
) -> None:
    """Every mutated image the serving preprocessing decodes locally is classified alike by the server;
    every other one is INVALID_ARGUMENT naming image 0."""
    local = harness.LocalClassifier(model_repository / harness.MODEL)
    mutator = harness.Mutator(seed + 1, harness.seed_images(digit_pixels))
    stub = harness.stub(shared_server.address)
    rng = random.Random(seed)
    mismatches = []
    for _ in range(IMAGE_PAYLOADS):
        data = mutator.image() if rng.random() < 0.9 else harness.big_png(rng.choice((29, 3000)), 31)
        expected = local.top1(data)
        code, message = harness.status_of(
            stub.Classify, harness.classify_request(inference_pb2.Image(encoded=data)), timeout=60
        )
        if expected is None:
            if code != "INVALID_ARGUMENT" or "image 0" not in message or harness.HEAP_ADDRESS.search(message):
                mismatches.append((code, message[:200], data[:32]))
            continue
        if code != "OK":
            mismatches.append((code, message[:200], data[:32]))
            continue
        response = stub.Classify(harness.classify_request(inference_pb2.Image(encoded=data)), timeout=60)
        if response.results[0].predictions[0].index != expected:
            mismatches.append(("top-1", expected, response.results[0].predictions[0].index))
    assert not mismatches, f"seed {seed}: {len(mismatches)} of {IMAGE_PAYLOADS}: {mismatches[:5]}"


def test_the_fault_judge_tells_a_heap_address_from_image_dimensions() -> None:
    heap = "image 0: cannot decode image: <_io.BytesIO object at 0x7f3a2b1c9d80>"
    dims = "image 0: image of 36520x2691629084 = 98,298,294,147,680 pixels exceeds the limit"
    assert harness.verdict(harness.Outcome("Classify", "INVALID_ARGUMENT", heap))
    assert not harness.verdict(harness.Outcome("Classify", "INVALID_ARGUMENT", dims))
