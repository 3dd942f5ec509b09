"""The hooks every call goes through: refusing new calls while draining, and a drain that outlives its
grace period. Drains run on a virtual clock (tests/serving/virtual_time.py): a grace period of
an hour passes at once, and exactly."""

from __future__ import annotations

import asyncio

import pytest
from virtual_time import run

from cnnserve.serving.core.calls import Call, CallHooks, Drain
from cnnserve.serving.errors import ShuttingDownError, Status


def _call() -> Call:
    return Call("test", "Classify", "m")


def test_a_drain_waits_for_the_calls_in_flight() -> None:
    async def scenario() -> tuple[bool, float]:
        drain = Drain()
        call = _call()
        drain.begin(call)
        loop = asyncio.get_running_loop()
        loop.call_later(2.0, drain.end, call)  # the call in flight ends 2 s into the drain
        start = loop.time()
        drained = await drain.drain(3600.0)
        return drained, loop.time() - start

    assert run(scenario) == (True, 2.0)


def test_a_drain_outliving_its_grace_period_gives_up_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[bool, float, int]:
        drain = Drain()
        drain.begin(_call())
        drain.begin(_call())  # two calls that never end
        loop = asyncio.get_running_loop()
        start = loop.time()
        drained = await drain.drain(30.0)
        with pytest.raises(ShuttingDownError, match="the server is shutting down"):
            drain.begin(_call())  # still refusing new calls
        return drained, loop.time() - start, drain.in_flight

    assert run(scenario) == (False, 30.0, 2)
    assert "2 call(s) still in flight after 30 s; cancelling them" in caplog.text


def test_an_idle_drain_returns_at_once() -> None:
    async def scenario() -> tuple[bool, float]:
        drain = Drain()
        start = asyncio.get_running_loop().time()
        return await drain.drain(10.0), asyncio.get_running_loop().time() - start

    assert run(scenario) == (True, 0.0)


class _Refusing:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def begin(self, call: Call) -> None:
        self.log.append("refusing.begin")
        raise ShuttingDownError("no")

    def end(self, call: Call) -> None:
        self.log.append("refusing.end")


class _Recording:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def begin(self, call: Call) -> None:
        self.log.append(f"{self.name}.begin")

    def end(self, call: Call) -> None:
        self.log.append(f"{self.name}.end:{call.status.name if call.status else 'ok'}")
        if self.name == "broken":
            raise RuntimeError("a hook failed")


def test_hooks_end_in_reverse_and_a_refusal_ends_only_those_begun() -> None:
    log: list[str] = []
    hooks = CallHooks([_Recording("a", log), _Recording("b", log)])
    call = _call()
    hooks.begin(call)
    hooks.end(call)
    assert log == ["a.begin", "b.begin", "b.end:ok", "a.end:ok"]
    log.clear()
    hooks.add(_Refusing(log))
    hooks.add(_Recording("never", log))
    refused = _call()
    with pytest.raises(ShuttingDownError):
        hooks.begin(refused)
    assert log == ["a.begin", "b.begin", "refusing.begin", "b.end:UNAVAILABLE", "a.end:UNAVAILABLE"]
    assert (refused.status, refused.message) == (Status.UNAVAILABLE, "no")


def test_a_failing_hook_does_not_hide_the_others(caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []
    hooks = CallHooks([_Recording("a", log), _Recording("broken", log)])
    call = _call()
    hooks.begin(call)
    hooks.end(call)
    assert log == ["a.begin", "broken.begin", "broken.end:ok", "a.end:ok"]
    assert "call hook _Recording failed" in caplog.text


class _Source:
    """A transport's view of a call, as gRPC's servicer context gives it; counts how often it is asked."""

    def __init__(self) -> None:
        self.asked = 0

    def invocation_metadata(self):
        self.asked += 1
        return (("x-id", b"caf\xe9"), ("n", 3), ("x-id", "second"))

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"


def test_metadata_is_read_from_the_transport_once_and_as_text() -> None:
    source = _Source()
    call = Call("test", "Classify", "m", source)
    assert source.asked == 0  # nothing read until a hook asks
    values = (call.metadata_value("x-id"), call.metadata_value("n"), call.metadata_value("y"))
    assert values == ("café", "3", None)
    assert source.asked == 1 and call.peer == "ipv4:127.0.0.1:5555"
    assert (Call("test", "Classify", "m").metadata, Call("test", "Classify", "m").peer) == ((), "")
