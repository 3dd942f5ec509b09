"""The call hook that authenticates every call, checks its scope and caps each client's calls in flight.

It runs in the call hooks (`core/calls.py`), so every protocol gets it: the transport offers the
`authorization` value in `Call.metadata` and, under mutual TLS, what the TLS layer verified about the client
certificate in `Call.certificate` (read only when a call brings no token). `begin` names the client
(`Call.client`, for metrics, access logs and traces) or refuses the call: UNAUTHENTICATED (HTTP 401),
PERMISSION_DENIED (403), RESOURCE_EXHAUSTED (429) when the client already has its maximum of calls in
flight. Every refusal is counted by client and method (`on_refused`) and logged once per client per
minute; a token is never logged or echoed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cnnserve.serving.core.calls import Call
from cnnserve.serving.errors import ServingError, Status
from cnnserve.serving.security.scopes import required_scope
from cnnserve.serving.security.tokens import Client, TokenStore

LOG = logging.getLogger(__name__)

ANONYMOUS = "anonymous"  # the client name of calls that need no credentials (health checks)
UNAUTHENTICATED_CLIENT = "unauthenticated"  # the metrics label of callers nobody could identify
LOG_INTERVAL_S = 60.0
WWW_AUTHENTICATE = 'Bearer realm="cnnserve"'


class RefusedError(ServingError):
    """A call refused before it reached the data plane; `client` names the caller (for metrics)."""

    def __init__(self, message: str, client: str) -> None:
        super().__init__(message)
        self.client = client

    @property
    def http_headers(self) -> dict[str, str]:
        """What an HTTP answer adds: `WWW-Authenticate` on 401 (RFC 6750), `Retry-After` on 429."""
        if self.status is Status.UNAUTHENTICATED:
            return {"WWW-Authenticate": WWW_AUTHENTICATE}
        if self.status is Status.RESOURCE_EXHAUSTED:
            return {"Retry-After": "1"}
        return {}


class UnauthenticatedError(RefusedError):
    """No credentials, or credentials nobody knows (an unknown or revoked token, an unnamed certificate)."""

    status = Status.UNAUTHENTICATED


class PermissionDeniedError(RefusedError):
    """A known client without the scope the method needs."""

    status = Status.PERMISSION_DENIED


class ClientBusyError(RefusedError):
    """The client already has its maximum of calls in flight; others' calls go on."""

    status = Status.RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class GatePolicy:
    tokens: TokenStore | None = None  # None: no token file
    mutual_tls: bool = False  # client certificates are required, and verified by the TLS layer
    max_in_flight_per_client: int = 0  # per identified client; 0 = no cap

    @property
    def authenticates(self) -> bool:
        return self.tokens is not None or self.mutual_tls


RefusalCounter = Callable[[str, str, str], None]  # (client, method, status name)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `authorization: Bearer <token>` value; None when absent or another scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def certificate_name(subject: str | None, sans: Sequence[str]) -> str:
    """A short name for a verified certificate no token file names: its first SAN, else its subject."""
    return sans[0] if sans else (subject or "")


def peer_host(peer: str) -> str:
    """`ipv4:10.0.0.7:51234` -> `10.0.0.7`, `ipv6:[::1]:5000` -> `[::1]`; anything else as it is."""
    kind, _, rest = peer.partition(":")
    return rest.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") and rest else peer


