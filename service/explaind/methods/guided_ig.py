"""Guided Integrated Gradients (Kapishnikov et al. 2021, "Guided Integrated Gradients: an Adaptive Path
Method for Removing Noise"; the PAIR `saliency` package's `GuidedIG` semantics and defaults).

The path starts at the baseline x' and reaches the input x in `steps` steps. At step t (alpha_t =
t / steps) the features may lie within [alpha_t - max_dist, alpha_t + max_dist] of the straight path
(as fractions of x - x'); features fallen behind are first brought to the lower bound, then the
`fraction` of the features with the smallest |gradient| (those at the upper bound excluded) move
towards the upper bound until the L1 distance to x is (1 - alpha_t) |x - x'|_1, repeating the
selection when they reach the bound first. attribution += (x_new - x_old) * grad f_c(x_old) for every
move, the gradient taken once per step at the step's starting point. Defaults: 200 steps, fraction
0.25, max_dist 0.02, baseline 0; max_dist 0 is IG on the straight path (Riemann left). Each step is
one gradient row through the model's own graph (a stage: the next point depends on its gradient).
Score: the logit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import MethodContext, Result, Stages
from .gradient_base import GradientMethod, channel_reduction, gradient_stage, reduce_channels
from .params import Float, Int

EPSILON = 1e-9


def _alpha_to_x(alpha: float, x_input: np.ndarray, x_baseline: np.ndarray) -> np.ndarray:
    return x_baseline + (x_input - x_baseline) * alpha


def guided_step(x: np.ndarray, grad: np.ndarray, x_input: np.ndarray, x_baseline: np.ndarray, step: int, steps: int,
                fraction: float, max_dist: float) -> tuple[np.ndarray, np.ndarray]:
    """One step of the guided path from `x` (float64) with the gradient there: (next x, attribution added)."""
    x = x.copy()
    attribution = np.zeros_like(x)
    alpha = (step + 1.0) / steps
    alpha_min, alpha_max = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
    x_min, x_max = _alpha_to_x(alpha_min, x_input, x_baseline), _alpha_to_x(alpha_max, x_input, x_baseline)
    l1_target = float(np.abs(x_input - x_baseline).sum()) * (1 - (step + 1) / steps)
    span = x_input - x_baseline
    moving = span != 0
    gamma = math.inf
    while gamma > 1.0:
        x_old = x.copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            x_alpha = np.where(moving, (x - x_baseline) / np.where(moving, span, 1.0), alpha_max)
        behind = x_alpha < alpha_min
        x[behind] = x_min[behind]
        l1_current = float(np.abs(x - x_input).sum())
        if math.isclose(l1_target, l1_current, rel_tol=EPSILON, abs_tol=EPSILON):
            attribution += (x - x_old) * grad
            break
        magnitude = np.where(x == x_max, np.inf, np.abs(grad))
        threshold = np.quantile(magnitude, fraction, method="lower")
        selected = (magnitude <= threshold) & np.isfinite(magnitude)
        l1_selected = float((np.abs(x - x_max) * selected).sum())
        gamma = (l1_current - l1_target) / l1_selected if l1_selected > 0 else math.inf
        if gamma > 1.0:
            x[selected] = x_max[selected]
        else:
            x[selected] = (x + (x_max - x) * gamma)[selected]
        attribution += (x - x_old) * grad
    return x, attribution


class GuidedIg(GradientMethod):
    name = "guided_ig"
    title = "Guided Integrated Gradients"
    reference = "Kapishnikov et al. 2021, Guided Integrated Gradients: an Adaptive Path Method; PAIR saliency GuidedIG"
    description = "Integrated gradients along an adaptive path that first moves the features of smallest gradient."
    figures = ("attribution_sum", "f_input", "f_baseline", "completeness_gap")
    params = (
        Int("steps", 200, "path steps (one gradient each)", 1, lambda lim: lim.settings.max_rows_per_request),
        Float("fraction", 0.25, "fraction of the features moved per selection", 0.0, 1.0, exclusive_low=True),
        Float("max_dist", 0.02, "largest deviation from the straight path, as alpha", 0.0, 1.0),
        Float("baseline", 0.0, "the baseline x', in model input space"),
        channel_reduction("none"),
    )

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return params["steps"] + 1  # the path, and f at the input for the completeness gap

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        x_input = ctx.x.astype(np.float64)
        x_baseline = np.full_like(x_input, params["baseline"])
        x = x_baseline.copy()
        attribution = np.zeros_like(x_input)
        steps = params["steps"]
        f_baseline = f_input = math.nan
        for step in range(steps):
            grads = yield gradient_stage(ctx, constants={"x0": x.astype(np.float32)})
            if step == 0:
                f_baseline = grads.scores[0]
            if not np.abs(x_input - x_baseline).sum():
                continue  # the input is the baseline: zero attribution
            x, added = guided_step(x, grads.total, x_input, x_baseline, step, steps, params["fraction"],
                                   params["max_dist"])
            attribution += added
        end = yield gradient_stage(ctx)
        f_input = end.scores[0]
        total = float(attribution.sum())
        figures = {"attribution_sum": total, "f_input": f_input, "f_baseline": f_baseline,
                   "completeness_gap": total - (f_input - f_baseline)}
        return Result(reduce_channels(attribution, params.get("channel_reduction"), ctx.model), figures)
