"""One HTTP request as a call between the server's call hooks (drain, metrics, authentication, ...).

What `CallRunner` is for gRPC, without the status mapping: an error raised here goes back to the HTTP
server, whose one `error_response` turns it into the status the serving error tree gives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cnnserve.serving.core.calls import Call, CallHooks
from cnnserve.serving.errors import status_of
from cnnserve.serving.http.server import HttpRequest, HttpResponse


async def run_call(
    hooks: CallHooks,
    protocol: str,
    request: HttpRequest,
    method: str,
    model: str,
    handler: Callable[[Call], Awaitable[HttpResponse]],
) -> HttpResponse:
    """Run `handler` as the call `method` on `model`; the hooks see the request's headers and peer."""
    call = Call(protocol, method, model, request)
    hooks.begin(call)
    try:
        response = await handler(call)
    except BaseException as error:
        call.status, call.message = status_of(error)
        hooks.end(call)
        raise
    hooks.end(call)
    return response
