"""Serving's preprocessing, value by value: every expected tensor here is worked out from the pixels the
test wrote (numpy arithmetic in float32, as the config states it), never from the code under test."""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cnnserve.protos import model_config_pb2 as pb
from cnnserve.serving.errors import ImageDecodeError, ImageTooLargeError, RepositoryError
from cnnserve.serving.model.decoding import Decoded, decode_bytes
from cnnserve.serving.model.preprocessing import (
    PreprocessSpec,
    preprocess_decoded,
    preprocess_encoded,
    preprocess_image,
)

SCALE = np.float32(pb.Preprocessing(scale=1 / 255).scale)  # 1/255 as a config stores it (float32)


def _spec(mode=pb.GRAYSCALE, size=(4, 6), scale=1 / 255, offset=0.0, resize=pb.BILINEAR, dims=None):
    height, width = size
    pre = pb.Preprocessing(
        color_mode=mode, height=height, width=width, resize_filter=resize, scale=scale, offset=offset
    )
    channels = 1 if mode == pb.GRAYSCALE else 3
    return PreprocessSpec.from_config(pre, dims or (height, width, channels))


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    (Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)).save(buffer, "PNG")
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size (8-bit greyscale) and holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


_NOISE_PNG = _png(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8))


def _gradient(height: int = 4, width: int = 6) -> np.ndarray:
    """Pixel values 0 .. 255 spread over the image, 255 included (where a scaling error is largest)."""
    return np.linspace(0, 255, height * width).round().astype(np.uint8).reshape(height, width)


def test_pixels_become_value_times_scale_plus_offset_in_float32() -> None:
    pixels = _gradient()
    tensor = preprocess_encoded(_png(pixels), _spec(offset=-0.5))
    expected = pixels.astype(np.float32) * SCALE + np.float32(-0.5)
    assert tensor.dtype == np.float32 and tensor.shape == (4, 6, 1)
    np.testing.assert_array_equal(tensor[..., 0], expected)
    assert tensor[..., 0].max() == np.float32(255) * SCALE - np.float32(0.5)


def test_scaling_by_1_over_255_is_exact_and_1_over_256_would_show() -> None:
    """The brightest pixel is 255 * float32(1/255), not 255/256: a one-step skew is visible in the tensor."""
    tensor = preprocess_encoded(_png(_gradient()), _spec())
    assert tensor.max() == np.float32(255) * SCALE
    assert tensor.max() - np.float32(255) * np.float32(1 / 256) > 0.003


def test_no_scale_in_the_config_means_raw_pixel_values() -> None:
    pixels = _gradient()
    spec = _spec(scale=0.0)
    assert spec.scale == 1.0
    raw = preprocess_encoded(_png(pixels), spec)
    assert raw.dtype == np.float32  # float32 even with nothing to scale or shift
    np.testing.assert_array_equal(raw[..., 0], pixels.astype(np.float32))
    shifted = preprocess_encoded(_png(pixels), _spec(scale=1.0, offset=2.0))
    np.testing.assert_array_equal(shifted[..., 0], pixels.astype(np.float32) + np.float32(2.0))


def test_colour_images_are_converted_to_the_models_mode(rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    grey = preprocess_encoded(_png(rgb), _spec())
    as_l = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)  # ITU-R 601-2 luma, Pillow's own
    np.testing.assert_array_equal(grey[..., 0], as_l * SCALE)
    grey_pixels = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    colour = preprocess_encoded(_png(grey_pixels), _spec(mode=pb.RGB))
    assert colour.shape == (4, 6, 3)
    for channel in range(3):
        np.testing.assert_array_equal(colour[..., channel], grey_pixels.astype(np.float32) * SCALE)
    rgba = np.dstack([rgb, np.full((4, 6), 7, np.uint8)])  # the alpha channel is dropped, not blended
    np.testing.assert_array_equal(
        preprocess_encoded(_png(rgba), _spec(mode=pb.RGB)), rgb.astype(np.float32) * SCALE
    )


@pytest.mark.parametrize(
    ("resize", "pillow"),
    [
        (pb.NEAREST, Image.Resampling.NEAREST),
        (pb.BILINEAR, Image.Resampling.BILINEAR),
        (pb.BICUBIC, Image.Resampling.BICUBIC),
        (pb.LANCZOS, Image.Resampling.LANCZOS),
        (pb.BOX, Image.Resampling.BOX),
        (pb.HAMMING, Image.Resampling.HAMMING),
    ],
)
def test_other_sizes_are_resized_with_the_configured_filter(rng: np.random.Generator, resize, pillow) -> None:
    pixels = rng.integers(0, 256, (13, 9), dtype=np.uint8)
    tensor = preprocess_encoded(_png(pixels), _spec(resize=resize))
    resized = np.asarray(Image.fromarray(pixels).resize((6, 4), pillow), dtype=np.float32)
    np.testing.assert_array_equal(tensor[..., 0], resized * SCALE)


