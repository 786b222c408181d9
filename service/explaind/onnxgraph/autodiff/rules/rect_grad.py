"""RectGrad (Kim et al. 2019, "Why are Saliency Maps Noisy? Cause of and Solution to Noisy Saliency
Maps"), rule variant "rect_grad".

At every ReLU, with a its output (the activation) and g the gradient arriving there, the importance
a * g is thresholded per example: dx = g * [a * g > tau], tau the q-th percentile of a * g over the
layer (all axes but the batch), with linear interpolation between order statistics (numpy's and
torch.quantile's default). The paper's default q is 98. Inactive units have a = 0, so they pass
nothing unless tau < 0 (then, as the paper's rule says, every unit with a * g > tau does).

q comes per row from the tensor ``Q_TENSOR`` ([N] float, in percent), which the graph must define
(the gradient variant gathers it from each job's parameter): rows of different requests can share
a batch. Every other operator keeps its gradient.
"""

from __future__ import annotations

from onnx import TensorProto

from ..registry import RuleContext, register

VARIANT = "rect_grad"
Q_TENSOR = "explaind::rect_grad::q"


def percentile_per_row(ctx: RuleContext, values: str, q: str) -> str:
    """The q[n]-th percentile (linear interpolation) of values[n] over all axes but 0: [N] float.

    Sorted ascending, position p = q / 100 * (m - 1) of the m values; lo = floor(p). TopK (largest,
    k = m - min(lo)) holds the order statistics from lo up in descending order: the one at lo sits
    at m - 1 - lo, the next at m - 2 - lo (clipped at 0 for q = 100)."""
    e = ctx.e
    dtype = ctx.dtype(values)
    flat = e.op("Reshape", [values, e.ints([0, -1])])                       # [N, m]
    m = e.dims_slice(e.shape(flat), 1, 2)                                   # [1] int64
    m_float = e.op("Cast", [m], to=dtype)
    position = e.op("Mul", [e.op("Div", [q, ctx.scalar(100.0, values)]), e.op("Sub", [m_float, ctx.scalar(1.0, values)])])
    low_float = e.op("Floor", [position])
    frac = e.op("Sub", [position, low_float])
    low = e.op("Cast", [low_float], to=TensorProto.INT64)                                 # int64 [N]
    k = e.op("Sub", [m, e.reduce("ReduceMin", low, [0], keepdims=True)])
    top = e.op("TopK", [flat, k], outputs=2, axis=1, largest=1, sorted=1)  # values (descending)
    at_low = e.op("Sub", [e.op("Sub", [m, e.ints([1])]), low])              # [N]
    at_high = e.op("Max", [e.op("Sub", [at_low, e.ints([1])]), e.ints([0])])
    lower = e.op("GatherElements", [top, e.unsqueeze(at_low, [1])], axis=1)  # [N, 1]
    upper = e.op("GatherElements", [top, e.unsqueeze(at_high, [1])], axis=1)
    fraction = e.unsqueeze(frac, [1])
    tau = e.op("Add", [lower, e.op("Mul", [fraction, e.op("Sub", [upper, lower])])])
    return e.op("Reshape", [tau, e.ints([-1])])


@register("Relu", variant=VARIANT)
def relu(ctx: RuleContext) -> list:
    """dx = g * [a * g > tau_q(a * g)], a = relu(x) (the rule of the module docstring)."""
    e = ctx.e
    importance = e.op("Mul", [ctx.y(), ctx.g])
    tau = percentile_per_row(ctx, importance, Q_TENSOR)
    rank = ctx.rank(ctx.y())
    tau = e.op("Reshape", [tau, e.ints([-1] + [1] * (rank - 1))])
    keep = e.op("Cast", [e.op("Greater", [importance, tau])], to=ctx.dtype(ctx.x()))
    return [e.op("Mul", [ctx.g, keep])]
