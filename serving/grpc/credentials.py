"""TLS for gRPC: the server's dynamic credentials (certificate rotation) and the clients' channels.

The server hands gRPC a certificate fetcher: gRPC calls it before every TLS handshake, and it answers with
new material only when the files changed (`security/tls.py`), so new connections get a renewed certificate
while existing ones keep theirs. Clients build their channel from a `ClientSecurity` (`security/
client_credentials.py`): plaintext, or TLS with a CA, a client certificate and a server-name override.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import grpc

from cnnserve.serving.security.client_credentials import ClientSecurity

if TYPE_CHECKING:  # the health probe imports this module: it stays free of ssl and the TLS files' code
    from cnnserve.serving.security.tls import TlsMaterial, TlsWatcher

LOG = logging.getLogger(__name__)


def _configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert_chain)], root_certificates=material.client_ca
    )


def server_credentials(watcher: TlsWatcher) -> grpc.ServerCredentials:
    """Dynamic server credentials: before each handshake gRPC asks whether the files changed."""
    generation, material = watcher.current()
    taken = [generation]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            generation, material = watcher.current()
        except Exception:  # never let a surprise fail the handshake: gRPC keeps the previous certificate
            LOG.exception("checking the TLS files failed")
            return None
        if generation == taken[0]:
            return None  # unchanged: gRPC keeps what it has
        taken[0] = generation
        return _configuration(material)

    return grpc.dynamic_ssl_server_credentials(
        _configuration(material), fetch, require_client_authentication=material.mutual
    )


def channel(address: str, security: ClientSecurity | None, options: list[tuple[str, Any]]) -> grpc.Channel:
    """A blocking channel to `address`: TLS when `security` asks for it, plaintext otherwise."""
    if security is None or not security.tls:
        if security is not None:
            security.warn_if_exposed(address)
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=security.ca, private_key=security.key, certificate_chain=security.cert
    )
    if security.server_name is not None:
        options = [*options, ("grpc.ssl_target_name_override", security.server_name)]
    return grpc.secure_channel(address, credentials, options=options)
