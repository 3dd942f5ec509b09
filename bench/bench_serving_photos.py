"""Serving camera photos: the same model served with full decoding and with DCT-scaled decoding, in one run.

Two `cnnserve serve` processes over copies of one model folder that differ only in the config's
`preprocessing.scaled_decoding` (false: every JPEG decoded in full, as every repository exported before
scaled decoding; true: what export turns on when its photo check held), driven in interleaved rounds by
the same closed-loop load generator as bench/bench_serving.py: C clients, each with one Classify call of
N real photographs (`cnnserve.export.photos`, upscaled and re-encoded at the given size) in flight.

    python bench/bench_serving_photos.py --repo model_repository --model cats_dogs_cnn \
        --clients 8 --images 16 --size 2048x1536 --rounds 3
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
from pathlib import Path

from bench_serving import Server, run_load

from cnnserve.export.photos import PHOTOS, Photo, encode

SOURCES = ("chelsea", "astronaut", "coffee", "motorcycle")


def repository_with(repo: Path, model: str, scaled: bool, target: Path) -> Path:
    """A repository holding only `model`, its config's scaled_decoding set as asked."""
    shutil.copytree(repo / model, target / model)
    config = target / model / "config.pbtxt"
    text = re.sub(r"\n\s*scaled_decoding: \w+", "", config.read_text())
    if scaled:
        text = re.sub(r"(preprocessing \{\n)", r"\1  scaled_decoding: true\n", text, count=1)
    config.write_text(text)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--model", default="cats_dogs_cnn")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--images", type=int, default=16, help="photos per call")
    parser.add_argument("--size", default="2048x1536", help="WIDTHxHEIGHT of the photos (default 3 MP)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    args = parser.parse_args()

    from cnnserve.protos import inference_pb2

    width, height = (int(v) for v in args.size.lower().split("x"))
    photos = []
    for index in range(args.images):
        base = next(p for p in PHOTOS if p.name.startswith(SOURCES[index % len(SOURCES)]))
        photo = Photo(f"photo-{index}", base.package, base.source, (width, height))
        photos.append(encode(photo, seed=index))
    megabytes = sum(len(p) for p in photos) / 1e6
    print(f"# {args.model}, {args.clients} clients x {args.images} photos of {width}x{height}")
    print(f"# ({megabytes:.1f} MB per call), {args.workers} server workers, {args.rounds} rounds")
    rates: dict[str, list[float]] = {"full decoding": [], "scaled decoding": []}
    p99s: dict[str, list[float]] = {name: [] for name in rates}
    with tempfile.TemporaryDirectory(prefix="bench-photos-") as tmp_name:
        tmp = Path(tmp_name)
        payload = tmp / "payload.bin"
        request = inference_pb2.ClassifyRequest(
            model=args.model, images=[inference_pb2.Image(encoded=data) for data in photos]
        )
        payload.write_bytes(request.SerializeToString())
        servers = {}
        try:
            for name in rates:
                scaled = name.startswith("scaled")
                repo = repository_with(args.repo, args.model, scaled, tmp / name.split()[0])
                servers[name] = Server(repo, args.workers, [], tmp, name.split()[0])
            for round_index in range(args.rounds):
                for name, server in servers.items():
                    row = run_load(server.address, payload, args.clients, args.images, args.duration, name)
                    if row.errors:
                        raise RuntimeError(f"{name}: {row.errors} errors ({row.note})")
                    rates[name].append(row.images_per_s)
                    p99s[name].append(row.p99_ms)
                    print(
                        f"  round {round_index + 1}: {name:16s} {row.images_per_s:8.1f} images/s "
                        f"p50 {row.p50_ms:8.1f} ms p99 {row.p99_ms:8.1f} ms",
                        flush=True,
                    )
        finally:
            for server in servers.values():
                server.stop()
    full = statistics.median(rates["full decoding"])
    scaled = statistics.median(rates["scaled decoding"])
    ratios = [s / f for s, f in zip(rates["scaled decoding"], rates["full decoding"], strict=True)]
    print()
    print("| server | images/s (median of rounds) | p99 ms (median) | scaled / full (median of rounds) |")
    print("|---|---:|---:|---:|")
    print(f"| full decoding | {full:,.1f} | {statistics.median(p99s['full decoding']):,.0f} | – |")
    print(
        f"| scaled decoding | {scaled:,.1f} | {statistics.median(p99s['scaled decoding']):,.0f} | "
        f"**{statistics.median(ratios):.2f}×** |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
