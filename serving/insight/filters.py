"""Inside the model, with numpy only: filter weights and their mosaic, occlusion and Grad-CAM heatmaps.

The pure core of the `GetFilters` and `Explain` RPCs and of `cnnserve filters|explain --repo`. It knows
nothing of gRPC or of how a batch is run: occlusion is a plan of occluded copies (made chunk by chunk, so
the caller can send each chunk through the dynamic batcher) and a reduction of their scores back into a
heatmap; Grad-CAM is a reduction of the gradient graph's two outputs. Kernels are read from the ONNX
initializers that export named in `config.layer_weights`, parsed with protobuf alone (ONNX Runtime does
not expose initializers, and the `onnx` package is not a serving dependency), so serving needs neither
TensorFlow nor onnx.
"""

from __future__ import annotations

import functools
import io
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cnnserve.protos import model_config_pb2
from cnnserve.serving.model.repository import DEFAULT_MODEL_FILENAME, ModelVersion

# Filter mosaics: each tile is drawn at least this many pixels high/wide (nearest-neighbour upscaling).
MIN_TILE_PIXELS = 32
BORDER_PIXELS = 2
BORDER_RGB = (40, 40, 40)
# Overlay pictures are upscaled (nearest) until their longer side reaches at least this many pixels.
MIN_OVERLAY_PIXELS = 224
OVERLAY_ALPHA = 0.6


class InsightError(Exception):
    """Base of the errors the insight RPCs map to gRPC status codes."""


class UnknownLayerError(InsightError):
    """No layer of that name (gRPC NOT_FOUND); the message lists the layers that have weights."""


class LayerHasNoWeightsError(InsightError):
    """The layer exists but holds no kernel (pooling, flatten, dropout): gRPC INVALID_ARGUMENT."""


class InvalidInsightRequest(InsightError, ValueError):
    """A request argument is out of range (gRPC INVALID_ARGUMENT); the message names it."""


class InvalidFiltersRequest(InvalidInsightRequest):
    """E.g. an input channel the layer does not have."""


class InvalidExplainRequest(InvalidInsightRequest):
    """E.g. a target class outside the model's classes, a patch larger than the image, a stride <= 0."""


class GradCamUnavailableError(InsightError):
    """The model version has no gradient graph (gRPC FAILED_PRECONDITION); the message says why."""


class WeightsReadError(InsightError):
    """The ONNX file lacks an initializer the config names, or its shape disagrees (gRPC INTERNAL)."""


# ---------------------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerFilters:
    """A Conv or Dense layer's weights in Keras layout: (kh, kw, in, out) or (in, out), and its bias."""

    layer: str
    kind: str
    kernel: np.ndarray
    bias: np.ndarray  # shape (out,); zeros when the layer has no bias
    has_bias: bool


# The few fields of ONNX's ModelProto → GraphProto → TensorProto that hold initializers, by their field
# numbers in onnx.proto (stable: ONNX never renumbers). Parsing with this subset keeps the `onnx` package
# out of serving (DESIGN.md: serving imports protobuf, ONNX Runtime, gRPC, numpy, Pillow); protobuf skips
# every other field of the model.
_ONNX_TENSOR_FIELDS = (
    # (name, number, type, label)
    ("dims", 1, "TYPE_INT64", "LABEL_REPEATED"),
    ("data_type", 2, "TYPE_INT32", "LABEL_OPTIONAL"),
    ("float_data", 4, "TYPE_FLOAT", "LABEL_REPEATED"),
    ("int32_data", 5, "TYPE_INT32", "LABEL_REPEATED"),
    ("name", 8, "TYPE_STRING", "LABEL_OPTIONAL"),
    ("raw_data", 9, "TYPE_BYTES", "LABEL_OPTIONAL"),
    ("double_data", 10, "TYPE_DOUBLE", "LABEL_REPEATED"),
    ("data_location", 14, "TYPE_INT32", "LABEL_OPTIONAL"),
)
_ONNX_FLOAT, _ONNX_FLOAT16, _ONNX_DOUBLE, _ONNX_BFLOAT16 = 1, 10, 11, 16
_ONNX_EXTERNAL = 1


