"""cnnserve: Keras image classifiers to production: train, export to ONNX with proven parity, serve."""

__version__ = "0.1.0"
