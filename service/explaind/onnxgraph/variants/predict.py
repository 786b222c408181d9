"""The model's own output for whole inputs: the prediction of every request, and the activations
a layer method reads (CAM, Score-CAM) when a layer is named.

Rows carry no code: each row is its job's input x0 as it is. Outputs: the raw output, the class
probabilities (softmax of logits, or the model's own) and, with `layer`, that tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto

from ..builder import GraphBuilder
from ..compose import model_opset, splice
from ..score import class_scores, declare_common_inputs
from ..signature import ModelSignature
from .base import PROBABILITIES_OUTPUT, RAW_OUTPUT, VariantInterface, VariantSpec, register

LAYER_OUTPUT = "layer"


@register
@dataclass(frozen=True)
class Predict(VariantSpec):
    """Rows: none (one row per job); constants x0."""

    kind = "predict"
    layer: str = ""

    def interface(self) -> VariantInterface:
        outputs = (RAW_OUTPUT, PROBABILITIES_OUTPUT) + ((LAYER_OUTPUT,) if self.layer else ())
        return VariantInterface(("x0",), (), outputs)

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        b = GraphBuilder(model_opset(model), self.describe())
        x0, job_index = declare_common_inputs(b, sig.example_shape)
        b.op("Gather", [x0, job_index], out=sig.input_name, axis=0)
        b.mark_model()
        b.output(sig.output_name, RAW_OUTPUT, TensorProto.FLOAT, ["rows", None])
        probabilities = class_scores(b, sig.output_name, "probability", sig.scores)
        b.output(probabilities, PROBABILITIES_OUTPUT, TensorProto.FLOAT, ["rows", None])
        if self.layer:
            b.output(self.layer, LAYER_OUTPUT, TensorProto.FLOAT, None)  # type: ignore[arg-type]
        return splice(model, sig.input_name, b)
