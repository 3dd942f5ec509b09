"""A model version's layer weights, for GetFilters: read from the weights file export wrote beside the model.

Export reads every Conv and Dense layer's kernel and bias out of the served ONNX graph and writes them in
Keras layout to `<version>/weights.npz` (`ModelConfig.weights_filename`), so serving needs neither
TensorFlow nor `onnx`, and never parses an ONNX file. A version exported before that file existed answers
GetFilters with FAILED_PRECONDITION and says how to re-export it; every other RPC serves it as before.
"""

from __future__ import annotations

import math
import threading
import zipfile
from dataclasses import dataclass

import numpy as np

from cnnserve.protos import model_config_pb2
from cnnserve.serving.errors import (
    LayerHasNoWeightsError,
    LayerNotFoundError,
    WeightsReadError,
    WeightsUnavailableError,
    shown,
)
from cnnserve.serving.model.repository import ModelVersion


@dataclass(frozen=True)
class LayerFilters:
    """A Conv or Dense layer's weights in Keras layout: (kh, kw, in, out) or (in, out), and its bias."""

    layer: str
    kind: str
    kernel: np.ndarray
    bias: np.ndarray  # shape (out,); zeros when the layer has no bias
    has_bias: bool


class WeightStore:
    """One model version's layer weights, read from its weights file once, on first use, thread-safely."""

    def __init__(self, model: ModelVersion) -> None:
        self.model = model
        self._specs = {lw.layer: lw for lw in model.config.layer_weights}
        self._lock = threading.Lock()
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def layers(self) -> list[str]:
        """Layers with weights, in the config's (model) order."""
        return list(self._specs)

    @property
    def _where(self) -> str:
        return f"model {self.model.name!r} version {self.model.version}"

    def check_layer(self, layer: str) -> model_config_pb2.LayerWeights:
        if layer in self._specs:
            return self._specs[layer]
        known = {a.name: a.kind for a in self.model.config.activation_layers}
        if layer in known:
            raise LayerHasNoWeightsError(
                f"layer {layer!r} of {self._where} is a {known[layer] or 'weightless'} layer with no "
                f"weights; layers with weights: {', '.join(self.layers) or 'none'}"
            )
        raise LayerNotFoundError(
            f"{self._where} has no layer {shown(layer)}; "
            f"layers with weights: {', '.join(self.layers) or 'none'}"
        )

    def _load(self) -> dict[str, np.ndarray]:
        with self._lock:
            if self._arrays is None:
                filename = self.model.config.weights_filename
                if not filename:
                    raise WeightsUnavailableError(
                        f"{self._where} was exported without a weights file, which GetFilters reads; "
                        "re-export it (`cnnserve export RUN_DIR --repo REPO --version "
                        f"{self.model.version} --force`) to serve its filters"
                    )
                path = self.model.path / filename
                try:
                    with np.load(path, allow_pickle=False) as archive:
                        self._arrays = {name: archive[name] for name in archive.files}
                except FileNotFoundError as error:
                    raise WeightsUnavailableError(
                        f"{self._where}: its weights file {filename} is missing; re-export the version"
                    ) from error
                except (OSError, ValueError, zipfile.BadZipFile) as error:
                    raise WeightsReadError(
                        f"{self._where}: its weights file {filename} is unreadable"
                    ) from error
            return self._arrays

    def filters(self, layer: str) -> LayerFilters:
        spec = self.check_layer(layer)
        arrays = self._load()
        where = f"{self._where} layer {layer!r}"
        kernel = arrays.get(f"{layer}/kernel")
        if kernel is None:
            raise WeightsReadError(f"{where}: the weights file holds no kernel for it")
        shape = tuple(int(d) for d in spec.kernel_shape)
        if shape and (kernel.shape != shape or math.prod(shape) != kernel.size):
            raise WeightsReadError(f"{where}: kernel has shape {kernel.shape}, the config says {shape}")
        kernel = np.ascontiguousarray(kernel, dtype=np.float32)
        out = kernel.shape[-1]
        bias = arrays.get(f"{layer}/bias")
        has_bias = bias is not None
        if bias is None:
            bias = np.zeros((out,), dtype=np.float32)
        elif bias.shape != (out,):
            raise WeightsReadError(f"{where}: bias has shape {bias.shape}, expected ({out},)")
        return LayerFilters(layer, spec.kind, kernel, np.ascontiguousarray(bias, dtype=np.float32), has_bias)