def test_an_unset_filter_resizes_bilinear(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, (13, 9), dtype=np.uint8)
    spec = _spec(resize=pb.RESIZE_FILTER_UNSPECIFIED)
    resized = np.asarray(Image.fromarray(pixels).resize((6, 4), Image.Resampling.BILINEAR), dtype=np.float32)
    np.testing.assert_array_equal(preprocess_encoded(_png(pixels), spec)[..., 0], resized * SCALE)


def _wide_image(values: list[int], mode: str) -> Image.Image:
    """A 4x6 image of 16- or 32-bit greyscale in `mode`, each row holding `values`."""
    array = np.array([values] * 4, dtype=np.uint32)
    if mode == "I":
        return Image.fromarray(array.astype(np.int32))
    dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2"}[mode]
    return Image.frombytes(mode, (6, 4), array.astype(dtype).tobytes())


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I"])
def test_16_bit_greyscale_keeps_its_top_8_bits(mode: str) -> None:
    image = _wide_image([0, 255, 256, 65535, 4660, 40000], mode)
    assert image.mode == mode
    tensor = preprocess_image(image, _spec(scale=1.0))
    np.testing.assert_array_equal(tensor[0, :, 0], [0, 0, 1, 255, 18, 156])  # value >> 8
    narrow = _wide_image([0, 17, 255, 3, 4, 5], mode)  # 8-bit values in a wide image: kept as they are
    np.testing.assert_array_equal(preprocess_image(narrow, _spec(scale=1.0))[0, :, 0], [0, 17, 255, 3, 4, 5])
    just_over = _wide_image([0, 256, 512, 1, 2, 3], mode)  # one above 255: the whole image is shifted
    np.testing.assert_array_equal(preprocess_image(just_over, _spec(scale=1.0))[0, :, 0], [0, 1, 2, 0, 0, 0])
    at_256 = _wide_image([0, 256, 1, 2, 3, 255], mode)  # 256 alone is past 8 bits
    np.testing.assert_array_equal(preprocess_image(at_256, _spec(scale=1.0))[0, :, 0], [0, 1, 0, 0, 0, 0])


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_greyscale_is_resized_as_the_8_bit_image_it_becomes(mode: str) -> None:
    """The top 8 bits are taken before the resize, which then rounds as for any 8-bit image."""
    image = _wide_image([0, 4660, 40000, 65535, 1000, 30000], mode)
    top_bits = np.array([[0, 18, 156, 255, 3, 117]] * 4, dtype=np.uint8)
    expected = np.asarray(Image.fromarray(top_bits).resize((3, 2), Image.Resampling.BILINEAR), np.float32)
    tensor = preprocess_image(image, _spec(size=(2, 3), scale=1.0))
    np.testing.assert_array_equal(tensor[..., 0], expected)


def test_the_tensor_takes_the_models_input_dims() -> None:
    tensor = preprocess_encoded(_png(_gradient()), _spec(dims=(24,)))
    np.testing.assert_array_equal(tensor, _gradient().reshape(24).astype(np.float32) * SCALE)


@pytest.mark.parametrize(
    ("pre", "dims", "message"),
    [
        (pb.Preprocessing(height=4, width=6), (4, 6, 1), "no colour mode"),
        (pb.Preprocessing(color_mode=pb.GRAYSCALE, height=0, width=6), (4, 6, 1), "no size"),
        (pb.Preprocessing(color_mode=pb.GRAYSCALE, height=4, width=-1), (4, 6, 1), "no size"),
        (pb.Preprocessing(color_mode=pb.GRAYSCALE, height=4, width=0), (4, 6, 1), "no size"),
        (
            pb.Preprocessing(color_mode=pb.RGB, height=4, width=6),
            (4, 6, 1),
            r"\(4, 6, 1\) do not hold a 4x6x3",
        ),
    ],
)
def test_a_config_that_cannot_describe_an_image_is_refused(pre, dims, message: str) -> None:
    with pytest.raises(RepositoryError, match=message):
        PreprocessSpec.from_config(pre, dims)


def test_a_one_pixel_high_or_wide_image_is_a_valid_size() -> None:
    for height, width in ((1, 6), (6, 1)):
        pre = pb.Preprocessing(color_mode=pb.GRAYSCALE, height=height, width=width)
        assert (PreprocessSpec.from_config(pre, (height, width, 1)).height, width) == (height, width)