@functools.cache
def _onnx_model_class() -> type:
    """A protobuf message class for the initializer-holding subset of ONNX's ModelProto."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    package = "cnnserve_onnx_subset"
    proto = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package, syntax="proto2")
    field_type = descriptor_pb2.FieldDescriptorProto
    tensor = proto.message_type.add(name="TensorProto")
    for name, number, kind, label in _ONNX_TENSOR_FIELDS:
        tensor.field.add(
            name=name, number=number, type=field_type.Type.Value(kind), label=field_type.Label.Value(label)
        )
    graph = proto.message_type.add(name="GraphProto")
    graph.field.add(
        name="initializer",
        number=5,
        type=field_type.TYPE_MESSAGE,
        label=field_type.LABEL_REPEATED,
        type_name=f".{package}.TensorProto",
    )
    model = proto.message_type.add(name="ModelProto")
    model.field.add(
        name="graph",
        number=7,
        type=field_type.TYPE_MESSAGE,
        label=field_type.LABEL_OPTIONAL,
        type_name=f".{package}.GraphProto",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.ModelProto"))


def _tensor_array(tensor: Any, path: Path) -> np.ndarray:
    """One ONNX TensorProto (of the subset) as a float32 array."""
    shape = tuple(int(d) for d in tensor.dims)
    where = f"initializer {tensor.name!r} of {path}"
    if tensor.data_location == _ONNX_EXTERNAL:
        raise WeightsReadError(f"{where} is stored in an external data file, which serving does not read")
    raw_dtypes = {_ONNX_FLOAT: "<f4", _ONNX_FLOAT16: "<f2", _ONNX_DOUBLE: "<f8"}
    if tensor.data_type in raw_dtypes and tensor.raw_data:
        values = np.frombuffer(tensor.raw_data, dtype=raw_dtypes[tensor.data_type])
    elif tensor.data_type == _ONNX_BFLOAT16 and tensor.raw_data:
        bits = np.frombuffer(tensor.raw_data, dtype="<u2").astype(np.uint32) << 16
        values = bits.view(np.float32)
    elif tensor.data_type == _ONNX_FLOAT:
        values = np.asarray(tensor.float_data, dtype=np.float32)
    elif tensor.data_type == _ONNX_DOUBLE:
        values = np.asarray(tensor.double_data, dtype=np.float64)
    elif tensor.data_type == _ONNX_FLOAT16:
        values = np.asarray(tensor.int32_data, dtype=np.uint16).view(np.float16)
    else:
        raise WeightsReadError(f"{where} has ONNX data type {tensor.data_type}, not a float type")
    if values.size != math.prod(shape):
        raise WeightsReadError(f"{where} holds {values.size} values for shape {shape}")
    return values.astype(np.float32).reshape(shape)


def _read_initializers(paths: Sequence[Path], names: set[str]) -> dict[str, np.ndarray]:
    """The named initializers as float32 arrays, from the first ONNX file that holds each."""
    found: dict[str, np.ndarray] = {}
    for path in paths:
        if not path.is_file() or names <= found.keys():
            continue
        model = _onnx_model_class()()
        try:
            model.ParseFromString(path.read_bytes())
        except Exception as error:  # protobuf's DecodeError, or an OSError reading the file
            raise WeightsReadError(f"{path} is not a readable ONNX model: {error}") from error
        for initializer in model.graph.initializer:
            if initializer.name in names and initializer.name not in found:
                found[initializer.name] = _tensor_array(initializer, path)
    return found


class WeightStore:
    """One model version's layer weights, read from its ONNX file once, on first use, thread-safely."""

    def __init__(self, model: ModelVersion) -> None:
        self.model = model
        self._specs = {lw.layer: lw for lw in model.config.layer_weights}
        self._lock = threading.Lock()
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def layers(self) -> list[str]:
        """Layers with weights, in the config's (model) order."""
        return list(self._specs)

    def check_layer(self, layer: str) -> model_config_pb2.LayerWeights:
        if layer in self._specs:
            return self._specs[layer]
        known = {a.name: a.kind for a in self.model.config.activation_layers}
        where = f"model {self.model.name!r} version {self.model.version}"
        if layer in known:
            raise LayerHasNoWeightsError(
                f"layer {layer!r} of {where} is a {known[layer] or 'weightless'} layer with no weights; "
                f"layers with weights: {', '.join(self.layers) or 'none'}"
            )
        raise UnknownLayerError(
            f"{where} has no layer {layer!r}; layers with weights: {', '.join(self.layers) or 'none'}"
        )

    def _load(self) -> dict[str, np.ndarray]:
        with self._lock:
            if self._arrays is None:
                names = {lw.kernel_initializer for lw in self._specs.values()}
                names |= {lw.bias_initializer for lw in self._specs.values() if lw.bias_initializer}
                # The float32 graph first: a quantised variant's initializers are not the Keras weights.
                paths = [self.model.path / DEFAULT_MODEL_FILENAME, self.model.model_file]
                self._arrays = _read_initializers(list(dict.fromkeys(paths)), names)
            return self._arrays

    def filters(self, layer: str) -> LayerFilters:
        spec = self.check_layer(layer)
        arrays = self._load()
        where = f"model {self.model.name!r} version {self.model.version} layer {layer!r}"
        if spec.kernel_initializer not in arrays:
            raise WeightsReadError(
                f"{where}: initializer {spec.kernel_initializer!r} is not in {self.model.path}"
            )
        kernel = arrays[spec.kernel_initializer]
        if spec.kernel_permutation:
            kernel = np.transpose(kernel, [int(a) for a in spec.kernel_permutation])
        if spec.kernel_shape:
            shape = tuple(int(d) for d in spec.kernel_shape)
            if kernel.size != math.prod(shape):
                raise WeightsReadError(f"{where}: kernel has shape {kernel.shape}, the config says {shape}")
            kernel = kernel.reshape(shape)
        kernel = np.ascontiguousarray(kernel, dtype=np.float32)
        out = kernel.shape[-1]
        if spec.bias_initializer:
            if spec.bias_initializer not in arrays:
                raise WeightsReadError(
                    f"{where}: initializer {spec.bias_initializer!r} is not in {self.model.path}"
                )
            bias = np.ascontiguousarray(arrays[spec.bias_initializer].reshape(-1), dtype=np.float32)
            if bias.shape != (out,):
                raise WeightsReadError(f"{where}: bias has shape {bias.shape}, expected ({out},)")
        else:
            bias = np.zeros((out,), dtype=np.float32)
        return LayerFilters(layer, spec.kind, kernel, bias, bool(spec.bias_initializer))


