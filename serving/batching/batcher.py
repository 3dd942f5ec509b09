"""Dynamic batching: concurrent requests for one model version merged into one ONNX Runtime call.

The batcher queues requests, takes them in order into batches of at most `max_batch_size` images, runs
each batch once and hands every caller its rows. When a batch that is not full waits, and for how long, is
its wait policy's decision (`policy.py`: adaptive by default, fixed as Triton does), never longer than
`max_queue_delay` after the oldest request arrived. Batches run in threads of the executor, so the event
loop keeps accepting (and queueing) while ONNX Runtime computes; a second batch runs alongside only when
a full one (or a ready-made `bulk` one) waits. A worker with one core to itself gains nothing from that
overlap, only a thread hand-off per batch, so there (`inline_compute_s`) a batch expected to take less
than a slice of the loop's time runs on the event loop itself. The queue is bounded in images (overflow →
QueueFullError); a request whose deadline has passed, or whose caller went away, is dropped before it is
computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cnnserve.serving.batching.policy import AdaptiveWait, FixedWait, WaitPolicy
from cnnserve.serving.errors import DeadlineExpiredError, QueueFullError, ShuttingDownError
from cnnserve.serving.observability.calls import (
    BatchRecord,
    BatchShare,
    CallRecord,
    current_call,
    record_batch,
)

LOG = logging.getLogger(__name__)


class BatchObserver(Protocol):
    """Receives what each batch did (metrics); called on the event loop."""

    def observe_batch(self, size: int, queue_seconds: Sequence[float], compute_seconds: float) -> None: ...

    def observe_dropped(self, count: int) -> None: ...


@dataclass(frozen=True)
class BatchSettings:
    max_batch_size: int
    max_queue_delay_s: float
    max_queue_images: int
    enabled: bool = True  # False: every request runs alone (no merging), as soon as it arrives
    # True: wait for more only while more are to be expected (see the module doc and `expecting`);
    # False: a batch always waits max_queue_delay to fill, as Triton does.
    adaptive: bool = True
    # Batches computing at once. A second one starts only when a full batch waits, so big requests keep
    # every core busy (ORT runs one thread per worker) while small ones still merge behind the first.
    max_concurrent_batches: int = 2
    # A batch expected (from the CPU time per image measured so far) to compute within this many seconds
    # runs on the event loop, not in the executor; 0 = always in the executor. For workers with one core
    # each and CPU sessions.
    inline_compute_s: float = 0.0


Prepare = Callable[[], np.ndarray]  # makes a request's batch when its batch starts (see `submit_deferred`)


@dataclass(eq=False)
class _Waiting:
    batch: np.ndarray | Prepare  # the request's images, or how to make them when its batch starts
    count: int  # its images
    future: asyncio.Future[np.ndarray]
    deadline: float | None  # event-loop time
    enqueued: float  # event-loop time
    bulk: bool = False  # a ready-made batch: it need not wait to merge (see `submit`)
    # The caller's call record when tracing or the access log is on (see observability/calls.py): the
    # batch then notes when this request was decoded, queued and computed. None otherwise.
    call: CallRecord | None = None
    decoded: tuple[float, float] | None = None  # when `prepare` ran (monotonic), for a recorded call


class DynamicBatcher:
    """Merges concurrent `submit` calls into batches run by `run(batch) -> results` (row i ↔ image i)."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        settings: BatchSettings,
        executor: Executor,
        observer: BatchObserver | None = None,
        name: str = "",
        load: Callable[[], float] | None = None,
    ) -> None:
        if settings.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {settings.max_batch_size}")
        self.run = run
        self.settings = settings
        self.executor = executor
        self.observer = observer
        self.name = name
        # When a batch that is not full waits, and how long (see policy.py).
        self.policy: WaitPolicy = (
            AdaptiveWait(settings.max_queue_delay_s, load)
            if settings.adaptive
            else FixedWait(settings.max_queue_delay_s)
        )
        self._waiting: deque[_Waiting] = deque()
        self._waiting_images = 0
        self._inflight_images = 0  # images of unmerged (batching off) calls being computed
        self._wake: asyncio.Future[None] | None = None  # resolved to wake the batch loop
        self._filling = False  # the loop waits for a batch to fill (only a full batch wakes it early)
        self._running_requests = 0  # requests in the batches computing now
        self._running = 0  # batches computing now
        self._seconds_per_image: float | None = None  # compute time per image, a moving average
        self._batches: set[asyncio.Task[None]] = set()  # their tasks (kept referenced)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queued_images(self) -> int:
        return self._waiting_images + self._inflight_images

    async def submit(
        self, batch: np.ndarray, deadline: float | None = None, bulk: bool = False
    ) -> np.ndarray:
        """Results for a (N, ...) batch, computed together with whatever else is waiting.

        `deadline` is in `loop.time()` seconds; past it the request is dropped with DeadlineExpiredError.
        `bulk` marks a ready-made batch (an explanation's chunk): when it reaches the head of the queue it
        may start alongside a running batch, as a full one would, instead of waiting to merge.
        """
        if self._closed:
            raise ShuttingDownError(f"model {self.name} is being unloaded")
        count = len(batch)
        limit = self.settings.max_batch_size
        if count > limit:
            parts = [batch[start : start + limit] for start in range(0, count, limit)]
            self._check_room(count)
            results = await asyncio.gather(*(self.submit(part, deadline, bulk) for part in parts))
            return np.concatenate(results)
        return await self._enqueue(batch, count, deadline, bulk)

    async def submit_deferred(
        self, prepare: Prepare, count: int, deadline: float | None = None
    ) -> np.ndarray:
        """Results for the `count` images `prepare()` makes, called on the event loop when the request's
        batch starts: a small request's images are then decoded one after another with the rest of the
        batch's, while the decoder's code and tables are still in the CPU's caches, instead of between
        other calls' gRPC work. What `prepare` raises goes to this caller alone; the rest of the batch
        goes on."""
        if self._closed:
            raise ShuttingDownError(f"model {self.name} is being unloaded")
        if count > self.settings.max_batch_size or not self.settings.enabled:
            return await self.submit(prepare(), deadline)
        return await self._enqueue(prepare, count, deadline, bulk=False)

    async def _enqueue(
        self, batch: np.ndarray | Prepare, count: int, deadline: float | None, bulk: bool
    ) -> np.ndarray:
        self._check_room(count)
        loop = asyncio.get_running_loop()
        if not self.settings.enabled:
            assert isinstance(batch, np.ndarray)
            return await self._run_alone(loop, batch)
        now = loop.time()
        concurrent = not bulk and bool(self._running_requests or self._waiting)
        self.policy.arrived(now, concurrent, len(self._waiting) + self._running_requests + 1)
        waiting = _Waiting(batch, count, loop.create_future(), deadline, now, bulk, current_call())
        self._waiting.append(waiting)
        self._waiting_images += count
        if self._task is None:
            self._task = loop.create_task(self._batch_loop(), name=f"batcher-{self.name}")
        self._notify(force=bulk)
        return await waiting.future  # a cancelled caller cancels the future; the loop skips it

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Mark a request on its way (being decoded) so a batch waits for it, up to max_queue_delay.

        A batch waits for more requests only while some are known to be coming: a lone request runs at
        once, and under load batches grow by themselves while the previous batch computes.
        """
        self.policy.arriving += 1
        try:
            yield
        finally:
            self.policy.arriving -= 1
            if self.policy.arriving == 0:
                self._notify()  # the loop resumes after the caller's (synchronous) submit

    def _check_room(self, count: int) -> None:
        if self.queued_images + count > self.settings.max_queue_images:
            raise QueueFullError(
                f"the batch queue of {self.name} is full ({self.queued_images} images waiting, "
                f"limit {self.settings.max_queue_images}); retry later"
            )

    async def _run_alone(self, loop: asyncio.AbstractEventLoop, batch: np.ndarray) -> np.ndarray:
        self._inflight_images += len(batch)
        call = current_call()
        try:
            start = time.perf_counter()
            began = time.monotonic() if call is not None else 0.0
            result = await self._compute(loop, batch)
            if self.observer is not None:
                self.observer.observe_batch(len(batch), (0.0,), time.perf_counter() - start)
            if call is not None:
                record = BatchRecord(self.name, len(batch), 1, began, time.monotonic())
                record_batch(record, [(call, BatchShare(record, began, began))])
            return result
        finally:
            self._inflight_images -= len(batch)

    def _notify(self, force: bool = False) -> None:
        """Wake the batch loop if it waits for a first request, or for a batch that is now full."""
        wake = self._wake
        if wake is None or wake.done():
            return
        if not force and not self._closed and self._waiting_images < self.settings.max_batch_size:
            if self._filling and self._wants_to_fill(asyncio.get_running_loop().time()):
                return  # more requests are on their way; the fill timer or the last arrival wakes it
            if self._running:
                return  # a batch computes; its end (or a full batch) wakes the loop
        wake.set_result(None)

    def _wants_to_fill(self, now: float) -> bool:
        """The policy says more requests are coming and not every recent client is in yet."""
        return self.policy.expects_more(now) and not self.policy.everyone_in(
            now, len(self._waiting), self._running_requests
        )

    async def _sleep(self, loop: asyncio.AbstractEventLoop, until: float | None) -> None:
        wake: asyncio.Future[None] = loop.create_future()
        self._wake = wake
        timer = None if until is None else loop.call_at(until, _resolve, wake)
        try:
            await wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                if self._closed and not self._running:
                    return
                await self._sleep(loop, None)
                continue
            full = self._waiting_images >= self.settings.max_batch_size or self._waiting[0].bulk
            if self._running and (not full or self._running >= self.settings.max_concurrent_batches):
                # While a batch computes, the next one fills; only a full one may run alongside it.
                await self._sleep(loop, None)
                continue
            fill_until = self._waiting[0].enqueued + self.policy.fill_delay()
            now = loop.time()
            if not full and not self._closed and now < fill_until and self._wants_to_fill(now):
                self._filling = True
                await self._sleep(loop, fill_until)
                self._filling = False
            taken = self._take(loop.time())
            if taken:
                self._running += 1
                self._running_requests += len(taken)
                task = loop.create_task(self._run_batch(loop, taken))
                self._batches.add(task)
                task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._running -= 1
        self._notify(force=True)

    def _take(self, now: float) -> list[_Waiting]:
        """Take waiting requests for one batch of at most max_batch_size images, dropping cancelled and
        expired ones.

        The oldest request always goes first. Requests behind it join while they fit, in order, except
        that a ready-made (`bulk`) batch never joins another one: it waits to start a batch of its own (and
        may run beside this one), and the small requests queued behind it still ride in this batch -- so
        a Classify call waits behind at most the batches already computing, never behind a queue of
        explanation chunks.
        """
        taken: list[_Waiting] = []
        skipped: list[_Waiting] = []
        images = 0
        dropped = 0
        limit = self.settings.max_batch_size
        while self._waiting and images < limit:
            head = self._waiting.popleft()
            count = head.count
            if head.future.done():  # the caller cancelled or timed out
                self._waiting_images -= count
                dropped += 1
                continue
            if head.deadline is not None and head.deadline <= now:
                self._waiting_images -= count
                head.future.set_exception(
                    DeadlineExpiredError(f"deadline passed after {now - head.enqueued:.3f} s in the queue")
                )
                dropped += 1
                continue
            if images + count > limit or (taken and head.bulk):
                skipped.append(head)
                if not head.bulk:
                    break  # an ordinary request that does not fit ends the batch: nothing overtakes it
                continue
            self._waiting_images -= count
            taken.append(head)
            images += count
        self._waiting.extendleft(reversed(skipped))
        if dropped and self.observer is not None:
            self.observer.observe_dropped(dropped)
        return taken

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, taken: list[_Waiting]) -> None:
        started = loop.time()
        ready = self._prepared(taken)
        self._running_requests -= len(taken) - len(ready)  # those answered with their own error already
        if not ready:
            return
        batch = ready[0].batch if len(ready) == 1 else np.concatenate([w.batch for w in ready])
        assert isinstance(batch, np.ndarray)
        self._inflight_images += len(batch)
        recorded = [w for w in ready if w.call is not None]
        try:
            start = time.perf_counter()
            began = time.monotonic() if recorded else 0.0
            results = await self._compute(loop, batch)
            compute = time.perf_counter() - start
            ended = time.monotonic() if recorded else 0.0
        except Exception as error:  # the model failed on this batch: every caller in it hears why
            LOG.exception("batch of %d images for %s failed", len(batch), self.name)
            for waiting in ready:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
            return
        finally:
            self._inflight_images -= len(batch)
            self._running_requests -= len(ready)
        if recorded:
            self._record(recorded, len(batch), len(ready), started, began, ended)
        offset = 0
        for waiting in ready:
            if not waiting.future.done():
                waiting.future.set_result(results[offset : offset + waiting.count])
            offset += waiting.count
        if self.observer is not None:
            self.observer.observe_batch(len(batch), [started - w.enqueued for w in ready], compute)

    def _record(
        self, recorded: list[_Waiting], images: int, requests: int, started: float, began: float, ended: float
    ) -> None:
        """Hand the recorded calls of a batch their share of it (times in monotonic seconds; the event
        loop's clock is the monotonic one)."""
        record = BatchRecord(self.name, images, requests, began, ended)
        shares = []
        for waiting in recorded:
            assert waiting.call is not None
            decoded = waiting.decoded or (None, None)
            shares.append((waiting.call, BatchShare(record, waiting.enqueued, started, *decoded)))
        record_batch(record, shares)

    @staticmethod
    def _prepared(taken: list[_Waiting]) -> list[_Waiting]:
        """The requests of a batch with their images made (`submit_deferred`); a request whose `prepare`
        failed is answered with its error and left out."""
        ready: list[_Waiting] = []
        for waiting in taken:
            if callable(waiting.batch):
                try:
                    if waiting.call is not None:
                        decoding = time.monotonic()
                        waiting.batch = waiting.batch()
                        waiting.decoded = (decoding, time.monotonic())
                    else:
                        waiting.batch = waiting.batch()
                    if len(waiting.batch) != waiting.count:
                        raise ValueError(f"prepare made {len(waiting.batch)} images, not {waiting.count}")
                except Exception as error:  # e.g. an undecodable image: that caller's error alone
                    if not waiting.future.done():
                        waiting.future.set_exception(error)
                    continue
            ready.append(waiting)
        return ready

    async def _compute(self, loop: asyncio.AbstractEventLoop, batch: np.ndarray) -> np.ndarray:
        """`run(batch)`: on the event loop when it is expected to be quick enough (`inline_compute_s`),
        else in the executor; either way the CPU time it took feeds the next decision."""
        per_image = self._seconds_per_image
        inline_s = self.settings.inline_compute_s
        if inline_s > 0 and per_image is not None and per_image * len(batch) <= inline_s:
            # Let callbacks already due run first: requests that arrived meanwhile are parsed and queued
            # for the next batch instead of waiting behind this one's compute.
            await asyncio.sleep(0)
            results, seconds = self._timed_run(batch)
        else:
            results, seconds = await loop.run_in_executor(self.executor, self._timed_run, batch)
        measured = seconds / len(batch)
        self._seconds_per_image = measured if per_image is None else 0.9 * per_image + 0.1 * measured
        return results

    def _timed_run(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """`run(batch)` and the CPU time it took in the thread that ran it: with one intra-op thread (the
        one-core workers that run batches inline) that is the compute, while the wall time would also count
        waiting for a core or for the GIL, which a busy event loop holds."""
        start = time.thread_time()
        results = self.run(batch)
        return results, time.thread_time() - start

    async def close(self) -> None:
        """Stop taking requests; those already waiting are still computed and answered (drain)."""
        self._closed = True
        if self._task is not None:
            self._notify(force=True)
            await self._task
            self._task = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
