"""Serving: repository, ONNX Runtime sessions, preprocessing, dynamic batching, gRPC, client, batch jobs."""
