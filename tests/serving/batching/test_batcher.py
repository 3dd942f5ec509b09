"""The dynamic batcher on its own, with a real numpy function as the model (inside a real server:
test_server_batching.py).

Scenarios whose outcome depends on time run on a virtual clock (virtual_time.py): the event loop jumps
from timer to timer and a batch "computes" for a stated number of virtual seconds, so each test asserts
exact batches and waits, whatever the load on the machine. The tests about threads (which one runs a
batch) use a real thread pool, and judge by CPU time, as the batcher does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from virtual_time import VirtualExecutor, run

from cnnserve.serving.batching import batcher as batcher_module
from cnnserve.serving.batching.batcher import BatchSettings, DynamicBatcher
from cnnserve.serving.errors import DeadlineExpiredError, QueueFullError, ShuttingDownError
from cnnserve.serving.observability.calls import CURRENT_CALL, CallRecord

pytestmark = pytest.mark.timeout(120)


class Model:
    """A 'model' that adds 1 to its input; records each batch's first-column values (sorted) and the wait
    every request of it had in the queue."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.queued: list[list[float]] = []
        self.dropped = 0

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(sorted(float(v) for v in batch[:, 0]))
        return batch + 1.0

    def observe_batch(self, size, queue_seconds, compute_seconds) -> None:
        assert size >= 1 and 0 <= compute_seconds < 60  # seconds, not a clock reading
        self.queued.append([round(seconds, 9) for seconds in queue_seconds])

    def observe_dropped(self, count: int) -> None:
        self.dropped += count


def _batcher(model: Model, executor, load=None, **settings) -> DynamicBatcher:
    values = {"max_batch_size": 8, "max_queue_delay_s": 0.05, "max_queue_images": 64, "adaptive": False}
    values.update(settings)
    return DynamicBatcher(
        model.run, BatchSettings(**values), executor, observer=model, name="test", load=load
    )


def _ones(count: int, value: float = 1.0) -> np.ndarray:
    return np.full((count, 1), value, np.float32)


def test_concurrent_requests_merge_in_order_and_split_back() -> None:
    model = Model()

    async def scenario() -> None:
        batcher = _batcher(model, VirtualExecutor())
        inputs = [np.full((n, 3), float(i), np.float32) for i, n in enumerate([1, 2, 3, 1, 5, 4])]
        results = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        for x, y in zip(inputs, results, strict=True):
            np.testing.assert_array_equal(y, x + 1.0)
        big = np.arange(20, dtype=np.float32).reshape(20, 1)  # more than max_batch_size: split
        np.testing.assert_array_equal(await batcher.submit(big), big + 1.0)
        await batcher.close()

    run(scenario)
    # [1, 2, 3, 1] fill 7 of 8; the 5 does not fit and nothing overtakes it; then 5, then 4; the 20 in 8s
    assert model.sizes == [7, 5, 4, 8, 8, 4]


def test_a_caller_cancelled_while_its_batch_computes_leaves_every_other_caller_its_own_rows() -> None:
    """Three callers share a batch; the middle one goes away while it computes. The rows after its rows
    still belong to the third caller: nobody is handed another caller's answer."""
    model = Model()

    async def scenario() -> None:
        executor = VirtualExecutor(cost=lambda batch: 1.0)
        batcher = _batcher(model, executor, max_batch_size=8)
        first = asyncio.ensure_future(batcher.submit(_ones(2, 10.0)))
        middle = asyncio.ensure_future(batcher.submit(_ones(3, 20.0)))
        last = asyncio.ensure_future(batcher.submit(_ones(3, 30.0)))  # 8 images: full, runs at once
        await asyncio.sleep(0.5)
        assert executor.running == 1 and model.sizes == [8]
        middle.cancel()
        np.testing.assert_array_equal(await first, _ones(2, 11.0))
        np.testing.assert_array_equal(await last, _ones(3, 31.0))
        assert middle.cancelled()
        await batcher.close()

    run(scenario)


def test_full_queue_expired_and_cancelled_requests() -> None:
    model = Model()

    async def scenario() -> None:
        batcher = _batcher(
            model, VirtualExecutor(), max_batch_size=64, max_queue_delay_s=0.2, max_queue_images=4
        )
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(batcher.submit(_ones(3)))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match=r"queue of test is full \(3 images waiting, limit 4\)"):
            await batcher.submit(_ones(2))
        expired = asyncio.ensure_future(batcher.submit(_ones(1), loop.time() + 0.01))
        with pytest.raises(DeadlineExpiredError, match=r"deadline passed after 0\.200 s in the queue"):
            await expired
        assert (await first).shape == (3, 1)
        cancelled = asyncio.ensure_future(batcher.submit(_ones(2)))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.sleep(0.3)
        assert batcher.queued_images == 0
        await batcher.close()
        with pytest.raises(ShuttingDownError, match="model test is being unloaded"):
            await batcher.submit(_ones(1))

    run(scenario)
    assert model.sizes == [3]  # the expired and the cancelled requests were never computed
    assert model.dropped == 2


