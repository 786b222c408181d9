"""Integrated Gradients (Sundararajan, Taly & Yan 2017; Captum `IntegratedGradients`).

attribution = (x - x') * integral_0^1 d f_c / d x (x' + a (x - x')) da, the integral by a quadrature
of n_steps points: Gauss-Legendre (default, Captum's "gausslegendre") or Riemann left, right,
middle or trapezoid, each with Captum's nodes and weights (Captum's trapezoid weights sum to
(n - 1)/n, and so do these). Baseline x' = a constant (default 0). Every path point is a row (its code is
alpha). Two more rows, at alpha 0 and 1 with weight 0, give f(x') and f(x) for the completeness gap
sum(attribution) - (f(x) - f(x')), reported in the response. Score: the logit by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Settings
from ..errors import InvalidArgument
from ..onnxgraph.variants import gradient as g
from .base import MethodContext, ModelView, Result, Stages
from .gradient_base import GradientMethod, channel_reduction, gradient_stage, reduce_channels
from .params import Choice, Float, Int

QUADRATURES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
# numpy's leggauss solves an n x n eigenproblem: O(n^2) memory and O(n^3) time on the event loop
# (1024 nodes: ~0.3 s; 5000: ~30 s; 2 million: terabytes). 1024 nodes integrate polynomials of degree 2047.
MAX_GAUSS_LEGENDRE_STEPS = 1024


def quadrature(method: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, step sizes) on [0, 1], as Captum's approximation methods define them."""
    if method == "gausslegendre":
        if n > MAX_GAUSS_LEGENDRE_STEPS:
            raise InvalidArgument("integrated_gradients.n_steps", f"at most {MAX_GAUSS_LEGENDRE_STEPS} for gausslegendre "
                                  "(the riemann_* methods allow more)", n)
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1), 0.5 * weights
    if method == "riemann_trapezoid":
        if n < 2:
            raise InvalidArgument("integrated_gradients.n_steps", "at least 2 for riemann_trapezoid", n)
        # Captum's weights: 1/n with both ends halved. They sum to (n - 1)/n, not 1 (the textbook
        # rule has 1/(n - 1)); kept for agreement with Captum, visible in the completeness gap.
        steps = np.full(n, 1.0 / n)
        steps[0] = steps[-1] = 0.5 / n
        return np.linspace(0, 1, n), steps
    offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    return (np.arange(n) + offsets[method]) / n, np.full(n, 1.0 / n)


class IntegratedGradients(GradientMethod):
    name = "integrated_gradients"
    title = "Integrated Gradients"
    reference = "Sundararajan, Taly & Yan 2017, Axiomatic Attribution for Deep Networks; Captum IntegratedGradients"
    description = "Path integral of gradients from a baseline to the input, times their difference."
    figures = ("completeness_gap", "attribution_sum", "f_input", "f_baseline")
    params = (
        Int("n_steps", 50, "quadrature points along the path (at most 1024 for gausslegendre)", 1,
            lambda lim: lim.settings.max_rows_per_request - 2),
        Choice("method", "gausslegendre", QUADRATURES, " | ".join(QUADRATURES)),
        Float("baseline", 0.0, "the baseline x', in model input space"),
        channel_reduction("none"),
    )

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return params["n_steps"] + 2  # the path, then the baseline and the input for completeness

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        quadrature(params["method"], params["n_steps"])  # refuse what cannot be built, now
        return params

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        n = params["n_steps"]
        alphas, steps = quadrature(params["method"], n)
        alphas = np.concatenate([alphas, [0.0, 1.0]]).astype(np.float32)
        weights = np.concatenate([steps, [0.0, 0.0]])
        reference = np.full_like(ctx.x, params["baseline"])
        grads = yield gradient_stage(ctx, path=g.PATH_LINE, weights=weights, codes={"alpha": alphas},
                                     constants={"reference": reference})
        attribution = (ctx.x.astype(np.float64) - params["baseline"]) * grads.total
        total = float(attribution.sum())
        f_baseline, f_input = grads.scores[n], grads.scores[n + 1]
        figures = {"completeness_gap": total - (f_input - f_baseline), "attribution_sum": total,
                   "f_input": f_input, "f_baseline": f_baseline}
        return Result(reduce_channels(attribution, params.get("channel_reduction"), ctx.model), figures)
