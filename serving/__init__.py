"""Serving: the model repository, ONNX Runtime sessions, preprocessing, batching, gRPC, client, batch jobs."""
