"""Feature maps drawn as one picture: the notebooks' `make_mosaic`, as a PNG, with Pillow only.

A convolution's activations (h, w, channels) become a grid of `channels` tiles, each normalised to its own
range so a weak map is still visible; a flat layer (units,) becomes a near-square tile grid of units.
The insight helper reuses `make_mosaic`/`encode_png` for filter mosaics.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

MIN_TILE_PIXELS = 32  # tiles are upscaled (nearest) to at least this size, so 7x7 maps are visible
BORDER = 1


def _normalise(tile: np.ndarray) -> np.ndarray:
    low, high = float(tile.min()), float(tile.max())
    if high - low <= 1e-12:
        return np.zeros_like(tile, dtype=np.float32)
    return ((tile - low) / (high - low)).astype(np.float32)


def make_mosaic(maps: np.ndarray, columns: int | None = None, border: int = BORDER) -> np.ndarray:
    """Tiles (n, h, w) → one 2-D float image in [0, 1], `columns` wide (default: near-square), with borders.

    Borders are 1.0 (white), like the notebooks' mosaics on a light background.
    """
    if maps.ndim != 3:
        raise ValueError(f"make_mosaic takes (tiles, height, width), not shape {maps.shape}")
    count, height, width = maps.shape
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    mosaic = np.ones((rows * (height + border) + border, columns * (width + border) + border), np.float32)
    for index in range(count):
        row, column = divmod(index, columns)
        top = border + row * (height + border)
        left = border + column * (width + border)
        mosaic[top : top + height, left : left + width] = _normalise(maps[index])
    return mosaic


def layer_tiles(activation: np.ndarray) -> np.ndarray:
    """One image's layer output as tiles: (h, w, c) → c maps of (h, w); (units,) → one square-ish map."""
    if activation.ndim == 3:
        return np.moveaxis(activation, -1, 0)
    if activation.ndim == 2:
        return activation[np.newaxis]
    flat = activation.reshape(-1)
    side = max(1, math.ceil(math.sqrt(flat.size)))
    padded = np.zeros(side * side, dtype=np.float32)
    padded[: flat.size] = flat
    return padded.reshape(1, side, side)


def encode_png(picture: np.ndarray, min_tile_pixels: int = 0, tile_size: int = 0) -> bytes:
    """A [0, 1] greyscale picture as PNG bytes, upscaled (nearest) so tiles are at least min_tile_pixels."""
    scale = max(1, math.ceil(min_tile_pixels / tile_size)) if tile_size and min_tile_pixels else 1
    image = Image.fromarray(np.clip(picture * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def activation_mosaic_png(activation: np.ndarray, min_tile_pixels: int = MIN_TILE_PIXELS) -> bytes:
    """The PNG mosaic of one image's activations of one layer."""
    tiles = layer_tiles(np.asarray(activation, dtype=np.float32))
    return encode_png(make_mosaic(tiles), min_tile_pixels, min(tiles.shape[1:]))
