"""Session fixtures shared by every test package: one real trained run and one real exported repository.

A tiny `mnist_cnn` is trained once per session on the bundled MNIST digits and exported once; every
export, serving and batch-job test uses that real repository. Setting CNNSERVE_TEST_CACHE to a folder
keeps both across pytest runs while developing (CI leaves it unset, so it always starts fresh).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

TRAIN_EPOCHS = 2
TRITON_TOOLS = Path(__file__).resolve().parents[1] / "bench" / "triton_tools.py"
# bench/triton_tools.py's exit code when a tool cannot be obtained on this machine.
TOOL_UNAVAILABLE = 3


def _cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cached = os.environ.get("CNNSERVE_TEST_CACHE")
    if cached:
        root = Path(cached)
        root.mkdir(parents=True, exist_ok=True)
        return root
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory: `mnist_cnn` trained for a couple of epochs on the bundled digits."""
    from cnnserve.training.train import train_model

    run_dir = _cache_root(tmp_path_factory) / "runs" / "mnist_cnn"
    if (run_dir / "run.json").is_file() and (run_dir / "model.keras").is_file():
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return train_model("mnist_cnn", out_dir=run_dir, epochs=TRAIN_EPOCHS, seed=0, verbose=0)


@pytest.fixture(scope="session")
def model_repository(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model repository holding `mnist_cnn` version 1, exported from `trained_run`."""
    from cnnserve.export.exporter import export_run

    repo = _cache_root(tmp_path_factory) / "model_repository"
    if (repo / "mnist_cnn" / "1" / "model.onnx").is_file():
        return repo
    if repo.exists():
        shutil.rmtree(repo)
    export_run(trained_run, repo)
    return repo


def _tool_folder(request: pytest.FixtureRequest, name: str) -> Path:
    """A folder for a tool the tests build once: in pytest's cache folder, kept across runs (a session's
    temporary folder when the cache is off, `-p no:cacheprovider`)."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir(name))
    factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    return factory.mktemp(name)


def _triton_tool(request: pytest.FixtureRequest, tool: str) -> subprocess.CompletedProcess[str]:
    """Build (or reuse, from pytest's cache folder) one of bench/triton_tools.py's tools."""
    folder = _tool_folder(request, f"triton-{tool}")
    return subprocess.run(
        [sys.executable, str(TRITON_TOOLS), tool, str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="session")
def tool_folder(request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """`tool_folder(name)`: where the tests keep something they download or build once (see _tool_folder)."""
    return lambda name: _tool_folder(request, name)


@pytest.fixture(scope="session")
def tritonclient_python(request: pytest.FixtureRequest) -> Path:
    """The interpreter of a virtual environment holding Triton's Python clients (tritonclient[grpc,http]).

    Its own environment: tritonclient pins protobuf < 7, cnnserve needs >= 7.35. Built once, then reused
    from pytest's cache folder while bench/triton_tools.py's recipe is unchanged."""
    result = _triton_tool(request, "client-venv")
    if result.returncode != 0:
        pytest.fail(f"cannot build the tritonclient environment: {result.stderr.strip()}")
    return Path(result.stdout.strip())


@pytest.fixture(scope="session")
def perf_analyzer_command(request: pytest.FixtureRequest) -> list[str]:
    """The command that runs Triton's perf_analyzer; skips where its binary cannot be obtained."""
    result = _triton_tool(request, "perf-analyzer")
    if result.returncode == TOOL_UNAVAILABLE:
        pytest.skip(result.stderr.strip())
    if result.returncode != 0:
        pytest.fail(f"cannot set up perf_analyzer: {result.stderr.strip()}")
    return result.stdout.split()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A seeded generator for a test's random choices; a failing test's report shows its seed.

    The seed is fixed per test (from its id), so runs repeat; CNNSERVE_TEST_SEED=<n> replays or varies it.
    """
    seed = int(os.environ.get("CNNSERVE_TEST_SEED") or zlib.crc32(request.node.nodeid.encode()))
    request.node.add_report_section("setup", "seed", f"CNNSERVE_TEST_SEED={seed}")
    return np.random.default_rng(seed)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run that collected no test is a failure, not a pass (pytest's exit code 5)."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
