"""Triton's perf_analyzer drives cnnserve over gRPC and HTTP with its defaults (it reads the model's
metadata and configuration, generates FP32 tensors -- zeros: its default random bytes hold NaNs, which the
server refuses -- and reads the server's statistics). Skipped where
bench/triton_tools.py cannot obtain the binary; speed is measured in bench/bench_oip.py, not here."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

MODEL = "mnist_cnn"


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize(("batch", "concurrency"), [(64, 8), (1, 64)])
def test_perf_analyzer_runs_against_cnnserve(
    perf_analyzer_command: list[str], served_http: Any, protocol: str, batch: int, concurrency: int
) -> None:
    url = served_http.address if protocol == "grpc" else served_http.http_url.removeprefix("http://")
    command = [*perf_analyzer_command, "-m", MODEL, "-u", url, "-i", protocol, "-b", str(batch)]
    command += ["--concurrency-range", str(concurrency), "--measurement-interval", "800"]
    # Whether three windows agree is a property of the machine's load, not of the server: on oversubscribed
    # cores their rates differed by more than 3x. Any rate passes; what is checked is that it ran.
    command += ["--max-trials", "3", "--stability-percentage", "100000", "--input-data", "zero"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    throughput = re.search(r"Concurrency: \d+, throughput: ([\d.]+) infer/sec", output)
    assert throughput and float(throughput.group(1)) > 0, output[-3000:]
    # perf_analyzer cross-checks its requests against the server's own statistics.
    server = re.search(r"Successful request count: (\d+)", output)
    assert server and int(server.group(1)) > 0
