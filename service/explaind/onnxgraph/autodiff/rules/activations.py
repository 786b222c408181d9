"""Activations and normalised exponentials, with the guided/deconvnet variants of Relu and ReLU6.

Kinks take the derivative 0 (torch's convention for relu and hardtanh): d relu(x)/dx = [x > 0].

Variants (Springenberg et al. 2014; Zeiler & Fergus 2014):
- guided:    dx = relu(g) * [x > 0]   (positive gradient where the forward input was positive)
- deconvnet: dx = relu(g)             (positive part of the gradient, forward sign ignored)
They replace Relu, and Clip with min == 0 (ReLU6 in MobileNet-style nets: guided keeps Clip's
[0 < x < max] window, deconvnet ignores the forward input entirely). LeakyRelu, PRelu and the others
keep their plain rules under every variant.
"""

from __future__ import annotations

import numpy as np

from ..registry import RuleContext, register


def _where(ctx: RuleContext, condition: str, g: str) -> str:
    """g where condition holds, 0 elsewhere: g * float(condition).

    Written as a product rather than `Where`: onnxruntime's CPU Where with broadcasting is several
    times slower than Cast + Mul on activation-sized tensors, and this sits at every ReLU."""
    return ctx.e.op("Mul", [g, ctx.e.op("Cast", [condition], to=ctx.dtype(ctx.x()))])


def _positive(ctx: RuleContext, x: str) -> str:
    return ctx.e.op("Greater", [x, ctx.scalar(0.0, ctx.x())])


# Relu -----------------------------------------------------------------------------------------


@register("Relu")
def relu(ctx: RuleContext) -> list:
    """y = max(x, 0): dx = g * [x > 0] = g * [y > 0].

    The mask is read off the output y, not x: x is then read by the Relu alone, so onnxruntime can
    fuse Conv + Relu in the forward pass as it does for the model itself."""
    return [_where(ctx, _positive(ctx, ctx.y()), ctx.g)]


@register("Relu", variant="guided")
def relu_guided(ctx: RuleContext) -> list:
    """Guided backpropagation: dx = relu(g) * [x > 0] = relu(g) * [y > 0]."""
    return [_where(ctx, _positive(ctx, ctx.y()), ctx.e.op("Relu", [ctx.g]))]


@register("Relu", variant="deconvnet")
def relu_deconvnet(ctx: RuleContext) -> list:
    """Deconvnet: dx = relu(g)."""
    return [ctx.e.op("Relu", [ctx.g])]


# Clip (and ReLU6) -----------------------------------------------------------------------------


def _clip_window(ctx: RuleContext) -> str | None:
    """[min < x < max] for Clip (min/max inputs from opset 11, attributes before); None: no bounds.

    The window is read off the output y = min(max(x, min), max) instead, which is the same test:
    x in (min, max) gives y = x; x <= min gives y <= min; x >= max gives y = max. x is then read
    by the Clip alone and onnxruntime fuses Conv + Clip (ReLU6) as in the forward model; on the
    zoo's mobilenetv2 that removes a separate Clip and a layout reorder at each of its 8 ReLU6."""
    e = ctx.e
    y = ctx.y()
    if ctx.opset >= 11:
        low, high = ctx.x(1), ctx.x(2)
    else:
        low_value, high_value = ctx.attr("min"), ctx.attr("max")
        low = ctx.scalar(low_value, y) if low_value is not None else ""
        high = ctx.scalar(high_value, y) if high_value is not None else ""
    terms = []
    if low:
        terms.append(e.op("Greater", [y, low]))
    if high:
        terms.append(e.op("Less", [y, high]))
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else e.op("And", terms)


def _is_relu6(ctx: RuleContext) -> bool:
    low = ctx.constant(1) if ctx.opset >= 11 else (np.array(ctx.attr("min")) if ctx.attr("min") is not None else None)
    return low is not None and low.size == 1 and float(low.reshape(-1)[0]) == 0.0


@register("Clip", constant_inputs=())
def clip(ctx: RuleContext) -> list:
    """y = min(max(x, lo), hi): dx = g * [lo < x < hi]."""
    window = _clip_window(ctx)
    return [ctx.g if window is None else _where(ctx, window, ctx.g)]


@register("Clip", variant="guided", constant_inputs=())
def clip_guided(ctx: RuleContext) -> list:
    """Guided at ReLU6 (min == 0): dx = relu(g) * [0 < x < hi]; other Clips: plain."""
    if not _is_relu6(ctx):
        return clip(ctx)
    window = _clip_window(ctx)
    assert window is not None
    return [_where(ctx, window, ctx.e.op("Relu", [ctx.g]))]


