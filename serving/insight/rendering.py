"""Pictures of what a model computes: tile mosaics (feature maps, filters), the Turbo colour map, overlays.

One mosaic for every picture of tiles, as the notebooks' `make_mosaic` drew them: each tile normalised to
its own range (so a weak map is still visible), upscaled (nearest) to at least MIN_TILE_PIXELS, laid out
near-square between borders. Feature maps are drawn in grey between white borders; filters between dark
ones, in colour when they read an RGB image. Pillow and numpy only.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cnnserve.protos import model_config_pb2

# Tiles are drawn at least this many pixels high/wide (nearest-neighbour upscaling), so 3x3 kernels and
# 7x7 maps are visible.
MIN_TILE_PIXELS = 32
# Overlay pictures are upscaled (nearest) until their longer side reaches at least this many pixels.
MIN_OVERLAY_PIXELS = 224
OVERLAY_ALPHA = 0.6


@dataclass(frozen=True)
class MosaicStyle:
    """How a mosaic looks: border width and colour, and the grey level of a constant tile (0..1)."""

    border: int
    border_rgb: tuple[int, int, int]
    constant_level: float


FILTER_STYLE = MosaicStyle(border=2, border_rgb=(40, 40, 40), constant_level=0.5)
FEATURE_MAP_STYLE = MosaicStyle(border=1, border_rgb=(255, 255, 255), constant_level=0.0)


def normalise(values: np.ndarray, constant_level: float = 0.5) -> np.ndarray:
    """Scale to [0, 1] over the whole array; a constant array becomes `constant_level`."""
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return np.full(values.shape, constant_level, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


@dataclass(frozen=True)
class MosaicLayout:
    """Where tiles sit in a mosaic picture: `rows` × `cols` slots of `tile_h` × `tile_w` inside borders."""

    count: int
    rows: int
    cols: int
    tile_h: int
    tile_w: int
    border: int

    @property
    def height(self) -> int:
        return self.rows * (self.tile_h + self.border) + self.border

    @property
    def width(self) -> int:
        return self.cols * (self.tile_w + self.border) + self.border

    def origin(self, index: int) -> tuple[int, int]:
        row, col = divmod(index, self.cols)
        return row * (self.tile_h + self.border) + self.border, col * (
            self.tile_w + self.border
        ) + self.border


def mosaic_layout(count: int, tile_h: int, tile_w: int, border: int = FILTER_STYLE.border) -> MosaicLayout:
    cols = max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / cols))
    return MosaicLayout(count, rows, cols, tile_h, tile_w, border)


def tile_mosaic(
    tiles: np.ndarray, style: MosaicStyle = FILTER_STYLE, min_tile_pixels: int = MIN_TILE_PIXELS
) -> tuple[np.ndarray, MosaicLayout]:
    """Tiles (n, h, w) or (n, h, w, 3), each normalised on its own, as one uint8 picture: (H, W) grey for
    grey tiles, (H, W, 3) for colour ones."""
    colour = tiles.ndim == 4
    n, h, w = tiles.shape[:3]
    zoom = max(1, math.ceil(min_tile_pixels / max(1, min(h, w))))
    layout = mosaic_layout(n, h * zoom, w * zoom, style.border)
    if colour:
        picture = np.empty((layout.height, layout.width, 3), dtype=np.uint8)
        picture[...] = style.border_rgb
    else:
        picture = np.full((layout.height, layout.width), round(sum(style.border_rgb) / 3), dtype=np.uint8)
    for index in range(n):
        tile = np.round(normalise(tiles[index], style.constant_level) * 255).astype(np.uint8)
        tile = tile.repeat(zoom, axis=0).repeat(zoom, axis=1)
        top, left = layout.origin(index)
        picture[top : top + layout.tile_h, left : left + layout.tile_w] = tile
    return picture, layout


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


def activation_mosaic_png(activation: np.ndarray) -> bytes:
    """The PNG mosaic of one image's activations of one layer (its feature maps)."""
    picture, _ = tile_mosaic(layer_tiles(np.asarray(activation, dtype=np.float32)), FEATURE_MAP_STYLE)
    return encode_png(picture)


def encode_png(picture: np.ndarray) -> bytes:
    """A uint8 picture, (H, W) grey or (H, W, 3) colour, as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def turbo(values: np.ndarray) -> np.ndarray:
    """Google's Turbo colour map (polynomial approximation) of values in [0, 1]: (..., 3) uint8."""
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    r = 0.13572138 + x * (
        4.61539260 + x * (-42.66032258 + x * (132.13108234 + x * (-152.94239396 + x * 59.28637943)))
    )
    g = 0.09140261 + x * (
        2.19418839 + x * (4.84296658 + x * (-14.18503333 + x * (4.27729857 + x * 2.82956604)))
    )
    b = 0.10667330 + x * (
        12.64194608 + x * (-60.58204836 + x * (110.36276771 + x * (-89.90310912 + x * 27.34824973)))
    )
    rgb = np.stack([r, g, b], axis=-1)
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def display_image(model_input: np.ndarray, preprocessing: model_config_pb2.Preprocessing) -> np.ndarray:
    """The preprocessed input turned back into pixels: (h, w, 3) uint8, undoing value * scale + offset."""
    scale = preprocessing.scale if preprocessing.scale != 0 else 1.0
    pixels = (np.asarray(model_input, dtype=np.float64) - preprocessing.offset) / scale
    pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    pixels = pixels.reshape(preprocessing.height, preprocessing.width, -1)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return pixels


def heat_for_display(heatmap: np.ndarray) -> np.ndarray:
    """Positive heat scaled to [0, 1] by its maximum (negative heat, where covering helped, shows as 0)."""
    positive = np.maximum(np.asarray(heatmap, dtype=np.float64), 0.0)
    peak = float(positive.max())
    return positive / peak if peak > 0 else positive


def overlay_picture(image_rgb: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The image, and beside it the heatmap in Turbo colours blended over it (constant alpha)."""
    height, width = image_rgb.shape[:2]
    heat = heat_for_display(heatmap)
    colours = turbo(heat).astype(np.float64)
    blended = np.round(image_rgb * (1.0 - alpha) + colours * alpha).astype(np.uint8)
    gap = np.full((height, max(2, width // 14), 3), 255, dtype=np.uint8)
    picture = np.concatenate([image_rgb, gap, blended], axis=1)
    zoom = max(1, math.ceil(MIN_OVERLAY_PIXELS / max(height, width)))
    return picture.repeat(zoom, axis=0).repeat(zoom, axis=1)


def overlay_png(
    model_input: np.ndarray, heatmap: np.ndarray, preprocessing: model_config_pb2.Preprocessing
) -> bytes:
    return encode_png(overlay_picture(display_image(model_input, preprocessing), heatmap))
