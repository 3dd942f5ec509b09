"""The dynamic batcher on its own (a real numpy function as the model) and inside a real server."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cnnserve.serving.batching.batcher import BatchSettings, DynamicBatcher
from cnnserve.serving.errors import DeadlineExpiredError, QueueFullError
from cnnserve.serving.grpc.client import CnnserveClient

pytestmark = pytest.mark.timeout(120)


class Recorder:
    """Records batch sizes; the 'model' doubles its input and keeps row order."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.dropped = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        return batch * 2.0

    def observe_batch(self, size, queue_seconds, compute_seconds) -> None:
        assert len(queue_seconds) >= 1 and compute_seconds >= 0

    def observe_dropped(self, count: int) -> None:
        self.dropped += count


def _batcher(recorder: Recorder, executor, **settings) -> DynamicBatcher:
    values = {"max_batch_size": 8, "max_queue_delay_s": 0.05, "max_queue_images": 64, "adaptive": False}
    values.update(settings)
    return DynamicBatcher(recorder.run, BatchSettings(**values), executor, observer=recorder, name="test")


class SlowModel:
    """A 'model' that takes time (a sleep, or until `gate` opens): records each batch's values and the most
    batches computing at once; it adds 1 to its input."""

    def __init__(self, seconds: float = 0.05, gate: threading.Event | None = None) -> None:
        self.seconds = seconds
        self.gate = gate
        self.batches: list[list[float]] = []
        self.most = 0
        self._now = 0
        self._lock = threading.Lock()

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self._now += 1
            self.most = max(self.most, self._now)
            self.batches.append(sorted(float(v) for v in batch[:, 0]))
        if self.gate is not None:
            self.gate.wait(5)
        else:
            time.sleep(self.seconds)
        with self._lock:
            self._now -= 1
        return batch + 1.0


def test_concurrent_requests_merge_in_order_and_split_back() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            batcher = _batcher(recorder, executor)
            inputs = [np.full((n, 3), float(i), np.float32) for i, n in enumerate([1, 2, 3, 1, 5, 4])]
            results = await asyncio.gather(*(batcher.submit(x) for x in inputs))
            for x, y in zip(inputs, results, strict=True):
                np.testing.assert_array_equal(y, x * 2.0)
            big = np.arange(20, dtype=np.float32).reshape(20, 1)  # more than max_batch_size: split
            np.testing.assert_array_equal(await batcher.submit(big), big * 2.0)
            await batcher.close()

    asyncio.run(scenario())
    assert max(recorder.sizes) == 8 and sum(recorder.sizes) == 16 + 20
    assert recorder.sizes[0] > 1  # the first batch merged several requests


def test_full_queue_expired_and_cancelled_requests() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(
                recorder, executor, max_batch_size=64, max_queue_delay_s=0.2, max_queue_images=4
            )
            loop = asyncio.get_running_loop()
            first = asyncio.ensure_future(batcher.submit(np.ones((3, 1), np.float32)))
            await asyncio.sleep(0)
            with pytest.raises(QueueFullError):
                await batcher.submit(np.ones((2, 1), np.float32))
            expired = asyncio.ensure_future(batcher.submit(np.ones((1, 1), np.float32), loop.time() + 0.01))
            await asyncio.sleep(0.3)
            with pytest.raises(DeadlineExpiredError):
                await expired
            assert (await first).shape == (3, 1)
            cancelled = asyncio.ensure_future(batcher.submit(np.ones((2, 1), np.float32)))
            await asyncio.sleep(0.01)
            cancelled.cancel()
            await asyncio.sleep(0.3)
            assert batcher.queued_images == 0
            await batcher.close()

    asyncio.run(scenario())
    assert recorder.sizes == [3]  # the expired and the cancelled requests were never computed
    assert recorder.dropped == 2


def test_batching_off_runs_each_request_alone() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            batcher = _batcher(recorder, executor, enabled=False)
            await asyncio.gather(*(batcher.submit(np.ones((2, 1), np.float32)) for _ in range(4)))

    asyncio.run(scenario())
    assert recorder.sizes == [2, 2, 2, 2]