def test_batching_off_runs_each_request_alone() -> None:
    model = Model()

    async def scenario() -> None:
        batcher = _batcher(model, VirtualExecutor(cost=lambda batch: 0.01), enabled=False)
        await asyncio.gather(*(batcher.submit(_ones(2, float(i))) for i in range(4)))
        assert batcher.queued_images == 0

    run(scenario)
    assert model.batches == [[float(i)] * 2 for i in range(4)]
    assert model.queued == [[0.0]] * 4


def test_adaptive_lone_client_never_waits_for_the_queue_delay() -> None:
    model = Model()

    async def scenario() -> None:
        batcher = _batcher(
            model, VirtualExecutor(cost=lambda batch: 0.01), max_queue_delay_s=1.0, adaptive=True
        )
        for _ in range(5):
            await batcher.submit(_ones(1))
        await batcher.close()

    run(scenario)
    assert model.sizes == [1] * 5
    assert model.queued == [[0.0]] * 5  # none waited at all


def test_adaptive_closed_loop_clients_run_as_soon_as_all_are_in() -> None:
    """Four clients that each send again once answered: every batch holds all four and starts when the
    fourth arrives -- nobody else can come, so waiting out the (long) delay would only add latency."""
    model = Model()

    async def client(batcher: DynamicBatcher, index: int) -> None:
        for _ in range(5):
            result = await batcher.submit(_ones(1, float(index)))
            assert result[0, 0] == index + 1.0

    async def scenario() -> float:
        batcher = _batcher(
            model,
            VirtualExecutor(cost=lambda batch: 0.01),
            max_batch_size=64,
            max_queue_delay_s=1.0,
            adaptive=True,
        )
        start = asyncio.get_running_loop().time()
        await asyncio.gather(*(client(batcher, i) for i in range(4)))
        elapsed = asyncio.get_running_loop().time() - start
        await batcher.close()
        return elapsed

    elapsed = run(scenario)
    assert model.sizes == [4] * 5
    assert elapsed == pytest.approx(5 * 0.01)  # five batches back to back: no wait at all


def _staggered_after_concurrent(load) -> list[list[float]]:
    """Six requests at once, then six arriving 5 ms apart; the batches the model saw."""
    model = Model()

    async def late(batcher: DynamicBatcher, index: int) -> None:
        await asyncio.sleep(0.005 * index)
        await batcher.submit(_ones(1, 100.0 + index))

    async def scenario() -> None:
        batcher = _batcher(
            model,
            VirtualExecutor(cost=lambda batch: 0.001),
            load=load,
            max_batch_size=64,
            max_queue_delay_s=0.2,
            adaptive=True,
        )
        await asyncio.gather(*(batcher.submit(_ones(1, float(i))) for i in range(6)))
        await asyncio.gather(*(late(batcher, i) for i in range(6)))
        await batcher.close()

    run(scenario)
    return model.batches


@pytest.mark.parametrize("load", [None, lambda: 1.0], ids=["load unknown", "busy worker"])
def test_adaptive_batches_wait_to_fill_under_concurrent_traffic(load) -> None:
    """After concurrent traffic, requests arriving a few ms apart wait for each other (up to the delay)
    instead of each running alone -- when the worker's load is unknown or its event loop is busy."""
    assert _staggered_after_concurrent(load) == [[float(i) for i in range(6)], [100.0 + i for i in range(6)]]


def test_adaptive_wait_is_scaled_away_on_a_worker_that_is_half_idle() -> None:
    """The same staggered traffic on a worker whose event loop idled half the time: no waiting for company."""
    batches = _staggered_after_concurrent(lambda: 0.5)
    assert [b for b in batches if b[0] >= 100.0] == [[100.0 + i] for i in range(6)]


def test_adaptive_batch_waits_for_a_request_still_being_decoded() -> None:
    """A request on its way (`expecting`) is waited for, up to the delay, even by a lone client's batch."""
    model = Model()

    async def decoding_then_submit(batcher: DynamicBatcher) -> None:
        with batcher.expecting():
            await asyncio.sleep(0.05)  # decoding a big request, in slices
            submitted = batcher.submit(_ones(1, 2.0))
        await submitted

    async def scenario() -> None:
        batcher = _batcher(
            model,
            VirtualExecutor(cost=lambda batch: 0.001),
            max_batch_size=64,
            max_queue_delay_s=1.0,
            adaptive=True,
        )
        arriving = asyncio.ensure_future(decoding_then_submit(batcher))
        await asyncio.sleep(0.01)
        await asyncio.gather(batcher.submit(_ones(1, 1.0)), arriving)
        await batcher.close()

    run(scenario)
    assert model.batches == [[1.0, 2.0]]
    assert model.queued == [[0.04, 0.0]]  # the first waited for the second, not for the 1 s delay


