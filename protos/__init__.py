"""The wire contracts: cnnserve's gRPC service and model config schema, and the Open Inference Protocol.

Import the generated modules from here: `from cnnserve.protos import inference_pb2, model_config_pb2` for
cnnserve.v1, `from cnnserve.protos import oip_pb2, oip_pb2_grpc, oip_model_config_pb2` for the Open
Inference Protocol (package `inference`, under `inference/`). They load on first use, so code that needs
only the config schema (preprocessing in the batch job's decoder processes, say) does not pay for importing
grpc with `inference_pb2_grpc`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # static checkers see the modules the lazy attributes below load
    from cnnserve.protos.cnnserve.v1 import inference_pb2, inference_pb2_grpc, model_config_pb2
    from cnnserve.protos.inference import grpc_service_pb2 as oip_pb2
    from cnnserve.protos.inference import grpc_service_pb2_grpc as oip_pb2_grpc
    from cnnserve.protos.inference import model_config_pb2 as oip_model_config_pb2

_MODULES = {
    "inference_pb2": "cnnserve.protos.cnnserve.v1.inference_pb2",
    "inference_pb2_grpc": "cnnserve.protos.cnnserve.v1.inference_pb2_grpc",
    "model_config_pb2": "cnnserve.protos.cnnserve.v1.model_config_pb2",
    "oip_pb2": "cnnserve.protos.inference.grpc_service_pb2",
    "oip_pb2_grpc": "cnnserve.protos.inference.grpc_service_pb2_grpc",
    "oip_model_config_pb2": "cnnserve.protos.inference.model_config_pb2",
}
__all__ = [
    "inference_pb2",
    "inference_pb2_grpc",
    "model_config_pb2",
    "oip_model_config_pb2",
    "oip_pb2",
    "oip_pb2_grpc",
]


def __getattr__(name: str) -> ModuleType:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_MODULES[name])
    globals()[name] = module
    return module