def test_adaptive_lone_client_never_waits_for_the_queue_delay() -> None:
    recorder = Recorder()
    queued: list[float] = []
    recorder.observe_batch = lambda size, queue_seconds, compute_seconds: queued.extend(queue_seconds)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = _batcher(recorder, executor, max_queue_delay_s=1.0, adaptive=True)
            for _ in range(5):
                await batcher.submit(np.ones((1, 1), np.float32))
            await batcher.close()

    asyncio.run(scenario())
    assert recorder.sizes == [1] * 5
    assert max(queued) < 0.5  # none waited the 1 s delay


def test_adaptive_closed_loop_clients_run_as_soon_as_all_are_in() -> None:
    """Four clients that each send again once answered: every batch holds all four and starts when the
    fourth arrives -- nobody else can come, so waiting out the (long) delay would only add latency."""
    model = SlowModel(0.01)

    async def client(batcher: DynamicBatcher, index: int) -> None:
        for _ in range(5):
            result = await batcher.submit(np.full((1, 1), float(index), np.float32))
            assert result[0, 0] == index + 1.0

    async def scenario() -> float:
        with ThreadPoolExecutor(2) as executor:
            settings = BatchSettings(max_batch_size=64, max_queue_delay_s=1.0, max_queue_images=64)
            batcher = DynamicBatcher(model.run, settings, executor, name="test")
            start = time.perf_counter()
            await asyncio.gather(*(client(batcher, i) for i in range(4)))
            elapsed = time.perf_counter() - start
            await batcher.close()
            return elapsed

    elapsed = asyncio.run(scenario())
    assert model.sizes == [4] * 5
    assert elapsed < 2.0  # waiting out the delay once would take 1 s, every round 5 s


def _staggered_after_concurrent(load) -> list[list[float]]:
    """Six requests at once, then six arriving 5 ms apart; the batches the model saw."""
    model = SlowModel(0.001)

    async def late(batcher: DynamicBatcher, index: int) -> None:
        await asyncio.sleep(0.005 * index)
        await batcher.submit(np.full((1, 1), 100.0 + index, np.float32))

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            settings = BatchSettings(max_batch_size=64, max_queue_delay_s=0.2, max_queue_images=64)
            batcher = DynamicBatcher(model.run, settings, executor, name="test", load=load)
            await asyncio.gather(*(batcher.submit(np.full((1, 1), float(i), np.float32)) for i in range(6)))
            await asyncio.gather(*(late(batcher, i) for i in range(6)))
            await batcher.close()

    asyncio.run(scenario())
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
    model = SlowModel(0.001)

    async def decoding_then_submit(batcher: DynamicBatcher) -> None:
        with batcher.expecting():
            await asyncio.sleep(0.05)  # decoding a big request, in slices
            submitted = batcher.submit(np.full((1, 1), 2.0, np.float32))
        await submitted

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            settings = BatchSettings(max_batch_size=64, max_queue_delay_s=1.0, max_queue_images=64)
            batcher = DynamicBatcher(model.run, settings, executor, name="test")
            arriving = asyncio.ensure_future(decoding_then_submit(batcher))
            await asyncio.sleep(0.01)
            await asyncio.gather(batcher.submit(np.full((1, 1), 1.0, np.float32)), arriving)
            await batcher.close()

    asyncio.run(scenario())
    assert model.batches == [[1.0, 2.0]]


def test_server_merges_concurrent_clients_and_never_mixes_answers(
    start_server, model_repository, digits
) -> None:
    server = start_server(model_repository, max_queue_delay_us=20_000)
    with CnnserveClient(server.address) as client:
        expected = [p[0].index for p in client.classify(digits.png, "mnist_cnn").predictions]
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            with CnnserveClient(server.address) as client:
                for step in range(6):
                    picks = [
                        (offset * 7 + step * 3 + j) % len(digits.png) for j in range(1 + (offset + step) % 3)
                    ]
                    result = client.classify([digits.png[i] for i in picks], "mnist_cnn")
                    assert [p[0].index for p in result.predictions] == [expected[i] for i in picks]
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[0]
    labels = {"model": "mnist_cnn", "version": "1"}
    batches = server.metric("cnnserve_batch_size_count", labels)
    images = server.metric("cnnserve_batch_size_sum", labels)
    assert images == 40 + sum(1 + (o + s) % 3 for o in range(16) for s in range(6))
    assert batches < 1 + 16 * 6, "no request was merged with another"
    assert server.metric("cnnserve_batch_size_bucket", {**labels, "le": "1.0"}) < batches
    call = {"model": "mnist_cnn", "version": "1", "rpc": "Classify"}
    assert server.metric("cnnserve_requests_total", call) == 1 + 16 * 6
    assert server.metric("cnnserve_images_total", call) == images


