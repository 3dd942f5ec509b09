"""Keras → ONNX export with verified parity, activation outputs, fp16/int8 variants and the model repository."""
