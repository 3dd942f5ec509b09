"""The ONNX Runtime sessions export runs its checks and timings on: CPU, serving's optimisation level."""

from __future__ import annotations

from pathlib import Path


def make_session(path: Path, threads: int = 0):
    """A CPU ONNX Runtime session with serving's optimisation level (`threads` 0: ONNX Runtime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