def test_a_full_batch_runs_alongside_the_one_computing_but_never_more() -> None:
    model = SlowModel()

    async def scenario() -> None:
        with ThreadPoolExecutor(4) as executor:
            settings = BatchSettings(max_batch_size=4, max_queue_delay_s=0.0, max_queue_images=64)
            batcher = DynamicBatcher(model.run, settings, executor, name="slow")
            full = [batcher.submit(np.full((4, 1), i, np.float32)) for i in range(4)]
            small = [batcher.submit(np.full((1, 1), 10 + i, np.float32)) for i in range(3)]
            results = await asyncio.gather(*full, *small)
            assert [float(r[0, 0]) for r in results] == [1, 2, 3, 4, 11, 12, 13]
            await batcher.close()

    asyncio.run(scenario())
    assert model.most == 2
    assert sorted(model.sizes) == [3, 4, 4, 4, 4]  # the three small requests merged into one batch


def test_a_bulk_request_runs_alongside_without_being_full_and_small_ones_merge_into_it() -> None:
    """An explanation's chunk (bulk) starts beside a running batch although it is not full; Classify
    requests queued behind it ride in the same batch."""

    async def scenario(model: SlowModel, bulk: bool) -> None:
        with ThreadPoolExecutor(4) as executor:
            settings = BatchSettings(max_batch_size=8, max_queue_delay_s=0.0, max_queue_images=64)
            batcher = DynamicBatcher(model.run, settings, executor, name="slow")
            first = asyncio.ensure_future(batcher.submit(np.zeros((3, 1), np.float32), bulk=bulk))
            await asyncio.sleep(0.01)  # the first batch computes
            second = batcher.submit(np.ones((3, 1), np.float32), bulk=bulk)
            small = batcher.submit(np.full((1, 1), 5, np.float32))
            results = await asyncio.gather(first, second, small)
            assert [r[:, 0].tolist() for r in results] == [[1, 1, 1], [2, 2, 2], [6]]
            await batcher.close()

    bulk = SlowModel()
    asyncio.run(scenario(bulk, bulk=True))
    assert bulk.most == 2 and bulk.sizes == [3, 4]
    ordinary = SlowModel()
    asyncio.run(scenario(ordinary, bulk=False))  # not full, not bulk: waits for the first batch, then merges
    assert ordinary.most == 1 and ordinary.sizes == [3, 4]


def test_bulk_requests_waiting_together_are_not_merged_into_one_batch() -> None:
    """Two explanation chunks queued at once stay two batches (computed side by side), or an explanation
    would fall back to one lane: small requests still merge."""
    model = SlowModel(seconds=0.01)

    async def scenario() -> None:
        with ThreadPoolExecutor(4) as executor:
            settings = BatchSettings(max_batch_size=16, max_queue_delay_s=0.0, max_queue_images=64)
            batcher = DynamicBatcher(model.run, settings, executor, name="bulk")
            await asyncio.gather(
                batcher.submit(np.zeros((3, 1), np.float32), bulk=True),
                batcher.submit(np.zeros((3, 1), np.float32), bulk=True),
            )
            await asyncio.gather(*(batcher.submit(np.zeros((1, 1), np.float32)) for _ in range(3)))
            await batcher.close()

    asyncio.run(scenario())
    sizes = model.sizes
    assert sizes[:2] == [3, 3] and model.most == 2 and sum(sizes[2:]) == 3 and len(sizes) <= 4


