"""A second version of an exported model, for A/B tests: version 1 with one class's logit raised by `shift`.

Export writes three graphs per version (classification, activations, Grad-CAM) and the weights file; the
last layer's bias is changed in all four alike, so version 2 is a consistent model whose probabilities are
version 1's with that class's odds multiplied by e**shift -- the images near the boundary change their
answer, the others do not, which is what an A/B view must show.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from google.protobuf import text_format
from onnx import numpy_helper

from cnnserve.protos import model_config_pb2

GRAPHS = ("model.onnx", "activations.onnx", "gradcam.onnx")


def add_shifted_version(repo: Path, model: str, class_index: int, shift: float, version: int = 2) -> None:
    """Copy version 1 to `version` with the output layer's bias for `class_index` raised by `shift`, and
    make every version live."""
    model_dir = repo / model
    config_path = model_dir / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    layer = config.layer_weights[-1].layer
    source, target = model_dir / "1", model_dir / str(version)
    shutil.copytree(source, target)
    weights = dict(np.load(source / config.weights_filename))
    bias = weights[f"{layer}/bias"]
    shifted = bias.copy()
    shifted[class_index] += shift
    changed = {}
    for name in GRAPHS:
        path = target / name
        if not path.is_file():
            continue
        graph = onnx.load(str(path))
        changed[name] = 0
        for initializer in graph.graph.initializer:
            values = numpy_helper.to_array(initializer)
            if values.shape == bias.shape and np.array_equal(values, bias):
                initializer.CopyFrom(numpy_helper.from_array(shifted.astype(values.dtype), initializer.name))
                changed[name] += 1
        onnx.save(graph, str(path))
    assert changed.get("model.onnx") == 1, f"the output bias was not found exactly once: {changed}"
    weights[f"{layer}/bias"] = shifted
    np.savez(target / config.weights_filename, **weights)
    config.version_policy.all.SetInParent()
    config_path.write_text(text_format.MessageToString(config))
