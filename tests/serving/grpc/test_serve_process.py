"""`cnnserve serve` as a real process: graceful shutdown on SIGTERM/SIGINT with calls in flight, several
workers on one port, metrics and the statistics extension summed over the workers."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cnnserve.protos import inference_pb2, inference_pb2_grpc, oip_pb2, oip_pb2_grpc
from cnnserve.serving.grpc.client import CnnserveClient

MODEL = "mnist_cnn"
pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def _request(digits, count: int = 2) -> inference_pb2.ClassifyRequest:
    return inference_pb2.ClassifyRequest(
        model=MODEL, images=[inference_pb2.Image(encoded=d) for d in digits.png[:count]]
    )


def _in_flight(metrics_port: int) -> float:
    """Classify calls the server has received and not answered yet, from its /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    found = re.search(r'cnnserve_inflight_requests\{model="mnist_cnn",rpc="Classify"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_sigterm_finishes_calls_in_flight_and_exits_0(serve_subprocess, model_repository, digits) -> None:
    # Each request waits 1.5 s in the batch queue, so calls are surely in flight when SIGTERM arrives.
    server = serve_subprocess(
        "--repo",
        str(model_repository),
        "--workers",
        "1",
        "--threads",
        "1",
        "--max-queue-delay-us",
        "1500000",
        "--batch-wait",
        "fixed",
        "--metrics-port",
        "0",
    )
    metrics_port = int(re.search(r"on http://[^:]+:(\d+)/metrics", server.log()).group(1))
    with grpc.insecure_channel(server.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=60
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = [stub.Classify.future(_request(digits), timeout=60) for _ in range(3)]
        deadline = time.monotonic() + 30
        while _in_flight(metrics_port) < 3:  # all three have reached the server (however slow the machine)
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.02)
        server.signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Classify(_request(digits), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert [len(f.result().results) for f in in_flight] == [2, 2, 2]
    assert server.wait(60) == 0, server.log()
    assert "server stopped" in server.log()


def test_two_workers_share_the_port_sum_metrics_and_stop_on_sigint(
    serve_subprocess, model_repository, digits
) -> None:
    server = serve_subprocess(
        "--repo", str(model_repository), "--workers", "2", "--metrics-port", "0", "--max-queue-delay-us", "0",
        "--http-port", "0",
    )  # fmt: skip
    log = server.log()
    assert "worker-0" in log and "worker-1" in log
    metrics_port = int(re.search(r"on http://[^:]+:(\d+)/metrics", log).group(1))
    http_port = int(re.search(r"Protocol over HTTP on http://[^:]+:(\d+)/v2", log).group(1))
    calls = 0

    def client_calls() -> None:
        nonlocal calls
        with CnnserveClient(server.address) as client:  # one connection: one worker
            for _ in range(5):
                assert len(client.classify(digits.png[:3], MODEL).predictions) == 3
                calls += 1

    threads = [threading.Thread(target=client_calls) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert calls == 30
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    total = re.search(r'cnnserve_requests_total\{model="mnist_cnn",rpc="Classify",version="1"\} (\S+)', text)
    assert total is not None and float(total.group(1)) == 30, text[:2000]
    assert re.search(r'cnnserve_images_total\{model="mnist_cnn",rpc="Classify",version="1"\} 90.0', text)
    assert "cnnserve_batch_size_bucket" in text and "cnnserve_compute_seconds_bucket" in text
    # The statistics extension sums the workers too, whichever worker a new connection reaches (the kernel
    # picks one per connection): a client comparing two readings (perf_analyzer) sees one server.
    for _ in range(8):
        url = f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/stats"
        (stats,) = json.loads(urllib.request.urlopen(url, timeout=10).read())["model_stats"]
        assert (stats["version"], stats["inference_count"]) == ("1", 90), stats
        assert stats["inference_stats"]["success"]["count"] == 30
        assert stats["inference_stats"]["queue"]["count"] == 30
        assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in stats["batch_stats"]) == 90
    for _ in range(2):
        with grpc.insecure_channel(server.address) as channel:
            response = oip_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                oip_pb2.ModelStatisticsRequest(name=MODEL), timeout=10
            )
        counts = [(s.inference_count, s.inference_stats.success.count) for s in response.model_stats]
        assert counts == [(90, 30)]
    server.signal(signal.SIGINT)
    assert server.wait(60) == 0, server.log()
    assert server.log().count("server stopped") == 2


def _worker_pids(supervisor_pid: int) -> list[int]:
    """The supervisor's worker processes (spawned: their command line runs multiprocessing's spawn_main)."""
    children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def test_a_worker_that_dies_with_restarts_off_takes_the_server_down_with_a_failing_exit(
    serve_subprocess, model_repository, digits
) -> None:
    """With --max-worker-restarts 0 a crashed worker is not restarted, nor is the server left half-sized:
    the supervisor stops the other worker and exits 1, naming the worker and how it died."""
    server = serve_subprocess("--repo", str(model_repository), "--workers", "2", "--max-worker-restarts", "0")
    workers = _worker_pids(server.process.pid)
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)
    assert server.wait(60) == 1, server.log()
    log = server.log()
    assert re.search(
        r"worker \d killed by SIGKILL; it died 1 times within 60 s \(more than --max-worker-restarts 0\): "
        r"giving up",
        log,
    ), log
    assert "restarting worker" not in log, log
    assert log.count("server stopped") == 1  # the surviving worker stopped gracefully