def test_small_requests_ride_past_queued_bulk_chunks() -> None:
    """Queue: bulk A (computing), bulk B, bulk C, classify x, classify y. The next batch is B + x + y:
    Classify calls do not wait behind C."""
    gate = threading.Event()
    model = SlowModel(gate=gate)

    async def scenario() -> None:
        with ThreadPoolExecutor(4) as executor:
            settings = BatchSettings(
                max_batch_size=8, max_queue_delay_s=0.0, max_queue_images=64, max_concurrent_batches=1
            )
            batcher = DynamicBatcher(model.run, settings, executor, name="fair")
            a = asyncio.ensure_future(batcher.submit(np.full((4, 1), 1, np.float32), bulk=True))
            await asyncio.sleep(0.05)  # A computes; everything below queues
            rest = [
                batcher.submit(np.full((4, 1), 2, np.float32), bulk=True),
                batcher.submit(np.full((4, 1), 3, np.float32), bulk=True),
                batcher.submit(np.full((1, 1), 10, np.float32)),
                batcher.submit(np.full((1, 1), 11, np.float32)),
            ]
            tasks = [asyncio.ensure_future(r) for r in rest]
            await asyncio.sleep(0.05)
            gate.set()
            await asyncio.gather(a, *tasks)
            await batcher.close()

    asyncio.run(scenario())
    assert model.batches == [[1.0] * 4, [2.0] * 4 + [10.0, 11.0], [3.0] * 4]


def test_take_keeps_order_for_ordinary_requests() -> None:
    """[6, 4, 1] with room for 8: the 6 goes, the 4 does not fit and the 1 behind it waits its turn."""
    recorder = Recorder()

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            batcher = _batcher(recorder, executor, max_batch_size=8)
            await asyncio.gather(*(batcher.submit(np.zeros((n, 1), np.float32)) for n in (6, 4, 1)))
            await batcher.close()

    asyncio.run(scenario())
    assert recorder.sizes == [6, 5]


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
    model = SlowModel(seconds=0.05)
    made: list[float] = []

    def prepare(value: float):
        def make() -> np.ndarray:
            made.append(value)
            if value == 3.0:
                raise ValueError("image 0: cannot decode image")
            return np.full((1, 2), value, np.float32)

        return make

    async def scenario() -> list[object]:
        with ThreadPoolExecutor(2) as executor:
            settings = BatchSettings(max_batch_size=8, max_queue_delay_s=0.0, max_queue_images=64)
            batcher = DynamicBatcher(model.run, settings, executor, name="test")
            first = asyncio.ensure_future(batcher.submit(np.zeros((1, 2), np.float32)))
            await asyncio.sleep(0.01)  # the first batch computes; the rest queue behind it
            assert batcher._running == 1
            rest = [
                asyncio.ensure_future(batcher.submit_deferred(prepare(v), 1)) for v in (1.0, 2.0, 3.0, 4.0)
            ]
            cancelled = asyncio.ensure_future(batcher.submit_deferred(prepare(5.0), 1))
            await asyncio.sleep(0)
            assert made == []  # nothing is decoded while it only waits
            cancelled.cancel()
            answers = await asyncio.gather(first, *rest, return_exceptions=True)
            await batcher.close()
            return answers

    answers = asyncio.run(scenario())
    assert made == [1.0, 2.0, 3.0, 4.0]  # in order, when their batch started; the cancelled one never
    assert model.batches == [[0.0], [1.0, 2.0, 4.0]]  # the failed one left out, the others in one batch
    assert [float(np.asarray(a)[0, 0]) for i, a in enumerate(answers) if i != 3] == [1.0, 2.0, 3.0, 5.0]
    assert isinstance(answers[3], ValueError) and "image 0" in str(answers[3])


def test_deferred_request_bigger_than_a_batch_or_with_batching_off_is_made_at_once() -> None:
    recorder = Recorder()

    async def scenario() -> list[np.ndarray]:
        with ThreadPoolExecutor(1) as executor:
            big = _batcher(recorder, executor, max_batch_size=2)
            off = _batcher(recorder, executor, enabled=False)
            return [
                await big.submit_deferred(lambda: np.ones((5, 1), np.float32), 5),
                await off.submit_deferred(lambda: np.ones((3, 1), np.float32), 3),
            ]

    results = asyncio.run(scenario())
    assert [len(r) for r in results] == [5, 3] and all(np.all(r == 2.0) for r in results)
    assert recorder.sizes == [2, 2, 1, 3]
