"""The model repository on disk and what runs it: versions and configs, ONNX Runtime sessions and
execution providers, the preprocessing a config prescribes, and the layer weights export wrote.
"""
