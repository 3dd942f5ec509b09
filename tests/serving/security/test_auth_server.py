"""Tokens and scopes on a real server: refusals, the re-read token file, logs, metrics, the per-client cap."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import ClientRecorder, Pki

from cnnserve.serving.grpc.client import CnnserveClient, ServerError
from cnnserve.serving.insight.explainer import ExplainOptions
from cnnserve.serving.security import tokens

MODEL = "mnist_cnn"


def refused(client: CnnserveClient, image: bytes, code: grpc.StatusCode) -> str:
    with pytest.raises(ServerError) as error:
        client.classify([image], MODEL)
    assert error.value.code == code, error.value
    return error.value.message


def test_tokens_and_scopes(
    model_repository, start_server, digits, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "tokens"
    infer = tokens.add_token(token_file, "web", ["infer"])
    analyst = tokens.add_token(token_file, "analyst", ["infer", "explain"])
    with caplog.at_level(logging.DEBUG):
        server = start_server(model_repository, auth_tokens=token_file)
        recorder = ClientRecorder()
        server.server.hooks.add(recorder)
        image = digits.png[0]
        with CnnserveClient(server.address) as anonymous:
            message = refused(anonymous, image, grpc.StatusCode.UNAUTHENTICATED)
            assert "needs a bearer token" in message
            assert anonymous.health() == "SERVING"  # health needs no token
        with CnnserveClient(server.address, token="cnns_not-a-token") as wrong:
            refused(wrong, image, grpc.StatusCode.UNAUTHENTICATED)
        with CnnserveClient(server.address, token=infer) as web:
            assert web.classify([image], MODEL).model == MODEL
            with pytest.raises(ServerError) as denied:
                web.explain(image, MODEL, ExplainOptions(patch_size=14, stride=14))
            assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert "'web' lacks the 'explain' scope" in denied.value.message
        with CnnserveClient(server.address, token=analyst) as allowed:
            assert allowed.explain(image, MODEL, ExplainOptions(patch_size=14, stride=14)).model == MODEL

        # The file is re-read when it changes: a new client gets in, a revoked one is out.
        late = tokens.add_token(token_file, "late", ["infer"])
        tokens.revoke(token_file, "web")
        time.sleep(1.1)  # the server looks at the file at most once a second
        with CnnserveClient(server.address, token=late) as newcomer:
            assert newcomer.classify([image], MODEL).model == MODEL
        with CnnserveClient(server.address, token=infer) as revoked:
            refused(revoked, image, grpc.StatusCode.UNAUTHENTICATED)

    # Who called is on the call, for access logs and traces; refusals are counted by client and method.
    assert ("Classify", "web") in recorder.clients and ("Explain", "analyst") in recorder.clients
    assert ("Classify", "late") in recorder.clients
    refusals = {
        (client, method, code): server.metric(
            "cnnserve_refused_calls_total", {"client": client, "method": method, "code": code}
        )
        for client, method, code in [
            ("unauthenticated", "Classify", "UNAUTHENTICATED"),
            ("web", "Explain", "PERMISSION_DENIED"),
        ]
    }
    assert refusals == {
        ("unauthenticated", "Classify", "UNAUTHENTICATED"): 3,
        ("web", "Explain", "PERMISSION_DENIED"): 1,
    }
    # Logged once per client and kind a minute, never with a token in it.
    logged = [record.getMessage() for record in caplog.records]
    assert sum("refused" in line for line in logged) == 2, logged
    for secret in (infer, analyst, late, "cnns_not-a-token"):
        assert not any(secret in line for line in logged)


def test_certificate_identities_get_scopes_from_the_token_file(
    model_repository, start_server, digits, pki: Pki, tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens"
    tokens.add_certificate(token_file, "batch", "san", "spiffe://acme/batch", ["infer"])
    ops = pki.ca.client("ops", organisation="Acme, Inc.")  # no SAN: named by its subject
    tokens.add_certificate(token_file, "ops", "subject", ops.subject, ["infer", "explain"])
    ops_cert, ops_key = ops.write(tmp_path, "ops")
    server = start_server(
        model_repository,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca_file,
        auth_tokens=token_file,
    )
    with CnnserveClient(
        server.address, tls_ca=pki.ca_file, tls_cert=pki.client_cert, tls_key=pki.client_key
    ) as batch:
        assert batch.classify([digits.png[0]], MODEL).model == MODEL
        with pytest.raises(ServerError) as denied:
            batch.filters(MODEL, "conv1")
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    with CnnserveClient(server.address, tls_ca=pki.ca_file, tls_cert=ops_cert, tls_key=ops_key) as named:
        assert named.filters(MODEL, "conv1").model == MODEL  # gRPC reports the subject as RFC 4514 does
    unnamed = pki.ca.client("someone else").write(tmp_path, "unnamed")
    with CnnserveClient(server.address, tls_ca=pki.ca_file, tls_cert=unnamed[0], tls_key=unnamed[1]) as other:
        assert "not one the token file names" in refused(
            other, digits.png[0], grpc.StatusCode.UNAUTHENTICATED
        )


def test_the_per_client_cap_sheds_one_client_while_others_go_on(
    model_repository, start_server, digits, tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens"
    greedy_token = tokens.add_token(token_file, "greedy", ["infer"])
    polite_token = tokens.add_token(token_file, "polite", ["infer"])
    # Every batch waits 1 s to fill: a call stays in flight that long, deterministically.
    server = start_server(
        model_repository,
        auth_tokens=token_file,
        max_in_flight_per_client=1,
        batch_wait="fixed",
        max_queue_delay_us=1_000_000,
    )
    image = digits.png[0]
    with (
        CnnserveClient(server.address, token=greedy_token) as greedy,
        CnnserveClient(server.address, token=polite_token) as polite,
    ):
        first: list[object] = []
        in_flight = threading.Thread(target=lambda: first.append(greedy.classify([image], MODEL)))
        in_flight.start()
        time.sleep(0.3)
        message = refused(greedy, image, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "'greedy' already has 1 call(s) in flight (at most 1)" in message
        assert polite.classify([image], MODEL).model == MODEL
        in_flight.join(10)
        assert len(first) == 1
        assert greedy.classify([image], MODEL).model == MODEL  # room again
    assert (
        server.metric(
            "cnnserve_refused_calls_total",
            {"client": "greedy", "method": "Classify", "code": "RESOURCE_EXHAUSTED"},
        )
        == 1
    )
