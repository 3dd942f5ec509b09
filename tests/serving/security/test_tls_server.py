"""TLS and mutual TLS on a real server, with real certificates; rotation without a restart."""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path

import grpc
import pytest
from conftest import ClientRecorder, Pki
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import Authority

from cnnserve.serving.grpc.client import CnnserveClient, ServerError
from cnnserve.serving.grpc.server import NOT_SERVING, SERVING

MODEL = "mnist_cnn"


def replace(path: Path, data: bytes) -> None:
    """Write the way a renewal does: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def served_subject(port: int) -> str:
    """The subject of the certificate a new TLS connection to the port gets."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    import socket

    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def test_tls_works_with_the_right_ca_only(model_repository, start_server, digits, pki: Pki) -> None:
    server = start_server(model_repository, tls_cert=pki.server_cert, tls_key=pki.server_key)
    with CnnserveClient(server.address, tls_ca=pki.ca_file) as client:
        assert client.classify(digits.png[:2], MODEL).model == MODEL
    other = Authority("another CA").write(pki.ca_file.parent, "other-ca")
    for refused in (CnnserveClient(server.address, tls_ca=other, timeout=3), CnnserveClient(server.address)):
        with refused, pytest.raises(ServerError) as error:
            refused.classify(digits.png[:1], MODEL)
        assert error.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_missing_foreign_and_expired_client_certificates(
    model_repository, start_server, digits, pki: Pki, tmp_path: Path
) -> None:
    server = start_server(
        model_repository, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca_file
    )
    recorder = ClientRecorder()
    server.server.hooks.add(recorder)
    with CnnserveClient(
        server.address, tls_ca=pki.ca_file, tls_cert=pki.client_cert, tls_key=pki.client_key
    ) as ok:
        assert ok.classify(digits.png[:1], MODEL).model == MODEL
    foreign = Authority("another CA").client("intruder").write(tmp_path, "foreign")
    expired = pki.ca.client("late", expired=True).write(tmp_path, "expired")
    attempts = {
        "no certificate": CnnserveClient(server.address, tls_ca=pki.ca_file, timeout=3),
        "another CA": CnnserveClient(
            server.address, tls_ca=pki.ca_file, tls_cert=foreign[0], tls_key=foreign[1], timeout=3
        ),
        "expired": CnnserveClient(
            server.address, tls_ca=pki.ca_file, tls_cert=expired[0], tls_key=expired[1], timeout=3
        ),
    }
    for what, client in attempts.items():
        with client, pytest.raises(ServerError) as error:
            client.classify(digits.png[:1], MODEL)
        assert error.value.code == grpc.StatusCode.UNAVAILABLE, what
    # Mutual TLS without a token file: the certificate's first SAN names the client on the call.
    assert recorder.clients == [("Classify", "spiffe://acme/batch")]


def test_rotation_serves_new_connections_the_new_certificate_and_keeps_old_ones(
    model_repository, start_server, digits, pki: Pki
) -> None:
    server = start_server(model_repository, tls_cert=pki.server_cert, tls_key=pki.server_key)
    assert served_subject(server.port) == "CN=cnnserve"
    old = CnnserveClient(server.address, tls_ca=pki.ca_file)
    assert old.classify(digits.png[:1], MODEL).model == MODEL

    # A stream in flight on the old connection: health Watch, answered again whenever health changes.
    updates: list[int] = []
    watching = threading.Event()

    def watch() -> None:
        stream = health_pb2_grpc.HealthStub(old.channel).Watch(health_pb2.HealthCheckRequest(service=MODEL))
        for response in stream:
            updates.append(response.status)
            watching.set()
            if len(updates) == 2:
                stream.cancel()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert watching.wait(10)

    new_ca = Authority("renewed CA")
    renewed = new_ca.server("cnnserve renewed")
    renewed_ca = new_ca.write(pki.ca_file.parent, "renewed-ca")
    replace(pki.server_key, renewed.key)
    replace(pki.server_cert, renewed.cert)

    assert served_subject(server.port) == "CN=cnnserve renewed"  # the very next handshake
    with CnnserveClient(server.address, tls_ca=renewed_ca) as fresh:
        assert fresh.classify(digits.png[:1], MODEL).model == MODEL
    with CnnserveClient(server.address, tls_ca=pki.ca_file, timeout=3) as stale, pytest.raises(ServerError):
        stale.classify(digits.png[:1], MODEL)  # trusts only the old CA: a new connection is refused
    # The old connection goes on: a new call on it (it would fail to reconnect, trusting the old CA only),
    # and the stream that was in flight gets its next message.
    assert old.classify(digits.png[:1], MODEL).model == MODEL
    server.run(server.server.health.set(MODEL, NOT_SERVING))
    watcher.join(10)
    assert updates == [SERVING, NOT_SERVING]
    old.close()
