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
from typing import NoReturn, TypeVar

import grpc

from cnnserve.serving.core.calls import Call, CallHooks
from cnnserve.serving.errors import Status, status_of

LOG = logging.getLogger(__name__)

GRPC_CODES: dict[Status, grpc.StatusCode] = {status: grpc.StatusCode[status.name] for status in Status}

R = TypeVar("R")


def deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline in event-loop time (None: the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


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
