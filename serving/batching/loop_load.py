"""How busy an event loop has been lately: the share of wall time it spent not waiting for I/O.

The dynamic batcher asks it how long a batch may wait for company. A worker whose loop is always busy
(requests queue up behind it) makes every request cheaper by batching more and loses nothing by waiting;
a worker that idles between requests would only add latency. The loop counts the time its selector
blocks; `new_event_loop` makes such a loop and `for_loop` finds its meter (None for any other loop).
"""

from __future__ import annotations

import asyncio
import selectors
import time
import weakref

# The busy share is taken over windows of this many seconds (the last complete one is reported).
WINDOW_S = 0.1


class LoopLoad:
    """The busy share of one event loop over the last complete window (1.0 until one completed)."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._start = time.perf_counter()
        self._idle = 0.0
        self._busy = 1.0

    def add_idle(self, start: float, end: float) -> None:
        """The loop waited for I/O from `start` to `end` (perf_counter seconds)."""
        self._idle += end - start
        elapsed = end - self._start
        if elapsed >= self.window_s:
            self._busy = max(0.0, 1.0 - self._idle / elapsed)
            self._start = end
            self._idle = 0.0

    def busy(self) -> float:
        """Share of the last complete window the loop spent running callbacks rather than waiting, 0..1
        (a window completes when the loop next wakes from a wait, so a long idle spell shows on waking)."""
        return self._busy


class _TimedSelector(selectors.DefaultSelector):
    """The platform's default selector, reporting every blocking wait to a LoopLoad."""

    def __init__(self, load: LoopLoad) -> None:
        super().__init__()
        self.load = load

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return super().select(timeout)  # a poll: callbacks are ready, the loop is not waiting
        start = time.perf_counter()
        ready = super().select(timeout)
        self.load.add_idle(start, time.perf_counter())
        return ready


_LOADS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLoad] = weakref.WeakKeyDictionary()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A selector event loop that measures its own load (see `for_loop`)."""
    load = LoopLoad()
    loop = asyncio.SelectorEventLoop(_TimedSelector(load))
    _LOADS[loop] = load
    return loop


def for_loop(loop: asyncio.AbstractEventLoop) -> LoopLoad | None:
    """The load meter of a loop made by `new_event_loop`; None for other loops."""
    return _LOADS.get(loop)
