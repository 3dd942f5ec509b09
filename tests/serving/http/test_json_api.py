"""cnnserve.v1 as JSON over HTTP: the same answers as the gRPC service, partial answers, bad requests.

Every endpoint is called over a real socket with the standard library, and compared with what the gRPC
service answers for the same request in protobuf's JSON mapping.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format

from cnnserve.serving.grpc.client import CnnserveClient
from cnnserve.serving.insight.explainer import GRADCAM, ExplainOptions

MODEL = "mnist_cnn"
pytestmark = pytest.mark.timeout(180)


def call(port: int, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def as_json(message: Any) -> Any:
    return json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(start_module_server: Any, model_repository: Any) -> Any:
    return start_module_server(model_repository, http_port=0)


@pytest.fixture(scope="module")
def port(server: Any) -> int:
    return int(server.server.http_port)


def test_models_and_metadata_are_the_grpc_answers(server, port) -> None:
    with CnnserveClient(server.address) as client:
        listed = as_json(client.list_models())
        metadata = as_json(client.metadata(MODEL))
    assert call(port, "GET", "/v1/models") == (200, listed)
    assert listed["models"][0]["versions"] == [{"version": 1, "state": "AVAILABLE", "reason": ""}]
    for path in (f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/versions/1"):
        assert call(port, "GET", path) == (200, metadata)
    assert metadata["input"] == {"name": "input", "data_type": "TYPE_FP32", "dims": [28, 28, 1]}
    assert json.loads(metadata["parity_json"])["passed"] is True


def test_classify_is_the_grpc_answer(server, port, digits) -> None:
    images = digits.png[:5]
    with CnnserveClient(server.address) as client:
        expected = client.classify(images, MODEL, top_k=3)
    status, answer = call(
        port,
        "POST",
        f"/v1/models/{MODEL}/classify",
        {"images": [{"encoded": b64(i)} for i in images], "top_k": 3},
    )
    assert status == 200 and (answer["model"], answer["version"]) == (MODEL, 1)
    for shown, predictions in zip(answer["results"], expected.predictions, strict=True):
        assert [(p["label"], p["index"]) for p in shown["predictions"]] == [
            (p.label, p.index) for p in predictions
        ]
        np.testing.assert_array_equal(
            np.float32([p["score"] for p in shown["predictions"]]), np.float32([p.score for p in predictions])
        )


def test_activations_whole_and_in_part(server, port, digits) -> None:
    image = digits.png[7]
    with CnnserveClient(server.address) as client:
        expected = client.activations([image], MODEL, mosaic=True).layers
    path = f"/v1/models/{MODEL}/versions/1/activations"
    body = {"images": [{"encoded": b64(image)}], "layers": ["conv1", "dense1"], "mosaic": True}
    status, answer = call(port, "POST", path, body)
    assert status == 200 and [layer["layer"] for layer in answer["layers"]] == ["conv1", "dense1"]
    for layer in answer["layers"]:
        tensor = layer["activations"]
        values = np.frombuffer(base64.b64decode(tensor["data"]), "<f4").reshape(tensor["shape"])
        np.testing.assert_array_equal(values, expected[layer["layer"]].values)
        assert base64.b64decode(layer["mosaic_png"]) == expected[layer["layer"]].mosaic_png
    status, answer = call(
        port, "POST", f"{path}?fields=layers.layer,layers.mosaic_png", {**body, "layers": []}
    )
    assert status == 200 and list(answer) == ["layers"]
    assert [sorted(layer) for layer in answer["layers"]] == [["layer", "mosaic_png"]] * len(expected)
    assert [base64.b64decode(layer["mosaic_png"]) for layer in answer["layers"]] == [
        layer.mosaic_png for layer in expected.values()
    ]


def test_filters_from_query_parameters(server, port) -> None:
    with CnnserveClient(server.address) as client:
        expected = client.filters(MODEL, "conv2", input_channel=3, mosaic=True)
    status, answer = call(port, "GET", f"/v1/models/{MODEL}/filters/conv2?mosaic=true&input_channel=3")
    assert status == 200 and answer["layer"] == "conv2"
    assert base64.b64decode(answer["mosaic_png"]) == expected.mosaic_png
    kernel = np.frombuffer(base64.b64decode(answer["kernel"]["data"]), "<f4").reshape(
        answer["kernel"]["shape"]
    )
    np.testing.assert_array_equal(kernel, expected.filters.kernel)
    status, answer = call(port, "GET", f"/v1/models/{MODEL}/filters/conv1?fields=kernel.shape")
    assert (status, answer) == (200, {"kernel": {"shape": [3, 3, 1, 32]}})


def test_explain_is_the_grpc_answer(server, port, digits) -> None:
    image = digits.png[3]
    with CnnserveClient(server.address) as client:
        expected = client.explain(image, MODEL, ExplainOptions(method=GRADCAM, target_class=2, overlay=True))
    body = {
        "image": {"encoded": b64(image)},
        "method": "GRADCAM",
        "target_class": 2,
        "has_target_class": True,
    }
    status, answer = call(port, "POST", f"/v1/models/{MODEL}/explain", {**body, "overlay": True})
    assert status == 200 and answer["method"] == "GRADCAM"
    assert answer["target"]["index"] == 2 and np.float32(answer["target"]["score"]) == np.float32(
        expected.target_score
    )
    assert base64.b64decode(answer["overlay_png"]) == expected.overlay_png
    heatmap = np.frombuffer(base64.b64decode(answer["heatmap"]["data"]), "<f4").reshape(
        answer["heatmap"]["shape"]
    )
    np.testing.assert_allclose(heatmap, expected.heatmap, atol=1e-6)


NOT_AN_IMAGE = base64.b64encode(b"not an image").decode()
classify = f"/v1/models/{MODEL}/classify"
filters = f"/v1/models/{MODEL}/filters"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/v1/models/nope", None, 404, "unknown model 'nope'; available models: mnist_cnn"),
        ("GET", f"/v1/models/{MODEL}/versions/7", None, 404, "model 'mnist_cnn' has no version 7"),
        ("GET", f"/v1/models/{MODEL}/versions/x", None, 404, "has no version 'x'; versions are positive"),
        ("POST", classify, b"{not json", 400, "the request body is not valid JSON"),
        ("POST", classify, b"[1]", 400, "the request body must be a JSON object (ClassifyRequest)"),
        ("POST", classify, {"imagez": []}, 400, 'has no field named "imagez"'),
        ("POST", classify, {"images": [{"encoded": "@@"}]}, 400, "image 0: empty image (0 bytes)"),
        ("POST", classify, {"images": [{"encoded": NOT_AN_IMAGE}]}, 400, "image 0: cannot decode image"),
        ("POST", classify, {"images": []}, 400, "the request holds no image"),
        ("GET", f"{filters}/pool1", None, 400, "pool1"),
        ("GET", f"{filters}/nope", None, 404, "nope"),
        (
            "GET",
            f"{filters}/conv1?bogus=1",
            None,
            400,
            "unknown query parameter 'bogus'; FiltersRequest takes",
        ),
        ("GET", f"{filters}/conv1?mosaic=maybe", None, 400, "query parameter mosaic='maybe' must be true or"),
        ("GET", f"{filters}/conv1?input_channel=x", None, 400, "input_channel='x' is not a valid value"),
        ("GET", f"{filters}/conv1?fields=kernel.nope", None, 400, "fields: Tensor has no field 'nope'"),
        ("GET", f"{filters}/conv1?fields=layer.x", None, 400, "fields: layer has no field 'x'"),
        ("POST", "/v1/models", {}, 405, "POST is not allowed on /v1/models; use GET"),
        ("GET", classify, None, 405, "use POST"),
    ],
)
def test_bad_requests_get_a_status_and_a_message_naming_the_culprit(
    port, method, path, body, status, message
):
    raw = body if isinstance(body, bytes) else None
    answer_status, answer = call(port, method, path, None if raw is not None else body, raw)
    assert answer_status == status, answer
    assert message in answer["error"]


def test_a_get_with_a_body_is_refused(port) -> None:
    status, answer = call(port, "GET", "/v1/models", raw=b'{"a": 1}')
    assert status == 400 and "takes no body" in answer["error"]


def test_every_call_goes_through_the_call_hooks(server, port) -> None:
    """Metrics count JSON calls under the RPC's name, like gRPC ones (a call refused before a version was
    chosen has an empty version label)."""
    answered = {"model": MODEL, "version": "1", "rpc": "GetFilters"}
    refused = {**answered, "version": "", "code": "INVALID_ARGUMENT"}
    before = (
        server.metric("cnnserve_requests_total", answered),
        server.metric("cnnserve_request_failures_total", refused),
    )
    assert call(port, "GET", f"{filters}/conv1?fields=layer")[0] == 200
    assert call(port, "GET", f"{filters}/pool1")[0] == 400
    after = (
        server.metric("cnnserve_requests_total", answered),
        server.metric("cnnserve_request_failures_total", refused),
    )
    assert after == (before[0] + 1, before[1] + 1)
