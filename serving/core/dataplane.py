"""The serving data plane: every operation a client can ask for, on plain Python and numpy values.

Transports (the gRPC servicers, the HTTP endpoints) translate their wire format into these calls and the
results back, and nothing else; the batch job and the tests can call them directly. A Classify request's
images are decoded (core.inputs), queued and merged with other requests for the same model version
(batching), run by that version's ONNX Runtime session (model.runtime) and answered here as top-k classes.
Every invalid input raises an error of the serving error tree naming the culprit.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnserve.serving.core.decode_budget import DecodeBudget
from cnnserve.serving.core.inputs import (
    ImageInput,
    RequestLimits,
    build_batch,
    build_big_batch,
    check_count,
    is_small,
    open_headers,
    prepare_batch,
)
from cnnserve.serving.core.registry import LoadedModel, ModelRegistry, VersionStatus
from cnnserve.serving.errors import InvalidRequestError, LayerNotFoundError, shown
from cnnserve.serving.insight.explainer import ExplainOptions, ExplainResult, FiltersResult, Insight
from cnnserve.serving.insight.gradcam import explain_methods
from cnnserve.serving.insight.rendering import activation_mosaic_png
from cnnserve.serving.model.runtime import top_k as best_k
from cnnserve.serving.observability.calls import current_call


@dataclass(frozen=True)
class Classification:
    """Per image, the k best classes of the model version that answered: indices and probabilities."""

    model: LoadedModel
    indices: np.ndarray  # (N, k) int
    scores: np.ndarray  # (N, k) float32


@dataclass(frozen=True)
class Activations:
    """The requested layers' outputs for a request's images, and per layer the first image's mosaic PNG."""

    model: LoadedModel
    layers: dict[str, np.ndarray]  # layer -> float32 (N, ...layer dims)
    mosaics: dict[str, bytes]  # layer -> PNG, when asked for


@dataclass(frozen=True)
class ModelMetadata:
    """What a client needs to call a model version: the loaded version, its siblings' states, its methods."""

    model: LoadedModel
    versions: list[VersionStatus]
    explain_methods: list[str]  # ExplainMethod names: OCCLUSION, GRADCAM


def check_top_k(top_k: int, num_classes: int) -> int:
    """top_k 0 means 1; otherwise it must be between 1 and the number of classes."""
    if top_k == 0:
        return 1
    if not 1 <= top_k <= num_classes:
        raise InvalidRequestError(
            f"top_k must be between 1 and {num_classes} (the model's classes), not {top_k}"
        )
    return top_k


def check_finite_outputs(values: np.ndarray, what: str) -> np.ndarray:
    """The model's outputs per image (first axis), if finite: a NaN or infinity is never an answer. Only an
    input far outside the model's range (finite, e.g. 3e38) gets one from a sound model, so the caller is
    told which image."""
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if not finite.all():
        index = int(np.flatnonzero(~finite)[0])
        raise InvalidRequestError(
            f"image {index}: the model's {what} for it is not finite (NaN or infinity); its values are "
            "outside the range the model can compute with",
            index,
        )
    return values


def check_layers(model: LoadedModel, layers: Sequence[str]) -> list[str]:
    """The requested activation layers (empty = all of them), validated."""
    available = list(model.runtime.activation_outputs)
    if not layers:
        return available
    for layer in layers:
        if layer not in model.runtime.activation_outputs:
            raise LayerNotFoundError(
                f"model {model.name!r} version {model.version} has no activation layer {shown(layer)}; "
                f"activation layers: {', '.join(available) or 'none'}"
            )
    return list(dict.fromkeys(layers))


