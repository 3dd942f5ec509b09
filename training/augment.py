"""Training-time augmentation: one random affine warp per image, drawn statelessly from (seed, epoch, batch).

Every draw is a pure function of the run's seed, the epoch and the batch's position in it, so a run resumed
from a checkpoint sees exactly the augmented batches an uninterrupted run would have seen. Shift, rotation,
zoom and shear compose into a single projective transform per image (one resampling, not one per effect),
applied to raw pixel values before scaling, so the constant fill is black whatever the model's scaling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import tensorflow as tf

FillMode = Literal["constant", "nearest"]


@dataclass(frozen=True)
class Jitter:
    """The ranges one augmentation draws from, each uniform and symmetric around "no change"."""

    description: str
    shift: float = 0.0  # fraction of the height/width, each axis on its own
    rotation_degrees: float = 0.0
    zoom: float = 0.0  # sampling scale in [1 - zoom, 1 + zoom], each axis on its own
    shear: float = 0.0  # horizontal shear factor in [-shear, shear]
    horizontal_flip: bool = False
    fill: FillMode = "constant"

    @property
    def is_identity(self) -> bool:
        ranges = (self.shift, self.rotation_degrees, self.zoom, self.shear)
        return not (any(ranges) or self.horizontal_flip)


AUGMENTATIONS: Mapping[str, Jitter] = MappingProxyType(
    {
        "none": Jitter("no augmentation"),
        # Digits stay digits under a few pixels of shift, ~12 degrees of rotation, ~10% zoom and a little
        # shear; no flips (a mirrored 2 is not a 2).
        "affine": Jitter(
            "up to 10% shift, 12° rotation, 10% zoom, 0.1 shear (digit-safe, no flips)",
            shift=0.1,
            rotation_degrees=12.0,
            zoom=0.1,
            shear=0.1,
        ),
        # The seed notebook's ImageDataGenerator(shear_range=0.2, zoom_range=0.2, horizontal_flip=True).
        "shear_zoom_flip": Jitter(
            "shear 0.2, zoom 20%, horizontal flip (the Dogs-vs-Cats notebook's)",
            zoom=0.2,
            shear=0.2,
            horizontal_flip=True,
            fill="nearest",
        ),
    }
)


class UnknownAugmentationError(ValueError):
    """An augmentation name that is not in `AUGMENTATIONS`."""


def get_jitter(name: str) -> Jitter:
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise UnknownAugmentationError(
            f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}"
        ) from None


def warp(images: tf.Tensor, jitter: Jitter, seed: tf.Tensor) -> tf.Tensor:
    """Randomly warp a float32 batch (N, H, W, C); `seed` is a stateless seed of shape (2,).

    The transform maps each output pixel to the input point it samples: around the image centre,
    rotate · zoom · shear, then shift. Pixels sampled outside the image take the fill.
    """
    import tensorflow as tf

    if jitter.is_identity:
        return tf.convert_to_tensor(images)
    shape = tf.shape(images)
    n = shape[0]
    height = tf.cast(shape[1], tf.float32)
    width = tf.cast(shape[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, num=7)

    def uniform(i: int, bound: float) -> tf.Tensor:
        return tf.random.stateless_uniform((n,), seeds[i], -bound, bound)

    angle = uniform(0, math.radians(jitter.rotation_degrees))
    zoom_x = 1.0 + uniform(1, jitter.zoom)
    zoom_y = 1.0 + uniform(2, jitter.zoom)
    shear = uniform(3, jitter.shear)
    shift_x = uniform(4, jitter.shift) * width
    shift_y = uniform(5, jitter.shift) * height
    cos, sin = tf.cos(angle), tf.sin(angle)
    # A = R(angle) @ diag(zoom_x, zoom_y) @ [[1, shear], [0, 1]]
    a00 = cos * zoom_x
    a01 = cos * zoom_x * shear - sin * zoom_y
    a10 = sin * zoom_x
    a11 = sin * zoom_x * shear + cos * zoom_y
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a02 = cx - a00 * cx - a01 * cy - shift_x
    a12 = cy - a10 * cx - a11 * cy - shift_y
    zeros = tf.zeros_like(a00)
    transforms = tf.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=jitter.fill.upper(),
    )
    if jitter.horizontal_flip:
        flip = tf.random.stateless_uniform((n, 1, 1, 1), seeds[6]) < 0.5
        warped = tf.where(flip, tf.reverse(warped, axis=[2]), warped)
    return warped
