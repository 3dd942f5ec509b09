"""A server refuses a port another process holds, while its own workers share theirs.

gRPC sets SO_REUSEPORT on every listening socket, which the workers of one server need, but which also
let a second server bind the same port silently and take part of the new connections.
"""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import harness
import pytest

from cnnserve.protos import inference_pb2

CONNECTIONS = 16


def models_seen(address: str) -> list[tuple[str, ...]]:
    """The model names each of several fresh connections is answered with."""
    seen = []
    for _ in range(CONNECTIONS):
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(address, options=options) as channel:
            response = harness.stub_on(channel).ListModels(inference_pb2.ListModelsRequest(), timeout=10)
        seen.append(tuple(model.name for model in response.models))
    return seen


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_server_refuses_the_port_of_a_running_one(
    serve, model_repository: Path, tmp_path: Path, workers: str
) -> None:
    first = serve(model_repository, "--workers", workers)
    empty = tmp_path / "empty-repository"
    empty.mkdir()

    second = serve(empty, "--workers", workers, port=first.port, expect_start=False)

    code = second.process.wait(30)
    assert code != 0
    assert f"port {first.port}" in second.log() and "in use" in second.log(), second.log()
    assert "Traceback" not in second.log()
    assert set(models_seen(first.address)) == {(harness.MODEL,)}
    assert first.process.poll() is None


def test_a_server_refuses_a_port_another_program_listens_on(serve, model_repository: Path) -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]

        server = serve(model_repository, "--workers", "1", port=port, expect_start=False)

        assert server.process.wait(30) != 0
        assert f"port {port}" in server.log() and "in use" in server.log(), server.log()
