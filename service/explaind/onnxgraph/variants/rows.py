"""Rows given in full: the prefix is the identity.

Tabular (LIME's sampled neighbourhood): lime_tabular draws its samples feature by feature, so they
are made on the host and travel as whole rows; the graph only adds the target score. Images (ROAD's
imputed images): the same, with the class probabilities too.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto

from ..builder import GraphBuilder
from ..signature import ModelSignature
from ..score import class_scores
from .base import PROBABILITIES_OUTPUT, SCORE_OUTPUT, VariantInterface, VariantSpec, register, scored_model


@register
@dataclass(frozen=True)
class TabularRows(VariantSpec):
    """Rows: row_input [F]; constants x0, target."""

    kind = "rows_tabular"
    score: str = "probability"

    def interface(self) -> VariantInterface:
        return VariantInterface(("x0", "target"), ("row_input",), (SCORE_OUTPUT,))

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        def given(b: GraphBuilder, sig: ModelSignature, x0: str, job_index: str) -> str:
            return b.input("row_input", TensorProto.FLOAT, ["rows", *sig.example_shape])

        return scored_model(model, sig, self.describe(), self.score, given)


@register
@dataclass(frozen=True)
class ImageRows(VariantSpec):
    """Rows: row_input (the image model's input shape, e.g. [C, H, W]); constants x0, target. For
    perturbed images that depend on more than a mask (ROAD's imputation solves a linear system per
    mask), made on the host. Outputs the target score and every class's probability (ROAD reads
    whether the prediction survives)."""

    kind = "rows_image"
    score: str = "probability"

    def interface(self) -> VariantInterface:
        return VariantInterface(("x0", "target"), ("row_input",), (SCORE_OUTPUT, PROBABILITIES_OUTPUT))

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        def given(b: GraphBuilder, sig: ModelSignature, x0: str, job_index: str) -> str:
            return b.input("row_input", TensorProto.FLOAT, ["rows", *sig.example_shape])

        def probabilities(b: GraphBuilder, value: str, job_index: str, x0: str) -> None:
            b.output(class_scores(b, sig.output_name, "probability", sig.scores), PROBABILITIES_OUTPUT,
                     TensorProto.FLOAT, ["rows", None])

        return scored_model(model, sig, self.describe(), self.score, given, probabilities)
