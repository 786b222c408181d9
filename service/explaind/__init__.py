"""explaind: explanations of ONNX classifiers over gRPC."""

__version__ = "0.1.0"
