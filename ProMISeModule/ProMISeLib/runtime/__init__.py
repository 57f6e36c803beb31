"""Runtimes: the device and runtime choice, PyTorch and ONNX Runtime backends, the slice predictor."""
