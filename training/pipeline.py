"""tf.data input pipelines: in-memory arrays or image files streamed from disk, scaled like `datasets`.

Files are decoded with the very function export's parity check uses (`datasets.read_image_file`), so the
pixels Keras trains on are the pixels serving is checked against. Augmentation runs here, on training
batches only, never inside the model, so it is inactive at inference and absent from the exported graph.

A training pipeline is keyed to an `EpochClock`: the order of epoch e and its augmentation are drawn
statelessly from (seed, e), so a run resumed at epoch e sees the batches an uninterrupted run would have.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnserve.training.augment import get_jitter, warp
from cnnserve.training.datasets import ArraySplit, FileSplit, Split, convert_images, read_image_file
from cnnserve.training.zoo import Preprocessing

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)


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


class EpochClock:
    """The epoch a training pipeline is serving; the training loop sets it as each epoch begins."""

    def __init__(self) -> None:
        import tensorflow as tf

        self.variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")

    def set(self, epoch: int) -> None:
        self.variable.assign(epoch)


def make_dataset(
    split: Split,
    pre: Preprocessing,
    input_shape: tuple[int, ...],
    batch_size: int,
    *,
    num_classes: int,
    label_mode: str,
    clock: EpochClock | None = None,
    seed: int = 0,
    augmentation: str = "none",
    skip_log: SkipLog | None = None,
    with_index: bool = False,
) -> tf.data.Dataset:
    """Batches of (x float32 in `input_shape`, y) — plus the sample index when `with_index`.

    With a `clock` the split is shuffled anew each epoch and augmented (a training pipeline); without one
    it is served in order, unaugmented. `label_mode` is "int" (sparse labels), "one_hot" (categorical
    losses) or "binary" (float 0/1 for a single sigmoid output).
    """
    if label_mode not in ("int", "one_hot", "binary"):
        raise ValueError(f"unknown label_mode {label_mode!r}")
    jitter = get_jitter(augmentation)
    if clock is None and augmentation != "none":
        raise ValueError("augmentation needs an EpochClock (training pipelines only)")
    import tensorflow as tf

    channels_shape = (pre.height, pre.width) + ((3,) if pre.channels == 3 else ())
    scale = tf.constant(pre.scale, tf.float32)
    offset = tf.constant(pre.offset, tf.float32)
    skip_log = skip_log or SkipLog()
    size = len(split)
    labels = tf.constant(split.labels.astype(np.int32))
    base_seed = tf.constant(seed, tf.int64)

    if clock is None:
        order = tf.data.Dataset.range(size)
    else:
        epoch = clock.variable

        def epoch_order(_: Any) -> tf.data.Dataset:
            key = tf.stack([base_seed, epoch.read_value()])
            return tf.data.Dataset.from_tensor_slices(
                tf.random.experimental.stateless_shuffle(tf.range(size, dtype=tf.int64), seed=key)
            )

        order = tf.data.Dataset.from_tensors(0).flat_map(epoch_order)
        order = order.apply(tf.data.experimental.assert_cardinality(size))

    if isinstance(split, ArraySplit):
        images = tf.constant(convert_images(split.images, pre))
        ds = order.batch(batch_size).map(
            lambda index: (tf.gather(images, index), tf.gather(labels, index), index),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    elif isinstance(split, FileSplit):
        paths = tf.constant(list(split.paths))

        def read(path: bytes) -> tuple[np.ndarray, np.bool_]:
            name = path.decode()
            try:
                return read_image_file(name, pre), np.bool_(True)
            except Exception:  # a file the up-front scan passed but that fails to decode fully
                skip_log.add(name)
                return np.zeros(channels_shape, np.uint8), np.bool_(False)

        def decode(index):
            path = tf.gather(paths, index)
            image, ok = tf.numpy_function(read, [path], (tf.uint8, tf.bool), stateful=False)
            image.set_shape(channels_shape)
            ok.set_shape(())
            return image, tf.gather(labels, index), index, ok

        ds = order.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.filter(lambda image, label, index, ok: ok).map(
            lambda image, label, index, ok: (image, label, index)
        )
        ds = ds.batch(batch_size)
    else:  # pragma: no cover - the Split union has two members
        raise TypeError(f"unknown split type {type(split).__name__}")

    epoch_variable = None if clock is None or augmentation == "none" else clock.variable

    def to_model(batch_number, batch):
        image, label, index = batch
        x = tf.cast(image, tf.float32)
        if epoch_variable is not None:
            key = tf.random.experimental.stateless_fold_in(
                tf.stack([base_seed, epoch_variable.read_value()]), batch_number
            )
            x = warp(tf.reshape(x, (-1, pre.height, pre.width, pre.channels)), jitter, key)
        x = tf.reshape(x * scale + offset, (-1, *input_shape))
        if label_mode == "one_hot":
            y = tf.one_hot(label, num_classes)
        elif label_mode == "binary":
            y = tf.cast(tf.reshape(label, (-1, 1)), tf.float32)
        else:
            y = label
        return (x, y, index) if with_index else (x, y)

    return ds.enumerate().map(to_model, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
