"""What every call goes through, whatever its protocol: hooks around the data plane.

A transport (gRPC cnnserve.v1, the Open Inference Protocol over gRPC or HTTP) describes each call as a
`Call` and runs it between `CallHooks.begin` and `CallHooks.end`; the hooks are the cross-cutting concerns
-- refusing calls while the server drains, metrics, and whatever else the server is configured with
(authentication, tracing, access logs) -- so every protocol gets them at once and none is written per RPC.
A hook's `begin` may refuse the call by raising a `ServingError`; `end` always runs for a call whose
`begin` ran, with `call.status` set (None when the call succeeded).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cnnserve.serving.errors import ShuttingDownError, Status, status_of

LOG = logging.getLogger(__name__)


class CallSource(Protocol):
    """Where a call's metadata, peer and TLS identity come from: a gRPC ServicerContext, or an HTTP
    request's adapter. Read only when a hook asks (fetching gRPC metadata costs microseconds per call)."""

    def invocation_metadata(self) -> Sequence[tuple[str, Any]] | None: ...

    def peer(self) -> str: ...

    def auth_context(self) -> Mapping[str, Sequence[bytes]]:
        """What TLS verified, gRPC's way: `x509_subject` (RFC 4514) and `x509_subject_alternative_name`
        of a client certificate under mutual TLS; empty without one."""
        ...


Certificate = tuple[str | None, tuple[str, ...]]  # a verified client certificate's subject and SANs


@dataclass(slots=True)
class Call:
    """One call, as the hooks see it. Transports fill what they know; handlers add what they learn."""

    protocol: str  # "cnnserve.v1", "v2-grpc", "v2-http", ...
    method: str  # the RPC or endpoint name: "Classify", "ModelInfer", ...
    model: str  # the model named in the request ("" for server-wide calls)
    source: CallSource | None = None  # the transport's view of the call: metadata, peer
    start: float = field(default_factory=time.perf_counter)
    version: int = 0  # the version that answered, once known
    images: int = 0  # images answered
    client: str = ""  # the authenticated client's name, when the server authenticates
    status: Status | None = None  # set before `end`: None for success
    message: str = ""  # the error message the caller got, when it failed
    attributes: dict[str, Any] = field(default_factory=dict)  # e.g. queue and compute time, batch size
    _metadata: tuple[tuple[str, Any], ...] | None = None
    _certificate: Certificate | None = None

    @property
    def metadata(self) -> tuple[tuple[str, Any], ...]:
        """gRPC invocation metadata or HTTP headers as (key, value) pairs, keys lower-case."""
        if self._metadata is None:
            self._metadata = tuple(self.source.invocation_metadata() or ()) if self.source else ()
        return self._metadata

    @property
    def peer(self) -> str:
        return self.source.peer() if self.source is not None else ""

    @property
    def certificate(self) -> Certificate:
        """The client certificate TLS verified (mutual TLS): its subject and SANs; (None, ()) without one."""
        if self._certificate is None:
            auth = self.source.auth_context() if self.source is not None else {}
            subjects = auth.get("x509_subject") or ()
            sans = auth.get("x509_subject_alternative_name") or ()
            self._certificate = (
                subjects[0].decode("utf-8", "replace") if subjects else None,
                tuple(san.decode("utf-8", "replace") for san in sans),
            )
        return self._certificate

    def metadata_value(self, key: str) -> str | None:
        """The first value of a metadata key (lower-case), as text."""
        for name, value in self.metadata:
            if name == key:
                return value.decode("latin-1") if isinstance(value, bytes) else str(value)
        return None


class CallHook(Protocol):
    """A cross-cutting concern around every call: `begin` may refuse it by raising a ServingError."""

    def begin(self, call: Call) -> None: ...

    def end(self, call: Call) -> None: ...


class CallHooks:
    """Hooks run in order at `begin` and in reverse order at `end`."""

    def __init__(self, hooks: Sequence[CallHook] = ()) -> None:
        self.hooks: tuple[CallHook, ...] = tuple(hooks)

    def add(self, hook: CallHook) -> None:
        self.hooks = (*self.hooks, hook)

    def begin(self, call: Call) -> None:
        """Begin every hook; if one refuses the call, those already begun are ended and the error raised."""
        for index, hook in enumerate(self.hooks):
            try:
                hook.begin(call)
            except BaseException as error:
                call.status, call.message = status_of(error)
                for begun in reversed(self.hooks[:index]):
                    begun.end(call)
                raise

    def end(self, call: Call) -> None:
        for hook in reversed(self.hooks):
            try:
                hook.end(call)
            except Exception:  # a failing hook must not hide the call's own outcome
                LOG.exception("call hook %s failed", type(hook).__name__)


class Drain:
    """Counts the calls in flight and, once the server is stopping, refuses new ones with UNAVAILABLE."""

    def __init__(self) -> None:
        self.stopping = False
        self.in_flight = 0
        self._idle: asyncio.Event | None = None

    def begin(self, call: Call) -> None:
        if self.stopping:
            raise ShuttingDownError("the server is shutting down; retry on another instance")
        self.in_flight += 1

    def end(self, call: Call) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Refuse new calls and wait for the calls in flight; False if some outlived `timeout`."""
        self.stopping = True
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            LOG.warning("%d call(s) still in flight after %g s; cancelling them", self.in_flight, timeout)
            return False
        return True
