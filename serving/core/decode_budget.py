"""How many image pixels a worker decodes at once: big requests take turns instead of piling up.

Every encoded image declares its size in its header, read before any pixel is decoded. A request needs
the sum over its images; the worker's budget (`--max-decode-pixels`) bounds the sum over every request
being decoded at once, so that a burst of decompression bombs (each under `--max-pixels`) costs the
worker at most that much memory and CPU, while other calls go on. A request waits its turn in arrival
order, up to its deadline; a request larger than the whole budget is refused at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cnnserve.serving.errors import DeadlineExpiredError, InvalidRequestError


class DecodeBudget:
    """A per-worker pool of pixels being decoded; `hold(pixels, deadline)` waits for room (FIFO)."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self.in_use = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @asynccontextmanager
    async def hold(self, pixels: int, deadline: float | None = None) -> AsyncIterator[None]:
        """Hold `pixels` of the budget for the body; `deadline` is event-loop time (None: no limit)."""
        if pixels > self.max_pixels:
            raise InvalidRequestError(
                f"the request's images hold {pixels:,} pixels, more than this worker decodes at once "
                f"({self.max_pixels:,}, --max-decode-pixels)"
            )
        await self._acquire(pixels, deadline)
        try:
            yield
        finally:
            self._release(pixels)

    async def _acquire(self, pixels: int, deadline: float | None) -> None:
        if not self._waiters and self.in_use + pixels <= self.max_pixels:
            self.in_use += pixels
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        entry = (pixels, waiter)
        self._waiters.append(entry)
        try:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():  # granted just as the deadline passed
                self._release(pixels)
            else:
                self._remove(entry)
            raise DeadlineExpiredError(
                "the deadline passed while the request waited for other requests' images to be decoded"
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(pixels)
            else:
                self._remove(entry)
            raise

    def _remove(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        with contextlib.suppress(ValueError):  # already granted and taken off the queue
            self._waiters.remove(entry)
        entry[1].cancel()
        self._wake()

    def _release(self, pixels: int) -> None:
        self.in_use -= pixels
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use + self._waiters[0][0] <= self.max_pixels:
            pixels, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self.in_use += pixels
            waiter.set_result(None)
