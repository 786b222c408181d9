"""Ranked replacement (evaluation curves: deletion, insertion, pixel flipping, IROF): a row replaces
the k best-ranked pixels or features of the input by a substrate.

Per job: the input x0, the substrate (what a replaced pixel or feature shows; the same shape as the
input) and the rank of every pixel [H * W] or feature [F] (0 = replaced first; pixels of one region
may share a rank, so a segment goes at once). Per row: `replaced` [1], how many ranks are replaced:
the row shows the substrate where rank < replaced and the input elsewhere. Insertion is the same
variant with the input and the substrate swapped. A curve of S steps is S + 1 rows of one int each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ..builder import GraphBuilder
from ..signature import ModelSignature
from .base import SCORE_OUTPUT, VariantInterface, VariantSpec, register, scored_model


def prefix(b: GraphBuilder, sig: ModelSignature, x0: str, job_index: str, image: bool) -> str:
    positions = int(np.prod(sig.spatial_shape)) if image else int(sig.example_shape[0])
    replaced = b.input("replaced", TensorProto.INT64, ["rows", 1])
    rank = b.input("rank", TensorProto.INT64, ["jobs", positions])
    substrate = b.input("substrate", TensorProto.FLOAT, ["jobs", *sig.example_shape])
    gone = b.op("Less", [b.op("Gather", [rank, job_index], axis=0), replaced])   # [R, P] bool
    if image:
        height, width = sig.spatial_shape
        shape = [-1, 1, height, width] if sig.layout == "NCHW" else [-1, height, width, 1]
        gone = b.op("Reshape", [gone, b.const(np.array(shape, np.int64))])
    return b.op("Where", [gone, b.job_rows(substrate, job_index), b.job_rows(x0, job_index)])


@register
@dataclass(frozen=True)
class Ranked(VariantSpec):
    """Rows: replaced [1] int64; constants x0, target, rank [P] int64, substrate (the input's shape)."""

    kind = "ranked"
    score: str = "probability"
    image: bool = True

    def interface(self) -> VariantInterface:
        return VariantInterface(("x0", "target", "rank", "substrate"), ("replaced",), (SCORE_OUTPUT,))

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        return scored_model(model, sig, self.describe(), self.score,
                            lambda b, sig, x0, job_index: prefix(b, sig, x0, job_index, self.image))
