"""ReduceSum and ReduceMean: the gradient is broadcast back over the reduced axes.

The axes are an attribute before opset 13 (ReduceSum) / 18 (ReduceMean) and an optional input
after; no axes means all of them, unless noop_with_empty_axes makes the operator an identity.
"""

from __future__ import annotations

import onnx

from ..registry import RuleContext, register


def _spread(ctx: RuleContext, switch: int, g: str | None = None) -> str:
    """g broadcast back to x's shape, re-inserting the reduced axes when keepdims = 0."""
    e = ctx.e
    x = ctx.x()
    keepdims = int(ctx.attr("keepdims", 1))
    g = g or ctx.g
    if ctx.opset >= switch:
        axes_name = ctx.x(1)
        constant = ctx.constant(1)
        axes: list[int] | str | None
        if not axes_name:
            axes = None
        elif constant is not None:
            axes = [int(a) for a in constant.reshape(-1)] or None
        else:
            axes = axes_name  # computed at run time (Unsqueeze takes it as an input too)
        if axes is None and int(ctx.attr("noop_with_empty_axes", 0)):
            return g
    else:
        axes = [int(a) for a in (ctx.attr("axes") or [])] or None
    if not keepdims and axes is not None:
        g = e.unsqueeze(g, axes if isinstance(axes, str) else [ctx.axis(a, ctx.rank(x)) for a in axes])
    return e.op("Expand", [g, e.shape(x)])


@register("ReduceSum", constant_inputs=(1,))
def reduce_sum(ctx: RuleContext) -> list:
    """y = sum over axes of x: dx = broadcast(g)."""
    return [_spread(ctx, 13)]


@register("ReduceMean", constant_inputs=(1,))
def reduce_mean(ctx: RuleContext) -> list:
    """y = mean over axes of x: dx = broadcast(g / (|x| / |y|))."""
    e = ctx.e
    x = ctx.x()
    count = e.op("Cast", [e.op("Div", [e.op("Size", [x]), e.op("Size", [ctx.y()])])], to=ctx.dtype(x))
    # divided at y's size, then spread (an identity ReduceMean has count 1)
    return [_spread(ctx, 18, e.op("Div", [ctx.g, count]))]


@register(("ReduceMax", "ReduceMin"), constant_inputs=(1,))
def reduce_extremum(ctx: RuleContext) -> list:
    """y = max (min) over axes of x: g goes to the elements equal to y, split evenly among ties
    (torch's amax/amin convention)."""
    e = ctx.e
    x = ctx.x()
    if ctx.opset >= 18 and not ctx.x(1) and int(ctx.attr("noop_with_empty_axes", 0)):
        return [ctx.g]  # no axes and noop_with_empty_axes: an identity
    hits = e.op("Cast", [e.op("Equal", [x, _spread(ctx, 18, ctx.y())])], to=ctx.dtype(x))
    ties = _spread(ctx, 18, _reduce_like(ctx, hits))
    return [e.op("Mul", [hits, e.op("Div", [_spread(ctx, 18), ties])])]


def _reduce_like(ctx: RuleContext, t: str) -> str:
    """ReduceSum of t with the forward node's axes and keepdims (to count ties)."""
    e = ctx.e
    node = onnx.helper.make_node("ReduceSum", [t, *ctx.node.input[1:2]], [e.fresh("ties")], name=e.fresh("ReduceSum"))
    node.attribute.extend(a for a in ctx.node.attribute if a.name in ("keepdims", "noop_with_empty_axes"))
    axes = ctx.attr("axes")
    if ctx.opset < 18 and axes is not None:  # attribute form of the forward op
        if ctx.opset >= 13:
            node.input.append(e.ints([int(a) for a in axes]))
        else:
            node.attribute.append(onnx.helper.make_attribute("axes", [int(a) for a in axes]))
    e.nodes.append(node)
    return node.output[0]