def test_a_full_batch_runs_alongside_the_one_computing_but_never_more() -> None:
    model = Model()
    executor = VirtualExecutor(cost=lambda batch: 0.05)

    async def scenario() -> None:
        batcher = _batcher(model, executor, max_batch_size=4, max_queue_delay_s=0.0, adaptive=True)
        full = [batcher.submit(_ones(4, i)) for i in range(4)]
        small = [batcher.submit(_ones(1, 10 + i)) for i in range(3)]
        results = await asyncio.gather(*full, *small)
        assert [float(r[0, 0]) for r in results] == [1, 2, 3, 4, 11, 12, 13]
        await batcher.close()

    run(scenario)
    assert executor.most == 2
    assert model.sizes == [4, 4, 4, 4, 3]  # the three small requests merged into one batch


def test_a_bulk_request_runs_alongside_without_being_full_and_small_ones_merge_into_it() -> None:
    """An explanation's chunk (bulk) starts beside a running batch although it is not full; Classify
    requests queued behind it ride in the same batch."""

    async def scenario(model: Model, executor: VirtualExecutor, bulk: bool) -> None:
        batcher = _batcher(model, executor, max_batch_size=8, max_queue_delay_s=0.0, adaptive=True)
        first = asyncio.ensure_future(batcher.submit(_ones(3, 0.0), bulk=bulk))
        await asyncio.sleep(0.01)  # the first batch computes
        second = batcher.submit(_ones(3, 1.0), bulk=bulk)
        small = batcher.submit(_ones(1, 5.0))
        results = await asyncio.gather(first, second, small)
        assert [r[:, 0].tolist() for r in results] == [[1, 1, 1], [2, 2, 2], [6]]
        await batcher.close()

    bulk, bulk_executor = Model(), VirtualExecutor(cost=lambda batch: 0.05)
    run(lambda: scenario(bulk, bulk_executor, bulk=True))
    assert bulk_executor.most == 2 and bulk.sizes == [3, 4]
    ordinary, executor = Model(), VirtualExecutor(cost=lambda batch: 0.05)
    run(lambda: scenario(ordinary, executor, bulk=False))  # not full, not bulk: waits, then merges
    assert executor.most == 1 and ordinary.sizes == [3, 4]


def test_bulk_requests_waiting_together_are_not_merged_into_one_batch() -> None:
    """Two explanation chunks queued at once stay two batches (computed side by side), or an explanation
    would fall back to one lane: small requests still merge."""
    model = Model()
    executor = VirtualExecutor(cost=lambda batch: 0.01)

    async def scenario() -> None:
        batcher = _batcher(model, executor, max_batch_size=16, max_queue_delay_s=0.0, adaptive=True)
        await asyncio.gather(
            batcher.submit(_ones(3, 0.0), bulk=True), batcher.submit(_ones(3, 0.0), bulk=True)
        )
        await asyncio.gather(*(batcher.submit(_ones(1, 0.0)) for _ in range(3)))
        await batcher.close()

    run(scenario)
    assert model.sizes == [3, 3, 3] and executor.most == 2  # the three small requests in one batch


def test_small_requests_ride_past_queued_bulk_chunks() -> None:
    """Queue: bulk A (computing), bulk B, bulk C, classify x, classify y. The next batch is B + x + y:
    Classify calls do not wait behind C."""
    model = Model()

    async def scenario() -> None:
        batcher = _batcher(
            model,
            VirtualExecutor(cost=lambda batch: 1.0),
            max_batch_size=8,
            max_queue_delay_s=0.0,
            adaptive=True,
            max_concurrent_batches=1,
        )
        a = asyncio.ensure_future(batcher.submit(_ones(4, 1), bulk=True))
        await asyncio.sleep(0.05)  # A computes; everything below queues
        rest = [
            batcher.submit(_ones(4, 2), bulk=True),
            batcher.submit(_ones(4, 3), bulk=True),
            batcher.submit(_ones(1, 10)),
            batcher.submit(_ones(1, 11)),
        ]
        await asyncio.gather(a, *rest)
        await batcher.close()

    run(scenario)
    assert model.batches == [[1.0] * 4, [2.0] * 4 + [10.0, 11.0], [3.0] * 4]


