"""Filters and explanations for any model version, without gRPC: what the data plane and `--repo` mode call.

An `Insight` caches, per model version (a small LRU), its weight store, its Grad-CAM session and the last
measured occlusion rate. An explanation is written once, as a sequence of steps (`_steps`), and run by two
drivers: `explain` (blocking, any `classify(batch) -> probabilities`, for `--repo` mode) and
`explain_async` (the server: occluded copies go through the model's dynamic batcher -- the Classify path --
as ready-made chunks, two in flight, cut to even sizes, so a worker's one-thread sessions compute them side
by side while Classify requests queued meanwhile ride along or run between them, never behind the whole
explanation). Grad-CAM's session call and the numpy reductions run in the caller's executor.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnserve.serving.errors import GradCamUnavailableError, InvalidRequestError, ModelLoadError
from cnnserve.serving.insight.filters import filters_mosaic_png
from cnnserve.serving.insight.gradcam import GradCamSession, gradcam_available, gradcam_heatmap
from cnnserve.serving.insight.occlusion import ChunkSizer, OcclusionPlan, even_chunk, occluded_chunk
from cnnserve.serving.insight.rendering import overlay_png
from cnnserve.serving.model.repository import ModelVersion
from cnnserve.serving.model.runtime import SessionOptions, top_k
from cnnserve.serving.model.weights import LayerFilters, WeightStore

# Occluded copies are sent in chunks that each take about this long (at most max_batch_size images);
# 0 = always full batches.
DEFAULT_CHUNK_SECONDS = 0.05

OCCLUSION = "occlusion"
GRADCAM = "gradcam"
METHODS = (OCCLUSION, GRADCAM)


@dataclass(frozen=True)
class FiltersResult:
    model: str
    version: int
    filters: LayerFilters
    mosaic_png: bytes


@dataclass(frozen=True)
class ExplainOptions:
    method: str = OCCLUSION
    target_class: int | None = None  # None = the top-1 class of Classify
    patch_size: int = 0  # 0 = the default for the input size
    stride: int = 0  # 0 = the default for the input size
    fill_value: float = 0.0  # in the model's input scale
    overlay: bool = False


@dataclass(frozen=True)
class ExplainResult:
    model: str
    version: int
    method: str
    target_index: int
    target_label: str
    target_score: float  # the probability of the target class on the unaltered image
    heatmap: np.ndarray  # (height, width) float32 at the model's input size
    overlay_png: bytes
    # Occlusion only: the settings used and how many occluded copies were scored.
    patch_size: int = 0
    stride: int = 0
    copies: int = 0


class _VersionInsight:
    """Per model version: its weight store and (lazily) its gradient-graph session."""

    def __init__(self, model: ModelVersion, options: SessionOptions) -> None:
        self.model = model
        self.weights = WeightStore(model)
        self._options = options
        self._lock = threading.Lock()
        self._gradcam: GradCamSession | None = None
        # The last measured occlusion round trip per image: the next explanation's first chunk size.
        self.seconds_per_image: float | None = None

    def check_gradcam(self) -> None:
        available, reason = gradcam_available(self.model)
        if not available:
            raise GradCamUnavailableError(
                f"model {self.model.name!r} version {self.model.version} has no Grad-CAM: {reason}"
            )

    def gradcam_session(self) -> GradCamSession:
        self.check_gradcam()
        with self._lock:
            if self._gradcam is None:
                try:
                    self._gradcam = GradCamSession(self.model, self._options)
                except ModelLoadError as error:
                    raise GradCamUnavailableError(
                        f"model {self.model.name!r} version {self.model.version} has no Grad-CAM: {error}"
                    ) from error
            return self._gradcam


@dataclass(frozen=True)
class _Classify:
    """A step of an explanation: classify this batch through the batcher, send back probabilities."""

    batch: np.ndarray


@dataclass(frozen=True)
class _Submit:
    """A step of an explanation: start classifying this batch, send back a handle for `_Collect` at once."""

    batch: np.ndarray


@dataclass(frozen=True)
class _Collect:
    """A step of an explanation: wait for a submitted batch, send back its probabilities."""

    handle: Any


@dataclass(frozen=True)
class _Call:
    """A step of an explanation: run this function and send back its result -- off the event loop
    unless it is `cheap` (then a thread hop would cost more than the work)."""

    function: Callable[[], Any]
    cheap: bool = False


# Below these sizes a step runs on the event loop itself: an occluded chunk of this many bytes, a heatmap
# reduced from this many copies.
INLINE_CHUNK_BYTES = 1 << 20
INLINE_HEATMAP_COPIES = 256


_Steps = Generator[_Classify | _Submit | _Collect | _Call, Any, ExplainResult]


class Insight:
    """Filters and explanations for any model version; caches per-version state (LRU of `cache_size`)."""

    def __init__(
        self,
        session_options: SessionOptions | None = None,
        cache_size: int = 16,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    ) -> None:
        self._options = session_options or SessionOptions()
        self._chunk_seconds = chunk_seconds
        self._cache_size = max(1, cache_size)
        self._lock = threading.Lock()
        self._versions: OrderedDict[tuple[str, int, str], _VersionInsight] = OrderedDict()

    def _version(self, model: ModelVersion) -> _VersionInsight:
        key = (model.name, model.version, str(model.path))
        with self._lock:
            state = self._versions.get(key)
            if state is None or state.model.config is not model.config:  # new, or the version was reloaded
                state = _VersionInsight(model, self._options)
                self._versions[key] = state
            self._versions.move_to_end(key)
            while len(self._versions) > self._cache_size:
                self._versions.popitem(last=False)
            return state

    def weight_layers(self, model: ModelVersion) -> list[str]:
        """The layers `GetFilters` can return, for `GetModelMetadata.weight_layers`."""
        return self._version(model).weights.layers

    # -- GetFilters ------------------------------------------------------------------------------

    def get_filters(
        self, model: ModelVersion, layer: str, *, mosaic: bool = False, input_channel: int = -1
    ) -> FiltersResult:
        filters = self._version(model).weights.filters(layer)
        png = filters_mosaic_png(filters, model.config, input_channel) if mosaic else b""
        return FiltersResult(model.name, model.version, filters, png)

    # -- Explain ---------------------------------------------------------------------------------

    def explain(
        self,
        model: ModelVersion,
        image: np.ndarray,
        options: ExplainOptions,
        classify: Callable[[np.ndarray], np.ndarray],
        chunk_size: int,
    ) -> ExplainResult:
        """Blocking driver: `classify` runs a batch in this thread (e.g. `ModelRuntime.classify`)."""
        steps = self._steps(model, image, options, chunk_size)
        reply: Any = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as stop:
                return stop.value
            if isinstance(step, _Classify | _Submit):
                reply = classify(step.batch)  # computed now; its handle is the result
            elif isinstance(step, _Collect):
                reply = step.handle
            else:
                reply = step.function()

    async def explain_async(
        self,
        model: ModelVersion,
        image: np.ndarray,
        options: ExplainOptions,
        classify: Callable[[np.ndarray], Awaitable[np.ndarray]],
        chunk_size: int,
        executor: Executor | None = None,
        chunks_in_flight: int = 1,
    ) -> ExplainResult:
        """asyncio driver: occluded chunks go through `classify` (the batcher), `chunks_in_flight` at a
        time; Grad-CAM's session call and the numpy reductions run in `executor` (None: the loop's default).
        """
        loop = asyncio.get_running_loop()
        steps = self._steps(model, image, options, chunk_size, chunks_in_flight)
        reply: Any = None
        submitted: list[asyncio.Task[np.ndarray]] = []
        try:
            while True:
                try:
                    step = steps.send(reply)
                except StopIteration as stop:
                    return stop.value
                if isinstance(step, _Classify):
                    reply = await classify(step.batch)
                elif isinstance(step, _Submit):
                    reply = asyncio.ensure_future(classify(step.batch))
                    submitted.append(reply)
                elif isinstance(step, _Collect):
                    reply = await step.handle
                elif step.cheap:
                    reply = step.function()
                else:
                    reply = await loop.run_in_executor(executor, step.function)
        finally:
            for task in submitted:  # an error or a cancelled call: chunks still queued are not computed
                task.cancel()

    def _steps(
        self,
        model: ModelVersion,
        image: np.ndarray,
        options: ExplainOptions,
        chunk_size: int,
        chunks_in_flight: int = 1,
    ) -> _Steps:
        """The explanation as a sequence of steps, so the blocking and asyncio drivers share every line."""
        config = model.config
        if options.method not in METHODS:
            raise InvalidRequestError(f"unknown explain method {options.method!r}; choose one of {METHODS}")
        num_classes = model.num_classes
        target = options.target_class
        if target is not None and not 0 <= target < num_classes:
            raise InvalidRequestError(
                f"target class {target} is outside model {model.name!r}'s classes 0..{num_classes - 1}"
            )
        dims = tuple(int(d) for d in config.input.dims)
        image = np.ascontiguousarray(image, dtype=np.float32).reshape(dims)
        height, width = config.preprocessing.height, config.preprocessing.width
        state = self._version(model)

        if options.method == GRADCAM:
            state.check_gradcam()  # refuse before any work; the session itself is made off the event loop
            session = yield _Call(state.gradcam_session)
            probs = np.asarray((yield _Classify(image[None])))[0]
            target = int(top_k(probs[None], 1)[0][0, 0]) if target is None else target
            activations, gradients, _ = yield _Call(lambda: session.run(image, target))
            heatmap = yield _Call(lambda: gradcam_heatmap(activations, gradients, height, width))
            plan = None
        else:
            plan = OcclusionPlan.create(
                image, dims, height, width, options.patch_size, options.stride, options.fill_value
            )
            # Item 0 is the unaltered image (it rides with the first chunk), item i > 0 is copy i - 1.
            # Up to `chunks_in_flight` chunks wait or compute at once, so the batcher can run them side by
            # side on a CPU whose sessions use one thread each; results are collected in order.
            window = max(1, chunks_in_flight)
            sizer = ChunkSizer(chunk_size, self._chunk_seconds, state.seconds_per_image)
            image_bytes = plan.image.nbytes
            total = plan.size + 1
            scores: list[np.ndarray] = []
            pending: deque[tuple[Any, int, float]] = deque()
            start = 0
            chunk = even_chunk(total, sizer.next_size, window)
            while start < total or pending:
                if start < total and len(pending) < window:
                    if not sizer.next_size / 2 < chunk <= sizer.next_size:  # the rate has changed
                        chunk = even_chunk(total - start, sizer.next_size, window)
                    stop = min(start + chunk, total)
                    batch = yield _Call(
                        functools.partial(occluded_chunk, plan, start, stop),
                        cheap=(stop - start) * image_bytes <= INLINE_CHUNK_BYTES,
                    )
                    sent = time.perf_counter()
                    pending.append(((yield _Submit(batch)), stop - start, sent))
                    start = stop
                    continue
                handle, count, sent = pending.popleft()
                scores.append(np.asarray((yield _Collect(handle))))
                sizer.observe(count, time.perf_counter() - sent)
            state.seconds_per_image = sizer.seconds_per_image
            all_probs = np.concatenate(scores)
            probs = all_probs[0]
            target = int(top_k(probs[None], 1)[0][0, 0]) if target is None else target
            copies = all_probs[1:, target]
            heatmap = yield _Call(
                lambda: plan.heatmap(float(probs[target]), copies), cheap=plan.size <= INLINE_HEATMAP_COPIES
            )
        png = (
            (yield _Call(lambda: overlay_png(image, heatmap, config.preprocessing)))
            if options.overlay
            else b""
        )
        return ExplainResult(
            model=model.name,
            version=model.version,
            method=options.method,
            target_index=target,
            target_label=model.class_names[target],
            target_score=float(probs[target]),
            heatmap=np.asarray(heatmap, dtype=np.float32),
            overlay_png=png,
            patch_size=plan.patch if plan else 0,
            stride=plan.stride if plan else 0,
            copies=plan.size if plan else 0,
        )