@register("Clip", variant="deconvnet", constant_inputs=())
def clip_deconvnet(ctx: RuleContext) -> list:
    """Deconvnet at ReLU6 (min == 0): dx = relu(g); other Clips: plain."""
    if not _is_relu6(ctx):
        return clip(ctx)
    return [ctx.e.op("Relu", [ctx.g])]


# Other pointwise activations ------------------------------------------------------------------


@register("LeakyRelu")
def leaky_relu(ctx: RuleContext) -> list:
    """y = x if x > 0 else alpha * x: dx = g if x > 0 else alpha * g."""
    alpha = float(ctx.attr("alpha", 0.01))
    scaled = ctx.e.op("Mul", [ctx.g, ctx.scalar(alpha)])
    return [ctx.e.op("Where", [_positive(ctx, ctx.x()), ctx.g, scaled])]


@register("PRelu")
def prelu(ctx: RuleContext) -> list:
    """y = x if x > 0 else slope * x (slope broadcast to x): dx = g if x > 0 else slope * g."""
    scaled = ctx.e.op("Mul", [ctx.g, ctx.x(1)])
    return [ctx.e.op("Where", [_positive(ctx, ctx.x()), ctx.g, scaled])]


@register("Sigmoid")
def sigmoid(ctx: RuleContext) -> list:
    """y = 1 / (1 + exp(-x)): dx = g * y * (1 - y)."""
    e, y = ctx.e, ctx.y()
    return [e.op("Mul", [ctx.g, e.op("Mul", [y, e.op("Sub", [ctx.scalar(1.0), y])])])]


@register("Tanh")
def tanh(ctx: RuleContext) -> list:
    """y = tanh(x): dx = g * (1 - y^2)."""
    e, y = ctx.e, ctx.y()
    return [e.op("Mul", [ctx.g, e.op("Sub", [ctx.scalar(1.0), e.op("Mul", [y, y])])])]


@register("HardSigmoid")
def hard_sigmoid(ctx: RuleContext) -> list:
    """y = clip(alpha * x + beta, 0, 1): dx = g * alpha * [0 < alpha * x + beta < 1]."""
    e = ctx.e
    alpha, beta = float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5))
    t = e.op("Add", [e.op("Mul", [ctx.x(), ctx.scalar(alpha)]), ctx.scalar(beta)])
    window = e.op("And", [e.op("Greater", [t, ctx.scalar(0.0)]), e.op("Less", [t, ctx.scalar(1.0)])])
    return [_where(ctx, window, e.op("Mul", [ctx.g, ctx.scalar(alpha)]))]


@register("HardSwish")
def hard_swish(ctx: RuleContext) -> list:
    """y = x * clip(x / 6 + 1/2, 0, 1): dx = 0 (x < -3), g * (x / 3 + 1/2) (|x| <= 3), g (x > 3)."""
    e = ctx.e
    x = ctx.x()
    slope = e.op("Add", [e.op("Div", [x, ctx.scalar(3.0)]), ctx.scalar(0.5)])
    middle = e.op("Mul", [ctx.g, slope])
    inner = e.op("Where", [e.op("Less", [x, ctx.scalar(-3.0)]), ctx.scalar(0.0), middle])
    return [e.op("Where", [e.op("Greater", [x, ctx.scalar(3.0)]), ctx.g, inner])]


# Softmax family -------------------------------------------------------------------------------


def _softmax_axes(ctx: RuleContext) -> list[int]:
    """The normalised axes: before opset 13 the input is coerced to 2-D at `axis` (default 1), so
    the softmax runs over all axes from `axis` on; from 13 on, over the single `axis` (default -1)."""
    rank = ctx.rank(ctx.x())
    if ctx.opset >= 13:
        return [ctx.axis(int(ctx.attr("axis", -1)), rank)]
    return list(range(ctx.axis(int(ctx.attr("axis", 1)), rank), rank))


@register("Softmax")
def softmax(ctx: RuleContext) -> list:
    """y = softmax(x): dx = y * (g - sum(g * y))."""
    e, y = ctx.e, ctx.y()
    inner = e.reduce_sum(e.op("Mul", [ctx.g, y]), _softmax_axes(ctx), keepdims=True)
    return [e.op("Mul", [y, e.op("Sub", [ctx.g, inner])])]


@register("LogSoftmax")
def log_softmax(ctx: RuleContext) -> list:
    """y = x - logsumexp(x): dx = g - exp(y) * sum(g)."""
    e = ctx.e
    total = e.reduce_sum(ctx.g, _softmax_axes(ctx), keepdims=True)
    return [e.op("Sub", [ctx.g, e.op("Mul", [e.op("Exp", [ctx.y()]), total])])]
