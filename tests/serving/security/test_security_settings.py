"""Security settings from flags and CNNSERVE_* variables, transport limits, and the clients' credentials."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cnnserve.serving.errors import SettingsError
from cnnserve.serving.grpc.client import CnnserveClient, ServerError
from cnnserve.serving.grpc.server import grpc_options
from cnnserve.serving.security.client_credentials import ClientSecurityError, client_security
from cnnserve.serving.settings import ServerSettings, resolve

MODEL = "mnist_cnn"


def test_tls_settings_come_from_flags_or_variables_and_go_together() -> None:
    env = {"CNNSERVE_TLS_CERT": "/certs/tls.crt", "CNNSERVE_TLS_KEY": "/certs/tls.key"}
    settings = resolve({"repo": "r", "auth_tokens": "/t/tokens"}, environ=env, cpu_count=2)
    assert (settings.tls_cert, settings.tls_key, settings.auth_tokens) == (
        Path("/certs/tls.crt"),
        Path("/certs/tls.key"),
        Path("/t/tokens"),
    )
    assert settings.tls and settings.authenticates
    with pytest.raises(SettingsError, match="both the certificate and its key"):
        resolve({"repo": "r", "tls_cert": "c.pem"}, environ={}, cpu_count=2)
    with pytest.raises(SettingsError, match="needs TLS itself"):
        resolve({"repo": "r"}, environ={"CNNSERVE_TLS_CLIENT_CA": "ca.pem"}, cpu_count=2)
    with pytest.raises(SettingsError, match="CNNSERVE_MAX_IN_FLIGHT_PER_CLIENT='-1' must be at least 0"):
        resolve({"repo": "r"}, environ={"CNNSERVE_MAX_IN_FLIGHT_PER_CLIENT": "-1"}, cpu_count=2)
    assert resolve({"repo": "r", "reflection": "false"}, environ={}, cpu_count=2).reflection is False


def test_the_limits_reach_grpc() -> None:
    options = dict(
        grpc_options(ServerSettings(repo=Path("r"), max_connection_age_s=60, max_metadata_bytes=4096))
    )
    assert options["grpc.max_connection_age_ms"] == 60_000
    assert options["grpc.max_metadata_size"] == 4096
    assert options["grpc.max_concurrent_streams"] == 128
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000


def test_oversized_metadata_is_refused(model_repository, start_server, digits) -> None:
    server = start_server(model_repository, max_metadata_bytes=4096)
    with CnnserveClient(server.address) as client:
        assert client.classify([digits.png[0]], MODEL).model == MODEL
        list_models = client.channel.unary_unary("/cnnserve.v1.InferenceService/ListModels")
        with pytest.raises(grpc.RpcError) as error:
            list_models(b"", metadata=(("x-padding", "x" * 8192),), timeout=5)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value


def test_client_credentials_from_flags_files_and_variables(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("cnns_from-file\n")
    assert client_security(token="cnns_flag", environ={"CNNSERVE_TOKEN": "cnns_env"}).token == "cnns_flag"
    assert client_security(environ={"CNNSERVE_TOKEN": "cnns_env"}).token == "cnns_env"
    assert client_security(environ={"CNNSERVE_TOKEN_FILE": str(token_file)}).token == "cnns_from-file"
    security = client_security(token_file=token_file, environ={})
    assert security.metadata() == (("authorization", "Bearer cnns_from-file"),)
    assert "cnns_from-file" not in repr(security) and not security.tls
    with pytest.raises(ClientSecurityError, match="--tls-cert and --tls-key go together"):
        client_security(tls_cert=tmp_path / "c.pem", environ={})
    with pytest.raises(ClientSecurityError, match=r"cannot read the CA certificate .*missing\.pem"):
        client_security(tls_ca=tmp_path / "missing.pem", environ={})
    assert client_security(tls=True, environ={}).tls


def test_a_server_error_never_shows_the_token(model_repository, start_server, digits, tmp_path: Path) -> None:
    from cnnserve.serving.security import tokens

    path = tmp_path / "tokens"
    tokens.add_token(path, "someone", ["infer"])
    server = start_server(model_repository, auth_tokens=path)
    with (
        CnnserveClient(server.address, token="cnns_secret-guess") as client,
        pytest.raises(ServerError) as error,
    ):
        client.classify([digits.png[0]], MODEL)
    assert "cnns_secret-guess" not in str(error.value)
