"""Claiming the server's port: refused when another process holds it, shared with our own workers."""

from __future__ import annotations

import socket

import pytest

from cnnserve.serving.grpc.ports import PortInUseError, claim_port


def _listening(port: int = 0, reuseport: bool = False) -> socket.socket:
    sock = socket.socket()
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.mark.parametrize("reuseport", [False, True])
def test_a_port_another_socket_listens_on_is_refused(reuseport: bool) -> None:
    with _listening(reuseport=reuseport) as other:
        port = other.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is in use by another process"):
            claim_port("127.0.0.1", port)


def test_workers_join_a_claim_and_a_second_claim_is_refused() -> None:
    with claim_port("127.0.0.1", 0) as claim:
        port = claim.getsockname()[1]
        with _listening(port, reuseport=True) as worker:  # what gRPC does in each worker
            assert worker.getsockname()[1] == port
            with pytest.raises(PortInUseError):
                claim_port("127.0.0.1", port)
        with pytest.raises(PortInUseError):  # the claim alone holds the port too
            claim_port("127.0.0.1", port)


def test_a_port_is_claimable_again_once_released() -> None:
    claim = claim_port("127.0.0.1", 0)
    port = claim.getsockname()[1]
    claim.close()
    claim_port("127.0.0.1", port).close()
