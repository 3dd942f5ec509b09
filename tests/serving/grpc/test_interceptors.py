"""The one status mapping, over real gRPC: every error type a handler raises reaches the client as its
status code with its message, and the failure metric counts it under that code."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import grpc
import pytest
from status_table import CODES, EXPECTED, make

from cnnserve.protos import inference_pb2
from cnnserve.serving.core.calls import Call, CallHooks, Drain
from cnnserve.serving.errors import INTERNAL_MESSAGE
from cnnserve.serving.grpc import interceptors
from cnnserve.serving.grpc.interceptors import (
    DEADLINE_SLACK_S,
    CallRunner,
    MalformedRequestInterceptor,
    RateLimitedLog,
    _deadline_passed,
    deadline,
)
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
            if name == "deadline":
                until = deadline(context)
                return (
                    b"none" if until is None else f"{until - asyncio.get_running_loop().time():.0f}".encode()
                )
            if name == "RuntimeError":
                raise RuntimeError("broke at /srv/models/m/1/model.onnx, object at 0x7f3a2c")
            error_type = next(cls for cls in EXPECTED if cls.__name__ == name)
            raise make(error_type, f"{name} names the culprit")

        return await self.runner.run(context, "Raise", "m", handler)


class Recorder:
    """A hook that keeps what it saw of each call; `refuse` makes its begin raise (a failing hook)."""

    def __init__(self, refuse: BaseException | None = None) -> None:
        self.refuse = refuse
        self.seen: list[tuple[str, str, str, str | None, str, str]] = []
        self.messages: list[str] = []

    def begin(self, call: Call) -> None:
        if self.refuse is not None:
            raise self.refuse

    def end(self, call: Call) -> None:
        status = call.status.name if call.status else "OK"
        peer = "ipv4:127.0.0.1" if call.peer.startswith("ipv4:127.0.0.1:") else call.peer
        self.seen.append(
            (call.protocol, call.method, call.model, call.metadata_value("x-test"), peer, status)
        )
        self.messages.append(call.message)


async def _serve(
    metrics: ServingMetrics, drain: Drain | None = None, recorder: Recorder | None = None
) -> tuple[grpc.aio.Server, str]:
    hooks: list = [CallMetrics(metrics, lambda model: model == "m")]
    if drain is not None:
        hooks.append(drain)
    if recorder is not None:
        hooks.append(recorder)
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
    labels = {"model": "m", "version": "", "rpc": "Raise", "code": code}  # no version resolved
    return metrics.registry.get_sample_value("cnnserve_request_failures_total", labels) or 0.0


def test_every_error_type_reaches_the_client_as_its_status_and_is_counted_under_it() -> None:
    names = [cls.__name__ for cls in EXPECTED]
    answers, metrics = asyncio.run(_calls(names))
    assert answers == [(EXPECTED[cls], f"{cls.__name__} names the culprit") for cls in EXPECTED]
    for code in CODES:
        assert _failures(metrics, code) == sum(1 for value in EXPECTED.values() if value == code), code
    requests = metrics.registry.get_sample_value(
        "cnnserve_requests_total", {"model": "m", "version": "", "rpc": "Raise"}
    )
    assert requests == len(EXPECTED)


def test_a_bug_answers_internal_with_a_fixed_message_and_success_counts_images() -> None:
    answers, metrics = asyncio.run(_calls(["RuntimeError", "ok", "ok"]))
    assert answers == [("INTERNAL", INTERNAL_MESSAGE), ("OK", "fine"), ("OK", "fine")]
    assert _failures(metrics, "INTERNAL") == 1
    images = {"model": "m", "version": "", "rpc": "Raise"}
    assert metrics.registry.get_sample_value("cnnserve_images_total", images) == 4


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
    recorder = Recorder()

    async def scenario() -> tuple[str, ServingMetrics]:
        metrics = ServingMetrics()
        drain = Drain()  # counts the calls in flight
        server, address = await _serve(metrics, drain, recorder)
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
    # The hooks (the access log, the span) read the same status and why.
    assert [seen[-1] for seen in recorder.seen] == ["DEADLINE_EXCEEDED", "CANCELLED"]
    assert recorder.messages == ["the call's deadline passed", "the call was cancelled"]


def test_hooks_see_each_call_as_the_transport_describes_it() -> None:
    recorder = Recorder()

    async def scenario() -> list[str]:
        server, address = await _serve(ServingMetrics(), recorder=recorder)
        answers = []
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = channel.unary_unary(METHOD)
                for name, timeout in (
                    ("ok", 10),
                    ("deadline", 100),
                    ("deadline", None),
                    ("QueueFullError", 10),
                ):
                    try:
                        reply = await stub(name.encode(), timeout=timeout, metadata=(("x-test", name),))
                        answers.append(reply.decode())
                    except grpc.aio.AioRpcError as error:
                        answers.append(error.code().name)
        finally:
            await server.stop(None)
        return answers

    answers = asyncio.run(scenario())
    assert answers[0] == "fine" and answers[2] == "none" and answers[3] == "RESOURCE_EXHAUSTED"
    assert 90 <= int(answers[1]) <= 101  # the client's 100 s, in the server's loop time
    assert recorder.seen == [
        ("test", "Raise", "m", "ok", "ipv4:127.0.0.1", "OK"),
        ("test", "Raise", "m", "deadline", "ipv4:127.0.0.1", "OK"),
        ("test", "Raise", "m", "deadline", "ipv4:127.0.0.1", "OK"),
        ("test", "Raise", "m", "QueueFullError", "ipv4:127.0.0.1", "RESOURCE_EXHAUSTED"),
    ]
    assert recorder.messages == ["", "", "", "QueueFullError names the culprit"]


def test_a_bug_is_logged_with_its_traceback_and_an_expected_error_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers, _ = asyncio.run(_calls(["RuntimeError", "NotFoundError"]))
    assert [code for code, _ in answers] == ["INTERNAL", "NOT_FOUND"]
    errors = [r for r in caplog.records if r.name == "cnnserve.serving.grpc.interceptors"]
    assert [r.getMessage() for r in errors] == ["test Raise for model 'm' failed"]
    assert errors[0].levelname == "ERROR" and errors[0].exc_info[0] is RuntimeError


def test_a_hook_failing_at_begin_answers_internal_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder(refuse=RuntimeError("a hook broke"))

    async def scenario() -> str:
        server, address = await _serve(ServingMetrics(), recorder=recorder)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary(METHOD)(b"ok", timeout=10)
        finally:
            await server.stop(None)
        return f"{caught.value.code().name}: {caught.value.details()}"

    assert asyncio.run(scenario()) == f"INTERNAL: {INTERNAL_MESSAGE}"
    assert "test Raise for model 'm' failed" in caplog.text


class _Remaining:
    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds

    def time_remaining(self) -> float | None:
        return self.seconds


@pytest.mark.parametrize(
    ("remaining", "passed"),
    [(None, False), (0.0, True), (DEADLINE_SLACK_S, True), (DEADLINE_SLACK_S * 2, False), (5.0, False)],
)
def test_a_call_counts_as_expired_within_the_slack_of_its_deadline(remaining, passed: bool) -> None:
    assert _deadline_passed(_Remaining(remaining)) is passed


def test_a_rate_limited_warning_is_written_once_an_interval_and_counts_what_it_held_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    monkeypatch.setattr(interceptors, "time", SimpleNamespace(monotonic=lambda: now[0]))
    log = RateLimitedLog(logging.getLogger("cnnserve.test.rate"), 60.0)
    caplog.set_level("WARNING", logger="cnnserve.test.rate")
    for at in (0.0, 10.0, 59.9, 60.0, 60.5, 120.0, 500.0):
        now[0] = at
        log.warning("malformed %s body", f"at {at:g}")
    assert [record.getMessage() for record in caplog.records] == [
        "malformed at 0 body",
        "malformed at 60 body (2 more since the last such line)",  # the interval's end included
        "malformed at 120 body (1 more since the last such line)",
        "malformed at 500 body",
    ]


class _Echo:
    """A unary-unary method on ClassifyRequest bodies: answers the model name it read."""

    async def classify(
        self, request: inference_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        return request.model.encode()

    async def raw(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"raw:" + request

    async def stream(self, request: bytes, context: grpc.aio.ServicerContext):
        yield request


async def _malformed_calls(bodies: list[tuple[str, bytes]]) -> list[tuple[str, str]]:
    echo = _Echo()
    server = grpc.aio.server(interceptors=[MalformedRequestInterceptor(log_interval_s=60.0)])
    handlers = {
        "Classify": grpc.unary_unary_rpc_method_handler(
            echo.classify, request_deserializer=inference_pb2.ClassifyRequest.FromString
        ),
        "Parsed": grpc.unary_unary_rpc_method_handler(echo.raw, request_deserializer=_strict_ascii),
        "Raw": grpc.unary_unary_rpc_method_handler(echo.raw),
        "Stream": grpc.unary_stream_rpc_method_handler(echo.stream, request_deserializer=_strict_ascii),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("cnnserve.test.Bodies", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    answers = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method, body in bodies:
                path = f"/cnnserve.test.Bodies/{method}"
                try:
                    if method == "Stream":
                        replies = [reply async for reply in channel.unary_stream(path)(body, timeout=10)]
                        answers.append(("OK", b"|".join(replies).decode()))
                    else:
                        answers.append(
                            (
                                "OK",
                                (await channel.unary_unary(path)(body, timeout=10)).decode(errors="replace"),
                            )
                        )
                except grpc.aio.AioRpcError as error:
                    answers.append((error.code().name, error.details() or ""))
    finally:
        await server.stop(None)
    return answers


def _strict_ascii(data: bytes) -> bytes:
    """A deserializer with no message type behind it: refuses bytes that are not ASCII."""
    data.decode("ascii")
    return data


def test_a_body_that_does_not_parse_is_invalid_argument_naming_its_type_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("WARNING", logger=interceptors.LOG.name)
    garbage = b"\xff\xff\xff\xff\x0f"
    good = inference_pb2.ClassifyRequest(model="digits").SerializeToString()
    answers = asyncio.run(
        _malformed_calls(
            [
                ("Classify", garbage),
                ("Classify", good),
                ("Classify", garbage),
                ("Parsed", garbage),
                ("Parsed", b"fine"),
                ("Raw", garbage[:1]),  # no deserializer: the handler gets the bytes as they are
                ("Stream", b"streamed"),  # streaming methods are left to gRPC
            ]
        )
    )
    assert answers == [
        ("INVALID_ARGUMENT", "the request body is not a valid cnnserve.v1.ClassifyRequest"),
        ("OK", "digits"),
        ("INVALID_ARGUMENT", "the request body is not a valid cnnserve.v1.ClassifyRequest"),
        ("INVALID_ARGUMENT", "the request body is not a valid request of /cnnserve.test.Bodies/Parsed"),
        ("OK", "raw:fine"),
        ("OK", "raw:\ufffd"),
        ("OK", "streamed"),
    ]
    with pytest.raises(Exception) as parsing:  # what the parser itself says of the body: the log's reason
        inference_pb2.ClassifyRequest.FromString(garbage)
    reason = str(parsing.value)[:200]
    warnings = [r.getMessage() for r in caplog.records if r.name == interceptors.LOG.name]
    # One line a minute, however many bodies.
    assert warnings == [f"malformed cnnserve.v1.ClassifyRequest body answered INVALID_ARGUMENT: {reason}"]


def test_each_method_is_wrapped_once() -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        _Echo().classify, request_deserializer=inference_pb2.ClassifyRequest.FromString
    )
    interceptor = MalformedRequestInterceptor()

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return handler

    async def twice() -> tuple[object, object]:
        details = SimpleNamespace(method="/cnnserve.v1.InferenceService/Classify", invocation_metadata=())
        return (
            await interceptor.intercept_service(continuation, details),
            await interceptor.intercept_service(continuation, details),
        )

    first, second = asyncio.run(twice())
    assert first is second and first is not handler