def test_take_keeps_order_for_ordinary_requests() -> None:
    """[6, 4, 1] with room for 8: the 6 goes, the 4 does not fit and the 1 behind it waits its turn."""
    model = Model()

    async def scenario() -> None:
        batcher = _batcher(model, VirtualExecutor(cost=lambda batch: 0.01), max_batch_size=8)
        await asyncio.gather(*(batcher.submit(_ones(n, float(n))) for n in (6, 4, 1)))
        await batcher.close()

    run(scenario)
    assert model.batches == [[6.0] * 6, [1.0] + [4.0] * 4]


class ThreadRecorder:
    """A 'model' computing `seconds_per_image` of CPU per image; records which thread ran each batch."""

    def __init__(self, seconds_per_image: float) -> None:
        self.seconds_per_image = seconds_per_image
        self.threads: list[tuple[int, int]] = []  # (batch size, thread id)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.threads.append((len(batch), threading.get_ident()))
        end = time.thread_time() + self.seconds_per_image * len(batch)
        while time.thread_time() < end:  # CPU work, as a CPU session's: the batcher judges by CPU time
            pass
        return batch + 1.0


@pytest.mark.parametrize(
    ("inline_s", "seconds_per_image", "on_loop"), [(0.05, 0.001, True), (0.05, 0.02, False)]
)
def test_quick_batches_run_on_the_event_loop_slow_ones_in_the_executor(
    inline_s: float, seconds_per_image: float, on_loop: bool
) -> None:
    model = ThreadRecorder(seconds_per_image)

    async def scenario() -> int:
        with ThreadPoolExecutor(2) as executor:
            settings = BatchSettings(
                max_batch_size=8, max_queue_delay_s=0.0, max_queue_images=64, inline_compute_s=inline_s
            )
            batcher = DynamicBatcher(model.run, settings, executor, name="test")
            for value in range(4):  # one at a time: the first is measured in the executor, then it knows
                result = await batcher.submit(np.full((4, 2), float(value), np.float32))
                assert np.array_equal(result, np.full((4, 2), value + 1.0))
            await batcher.close()
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert model.threads[0][1] != loop_thread  # nothing measured yet: the executor
    assert all((thread == loop_thread) is on_loop for _, thread in model.threads[1:])


def test_inline_compute_off_always_uses_the_executor_and_a_failure_still_reaches_the_caller() -> None:
    calls: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(threading.get_ident())
        if batch[0, 0] < 0:
            raise RuntimeError("the model failed")
        return batch

    async def scenario() -> int:
        with ThreadPoolExecutor(1) as executor:
            for inline_s in (0.0, 10.0):
                settings = BatchSettings(
                    max_batch_size=8, max_queue_delay_s=0.0, max_queue_images=64, inline_compute_s=inline_s
                )
                batcher = DynamicBatcher(run, settings, executor, name="test")
                await batcher.submit(np.ones((1, 2), np.float32))
                with pytest.raises(RuntimeError, match="the model failed"):
                    await batcher.submit(np.full((1, 2), -1.0, np.float32))
                await batcher.close()
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert [thread == loop_thread for thread in calls] == [False, False, False, True]


def test_deferred_requests_are_made_when_their_batch_starts_and_a_failure_stays_with_its_caller() -> None:
    model = Model()
    made: list[float] = []

    def prepare(value: float):
        def make() -> np.ndarray:
            made.append(value)
            if value == 3.0:
                raise ValueError("image 0: cannot decode image")
            return np.full((1, 2), value, np.float32)

        return make

    async def scenario() -> list[object]:
        batcher = _batcher(
            model,
            VirtualExecutor(cost=lambda batch: 0.05),
            max_batch_size=8,
            max_queue_delay_s=0.0,
            adaptive=True,
        )
        first = asyncio.ensure_future(batcher.submit(np.zeros((1, 2), np.float32)))
        await asyncio.sleep(0.01)  # the first batch computes; the rest queue behind it
        assert batcher._running == 1
        rest = [asyncio.ensure_future(batcher.submit_deferred(prepare(v), 1)) for v in (1.0, 2.0, 3.0, 4.0)]
        cancelled = asyncio.ensure_future(batcher.submit_deferred(prepare(5.0), 1))
        await asyncio.sleep(0)
        assert made == []  # nothing is decoded while it only waits
        cancelled.cancel()
        answers = await asyncio.gather(first, *rest, return_exceptions=True)
        await batcher.close()
        return answers

    answers = run(scenario)
    assert made == [1.0, 2.0, 3.0, 4.0]  # in order, when their batch started; the cancelled one never
    assert model.batches == [[0.0], [1.0, 2.0, 4.0]]  # the failed one left out, the others in one batch
    assert [float(np.asarray(a)[0, 0]) for i, a in enumerate(answers) if i != 3] == [1.0, 2.0, 3.0, 5.0]
    assert isinstance(answers[3], ValueError) and str(answers[3]) == "image 0: cannot decode image"


