"""Photo-sized JPEGs made from real photographs, for export's parity check of scaled JPEG decoding.

The sources are the photographs bundled with scikit-image and matplotlib (nothing is downloaded): each is
cropped to its target's aspect ratio, upscaled to a camera's size (12 MP, 3 MP, ... down to 500×375), given
a faint sensor-like grain (an upscaled photo is otherwise far smoother than a camera's, and compresses and
decodes unlike one) and encoded as a camera would (quality 92, 4:2:0). Some are stored the ways cameras and
editors store them: rotated with an EXIF orientation tag, progressive, greyscale, CMYK. Standard library
only at import (the export command's --help lists the set).
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GRAIN_LEVELS = 3  # the added luma grain is uniform in ±GRAIN_LEVELS 8-bit levels (σ = 2)
JPEG_QUALITY = 92
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Photo:
    """One file of the check set: which photograph, at what size, stored how."""

    name: str
    package: str  # the Python package whose data folder holds the source
    source: str  # its path inside that folder
    size: tuple[int, int]  # (width, height) of the picture as displayed
    variant: str = ""  # "", "exif-rotated", "progressive", "greyscale", "cmyk"


# Ordered so that any first few cover the most ground: sizes, orientations and encodings alternate.
PHOTOS: tuple[Photo, ...] = (
    Photo("motorcycle-3mp-exif-rotated", "skimage", "data/motorcycle_left.png", (2048, 1536), "exif-rotated"),
    Photo("hubble-500x375", "skimage", "data/hubble_deep_field.jpg", (500, 375)),
    Photo("astronaut-12mp", "skimage", "data/astronaut.png", (4000, 3000)),
    Photo("chelsea-12mp-portrait", "skimage", "data/chelsea.png", (3000, 4000)),
    Photo("rocket-2mp-progressive", "skimage", "data/rocket.jpg", (1600, 1200), "progressive"),
    Photo("camera-4mp-greyscale", "skimage", "data/camera.png", (2048, 2048), "greyscale"),
    Photo("coffee-3mp", "skimage", "data/coffee.png", (2048, 1536)),
    Photo("grace-hopper-2mp-portrait", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", (1200, 1600)),
    Photo("coffee-1mp-cmyk", "skimage", "data/coffee.png", (1280, 960), "cmyk"),
)


class PhotosUnavailableError(RuntimeError):
    """A source photograph's package is not installed (scikit-image or matplotlib)."""


def source_path(photo: Photo) -> Path:
    """Where the source photograph lies, found without importing its package."""
    spec = importlib.util.find_spec(photo.package)
    if spec is None or not spec.submodule_search_locations:
        raise PhotosUnavailableError(
            f"{photo.name}: the {photo.package} package holding its source photograph is not installed"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / photo.source
    if not path.is_file():
        raise PhotosUnavailableError(f"{photo.name}: {path} is missing from the {photo.package} install")
    return path


def _crop_to_aspect(image, width: int, height: int):
    """The centred crop of `image` with the aspect ratio width:height."""
    source_w, source_h = image.size
    if source_w * height > source_h * width:
        crop_w = source_h * width // height
        left = (source_w - crop_w) // 2
        return image.crop((left, 0, left + crop_w, source_h))
    crop_h = source_w * height // width
    top = (source_h - crop_h) // 2
    return image.crop((0, top, source_w, top + crop_h))


def _with_grain(image, seed: int):
    """The image with faint luma grain (the same noise on every channel), as a sensor leaves."""
    import numpy as np
    from PIL import Image, ImageChops

    rng = np.random.default_rng(seed)
    levels = rng.integers(128 - GRAIN_LEVELS, 128 + GRAIN_LEVELS + 1, size=image.size[::-1], dtype=np.uint8)
    grain = Image.fromarray(levels, "L")
    if image.mode == "RGB":
        grain = Image.merge("RGB", (grain, grain, grain))
    return ImageChops.add(image, grain, scale=1.0, offset=-128)


def encode(photo: Photo, seed: int = 0, grain: bool = True) -> bytes:
    """The JPEG bytes of one photo of the check set (deterministic for a given seed); `grain` False leaves
    the upscale smooth (compressing ~2× better, and decoding faster, than a camera's file)."""
    from PIL import Image

    width, height = photo.size
    with Image.open(source_path(photo)) as opened:
        picture = opened.convert("L" if photo.variant == "greyscale" else "RGB")
    picture = _crop_to_aspect(picture, width, height).resize((width, height), Image.Resampling.BICUBIC)
    if grain:
        picture = _with_grain(picture, seed)
    options: dict[str, object] = {"quality": JPEG_QUALITY}
    if photo.variant == "progressive":
        options["progressive"] = True
    elif photo.variant == "cmyk":
        picture = picture.convert("CMYK")
    elif photo.variant == "exif-rotated":
        # Stored as a camera held upright stores it: pixels turned, the tag saying how to turn them back.
        picture = picture.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def write_photos(folder: Path, photos: Sequence[Photo] = PHOTOS, seed: int = 0) -> list[Path]:
    """Write the check set's JPEGs into `folder` (created); returns their paths in `photos` order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, photo in enumerate(photos):
        path = folder / f"{photo.name}.jpg"
        path.write_bytes(encode(photo, seed + index))
        paths.append(path)
    return paths
