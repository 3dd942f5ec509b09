"""The Open Inference Protocol over HTTP/REST, with the standard library's urllib: every endpoint, JSON and
binary tensors, the classification extension, bad input, limits, and unload draining in-flight requests."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import struct
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from cnnserve.serving.grpc.client import CnnserveClient
from cnnserve.serving.model.preprocessing import PreprocessSpec, preprocess_encoded
from cnnserve.serving.model.repository import open_model_version

MODEL = "mnist_cnn"


def call(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read()


def post_json(url: str, document: Any) -> tuple[int, Any]:
    status, _, body = call(url, "POST", json.dumps(document).encode(), {"Content-Type": "application/json"})
    return status, json.loads(body) if body else None


@pytest.fixture(scope="module")
def tensors(digits: Any, model_repository: Any) -> np.ndarray:
    spec = PreprocessSpec.from_model_config(open_model_version(model_repository, MODEL).config)
    return np.stack([preprocess_encoded(png, spec) for png in digits.png[:4]])


@pytest.fixture(scope="module")
def expected(served_http: Any, digits: Any) -> Any:
    with CnnserveClient(served_http.address) as client:
        return client.classify(digits.png[:4], MODEL, top_k=3).predictions


def test_health_server_and_model_endpoints(served_http: Any) -> None:
    base = served_http.http_url
    assert call(f"{base}/v2/health/live")[0] == 200
    assert call(f"{base}/v2/health/ready")[0] == 200
    status, _, body = call(f"{base}/v2")
    assert status == 200 and json.loads(body)["name"] == "cnnserve"
    assert "classification" in json.loads(body)["extensions"]
    for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/1"):
        status, headers, body = call(base + path)
        metadata = json.loads(body)
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
        assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
        assert call(f"{base}{path}/ready")[0] == 200
        config = json.loads(call(f"{base}{path}/config")[2])
        assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [28, 28, 1]
        assert "dense1:64" in config["parameters"]["activation_outputs"]["string_value"]
        status, _, body = call(f"{base}{path}/stats")
        assert status == 200 and json.loads(body)["model_stats"][0]["name"] == MODEL
    assert json.loads(call(f"{base}/v2/models/stats")[2])["model_stats"][0]["version"] == "1"
    status, index = post_json(f"{base}/v2/repository/index", {})
    assert status == 200 and index == [{"name": MODEL, "version": "1", "state": "READY", "reason": ""}]
    assert call(f"{base}/v2/models/{MODEL}/versions/7/ready")[0] == 503
    assert call(f"{base}/v2/models/nope/ready")[0] == 503


def test_json_inference_equals_classify(served_http: Any, tensors: np.ndarray, expected: Any) -> None:
    request = {
        "id": "abc",
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": list(tensors.shape), "data": tensors.tolist()}
        ],
        "outputs": [{"name": "probabilities"}, {"name": "dense1"}],
    }
    status, answer = post_json(f"{served_http.http_url}/v2/models/{MODEL}/infer", request)
    assert status == 200 and answer["id"] == "abc" and answer["model_version"] == "1"
    probs, dense = answer["outputs"]
    assert (probs["name"], probs["datatype"], probs["shape"]) == ("probabilities", "FP32", [4, 10])
    assert (dense["name"], dense["shape"]) == ("dense1", [4, 64])
    values = np.asarray(probs["data"]).reshape(4, 10)
    for row, predictions in zip(values, expected, strict=True):
        assert [row[p.index] for p in predictions] == pytest.approx([p.score for p in predictions], abs=1e-5)


def test_base64_images_in_json_and_classification(served_http: Any, digits: Any, expected: Any) -> None:
    request = {
        "inputs": [
            {
                "name": "input",
                "datatype": "BYTES",
                "shape": [4],
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(png).decode() for png in digits.png[:4]],
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
    }
    status, answer = post_json(f"{served_http.http_url}/v2/models/{MODEL}/versions/1/infer", request)
    assert status == 200
    output = answer["outputs"][0]
    assert (output["datatype"], output["shape"]) == ("BYTES", [4, 3])
    rows = [output["data"][i * 3 : (i + 1) * 3] for i in range(4)]
    for row, predictions in zip(rows, expected, strict=True):
        assert [entry.split(":", 2)[2] for entry in row] == [p.label for p in predictions]


def test_binary_tensors_in_and_out(served_http: Any, tensors: np.ndarray, digits: Any, expected: Any) -> None:
    raw = tensors.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(tensors.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    status, headers, body = call(
        f"{served_http.http_url}/v2/models/{MODEL}/infer",
        "POST",
        header + raw,
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    length = int(headers["Inference-Header-Content-Length"])
    answer = json.loads(body[:length])
    output = answer["outputs"][0]
    assert output["parameters"]["binary_data_size"] == 4 * 10 * 4 == len(body) - length
    probs = np.frombuffer(body[length:], dtype="<f4").reshape(4, 10)
    assert probs.argmax(axis=1).tolist() == [p[0].index for p in expected]
    # Encoded images as a binary BYTES tensor: each element prefixed by its 4-byte length.
    images = b"".join(struct.pack("<I", len(png)) + png for png in digits.png[:4])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "BYTES",
                    "shape": [4],
                    "parameters": {"binary_data_size": len(images)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 1, "binary_data": True}}],
        }
    ).encode()
    status, headers, body = call(
        f"{served_http.http_url}/v2/models/{MODEL}/infer",
        "POST",
        header + images,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200
    tail = body[int(headers["Inference-Header-Content-Length"]) :]
    entries, offset = [], 0
    while offset < len(tail):
        (size,) = struct.unpack_from("<I", tail, offset)
        entries.append(tail[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    assert [int(e.split(":")[1]) for e in entries] == [p[0].index for p in expected]


_PAST_THE_BODY = json.dumps(
    {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [1, 28, 28, 1],
                "parameters": {"binary_data_size": 3136},
            }
        ]
    }
).encode()
_ONE_IMAGE = b'{"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["x"]}], '
BAD_REQUESTS = {
    "malformed JSON": (b'{"inputs": [', {}, 400, "not valid JSON"),
    "no inputs": (b'{"inputs": []}', {}, 400, "non-empty list of inputs"),
    "wrong input name": (
        b'{"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": []}]}',
        {},
        400,
        "input 'pixels'",
    ),
    "wrong datatype": (
        b'{"inputs": [{"name": "input", "datatype": "INT32", "shape": [1], "data": [1]}]}',
        {},
        400,
        "INT32",
    ),
    "wrong shape": (
        b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3], "data": [1,2,3,4,5,6]}]}',
        {},
        400,
        "[2, 3]",
    ),
    "data count": (
        b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": [1]}]}',
        {},
        400,
        "784",
    ),
    "not an image": (
        b'{"inputs": [{"name": "input", "datatype": "BYTES", "shape": [2], "data": ["\\u0089PNG", "xyz"]}]}',
        {},
        400,
        "image 0",
    ),
    "header past the body": (b'{"inputs": []}', {"Inference-Header-Content-Length": "9999"}, 400, "9999"),
    "binary size past the body": (
        _PAST_THE_BODY + bytes(100),
        {"Inference-Header-Content-Length": str(len(_PAST_THE_BODY))},
        400,
        "binary_data_size 3136",
    ),
    "unknown output": (
        _ONE_IMAGE + b'"outputs": [{"name": "logits"}]}',
        {},
        400,
        "no output 'logits'",
    ),
    "classification of a layer": (
        _ONE_IMAGE + b'"outputs": [{"name": "dense1", "parameters": {"classification": 2}}]}',
        {},
        400,
        "classification",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_get_a_clear_400(served_http: Any, case: str) -> None:
    body, headers, expected_status, fragment = BAD_REQUESTS[case]
    status, _, answer = call(f"{served_http.http_url}/v2/models/{MODEL}/infer", "POST", body, headers)
    assert status == expected_status, answer
    message = json.loads(answer)["error"]
    assert fragment in message
    assert "Traceback" not in message and "0x" not in message and "/" not in message.replace("N/A", "")


def test_unknown_model_version_path_and_method(served_http: Any) -> None:
    base = served_http.http_url
    status, _, body = call(f"{base}/v2/models/nope/infer", "POST", b"{}")
    assert status == 404 and "unknown model 'nope'" in json.loads(body)["error"]
    status, _, body = call(f"{base}/v2/models/{MODEL}/versions/9/infer", "POST", b"{}")
    assert status == 404 and "version 9" in json.loads(body)["error"]
    status, _, body = call(f"{base}/v2/models/{MODEL}/versions/x/config")
    assert status == 404
    assert call(f"{base}/v3/anything")[0] == 404
    assert call(f"{base}/v2/models/{MODEL}/infer")[0] == 405
    status, _, body = post_json(f"{base}/v2/repository/models/nope/load", {})[0], None, None
    assert status == 404


def test_body_over_the_limit_is_413_and_malformed_http_is_400(
    start_server: Any, model_repository: Any
) -> None:
    server = start_server(model_repository, http_port=0, max_message_bytes=4096)
    port = server.server.http_port
    status, _, body = call(f"{server.http_url}/v2/models/{MODEL}/infer", "POST", b"x" * 5000)
    assert status == 413 and "4096" in json.loads(body)["error"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400") and b"malformed HTTP request" in answer
    # Keep-alive and pipelining: two requests on one connection, answered in order.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2 and data.rstrip().endswith(b"}")
    # A client that sends Expect: 100-continue (curl does for big bodies) is told to go on.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", "/v2/repository/index", body=b"{}", headers={"Expect": "100-continue"})
    response = connection.getresponse()
    assert response.status == 200
    connection.close()


def test_unload_drains_in_flight_requests(
    start_server: Any, model_repository: Any, tensors: np.ndarray
) -> None:
    """Requests queued when the model is unloaded are answered; requests after it get 503; load restores."""
    server = start_server(model_repository, http_port=0, batch_wait="fixed", max_queue_delay_us=1_000_000)
    url = f"{server.http_url}/v2/models/{MODEL}/infer"
    request = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": tensors[:1].tolist()}
        ]
    }
    batcher = server.server.registry.get(MODEL).batcher
    with ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(post_json, url, request) for _ in range(3)]
        deadline = time.monotonic() + 30
        while batcher.queued_images < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # all three queued, waiting for their batch (1 s)
        assert batcher.queued_images == 3
        unloaded = pool.submit(post_json, f"{server.http_url}/v2/repository/models/{MODEL}/unload", {})
        results = [f.result(30) for f in in_flight]
        assert unloaded.result(30)[0] == 200
    assert [status for status, _ in results] == [200, 200, 200]
    status, answer = post_json(url, request)
    assert status == 503 and "unloaded" in answer["error"]
    assert call(f"{server.http_url}/v2/models/{MODEL}/ready")[0] == 503
    assert call(f"{server.http_url}/v2/health/ready")[0] == 503
    status, index = post_json(f"{server.http_url}/v2/repository/index", {})
    assert index[0]["state"] == "UNAVAILABLE" and "unloaded" in index[0]["reason"]
    assert post_json(f"{server.http_url}/v2/repository/models/{MODEL}/load", {})[0] == 200
    assert post_json(url, request)[0] == 200


def test_classify_and_oip_requests_merge_into_one_batch(
    start_server: Any, model_repository: Any, digits: Any
) -> None:
    """A cnnserve.v1 Classify call and an OIP infer for the same model wait in the same batcher."""
    server = start_server(model_repository, http_port=0, batch_wait="fixed", max_queue_delay_us=1_000_000)
    url = f"{server.http_url}/v2/models/{MODEL}/infer"
    request = {
        "inputs": [
            {
                "name": "input",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(digits.png[0]).decode()],
            }
        ]
    }
    with ThreadPoolExecutor(2) as pool, CnnserveClient(server.address) as client:
        oip = pool.submit(post_json, url, request)
        classify = pool.submit(client.classify, [digits.png[1]], MODEL)
        assert oip.result(30)[0] == 200 and classify.result(30).predictions
    stats = json.loads(call(f"{server.http_url}/v2/models/{MODEL}/stats")[2])["model_stats"][0]
    assert stats["execution_count"] == 1 and stats["inference_count"] == 2
    assert [b["batch_size"] for b in stats["batch_stats"]] == [2]
    assert stats["inference_stats"]["success"]["count"] == 2


class _Refuse:
    """A call hook as authentication would be one: it reads a header and may refuse the call."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None, str]] = []

    def begin(self, call: Any) -> None:
        self.seen.append((call.protocol, call.method, call.metadata_value("x-token"), call.peer))
        if call.metadata_value("x-token") == "wrong":
            from cnnserve.serving.errors import ServingError, Status

            class Denied(ServingError):
                status = Status.PERMISSION_DENIED

            raise Denied("token refused")

    def end(self, call: Any) -> None:
        pass


def test_call_hooks_see_http_headers_and_can_refuse(start_server: Any, model_repository: Any) -> None:
    server = start_server(model_repository, http_port=0)
    hook = _Refuse()
    server.server.hooks.add(hook)
    url = f"{server.http_url}/v2/models/{MODEL}"
    assert call(url, headers={"X-Token": "fine"})[0] == 200
    status, _, body = call(url, headers={"X-Token": "wrong"})
    assert status == 403 and json.loads(body) == {"error": "token refused"}
    assert [seen[:3] for seen in hook.seen] == [
        ("v2-http", "ModelMetadata", "fine"),
        ("v2-http", "ModelMetadata", "wrong"),
    ]
    assert hook.seen[0][3].startswith("127.0.0.1:")
