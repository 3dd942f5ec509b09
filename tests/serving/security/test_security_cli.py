"""The same, through the command line: `cnnserve token`, `serve` with TLS and tokens, every client command."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Pki
from pki import Authority

from cnnserve.serving.security import tokens

MODEL = "mnist_cnn"


def cnnserve(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cnnserve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_token_commands(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    added = cnnserve("token", "add", "web", "--scopes", "infer", "--file", str(path))
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("cnns_") and "\n" not in token and "shown only once" in added.stderr
    assert (
        cnnserve(
            "token", "add", "ops", "--subject", "CN=ops,O=Acme", "--scopes", "admin", "--file", str(path)
        ).returncode
        == 0
    )
    listed = cnnserve("token", "list", env={"CNNSERVE_AUTH_TOKENS": str(path)})
    assert listed.returncode == 0
    assert "web" in listed.stdout and "subject:CN=ops,O=Acme" in listed.stdout and token not in listed.stdout
    assert token not in path.read_text()
    bad = cnnserve("token", "add", "x", "--scopes", "infer,root", "--file", str(path))
    assert bad.returncode == 2 and "unknown scope 'root'" in bad.stderr
    assert cnnserve("token", "revoke", "web", "--file", str(path)).returncode == 0
    assert cnnserve("token", "revoke", "web", "--file", str(path)).returncode == 1
    assert tokens.TokenStore(path).authenticate(token) is None


def test_serve_refuses_bad_tls_files_at_once(model_repository: Path, pki: Pki, tmp_path: Path) -> None:
    other_key = pki.ca.server().write(tmp_path, "other")[1]
    run = cnnserve(
        "serve",
        "--repo",
        str(model_repository),
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(other_key),
    )
    assert run.returncode == 2 and "do not form a valid pair" in run.stderr and "Traceback" not in run.stderr
    half = cnnserve("serve", "--repo", str(model_repository), env={"CNNSERVE_TLS_CERT": str(pki.server_cert)})
    assert half.returncode == 2 and "--tls-key" in half.stderr


def test_a_secured_server_through_the_command_line(
    model_repository: Path, serve_subprocess, digits, pki: Pki, tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens"
    web = cnnserve("token", "add", "web", "--scopes", "infer", "--file", str(token_file)).stdout.strip()
    (tmp_path / "web.token").write_text(web + "\n")
    health_port, http_port = free_port(), free_port()
    server = serve_subprocess(
        "--repo", str(model_repository), "--workers", "1", "--threads", "1", "--poll-interval", "0",
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.ca_file), "--auth-tokens", str(token_file),
        "--health-port", str(health_port), "--http-port", str(http_port),
        # Every call waits 0.4 s in its batch: two calls of one client overlap for sure (the cap below).
        "--max-in-flight-per-client", "1", "--batch-wait", "fixed", "--max-queue-delay-us", "400000",
    )  # fmt: skip
    mtls = [
        "--tls-ca",
        str(pki.ca_file),
        "--tls-cert",
        str(pki.client_cert),
        "--tls-key",
        str(pki.client_key),
    ]
    image = str(digits.png_paths[0])
    target = ["--server", server.address, "--model", MODEL]

    ok = cnnserve("classify", *target, *mtls, "--token-file", str(tmp_path / "web.token"), image)
    assert ok.returncode == 0 and image in ok.stdout, ok.stderr
    # The Open Inference Protocol over HTTPS and over gRPC: the same TLS and tokens.
    for protocol in (["--url", f"https://localhost:{http_port}"], [*target[:2], "--protocol", "v2"]):
        oip = cnnserve("classify", *protocol, "--model", MODEL, *mtls, image, env={"CNNSERVE_TOKEN": web})
        assert oip.returncode == 0 and image in oip.stdout, (protocol, oip.stderr)
    no_token = cnnserve("classify", *target, *mtls, image)
    assert no_token.returncode == 1 and "UNAUTHENTICATED" in no_token.stderr
    no_cert = cnnserve(
        "classify",
        *target,
        "--tls-ca",
        str(pki.ca_file),
        "--timeout",
        "5",
        image,
        env={"CNNSERVE_TOKEN": web},
    )
    assert no_cert.returncode == 1 and "UNAVAILABLE" in no_cert.stderr
    other_ca = Authority("another CA").write(tmp_path, "other-ca")
    expired = pki.ca.client("late", expired=True).write(tmp_path, "expired")
    refused_tls = {
        "another CA": ["--tls-ca", str(other_ca), *mtls[2:]],
        "an expired certificate": [*mtls[:2], "--tls-cert", str(expired[0]), "--tls-key", str(expired[1])],
    }
    for what, flags in refused_tls.items():
        run = cnnserve("classify", *target, *flags, "--timeout", "5", image, env={"CNNSERVE_TOKEN": web})
        assert run.returncode == 1 and "UNAVAILABLE" in run.stderr, what
    explain = cnnserve(
        "explain", *target, *mtls, "--patch-size", "14", "--stride", "14", image, env={"CNNSERVE_TOKEN": web}
    )
    assert (
        explain.returncode == 1
        and "PERMISSION_DENIED" in explain.stderr
        and "'explain' scope" in explain.stderr
    )

    results = tmp_path / "predictions.csv"
    folder = Path(digits.png_paths[0]).parent
    job = cnnserve(
        "classify-folder", str(folder), "--server", server.address, "--model", MODEL,
        "--output", str(results), *mtls, "--progress", "none", env={"CNNSERVE_TOKEN": web},
    )  # fmt: skip
    assert job.returncode == 0, job.stderr
    assert len(results.read_text().splitlines()) == len(digits.png_paths) + 1

    probe = [sys.executable, "-m", "cnnserve.serving.grpc.healthcheck"]
    plain = subprocess.run(
        probe, env={**os.environ, "CNNSERVE_HEALTH_PORT": str(health_port)}, capture_output=True
    )
    assert plain.returncode == 0, plain.stderr
    direct = subprocess.run([*probe, "--address", server.address, *mtls], capture_output=True)
    assert direct.returncode == 0, direct.stderr

    # The per-client cap: a second call of `web` while its first is in flight is shed, others go on.
    from cnnserve.serving.grpc.client import CnnserveClient, ServerError

    other = cnnserve("token", "add", "other", "--scopes", "infer", "--file", str(token_file)).stdout.strip()
    time.sleep(1.1)  # the server looks at the token file at most once a second
    tls_files = {"tls_ca": pki.ca_file, "tls_cert": pki.client_cert, "tls_key": pki.client_key}
    with (
        CnnserveClient(server.address, token=web, **tls_files) as first,
        CnnserveClient(server.address, token=web, **tls_files) as second,
        CnnserveClient(server.address, token=other, **tls_files) as neighbour,
    ):
        in_flight = threading.Thread(target=first.classify, args=([digits.png[0]], MODEL))
        in_flight.start()
        time.sleep(0.15)
        with pytest.raises(ServerError) as shed:
            second.classify([digits.png[0]], MODEL)
        assert shed.value.code.name == "RESOURCE_EXHAUSTED"
        assert neighbour.classify([digits.png[0]], MODEL).model == MODEL
        in_flight.join(10)

    # Rotation under the running process: the next client trusts only the new CA and gets in.
    renewed_ca = Authority("renewed CA")
    renewed = renewed_ca.server("renewed")
    for path, data in ((pki.server_key, renewed.key), (pki.server_cert, renewed.cert)):
        path.with_suffix(".new").write_bytes(data)
        os.replace(path.with_suffix(".new"), path)
    new_ca_file = renewed_ca.write(tmp_path, "renewed-ca")
    after = cnnserve(
        "classify", *target, "--tls-ca", str(new_ca_file), "--tls-cert", str(pki.client_cert),
        "--tls-key", str(pki.client_key), image, env={"CNNSERVE_TOKEN": web},
    )  # fmt: skip
    assert after.returncode == 0, after.stderr

    # The token file is re-read: a revoked client is out within a second.
    assert cnnserve("token", "revoke", "web", "--file", str(token_file)).returncode == 0
    time.sleep(1.1)
    renewed_mtls = ["--tls-ca", str(new_ca_file), *mtls[2:]]
    revoked = cnnserve("classify", *target, *renewed_mtls, image, env={"CNNSERVE_TOKEN": web})
    assert revoked.returncode == 1 and "UNAUTHENTICATED" in revoked.stderr

    server.signal()
    assert server.wait() == 0
    log = server.log()
    assert "mutual TLS, tokens from" in log and "TLS material reloaded" in log
    # Once per client and kind: UNAUTHENTICATED (no token, then the revoked one: the same peer within a
    # minute), PERMISSION_DENIED and RESOURCE_EXHAUSTED for `web`.
    assert log.count("refused cnnserve.v1") == 3, log
    assert web not in log and other not in log


def test_a_warning_when_exposed_without_tls_or_tokens(model_repository: Path, start_server, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        start_server(model_repository, host="0.0.0.0")
    assert "with neither TLS nor tokens" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        start_server(model_repository, host="127.0.0.1")
    assert "neither TLS nor tokens" not in caplog.text
