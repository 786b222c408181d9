"""ONNX graph construction: perturbation prefixes, score suffixes and their composition with a model."""