def test_deferred_request_bigger_than_a_batch_or_with_batching_off_is_made_at_once() -> None:
    model = Model()

    async def scenario() -> list[np.ndarray]:
        big = _batcher(model, VirtualExecutor(), max_batch_size=2)
        off = _batcher(model, VirtualExecutor(), enabled=False)
        return [
            await big.submit_deferred(lambda: np.ones((5, 1), np.float32), 5),
            await off.submit_deferred(lambda: np.ones((3, 1), np.float32), 3),
        ]

    results = run(scenario)
    assert [len(r) for r in results] == [5, 3] and all(np.all(r == 2.0) for r in results)
    assert model.sizes == [2, 2, 1, 3]


def _assert_idle(batcher: DynamicBatcher) -> None:
    """Nothing left behind: no batch computing, no request counted as waiting or running."""
    assert (batcher._running, batcher._running_requests, batcher.queued_images) == (0, 0, 0)
    assert not batcher._batches


def test_a_batch_that_becomes_exactly_full_starts_at_once() -> None:
    """With a 1 s fill delay, the fourth image of a 4-image batch starts it: nobody waits out the delay."""
    model = Model()

    async def scenario() -> None:
        batcher = _batcher(
            model, VirtualExecutor(cost=lambda batch: 0.01), max_batch_size=4, max_queue_delay_s=1.0
        )
        first = asyncio.ensure_future(batcher.submit(_ones(1, 0.0)))
        await asyncio.sleep(0.125)
        await asyncio.gather(first, *(batcher.submit(_ones(1, float(i))) for i in (1, 2, 3)))
        _assert_idle(batcher)
        await batcher.close()

    run(scenario)
    assert model.batches == [[0.0, 1.0, 2.0, 3.0]]
    assert model.queued == [[0.125, 0.0, 0.0, 0.0]]


def test_requests_behind_dropped_ones_ride_in_the_same_batch() -> None:
    """Queue: one cancelled, one expired, then two live requests: the batch at the fill time takes both
    live ones (they waited 0.5 s of the 1 s delay counted from the first), and all three drops are
    reported at once."""
    model = Model()
    drops: list[int] = []
    model.observe_dropped = drops.append  # type: ignore[method-assign]

    async def scenario() -> None:
        batcher = _batcher(model, VirtualExecutor(cost=lambda batch: 0.01), max_queue_delay_s=1.0)
        loop = asyncio.get_running_loop()
        gone = asyncio.ensure_future(batcher.submit(_ones(1, 0.0)))
        late = asyncio.ensure_future(batcher.submit(_ones(1, 9.0), deadline=loop.time() + 0.25))
        also_gone = asyncio.ensure_future(batcher.submit(_ones(1, 8.0)))
        await asyncio.sleep(0.5)
        live = [batcher.submit(_ones(1, 1.0)), batcher.submit(_ones(1, 2.0))]
        gone.cancel()
        also_gone.cancel()
        results = await asyncio.gather(*live)
        assert [float(r[0, 0]) for r in results] == [2.0, 3.0]
        with pytest.raises(DeadlineExpiredError, match=r"^deadline passed after 1\.000 s in the queue$"):
            await late
        _assert_idle(batcher)
        await batcher.submit(_ones(1, 4.0))  # a batch that drops nothing reports no drops
        await batcher.close()

    run(scenario)
    assert model.batches == [[1.0, 2.0], [4.0]] and model.queued == [[0.5, 0.5], [1.0]]
    assert drops == [3]


def test_a_deadline_reached_exactly_when_the_batch_starts_has_passed() -> None:
    model = Model()

    async def scenario() -> None:
        batcher = _batcher(model, VirtualExecutor(), max_queue_delay_s=0.25)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(1.0)  # enqueued at 1.0: the message counts from there
        with pytest.raises(DeadlineExpiredError, match=r"^deadline passed after 0\.250 s in the queue$"):
            await batcher.submit(_ones(1), deadline=loop.time() + 0.25)
        await batcher.close()

    run(scenario)
    assert model.batches == []


def test_deferred_requests_keep_their_deadline_and_are_refused_after_close() -> None:
    model = Model()
    made: list[int] = []

    def prepare(count: int):
        def make() -> np.ndarray:
            made.append(count)
            return _ones(count)

        return make

    async def scenario() -> None:
        batcher = _batcher(model, VirtualExecutor(), max_batch_size=4, max_queue_delay_s=0.5)
        loop = asyncio.get_running_loop()
        exact = asyncio.ensure_future(batcher.submit_deferred(prepare(4), 4))  # as big as a batch: deferred
        await asyncio.sleep(0)
        assert made == []  # made when its batch starts, not on arrival
        await exact
        for count in (1, 6):  # queued as one request, or made at once and split: the deadline holds
            with pytest.raises(DeadlineExpiredError):
                await batcher.submit_deferred(prepare(count), count, deadline=loop.time() + 0.25)
        await batcher.close()
        with pytest.raises(ShuttingDownError, match=r"^model test is being unloaded$"):
            await batcher.submit_deferred(prepare(1), 1)

    run(scenario)
    # The expired one-image request was never even made; of the six, the full first four computed at once.
    assert made == [4, 6] and model.sizes == [4, 4]


