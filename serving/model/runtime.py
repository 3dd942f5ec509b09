"""ONNX Runtime sessions for model versions, and turning any classification head into probabilities.

One session per model version, created once and warmed up. The execution provider comes from the
requested device and what this onnxruntime build offers; the choice is logged and exposed so metadata can
report what actually runs the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnserve.protos import model_config_pb2
from cnnserve.serving.errors import DeviceUnavailableError, LayerNotFoundError, ModelLoadError, shown
from cnnserve.serving.model.repository import ModelVersion
from cnnserve.serving.settings import DEFAULT_MAX_BATCH_SIZE

LOG = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


def import_onnxruntime():
    """Import onnxruntime with an install hint, since its flavour is an extra (`cpu` or `gpu`)."""
    try:
        import onnxruntime
    except ImportError as error:
        raise DeviceUnavailableError(
            "onnxruntime is not installed: install `cnnserve[cpu]` (onnxruntime) or `cnnserve[gpu]` "
            "(onnxruntime-gpu), never both"
        ) from error
    return onnxruntime


def choose_providers(device: str, preferred: Sequence[str] = ()) -> list[str]:
    """Execution providers for a device request: `cuda` must get CUDA, `auto` takes it when present."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    available = set(import_onnxruntime().get_available_providers())
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise DeviceUnavailableError(
                f"device 'cuda' requested but this onnxruntime offers only {sorted(available)}; "
                "install onnxruntime-gpu with CUDA and cuDNN, or use --device cpu/auto"
            )
        return [CUDA, CPU]
    ordered = [p for p in preferred if p in available] or ([CUDA] if CUDA in available else [])
    return [*dict.fromkeys([*ordered, CPU])]


@dataclass(frozen=True)
class SessionOptions:
    device: str = "auto"
    intra_op_threads: int = 0  # 0 = ONNX Runtime's default (all physical cores)
    inter_op_threads: int = 0
    # ONNX Runtime's pool threads spin while waiting for work; off, they sleep, which leaves the cores to
    # the other workers and the gRPC threads when a server shares a small machine.
    allow_spinning: bool = True
    # ONNX Runtime's CPU arena keeps a run's buffers for the next one, which is what makes it fast: without
    # it every batch's big buffers are fresh mappings whose pages are faulted in again (1.6-1.8x the CPU
    # per image at batches of 16-256 in a worker, bench/bench_ort_arena.py). But it keeps every buffer it
    # ever held and grows by doubling, so a batch bigger than any before (a request's own number of images
    # on the activation graph, two batches of a model at once) would add a step to the process's memory
    # that never comes back. So a run ends by shrinking the arena at most once per this many seconds
    # (`ArenaShrinker`): what lies beyond its first region and is not in use is freed, and the next runs
    # take back only what they need. Shrinking after every run (0) would cost as much as no arena.
    cpu_memory_arena: bool = True
    arena_shrink_interval_s: float = 10.0  # negative: never shrink


class ArenaShrinker:
    """The RunOptions of one session's runs: ONNX Runtime's defaults, or, once per interval, the arena
    shrunk at the end of the run (ONNX Runtime's memory.enable_memory_arena_shrinkage). Only for a session
    on the CPU alone: a CUDA session's memory is the GPU's, under its own arena."""

    def __init__(self, options: SessionOptions, providers: Sequence[str] = (CPU,)) -> None:
        self._interval = options.arena_shrink_interval_s
        self._shrinking = None
        if options.cpu_memory_arena and self._interval >= 0 and list(providers) == [CPU]:
            ort = import_onnxruntime()
            self._shrinking = ort.RunOptions()
            self._shrinking.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._next = 0.0

    def run_options(self):
        """The options for the run about to start (None: ONNX Runtime's defaults). Threads may race here;
        at worst two runs shrink, which is harmless."""
        if self._shrinking is None:
            return None
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self._interval
        return self._shrinking


# Sessions this process has created: a session's thread pools do not survive a fork (see jobs/engines/local).
_sessions_created = 0


def sessions_created() -> int:
    return _sessions_created


def create_session(path: Path, providers: Sequence[str], options: SessionOptions):
    global _sessions_created
    ort = import_onnxruntime()
    session_options = ort.SessionOptions()
    if options.intra_op_threads > 0:
        session_options.intra_op_num_threads = options.intra_op_threads
    if options.inter_op_threads > 0:
        session_options.inter_op_num_threads = options.inter_op_threads
    if not options.allow_spinning:
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session_options.enable_cpu_mem_arena = options.cpu_memory_arena
    _sessions_created += 1
    try:
        return ort.InferenceSession(str(path), sess_options=session_options, providers=list(providers))
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ModelLoadError(f"ONNX Runtime cannot load {path}: {error}") from error


