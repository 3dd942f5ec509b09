"""The auth gate as a call hook: tokens, scopes, certificate identities, the per-client cap, refusal logs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from cnnserve.serving.core.calls import Call
from cnnserve.serving.errors import Status
from cnnserve.serving.security import tokens
from cnnserve.serving.security.gate import (
    ANONYMOUS,
    ClientBusyError,
    Gate,
    GatePolicy,
    PermissionDeniedError,
    RefusedError,
    UnauthenticatedError,
)


@dataclass(frozen=True)
class Source:
    """What a transport tells the hooks about a call (a gRPC context's three methods, as plain values)."""

    metadata: tuple[tuple[str, str], ...] = ()
    address: str = "ipv4:127.0.0.1:5000"
    subject: str | None = None
    sans: tuple[str, ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return self.address

    def auth_context(self) -> dict[str, list[bytes]]:
        if self.subject is None and not self.sans:
            return {}
        subject = [] if self.subject is None else [self.subject.encode()]
        return {"x509_subject": subject, "x509_subject_alternative_name": [s.encode() for s in self.sans]}


def call(
    method: str,
    authorization: str | None = None,
    peer: str = "ipv4:127.0.0.1:5000",
    subject: str | None = None,
    sans: tuple[str, ...] = (),
) -> Call:
    metadata = () if authorization is None else (("authorization", authorization),)
    return Call("cnnserve.v1", method, "mnist_cnn", Source(metadata, peer, subject, sans))


def admit(gate: Gate, method: str, authorization: str | None = None, **kwargs: object) -> str:
    the_call = call(method, authorization, **kwargs)  # type: ignore[arg-type]
    gate.begin(the_call)
    return the_call.client


@pytest.fixture
def token_file(tmp_path: Path) -> tuple[Path, str, str]:
    path = tmp_path / "tokens"
    infer = tokens.add_token(path, "infer-only", ["infer"])
    admin = tokens.add_token(path, "ops", ["infer", "explain", "admin"])
    tokens.add_certificate(path, "batch", "san", "spiffe://acme/batch", ["infer"])
    return path, infer, admin


def gate_with(path: Path, refused: list[tuple[str, str, str]] | None = None, **policy: object) -> Gate:
    store = tokens.TokenStore(path, check_interval=0.0)
    counter = None if refused is None else (lambda *labels: refused.append(labels))
    return Gate(GatePolicy(tokens=store, **policy), on_refused=counter)  # type: ignore[arg-type]


def test_without_credentials_configured_everyone_is_anonymous() -> None:
    gate = Gate(GatePolicy())
    assert admit(gate, "Explain") == ANONYMOUS
    assert admit(gate, "SomethingNew", "Bearer whatever") == ANONYMOUS


def test_tokens_and_scopes(token_file: tuple[Path, str, str]) -> None:
    path, infer, admin = token_file
    refused: list[tuple[str, str, str]] = []
    gate = gate_with(path, refused)
    with pytest.raises(UnauthenticatedError, match="needs a bearer token"):
        admit(gate, "Classify")
    with pytest.raises(UnauthenticatedError, match="not valid"):
        admit(gate, "Classify", "Bearer cnns_wrong")
    with pytest.raises(UnauthenticatedError, match="must be 'Bearer <token>'"):
        admit(gate, "Classify", f"Basic {infer}")
    with pytest.raises(
        PermissionDeniedError, match="'infer-only' lacks the 'explain' scope that Explain needs"
    ):
        admit(gate, "Explain", f"Bearer {infer}")
    with pytest.raises(PermissionDeniedError, match="lacks the 'admin' scope"):
        admit(gate, "RepositoryModelLoad", f"Bearer {infer}")  # a method nobody listed needs admin
    assert admit(gate, "Classify", f"bearer  {infer} ") == "infer-only"
    assert admit(gate, "Explain", f"Bearer {admin}") == "ops"
    assert refused == [
        ("unauthenticated", "Classify", "UNAUTHENTICATED"),
        ("unauthenticated", "Classify", "UNAUTHENTICATED"),
        ("unauthenticated", "Classify", "UNAUTHENTICATED"),
        ("infer-only", "Explain", "PERMISSION_DENIED"),
        ("infer-only", "RepositoryModelLoad", "PERMISSION_DENIED"),
    ]


def test_refusals_carry_their_status_and_http_headers(token_file: tuple[Path, str, str]) -> None:
    gate = gate_with(token_file[0])
    with pytest.raises(RefusedError) as refused:
        admit(gate, "Classify")
    assert refused.value.status is Status.UNAUTHENTICATED and refused.value.status.http_status == 401
    assert refused.value.http_headers == {"WWW-Authenticate": 'Bearer realm="cnnserve"'}
    with pytest.raises(RefusedError) as denied:
        admit(gate, "Explain", f"Bearer {token_file[1]}")
    assert denied.value.status.http_status == 403


def test_health_checks_need_nothing(token_file: tuple[Path, str, str]) -> None:
    gate = gate_with(token_file[0])
    for method in ("ServerLive", "ServerReady", "ModelReady"):
        assert admit(gate, method) == ANONYMOUS
        assert admit(gate, method, "Bearer wrong") == ANONYMOUS


def test_certificate_identities(token_file: tuple[Path, str, str]) -> None:
    path, _, admin = token_file
    gate = gate_with(path, mutual_tls=True)
    batch = {"subject": "CN=batch", "sans": ("spiffe://acme/batch",)}
    assert admit(gate, "Classify", **batch) == "batch"
    with pytest.raises(PermissionDeniedError, match="'batch' lacks the 'explain' scope"):
        admit(gate, "Explain", **batch)
    assert admit(gate, "Explain", f"Bearer {admin}", **batch) == "ops"  # a token speaks for itself
    with pytest.raises(UnauthenticatedError, match="certificate is not one the token file names"):
        admit(gate, "Classify", subject="CN=stranger")
    # Mutual TLS without a token file: the CA is the gate, every verified certificate may call anything.
    only_tls = Gate(GatePolicy(mutual_tls=True))
    assert admit(only_tls, "Explain", **batch) == "spiffe://acme/batch"
    assert admit(only_tls, "Explain", subject="CN=x,O=y") == "CN=x,O=y"


def test_the_per_client_cap_sheds_one_client_not_the_others(token_file: tuple[Path, str, str]) -> None:
    path, infer, admin = token_file
    refused: list[tuple[str, str, str]] = []
    gate = gate_with(path, refused, max_in_flight_per_client=2)
    held = [call("Classify", f"Bearer {infer}") for _ in range(2)]
    for each in held:
        gate.begin(each)
    with pytest.raises(
        ClientBusyError, match=r"'infer-only' already has 2 call\(s\) in flight \(at most 2\)"
    ):
        admit(gate, "Classify", f"Bearer {infer}")
    other = call("Classify", f"Bearer {admin}")
    gate.begin(other)
    gate.end(held[0])
    again = call("Classify", f"Bearer {infer}")
    gate.begin(again)
    for each in (held[1], other, again):
        gate.end(each)
    assert gate.in_flight("infer-only") == gate.in_flight("ops") == 0
    assert refused == [("infer-only", "Classify", "RESOURCE_EXHAUSTED")]


def test_anonymous_callers_are_not_capped() -> None:
    """Without authentication nobody can be told apart; the batch queue's bound protects the server."""
    gate = Gate(GatePolicy(max_in_flight_per_client=1))
    assert {admit(gate, "Classify") for _ in range(3)} == {ANONYMOUS}


def test_refusals_are_logged_once_a_minute_per_client_and_never_show_the_token(
    token_file: tuple[Path, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    path, infer, _ = token_file
    gate = gate_with(path)
    with caplog.at_level(logging.DEBUG):
        for _ in range(5):
            for authorization in (None, f"Bearer {infer}x"):
                with pytest.raises(UnauthenticatedError):
                    admit(gate, "Classify", authorization, peer="ipv4:10.1.2.3:40000")
            with pytest.raises(PermissionDeniedError):
                admit(gate, "Explain", f"Bearer {infer}")
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines  # one per client and kind of refusal
    assert "from peer 10.1.2.3:" in lines[0] and "'infer-only' lacks the 'explain' scope" in lines[1]
    assert not any(infer in line for line in lines)