def test_close_answers_the_waiting_requests_at_once() -> None:
    """A request waiting out a 10 s fill delay is computed as soon as close() is called (a drain)."""
    model = Model()

    async def scenario() -> float:
        batcher = _batcher(model, VirtualExecutor(cost=lambda batch: 0.01), max_queue_delay_s=10.0)
        waiting = asyncio.ensure_future(batcher.submit(_ones(2, 3.0)))
        await asyncio.sleep(1.0)
        start = asyncio.get_running_loop().time()
        await batcher.close()
        assert waiting.done() and float(waiting.result()[0, 0]) == 4.0
        _assert_idle(batcher)
        return asyncio.get_running_loop().time() - start

    assert run(scenario) == pytest.approx(0.01)  # the batch's compute, no waiting for the delay
    assert model.queued == [[1.0]]


def test_concurrent_batches_and_failed_preparations_leave_nothing_behind() -> None:
    model = Model()

    def failing() -> np.ndarray:
        raise ValueError("image 0: cannot decode image")

    async def scenario() -> None:
        executor = VirtualExecutor(cost=lambda batch: 0.05)
        batcher = _batcher(model, executor, max_batch_size=2, max_queue_delay_s=0.0, adaptive=True)
        answers = await asyncio.gather(
            *(batcher.submit(_ones(2, float(i))) for i in range(3)),
            batcher.submit_deferred(failing, 1),
            batcher.submit(_ones(1, 5.0)),
            return_exceptions=True,
        )
        assert [float(np.asarray(a)[0, 0]) for a in answers if not isinstance(a, Exception)] == [1, 2, 3, 6]
        assert executor.most == 2
        _assert_idle(batcher)
        await batcher.close()

    run(scenario)


def test_batching_off_reports_each_call_as_its_own_batch() -> None:
    seen: list[tuple[int, tuple[float, ...], float]] = []
    model = Model()
    model.observe_batch = lambda size, queued, seconds: seen.append((size, tuple(queued), seconds))  # type: ignore[method-assign]

    async def scenario() -> None:
        batcher = _batcher(model, VirtualExecutor(), enabled=False)
        await batcher.submit(_ones(3))

    run(scenario)
    assert [(size, queued) for size, queued, _ in seen] == [(3, (0.0,))]
    assert 0.0 <= seen[0][2] < 60.0  # wall seconds the call took, not a clock reading


def test_requests_arriving_together_that_fill_a_batch_do_not_wait() -> None:
    model = Model()

    async def scenario() -> None:
        batcher = _batcher(
            model, VirtualExecutor(cost=lambda batch: 0.01), max_batch_size=4, max_queue_delay_s=1.0
        )
        await asyncio.gather(*(batcher.submit(_ones(1, float(i))) for i in range(4)))
        assert batcher._task is not None and batcher._task.get_name() == "batcher-test"
        await batcher.close()
        await batcher.close()  # closing twice is harmless

    run(scenario)
    assert model.queued == [[0.0] * 4]


@pytest.mark.parametrize("size", [0, -3])
def test_a_batch_size_below_one_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match=f"^max_batch_size must be at least 1, not {size}$"):
        _batcher(Model(), VirtualExecutor(), max_batch_size=size)
    assert _batcher(Model(), VirtualExecutor(), max_batch_size=1).settings.max_batch_size == 1


def test_the_parts_of_a_big_bulk_request_start_beside_a_running_batch() -> None:
    """A 6-image explanation chunk with batches of 4 becomes parts of 4 and 2; both are ready-made, so the
    2 does not wait for the batch already computing."""
    model = Model()

    async def scenario() -> None:
        executor = VirtualExecutor(cost=lambda batch: 1.0)
        batcher = _batcher(
            model, executor, max_batch_size=4, max_queue_delay_s=0.0, adaptive=True, max_concurrent_batches=3
        )
        running = asyncio.ensure_future(batcher.submit(_ones(1, 0.0)))
        await asyncio.sleep(0.125)
        chunk = np.arange(6, dtype=np.float32).reshape(6, 1) + 10.0
        np.testing.assert_array_equal(await batcher.submit(chunk, bulk=True), chunk + 1.0)
        await running
        assert executor.most == 3
        await batcher.close()

    run(scenario)
    assert model.queued == [[0.0], [0.0], [0.0]]


