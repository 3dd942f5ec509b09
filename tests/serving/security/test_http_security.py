"""The Open Inference Protocol over HTTP gets the gRPC port's TLS, rotation, tokens and scopes."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ClientRecorder, Pki

from cnnserve.serving.errors import ServerUnavailableError
from cnnserve.serving.http.client import HttpServerError, OipHttpClient
from cnnserve.serving.security import tokens
from cnnserve.serving.security.client_credentials import client_security

MODEL = "mnist_cnn"


def test_https_with_mutual_tls_tokens_and_scopes(
    model_repository, start_server, digits, pki: Pki, tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens"
    web = tokens.add_token(token_file, "web", ["infer"])
    tokens.add_certificate(token_file, "batch", "san", "spiffe://acme/batch", ["infer"])
    server = start_server(
        model_repository,
        http_port=0,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca_file,
        auth_tokens=token_file,
    )
    recorder = ClientRecorder()
    server.server.hooks.add(recorder)
    url = f"https://localhost:{server.server.http_port}"
    certificate = {"tls_ca": pki.ca_file, "tls_cert": pki.client_cert, "tls_key": pki.client_key}

    # A token, then the client certificate the token file names: both classify.
    with_token = OipHttpClient(url, security=client_security(token=web, environ={}, **certificate))
    assert with_token.classify([digits.png[0]], MODEL).model == MODEL
    by_certificate = OipHttpClient(url, security=client_security(environ={}, **certificate))
    assert by_certificate.classify([digits.png[0]], MODEL).model == MODEL
    assert [client for _, client in recorder.clients] == ["web", "web", "batch", "batch"]

    # Repository control needs `admin`: 403.
    with pytest.raises(HttpServerError) as denied:
        with_token.request("POST", f"/v2/repository/models/{MODEL}/unload", b"{}")
    assert denied.value.status == 403 and "lacks the 'admin' scope" in str(denied.value)

    # A wrong token: 401 with the scheme to use; a plain-HTTP client cannot even connect.
    context = ssl.create_default_context(cadata=pki.ca.cert.decode())
    context.load_cert_chain(pki.client_cert, pki.client_key)
    request = urllib.request.Request(
        f"{url}/v2/models/{MODEL}", headers={"Authorization": "Bearer cnns_wrong"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10, context=context)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"] == 'Bearer realm="cnnserve"'
    assert "not valid" in json.loads(refused.value.read())["error"]
    with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=10, context=context) as ready:
        assert ready.status == 200  # health needs no token
    plain = OipHttpClient(f"http://127.0.0.1:{server.server.http_port}")
    with pytest.raises((ServerUnavailableError, HttpServerError)):
        plain.classify([digits.png[0]], MODEL)
    # Without a client certificate the TLS layer refuses the connection outright.
    anonymous = OipHttpClient(url, security=client_security(tls_ca=pki.ca_file, token=web, environ={}))
    with pytest.raises(ServerUnavailableError):
        anonymous.classify([digits.png[0]], MODEL)
