"""Decoding: the fast decoders give Pillow's exact pixels, everything else goes through Pillow, and JPEGs of
every kind (baseline, progressive, greyscale, CMYK) decode correctly in full and at a DCT scale."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cnnserve.protos import model_config_pb2
from cnnserve.serving.errors import ImageDecodeError, ImageTooLargeError
from cnnserve.serving.model import decoding
from cnnserve.serving.model.preprocessing import PreprocessSpec, preprocess_encoded


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photograph (scikit-image's coffee), 600×400 RGB."""
    from cnnserve.export.photos import PHOTOS, source_path

    coffee = next(p for p in PHOTOS if p.source.endswith("coffee.png"))
    with Image.open(source_path(coffee)) as image:
        return image.convert("RGB")


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return np.asarray(image)


def _spec(mode: int, size: int, scaled: bool) -> PreprocessSpec:
    channels = 3 if mode == model_config_pb2.RGB else 1
    pre = model_config_pb2.Preprocessing(
        color_mode=mode,
        height=size,
        width=size,
        resize_filter=model_config_pb2.BILINEAR,
        scale=1 / 255,
        scaled_decoding=scaled,
    )
    return PreprocessSpec.from_config(pre, (size, size, channels))


def _variants(photo: Image.Image) -> dict[str, bytes]:
    grey = photo.convert("L")
    return {
        "jpeg": _encode(photo, "JPEG", quality=90),
        "jpeg-444": _encode(photo, "JPEG", quality=95, subsampling=0),
        "jpeg-progressive": _encode(photo, "JPEG", quality=85, progressive=True),
        "jpeg-greyscale": _encode(grey, "JPEG"),
        "png-rgb": _encode(photo, "PNG"),
        "png-greyscale": _encode(grey, "PNG"),
        "png-interlaced": _encode(photo, "PNG", interlace=1),
        "png-rgb-transparent-colour": _encode(photo, "PNG", transparency=(0, 0, 0)),
    }


def test_fast_decoders_give_pillows_exact_pixels(photo: Image.Image) -> None:
    assert decoding.simplejpeg is not None and decoding.pyspng is not None, "fast decoders not installed"
    for name, data in _variants(photo).items():
        decoded = decoding.decode_bytes(data)
        assert isinstance(decoded.pixels, np.ndarray), f"{name} did not take the fast path"
        assert decoded.box is None
        np.testing.assert_array_equal(decoded.pixels, _pillow(data), err_msg=name)


def test_what_the_fast_decoders_decline_goes_through_pillow(photo: Image.Image) -> None:
    small = photo.resize((120, 80))
    wide = np.asarray(small.convert("L"), dtype=np.uint16) * 257
    declined = {
        "png-palette": _encode(small.convert("P"), "PNG"),
        "png-rgba": _encode(small.convert("RGBA"), "PNG"),
        "png-16-bit": _encode(Image.fromarray(wide), "PNG"),
        "jpeg-cmyk": _encode(small.convert("CMYK"), "JPEG"),
        "webp": _encode(small, "WEBP", lossless=True),
        "bmp": _encode(small, "BMP"),
    }
    for name, data in declined.items():
        decoded = decoding.decode_bytes(data)
        assert isinstance(decoded.pixels, Image.Image), f"{name} should be Pillow's"
        np.testing.assert_array_equal(np.asarray(decoded.pixels), _pillow(data), err_msg=name)


@pytest.fixture(scope="module")
def jpeg_kinds(photo: Image.Image) -> dict[str, bytes]:
    """Baseline, 4:4:4, progressive, greyscale and CMYK JPEGs of the photograph at 2400×1600."""
    big = photo.resize((2400, 1600), Image.Resampling.BICUBIC)
    return {
        "baseline": _encode(big, "JPEG", quality=90),
        "444": _encode(big, "JPEG", quality=95, subsampling=0),
        "progressive": _encode(big, "JPEG", quality=85, progressive=True),
        "greyscale": _encode(big.convert("L"), "JPEG", quality=90),
        "cmyk": _encode(big.convert("CMYK"), "JPEG", quality=90),
    }


