"""Occlusion explanations: the image's copies with one patch covered, and the score drops turned into heat.

Pure numpy. A plan lays out the patch positions and makes the copies chunk by chunk (so the caller can send
each chunk through the dynamic batcher); `heatmap` reduces their scores back into a per-pixel map. The
chunk sizing keeps each chunk to about a fixed time, whatever the model, so a Classify call never waits
behind much more than that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cnnserve.serving.errors import InvalidRequestError


def default_occlusion(height: int, width: int) -> tuple[int, int]:
    """(patch, stride) for an input size: a patch about 1/7 of the shorter side, moved by half a patch.

    28×28 → 4 px patches every 2 px (169 copies); 150×150 → 21 px every 10 px (196 copies).
    """
    patch = max(2, round(min(height, width) / 7))
    return patch, max(1, patch // 2)


def _starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch positions along one axis; the last one is pushed to the edge so every pixel is covered."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def _coverage(length: int, starts: Sequence[int], patch: int) -> np.ndarray:
    """(length, len(starts)) float64: 1 where the patch starting at starts[j] covers position i."""
    positions = np.arange(length)[:, None]
    begins = np.asarray(starts)[None, :]
    return ((positions >= begins) & (positions < begins + patch)).astype(np.float64)


@dataclass(frozen=True)
class OcclusionPlan:
    """The occluded copies of one image: each covers a `patch`×`patch` square with `fill_value`."""

    image: np.ndarray  # (h, w, c) float32, in the model's input scale
    input_dims: tuple[int, ...]
    patch: int
    stride: int
    fill_value: float
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @classmethod
    def create(
        cls,
        image: np.ndarray,
        input_dims: Sequence[int],
        height: int,
        width: int,
        patch: int = 0,
        stride: int = 0,
        fill_value: float = 0.0,
    ) -> OcclusionPlan:
        """Validate the options (0 = the default for this input size) and lay out the patch positions."""
        default_patch, default_stride = default_occlusion(height, width)
        patch = default_patch if patch == 0 else patch
        stride = default_stride if stride == 0 else stride
        if patch < 1:
            raise InvalidRequestError(f"occlusion patch size must be positive, got {patch}")
        if patch > min(height, width):
            raise InvalidRequestError(
                f"occlusion patch size {patch} is larger than the {height}x{width} input image"
            )
        if stride < 1:
            raise InvalidRequestError(f"occlusion stride must be positive, got {stride}")
        if not math.isfinite(fill_value):
            raise InvalidRequestError(f"occlusion fill value must be finite, got {fill_value}")
        hwc = np.asarray(image, dtype=np.float32).reshape(height, width, -1)
        return cls(
            image=hwc,
            input_dims=tuple(int(d) for d in input_dims),
            patch=patch,
            stride=stride,
            fill_value=float(fill_value),
            rows=tuple(_starts(height, patch, stride)),
            cols=tuple(_starts(width, patch, stride)),
        )

    @property
    def size(self) -> int:
        return len(self.rows) * len(self.cols)

    def position(self, index: int) -> tuple[int, int]:
        row, col = divmod(index, len(self.cols))
        return self.rows[row], self.cols[col]

    def copies(self, start: int, stop: int) -> np.ndarray:
        """Occluded copies `start`..`stop` as one (n, *input_dims) float32 batch."""
        stop = min(stop, self.size)
        batch = np.repeat(self.image[None], stop - start, axis=0)
        for offset, index in enumerate(range(start, stop)):
            top, left = self.position(index)
            batch[offset, top : top + self.patch, left : left + self.patch, :] = self.fill_value
        return batch.reshape(stop - start, *self.input_dims)

    def chunks(self, chunk_size: int) -> list[tuple[int, int]]:
        chunk_size = max(1, chunk_size)
        return [(start, min(start + chunk_size, self.size)) for start in range(0, self.size, chunk_size)]

    def heatmap(self, base_score: float, scores: np.ndarray) -> np.ndarray:
        """Per pixel, the mean drop of the target score over the copies that cover it: (h, w) float32."""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != self.size:
            raise ValueError(f"expected {self.size} occlusion scores, got {scores.shape[0]}")
        height, width = self.image.shape[:2]
        drops = (base_score - scores).reshape(len(self.rows), len(self.cols))
        # The copies lie on a grid, so the sum over the patches covering each pixel factorises:
        # total = rows_cover @ drops @ cols_cover.T, with cover[y, r] = 1 when patch row r covers pixel row y.
        rows_cover = _coverage(height, self.rows, self.patch)
        cols_cover = _coverage(width, self.cols, self.patch)
        total = rows_cover @ drops @ cols_cover.T
        count = np.outer(rows_cover.sum(axis=1), cols_cover.sum(axis=1))
        return (total / np.maximum(count, 1.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------


class ChunkSizer:
    """How many occluded copies to send next, so one chunk keeps the model busy about `seconds`.

    A chunk of a small model is a full batch (`max_batch_size`); a big model's chunks shrink until one
    takes about `seconds` from being sent to its answer (queueing included), so a Classify request never
    waits behind much more than that, whatever the model. The version's first explanation starts small,
    to measure; later ones start from the rate the previous one measured.
    """

    FIRST = 8

    def __init__(self, max_size: int, seconds: float, seconds_per_image: float | None = None) -> None:
        self.max_size = max(1, max_size)
        self.seconds = seconds
        self.seconds_per_image = seconds_per_image
        self._images = 0
        self._elapsed = 0.0
        if seconds <= 0:
            self.next_size = self.max_size
        elif seconds_per_image is None:
            self.next_size = min(self.max_size, self.FIRST)
        else:
            self._size_from_rate()

    def _size_from_rate(self) -> None:
        assert self.seconds_per_image is not None
        self.next_size = max(1, min(self.max_size, int(self.seconds / self.seconds_per_image)))

    def observe(self, images: int, elapsed: float) -> None:
        """A chunk of `images` took `elapsed` seconds from being sent to its answer."""
        if self.seconds <= 0 or images <= 0:
            return
        self._images += images
        self._elapsed += max(elapsed, 1e-6)
        self.seconds_per_image = self._elapsed / self._images
        self._size_from_rate()


def even_chunk(items: int, most: int, window: int) -> int:
    """A chunk size of at most `most` that cuts `items` into a multiple of `window` nearly equal chunks,
    so the chunks computing side by side finish together (170 copies, 64 at most, 2 at a time: 4 × 43
    rather than 64 + 64 and then 42 alone; the last one may be smaller)."""
    chunks = -(-items // max(1, most))
    chunks = -(-chunks // window) * window
    return max(1, -(-items // chunks))


def occluded_chunk(plan: OcclusionPlan, start: int, stop: int) -> np.ndarray:
    """Items `start`..`stop` of an explanation's batch: item 0 is the unaltered image, item i is copy i-1."""
    batch = plan.copies(max(0, start - 1), stop - 1)
    if start == 0:
        batch = np.concatenate([plan.image.reshape(1, *plan.input_dims), batch])
    return batch
