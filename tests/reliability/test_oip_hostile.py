"""The Open Inference Protocol under a hostile client: mutated request bytes on its gRPC service and
mutated JSON bodies on its HTTP endpoints get fair answers (no INTERNAL, no 500, nothing internal).

Repository load and unload are left out: a mutated name there could legitimately unload the model.
"""

from __future__ import annotations

import json
import random
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import harness
import numpy as np
import pytest

from cnnserve.protos import oip_pb2

SERVICE = "/inference.GRPCInferenceService/"
PAYLOADS = 150


def oip_requests(model: str) -> dict[str, bytes]:
    tensor = np.zeros((1, 28, 28, 1), dtype="<f4")
    infer = oip_pb2.ModelInferRequest(model_name=model, id="x")
    infer.inputs.add(name="input", datatype="FP32", shape=list(tensor.shape))
    infer.raw_input_contents.append(tensor.tobytes())
    infer.outputs.add(name="probabilities")
    messages: dict[str, Any] = {
        "ServerLive": oip_pb2.ServerLiveRequest(),
        "ServerReady": oip_pb2.ServerReadyRequest(),
        "ModelReady": oip_pb2.ModelReadyRequest(name=model),
        "ServerMetadata": oip_pb2.ServerMetadataRequest(),
        "ModelMetadata": oip_pb2.ModelMetadataRequest(name=model),
        "ModelInfer": infer,
        "ModelConfig": oip_pb2.ModelConfigRequest(name=model),
        "ModelStatistics": oip_pb2.ModelStatisticsRequest(name=model),
        "RepositoryIndex": oip_pb2.RepositoryIndexRequest(),
    }
    return {name: message.SerializeToString() for name, message in messages.items()}


@pytest.fixture(scope="module")
def oip_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    log = tmp_path_factory.mktemp("oip-server") / "serve.log"
    server = harness.start_server(model_repository, log, "--workers", "2", "--http-port", "0")
    found = re.search(r"Open Inference Protocol over HTTP on http://[^:]+:(\d+)/v2", server.log())
    assert found, server.log()
    server.http_url = f"http://127.0.0.1:{found.group(1)}"  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_mutated_oip_grpc_requests_get_fair_answers(oip_server: Any, seed: int) -> None:
    rng = random.Random(seed)
    valid = oip_requests(harness.MODEL)
    mutator = harness.Mutator(seed, [data for data in valid.values() if data])
    faults = []
    with grpc.insecure_channel(oip_server.address, options=harness.CHANNEL_OPTIONS) as channel:
        for _ in range(PAYLOADS):
            method = rng.choice(sorted(valid))
            data = bytearray(valid[method])
            for _ in range(rng.randrange(1, 4)):
                data = mutator.mutate(data)
            call = channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
            try:
                call(bytes(data), timeout=30)
                code, message = "OK", ""
            except grpc.RpcError as error:
                code, message = error.code().name, error.details() or ""  # type: ignore[attr-defined]
            reason = harness.verdict(harness.Outcome(method, code, message), [str(Path.cwd())])
            if reason:
                faults.append((method, reason, code, message[:200]))
    assert not faults, f"seed {seed}: {faults[:5]}"
    assert oip_server.process.poll() is None


def _post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def test_mutated_oip_http_bodies_get_fair_answers(oip_server: Any, seed: int) -> None:
    rng = random.Random(seed)
    body = json.dumps(
        {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": [0.0] * 784}],
            "outputs": [{"name": "probabilities"}],
        }
    ).encode()
    mutator = harness.Mutator(seed, [body])
    faults = []
    for _ in range(PAYLOADS):
        data = bytearray(body)
        for _ in range(rng.randrange(1, 4)):
            data = mutator.mutate(data)
        if rng.random() < 0.2:  # a non-finite value in valid JSON
            data = bytearray(body.replace(b"0.0", b"NaN", 1))
        status, text = _post(f"{oip_server.http_url}/v2/models/{harness.MODEL}/infer", bytes(data))
        if status >= 500 or harness.HEAP_ADDRESS.search(text) or harness.CLASS_NAME.search(text):
            faults.append((status, text[:200]))
        elif status == 200 and ("NaN" in text or "Infinity" in text):
            faults.append((status, "a non-finite value in an OK answer"))
    assert not faults, f"seed {seed}: {faults[:5]}"
    assert oip_server.process.poll() is None
