"""Model versions broken under a running server: deleted, corrupted or removed files.

The server polls its repository (every 0.5 s here); what it reports must be the truth about what it
can serve, in words that name no server path.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import harness

from cnnserve.protos import inference_pb2

MODEL = harness.MODEL


def versions(address: str) -> dict[int, tuple[str, str]]:
    response = harness.stub(address).ListModels(inference_pb2.ListModelsRequest(), timeout=10)
    return {v.version: (v.state, v.reason) for m in response.models if m.name == MODEL for v in m.versions}


def wait_for_state(address: str, version: int, state: str, timeout: float = 30) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        seen = versions(address).get(version, ("", ""))
        if seen[0] == state or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def calls(address: str, image: bytes) -> dict[str, tuple[str, str]]:
    stub = harness.stub(address)
    return {
        "Classify": harness.status_of(
            stub.Classify, harness.classify_request(inference_pb2.Image(encoded=image)), timeout=10
        ),
        "GetFilters": harness.status_of(
            stub.GetFilters, inference_pb2.FiltersRequest(model=MODEL, layer="conv1"), timeout=10
        ),
        "GetModelMetadata": harness.status_of(
            stub.GetModelMetadata, inference_pb2.ModelMetadataRequest(model=MODEL), timeout=10
        ),
    }


def test_a_deleted_model_file_makes_the_version_unavailable(serve, repo_copy: Path, digit_png: bytes) -> None:
    server = serve(repo_copy, "--workers", "1")
    assert versions(server.address)[1][0] == "AVAILABLE"

    (repo_copy / MODEL / "1" / "model.onnx").unlink()

    state, reason = wait_for_state(server.address, 1, "UNAVAILABLE")
    assert state == "UNAVAILABLE" and "model.onnx" in reason, (state, reason)
    assert str(repo_copy) not in reason and not reason.startswith("/"), reason
    for rpc, (code, message) in calls(server.address, digit_png).items():
        assert code == "UNAVAILABLE", (rpc, code, message)
        assert str(repo_copy) not in message, (rpc, message)


def test_a_corrupted_model_file_is_reported_and_never_internal(
    serve, repo_copy: Path, digit_png: bytes
) -> None:
    server = serve(repo_copy, "--workers", "1")
    (repo_copy / MODEL / "1" / "model.onnx").write_bytes(b"\x08\x07 not an onnx model")

    deadline = time.monotonic() + 30
    while "model.onnx" not in versions(server.address)[1][1] and time.monotonic() < deadline:
        time.sleep(0.1)
    state, reason = versions(server.address)[1]
    assert "model.onnx" in reason and str(repo_copy) not in reason, (state, reason)
    for rpc, (code, message) in calls(server.address, digit_png).items():
        assert code in ("OK", "UNAVAILABLE"), (rpc, code, message)
        assert str(repo_copy) not in message, (rpc, message)


def test_a_removed_version_and_model_leave_cleanly(serve, repo_copy: Path, digit_png: bytes) -> None:
    shutil.copytree(repo_copy / MODEL / "1", repo_copy / MODEL / "2")
    server = serve(repo_copy, "--workers", "1")
    assert versions(server.address)[2][0] == "AVAILABLE"

    shutil.rmtree(repo_copy / MODEL / "2")
    state, _ = wait_for_state(server.address, 1, "AVAILABLE")
    deadline = time.monotonic() + 30
    while 2 in versions(server.address) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert 2 not in versions(server.address) and state == "AVAILABLE", versions(server.address)
    assert calls(server.address, digit_png)["Classify"][0] == "OK"

    shutil.rmtree(repo_copy / MODEL)
    deadline = time.monotonic() + 30
    while versions(server.address) and time.monotonic() < deadline:
        time.sleep(0.1)
    for rpc, (code, message) in calls(server.address, digit_png).items():
        assert code == "NOT_FOUND", (rpc, code, message)
        assert str(repo_copy) not in message
    assert server.process.poll() is None and "Traceback" not in server.log()
