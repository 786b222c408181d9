"""DeepLIFT's rescale rule (Shrikumar, Greenside & Kundaje 2017), rule variant "deep_lift", with
Captum's `DeepLift` semantics.

The graph runs on a doubled batch: rows [0, R) are the inputs, rows [R, 2R) their references
(baselines), as Captum concatenates them. Every tensor t of the forward pass then holds both, and
Delta t = t[:R] - t[R:] (repeated for both halves, as Captum's `_compute_diffs`).

- Nonlinear element-wise operators (Relu, LeakyRelu, PRelu, Sigmoid, Tanh, HardSigmoid, HardSwish,
  Clip/ReLU6, Exp, Log, Sqrt, Reciprocal, Erf): the multiplier m = Delta y / Delta x replaces the
  local derivative, dx = g * Delta y / Delta x, falling back to the gradient where |Delta x| < eps
  (eps = 1e-10, Captum's default). Captum rescales only the nn.Module types in its list (ReLU, ELU,
  LeakyReLU, Sigmoid, Tanh, Softplus, MaxPool, Softmax); ONNX keeps no module types, so every
  element-wise nonlinearity is rescaled here (for ReLU6 and the exponentials Captum takes the
  gradient).
- MaxPool: Captum's rule: with y_max = max(y, y0), the input half routes g * (y_max - y0) through
  its own argmax, the reference half routes g * (y - y_max) through its argmax, the two summed and
  divided by Delta x (each half's own gradient where |Delta x| < eps, as Captum after its fix of
  issue 1276; the installed Captum broadcasts the first row's).
- Softmax: the rescaled multipliers minus their mean over the softmax axes, per row (Captum takes
  the mean over the whole tensor, mixing the rows of a batch and the reference half).
- Every other operator (linear layers, batch norm, pooling but max, shape operators, additions and
  products) keeps its gradient, as in Captum ("linear layers as gradients").
The attribution is then (x - x0) * d/dx at the input (the method's part).
"""

from __future__ import annotations

import dataclasses

from ..emitter import INT64_MAX
from ..registry import RULES, RuleContext, register

VARIANT = "deep_lift"
EPS = 1e-10  # Captum DeepLift's eps: |Delta x| below it takes the gradient

RESCALED = ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Clip",
            "Exp", "Log", "Sqrt", "Reciprocal", "Erf")


def _plain(ctx: RuleContext, g: str | None = None) -> list:
    """The operator's plain gradient rule, optionally for another incoming gradient `g`."""
    spec = RULES[("plain", "", ctx.node.op_type)]
    return spec.fn(ctx if g is None else dataclasses.replace(ctx, gy=[g, *ctx.gy[1:]]))


def half(ctx: RuleContext, t: str) -> str:
    """R = Shape(t)[0] / 2 as a 1-D int64 [1]."""
    e = ctx.e
    return e.op("Div", [e.dims_slice(e.shape(t), 0, 1), e.ints([2])])


def halves(ctx: RuleContext, t: str) -> tuple[str, str]:
    """(t[:R], t[R:]) of a tensor of the doubled batch."""
    e = ctx.e
    r = half(ctx, t)
    return e.slice(t, [0], r, [0]), e.slice(t, r, [INT64_MAX], [0])


def repeated_delta(ctx: RuleContext, t: str) -> str:
    """Delta t = t[:R] - t[R:], repeated for both halves ([2R, ...])."""
    e = ctx.e
    first, second = halves(ctx, t)
    delta = e.op("Sub", [first, second])
    return e.op("Concat", [delta, delta], axis=0)


def _near_zero(ctx: RuleContext, delta_x: str) -> str:
    return ctx.e.op("Less", [ctx.e.op("Abs", [delta_x]), ctx.scalar(EPS, ctx.x())])


def _rescaled(ctx: RuleContext) -> str:
    """where(|Delta x| < eps, plain gradient, g * Delta y / Delta x)."""
    e = ctx.e
    delta_x, delta_y = repeated_delta(ctx, ctx.x()), repeated_delta(ctx, ctx.y())
    multiplied = e.op("Div", [e.op("Mul", [ctx.g, delta_y]), delta_x])
    plain = _plain(ctx)[0]
    return e.op("Where", [_near_zero(ctx, delta_x), plain, multiplied])


@register(RESCALED, variant=VARIANT, constant_inputs=(1, 2))
def rescale(ctx: RuleContext) -> list:
    """dx = g * (y - y0) / (x - x0), the gradient where |x - x0| < eps (other inputs: constants)."""
    return [_rescaled(ctx)]


@register("Softmax", variant=VARIANT)
def softmax(ctx: RuleContext) -> list:
    """Rescaled multipliers m, then m - mean(m) over the softmax axes (per row; see the module)."""
    from .activations import _softmax_axes

    e = ctx.e
    m = _rescaled(ctx)
    return [e.op("Sub", [m, e.reduce("ReduceMean", m, _softmax_axes(ctx), keepdims=True)])]


@register("MaxPool", variant=VARIANT, grad_inputs=(0,), outputs=(0,))
def max_pool(ctx: RuleContext) -> list:
    """Captum's DeepLift max-pool rule (see the module docstring)."""
    e = ctx.e
    y_in, y_ref = halves(ctx, ctx.y())
    y_max = e.op("Max", [y_in, y_ref])
    delta_out = e.op("Concat", [e.op("Sub", [y_max, y_ref]), e.op("Sub", [y_in, y_max])], axis=0)
    routed = _plain(ctx, e.op("Mul", [ctx.g, delta_out]))[0]
    first, second = halves(ctx, routed)
    total = e.op("Add", [first, second])
    delta_x = repeated_delta(ctx, ctx.x())
    multiplied = e.op("Div", [e.op("Concat", [total, total], axis=0), delta_x])
    return [e.op("Where", [_near_zero(ctx, delta_x), _plain(ctx)[0], multiplied])]