class Gate:
    """Authentication, scopes and the per-client in-flight cap, as a call hook."""

    def __init__(self, policy: GatePolicy, on_refused: RefusalCounter | None = None) -> None:
        self.policy = policy
        self.on_refused = on_refused
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()  # an HTTP port may admit calls from other threads
        self._logged: dict[tuple[str, str], float] = {}

    # -- the call hook -------------------------------------------------------------------------------

    def begin(self, call: Call) -> None:
        try:
            call.client = self._client(call)
            self._reserve(call.client)
        except RefusedError as error:
            self._refused(error, call)
            raise

    def end(self, call: Call) -> None:
        if self.policy.max_in_flight_per_client > 0 and call.client in self._in_flight:
            with self._lock:
                count = self._in_flight.get(call.client, 0) - 1
                if count > 0:
                    self._in_flight[call.client] = count
                else:
                    self._in_flight.pop(call.client, None)

    def in_flight(self, client: str) -> int:
        with self._lock:
            return self._in_flight.get(client, 0)

    # -- who is calling, and may it -------------------------------------------------------------------

    def _client(self, call: Call) -> str:
        scope = required_scope(call.method)
        if scope is None:
            return ANONYMOUS  # health checks ignore credentials, even wrong ones
        policy = self.policy
        if not policy.authenticates:
            return ANONYMOUS
        authorization = call.metadata_value("authorization")
        client = self._authenticate(authorization, call)
        if client is None:
            if policy.tokens is None:  # mutual TLS alone: the TLS layer already refused strangers
                return certificate_name(*call.certificate) or ANONYMOUS
            raise UnauthenticatedError(
                self._unauthenticated_message(authorization, call), UNAUTHENTICATED_CLIENT
            )
        if scope not in client.scopes:
            raise PermissionDeniedError(
                f"client {client.name!r} lacks the {scope!r} scope that {call.method} needs", client.name
            )
        return client.name

    def _authenticate(self, authorization: str | None, call: Call) -> Client | None:
        tokens = self.policy.tokens
        if tokens is None:
            return None
        token = bearer_token(authorization)
        if token is not None:
            client = tokens.authenticate(token)
            if client is None:
                raise UnauthenticatedError(
                    "the bearer token is not valid (unknown or revoked)", UNAUTHENTICATED_CLIENT
                )
            return client
        subject, sans = call.certificate
        if subject is not None or sans:
            return tokens.identify(subject, sans)
        return None

    @staticmethod
    def _unauthenticated_message(authorization: str | None, call: Call) -> str:
        if authorization and bearer_token(authorization) is None:
            return "the authorization must be 'Bearer <token>'"
        if call.certificate != (None, ()):
            return "the client certificate is not one the token file names, and no bearer token was sent"
        return "this server needs a bearer token: send 'authorization: Bearer <token>'"

    # -- the per-client cap ----------------------------------------------------------------------------

    def _reserve(self, client: str) -> None:
        cap = self.policy.max_in_flight_per_client
        if cap <= 0 or client == ANONYMOUS:
            # Callers nobody identified cannot be told apart (behind a proxy they share one address):
            # the batch queue's bound protects the server from them.
            return
        with self._lock:
            count = self._in_flight.get(client, 0)
            if count >= cap:
                raise ClientBusyError(
                    f"client {client!r} already has {count} call(s) in flight (at most {cap}); retry later",
                    client,
                )
            self._in_flight[client] = count + 1

    # -- refusals: counted always, logged once per client and kind a minute ------------------------------

    def _refused(self, error: RefusedError, call: Call) -> None:
        if self.on_refused is not None:
            self.on_refused(error.client, call.method, error.status.name)
        who = error.client
        if who == UNAUTHENTICATED_CLIENT:
            who = f"peer {peer_host(call.peer) or '?'}"
            name = certificate_name(*call.certificate)
            if name:
                who += f" ({name})"
        if self._should_log((who, error.status.name)):
            LOG.warning(
                "refused %s %s from %s: %s (%s; logged once a minute per client)",
                call.protocol,
                call.method,
                who,
                error,
                error.status.name,
            )

    def _should_log(self, key: tuple[str, str]) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._logged.get(key)
            if last is not None and now - last < LOG_INTERVAL_S:
                return False
            if len(self._logged) >= 4096:  # many addresses: forget the old ones, keep memory bounded
                self._logged = {k: t for k, t in self._logged.items() if now - t < LOG_INTERVAL_S}
            self._logged[key] = now
            return True
