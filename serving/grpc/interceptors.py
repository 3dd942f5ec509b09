"""Every gRPC call of every servicer goes through here: its call hooks, and the one status mapping.

`CallRunner.run` describes the call to the hooks (drain, metrics, and whatever else the server adds:
authentication, tracing, access logs), runs the handler, and turns any error into the gRPC status the
error tree says (`errors.status_of`) -- never by looking at class names. Anything outside the tree is a
bug: it is logged with its traceback and the client gets INTERNAL with a fixed message, so no stack trace,
heap address or server path reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc

from cnnserve.serving.core.calls import Call, CallHooks
from cnnserve.serving.errors import DeadlineExpiredError, Status, status_of

LOG = logging.getLogger(__name__)

GRPC_CODES: dict[Status, grpc.StatusCode] = {status: grpc.StatusCode[status.name] for status in Status}

R = TypeVar("R")
# A client hammering malformed bodies costs one log line per this many seconds, not one per call.
MALFORMED_LOG_INTERVAL_S = 60.0


def deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline in event-loop time (None: the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


# A cancelled call whose deadline is this close (seconds) counts as expired: gRPC's timer and the
# deadline it reports are kept on different clocks.
DEADLINE_SLACK_S = 0.01


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= DEADLINE_SLACK_S


class CallRunner:
    """Runs one protocol's RPC handlers between the call hooks, mapping errors to gRPC status codes."""

    def __init__(self, hooks: CallHooks, protocol: str) -> None:
        self.hooks = hooks
        self.protocol = protocol

    async def run(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        model: str,
        handler: Callable[[Call], Awaitable[R]],
    ) -> R:
        call = Call(self.protocol, method, model, context, time.perf_counter())
        try:
            self.hooks.begin(call)
        except Exception as error:
            await self._abort(context, call, error)
        try:
            response = await handler(call)
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError) and _deadline_passed(context):
                # gRPC cancels a handler when its deadline passes: that is the call's deadline, not a
                # client going away, and the failure metric says so.
                call.status, call.message = status_of(DeadlineExpiredError("the call's deadline passed"))
            else:
                call.status, call.message = status_of(error)
            self.hooks.end(call)
            if not isinstance(error, Exception):
                raise  # cancelled: the client went away, nobody to answer
            await self._abort(context, call, error)
        self.hooks.end(call)
        return response

    async def _abort(self, context: grpc.aio.ServicerContext, call: Call, error: Exception) -> NoReturn:
        status, message = status_of(error)
        if status is Status.INTERNAL:
            LOG.error("%s %s for model %r failed", self.protocol, call.method, call.model, exc_info=error)
        await context.abort(GRPC_CODES[status], message)
        raise AssertionError("context.abort returned")  # it raises to end the call


class RateLimitedLog:
    """One warning per `interval_s` at most; the next one says how many were held back meanwhile."""

    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._next = 0.0
        self._held = 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        held, self._held, self._next = self._held, 0, now + self.interval_s
        suffix = f" ({held} more since the last such line)" if held else ""
        self.logger.warning(message + suffix, *args)


@dataclass(frozen=True)
class _Malformed:
    """What a request body that does not parse becomes, so that the handler can refuse it."""

    reason: str


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """A request body that does not parse is answered INVALID_ARGUMENT, naming the message type.

    Left to itself gRPC answers UNKNOWN, with the parser's exception class in the message, and logs a
    traceback per call. Here each unary method's deserializer is wrapped so that it never raises: a body
    that fails to parse reaches the handler wrapper as `_Malformed`, which aborts the call, and one log line
    a minute says how many came (a client sending garbage cannot flood the log). It serves every service on
    the server; the wrapped handlers are made once per method.
    """

    def __init__(self, log_interval_s: float = MALFORMED_LOG_INTERVAL_S) -> None:
        self._wrapped: dict[int, grpc.RpcMethodHandler] = {}
        self._log = RateLimitedLog(LOG, log_interval_s)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or getattr(handler, "unary_unary", None) is None:
            return handler
        wrapped = self._wrapped.get(id(handler))
        if wrapped is None:
            wrapped = self._wrap(handler, handler_call_details.method)
            self._wrapped[id(handler)] = wrapped
        return wrapped

    def _wrap(self, handler: Any, method: str) -> Any:
        deserialize = handler.request_deserializer
        behaviour = handler.unary_unary
        if deserialize is None or not asyncio.iscoroutinefunction(behaviour):
            return handler
        descriptor = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
        type_name = descriptor.full_name if descriptor is not None else f"request of {method}"

        def tolerant(data: bytes) -> Any:
            try:
                return deserialize(data)
            except Exception as error:  # whatever the parser raises, the body is the client's fault
                return _Malformed(str(error))

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                self._log.warning(
                    "malformed %s body answered INVALID_ARGUMENT: %s", type_name, request.reason[:200]
                )
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"the request body is not a valid {type_name}"
                )
            return await behaviour(request, context)

        return handler._replace(request_deserializer=tolerant, unary_unary=unary_unary)
