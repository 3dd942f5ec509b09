"""TLS material: checked at load, re-read when the files change, a half-renewed pair never served."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from pki import Authority

from cnnserve.serving.security.tls import (
    TlsConfigError,
    TlsFiles,
    TlsWatcher,
    auth_context,
    load_material,
    server_ssl_context,
)


def replace(path: Path, data: bytes) -> None:
    """Write the way a renewal does: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_load_checks_the_pair_and_names_the_file(tmp_path: Path) -> None:
    ca = Authority()
    cert, key = ca.server().write(tmp_path, "server")
    _, other_key = ca.server().write(tmp_path, "other")
    assert load_material(TlsFiles(cert, key)).cert_chain == cert.read_bytes()
    with pytest.raises(TlsConfigError, match=r"server\.crt and key .*other\.key do not form a valid pair"):
        load_material(TlsFiles(cert, other_key))
    with pytest.raises(TlsConfigError, match=r"cannot read the TLS private key .*missing\.key"):
        load_material(TlsFiles(cert, tmp_path / "missing.key"))
    (tmp_path / "bad-ca.crt").write_text("not a certificate")
    with pytest.raises(TlsConfigError, match=r"client CA .*bad-ca\.crt holds no valid PEM"):
        load_material(TlsFiles(cert, key, tmp_path / "bad-ca.crt"))


def test_the_watcher_takes_a_whole_new_pair_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca = Authority()
    first, second = ca.server("first"), ca.server("second")
    cert, key = first.write(tmp_path, "tls")
    watcher = TlsWatcher(TlsFiles(cert, key))
    assert watcher.current() == (0, load_material(TlsFiles(cert, key)))
    replace(cert, second.cert)  # the certificate is renewed, its key not yet
    generation, material = watcher.current()
    assert (generation, material.cert_chain) == (0, first.cert)
    assert "do not form a valid pair" in caplog.text
    replace(key, second.key)
    generation, material = watcher.current()
    assert (generation, material.cert_chain, material.key) == (1, second.cert, second.key)
    assert watcher.current()[0] == 1


async def _peer_common_name(port: int, ca: bytes) -> str:
    context = ssl.create_default_context(cadata=ca.decode())
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def test_an_ssl_context_for_http_serves_the_renewed_certificate(tmp_path: Path) -> None:
    old_ca, new_ca = Authority("old CA"), Authority("new CA")
    cert, key = old_ca.server("old").write(tmp_path, "tls")
    watcher = TlsWatcher(TlsFiles(cert, key))

    async def scenario() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ssl_context(watcher))
        port = server.sockets[0].getsockname()[1]
        assert await _peer_common_name(port, old_ca.cert) == "CN=old"
        renewed = new_ca.server("new")
        replace(key, renewed.key)
        replace(cert, renewed.cert)
        assert await _peer_common_name(port, new_ca.cert) == "CN=new"  # no SNI (an IP address): still new
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


def test_mutual_tls_over_http_names_the_client_as_grpc_does(tmp_path: Path) -> None:
    """An HTTP port's SSLContext verifies client certificates; `auth_context` reports one like gRPC."""
    ca = Authority()
    cert, key = ca.server().write(tmp_path, "server")
    client = ca.client("batch job", organisation="Acme, Inc.", uris=("spiffe://acme/batch",))
    client_cert, client_key = client.write(tmp_path, "client")
    watcher = TlsWatcher(TlsFiles(cert, key, ca.write(tmp_path)))
    seen: list[dict[str, list[bytes]]] = []

    async def scenario() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(auth_context(writer.get_extra_info("peercert")))
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ssl_context(watcher))
        port = server.sockets[0].getsockname()[1]
        context = ssl.create_default_context(cadata=ca.cert.decode())
        context.load_cert_chain(client_cert, client_key)
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    assert client.subject == "O=Acme\\, Inc.,CN=batch job"  # RFC 4514: the last RDN first
    assert seen[0] == {
        "x509_subject": [client.subject.encode()],
        "x509_subject_alternative_name": [b"spiffe://acme/batch"],
    }