def _normalise(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over the whole array (a constant array becomes 0.5)."""
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return np.full(values.shape, 0.5, dtype=np.float32)
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


def mosaic_layout(count: int, tile_h: int, tile_w: int, border: int = BORDER_PIXELS) -> MosaicLayout:
    cols = max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / cols))
    return MosaicLayout(count, rows, cols, tile_h, tile_w, border)


def tile_mosaic(tiles: np.ndarray, min_tile_pixels: int = MIN_TILE_PIXELS) -> tuple[np.ndarray, MosaicLayout]:
    """Tiles (n, h, w) or (n, h, w, 3), each normalised to [0, 1] on its own, as one uint8 RGB picture."""
    if tiles.ndim == 3:
        tiles = np.repeat(tiles[..., None], 3, axis=-1)
    n, h, w, _ = tiles.shape
    zoom = max(1, math.ceil(min_tile_pixels / max(1, min(h, w))))
    layout = mosaic_layout(n, h * zoom, w * zoom)
    picture = np.empty((layout.height, layout.width, 3), dtype=np.uint8)
    picture[...] = BORDER_RGB
    for index in range(n):
        tile = np.round(_normalise(tiles[index]) * 255).astype(np.uint8)
        tile = tile.repeat(zoom, axis=0).repeat(zoom, axis=1)
        top, left = layout.origin(index)
        picture[top : top + layout.tile_h, left : left + layout.tile_w] = tile
    return picture, layout


def filter_tiles(
    filters: LayerFilters, input_dims: Sequence[int], rgb_input: bool, input_channel: int = -1
) -> np.ndarray:
    """One tile per output filter: (out, h, w) greyscale or (out, h, w, 3) colour, unnormalised.

    A convolution reading the RGB image itself (`rgb_input`: the first layer of an RGB model) is drawn in
    colour, whatever `input_channel`; any other convolution shows one input channel (`input_channel` >= 0)
    or the mean over them (-1). A Dense layer's column is drawn as the model's input image when it reads
    the flattened input, else as a near-square (`input_channel` does not apply).
    """
    kernel = filters.kernel
    where = f"layer {filters.layer!r}"
    if kernel.ndim == 4:
        cin = kernel.shape[2]
        if rgb_input and cin == 3:
            return np.transpose(kernel, (3, 0, 1, 2))
        if input_channel < -1 or input_channel >= cin:
            raise InvalidFiltersRequest(
                f"{where} has {cin} input channels; input_channel must be -1 (mean) or 0..{cin - 1}, "
                f"got {input_channel}"
            )
        chosen = kernel.mean(axis=2) if input_channel == -1 else kernel[:, :, input_channel, :]
        return np.transpose(chosen, (2, 0, 1))
    if kernel.ndim == 2:
        n_in, n_out = kernel.shape
        columns = kernel.T
        dims = [int(d) for d in input_dims]
        if math.prod(dims) == n_in and len(dims) >= 2:
            if len(dims) == 3 and dims[2] == 3:
                return columns.reshape(n_out, dims[0], dims[1], 3)
            return columns.reshape(n_out, dims[0], -1)
        side = math.ceil(math.sqrt(n_in))
        padded = np.zeros((n_out, side * side), dtype=np.float32)
        padded[:, :n_in] = columns
        return padded.reshape(n_out, side, side)
    raise InvalidFiltersRequest(f"{where} has a kernel of rank {kernel.ndim}, which cannot be drawn")


def encode_png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def filters_mosaic_png(
    filters: LayerFilters, config: model_config_pb2.ModelConfig, input_channel: int = -1
) -> bytes:
    """The notebooks' `make_mosaic` of a layer's filters, as PNG bytes."""
    first = bool(config.layer_weights) and config.layer_weights[0].layer == filters.layer
    rgb_input = first and config.preprocessing.color_mode == model_config_pb2.RGB
    tiles = filter_tiles(filters, config.input.dims, rgb_input, input_channel)
    picture, _ = tile_mosaic(tiles)
    return encode_png(picture)


# ---------------------------------------------------------------------------------------------------
# Occlusion
# ---------------------------------------------------------------------------------------------------


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
            raise InvalidExplainRequest(f"occlusion patch size must be positive, got {patch}")
        if patch > min(height, width):
            raise InvalidExplainRequest(
                f"occlusion patch size {patch} is larger than the {height}x{width} input image"
            )
        if stride < 1:
            raise InvalidExplainRequest(f"occlusion stride must be positive, got {stride}")
        if not math.isfinite(fill_value):
            raise InvalidExplainRequest(f"occlusion fill value must be finite, got {fill_value}")
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
# Grad-CAM
# ---------------------------------------------------------------------------------------------------


def resize_bilinear(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2-D map with half-pixel centres (as `tf.image.resize(..., "bilinear")`)."""
    src_h, src_w = values.shape

    def axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centres = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
        centres = np.clip(centres, 0.0, src - 1)
        low = np.floor(centres).astype(np.int64)
        high = np.minimum(low + 1, src - 1)
        return low, high, centres - low

    y0, y1, fy = axis(src_h, height)
    x0, x1, fx = axis(src_w, width)
    v = values.astype(np.float64)
    top = v[y0][:, x0] * (1 - fx) + v[y0][:, x1] * fx
    bottom = v[y1][:, x0] * (1 - fx) + v[y1][:, x1] * fx
    return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)


def gradcam_heatmap(activations: np.ndarray, gradients: np.ndarray, height: int, width: int) -> np.ndarray:
    """Grad-CAM of one image from (h, w, c) activations and d(score)/d(activations), in [0, 1] at h × w.

    Channel weights are the gradients' mean over the spatial axes; the map is ReLU(sum_c w_c · A_c),
    resized bilinearly to the input size and divided by its maximum (all zeros stays all zeros).
    """
    activations = np.asarray(activations, dtype=np.float64).reshape(-1, *np.shape(activations)[-3:])[0]
    gradients = np.asarray(gradients, dtype=np.float64).reshape(-1, *np.shape(gradients)[-3:])[0]
    weights = gradients.mean(axis=(0, 1))
    cam = np.maximum((activations * weights).sum(axis=-1), 0.0)
    cam = resize_bilinear(cam, height, width)
    peak = float(cam.max())
    return (cam / peak if peak > 0 else np.zeros_like(cam)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Overlay picture
# ---------------------------------------------------------------------------------------------------


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
