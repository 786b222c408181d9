"""RectGrad (Kim, Seo, Jeon, Yoon & Jung 2019, "Why are Saliency Maps Noisy? Cause of and Solution to
Noisy Saliency Maps").

The gradient of the target score where every ReLU passes back g only where the importance a * g
(a its output, g the gradient arriving) is above the q-th percentile of a * g over the layer:
R_in = g * [a * g > tau_q] (per example; linear interpolation between order statistics, numpy's
and torch.quantile's). q default 98, the paper's. Other operators keep their gradient (rules:
onnxgraph/autodiff/rules/rect_grad.py); q is a per-job graph input, so requests with different q
share one graph and its batches. Per channel by default. Score: the logit by default. One model
evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..onnxgraph.variants import gradient as g
from .base import MethodContext, Result, Stages
from .gradient_base import GradientMethod, channel_reduction, gradient_stage, reduce_channels
from .params import Float

RULE = "rect_grad"


class RectGrad(GradientMethod):
    name = "rect_grad"
    title = "RectGrad"
    reference = "Kim et al. 2019, Why are Saliency Maps Noisy? Cause of and Solution to Noisy Saliency Maps"
    description = "Gradient where each ReLU passes back only units whose activation x gradient is above its q-th percentile."
    rules_needed = (RULE,)
    params = (
        Float("q", 98.0, "percentile of activation x gradient per layer below which a ReLU passes nothing back",
              0.0, 100.0),
        channel_reduction("none"),
    )

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        q = np.array(params["q"], np.float32)
        grads = yield gradient_stage(ctx, rule=RULE, constants={g.RECT_GRAD_Q: q})
        return Result(reduce_channels(grads.total, params.get("channel_reduction"), ctx.model))
