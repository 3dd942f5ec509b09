"""The server's CPU time per call with tracing off, tracing at a sampling ratio, and the access log on.

    python bench/bench_observability_cpu.py --repo model_repository --model mnist_cnn \
        --calls 6000 --clients 64 --rounds 5 [--compare-tree DIR]
    python bench/bench_observability_cpu.py --hook-only [--compare-tree DIR]

Throughput on a machine that other work shares moves with whatever else runs; the CPU time a server's
processes use for a fixed number of calls moves less (still ±10% between rounds on 2 busy cores; the
hook's own cost, `--hook-only`, resolves a few µs). So each server (`cnnserve serve`, its supervisor and
workers, exporter threads included) gets the same fixed number of Classify calls of one image from C
closed-loop clients, and the CPU time its processes used over them (user + system, from /proc) is divided
by the calls. Servers are measured back to back in every round, in a rotating order, and each is compared
with tracing off in the same round; the tables give medians over rounds (min-max). Spans are exported over
OTLP/gRPC to a local sink that receives and drops them (bench_serving.py's), so the exporter does all its
work. `--compare-tree DIR` adds the same servers run from another checkout (e.g. the commit before a
change), for an A/B of the code itself. `--hook-only` measures instead the call hook alone (tracing at the
ratio, the access log), in one process per checkout, without a server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_serving import CLASSIFY, OtlpSink, Server, make_images, shim_tree
from quiet import settle

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (all their threads), from /proc/PID/stat."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / TICKS_PER_S


async def _fixed_calls(address: str, payload: bytes, clients: int, calls: int) -> dict[str, float]:
    import grpc

    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel, spread over the workers
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(min(clients, 16))]
    stubs = [c.unary_unary(CLASSIFY, request_serializer=None, response_deserializer=None) for c in channels]
    remaining = calls
    errors = 0

    async def client(index: int) -> None:
        nonlocal remaining, errors
        stub = stubs[index % len(stubs)]
        while remaining > 0:
            remaining -= 1
            try:
                await stub(payload, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - began
    for channel in channels:
        await channel.close()
    return {"elapsed": elapsed, "errors": errors}


def calls_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--payload", type=Path, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--calls", type=int, required=True)
    args = parser.parse_args(argv)
    result = asyncio.run(_fixed_calls(args.address, args.payload.read_bytes(), args.clients, args.calls))
    json.dump(result, sys.stdout)
    return 0


def run_calls(server: Server, payload: Path, clients: int, calls: int) -> tuple[float, float]:
    """(server CPU µs per call, calls/s) over `calls` calls from `clients` closed-loop clients."""
    command = [sys.executable, __file__, "_calls", "--address", server.address, "--payload", str(payload)]
    command += ["--clients", str(clients), "--calls", str(calls)]
    pids = server.pids
    settle()
    before = cpu_seconds(pids)
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    after = cpu_seconds(pids)
    result = json.loads(out.stdout)
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} calls failed; see the server's log")
    return (after - before) / calls * 1e6, calls / result["elapsed"]


def hook_main(argv: list[str]) -> int:
    """The call hook alone, in this process: CPU µs per call of CallObservation's begin and end around an
    empty call (metadata as gRPC gives it, no traceparent), beside a loop without the hook, interleaved."""
    import logging

    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from cnnserve.serving.core.calls import Call
    from cnnserve.serving.observability.calls import CallObservation
    from cnnserve.serving.observability.logs import configure_logging, enable_access_log
    from cnnserve.serving.observability.tracing import TracingSettings, start_tracing

    parser = argparse.ArgumentParser()
    parser.add_argument("--ratio", type=float, required=True)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args(argv)

    class Source:  # what a gRPC ServicerContext gives the hooks
        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return (("user-agent", "grpc-python-asyncio/1.85.3 grpc-c/52.0.0 (linux; chttp2)"),)

        def peer(self) -> str:
            return "ipv4:127.0.0.1:40000"

        def auth_context(self) -> dict[str, list[bytes]]:
            return {}

    class NoHook:
        def begin(self, call: Call) -> None:
            pass

        def end(self, call: Call) -> None:
            pass

    configure_logging(logging.WARNING, "text", stream=args.log.open("w"))
    settings = TracingSettings(("none",), "parentbased_traceidratio", args.ratio)
    tracing = start_tracing(settings, exporter=InMemorySpanExporter())
    hooks = {
        "no hook": NoHook(),
        f"tracing {args.ratio:g}": CallObservation(tracing, None),
        "access log": CallObservation(None, enable_access_log()),
    }
    source = Source()
    seconds: dict[str, list[float]] = {name: [] for name in hooks}
    for _ in range(args.rounds):
        for name, hook in hooks.items():
            start = time.process_time()
            for _ in range(args.calls):
                call = Call("cnnserve.v1", "Classify", "mnist_cnn", source)
                hook.begin(call)
                call.version, call.images = 1, 1
                hook.end(call)
            seconds[name].append(time.process_time() - start)
    json.dump({name: min(values) / args.calls * 1e6 for name, values in seconds.items()}, sys.stdout)
    return 0


def hook_costs(tmp: Path, ratio: str, env: dict[str, str]) -> dict[str, float]:
    command = [sys.executable, __file__, "_hook", "--ratio", ratio, "--log", str(tmp / "hook.log")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True, env=env)
    costs = json.loads(out.stdout)
    bare = costs.pop("no hook")
    return {name: value - bare for name, value in costs.items()}


def _spread(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_calls":
        return calls_main(argv[1:])
    if argv and argv[0] == "_hook":
        return hook_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="the model repository (not needed with --hook-only)")
    parser.add_argument("--model", help="the model to call (not needed with --hook-only)")
    parser.add_argument("--calls", type=int, default=8000, help="calls per server per round")
    parser.add_argument("--clients", type=int, default=64, help="closed-loop clients, one image per call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--ratio", default="0.01", help="the sampling ratio of the traced server")
    parser.add_argument("--no-full", action="store_true", help="leave out tracing at ratio 1.0")
    parser.add_argument("--no-access-log", action="store_true", help="leave out the access log")
    parser.add_argument("--compare-tree", type=Path, help="also servers run from this source tree")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--hook-only",
        action="store_true",
        help="only the call hook's own CPU per call, in-process (no server)",
    )
    args = parser.parse_args(argv)
    if args.hook_only:
        return hook_only_main(args)
    if args.repo is None or args.model is None:
        parser.error("--repo and --model are needed (except with --hook-only)")

    from cnnserve.protos import inference_pb2
    from cnnserve.serving.model.repository import open_model_version

    version = open_model_version(args.repo, args.model)
    image = make_images(version.config, 1)[0]
    print(
        f"# {args.model} v{version.version}, {os.cpu_count()} cores, {args.workers} server workers, "
        f"{args.calls} calls of 1 image from {args.clients} clients per server per round, "
        f"{args.rounds} rounds",
        flush=True,
    )
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-observability-cpu-") as tmp_name:
        tmp = Path(tmp_name)
        payload = tmp / "payload.bin"
        request = inference_pb2.ClassifyRequest(model=args.model, images=[inference_pb2.Image(encoded=image)])
        payload.write_bytes(request.SerializeToString())
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
            (f"tracing {args.ratio}", [], traced(args.ratio)),
        ]
        if not args.no_full:
            plans.append(("tracing 1.0", [], traced("1.0")))
        if not args.no_access_log:
            plans.append(("access log", ["--access-log"], off))
        if args.compare_tree is not None:
            shim = {"PYTHONPATH": str(shim_tree(args.compare_tree, tmp))}
            plans += [(f"other tree: {system}", flags, {**env, **shim}) for system, flags, env in plans]
        servers: dict[str, Server] = {}
        try:
            for system, flags, env in plans:
                name = system.replace(" ", "-").replace(":", "")
                servers[system] = Server(args.repo, args.workers, flags, tmp, name, env)
            for server in servers.values():  # warm up: connections, sessions, the exporter's first batches
                run_calls(server, payload, args.clients, max(500, args.calls // 10))
            for round_index in range(args.rounds):
                shift = round_index % len(plans)
                for system, _, _ in plans[shift:] + plans[:shift]:
                    cpu_us, rate = run_calls(servers[system], payload, args.clients, args.calls)
                    results.setdefault(system, []).append((cpu_us, rate))
                    print(
                        f"  round {round_index + 1}: {system:28s} {cpu_us:7.1f} µs CPU/call "
                        f"{rate:8,.0f} calls/s",
                        flush=True,
                    )
        finally:
            for server in servers.values():
                server.stop()
            received = sink.stop()
    print(f"\nspans received by the OTLP sink: {received.get('spans', 0):,}")
    print(
        "\nmedians over rounds (min-max); differences and ratios are to the same tree's tracing off "
        "in the same round"
    )
    print("| server | CPU µs per call | CPU µs more than tracing off | CPU ratio to tracing off | calls/s |")
    print("|---|---|---|---|---|")
    for system, rows in results.items():
        base = results["other tree: tracing off" if system.startswith("other tree") else "tracing off"]
        more = [row[0] - b[0] for row, b in zip(rows, base, strict=True)]
        ratios = [100 * row[0] / b[0] for row, b in zip(rows, base, strict=True)]
        print(
            f"| {system} | {_spread([r[0] for r in rows])} | {_spread(more)} | {_spread(ratios, 1)}% | "
            f"{_spread([r[1] for r in rows])} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "rows": results, "sink": received}, indent=2))
    return 0


def hook_only_main(args: argparse.Namespace) -> int:
    """The hook's own cost, least of 7 rounds of 20,000 calls: this tree, and `--compare-tree`'s."""
    trees = {"this tree": {}}
    with tempfile.TemporaryDirectory(prefix="bench-observability-hook-") as tmp_name:
        tmp = Path(tmp_name)
        if args.compare_tree is not None:
            trees["other tree"] = {"PYTHONPATH": str(shim_tree(args.compare_tree, tmp))}
        print("| tree | hook | CPU µs per call, beyond the call itself |")
        print("|---|---|---|")
        for tree, env in trees.items():
            for name, cost in hook_costs(tmp, args.ratio, {**os.environ, **env}).items():
                print(f"| {tree} | {name} | {cost:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
