"""Decompression work is bounded: per request and per worker, off the event loop, and never for a caller
who has given up.

A PNG of a blank 7000x7000 image compresses to a few kilobytes: sixteen of them make a small request
that would decode to 1.5 GB.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import harness
import pytest

from cnnserve.protos import inference_pb2

BOMB_SIDE = 7000


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return harness.big_png(BOMB_SIDE, BOMB_SIDE, bits=16)


def test_a_request_past_its_pixel_budget_is_refused_before_decoding(shared_server, bomb: bytes) -> None:
    stub = harness.stub(shared_server.address)
    request = harness.classify_request(*[inference_pb2.Image(encoded=bomb)] * 16)

    code, message = harness.status_of(stub.Classify, request, timeout=60)

    assert code == "INVALID_ARGUMENT", (code, message)
    assert "pixels" in message and "per request" in message and "--max-request-pixels" in message, message


def test_a_big_decode_does_not_stall_other_calls_of_its_worker(
    serve, model_repository: Path, bomb: bytes, digit_png: bytes
) -> None:
    """Two workers on two cores: each has one core, the case that decoded on the event loop. Calls on one
    channel reach one worker; the small call must be answered while the big image decodes."""
    server = serve(model_repository, "--workers", "2")
    with grpc.insecure_channel(server.address, options=harness.CHANNEL_OPTIONS) as channel:
        stub = harness.stub_on(channel)
        small = harness.classify_request(inference_pb2.Image(encoded=digit_png))
        stub.Classify(small, timeout=30)  # connected, warm
        big = stub.Classify.future(harness.classify_request(inference_pb2.Image(encoded=bomb)), timeout=120)
        answered_during = []
        for _ in range(5):
            stub.Classify(small, timeout=30)
            answered_during.append(not big.done())
        big.result()
    assert sum(answered_during) >= 3, answered_during


def test_big_requests_in_flight_share_the_worker_budget(serve, model_repository: Path, bomb: bytes) -> None:
    """With room for one bomb at a time, eight sent at once all succeed (they take turns), and a caller whose
    deadline passes while waiting its turn gets DEADLINE_EXCEEDED."""
    budget = str(BOMB_SIDE * BOMB_SIDE)
    server = serve(model_repository, "--workers", "1", "--max-decode-pixels", budget)
    with grpc.insecure_channel(server.address, options=harness.CHANNEL_OPTIONS) as channel:
        stub = harness.stub_on(channel)
        request = harness.classify_request(inference_pb2.Image(encoded=bomb))
        with ThreadPoolExecutor(8) as pool:
            patient = [pool.submit(harness.status_of, stub.Classify, request, timeout=120) for _ in range(6)]
            hurried = [pool.submit(harness.status_of, stub.Classify, request, timeout=0.3) for _ in range(2)]
            codes = [f.result()[0] for f in patient]
            hurried_codes = [f.result()[0] for f in hurried]
    assert codes == ["OK"] * 6
    assert "DEADLINE_EXCEEDED" in hurried_codes
    assert "Traceback" not in server.log()


def test_an_image_larger_than_the_worker_budget_is_refused(serve, model_repository: Path) -> None:
    server = serve(model_repository, "--workers", "1", "--max-decode-pixels", "1000000")
    stub = harness.stub(server.address)
    request = harness.classify_request(inference_pb2.Image(encoded=harness.big_png(1200, 1200)))
    code, message = harness.status_of(stub.Classify, request, timeout=30)
    assert code == "INVALID_ARGUMENT" and "--max-decode-pixels" in message, (code, message)


@pytest.mark.parametrize("limit", [1_000, 300_000_000])
def test_max_pixels_governs_over_pillows_own_limit(serve, model_repository: Path, limit: int) -> None:
    """Pillow refuses images over 178,956,970 pixels on its own: our --max-pixels decides, both ways."""
    side = 14_000 if limit > 1_000 else 40  # 196,000,000 pixels: over Pillow's limit, under ours
    server = serve(
        model_repository,
        "--workers",
        "1",
        "--max-pixels",
        str(limit),
        "--max-request-pixels",
        str(limit),
        "--max-decode-pixels",
        str(limit),
    )
    stub = harness.stub(server.address)
    request = harness.classify_request(inference_pb2.Image(encoded=harness.big_png(side, side)))
    code, message = harness.status_of(stub.Classify, request, timeout=120)
    if limit > 1_000:
        assert code == "OK", message
    else:
        assert code == "INVALID_ARGUMENT" and f"{limit:,}" in message.replace(" ", ""), message
        assert "178956970" not in message and "--max-pixels" in message


def test_the_default_pixel_limit_is_ours(shared_server) -> None:
    stub = harness.stub(shared_server.address)
    request = harness.classify_request(inference_pb2.Image(encoded=harness.big_png(15_000, 12_000)))
    code, message = harness.status_of(stub.Classify, request, timeout=60)
    assert code == "INVALID_ARGUMENT" and "50,000,000" in message and "--max-pixels" in message, message
