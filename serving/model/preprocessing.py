"""The serving stage's image preprocessing: encoded bytes → the model's float32 input tensor.

One function per model config, shared by the server, the batch job and export's parity check, so any
training–serving skew shows up in export's end-to-end parity test instead of in production. Decoding
(which decoder, DCT scaling, the decompression-bomb guard) is `decoding`'s; colour conversion and the
resize are Pillow's, as in training. No TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cnnserve.protos import model_config_pb2
from cnnserve.serving.errors import RepositoryError
from cnnserve.serving.model.decoding import Decoded, decode_bytes
from cnnserve.serving.settings import DEFAULT_MAX_PIXELS

# How much larger than the model's input a DCT-scaled JPEG must stay, so the final resize still filters.
SCALED_DECODING_MARGIN = 2

_RESAMPLE: dict[int, Image.Resampling] = {
    model_config_pb2.NEAREST: Image.Resampling.NEAREST,
    model_config_pb2.BILINEAR: Image.Resampling.BILINEAR,
    model_config_pb2.BICUBIC: Image.Resampling.BICUBIC,
    model_config_pb2.LANCZOS: Image.Resampling.LANCZOS,
    model_config_pb2.BOX: Image.Resampling.BOX,
    model_config_pb2.HAMMING: Image.Resampling.HAMMING,
}
_PIL_MODE = {model_config_pb2.GRAYSCALE: "L", model_config_pb2.RGB: "RGB"}


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input: colour mode, size, resize filter, value * scale + offset.

    `scaled_decoding` lets a JPEG be decoded at the smallest DCT scale that keeps it at least
    SCALED_DECODING_MARGIN times the input size (the model config says whether export proved it keeps
    parity); off, every image is decoded in full.
    """

    mode: str  # Pillow mode: "L" or "RGB"
    height: int
    width: int
    resample: Image.Resampling
    scale: float
    offset: float
    input_dims: tuple[int, ...]  # the model's input shape without the batch dimension
    scaled_decoding: bool = False

    @classmethod
    def from_config(
        cls, preprocessing: model_config_pb2.Preprocessing, input_dims: Sequence[int]
    ) -> PreprocessSpec:
        if preprocessing.color_mode not in _PIL_MODE:
            raise RepositoryError(f"config preprocessing has no colour mode: {preprocessing}")
        if preprocessing.height <= 0 or preprocessing.width <= 0:
            raise RepositoryError(f"config preprocessing has no size: {preprocessing}")
        dims = tuple(int(d) for d in input_dims)
        channels = 1 if preprocessing.color_mode == model_config_pb2.GRAYSCALE else 3
        if int(np.prod(dims)) != preprocessing.height * preprocessing.width * channels:
            raise RepositoryError(
                f"input dims {dims} do not hold a {preprocessing.height}x{preprocessing.width}"
                f"x{channels} image"
            )
        return cls(
            mode=_PIL_MODE[preprocessing.color_mode],
            height=preprocessing.height,
            width=preprocessing.width,
            resample=_RESAMPLE.get(preprocessing.resize_filter, Image.Resampling.BILINEAR),
            scale=preprocessing.scale if preprocessing.scale != 0 else 1.0,
            offset=preprocessing.offset,
            input_dims=dims,
            scaled_decoding=preprocessing.scaled_decoding,
        )

    @classmethod
    def from_model_config(cls, config: model_config_pb2.ModelConfig) -> PreprocessSpec:
        return cls.from_config(config.preprocessing, config.input.dims)

    @property
    def array_shape(self) -> tuple[int, ...]:
        """The shape of a decoded uint8 image already in the model's mode and size."""
        return (self.height, self.width) if self.mode == "L" else (self.height, self.width, 3)

    @property
    def min_decoded_size(self) -> tuple[int, int] | None:
        """The smallest (width, height) a DCT-scaled decode may give; None when images decode in full."""
        if not self.scaled_decoding:
            return None
        return (SCALED_DECODING_MARGIN * self.width, SCALED_DECODING_MARGIN * self.height)


def _tensor(array: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    tensor = np.asarray(array, dtype=np.float32)
    if spec.scale != 1.0:
        tensor = tensor * np.float32(spec.scale)
    if spec.offset != 0.0:
        tensor = tensor + np.float32(spec.offset)
    return tensor.reshape(spec.input_dims)


def preprocess_image(
    image: Image.Image, spec: PreprocessSpec, box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """Convert colour, resize and scale one decoded image to the model's input shape (float32).

    `box` is the region of a DCT-scaled image that holds the picture (see `decoding.Decoded`).
    """
    if image.mode != spec.mode:
        if image.mode in ("I;16", "I;16B", "I;16L", "I") and spec.mode == "L":
            # 16-bit greyscale: keep the top 8 bits rather than clipping at 255 (16-bit arithmetic for
            # 16-bit images: a 7000x7000 one costs 98 MB here, not 196).
            wide: np.ndarray = np.asarray(image, dtype=np.uint32 if image.mode == "I" else np.uint16)
            image = Image.fromarray((wide >> 8 if wide.max() > 255 else wide).astype(np.uint8))  # (H, W): L
        else:
            image = image.convert(spec.mode)
    if image.size != (spec.width, spec.height) or box is not None:
        image = image.resize((spec.width, spec.height), resample=spec.resample, box=box)
    return _tensor(np.asarray(image), spec)


def preprocess_decoded(decoded: Decoded, spec: PreprocessSpec) -> np.ndarray:
    """Decoded pixels → float32 input tensor; an array already in the model's mode and size skips Pillow."""
    pixels = decoded.pixels
    if isinstance(pixels, np.ndarray):
        if decoded.box is None and pixels.shape == spec.array_shape:
            return _tensor(pixels, spec)
        pixels = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    return preprocess_image(pixels, spec, decoded.box)


def preprocess_encoded(data: bytes, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes (PNG, JPEG, BMP, GIF, WebP, ...) → float32 input tensor without the batch dimension.

    With `spec.scaled_decoding`, a JPEG is decoded at the smallest DCT scale that leaves it at least
    SCALED_DECODING_MARGIN times the input size (one smaller than that decodes in full); every other image
    decodes in full, to exactly the pixels training reads.
    """
    return preprocess_decoded(decode_bytes(data, max_pixels, spec.min_decoded_size), spec)
