"""The wire contract: the gRPC service and the model config schema, with their generated modules.

Import the generated modules from here: `from cnnserve.protos import inference_pb2, model_config_pb2`.
They load on first use, so code that needs only the config schema (preprocessing in the batch job's
decoder processes, say) does not pay for importing grpc with `inference_pb2_grpc`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # static checkers see the modules the lazy attributes below load
    from cnnserve.protos.cnnserve.v1 import inference_pb2, inference_pb2_grpc, model_config_pb2

__all__ = ["inference_pb2", "inference_pb2_grpc", "model_config_pb2"]


def __getattr__(name: str) -> ModuleType:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"cnnserve.protos.cnnserve.v1.{name}")
    globals()[name] = module
    return module
