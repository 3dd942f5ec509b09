"""tf.data input pipelines: in-memory arrays or image files streamed from disk, scaled like `datasets`.

Files are decoded with the very function export's parity check uses (`datasets.read_image_file`), so the
pixels Keras trains on are the pixels serving is checked against. Augmentation runs here, on training
batches only, never inside the model, so it is inactive at inference and absent from the exported graph.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cnnserve.training.datasets import ArraySplit, FileSplit, Split, convert_images, read_image_file
from cnnserve.training.zoo import Preprocessing

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

AUGMENTATIONS = ("none", "shift", "shear_zoom_flip")


@dataclass
class SkipLog:
    """Files that failed to decode while streaming (after the up-front scan passed them)."""

    files: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str) -> None:
        with self.lock:
            if path not in self.files:
                log.warning("skipping %s: could not be decoded while training", path)
            self.files.add(path)


def _augmenter(kind: str, seed: int):
    import keras

    if kind == "shift":
        # Light, digit-safe jitter: a couple of pixels of shift and a few degrees of rotation.
        return keras.Sequential(
            [
                keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed),
                keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed + 1),
            ],
            name="augment_shift",
        )
    if kind == "shear_zoom_flip":
        # The seed notebook's ImageDataGenerator(shear_range=0.2, zoom_range=0.2, horizontal_flip=True).
        return keras.Sequential(
            [
                keras.layers.RandomShear(x_factor=0.2, y_factor=0.0, fill_mode="nearest", seed=seed),
                keras.layers.RandomZoom(0.2, 0.2, fill_mode="nearest", seed=seed + 1),
                keras.layers.RandomFlip("horizontal", seed=seed + 2),
            ],
            name="augment_shear_zoom_flip",
        )
    raise ValueError(f"unknown augmentation {kind!r}; choose one of {AUGMENTATIONS}")


def make_dataset(
    split: Split,
    pre: Preprocessing,
    input_shape: tuple[int, ...],
    batch_size: int,
    *,
    num_classes: int,
    label_mode: str,
    shuffle: bool = False,
    seed: int = 0,
    augmentation: str = "none",
    skip_log: SkipLog | None = None,
    with_index: bool = False,
) -> tf.data.Dataset:
    """Batches of (x float32 in `input_shape`, y) — plus the sample index when `with_index`.

    `label_mode` is "int" (sparse labels), "one_hot" (categorical losses) or "binary" (float 0/1 for a
    single sigmoid output).
    """
    if label_mode not in ("int", "one_hot", "binary"):
        raise ValueError(f"unknown label_mode {label_mode!r}")
    import tensorflow as tf

    channels_shape = (pre.height, pre.width) + ((3,) if pre.channels == 3 else ())
    scale = tf.constant(pre.scale, tf.float32)
    offset = tf.constant(pre.offset, tf.float32)
    skip_log = skip_log or SkipLog()

    if isinstance(split, ArraySplit):
        images = convert_images(split.images, pre)
        ds = tf.data.Dataset.from_tensor_slices(
            (images, split.labels.astype(np.int32), np.arange(len(split), dtype=np.int64))
        )
        if shuffle:
            ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    elif isinstance(split, FileSplit):
        ds = tf.data.Dataset.from_tensor_slices(
            (list(split.paths), split.labels.astype(np.int32), np.arange(len(split), dtype=np.int64))
        )
        if shuffle:
            ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)

        def read(path: bytes) -> tuple[np.ndarray, np.bool_]:
            name = path.decode()
            try:
                return read_image_file(name, pre), np.bool_(True)
            except Exception:  # a file the up-front scan passed but that fails to decode fully
                skip_log.add(name)
                return np.zeros(channels_shape, np.uint8), np.bool_(False)

        def decode(path, label, index):
            image, ok = tf.numpy_function(read, [path], (tf.uint8, tf.bool), stateful=False)
            image.set_shape(channels_shape)
            ok.set_shape(())
            return image, label, index, ok

        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.filter(lambda image, label, index, ok: ok).map(
            lambda image, label, index, ok: (image, label, index)
        )
    else:  # pragma: no cover - the Split union has two members
        raise TypeError(f"unknown split type {type(split).__name__}")

    ds = ds.batch(batch_size)
    augment = None if augmentation == "none" else _augmenter(augmentation, seed)

    def to_model(image, label, index):
        x = tf.cast(image, tf.float32) * scale + offset
        x = tf.reshape(x, (-1, *input_shape))
        if augment is not None:
            x = augment(tf.reshape(x, (-1, pre.height, pre.width, pre.channels)), training=True)
            x = tf.reshape(x, (-1, *input_shape))
        if label_mode == "one_hot":
            y = tf.one_hot(label, num_classes)
        elif label_mode == "binary":
            y = tf.cast(tf.reshape(label, (-1, 1)), tf.float32)
        else:
            y = label
        return (x, y, index) if with_index else (x, y)

    return ds.map(to_model, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
