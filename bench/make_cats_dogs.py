"""A small cats-vs-dogs training folder made offline from real photographs, for benchmark models.

No Dogs-vs-Cats data can be downloaded here, so `cats_dogs_cnn` is trained for benchmarks on random crops
of the photographs bundled with scikit-image and matplotlib: `cat` crops come from scikit-image's cat
(chelsea), `dog` crops from the other photographs. A model trained on it is a real `cats_dogs_cnn` (same
architecture, same 150×150 input, real photographic statistics) whose speed is what the benchmarks need;
its answers on real cats and dogs mean nothing.

    python bench/make_cats_dogs.py /tmp/cats_dogs --per-class 400
    cnnserve train cats_dogs_cnn --data /tmp/cats_dogs --epochs 1 --out runs/cats_dogs_cnn
    cnnserve export runs/cats_dogs_cnn --repo model_repository
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from cnnserve.export.photos import PHOTOS, source_path

CAT = "chelsea"
SIZE = 200


def crops(image: Image.Image, count: int, rng: np.random.Generator) -> list[Image.Image]:
    """`count` random square crops (a third to all of the shorter side), some mirrored, at SIZE×SIZE."""
    width, height = image.size
    result = []
    for _ in range(count):
        side = int(rng.uniform(0.35, 1.0) * min(width, height))
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        crop = image.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        result.append(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--per-class", type=int, default=400, help="training images per class")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sources: dict[str, Image.Image] = {}
    for photo in PHOTOS:
        name = Path(photo.source).stem
        if name not in sources:
            with Image.open(source_path(photo)) as opened:
                sources[name] = opened.convert("RGB")
    others = [image for name, image in sources.items() if name != CAT]
    for split, count in (("train", args.per_class), ("validation", max(1, args.per_class // 4))):
        for label in ("cat", "dog"):
            folder = args.folder / split / label
            folder.mkdir(parents=True, exist_ok=True)
            if label == "cat":
                images = crops(sources[CAT], count, rng)
            else:
                images = [crop for image in others for crop in crops(image, -(-count // len(others)), rng)]
            for index, image in enumerate(images[:count]):
                image.save(folder / f"{label}.{index}.jpg", quality=90)
    print(f"wrote {args.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
