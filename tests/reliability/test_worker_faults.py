"""Faults of the server's own processes: a worker killed, a crash loop, SIGTERM under load.

The supervisor restarts a worker that died (after a backoff) while the others keep serving, gives up
with a clear exit when a worker keeps dying, and a shutdown answers UNAVAILABLE, never CANCELLED.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import harness
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cnnserve.protos import inference_pb2


class Load:
    """Closed-loop clients calling Classify on fresh connections now and then, counting status codes."""

    def __init__(self, address: str, image: bytes, clients: int = 4) -> None:
        self.address = address
        self.request = harness.classify_request(inference_pb2.Image(encoded=image))
        self.codes: Counter[str] = Counter()
        self.messages: dict[str, str] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self) -> None:
        while not self._stop.is_set():
            with grpc.insecure_channel(self.address) as channel:
                stub = harness.stub_on(channel)
                for _ in range(25):
                    code, message = harness.status_of(stub.Classify, self.request, timeout=10)
                    with self._lock:
                        self.codes[code] += 1
                        self.messages.setdefault(code, message)
                    if self._stop.is_set():
                        return

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.codes)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def health(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def test_a_killed_worker_is_restarted_while_the_other_serves(
    serve, model_repository: Path, digit_png: bytes
) -> None:
    server = serve(model_repository, "--workers", "2")
    wait_for(lambda: len(server.workers()) == 2, 30, "two workers")
    victim = server.workers()[0]
    with Load(server.address, digit_png) as load:
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(server.workers()) == 2 and victim not in server.workers(), 60, "the restart")
        assert health(server.address) == "SERVING"
        restarted = load.snapshot()
        time.sleep(1.0)
        after = load.snapshot() - restarted
    assert server.process.poll() is None, server.log()
    assert "restart" in server.log()
    failed = sum(n for code, n in load.codes.items() if code != "OK")
    assert failed <= max(8, load.codes["OK"] // 100), (load.codes, load.messages)
    assert after["OK"] > 0 and set(after) == {"OK"}, after


def test_a_crash_looping_worker_makes_the_server_give_up(serve, model_repository: Path) -> None:
    server = serve(model_repository, "--workers", "2", "--max-worker-restarts", "2")
    killed: set[int] = set()
    deadline = time.monotonic() + 90
    while server.process.poll() is None and time.monotonic() < deadline:
        for pid in server.workers():
            if pid != server.process.pid and pid not in killed and len(killed) < 6:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
                break
        time.sleep(0.2)
    assert server.process.wait(30) != 0
    assert "giving up" in server.log(), server.log()[-3000:]
    assert "Traceback" not in server.log()


def test_sigterm_under_load_answers_unavailable_never_cancelled(
    serve, model_repository: Path, digit_png: bytes
) -> None:
    server = serve(model_repository, "--workers", "2", "--grace-seconds", "5")
    with Load(server.address, digit_png, clients=6) as load:
        time.sleep(1.5)
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(60)
        time.sleep(0.5)
    assert code == 0, server.log()
    assert load.codes["OK"] > 0
    assert set(load.codes) <= {"OK", "UNAVAILABLE"}, (load.codes, load.messages)
