"""Tabular rows given in full (LIME's sampled neighbourhood): the prefix is the identity.

lime_tabular draws its samples feature by feature, so they are made on the host and travel as
whole rows; the graph only adds the target score.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto

from ..builder import GraphBuilder
from ..signature import ModelSignature
from .base import SCORE_OUTPUT, VariantInterface, VariantSpec, register, scored_model


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
