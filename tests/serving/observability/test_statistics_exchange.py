"""The statistics extension summed over worker processes: each worker's book answered on a Unix socket,
summed by whichever worker a client reaches (the two-worker server is tested in grpc/test_serve_process)."""

from __future__ import annotations

import asyncio
import tempfile

import pytest

from cnnserve.serving.observability.statistics import StatisticsBook
from cnnserve.serving.observability.statistics_exchange import StatisticsExchange, decode, encode, summed


def _book(images: int, batch: int, last_ms: int, version: int = 1) -> StatisticsBook:
    book = StatisticsBook()
    stats = book.for_version("mnist_cnn", version)
    for _ in range(images // batch):
        stats.observe_batch(batch, [0.001] * batch, 0.002)
    stats.success.add(0.003, images)
    stats.last_inference_ms = last_ms
    return book


def test_books_sum_per_version_with_the_latest_inference() -> None:
    books = [_book(8, 4, 100), _book(6, 2, 300), _book(1, 1, 50, version=2)]
    total = summed([book.select() for book in books])
    one, two = total.select("mnist_cnn")
    assert (one.version, one.inference_count, one.execution_count, one.last_inference_ms) == (1, 14, 5, 300)
    assert (one.success.count, one.queue.count, one.compute_infer.count) == (14, 14, 14)
    assert {size: d.count for size, d in one.batches.items()} == {2: 3, 4: 2}
    assert one.queue.ns == 14 * 1_000_000 and one.batches[4].ns == 2 * 2_000_000
    assert (two.version, two.inference_count) == (2, 1)


def test_a_book_survives_the_wire() -> None:
    selected = _book(8, 4, 100).select()
    assert decode(encode(selected)) == selected
    with pytest.raises(ValueError, match="malformed statistics"):
        decode(b'[{"name": "m"}]')


def test_each_worker_answers_every_workers_figures_summed() -> None:
    async def scenario(folder: str) -> None:
        books = [_book(8, 4, 100), _book(6, 2, 300), _book(2, 2, 200)]
        exchanges = [StatisticsExchange(book, folder, pid=1000 + i) for i, book in enumerate(books)]
        for exchange in exchanges:
            await exchange.start()
        try:
            for exchange in exchanges:
                (stats,) = (await exchange.snapshot()).select("mnist_cnn")
                assert (stats.inference_count, stats.execution_count, stats.success.count) == (16, 6, 16)
            # A worker that stopped leaves the sum (its socket goes with it).
            await exchanges[2].close()
            (stats,) = (await exchanges[0].snapshot()).select("mnist_cnn")
            assert stats.inference_count == 14
        finally:
            for exchange in exchanges:
                await exchange.close()

    with tempfile.TemporaryDirectory(prefix="stats-") as folder:  # short: a Unix socket path is <= 108 bytes
        asyncio.run(scenario(folder))


def test_a_process_serving_alone_answers_its_own_book() -> None:
    book = _book(4, 4, 1)
    assert asyncio.run(StatisticsExchange(book, None).snapshot()) is book