def test_the_spec_is_read_whole_from_the_config() -> None:
    config = pb.ModelConfig(
        input=pb.TensorSpec(dims=[4, 6, 3]),
        preprocessing=pb.Preprocessing(
            color_mode=pb.RGB, height=4, width=6, resize_filter=pb.LANCZOS, scale=0.5, offset=-1.0
        ),
    )
    spec = PreprocessSpec.from_model_config(config)
    assert spec == PreprocessSpec("RGB", 4, 6, Image.Resampling.LANCZOS, 0.5, -1.0, (4, 6, 3))
    config.preprocessing.scaled_decoding = True  # export proved scaled decoding keeps parity
    scaled = PreprocessSpec.from_model_config(config)
    assert scaled == PreprocessSpec("RGB", 4, 6, Image.Resampling.LANCZOS, 0.5, -1.0, (4, 6, 3), True)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", ImageDecodeError, r"^empty image \(0 bytes\)$"),
        (b"definitely not an image", ImageDecodeError, "^cannot decode image: "),
        (_NOISE_PNG[: len(_NOISE_PNG) // 2], ImageDecodeError, "^cannot decode image: "),
        (
            _png_header(100, 101),
            ImageTooLargeError,
            r"^image of 100x101 = 10,100 pixels exceeds the limit of 10,000 pixels per image "
            r"\(--max-pixels\)$",
        ),
    ],
)
def test_bad_images_are_named_as_such(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as caught:
        preprocess_encoded(data, _spec(), max_pixels=10_000)
    assert type(caught.value) is error


def test_an_image_at_the_pixel_limit_is_decoded() -> None:
    assert np.asarray(decode_bytes(_png(np.zeros((100, 100), np.uint8)), max_pixels=10_000).pixels).shape == (
        100,
        100,
    )


def test_an_oversize_image_is_refused_from_its_header() -> None:
    """Headers claiming 64 and 2,500 megapixels over no pixel data: both refused before any decoding
    (the second by Pillow's own decompression-bomb guard, still as ImageTooLargeError)."""
    with pytest.raises(
        ImageTooLargeError,
        match=r"^image of 8000x8000 = 64,000,000 pixels exceeds the limit of 50,000,000 pixels per image "
        r"\(--max-pixels\)$",
    ):
        decode_bytes(_png_header(8_000, 8_000))
    with pytest.raises(ImageTooLargeError, match="2,500,000,000 pixels"):
        decode_bytes(_png_header(50_000, 50_000))


@pytest.mark.parametrize("size", [(13, 9), (4, 6)], ids=["larger", "the model's size"])
@pytest.mark.parametrize("as_array", [True, False], ids=["array", "pillow image"])
def test_a_box_selects_the_region_that_is_resized(rng: np.random.Generator, size, as_array: bool) -> None:
    """A DCT-scaled decode names the region of its pixels that holds the picture: that region, and only
    it, is resized to the input, whatever size the pixels have and whoever decoded them."""
    pixels = rng.integers(0, 256, size, dtype=np.uint8)
    box = (0.0, 0.0, size[1] - 1.5, size[0] - 0.75)
    expected = np.asarray(
        Image.fromarray(pixels).resize((6, 4), Image.Resampling.BILINEAR, box=box), dtype=np.float32
    )
    decoded = Decoded(pixels if as_array else Image.fromarray(pixels), box)
    np.testing.assert_array_equal(preprocess_decoded(decoded, _spec())[..., 0], expected * SCALE)
    image = Image.fromarray(pixels)
    np.testing.assert_array_equal(preprocess_image(image, _spec(), box)[..., 0], expected * SCALE)


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_scaled_decoding_is_used_when_the_config_says_so_and_only_then(rng: np.random.Generator) -> None:
    """A 240x240 JPEG for a 4x6 input may decode at 1/8 (30x30, still at least twice the input): with
    `scaled_decoding` the tensor is the scaled pixels' (from their box), without it the full ones'."""
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).resize((240, 240)))
    data = _jpeg(smooth)
    spec = _spec()
    scaled = dataclasses.replace(spec, scaled_decoding=True)
    assert scaled.min_decoded_size == (12, 8) and spec.min_decoded_size is None
    full = Image.open(io.BytesIO(data))
    full_tensor = np.asarray(full.convert("L").resize((6, 4), Image.Resampling.BILINEAR), np.float32) * SCALE
    np.testing.assert_array_equal(preprocess_encoded(data, spec)[..., 0], full_tensor)
    drafted = Image.open(io.BytesIO(data))
    _, box = drafted.draft("L", (12, 8))
    assert drafted.size == (30, 30)
    scaled_tensor = (
        np.asarray(drafted.convert("L").resize((6, 4), Image.Resampling.BILINEAR, box=box), np.float32)
        * SCALE
    )
    np.testing.assert_array_equal(preprocess_encoded(data, scaled)[..., 0], scaled_tensor)
    assert not np.array_equal(scaled_tensor, full_tensor)
