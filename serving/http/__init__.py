"""The Open Inference Protocol over HTTP/REST, served on the gRPC server's process and event loop."""
