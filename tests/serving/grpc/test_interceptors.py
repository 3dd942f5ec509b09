"""The one status mapping, over real gRPC: every error type a handler raises reaches the client as its
status code with its message, and the failure metric counts it under that code."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from status_table import CODES, EXPECTED, make

from cnnserve.serving.core.calls import Call, CallHooks, Drain
from cnnserve.serving.errors import INTERNAL_MESSAGE
from cnnserve.serving.grpc.interceptors import CallRunner
from cnnserve.serving.observability.metrics import CallMetrics, ServingMetrics

pytestmark = pytest.mark.timeout(60)

METHOD = "/cnnserve.test.Errors/Raise"


class ErrorService:
    """One RPC whose request names what its handler raises ("ok" answers)."""

    def __init__(self, runner: CallRunner) -> None:
        self.runner = runner

    async def raise_(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name = request.decode()

        async def handler(call: Call) -> bytes:
            if name == "ok":
                call.images = 2
                return b"fine"
            if name == "sleep":
                await asyncio.sleep(30)
            if name == "RuntimeError":
                raise RuntimeError("broke at /srv/models/m/1/model.onnx, object at 0x7f3a2c")
            error_type = next(cls for cls in EXPECTED if cls.__name__ == name)
            raise make(error_type, f"{name} names the culprit")

        return await self.runner.run(context, "Raise", "m", handler)


async def _serve(metrics: ServingMetrics, drain: Drain | None = None) -> tuple[grpc.aio.Server, str]:
    hooks = [CallMetrics(metrics, lambda model: model == "m")]
    if drain is not None:
        hooks.append(drain)
    service = ErrorService(CallRunner(CallHooks(hooks), "test"))
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(service.raise_)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("cnnserve.test.Errors", {"Raise": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _calls(
    names: list[str], drain: Drain | None = None
) -> tuple[list[tuple[str, str]], ServingMetrics]:
    metrics = ServingMetrics()
    server, address = await _serve(metrics, drain)
    answers = []
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(METHOD)
            for name in names:
                try:
                    answers.append(("OK", (await call(name.encode(), timeout=10)).decode()))
                except grpc.aio.AioRpcError as error:
                    answers.append((error.code().name, error.details() or ""))
    finally:
        await server.stop(None)
    return answers, metrics


def _failures(metrics: ServingMetrics, code: str) -> float:
    labels = {"model": "m", "rpc": "Raise", "code": code}
    return metrics.registry.get_sample_value("cnnserve_request_failures_total", labels) or 0.0


def test_every_error_type_reaches_the_client_as_its_status_and_is_counted_under_it() -> None:
    names = [cls.__name__ for cls in EXPECTED]
    answers, metrics = asyncio.run(_calls(names))
    assert answers == [(EXPECTED[cls], f"{cls.__name__} names the culprit") for cls in EXPECTED]
    for code in CODES:
        assert _failures(metrics, code) == sum(1 for value in EXPECTED.values() if value == code), code
    requests = metrics.registry.get_sample_value("cnnserve_requests_total", {"model": "m", "rpc": "Raise"})
    assert requests == len(EXPECTED)


def test_a_bug_answers_internal_with_a_fixed_message_and_success_counts_images() -> None:
    answers, metrics = asyncio.run(_calls(["RuntimeError", "ok", "ok"]))
    assert answers == [("INTERNAL", INTERNAL_MESSAGE), ("OK", "fine"), ("OK", "fine")]
    assert _failures(metrics, "INTERNAL") == 1
    assert metrics.registry.get_sample_value("cnnserve_images_total", {"model": "m", "rpc": "Raise"}) == 4


def test_a_draining_server_refuses_new_calls_as_unavailable() -> None:
    drain = Drain()
    drain.stopping = True
    answers, metrics = asyncio.run(_calls(["ok"], drain))
    assert answers == [("UNAVAILABLE", "the server is shutting down; retry on another instance")]
    assert _failures(metrics, "UNAVAILABLE") == 1


async def _until_counted(metrics: ServingMetrics, code: str) -> None:
    """The server ends a call it had to cancel on its own time: wait (up to 20 s) until it is counted."""
    for _ in range(2000):
        if _failures(metrics, code):
            return
        await asyncio.sleep(0.01)


def test_a_call_past_its_deadline_counts_as_deadline_exceeded_and_one_cancelled_as_cancelled() -> None:
    async def scenario() -> tuple[str, ServingMetrics]:
        metrics = ServingMetrics()
        drain = Drain()  # counts the calls in flight
        server, address = await _serve(metrics, drain)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = channel.unary_unary(METHOD)
                with pytest.raises(grpc.aio.AioRpcError) as expired:
                    await stub(b"sleep", timeout=0.2)
                await _until_counted(metrics, "DEADLINE_EXCEEDED")
                call = stub(b"sleep", timeout=30)
                while drain.in_flight == 0:  # the handler has begun: cancel it mid-call
                    await asyncio.sleep(0.01)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                await _until_counted(metrics, "CANCELLED")
        finally:
            await server.stop(None)
        return expired.value.code().name, metrics

    code, metrics = asyncio.run(scenario())
    assert code == "DEADLINE_EXCEEDED"
    assert (_failures(metrics, "DEADLINE_EXCEEDED"), _failures(metrics, "CANCELLED")) == (1, 1)
    assert _failures(metrics, "INTERNAL") == 0
