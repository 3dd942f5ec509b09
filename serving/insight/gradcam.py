"""Grad-CAM: where a convolution's features drive a class, from export's gradient graph, with numpy only.

Export writes a second ONNX graph per version (`config.gradcam`) that returns a convolution's activations
and the gradient of the target class's score with respect to them; the heatmap is their reduction here.
"""

from __future__ import annotations

import numpy as np

from cnnserve.serving.model.repository import ModelVersion
from cnnserve.serving.model.runtime import ArenaShrinker, SessionOptions, choose_providers, create_session


def gradcam_available(model: ModelVersion) -> tuple[bool, str]:
    """Whether a version has a gradient graph, and if not, why (as export recorded it)."""
    gradcam = model.config.gradcam
    if gradcam.filename and (model.path / gradcam.filename).is_file():
        return True, ""
    if gradcam.filename:
        return False, f"gradient graph {model.path / gradcam.filename} is missing"
    return False, gradcam.unavailable_reason or "export wrote no gradient graph for this model"


def explain_methods(model: ModelVersion) -> list[str]:
    """The `ExplainMethod` names a version supports, for `GetModelMetadata.explain_methods`."""
    return ["OCCLUSION", "GRADCAM"] if gradcam_available(model)[0] else ["OCCLUSION"]


class GradCamSession:
    """The ONNX Runtime session of one version's gradient graph."""

    def __init__(self, model: ModelVersion, options: SessionOptions) -> None:
        self.spec = model.config.gradcam
        providers = choose_providers(options.device, model.config.execution.providers)
        self.session = create_session(model.path / self.spec.filename, providers, options)
        self._arena = ArenaShrinker(options, self.session.get_providers())

    def run(self, image: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray, float]:
        outputs = [self.spec.activations_output, self.spec.gradients_output]
        if self.spec.score_output:
            outputs.append(self.spec.score_output)
        feeds = {
            self.spec.input_name: np.ascontiguousarray(image[None], dtype=np.float32),
            self.spec.target_input_name: np.array([target], dtype=np.int64),
        }
        results = self.session.run(outputs, feeds, self._arena.run_options())
        score = float(np.asarray(results[2]).reshape(-1)[0]) if len(results) > 2 else float("nan")
        return results[0], results[1], score


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
