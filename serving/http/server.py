"""A small HTTP/1.1 server on the serving process's asyncio loop: keep-alive, pipelining, body limits.

It runs beside the gRPC server in the same process and on the same event loop, so an HTTP request reaches
the same registry and dynamic batcher as a gRPC call, with no thread hop. It is written on asyncio's
Protocol with httptools' C parser (the parser of uvicorn and Sanic) rather than on a framework: measured
side by side on this loop with one load generator (bench/bench_http_stacks.py), it costs ~20 us of server
CPU per small request where aiohttp costs ~60-120 us and uvicorn+starlette or h11 ~100-140 us, and it adds
one dependency with no transitive ones.

What it owns: the connection (parsing, the body and header limits, Expect: 100-continue, keep-alive and
its idle timeout, answers in request order, graceful stop). What it does not: routing, a `Router` of
handlers `async (HttpRequest, params) -> HttpResponse`, and what an error means, which `error_response`
decides (serving/http/oip.py maps the serving error tree; authentication, tracing and access logs are
call hooks there, shared with gRPC). TLS: pass an `ssl.SSLContext` to `start`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote

import httptools

from cnnserve.serving.security.tls import auth_context

LOG = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_KEEPALIVE_S = 75.0


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # as sent (percent-encoded), without the query; route parameters are decoded
    query: str
    headers: Mapping[str, str]  # names lower-case
    body: bytes
    remote: str = ""  # the client's address, "host:port"
    # Under mutual TLS, the client certificate as gRPC reports one (security.tls.auth_context).
    tls_identity: Mapping[str, Sequence[bytes]] = field(default_factory=dict)

    # The call hooks' view of a request (core.calls.CallSource): its headers as metadata, its peer, and
    # the client certificate TLS verified.
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.headers.items())

    def peer(self) -> str:
        return self.remote

    def auth_context(self) -> Mapping[str, Sequence[bytes]]:
        return self.tls_identity


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: object, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return HttpResponse(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers)


def error_json(status: int, message: str) -> HttpResponse:
    return json_response(status, {"error": message})


Handler = Callable[[HttpRequest, Mapping[str, str]], Awaitable[HttpResponse]]
ErrorResponse = Callable[[Exception], HttpResponse]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


@dataclass
class Router:
    """Handlers by method and path pattern; `{name}` in a pattern matches one path segment."""

    routes: list[Route] = field(default_factory=list)

    def add(self, method: str, template: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        self.routes.append(Route(method, re.compile(f"^{regex}$"), handler))

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = []
        for route in self.routes:
            match = route.pattern.match(path)
            if match is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route.handler, {k: unquote(v) for k, v in match.groupdict().items()}
            allowed.append(route.method)
        if allowed:
            raise MethodNotAllowedError(f"{method} is not allowed on {path}; use {', '.join(allowed)}")
        raise PathNotFoundError(f"no endpoint {path}")


class HttpProtocolError(Exception):
    """The request breaks HTTP itself (malformed, too big): answered with `status`, then the connection
    closes, since the rest of the stream can no longer be trusted."""

    status = HTTPStatus.BAD_REQUEST


class PathNotFoundError(HttpProtocolError):
    status = HTTPStatus.NOT_FOUND


class MethodNotAllowedError(HttpProtocolError):
    status = HTTPStatus.METHOD_NOT_ALLOWED


class BodyTooLargeError(HttpProtocolError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class HeadersTooLargeError(HttpProtocolError):
    status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


@dataclass(frozen=True)
class HttpLimits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    keepalive_s: float = DEFAULT_KEEPALIVE_S


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS_LINES = {s.value: _status_line(s.value) for s in HTTPStatus}


def encode_response(response: HttpResponse, keep_alive: bool, head: bool = False) -> bytes:
    lines = [
        _STATUS_LINES.get(response.status) or _status_line(response.status),
        b"Content-Type: " + response.content_type.encode("latin-1") + b"\r\n",
        b"Content-Length: " + str(len(response.body)).encode() + b"\r\n",
    ]
    for name, value in response.headers:
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head:
        lines.append(response.body)
    return b"".join(lines)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests as bytes arrive and answers them one at a time, in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[tuple[HttpRequest | HttpProtocolError, bool]] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.can_write: asyncio.Event = asyncio.Event()
        self.can_write.set()
        self.peer = ""
        self.tls_identity: dict[str, list[bytes]] = {}
        self._reset_message()

    def _reset_message(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.refused: HttpProtocolError | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
        # A TLS connection's verified client certificate (mutual TLS), read once for all its requests.
        self.tls_identity = auth_context(transport.get_extra_info("peercert"))
        self.server.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._cancel_idle_timer()
        self.closing = True
        self.can_write.set()
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()  # the client left: its requests are not worth finishing

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self._cancel_idle_timer()
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(HttpProtocolError("protocol upgrades are not supported"))
        except httptools.HttpParserError as error:
            if self.refused is None:
                self._refuse(HttpProtocolError(f"malformed HTTP request: {error}"))
            else:
                self._refuse(self.refused)

    def eof_received(self) -> bool | None:
        return None  # close once the answers are written

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset_message()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            self.refused = HeadersTooLargeError(f"request headers exceed {MAX_HEADER_BYTES} bytes")
            raise httptools.HttpParserError("headers too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        limit = self.server.limits.max_body_bytes
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            self.refused = BodyTooLargeError(
                f"request body of {int(length)} bytes exceeds the limit of {limit} bytes"
            )
            raise httptools.HttpParserError("body too large")
        if self.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.server.limits.max_body_bytes:
            self.refused = BodyTooLargeError(
                f"request body exceeds the limit of {self.server.limits.max_body_bytes} bytes"
            )
            raise httptools.HttpParserError("body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        parsed = httptools.parse_url(self.url)
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        request = HttpRequest(
            method=self.parser.get_method().decode("ascii"),
            path=parsed.path.decode("latin-1"),
            query=(parsed.query or b"").decode("latin-1"),
            headers=self.headers,
            body=body,
            remote=self.peer,
            tls_identity=self.tls_identity,
        )
        self._enqueue(request, self.parser.should_keep_alive())

    # -- answering -------------------------------------------------------------------------------

    def _refuse(self, error: HttpProtocolError) -> None:
        """Answer a request that broke HTTP after the ones before it, then close the connection."""
        self.closing = True
        if self.transport is not None:
            self.transport.pause_reading()
        self._enqueue(error, False)

    def _enqueue(self, item: HttpRequest | HttpProtocolError, keep_alive: bool) -> None:
        self.pending.append((item, keep_alive))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._answer_pending())

    async def _answer_pending(self) -> None:
        while self.pending and self.transport is not None:
            item, keep_alive = self.pending.popleft()
            keep_alive = keep_alive and not self.server.stopping
            if isinstance(item, HttpProtocolError):
                response, head = error_json(item.status, str(item)), False
                keep_alive = False
            else:
                response, head = await self.server.answer(item), item.method == "HEAD"
            if self.transport.is_closing():
                return
            self.transport.write(encode_response(response, keep_alive, head))
            if not keep_alive:
                self.closing = True
                self.pending.clear()
                self.transport.close()
                return
            if not self.can_write.is_set():
                await self.can_write.wait()
        if not self.closing:
            self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self.idle_timer = loop.call_later(self.server.limits.keepalive_s, self.close_if_idle)

    def _cancel_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    @property
    def busy(self) -> bool:
        return bool(self.pending) or (self.worker is not None and not self.worker.done())

    def close_if_idle(self) -> None:
        if not self.busy and self.transport is not None:
            self.closing = True
            self.transport.close()


class HttpServer:
    """Serves a Router on the running event loop; several processes may share the port (SO_REUSEPORT)."""

    def __init__(
        self, router: Router, error_response: ErrorResponse, limits: HttpLimits | None = None
    ) -> None:
        self.router = router
        self.error_response = error_response
        self.limits = limits or HttpLimits()
        self.connections: set[_Connection] = set()
        self.stopping = False
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host or None, port, reuse_port=True, ssl=ssl_context, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def answer(self, request: HttpRequest) -> HttpResponse:
        """The response to one request: routed, errors mapped to a status; never raises."""
        try:
            handler, params = self.router.resolve(request.method, request.path)
            return await handler(request, params)
        except HttpProtocolError as error:
            return error_json(error.status, str(error))
        except Exception as error:  # what a handler raises is mapped to a status, never leaked
            return self.error_response(error)

    async def stop(self, grace: float) -> None:
        """Stop accepting, close idle connections, let requests in flight finish (up to `grace`)."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        while any(c.busy for c in self.connections) and loop.time() < end:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