def probabilities(raw: np.ndarray, kind: int, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """Class probabilities from a head's output: softmax as is, logits via softmax, sigmoid as (1-p, p).

    Export's parity check calls it with float64, so its errors measure the graph, not the arithmetic.
    """
    raw = np.asarray(raw, dtype=dtype)
    if kind == model_config_pb2.LOGITS:
        shifted = raw - raw.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)
    if kind == model_config_pb2.SIGMOID:
        p = raw.reshape(raw.shape[0], -1)[:, :1]
        return np.concatenate([1.0 - p, p], axis=1)
    return raw


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best classes per row, best first (ties: lower index first)."""
    k = min(k, probs.shape[1])
    if k == 1:  # the common case, per request on the serving path: argmax keeps the lower index on ties
        best = probs.argmax(axis=1)
        return best[:, np.newaxis], probs[np.arange(len(probs)), best][:, np.newaxis]
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, axis=1)


class ModelRuntime:
    """One model version's ONNX Runtime session: classification and activation outputs."""

    def __init__(
        self, model: ModelVersion, options: SessionOptions | None = None, with_activations: bool = True
    ) -> None:
        """`with_activations=False` skips the activations graph: batch jobs only classify."""
        self.model = model
        self.options = options or SessionOptions()
        config = model.config
        self.providers_requested = choose_providers(self.options.device, config.execution.providers)
        self.session = create_session(model.model_file, self.providers_requested, self.options)
        self._arena = ArenaShrinker(self.options, self.session.get_providers())
        self._activation_arena = ArenaShrinker(self.options, self.session.get_providers())
        self.providers: list[str] = list(self.session.get_providers())
        if self.options.device == "cuda" and CUDA not in self.providers:
            # onnxruntime-gpu lists CUDA as available even without a GPU, then quietly falls back to the CPU.
            raise DeviceUnavailableError(
                f"device 'cuda' requested but ONNX Runtime could not start CUDA for {model.model_file} "
                f"(running on {', '.join(self.providers)}): no GPU visible, or the driver, CUDA or cuDNN "
                "libraries do not match this onnxruntime-gpu"
            )
        self.input_name = config.input.name
        self.output_name = config.output.name
        self.output_kind = config.output_kind
        self._activation_session = self.session if with_activations else None
        if with_activations and model.activations_file != model.model_file:
            self._activation_session = create_session(
                model.activations_file, self.providers_requested, self.options
            )
        self.activation_outputs = {layer.name: layer.output_name for layer in config.activation_layers}
        LOG.info(
            "loaded %s version %d from %s on %s",
            model.name,
            model.version,
            model.model_file,
            ", ".join(self.providers),
        )

    @property
    def input_dims(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.model.config.input.dims)

    @property
    def max_batch_size(self) -> int:
        return self.model.config.max_batch_size or DEFAULT_MAX_BATCH_SIZE

    def warm_up(self, batch_size: int = 0) -> float:
        """Run one batch (default: full-size) so the first real request does not pay for allocation;
        returns seconds."""
        start = time.perf_counter()
        batch = np.zeros((batch_size or self.max_batch_size, *self.input_dims), dtype=np.float32)
        self.classify(batch)
        if self._activation_session is not None and self._activation_session is not self.session:
            self.activations(batch[:1], list(self.activation_outputs))
        return time.perf_counter() - start

    def raw_output(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch}, self._arena.run_options())[0]

    def classify(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, num_classes) for a preprocessed float32 batch (N, *input_dims)."""
        return probabilities(self.raw_output(batch), self.output_kind)

    def activations(self, batch: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """The named layers' activations for a batch; layers must be activation layers of the config."""
        unknown = [layer for layer in layers if layer not in self.activation_outputs]
        if unknown:
            raise LayerNotFoundError(
                f"model {self.model.name!r} has no activation layer {shown(unknown[0])}; "
                f"layers: {', '.join(self.activation_outputs)}"
            )
        if self._activation_session is None:
            raise RuntimeError(f"this runtime of {self.model.name!r} was created without activations")
        names = [self.activation_outputs[layer] for layer in layers]
        outputs = self._activation_session.run(
            names, {self.input_name: batch}, self._activation_arena.run_options()
        )
        return dict(zip(layers, outputs, strict=True))
