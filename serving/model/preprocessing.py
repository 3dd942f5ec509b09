"""The serving stage's image preprocessing: encoded bytes → the model's float32 input tensor.

One function per model config, shared by the server, the batch job and export's parity check, so any
training–serving skew shows up in export's end-to-end parity test instead of in production. Pillow and
numpy only: no TensorFlow here.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnserve.protos import model_config_pb2
from cnnserve.serving.errors import ImageDecodeError, ImageTooLargeError, RepositoryError
from cnnserve.serving.settings import DEFAULT_MAX_PIXELS

_RESAMPLE: dict[int, Image.Resampling] = {
    model_config_pb2.NEAREST: Image.Resampling.NEAREST,
    model_config_pb2.BILINEAR: Image.Resampling.BILINEAR,
    model_config_pb2.BICUBIC: Image.Resampling.BICUBIC,
    model_config_pb2.LANCZOS: Image.Resampling.LANCZOS,
    model_config_pb2.BOX: Image.Resampling.BOX,
    model_config_pb2.HAMMING: Image.Resampling.HAMMING,
}
_PIL_MODE = {model_config_pb2.GRAYSCALE: "L", model_config_pb2.RGB: "RGB"}

# Pillow warns about images above its own pixel limit while opening them; `open_image` refuses those
# itself (from the header, before decoding), so the warning is noise. A filter set once here, rather than
# `warnings.catch_warnings()` per image, which is not thread-safe and costs on every request.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input: colour mode, size, resize filter, value * scale + offset."""

    mode: str  # Pillow mode: "L" or "RGB"
    height: int
    width: int
    resample: Image.Resampling
    scale: float
    offset: float
    input_dims: tuple[int, ...]  # the model's input shape without the batch dimension

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
        )

    @classmethod
    def from_model_config(cls, config: model_config_pb2.ModelConfig) -> PreprocessSpec:
        return cls.from_config(config.preprocessing, config.input.dims)


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode encoded image bytes, refusing oversize images from their header before decoding pixels."""
    if not data:
        raise ImageDecodeError("empty image (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"image of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
            )
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(str(error)) from error
    except UnidentifiedImageError as error:
        # Pillow's own message names its in-memory file object by heap address: never sent to a client.
        raise ImageDecodeError(
            f"cannot decode image: not a format Pillow recognises ({len(data)} bytes starting {data[:8]!r})"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageDecodeError):
            raise
        raise ImageDecodeError(f"cannot decode image: {error}") from error
    return image


def preprocess_image(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Convert colour, resize and scale one decoded image to the model's input shape (float32)."""
    if image.mode != spec.mode:
        if image.mode in ("I;16", "I;16B", "I;16L", "I") and spec.mode == "L":
            # 16-bit greyscale: keep the top 8 bits rather than clipping at 255.
            wide = np.asarray(image, dtype=np.uint32)
            image = Image.fromarray((wide >> 8 if wide.max() > 255 else wide).astype(np.uint8), "L")
        else:
            image = image.convert(spec.mode)
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), resample=spec.resample)
    array = np.asarray(image, dtype=np.float32)
    if spec.scale != 1.0:
        array = array * np.float32(spec.scale)
    if spec.offset != 0.0:
        array = array + np.float32(spec.offset)
    return array.reshape(spec.input_dims)


def preprocess_encoded(data: bytes, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes (PNG, JPEG, BMP, GIF, WebP, ...) → float32 input tensor without the batch dimension."""
    return preprocess_image(open_image(data, max_pixels), spec)