@pytest.mark.parametrize("size", [150, 64, 28])
def test_every_jpeg_kind_decodes_in_full_as_pillow_and_scaled_close_to_it(
    jpeg_kinds: dict[str, bytes], size: int
) -> None:
    """Into an RGB and a greyscale model: full decoding gives exactly the tensor Pillow's decode + resize
    gives, and decoding at a DCT scale stays within a fraction of a grey level of it on average."""
    files = jpeg_kinds
    for mode, pil_mode in ((model_config_pb2.RGB, "RGB"), (model_config_pb2.GRAYSCALE, "L")):
        full_spec, scaled_spec = _spec(mode, size, False), _spec(mode, size, True)
        for name, data in files.items():
            with Image.open(io.BytesIO(data)) as image:
                reference = image.convert(pil_mode).resize((size, size), Image.Resampling.BILINEAR)
            expected = np.asarray(reference, dtype=np.float32).reshape(full_spec.input_dims) / np.float32(255)
            full = preprocess_encoded(data, full_spec)
            np.testing.assert_allclose(full, expected, rtol=0, atol=1e-7, err_msg=name)
            scaled = preprocess_encoded(data, scaled_spec)
            difference = np.abs(scaled - full) * 255
            assert difference.mean() < 0.5 and difference.max() <= 12, (name, size, pil_mode)


def test_dct_scale_keeps_at_least_the_asked_size() -> None:
    assert decoding.dct_scale(4000, 3000, (300, 300)) == 8  # 500×375
    assert decoding.dct_scale(4000, 3000, (600, 600)) == 4  # 1000×750
    assert decoding.dct_scale(500, 375, (300, 300)) == 1
    assert decoding.dct_scale(500, 375, (128, 128)) == 2
    assert decoding.dct_scale(599, 599, (300, 300)) == 1  # just under 2×: full
    assert decoding.dct_scale(600, 600, (300, 300)) == 2
    assert decoding.dct_scale(4000, 3000, None) == 1


def test_a_jpeg_smaller_than_twice_the_input_takes_the_full_path(photo: Image.Image) -> None:
    full_spec, scaled_spec = _spec(model_config_pb2.RGB, 150, False), _spec(model_config_pb2.RGB, 150, True)
    for width, height in ((299, 400), (500, 375), (450, 299)):
        data = _encode(photo.resize((width, height)), "JPEG", quality=90)
        assert decoding.decode_bytes(data, min_size=scaled_spec.min_decoded_size).box is None
        np.testing.assert_array_equal(
            preprocess_encoded(data, scaled_spec), preprocess_encoded(data, full_spec)
        )
    data = _encode(photo.resize((600, 400)), "JPEG", quality=90)  # 2× the width, 1.33× the height: full
    assert decoding.decode_bytes(data, min_size=scaled_spec.min_decoded_size).box is None
    data = _encode(photo.resize((1200, 800)), "JPEG", quality=90)
    decoded = decoding.decode_bytes(data, min_size=scaled_spec.min_decoded_size)
    assert decoded.box == (0.0, 0.0, 600.0, 400.0) and decoded.pixels.shape[:2] == (400, 600)


def test_fast_and_pillow_scaled_decoding_agree(photo: Image.Image) -> None:
    """simplejpeg at a DCT scale gives exactly Pillow's `draft` pixels and box (odd sizes included)."""
    for width, height in ((2401, 1599), (1203, 805), (3000, 2000)):
        data = _encode(photo.resize((width, height)), "JPEG", quality=90)
        fast = decoding.decode_bytes(data, min_size=(300, 300))
        pillow = decoding.open_image(data, min_size=(300, 300))
        assert isinstance(fast.pixels, np.ndarray) and fast.box is not None
        assert fast.box == pillow.box
        np.testing.assert_array_equal(fast.pixels, np.asarray(pillow.pixels))


@pytest.mark.parametrize("min_size", [None, (300, 300)])
def test_bad_files_name_the_problem_on_every_path(photo: Image.Image, min_size) -> None:
    jpeg = _encode(photo, "JPEG")
    png = _encode(photo, "PNG")
    for data in (
        jpeg[: len(jpeg) // 2],
        png[: len(png) // 2],
        b"\xff\xd8\xff" + b"\0" * 100,
        b"not an image",
    ):
        with pytest.raises(ImageDecodeError, match="cannot decode image"):
            decoding.decode_bytes(data, min_size=min_size)
    with pytest.raises(ImageDecodeError, match="empty image"):
        decoding.decode_bytes(b"", min_size=min_size)
    for data in (jpeg, png):
        with pytest.raises(ImageTooLargeError, match="600x400 = 240,000 pixels exceeds the limit of 1,000"):
            decoding.decode_bytes(data, max_pixels=1000, min_size=min_size)
