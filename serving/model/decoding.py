"""Encoded image bytes → pixels: the fastest decoder that gives Pillow's pixels exactly, and DCT scaling.

Pillow is the reference, because training reads image files with Keras' `load_img`, which is Pillow. For
the two formats image folders are mostly made of, libraries without Pillow's per-image Python work return
the very same pixels: libjpeg-turbo through simplejpeg for JPEG (greyscale or YCbCr/RGB, baseline or
progressive: the same library and settings Pillow's wheels use), libspng through pyspng for 8-bit
greyscale and RGB PNG. Measured per image on one core: a 28×28 PNG digit 9 µs instead of 67 µs, a 150×150
JPEG 170 µs instead of 370 µs (`bench/bench_decode.py`). Every other file — CMYK JPEG, palette, 16-bit or
alpha PNG, other formats — and any file a fast decoder declines or fails on goes through Pillow, so a fast
decoder never changes an outcome, only its speed. Without simplejpeg or pyspng installed, Pillow decodes
everything.

A JPEG can also be decoded straight at 1/2, 1/4 or 1/8 of its size: libjpeg then computes each block's
pixels from its low DCT coefficients instead of all 64, which for a 12 MP photo cut to a 150×150 model
input is ~8× less work. The scale is the one Pillow's `Image.draft` picks for the size asked for.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass
from struct import error as struct_error

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnserve.serving.errors import ImageDecodeError, ImageTooLargeError
from cnnserve.serving.settings import DEFAULT_MAX_PIXELS

try:
    import simplejpeg
except ImportError:  # a speed-up only: Pillow decodes JPEG without it
    simplejpeg = None
try:
    import pyspng
except ImportError:  # a speed-up only: Pillow decodes PNG without it
    pyspng = None

# The pixel limit is ours (`--max-pixels`, checked from the header before decoding), in both directions:
# Pillow's own limit (refusing above 178,956,970 pixels, warning above half that) would otherwise cap ours
# and speak of its number instead. Both are process settings of Pillow, set once here rather than per
# image (`warnings.catch_warnings()` is not thread-safe and costs on every request).
Image.MAX_IMAGE_PIXELS = None
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# What Pillow's messages may hold that a client must not see: the repr of the in-memory file it read.
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")

_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG colour spaces libjpeg-turbo converts exactly as Pillow's JPEG plugin does, and the mode they give.
_JPEG_MODES = {"Gray": ("GRAY", "L"), "YCbCr": ("RGB", "RGB"), "RGB": ("RGB", "RGB")}
# PNG colour types (with bit depth 8) whose samples pyspng returns as they are, as Pillow does.
_PNG_MODES = {0: "L", 2: "RGB"}


@dataclass(frozen=True)
class Decoded:
    """Decoded pixels: a uint8 array (H, W) in mode L or (H, W, 3) in RGB, or a Pillow image otherwise.

    `box` is set when the image was decoded at a DCT scale: the region of `pixels` that covers the whole
    picture (the last row and column stand for a partial block), as Pillow's `draft` reports it; resizing
    from that box maps the scaled pixels onto the same geometry as the full-size ones.
    """

    pixels: np.ndarray | Image.Image
    box: tuple[float, float, float, float] | None = None


def dct_scale(width: int, height: int, min_size: tuple[int, int] | None) -> int:
    """The DCT scale (1, 2, 4 or 8) Pillow's `draft` picks: the largest that keeps both sides ≥ min_size."""
    if min_size is None or min_size[0] <= 0 or min_size[1] <= 0:
        return 1
    ratio = min(width // min_size[0], height // min_size[1])
    return next((scale for scale in (8, 4, 2) if ratio >= scale), 1)


@dataclass(frozen=True)
class Header:
    """An encoded image whose header has been read: its size is known, its pixels not decoded yet.

    `fast` names the fast decoder that will decode it ("jpeg", "png"), empty when Pillow will; `image` is
    then Pillow's image, opened (header read) but not loaded.
    """

    data: bytes
    width: int
    height: int
    fast: str = ""
    image: Image.Image | None = None
    colorspace: str = ""  # a JPEG's, as libjpeg-turbo reads it

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _decode_error(error: Exception) -> ImageDecodeError:
    """Our error for Pillow's: what went wrong, without object reprs (heap addresses) or class names."""
    if isinstance(error, UnidentifiedImageError):
        return ImageDecodeError("cannot decode image: not an image in a format this server reads")
    reason = _OBJECT_REPR.sub("the image", str(error)) or "corrupt image data"
    return ImageDecodeError(f"cannot decode image: {reason}")


def _fast_header(data: bytes) -> Header | None:
    """The header of a file a fast decoder takes; None for what Pillow must open."""
    if simplejpeg is not None and data[:3] == _JPEG_SIGNATURE:
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            return None
        return (
            Header(data, width, height, "jpeg", colorspace=colorspace) if colorspace in _JPEG_MODES else None
        )
    if pyspng is not None and data[:8] == _PNG_SIGNATURE and len(data) >= 33 and data[12:16] == b"IHDR":
        width, height, depth, colour_type = struct.unpack(">IIBB", data[16:26])
        return Header(data, width, height, "png") if depth == 8 and colour_type in _PNG_MODES else None
    return None


def _pillow_header(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        # Pillow's own message names its in-memory file object by heap address: never sent to a client.
        raise ImageDecodeError(
            f"cannot decode image: not a format Pillow recognises ({len(data)} bytes starting {data[:8]!r})"
        ) from error
    except (OSError, SyntaxError, ValueError, struct_error) as error:
        raise _decode_error(error) from error


def open_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """Read an encoded image's header (no pixel is decoded yet), refusing one that declares more than
    `max_pixels`; `decode` then decodes the pixels."""
    if not data:
        raise ImageDecodeError("empty image (0 bytes)")
    data = bytes(data)
    header = _fast_header(data)
    if header is None:
        image = _pillow_header(data)
        header = Header(data, image.size[0], image.size[1], "", image)
    if header.pixels > max_pixels:
        raise ImageTooLargeError(
            f"image of {header.width}x{header.height} = {header.pixels:,} pixels exceeds the limit of "
            f"{max_pixels:,} pixels per image (--max-pixels)"
        )
    return header


def _scaled_box(width: int, height: int, scale: int) -> tuple[float, float, float, float] | None:
    return None if scale == 1 else (0.0, 0.0, width / scale, height / scale)


def _decode_jpeg(header: Header, min_size: tuple[int, int] | None) -> Decoded | None:
    """libjpeg-turbo straight into a numpy array, at the DCT scale asked; None to let Pillow decide."""
    assert simplejpeg is not None
    scale = dct_scale(header.width, header.height, min_size)
    expected = (-(-header.height // scale), -(-header.width // scale))
    colorspace, mode = _JPEG_MODES[header.colorspace]
    try:
        # min_* equal to the scaled size make libjpeg pick exactly 1/scale (the smaller factors fall below).
        array = simplejpeg.decode_jpeg(
            header.data, colorspace=colorspace, min_height=expected[0], min_width=expected[1]
        )
    except ValueError:
        return None
    if array.shape[:2] != expected:
        return None
    if mode == "L":
        array = array.reshape(expected)
    return Decoded(array, _scaled_box(header.width, header.height, scale))


def _decode_png(header: Header) -> Decoded | None:
    """libspng for 8-bit greyscale/RGB PNG; None to let Pillow decide (and explain a failure)."""
    assert pyspng is not None
    colour_type = header.data[25]
    try:
        array = pyspng.load(header.data, _PNG_MODES[colour_type])
    except Exception:  # libspng's errors (RuntimeError, ValueError, ...): Pillow decides and explains
        return None
    if array.dtype != np.uint8 or array.shape[:2] != (header.height, header.width):
        return None
    return Decoded(array)


def _decode_pillow(header: Header, min_size: tuple[int, int] | None) -> Decoded:
    image = header.image if header.image is not None else _pillow_header(header.data)
    box = None
    try:
        if min_size is not None and image.format == "JPEG" and dct_scale(*image.size, min_size) > 1:
            drafted = image.draft(None, min_size)
            box = drafted[1] if drafted is not None else None
        image.load()
    except (OSError, SyntaxError, ValueError, struct_error, EOFError) as error:
        raise _decode_error(error) from error
    return Decoded(image, box)


def decode(header: Header, min_size: tuple[int, int] | None = None) -> Decoded:
    """The pixels of an image opened by `open_header`, by the fastest exact decoder; a JPEG at the DCT
    scale `dct_scale` picks when `min_size` (the smallest (width, height) the pixels may have) is given.
    A file a fast decoder fails on goes to Pillow, which decodes it or explains why not."""
    decoded = None
    if header.fast == "jpeg":
        decoded = _decode_jpeg(header, min_size)
    elif header.fast == "png":
        decoded = _decode_png(header)
    return decoded if decoded is not None else _decode_pillow(header, min_size)


def open_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: tuple[int, int] | None = None
) -> Decoded:
    """Decode with Pillow alone (the reference every fast path must match), refusing oversize images
    from their header; with `min_size`, a JPEG is decoded at a DCT scale through Pillow's `draft`."""
    if not data:
        raise ImageDecodeError("empty image (0 bytes)")
    image = _pillow_header(bytes(data))
    header = Header(bytes(data), image.size[0], image.size[1], "", image)
    if header.pixels > max_pixels:
        raise ImageTooLargeError(
            f"image of {header.width}x{header.height} = {header.pixels:,} pixels exceeds the limit of "
            f"{max_pixels:,} pixels per image (--max-pixels)"
        )
    return _decode_pillow(header, min_size)


def decode_bytes(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: tuple[int, int] | None = None
) -> Decoded:
    """Encoded bytes → pixels: `open_header` then `decode`."""
    return decode(open_header(data, max_pixels), min_size)