def test_a_model_failure_reaches_every_caller_of_the_batch_and_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("the model failed")

    async def scenario() -> None:
        settings = BatchSettings(max_batch_size=4, max_queue_delay_s=0.0, max_queue_images=16)
        batcher = DynamicBatcher(broken, settings, VirtualExecutor(), name="test")
        answers = await asyncio.gather(
            batcher.submit(_ones(1)), batcher.submit(_ones(2)), return_exceptions=True
        )
        assert [str(a) for a in answers] == ["the model failed", "the model failed"]
        _assert_idle(batcher)
        await batcher.close()

    run(scenario)
    assert "batch of 3 images for test failed" in caplog.text


def test_a_preparation_making_the_wrong_number_of_images_fails_its_caller_alone() -> None:
    model = Model()

    async def scenario() -> None:
        batcher = _batcher(model, VirtualExecutor(), max_queue_delay_s=0.0, adaptive=True)
        wrong, right = await asyncio.gather(
            batcher.submit_deferred(lambda: _ones(2), 1),
            batcher.submit(_ones(1, 7.0)),
            return_exceptions=True,
        )
        assert isinstance(wrong, ValueError) and str(wrong) == "prepare made 2 images, not 1"
        assert float(right[0, 0]) == 8.0
        await batcher.close()

    run(scenario)


def test_inline_batches_take_no_loop_time_and_the_cost_estimate_is_a_moving_average() -> None:
    """After the first batch (in the executor, measured), batches expected to be quick run on the loop:
    no virtual time passes for them. The estimate is 0.9 x the old one + 0.1 x the new measure."""
    model = ThreadRecorder(seconds_per_image=0.002)

    async def scenario() -> tuple[float, float | None]:
        settings = BatchSettings(
            max_batch_size=8, max_queue_delay_s=0.0, max_queue_images=64, inline_compute_s=10.0
        )
        batcher = DynamicBatcher(model.run, settings, VirtualExecutor(cost=lambda batch: 0.5), name="test")
        loop = asyncio.get_running_loop()
        await batcher.submit(_ones(4))  # measured in the executor: 0.5 s of loop time
        first = batcher._seconds_per_image
        start = loop.time()
        for _ in range(3):
            await batcher.submit(_ones(4))
        assert first is not None and first == pytest.approx(0.002, rel=0.5)
        estimate = batcher._seconds_per_image
        assert estimate is not None and estimate == pytest.approx(0.002, rel=0.5)
        await batcher.close()
        return loop.time() - start, estimate

    elapsed, _ = run(scenario)
    assert elapsed == 0.0


def _recorded(record: CallRecord, submission: Awaitable[np.ndarray]) -> asyncio.Future[np.ndarray]:
    """`submission` run as a call whose transport opened `record` (as the tracing hook does)."""

    async def call() -> np.ndarray:
        CURRENT_CALL.set(record)  # this task's own context: other calls do not see it
        return await submission

    return asyncio.ensure_future(call())


