"""The gRPC transport: the cnnserve.v1 servicer over the data plane, the converters between protos and
core values, the call runner (hooks and the one status mapping), the server, its worker supervisor, the
health probe and the Python client.
"""
