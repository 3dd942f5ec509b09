"""The dynamic batcher inside a real server: concurrent clients merged into batches, never mixed up."""

from __future__ import annotations

import threading

import pytest

from cnnserve.serving.grpc.client import CnnserveClient

pytestmark = pytest.mark.timeout(120)


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
