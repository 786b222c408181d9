"""Linear classifiers as ONNX graphs: their scores are known in closed form, so engine and method
results can be checked against numpy exactly."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from explaind.config import Settings
from explaind.engine.engine import ServedModel
from explaind.onnxgraph.signature import ModelSignature


def linear_model(example_shape: tuple[int, ...], classes: int, seed: int = 0, opset: int = 17) -> tuple[onnx.ModelProto, np.ndarray]:
    """input [N, *example_shape] -> Flatten -> MatMul(W) -> logits [N, classes]; returns (model, W)."""
    weights = np.random.default_rng(seed).normal(size=(int(np.prod(example_shape)), classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "W"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *example_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, weights


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def linear_score(weights: np.ndarray, x: np.ndarray, target: int, score: str) -> float:
    """The score of class `target` of the linear model with `weights` at one example `x` (float64)."""
    logits = x.reshape(-1).astype(np.float64) @ weights.astype(np.float64)
    return float(softmax(logits)[target] if score == "probability" else logits[target])


def served_linear(name: str, example_shape: tuple[int, ...], classes: int, layout: str = "NCHW",
                  max_batch_rows: int = 16, max_delay_ms: float = 1.0, seed: int = 0) -> tuple[ServedModel, np.ndarray]:
    model, weights = linear_model(example_shape, classes, seed)
    signature = ModelSignature("input", "logits", example_shape, layout, "logits")
    return ServedModel(name, model, signature, max_batch_rows, max_delay_ms), weights


def settings(**overrides: Any) -> Settings:
    return Settings(intra_op_threads=1, **overrides)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
