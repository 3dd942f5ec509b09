"""The in-process server's shutdown: a call that outlives the grace period is ended, not waited for."""

from __future__ import annotations

import time

import grpc
import pytest

from cnnserve.protos import inference_pb2, inference_pb2_grpc

MODEL = "mnist_cnn"
pytestmark = pytest.mark.timeout(120)


def test_a_drain_outliving_the_grace_period_ends_the_calls_in_flight(
    start_server, model_repository, digits, caplog: pytest.LogCaptureFixture
) -> None:
    # Every batch waits 60 s to fill: the call stays in flight far longer than the 0.5 s grace period.
    server = start_server(model_repository, max_queue_delay_us=60_000_000, batch_wait="fixed")
    request = inference_pb2.ClassifyRequest(model=MODEL, images=[inference_pb2.Image(encoded=digits.png[0])])
    with grpc.insecure_channel(server.address) as channel:
        pending = inference_pb2_grpc.InferenceServiceStub(channel).Classify.future(request, timeout=120)
        deadline = time.monotonic() + 60
        while server.server.drain.in_flight == 0:  # the call has reached the server
            assert time.monotonic() < deadline, "the call never reached the server"
            time.sleep(0.01)
        started = time.monotonic()
        server.stop(grace=0.5)
        stopped_in = time.monotonic() - started
        with pytest.raises(grpc.RpcError) as caught:
            pending.result(timeout=60)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # ended by the transport's own stop
    assert stopped_in < 30  # the grace period, not the 60 s the call would have waited
    assert "1 call(s) still in flight after 0.5 s; cancelling them" in caplog.text
