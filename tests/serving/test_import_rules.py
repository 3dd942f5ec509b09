"""Who may import whom: serving never imports TensorFlow, Keras, training, export or matplotlib at module
level, and the core and the batcher know nothing of gRPC -- checked in the source and in a clean process."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parents[2] / "serving"

# Never at module level anywhere in serving/ (optional extras are imported inside functions, guarded).
FORBIDDEN_EVERYWHERE = {
    "tensorflow",
    "keras",
    "tf2onnx",
    "onnx",
    "matplotlib",
    "tqdm",
    "mlxtend",
    "cnnserve.training",
    "cnnserve.export",
}
# Never at all (not even inside a function) in the transport-free rooms.
FORBIDDEN_IN_CORE = {
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "cnnserve.serving.grpc",
    "cnnserve.serving.http",
    "httptools",
    "cnnserve.protos.cnnserve.v1.inference_pb2_grpc",
    "cnnserve.protos.inference.grpc_service_pb2_grpc",
}
TRANSPORT_FREE = ("core", "batching", "model", "insight")


def _imports(tree: ast.AST, module_level_only: bool) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    nodes = tree.body if module_level_only and isinstance(tree, ast.Module) else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _matches(name: str, forbidden: set[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


def _sources() -> list[Path]:
    files = sorted(SERVING.rglob("*.py"))
    assert len(files) > 40, "serving/ sources not found"
    return files


def test_no_heavy_or_training_import_at_module_level() -> None:
    offending = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, name in _imports(tree, module_level_only=True):
            if _matches(name, FORBIDDEN_EVERYWHERE):
                offending.append(f"{path.relative_to(SERVING.parent)}:{line}: import {name}")
    assert not offending, "\n".join(offending)


@pytest.mark.parametrize("room", TRANSPORT_FREE)
def test_transport_free_rooms_never_import_grpc(room: str) -> None:
    offending = []
    for path in sorted((SERVING / room).rglob("*.py")):
        for line, name in _imports(ast.parse(path.read_text(encoding="utf-8")), module_level_only=False):
            if _matches(name, FORBIDDEN_IN_CORE):
                offending.append(f"{path.relative_to(SERVING.parent)}:{line}: import {name}")
    assert not offending, "\n".join(offending)


def test_a_clean_process_importing_all_of_serving_loads_no_tensorflow(tmp_path: Path) -> None:
    """Importing every serving module loads none of the forbidden libraries; the data plane loads no gRPC."""
    code = """
import importlib, json, pkgutil, sys
import cnnserve.serving.core.dataplane, cnnserve.serving.jobs.job, cnnserve.serving.batching.batcher
transport_free = sorted({m.split('.')[0] for m in sys.modules} & {'grpc', 'grpc_health', 'grpc_reflection'})
import cnnserve.serving
for info in pkgutil.walk_packages(cnnserve.serving.__path__, 'cnnserve.serving.'):
    importlib.import_module(info.name)
print(json.dumps({'transport_free': transport_free, 'loaded': sorted(sys.modules)}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["transport_free"] == [], (
        f"the data plane or the batch job imported {report['transport_free']}"
    )
    loaded = report["loaded"]
    heavy = sorted(name for name in loaded if _matches(name, FORBIDDEN_EVERYWHERE))
    assert heavy == [], f"importing serving loaded {heavy}"
