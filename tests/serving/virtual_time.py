"""A virtual clock for the batcher's tests: time moves only when nothing is left to run.

The batcher's decisions depend on time (how long a batch waits to fill, deadlines, the window in which
traffic counts as concurrent). Measured on the wall clock, a test of them passes or fails with the load on
the machine. Here the event loop's clock is virtual: when every task waits, the loop jumps straight to its
next timer instead of sleeping, so `asyncio.sleep(0.005)` takes exactly 5 ms of loop time however busy the
CPUs are. `VirtualExecutor` stands in for the thread pool: it runs a batch at once, on the loop, and hands
the result back after the batch's cost in virtual seconds, so a computing batch overlaps with queueing
exactly as a thread would, without a thread.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")


class _InstantSelector(selectors.DefaultSelector):
    """Never sleeps: a wait with a timeout advances the loop's virtual clock by the timeout instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualClockLoop | None = None

    def select(self, timeout: float | None = None):  # type: ignore[override]
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise RuntimeError("every task waits and no timer is due: the scenario would hang forever")
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose `time()` is virtual, starting at 0 and moving only from timer to timer."""

    def __init__(self) -> None:
        selector = _InstantSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `scenario()` to completion on a fresh virtual-clock loop."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(scenario())


class VirtualExecutor(Executor):
    """Runs each call at once on the loop's thread; its result arrives `cost(args)` virtual seconds later.

    `running` is how many calls are computing now (results not yet handed back), `most` the peak.
    """

    def __init__(self, cost: Callable[..., float] = lambda *args: 0.0) -> None:
        self.cost = cost
        self.running = 0
        self.most = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        loop = asyncio.get_running_loop()
        future: Future[T] = Future()
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            loop.call_later(self.cost(*args), self._finish, future, None, error)
        else:
            loop.call_later(self.cost(*args), self._finish, future, result, None)
        return future

    def _finish(self, future: Future[T], result: T | None, error: BaseException | None) -> None:
        self.running -= 1
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
