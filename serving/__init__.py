"""Serving: the model repository, ONNX Runtime, dynamic batching, the gRPC server and client, batch jobs.

One folder per concern: model/, core/, batching/, insight/, observability/, grpc/, jobs/, cli/; errors.py
holds every error with the status a caller gets, settings.py every default. Never imports TensorFlow.
"""
