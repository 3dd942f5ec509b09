"""Fixtures of the security tests: a certificate authority with server and client certificates on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from pki import Authority, Issued

from cnnserve.serving.core.calls import Call


@dataclass(frozen=True)
class Pki:
    """One CA, its certificate file, and a server and a client certificate it issued, written to files."""

    ca: Authority
    ca_file: Path
    server: Issued
    server_cert: Path
    server_key: Path
    client: Issued
    client_cert: Path
    client_key: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = Authority("cnnserve test CA")
    server, client = ca.server(), ca.client("batch job", organisation="Acme", uris=("spiffe://acme/batch",))
    folder = tmp_path / "tls"
    server_cert, server_key = server.write(folder, "server")
    client_cert, client_key = client.write(folder, "client")
    return Pki(ca, ca.write(folder), server, server_cert, server_key, client, client_cert, client_key)


class ClientRecorder:
    """A call hook that records who each call was from, the way an access log reads it (`Call.client`)."""

    def __init__(self) -> None:
        self.clients: list[tuple[str, str]] = []

    def begin(self, call: Call) -> None:
        self.clients.append((call.method, call.client))

    def end(self, call: Call) -> None:
        pass
