"""The Open Inference Protocol (KServe v2) on `cnnserve serve`, beside its baselines, in one run.

    .venv/bin/python bench/bench_oip.py --repo REPO --model mnist_cnn [--duration 4] [--rounds 2]

Measured side by side, each round, with bench_serving.py's closed-loop load generator (ratios taken within
a round, so a shared machine's load moves both sides alike):
- ORT: the model alone, one process, ONNX Runtime on all cores, best batch size (bench_serving's ceiling);
- echo: `serve --echo`, the same gRPC and HTTP stacks and worker setup answering ModelInfer with no work,
  driven with the same payloads; the whole-call limit for FP32 tensors is 1 / (1/ORT + 1/echo);
- cnnserve: OIP gRPC ModelInfer with one raw FP32 tensor [64,28,28,1] at 8 clients and [1,...] at 64
  and 1 clients, encoded PNGs as BYTES at 64 x 1, HTTP binary-tensor infer at 8 x 64 and 64 x 1, and the
  cnnserve.v1 Classify with 64 Tensor messages at 8 x 64 for comparison;
- perf_analyzer (Triton's own load generator, when bench/triton_tools.py can set it up) with its defaults
  against the same server: `-b 64 --concurrency-range 8` and `-b 1 --concurrency-range 64`, gRPC and HTTP.
Our load generator: closed loop, pre-serialised requests, responses read but not parsed, in its own
process (grpc.aio for gRPC; asyncio sockets with keep-alive for HTTP). Each point also reads the server
processes' CPU time over the measured window (/proc): CPU per call, in all threads and in the main threads
(the workers' event loops), which holds where rates follow a shared machine's load. Prints one table with
the ratios the targets are stated in; `--json OUT` also writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import bench_serving as base
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
CLASSIFY = base.CLASSIFY


# ------------------------------------------------------------------------------------------------
# Payloads
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    name: str
    images: int
    grpc_method: str = ""  # set for gRPC payloads
    body: bytes = b""  # a serialised request (gRPC) or an HTTP body
    http_header_length: int = -1  # HTTP: the JSON part's length (binary data follows)


def make_payloads(
    model: str, input_name: str, dims: tuple[int, ...], pngs: list[bytes]
) -> dict[str, Payload]:
    from cnnserve.protos import inference_pb2, model_config_pb2, oip_pb2

    rng = np.random.default_rng(0)
    payloads = {}
    for count in (1, 64):
        tensor = rng.random((count, *dims), dtype=np.float32)
        request = oip_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name=input_name, datatype="FP32", shape=tensor.shape)
        request.raw_input_contents.append(tensor.tobytes())
        payloads[f"oip-fp32-{count}"] = Payload(
            f"OIP gRPC FP32 [{count},...]", count, MODEL_INFER, request.SerializeToString()
        )
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": input_name,
                        "datatype": "FP32",
                        "shape": list(tensor.shape),
                        "parameters": {"binary_data_size": tensor.nbytes},
                    }
                ],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
            }
        ).encode()
        payloads[f"http-fp32-{count}"] = Payload(
            f"OIP HTTP binary FP32 [{count},...]",
            count,
            body=header + tensor.tobytes(),
            http_header_length=len(header),
        )
        classify = inference_pb2.ClassifyRequest(model=model)
        for image in tensor:
            classify.images.add(
                tensor=inference_pb2.Tensor(
                    data_type=model_config_pb2.TYPE_FP32, shape=dims, data=image.tobytes()
                )
            )
        payloads[f"classify-tensors-{count}"] = Payload(
            f"Classify, {count} Tensor messages", count, CLASSIFY, classify.SerializeToString()
        )
    request = oip_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="BYTES", shape=[1])
    request.raw_input_contents.append(len(pngs[0]).to_bytes(4, "little") + pngs[0])
    payloads["oip-png-1"] = Payload("OIP gRPC BYTES (PNG) [1]", 1, MODEL_INFER, request.SerializeToString())
    return payloads


# ------------------------------------------------------------------------------------------------
# Load generator (its own process)
# ------------------------------------------------------------------------------------------------


async def _http_load(
    port: int,
    model: str,
    payload: Payload,
    clients: int,
    warmup: float,
    seconds: float,
    cpu_pids: list[int] | None = None,
) -> dict:
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {payload.http_header_length}\r\n"
        f"Content-Length: {len(payload.body)}\r\n\r\n"
    )
    return await _closed_loop(
        clients, warmup, seconds, lambda: _http_client(port, head, payload.body), cpu_pids or []
    )


def _http_client(port: int, head: str, body: bytes):  # type: ignore[no-untyped-def]
    state: dict[str, object] = {}

    async def call() -> None:
        if "writer" not in state:
            state["reader"], state["writer"] = await asyncio.open_connection("127.0.0.1", port)
        reader: asyncio.StreamReader = state["reader"]  # type: ignore[assignment]
        writer: asyncio.StreamWriter = state["writer"]  # type: ignore[assignment]
        writer.write(head.encode() + body)
        response = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", response).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        if not response.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(response.split(b"\r\n")[0].decode())

    return call


async def _closed_loop(clients: int, warmup: float, seconds: float, make_call, cpu_pids: list[int]) -> dict:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    measuring = False
    stop = False

    async def client() -> None:
        call = make_call()
        while not stop:
            start = time.perf_counter()
            try:
                await call()
            except Exception as error:  # counted, reported beside the figures
                if measuring:
                    errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                await asyncio.sleep(0.01)
                continue
            if measuring:
                latencies.append(time.perf_counter() - start)

    tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
    await asyncio.sleep(warmup)
    measuring = True
    cpu_began = base.cpu_seconds(cpu_pids)
    began = time.perf_counter()
    await asyncio.sleep(seconds)
    measuring = False
    elapsed = time.perf_counter() - began
    cpu_ended = base.cpu_seconds(cpu_pids)
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "calls": len(latencies),
        "elapsed": elapsed,
        "latencies": latencies,
        "errors": errors,
        "server_cpu_s": cpu_ended[0] - cpu_began[0],
        "server_loop_cpu_s": cpu_ended[1] - cpu_began[1],
    }


def load_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--payload", type=Path, required=True)
    parser.add_argument("--header-length", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--cpu-pids", default="", help="comma-separated server pids whose CPU to measure")
    args = parser.parse_args(argv)
    payload = Payload("", 0, body=args.payload.read_bytes(), http_header_length=args.header_length)
    pids = [int(pid) for pid in args.cpu_pids.split(",") if pid]
    result = asyncio.run(
        _http_load(args.http_port, args.model, payload, args.clients, 1.0, args.duration, pids)
    )
    json.dump(result, sys.stdout)
    return 0


def run_point(
    server: Server, payload: Payload, clients: int, duration: float, model: str, tmp: Path, system: str
) -> base.Row:
    path = tmp / f"{abs(hash(payload.body))}.bin"
    if not path.exists():
        path.write_bytes(payload.body)
    if payload.grpc_method:
        command = [
            sys.executable,
            base.__file__,
            "_load",
            "--address",
            server.address,
            "--payload",
            str(path),
        ]
        command += ["--clients", str(clients), "--duration", str(duration), "--method", payload.grpc_method]
    else:
        command = [sys.executable, __file__, "_load", "--http-port", str(server.http_port), "--model", model]
        command += ["--payload", str(path), "--header-length", str(payload.http_header_length)]
        command += ["--clients", str(clients), "--duration", str(duration)]
    command += ["--cpu-pids", ",".join(map(str, server.pids))]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120, check=True)
    result = json.loads(out.stdout)
    latencies = sorted(result["latencies"])
    calls = result["calls"] / result["elapsed"]
    p50 = statistics.median(latencies) * 1e3 if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3 if latencies else float("nan")
    errors = result["errors"]
    note = ", ".join(f"{code} x{n}" for code, n in errors.items())
    answered = max(1, result["calls"])
    return base.Row(
        system,
        clients,
        payload.images,
        calls * payload.images,
        calls,
        p50,
        p99,
        sum(errors.values()),
        note,
        cpu_us_per_call=1e6 * result["server_cpu_s"] / answered,
        loop_cpu_us_per_call=1e6 * result["server_loop_cpu_s"] / answered,
    )


# ------------------------------------------------------------------------------------------------
# Servers and perf_analyzer
# ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server(base.Server):
    """`cnnserve serve` with its HTTP endpoint on a free port too."""

    def __init__(self, repo: Path, workers: int, extra: list[str], tmp: Path, name: str) -> None:
        self.http_port = free_port()
        super().__init__(repo, workers, [*extra, "--http-port", str(self.http_port)], tmp, name)


def perf_analyzer_command(tools: Path) -> list[str] | None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "triton_tools.py"),
            "perf-analyzer",
            str(tools / "perf-analyzer"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        print(f"perf_analyzer unavailable: {out.stderr.strip()}", flush=True)
        return None
    return out.stdout.split()


@dataclass
class PerfAnalyzerRow:
    protocol: str
    batch: int
    concurrency: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    note: str = ""


def run_perf_analyzer(
    command: list[str],
    server: Server,
    model: str,
    protocol: str,
    batch: int,
    concurrency: int,
    seconds: float,
) -> PerfAnalyzerRow:
    url = server.address if protocol == "grpc" else f"127.0.0.1:{server.http_port}"
    args = [*command, "-m", model, "-u", url, "-i", protocol, "-b", str(batch)]
    args += ["--concurrency-range", str(concurrency), "--measurement-interval", str(int(seconds * 1000))]
    args += ["--max-trials", "5", "--stability-percentage", "200", "--percentile", "99"]
    args += ["--input-data", "zero"]  # its default random bytes hold NaNs, which the server refuses
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    text = out.stdout + out.stderr
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", text)
    p50 = re.search(r"p50 latency: (\d+) usec", text)
    p99 = re.search(r"p99 latency: (\d+) usec", text)
    if out.returncode != 0 or throughput is None:
        tail = " | ".join(text.strip().splitlines()[-3:])
        return PerfAnalyzerRow(protocol, batch, concurrency, float("nan"), float("nan"), float("nan"), tail)
    return PerfAnalyzerRow(
        protocol,
        batch,
        concurrency,
        float(throughput.group(1)),
        int(p50.group(1)) / 1e3 if p50 else float("nan"),
        int(p99.group(1)) / 1e3 if p99 else float("nan"),
    )


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------

BATCH = 64  # images per call at the batched points
ECHO_POINTS = (("oip-fp32-64", 8), ("oip-fp32-1", 64), ("http-fp32-64", 8), ("classify-tensors-64", 8))
SERVER_POINTS = (
    ("oip-fp32-64", 8),
    ("oip-fp32-1", 64),
    ("oip-fp32-1", 1),
    ("oip-png-1", 64),
    ("http-fp32-64", 8),
    ("http-fp32-1", 64),
    ("classify-tensors-64", 8),
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_load":
        return load_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measured point")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every measurement (medians kept)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server worker processes")
    parser.add_argument(
        "--tools", type=Path, default=ROOT / "bench" / ".tools", help="perf_analyzer's folder"
    )
    parser.add_argument("--no-perf-analyzer", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    from cnnserve.serving.model.repository import open_model_version

    cores = os.cpu_count() or 1
    version = open_model_version(args.repo, args.model)
    config = version.config
    dims = tuple(int(d) for d in config.input.dims)
    payloads = make_payloads(args.model, config.input.name, dims, base.make_images(config, 8))
    print(
        f"# {args.model} v{version.version}, {cores} cores, {args.workers} server workers, "
        f"{args.duration:.0f} s per point, {args.rounds} rounds",
        flush=True,
    )
    pa_command = None if args.no_perf_analyzer else perf_analyzer_command(args.tools)
    ort_rates: list[float] = []
    measured: dict[tuple[str, str, int], list[base.Row]] = {}
    analyzer: list[PerfAnalyzerRow] = []
    summary: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-oip-") as tmp_name:
        tmp = Path(tmp_name)
        servers = {}
        try:
            servers["echo"] = Server(args.repo, args.workers, ["--echo"], tmp, "echo")
            servers["cnnserve"] = Server(args.repo, args.workers, [], tmp, "cnnserve")
            for round_index in range(args.rounds):
                # ORT alone at the batch the requests carry, the better of the machine's two ways to
                # use its cores: one session with a thread per core, or the server's way, a one-thread
                # session per process.
                one = base.ort_rates(args.repo, args.model, args.duration / 2, cores, (BATCH,))[BATCH]
                procs = base.ort_rates_processes(args.repo, args.model, args.duration / 2, cores, (BATCH,))[
                    BATCH
                ]
                ort_rates.append(max(one, procs))
                print(
                    f"  round {round_index + 1}: ORT alone, batch {BATCH}: one process {one:,.0f} img/s, "
                    f"{cores} one-thread processes {procs:,.0f} img/s",
                    flush=True,
                )
                for system, points in (("echo", ECHO_POINTS), ("cnnserve", SERVER_POINTS)):
                    for key, clients in points:
                        payload = payloads[key]
                        row = run_point(
                            servers[system], payload, clients, args.duration, args.model, tmp, system
                        )
                        measured.setdefault((system, key, clients), []).append(row)
                        print(
                            f"  round {round_index + 1}: {system:9s} {payload.name:34s} {clients:3d} clients "
                            f"{row.images_per_s:10,.0f} img/s {row.calls_per_s:8,.0f} calls/s "
                            f"p50 {row.p50_ms:6.2f} ms p99 {row.p99_ms:6.2f} ms errors {row.errors}",
                            flush=True,
                        )
            # Profiles come from a pass of their own: py-spy's sampling would slow the measured rounds.
            for key, clients in (("oip-fp32-64", 8), ("oip-fp32-1", 64), ("http-fp32-64", 8)):
                server = servers["cnnserve"]
                spies = base.profile(server.pids, args.duration, tmp / f"profile-{key}-{clients}")
                run_point(server, payloads[key], clients, args.duration, args.model, tmp, "cnnserve")
                for spy in spies:
                    spy.wait(60)
            summary = base.summarise_profiles(sorted(tmp.glob("profile-*.txt")), args.duration)
            if pa_command is not None:
                for protocol in ("grpc", "http"):
                    for batch, concurrency in ((64, 8), (1, 64)):
                        row_pa = run_perf_analyzer(
                            pa_command,
                            servers["cnnserve"],
                            args.model,
                            protocol,
                            batch,
                            concurrency,
                            args.duration,
                        )
                        analyzer.append(row_pa)
                        print(f"  perf_analyzer {protocol} -b {batch} c{concurrency}: {row_pa}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    report(args, cores, ort_rates, measured, analyzer, summary)
    return 0


def report(
    args: argparse.Namespace,
    cores: int,
    ort_rates: list[float],
    measured: dict[tuple[str, str, int], list[base.Row]],
    analyzer: list[PerfAnalyzerRow],
    summary: dict[str, list[str]],
) -> None:
    def spread(values: list[float], digits: int = 0) -> str:
        return (
            f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"
        )

    def rows(system: str, key: str, clients: int) -> list[base.Row]:
        return measured.get((system, key, clients), [])

    echo_64 = rows("echo", "oip-fp32-64", 8)
    limit = [1 / (1 / o + 1 / e.images_per_s) for o, e in zip(ort_rates, echo_64, strict=True)]
    print()
    print(
        f"medians over {args.rounds} rounds (min-max); ratios taken within each round. ORT alone "
        f"{spread(ort_rates)} img/s; whole-call limit 1/(1/ORT + 1/echo) at 8 x 64 FP32 {spread(limit)} img/s"
    )
    print(
        "| system | request | clients x images | images/s | calls/s | p50 ms | p99 ms | errors "
        "| server CPU us/call (event loops) | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    targets = {
        ("cnnserve", "oip-fp32-64", 8): ("of the whole-call limit", lambda r, i: r.images_per_s / limit[i]),
        ("cnnserve", "classify-tensors-64", 8): (
            "of the whole-call limit",
            lambda r, i: r.images_per_s / limit[i],
        ),
        ("cnnserve", "oip-fp32-1", 64): (
            "of the OIP gRPC echo",
            lambda r, i: r.calls_per_s / rows("echo", "oip-fp32-1", 64)[i].calls_per_s,
        ),
        ("cnnserve", "oip-png-1", 64): (
            "of the OIP gRPC echo",
            lambda r, i: r.calls_per_s / rows("echo", "oip-fp32-1", 64)[i].calls_per_s,
        ),
        ("cnnserve", "http-fp32-64", 8): (
            "of OIP gRPC 8 x 64",
            lambda r, i: r.images_per_s / rows("cnnserve", "oip-fp32-64", 8)[i].images_per_s,
        ),
        ("cnnserve", "http-fp32-1", 64): (
            "of OIP gRPC 64 x 1",
            lambda r, i: r.images_per_s / rows("cnnserve", "oip-fp32-1", 64)[i].images_per_s,
        ),
        ("echo", "http-fp32-64", 8): (
            "of the gRPC echo 8 x 64",
            lambda r, i: r.images_per_s / rows("echo", "oip-fp32-64", 8)[i].images_per_s,
        ),
    }
    payload_names = {
        "oip-fp32-64": "OIP gRPC, raw FP32 [64,28,28,1]",
        "oip-fp32-1": "OIP gRPC, raw FP32 [1,28,28,1]",
        "oip-png-1": "OIP gRPC, BYTES PNG [1]",
        "http-fp32-64": "OIP HTTP, binary FP32 [64,...]",
        "http-fp32-1": "OIP HTTP, binary FP32 [1,...]",
        "classify-tensors-64": "cnnserve.v1 Classify, 64 Tensor messages",
    }
    for (system, key, clients), found in measured.items():
        ratio = "-"
        if (system, key, clients) in targets:
            label, compute = targets[(system, key, clients)]
            ratio = f"{spread([100 * compute(r, i) for i, r in enumerate(found)])}% {label}"
        calls = statistics.median([r.calls_per_s for r in found])
        p50 = statistics.median([r.p50_ms for r in found])
        p99 = statistics.median([r.p99_ms for r in found])
        cpu = statistics.median([r.cpu_us_per_call for r in found])
        loop_cpu = statistics.median([r.loop_cpu_us_per_call for r in found])
        print(
            f"| {system} | {payload_names[key]} | {clients} x {found[0].images_per_call} | "
            f"{spread([r.images_per_s for r in found])} | {calls:,.0f} | {p50:.2f} | {p99:.2f} | "
            f"{sum(r.errors for r in found)} | {cpu:,.0f} ({loop_cpu:,.0f}) | {ratio} |"
        )
    for row in analyzer:
        print(
            f"| perf_analyzer -> cnnserve | {row.protocol} -b {row.batch} | {row.concurrency} x {row.batch} "
            f"| {row.images_per_s:,.0f} | {row.images_per_s / row.batch:,.0f} | {row.p50_ms:.2f} "
            f"| {row.p99_ms:.2f} | - | - | {row.note or '-'} |"
        )
    echo_cpu = rows("echo", "oip-fp32-1", 64)
    server_cpu = rows("cnnserve", "oip-fp32-1", 64)
    if echo_cpu and server_cpu:
        # On a machine the load generator shares, a rate ratio moves with the neighbours' load; the ratio of
        # server CPU per call does not, and bounds what the rate ratio can reach on a CPU-bound machine.
        ratios = [e.cpu_us_per_call / c.cpu_us_per_call for e, c in zip(echo_cpu, server_cpu, strict=True)]
        echo_us = statistics.median([r.cpu_us_per_call for r in echo_cpu])
        server_us = statistics.median([r.cpu_us_per_call for r in server_cpu])
        print(
            f"\n64 x 1 FP32, server CPU per call: echo {echo_us:,.0f} us, cnnserve {server_us:,.0f} us: "
            f"echo/cnnserve {spread([100 * r for r in ratios])}%"
        )
    if summary:
        print("\nprofile (py-spy on the server processes, a pass after the rounds, share of samples):")
        for name, lines in summary.items():
            print(f"  {name}: " + "; ".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": args.model,
                    "cores": cores,
                    "workers": args.workers,
                    "ort": ort_rates,
                    "whole_call_limit_8x64": limit,
                    "rows": {
                        f"{s} {k} {c}": [asdict(r) for r in found] for (s, k, c), found in measured.items()
                    },
                    "perf_analyzer": [asdict(r) for r in analyzer],
                    "profile": summary,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    raise SystemExit(main())
