"""The serving stage's image preprocessing: encoded bytes → the model's float32 input tensor.

One function per model config, shared by the server, the batch job and export's parity check, so any
training–serving skew shows up in export's end-to-end parity test instead of in production. Pillow and
numpy only: no TensorFlow here.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from struct import error as struct_error

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

# The pixel limit is ours (`--max-pixels`, checked from the header before decoding), in both directions:
# Pillow's own limit (refusing above 178,956,970 pixels, warning above half that) would otherwise cap ours
# and speak of its number instead. Both are process settings of Pillow, set once here rather than per
# image (`warnings.catch_warnings()` is not thread-safe and costs on every request).
Image.MAX_IMAGE_PIXELS = None
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# What Pillow's messages may hold that a client must not see: the repr of the in-memory file it read.
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


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


def _decode_error(error: Exception) -> ImageDecodeError:
    """Our error for Pillow's: what went wrong, without object reprs (heap addresses) or class names."""
    if isinstance(error, UnidentifiedImageError):
        return ImageDecodeError("cannot decode image: not an image in a format this server reads")
    reason = _OBJECT_REPR.sub("the image", str(error)) or "corrupt image data"
    return ImageDecodeError(f"cannot decode image: {reason}")


def open_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an encoded image's header (no pixel is decoded yet), refusing one that declares more than
    `max_pixels`; `image.size` is then known and `decode` loads the pixels."""
    if not data:
        raise ImageDecodeError("empty image (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
    except UnidentifiedImageError as error:
        # Pillow's own message names its in-memory file object by heap address: never sent to a client.
        raise ImageDecodeError(
            f"cannot decode image: not a format Pillow recognises ({len(data)} bytes starting {data[:8]!r})"
        ) from error
    except (OSError, SyntaxError, ValueError, struct_error) as error:
        raise _decode_error(error) from error
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image of {width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "pixels per image (--max-pixels)"
        )
    return image


def decode(image: Image.Image) -> Image.Image:
    """Decode the pixels of an image opened by `open_header`."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, struct_error, EOFError) as error:
        raise _decode_error(error) from error
    return image


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode encoded image bytes, refusing oversize images from their header before decoding pixels."""
    return decode(open_header(data, max_pixels))


def preprocess_image(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Convert colour, resize and scale one decoded image to the model's input shape (float32)."""
    if image.mode != spec.mode:
        if image.mode in ("I;16", "I;16B", "I;16L", "I") and spec.mode == "L":
            # 16-bit greyscale: keep the top 8 bits rather than clipping at 255 (16-bit arithmetic for
            # 16-bit images: a 7000x7000 one costs 98 MB here, not 196).
            wide: np.ndarray = np.asarray(image, dtype=np.uint32 if image.mode == "I" else np.uint16)
            image = Image.fromarray((wide >> 8 if wide.max() > 255 else wide).astype(np.uint8))  # (H, W): L
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