def test_recorded_calls_get_their_share_of_each_batch_and_unrecorded_ones_cost_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call with a record (tracing or the access log on) learns when it queued, was decoded, and which
    batch computed it (its size, its requests, its compute window); a call bigger than a batch gets one
    share per part. The batcher's monotonic clock is the virtual loop's here, so every time is exact."""
    monkeypatch.setattr(
        batcher_module,
        "time",
        SimpleNamespace(
            monotonic=lambda: asyncio.get_running_loop().time(),
            perf_counter=time.perf_counter,
            thread_time=time.thread_time,
        ),
    )
    model = Model()
    first, deferred, big = (CallRecord("Classify", 0.0, None) for _ in range(3))  # type: ignore[arg-type]

    async def scenario() -> None:
        batcher = _batcher(model, VirtualExecutor(cost=lambda batch: 0.25), max_batch_size=8)
        a = _recorded(first, batcher.submit(_ones(1, 1.0)))
        b = asyncio.ensure_future(batcher.submit(_ones(2, 2.0)))  # no record
        await asyncio.sleep(0.01)
        c = _recorded(deferred, batcher.submit_deferred(lambda: _ones(1, 3.0), 1))
        await asyncio.gather(a, b, c)  # one batch: taken at 0.05 (the fixed wait), computed until 0.30
        await _recorded(big, batcher.submit(_ones(10, 4.0)))  # 8 + 2: two batches
        await batcher.close()

    run(scenario)
    assert model.sizes == [4, 8, 2]
    (share,) = first.shares
    assert (share.enqueued, share.started, share.decode_start, share.decode_end) == (0.0, 0.05, None, None)
    batch = share.batch
    assert (batch.model, batch.images, batch.requests) == ("test", 4, 3)
    assert (batch.compute_start, batch.compute_end) == (0.05, pytest.approx(0.30))
    (share,) = deferred.shares
    assert share.batch is batch  # the same batch, one record
    assert (share.enqueued, share.started, share.decode_start, share.decode_end) == (0.01, 0.05, 0.05, 0.05)
    assert [(s.batch.images, s.batch.requests) for s in big.shares] == [(8, 1), (2, 1)]
    assert [s.enqueued for s in big.shares] == [pytest.approx(0.30)] * 2
    assert all(s.batch.compute_end - s.batch.compute_start == pytest.approx(0.25) for s in big.shares)


def test_a_recorded_call_with_batching_off_is_its_own_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        batcher_module,
        "time",
        SimpleNamespace(
            monotonic=lambda: asyncio.get_running_loop().time(),
            perf_counter=time.perf_counter,
            thread_time=time.thread_time,
        ),
    )
    model = Model()
    record = CallRecord("Classify", 0.0, None)  # type: ignore[arg-type]

    async def scenario() -> None:
        batcher = _batcher(model, VirtualExecutor(cost=lambda batch: 0.5), enabled=False)
        await asyncio.sleep(1.0)
        await _recorded(record, batcher.submit(_ones(3)))
        await batcher.submit(_ones(2))  # no record: nothing noted anywhere

    run(scenario)
    (share,) = record.shares
    assert (share.enqueued, share.started, share.decode_start, share.decode_end) == (1.0, 1.0, None, None)
    assert (share.batch.model, share.batch.images, share.batch.requests) == ("test", 3, 1)
    assert (share.batch.compute_start, share.batch.compute_end) == (1.0, 1.5)


def test_the_cost_estimate_is_exactly_the_moving_average_of_cpu_seconds_per_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CPU clock the batcher reads is one the model advances by a stated cost, so the estimate is exact:
    the first measure, then 0.9 x the estimate + 0.1 x each new measure."""
    cpu = [0.0]
    costs = iter([0.004, 0.001, 0.001, 0.002])  # CPU seconds per image of each batch in turn
    monkeypatch.setattr(
        batcher_module,
        "time",
        SimpleNamespace(monotonic=time.monotonic, perf_counter=time.perf_counter, thread_time=lambda: cpu[0]),
    )

    def model(batch: np.ndarray) -> np.ndarray:
        cpu[0] += next(costs) * len(batch)
        return batch + 1.0

    async def scenario() -> list[float | None]:
        settings = BatchSettings(max_batch_size=8, max_queue_delay_s=0.0, max_queue_images=64)
        batcher = DynamicBatcher(model, settings, VirtualExecutor(), name="test")
        estimates = []
        for count in (4, 2, 8, 1):
            await batcher.submit(_ones(count))
            estimates.append(batcher._seconds_per_image)
        await batcher.close()
        return estimates

    first = 0.004
    second = 0.9 * first + 0.1 * 0.001
    third = 0.9 * second + 0.1 * 0.001
    assert run(scenario) == pytest.approx([first, second, third, 0.9 * third + 0.1 * 0.002], rel=1e-12)


@pytest.mark.parametrize(
    ("inline_s", "seconds_per_image", "executor_calls"),
    [
        (0.008, 0.002, 2),  # 4 images x 0.002 s = the limit exactly: on the loop; 5 images: beyond it
        (0.0, 0.0, 3),  # a limit of 0 keeps every batch off the loop, even one measured to cost nothing
    ],
)
def test_a_batch_runs_on_the_loop_when_its_expected_cpu_time_is_at_most_the_limit(
    monkeypatch: pytest.MonkeyPatch, inline_s: float, seconds_per_image: float, executor_calls: int
) -> None:
    cpu = [0.0]
    monkeypatch.setattr(
        batcher_module,
        "time",
        SimpleNamespace(monotonic=time.monotonic, perf_counter=time.perf_counter, thread_time=lambda: cpu[0]),
    )

    def model(batch: np.ndarray) -> np.ndarray:
        cpu[0] += seconds_per_image * len(batch)
        return batch + 1.0

    class CountingExecutor(VirtualExecutor):
        calls = 0

        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            CountingExecutor.calls += 1
            return super().submit(fn, *args, **kwargs)

    async def scenario() -> None:
        settings = BatchSettings(
            max_batch_size=8, max_queue_delay_s=0.0, max_queue_images=64, inline_compute_s=inline_s
        )
        batcher = DynamicBatcher(model, settings, CountingExecutor(), name="test")
        for count in (4, 4, 5):  # the first batch is measured in the executor
            await batcher.submit(_ones(count))
        await batcher.close()

    run(scenario)
    assert CountingExecutor.calls == executor_calls
