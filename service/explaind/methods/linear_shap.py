"""Linear SHAP (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions", Corollary 1;
shap's LinearExplainer, interventional): exact Shapley values of a linear model's margin.

Why: for m_c(x) = w_c . x + b_c the Shapley values with features independent of each other are
phi_i = w_ci (x_i - E[x_i]), the expectation over the model's background rows; no sampling, one
pass over the background. The weights are read from the graph: the model's output (through
Identity / Cast, an optional Softmax or Sigmoid, and an L1 Normalizer after a probability transform)
must come from ai.onnx.ml LinearClassifier / LinearRegressor, or from Gemm (transA 0) or MatMul with
constant weights, plus an optional constant Add, reading the model's input directly. Anything else is
FAILED_PRECONDITION naming the node found. The weights are checked to reproduce the model's output
for the input first.

Score: LOGIT (default): the margin m_c, also for a model that outputs probabilities (a logistic
regression exported with its Softmax or Sigmoid); PROBABILITY only when the output is the margin
itself (no transform: the explanation of a softmax is not linear). Figures: base_value
(w_c . E[x] + b_c) and f_x (m_c(x)). No parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..config import Settings
from ..errors import FailedPrecondition
from .base import LOGIT, PROBABILITY, Method, MethodContext, ModelView, Result

PASS_THROUGH = {"Identity", "Cast"}
INPUT_PASS_THROUGH = {"Identity", "Cast", "Flatten"}
OUTPUT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class LinearModel:
    """margins = weights @ x + bias; the output is transform(margins), L1-normalised when `normalized`."""

    source: str
    weights: np.ndarray   # [K, F]
    bias: np.ndarray      # [K]
    transform: str        # NONE | SOFTMAX | LOGISTIC
    normalized: bool = False

    def outputs(self, x: np.ndarray) -> np.ndarray:
        m = self.weights @ x + self.bias
        if self.transform == "SOFTMAX":
            e = np.exp(m - m.max())
            m = e / e.sum()
        elif self.transform == "LOGISTIC":
            m = 1.0 / (1.0 + np.exp(-m))
        if self.normalized:
            m = m / max(float(np.abs(m).sum()), 1e-300)
        return m


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(value: Any, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def read_linear(model: onnx.ModelProto, input_name: str, output_name: str, num_features: int) -> LinearModel:
    """The linear map producing the model's output (module docstring); FailedPrecondition otherwise."""
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t).astype(np.float64)
    producer = {out: node for node in graph.node for out in node.output}

    def refuse(why: str) -> FailedPrecondition:
        return FailedPrecondition(f"linear_shap needs a linear model (LinearClassifier, LinearRegressor, or Gemm / "
                                  f"MatMul + Add, optionally then Softmax or Sigmoid) producing the output "
                                  f"{output_name!r}; {why}")

    tensor, transform, normalized = output_name, "NONE", False
    bias: np.ndarray | None = None
    while True:
        node = producer.get(tensor)
        if node is None:
            raise refuse(f"{tensor!r} is not produced by such a model")
        op = node.op_type
        attrs = _attributes(node)
        if op in PASS_THROUGH:
            tensor = node.input[0]
        elif op == "Normalizer" and transform == "NONE" and bias is None and _text(attrs.get("norm"), "MAX") == "L1":
            normalized, tensor = True, node.input[0]
        elif op in ("Softmax", "Sigmoid") and transform == "NONE" and bias is None:
            if op == "Softmax" and int(attrs.get("axis", -1)) not in (-1, 1):
                raise refuse(f"its Softmax node {node.name!r} is over axis {attrs.get('axis')}, not the classes")
            transform, tensor = ("SOFTMAX" if op == "Softmax" else "LOGISTIC"), node.input[0]
        elif op in ("LinearClassifier", "LinearRegressor") and node.domain == "ai.onnx.ml":
            if transform != "NONE":
                raise refuse(f"a {transform} follows the {op} {node.name!r}")
            if op == "LinearClassifier" and list(node.output).index(tensor) != 1:
                raise refuse(f"the output is the label of {op} {node.name!r}")
            coefficients = np.asarray(attrs.get("coefficients", []), np.float64)
            rows = len(coefficients) // max(num_features, 1)
            if rows == 0 or rows * num_features != len(coefficients):
                raise refuse(f"the {op}'s {len(coefficients)} coefficients are not a multiple of the "
                             f"{num_features} features")
            weights = coefficients.reshape(rows, num_features)
            intercepts = np.asarray(attrs.get("intercepts", np.zeros(rows)), np.float64)
            if len(intercepts) != rows:
                raise refuse(f"the {op} has {len(intercepts)} intercepts for {rows} rows of coefficients")
            post = _text(attrs.get("post_transform"), "NONE")
            if post not in ("NONE", "SOFTMAX", "LOGISTIC"):
                raise refuse(f"the {op}'s post_transform is {post}")
            labels = attrs.get("classlabels_ints") or attrs.get("classlabels_strings") or []
            if op == "LinearClassifier" and rows == 1 and len(labels) == 2:  # onnxruntime's binary case: [-s, s]
                weights, intercepts = np.concatenate([-weights, weights]), np.concatenate([-intercepts, intercepts])
            _check_input(node.input[0], input_name, producer, refuse)
            return LinearModel(f"{op} {node.name!r}", weights, intercepts, post, normalized)
        elif op == "Add" and bias is None and any(i in constants for i in node.input):
            bias = next(constants[i] for i in node.input if i in constants).reshape(-1)
            tensor = next(i for i in node.input if i not in constants)
        elif op in ("Gemm", "MatMul") and node.input[1] in constants:
            weights = constants[node.input[1]]
            if weights.ndim != 2:
                raise refuse(f"its {op} node {node.name!r} has {weights.ndim}-D weights")
            if op == "Gemm":
                if int(attrs.get("transA", 0)):
                    raise refuse(f"its Gemm node {node.name!r} has transA")
                weights = weights.T if int(attrs.get("transB", 0)) else weights
                weights = weights * float(attrs.get("alpha", 1.0))
                if len(node.input) > 2 and node.input[2]:
                    if node.input[2] not in constants:
                        raise refuse(f"its Gemm node {node.name!r} has a computed C")
                    c = constants[node.input[2]].reshape(-1) * float(attrs.get("beta", 1.0))
                    bias = c if bias is None else bias + c
            if weights.shape[0] != num_features:
                raise refuse(f"its {op} node {node.name!r} takes {weights.shape[0]} features, the model "
                             f"{num_features}")
            k = weights.shape[1]
            total = np.zeros(k) if bias is None else np.broadcast_to(bias, (k,)).astype(np.float64)
            _check_input(node.input[0], input_name, producer, refuse)
            return LinearModel(f"{op} {node.name!r}", weights.T.copy(), total.copy(), transform, normalized)
        else:
            raise refuse(f"it comes from a {op} node ({node.name!r})")


