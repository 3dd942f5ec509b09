"""Keras → ONNX export with verified parity, activation outputs, fp16/int8 variants, model repository."""
