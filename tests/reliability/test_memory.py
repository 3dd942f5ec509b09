"""A worker's memory stays flat under a mutation fuzz of encoded images.

glibc raises its mmap threshold each time a big buffer is freed, after which big buffers (decoded images,
Pillow's blocks) come from the heap and stay mapped: a worker grew 116 → 187 MB over 12,000 mutated images
that way. The server fixes the threshold; after warm-up rounds its RSS must not keep growing.
"""

from __future__ import annotations

from pathlib import Path

import harness
from PIL import Image

from cnnserve.protos import inference_pb2

WARM_UP_ROUNDS = 2  # every decoder, thread and buffer size seen once
ROUNDS = 5
PAYLOADS_PER_ROUND = 500
MAX_GROWTH = 0.05


def test_rss_stays_flat_after_warm_up_fuzz_rounds(
    serve, model_repository: Path, digit_pixels, seed: int
) -> None:
    server = serve(model_repository, "--workers", "1")
    (worker,) = server.workers()
    seeds = harness.seed_images(digit_pixels)
    seeds.append(harness.encode(Image.new("L", (2000, 1500)), "PNG"))  # big buffers, as a fuzz meets them
    mutator = harness.Mutator(seed, seeds)
    request = lambda: harness.HostileRequest(  # noqa: E731
        "Classify", message=harness.classify_request(inference_pb2.Image(encoded=mutator.image()))
    )
    rss = []
    for _ in range(ROUNDS):
        harness.fuzz(server.address, harness.forever(request), PAYLOADS_PER_ROUND)
        rss.append(harness.rss_bytes(worker))
    growth = max(rss[WARM_UP_ROUNDS:]) / rss[WARM_UP_ROUNDS - 1] - 1
    assert growth < MAX_GROWTH, f"seed {seed}: RSS per round {[r // 2**20 for r in rss]} MiB"