class DataPlane:
    """The live models, the thread pool for blocking work and the request limits, behind every RPC."""

    def __init__(
        self,
        registry: ModelRegistry,
        executor: Executor,
        limits: RequestLimits,
        decode_on_loop: bool = False,
        decode_budget: DecodeBudget | None = None,
    ) -> None:
        """`decode_on_loop`: a worker with at most one core decodes big requests on its event loop in
        slices rather than in the executor (a thread would add GIL hand-offs, not a core), bar images too
        big to slice. `decode_budget`: the pixels this worker decodes at once (None: no bound)."""
        self.registry = registry
        self.executor = executor
        self.limits = limits
        self.decode_executor: Executor | None = None if decode_on_loop else executor
        self.decode_budget = decode_budget
        self.insight = Insight(registry.session_options)

    # -- Classify ----------------------------------------------------------------------------------------

    async def classify(
        self,
        model: str,
        version: int,
        images: Sequence[ImageInput],
        top_k: int,
        deadline: float | None = None,
    ) -> Classification:
        """The top_k classes of each image, through the model version's dynamic batcher; `deadline` is
        event-loop time (past it, a request still queued is dropped with DEADLINE_EXCEEDED)."""
        loaded = self.registry.get(model, version)
        k = check_top_k(top_k, loaded.model.num_classes)
        probs = await self.probabilities(loaded, images, deadline)
        indices, scores = best_k(probs, k)
        return Classification(loaded, indices, scores)

    async def probabilities(
        self, loaded: LoadedModel, images: Sequence[ImageInput], deadline: float | None = None
    ) -> np.ndarray:
        """Class probabilities (N, classes) of a request's images through the version's dynamic batcher:
        what Classify ranks and the Open Inference Protocol answers, so both merge into the same batches."""
        check_count(images, self.limits)
        opened, pixels = open_headers(images, self.limits)
        if is_small(images, pixels):
            # Small: decoded on the loop when its batch starts, back to back with the batch's other images
            # while the decoder's code and tables are still in the CPU's caches.
            prepare = functools.partial(build_batch, opened, loaded.spec, self.limits)
            probs = await loaded.batcher.submit_deferred(prepare, len(images), deadline)
        else:
            call = current_call()  # noted for tracing and the access log, when either is on
            decoding = time.monotonic() if call is not None else 0.0
            with loaded.batcher.expecting():
                batch = await build_big_batch(
                    opened, pixels, loaded.spec, self.limits, self.decode_executor, **self._decoding(deadline)
                )
            if call is not None:
                call.note_decode(decoding, time.monotonic())
            probs = await loaded.batcher.submit(batch, deadline)
        return check_finite_outputs(probs, "output")

    # -- activations -------------------------------------------------------------------------------------

    async def activations(
        self,
        model: str,
        version: int,
        images: Sequence[ImageInput],
        layers: Sequence[str],
        mosaic: bool = False,
    ) -> Activations:
        """The named layers' activations (empty = every activation layer) of the request's images, and with
        `mosaic` a feature-map picture per layer of the first image; the session runs in the executor."""
        loaded = self.registry.get(model, version)
        names = check_layers(loaded, layers)
        batch = await prepare_batch(
            images, loaded.spec, self.limits, self.decode_executor, **self._decoding()
        )

        def compute() -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
            outputs = loaded.runtime.activations(batch, names)
            values = {
                name: check_finite_outputs(np.asarray(value, dtype=np.float32), f"activation of layer {name}")
                for name, value in outputs.items()
            }
            mosaics = (
                {name: activation_mosaic_png(value[0]) for name, value in values.items()} if mosaic else {}
            )
            return values, mosaics

        values, mosaics = await asyncio.get_running_loop().run_in_executor(self.executor, compute)
        return Activations(loaded, values, mosaics)

    # -- models ------------------------------------------------------------------------------------------

    def models(self) -> dict[str, list[VersionStatus]]:
        """Every model of the repository and its versions' states (with the reason a version is down)."""
        return self.registry.statuses()

    def metadata(self, model: str, version: int = 0) -> ModelMetadata:
        loaded = self.registry.get(model, version)
        return ModelMetadata(
            loaded, self.registry.statuses().get(loaded.name, []), explain_methods(loaded.model)
        )

    # -- filters and explanations ------------------------------------------------------------------------

    async def filters(
        self, model: str, version: int, layer: str, input_channel: int = -1, mosaic: bool = False
    ) -> FiltersResult:
        """A Conv/Dense layer's kernel and bias in Keras layout, and with `mosaic` the filter picture."""
        loaded = self.registry.get(model, version)
        return await asyncio.get_running_loop().run_in_executor(
            self.executor,
            functools.partial(
                self.insight.get_filters, loaded.model, layer, mosaic=mosaic, input_channel=input_channel
            ),
        )

    async def explain(
        self,
        model: str,
        version: int,
        image: ImageInput,
        options: ExplainOptions,
        deadline: float | None = None,
    ) -> ExplainResult:
        """A heatmap of what made the model answer a class: the image decoded as for Classify, its occluded
        copies sent through the version's dynamic batcher chunk by chunk (each chunk carries the deadline,
        so an expired explanation stops being computed), or Grad-CAM's gradient graph."""
        loaded = self.registry.get(model, version)
        batch = await prepare_batch(
            [image], loaded.spec, self.limits, self.decode_executor, **self._decoding(deadline)
        )

        async def classify(chunk: np.ndarray) -> np.ndarray:
            # A chunk is a ready-made batch: it may compute beside another one rather than wait to merge.
            return await loaded.batcher.submit(chunk, deadline, bulk=len(chunk) > 1)

        settings = loaded.batcher.settings
        result = await self.insight.explain_async(
            loaded.model,
            batch[0],
            options,
            classify,
            settings.max_batch_size,
            self.executor,
            chunks_in_flight=settings.max_concurrent_batches if settings.enabled else 1,
        )
        if not (np.isfinite(result.heatmap).all() and np.isfinite(result.target_score)):
            raise InvalidRequestError(
                "the explanation is not finite (NaN or infinity): the image's values or the occlusion fill "
                f"value ({options.fill_value:g}) are outside the range the model can compute with",
                0,
            )
        return result

    def _decoding(self, deadline: float | None = None) -> dict[str, Any]:
        """How a big request is decoded here: its turn of the worker's budget, its deadline, and where
        images too big to slice go when the rest is decoded on the loop."""
        return {"budget": self.decode_budget, "deadline": deadline, "offload": self.executor}
