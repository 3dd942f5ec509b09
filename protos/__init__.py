"""The wire contract: the gRPC service and the model config schema, with their generated modules.

Import the generated modules from here: `from cnnserve.protos import inference_pb2, model_config_pb2`.
"""

from cnnserve.protos.cnnserve.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    model_config_pb2,
)

__all__ = ["inference_pb2", "inference_pb2_grpc", "model_config_pb2"]
