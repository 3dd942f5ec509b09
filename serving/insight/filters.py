"""A layer's filters as pictures: one tile per output filter, drawn as the notebooks' filter mosaics did."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cnnserve.protos import model_config_pb2
from cnnserve.serving.errors import InvalidRequestError
from cnnserve.serving.insight.rendering import FILTER_STYLE, encode_png, tile_mosaic
from cnnserve.serving.model.weights import LayerFilters


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
            raise InvalidRequestError(
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
    raise InvalidRequestError(f"{where} has a kernel of rank {kernel.ndim}, which cannot be drawn")


def filters_mosaic_png(
    filters: LayerFilters, config: model_config_pb2.ModelConfig, input_channel: int = -1
) -> bytes:
    """The notebooks' `make_mosaic` of a layer's filters, as PNG bytes."""
    first = bool(config.layer_weights) and config.layer_weights[0].layer == filters.layer
    rgb_input = first and config.preprocessing.color_mode == model_config_pb2.RGB
    tiles = filter_tiles(filters, config.input.dims, rgb_input, input_channel)
    picture, _ = tile_mosaic(tiles, FILTER_STYLE)
    return encode_png(picture)


# ---------------------------------------------------------------------------------------------------