def _check_input(tensor: str, input_name: str, producer: dict[str, onnx.NodeProto], refuse: Any) -> None:
    while tensor != input_name:
        up = producer.get(tensor)
        if up is None or up.op_type not in INPUT_PASS_THROUGH:
            raise refuse(f"the linear map reads {tensor!r}, not the model's input {input_name!r}")
        tensor = up.input[0]


def linear_model(model: ModelView) -> LinearModel:
    if model.graph is None:
        raise FailedPrecondition("linear_shap reads the weights from the model's graph, which this model lacks")
    sig = model.signature
    graph = model.graph
    return model.derive("linear_shap", lambda: read_linear(graph, sig.input_name, sig.output_name,
                                                           int(np.prod(sig.example_shape))))


class LinearShap(Method):
    name = "linear_shap"
    title = "Linear SHAP"
    reference = "Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions; shap LinearExplainer"
    description = "Exact Shapley values w_i (x_i - E[x_i]) of a linear ONNX model's margin, read from the graph."
    kinds = frozenset({"tabular"})
    default_score = LOGIT
    margin_logit = True
    figures = ("base_value", "f_x")

    def unavailable(self, model: ModelView) -> str:
        try:
            linear_model(model)
        except FailedPrecondition as why:
            return str(why)
        return ""

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        if model.background is None:
            raise FailedPrecondition("linear_shap needs background rows (E[x]): add `background:` to the model's "
                                     "model.yaml")
        linear = linear_model(model)
        if score == PROBABILITY and (linear.transform != "NONE" or linear.normalized or model.signature.scores == "logits"):
            raise FailedPrecondition(f"linear_shap explains the margin of {linear.source}; its probability "
                                     f"({linear.transform.lower()} of the margins) is not linear: ask for the LOGIT score")
        return params

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Result:
        linear = linear_model(ctx.model)
        x = ctx.x.astype(np.float64).reshape(-1)
        prediction = ctx.prediction
        output = prediction.logits if prediction.logits is not None else prediction.probabilities  # type: ignore[union-attr]
        ours = linear.outputs(x)
        output = np.asarray(output, np.float64).ravel()
        if ours.shape != output.shape or np.max(np.abs(ours - output)) > OUTPUT_TOLERANCE * max(1.0, np.abs(output).max()):
            raise FailedPrecondition(f"the weights read from {linear.source} do not reproduce the model's output "
                                     "for this input")
        mean = np.asarray(ctx.model.background, np.float64).reshape(len(ctx.model.background), -1).mean(axis=0)
        w, b = linear.weights[ctx.target], float(linear.bias[ctx.target])
        phi = w * (x - mean)
        base = float(w @ mean) + b
        return Result(phi.astype(np.float32).reshape(ctx.x.shape), {"base_value": base, "f_x": float(w @ x) + b})
