"""When a batch that is not full waits for more requests, and for how long: the batcher's wait policies.

The batcher (queue, take, run) asks its policy three things: whether more requests are to be expected,
whether every client that could send one already has, and how long the oldest request may wait.

`FixedWait` is Triton's way: a batch always waits `max_queue_delay` after its oldest request to fill.
`AdaptiveWait` (the default) waits only while more requests are to be expected -- some are on their way
(being decoded), or requests have lately been arriving while others were queued or computing (concurrent
traffic) -- and stops as soon as every client seen lately, bar those whose requests are computing, has one
waiting, since closed-loop clients send nothing more until answered. So a lone client's request runs at
once, and under concurrent load batches grow, which makes every image cheaper on a CPU. For concurrent
traffic the wait is scaled by how busy the worker's event loop has been (`load`, see loop_load): a busy
worker gains CPU from bigger batches, an idle one only latency.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

# After the last sign of concurrent traffic, batches keep waiting to fill for this many max_queue_delays.
CONCURRENCY_WINDOW_DELAYS = 10
# Under concurrent traffic a batch waits max_queue_delay x (busy - this) / (1 - this), where busy is the
# share of time the worker's event loop was busy lately: no wait at all at half busy or less.
IDLE_BUSY_SHARE = 0.5


class WaitPolicy(Protocol):
    """What the batcher asks before letting a batch that is not full wait to fill."""

    arriving: int  # requests being decoded that will be submitted next (the batcher's `expecting`)

    def arrived(self, now: float, concurrent: bool, in_batcher: int) -> None:
        """A request was queued at loop time `now`; `concurrent`: others were queued or computing;
        `in_batcher`: requests queued or computing, this one included."""

    def expects_more(self, now: float) -> bool:
        """Whether a batch that is not full should wait (up to `fill_delay`) for more requests."""

    def everyone_in(self, now: float, waiting: int, computing: int) -> bool:
        """Whether every client that could send a request soon already has one queued."""

    def fill_delay(self) -> float:
        """How long, in seconds, the oldest queued request may wait for company."""


class FixedWait:
    """A batch that is not full always waits `delay_s` after its oldest request (Triton's dynamic batcher)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.arriving = 0

    def arrived(self, now: float, concurrent: bool, in_batcher: int) -> None:
        pass

    def expects_more(self, now: float) -> bool:
        return True

    def everyone_in(self, now: float, waiting: int, computing: int) -> bool:
        return False

    def fill_delay(self) -> float:
        return self.delay_s


class WindowedPeak:
    """The most of a count observed over the current and the previous window (fixed windows of a
    length given at each call), so a peak is forgotten one to two windows after it ended."""

    def __init__(self) -> None:
        self._start = -1e18
        self._current = 0
        self._previous = 0

    def _roll(self, now: float, window: float) -> None:
        if now - self._start > window:
            self._previous = self._current if now - self._start <= 2 * window else 0
            self._current = 0
            self._start = now

    def observe(self, now: float, window: float, count: int) -> None:
        self._roll(now, window)
        self._current = max(self._current, count)

    def value(self, now: float, window: float) -> int:
        self._roll(now, window)
        return max(self._current, self._previous)


class AdaptiveWait:
    """Waits only while more requests are to be expected, stops when every recent client is in, and under
    concurrent traffic scales the wait by the worker's busy share (see the module doc)."""

    def __init__(self, delay_s: float, load: Callable[[], float] | None = None) -> None:
        self.delay_s = delay_s
        # The worker's event loop's busy share lately (0..1, see loop_load); None: unknown, taken as busy.
        self.load = load
        self.arriving = 0
        self.window_s = CONCURRENCY_WINDOW_DELAYS * delay_s
        self._concurrent_at = -1e18  # loop time of the last request that found others queued or computing
        # Requests seen in the batcher at once (queued + computing), the most over the current and the
        # previous concurrency window: closed-loop clients cannot send more than that.
        self._peak = WindowedPeak()

    def arrived(self, now: float, concurrent: bool, in_batcher: int) -> None:
        if concurrent:
            self._concurrent_at = now
        self._peak.observe(now, self.window_s, in_batcher)

    def expects_more(self, now: float) -> bool:
        # Requests on their way, or concurrent traffic lately: more will come within the delay. A lone
        # client, whose next request only comes after this answer, never waits.
        return self.arriving > 0 or now - self._concurrent_at <= self.window_s

    def everyone_in(self, now: float, waiting: int, computing: int) -> bool:
        # Never while requests are known to be on their way (being decoded).
        if self.arriving > 0:
            return False
        return waiting >= self._peak.value(now, self.window_s) - computing

    def fill_delay(self) -> float:
        # In full while requests are on their way; otherwise scaled down on a worker whose loop is not busy
        # (a bigger batch saves CPU the worker does not need, and the wait would only add latency).
        if self.arriving > 0 or self.load is None:
            return self.delay_s
        busy = self.load()
        return self.delay_s * min(1.0, max(0.0, (busy - IDLE_BUSY_SHARE) / (1.0 - IDLE_BUSY_SHARE)))
