"""DeepLIFT, rescale rule (Shrikumar, Greenside & Kundaje 2017, "Learning Important Features Through
Propagating Activation Differences"; Captum `DeepLift`).

attribution = (x - x0) * m, m the multipliers of the target score with respect to the input: the
backward pass of the gradient where every element-wise nonlinearity's derivative is replaced by
(y - y0) / (x - x0), its output and input differences between the input and the baseline (the
gradient where |x - x0| < 1e-10, Captum's eps), and max pooling takes Captum's rule; linear layers keep
their gradients (rules: onnxgraph/autodiff/rules/deep_lift.py). The input and the baseline run as
one doubled batch, as Captum runs them. Baseline x0: a constant (default 0, as Captum's), in model
input space. Figures: the convergence delta sum(attribution) - (f(x) - f(x0)) (Captum's
`return_convergence_delta`; 0 up to rounding for ReLU networks with linear layers and max pooling),
the sum, f(x) and f(x0). Score: the logit by default. One model evaluation on two rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine.job import RowChunk
from ..onnxgraph.variants import SCORE_OUTPUT
from ..onnxgraph.variants import gradient as g
from .base import MethodContext, Reducer, Result, Stage, Stages, row_chunks
from .gradient_base import GradientMethod, channel_reduction, reduce_channels
from .params import Float

RULE = "deep_lift"
FIGURES = ("convergence_delta", "attribution_sum", "f_input", "f_baseline")


class DeepLiftReducer(Reducer):
    """The mean over rows of (x - reference_r) * multipliers_r, and the mean scores of the inputs and
    the references (float64)."""

    def __init__(self, x: np.ndarray, rows: int) -> None:
        self.x = x.astype(np.float64)
        self.rows = rows
        self.total = np.zeros(x.shape, np.float64)
        self.f_input = 0.0
        self.f_reference = 0.0
        self.seen = 0

    def partial_unavailable(self) -> str:
        return "" if self.seen else "no row was evaluated"

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        grads = rows[g.INPUT_GRAD_OUTPUT].astype(np.float64)
        delta = self.x[None] - codes["reference"].astype(np.float64)
        self.total += (delta * grads).sum(axis=0) / self.rows
        self.f_input += float(np.sum(rows[SCORE_OUTPUT], dtype=np.float64)) / self.rows
        self.f_reference += float(np.sum(rows[g.REFERENCE_SCORE_OUTPUT], dtype=np.float64)) / self.rows
        self.seen += len(codes["row"])

    def figures(self) -> dict[str, float]:
        total = float(self.total.sum())
        return {"convergence_delta": total - (self.f_input - self.f_reference), "attribution_sum": total,
                "f_input": self.f_input, "f_baseline": self.f_reference}


def deep_lift_stage(ctx: MethodContext, references: np.ndarray) -> Stage[DeepLiftReducer]:
    """One row per reference ([K, ...] in model input space), each run beside the input."""
    references = np.ascontiguousarray(references, np.float32)
    variant = g.Gradient(score=ctx.score, rule=RULE, path=g.PATH_PAIR)
    rows = row_chunks({"reference": references}, 128)
    return Stage(variant, ctx.target_constants(), rows, len(references), DeepLiftReducer(ctx.x, len(references)))


class DeepLift(GradientMethod):
    name = "deep_lift"
    title = "DeepLIFT (rescale)"
    reference = "Shrikumar, Greenside & Kundaje 2017, Learning Important Features Through Propagating Activation " \
                "Differences; Captum DeepLift"
    description = "Input minus baseline times DeepLIFT multipliers (rescale rule), from one doubled pass."
    rules_needed = (RULE,)
    figures = FIGURES
    params = (
        Float("baseline", 0.0, "the baseline x0, in model input space"),
        channel_reduction("none"),
    )

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        reducer = yield deep_lift_stage(ctx, np.full((1, *ctx.x.shape), params["baseline"], np.float32))
        attribution = reduce_channels(reducer.total, params.get("channel_reduction"), ctx.model)
        return Result(attribution, reducer.figures())
