"""Meaningful perturbation (Fong & Vedaldi 2017, "Interpretable Explanations of Black Boxes by
Meaningful Perturbation"), the deletion game with the paper's objective and defaults.

A low-resolution mask M (mask_size x mask_size, 1 keeps, 0 perturbs; default ceil(min(H, W) / 8),
28 at 224 px as the paper) is upsampled bilinearly (torch's `interpolate`, align_corners false) to
m, and the input shown to the model is Phi(x; m) = m x + (1 - m) p, p the perturbation (the paper's
eq. 1): the input blurred (Gaussian of blur_sigma, sigma_0 = 10 px at 224, reflected edges; the
paper's spatially varying blur written as this blend, as common implementations do), a constant u_0
(default the per-channel mean of x, the paper's mean colour), or Gaussian noise eta around u_0
(noise_std, default 0.2 (max(x) - min(x)); one draw per request from its seed). Minimised:
    E(M) = l1_coeff * sum |1 - M| + tv_coeff * sum_u (|M_{u+y} - M_u|^beta + |M_{u+x} - M_u|^beta) + f_c(Phi(x; m))
with l1_coeff 1e-4, tv_coeff 1e-2, beta 3 (the paper's lambda1, lambda2, beta), f_c the probability by
default; Adam (learning rate 0.1, betas 0.9 / 0.999, eps 1e-8, torch's update) from M = 1 for 300
iterations, M clamped to [0, 1] after each step. Jitter: at each iteration m is shifted by a random
integer (dy, dx) in [-jitter, jitter]^2 (edge replicated), default 4 px at 224 (scaled to the image).
Gradient: exact, in the graph (variant `meaningful`, onnxgraph/variants/meaningful.py): a row is the
mask M and its shift; the graph upsamples and shifts it, perturbs the input, runs the model and,
from the model's own input gradient g, gives d f_c / d M = U_y^T (sum_channels g (x - p)) U_x for the
(shifted) bilinear upsampling matrices U; the regularisers' gradients are exact on the host (|.| at
0: 0, as torch). One row per iteration (one job each); one more scores the final mask unjittered.
The attribution is 1 - m (what must be deleted); `mask` is m [H, W], `objective` E per iteration,
`jitter` the shifts [iterations, 2].
Caveat: where the softmax saturates at the input (p_c ~ 1 - 1e-6, the shapes demo on its own
examples) the probability has next to no gradient and the mask stays at 1 (attribution 0); the
request's `score: LOGIT` optimises the logit instead (shapes demo circle_0: mask mean 1.0 with the
probability, 0.38 with the logit, the logit brought from 19.2 to -2.2).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..config import Settings
from ..errors import InvalidArgument
from ..engine.job import RowChunk
from ..onnxgraph.variants import SCORE_OUTPUT
from ..onnxgraph.variants.meaningful import MASK_OUTPUT, PARAM_GRAD_OUTPUT, Meaningful
from .base import PROBABILITY, MethodContext, ModelView, Reducer, Result, Stage, Stages
from .gradient_base import GradientMethod
from .params import IMAGE, Choice, Float, Int

BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
DESIGN_SIZE = 224


def regularisers(mask: np.ndarray, l1: float, tv: float, beta: float) -> tuple[float, float, np.ndarray]:
    """(l1 term, tv term, their gradient w.r.t. the mask)."""
    dy, dx = np.diff(mask, axis=0), np.diff(mask, axis=1)
    l1_term = l1 * float(np.abs(1.0 - mask).sum())
    tv_term = tv * float((np.abs(dy) ** beta).sum() + (np.abs(dx) ** beta).sum())
    grad = -l1 * np.sign(1.0 - mask)
    gy = tv * beta * np.abs(dy) ** (beta - 1) * np.sign(dy)
    gx = tv * beta * np.abs(dx) ** (beta - 1) * np.sign(dx)
    grad[1:, :] += gy
    grad[:-1, :] -= gy
    grad[:, 1:] += gx
    grad[:, :-1] -= gx
    return l1_term, tv_term, grad


class RowReducer(Reducer):
    """The one row of an iteration: its score, mask and d score / d M."""

    def __init__(self) -> None:
        self.score = 0.0
        self.mask: np.ndarray | None = None
        self.grad: np.ndarray | None = None

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        self.score = float(rows[SCORE_OUTPUT][0])
        self.mask = rows[MASK_OUTPUT][0].astype(np.float64)
        self.grad = rows[PARAM_GRAD_OUTPUT][0].astype(np.float64)


class MeaningfulPerturbation(GradientMethod):
    name = "meaningful_perturbation"
    title = "Meaningful perturbation"
    reference = "Fong & Vedaldi 2017, Interpretable Explanations of Black Boxes by Meaningful Perturbation"
    description = "The smallest smooth mask whose deletion (blur, constant or noise) destroys the target score."
    kinds = IMAGE
    default_score = PROBABILITY
    arrays = ("mask", "objective", "jitter")
    figures = ("objective", "l1", "tv", "score")
    params = (
        Int("iterations", 300, "Adam steps", 1, lambda lim: lim.settings.max_rows_per_request - 1),
        Float("learning_rate", 0.1, "Adam's learning rate", 0.0, 100.0, exclusive_low=True),
        Float("l1_coeff", 1e-4, "lambda1, weight of the L1 norm of 1 - M", 0.0, 1e6),
        Float("tv_coeff", 1e-2, "lambda2, weight of TV(M)^beta", 0.0, 1e6),
        Float("tv_beta", 3.0, "beta", 1.0, 10.0),
        Int("mask_size", None, "side of the low-resolution mask", 1, lambda lim: min(lim.model.signature.spatial_shape),
            shown="ceil(min(H, W) / 8) (28 at 224 px)"),
        Choice("perturbation", "blur", ("blur", "constant", "noise"), "blur | constant | noise"),
        Float("blur_sigma", None, "blur: Gaussian sigma, pixels", 0.0, 1000.0, exclusive_low=True,
              shown="10 s, s = min(H, W) / 224"),
        Float("fill", None, "constant: the value", shown="the per-channel mean of x"),
        Float("noise_std", None, "noise: sigma of the noise around the per-channel mean", 0.0, 1e6, exclusive_low=True,
              shown="0.2 (max(x) - min(x))"),
        Int("jitter", None, "largest random shift of the mask, pixels; 0: none", 0,
            lambda lim: min(lim.model.signature.spatial_shape), shown="4 s (4 at 224 px)"),
    )

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        height, width = model.signature.spatial_shape
        scale = min(height, width) / DESIGN_SIZE
        params.setdefault("mask_size", math.ceil(min(height, width) / 8))
        params.setdefault("jitter", int(round(4 * scale)))
        kind = params["perturbation"]
        for name, applies in (("blur_sigma", "blur"), ("fill", "constant"), ("noise_std", "noise")):
            if name in params and kind != applies:
                raise InvalidArgument(f"{self.name}.{name}", f"unset unless perturbation is {applies}",
                                      f"{params[name]:g} with perturbation {kind}")
        if kind == "blur":
            params.setdefault("blur_sigma", round(10 * scale, 3))
        return params

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return params["iterations"] + 1

    def perturbation(self, params: dict[str, Any], ctx: MethodContext) -> np.ndarray:
        x = ctx.x.astype(np.float32)
        sig = ctx.model.signature
        spatial = (1, 2) if sig.layout == "NCHW" else (0, 1)
        kind = params["perturbation"]
        if kind == "blur":
            from scipy import ndimage  # lazy: scipy is imported only when a request needs it
            sigma = [0.0] * x.ndim
            for axis in spatial:
                sigma[axis] = params["blur_sigma"]
            return ndimage.gaussian_filter(x.astype(np.float64), sigma=sigma, mode="reflect").astype(np.float32)
        if kind == "constant":
            if "fill" in params:
                return np.full_like(x, params["fill"])
            return np.broadcast_to(x.mean(axis=spatial, keepdims=True), x.shape).astype(np.float32)
        std = params.get("noise_std", 0.2 * float(x.max() - x.min()))
        mean = x.mean(axis=spatial, keepdims=True)
        return (mean + std * ctx.rng.standard_normal(x.shape)).astype(np.float32)

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        x = ctx.x.astype(np.float32)
        p = self.perturbation(params, ctx)
        size, n = params["mask_size"], params["iterations"]
        j = params["jitter"]
        shifts = ctx.rng.integers(-j, j + 1, size=(n, 2)) if j else np.zeros((n, 2), np.int64)
        l1, tv, beta, lr = params["l1_coeff"], params["tv_coeff"], params["tv_beta"], params["learning_rate"]
        exported = ctx.model.white_box.exported if ctx.model.white_box else None
        variant = Meaningful(score=ctx.score, mask_size=size, exported=exported)
        constants = {**ctx.target_constants(), "x0": x, "perturbation": p}
        mask = np.ones((size, size), np.float64)
        first, second = np.zeros_like(mask), np.zeros_like(mask)
        objective = np.zeros(n, np.float64)

        def row(shift: np.ndarray) -> Stage[RowReducer]:
            codes = {"row": np.zeros(1, np.int64), "mask_params": mask[None].astype(np.float32),
                     "shift": np.asarray(shift, np.int64).reshape(1, 2)}
            return Stage(variant, constants, iter([codes]), 1, RowReducer())

        for t in range(n):
            step_row = yield row(shifts[t])
            l1_term, tv_term, grad = regularisers(mask, l1, tv, beta)
            objective[t] = l1_term + tv_term + step_row.score
            grad = grad + step_row.grad
            first = BETAS[0] * first + (1 - BETAS[0]) * grad
            second = BETAS[1] * second + (1 - BETAS[1]) * grad * grad
            step = lr * (first / (1 - BETAS[0] ** (t + 1))) / (np.sqrt(second / (1 - BETAS[1] ** (t + 1))) + ADAM_EPS)
            mask = np.clip(mask - step, 0.0, 1.0)
        final = yield row(np.zeros(2, np.int64))
        l1_term, tv_term, _ = regularisers(mask, l1, tv, beta)
        figures = {"objective": l1_term + tv_term + final.score, "l1": l1_term, "tv": tv_term, "score": final.score}
        m_up = final.mask
        arrays = {"mask": m_up.astype(np.float32), "objective": objective.astype(np.float32),
                  "jitter": shifts.astype(np.float32)}
        return Result((1.0 - m_up).astype(np.float32), figures, arrays)
