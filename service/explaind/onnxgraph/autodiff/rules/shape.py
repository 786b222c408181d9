"""Operators that move elements without changing them: the gradient moves them back.

Reshape-like operators reshape the gradient to x's run-time shape; Transpose applies the inverse
permutation; Concat/Split slice and concatenate; Slice and Pad scatter or cut.
"""

from __future__ import annotations

import numpy as np

from ..emitter import INT64_MAX, INT64_MIN
from ..registry import RuleContext, register


@register(("Flatten", "Reshape", "Squeeze", "Unsqueeze"), constant_inputs=(1,))
def reshape(ctx: RuleContext) -> list:
    """y = x viewed with another shape: dx = reshape(g, shape(x))."""
    return [ctx.e.reshape_like(ctx.g, ctx.x())]


@register("Transpose")
def transpose(ctx: RuleContext) -> list:
    """y = transpose(x, perm): dx = transpose(g, perm^-1)."""
    perm = ctx.attr("perm")
    if perm is None:
        perm = list(reversed(range(ctx.rank(ctx.x()))))
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[int(p)] = i
    return [ctx.e.op("Transpose", [ctx.g], perm=inverse)]


@register("Concat", grad_inputs=None)
def concat(ctx: RuleContext) -> list:
    """y = concat(x_1..x_n, axis): dx_i = g[offset_i : offset_i + size_i] along axis."""
    e = ctx.e
    rank = ctx.rank(ctx.y())
    axis = ctx.axis(int(ctx.attr("axis")), rank)
    grads: list[str | None] = []
    offset: int | str = 0  # a known int, or a [1] int64 tensor computed at run time
    for i, name in enumerate(ctx.node.input):
        dims = ctx.info.dims(name)
        size: int | str
        if dims is not None and isinstance(dims[axis], int):
            size = dims[axis]
        else:
            size = e.dims_slice(e.shape(name), axis, axis + 1)
        end: int | str
        if isinstance(offset, int) and isinstance(size, int):
            end = offset + size
        else:
            end = e.op("Add", [_one(e, offset), _one(e, size)])
        grads.append(e.slice(ctx.g, _one(e, offset), _one(e, end), [axis]) if ctx.need[i] else None)
        offset = end
    return grads


@register("Split", constant_inputs=(1,), outputs=None)
def split(ctx: RuleContext) -> list:
    """y_1..y_n = split(x, axis): dx = concat(g_1..g_n, axis), zeros for outputs without gradient."""
    rank = ctx.rank(ctx.x())
    axis = ctx.axis(int(ctx.attr("axis", 0)), rank)
    parts = [g if g is not None else ctx.zeros_like(ctx.y(k)) for k, g in enumerate(ctx.gy)]
    return [ctx.e.op("Concat", parts, axis=axis)]


@register("Slice", constant_inputs=(1, 2, 3, 4))
def slice_(ctx: RuleContext) -> list:
    """y = x[starts:ends:steps] on axes: dx = g scattered back to the selected positions, 0 elsewhere.

    Unit steps with constant bounds and known sizes: one Pad. Otherwise, the same Slice applied to
    the flat positions of x (a Range reshaped like x) gives where each element of y came from, and
    a ScatterElements puts g there: every opset form, negative or out-of-range bounds and negative
    steps are then exactly onnxruntime's own reading of them.
    """
    e = ctx.e
    x = ctx.x()
    pads = _slice_as_pads(ctx)
    if pads is not None:
        return [e.op("Pad", [ctx.g, e.ints(pads)], mode="constant")]
    positions = e.op(
        "Reshape", [e.op("Range", [e.ints(0), e.op("Size", [x]), e.ints(1)]), e.shape(x)]
    )
    picked = e.op("Slice", [positions, *ctx.node.input[1:]])
    flat = e.op("ScatterElements", [e.flatten(ctx.zeros_like(x)), e.flatten(picked), e.flatten(ctx.g)], axis=0)
    return [e.reshape_like(flat, x)]


def _slice_as_pads(ctx: RuleContext) -> list[int] | None:
    """Pad amounts equivalent to a unit-step Slice with constant bounds on axes of known size."""
    dims = ctx.info.dims(ctx.x())
    starts, ends = ctx.constant(1), ctx.constant(2)
    if dims is None or starts is None or ends is None:
        return None
    rank = len(dims)
    axes = ctx.constant(3) if ctx.x(3) else np.arange(len(starts.reshape(-1)))
    steps = ctx.constant(4) if ctx.x(4) else np.ones(len(starts.reshape(-1)), np.int64)
    if axes is None or steps is None or np.any(steps != 1):
        return None
    pads = [0] * (2 * rank)
    for start, end, axis in zip(starts.reshape(-1), ends.reshape(-1), axes.reshape(-1)):
        axis = ctx.axis(int(axis), rank)
        size = dims[axis]
        if not isinstance(size, int):
            return None
        begin = min(max(int(start) + size if start < 0 else int(start), 0), size)
        stop = min(max(int(end) + size if end < 0 else int(end), 0), size)
        pads[axis] = begin
        pads[rank + axis] = size - max(stop, begin)
    return pads


@register("Pad", constant_inputs=(1, 3))
def pad(ctx: RuleContext) -> list:
    """y = pad(x): constant mode: dx = pad(g, -pads) (cut what was added, zero what was cut).

    reflect/edge (constant pads): for each padded axis, the centre of g plus the border slices
    folded back onto the elements they copy (edge: summed into the first/last element; reflect:
    reversed onto x[1..p] and x[n-1-p..n-2]).
    """
    e = ctx.e
    mode = ctx.attr("mode", "constant")
    pads_name = ctx.x(1)
    axes_name = ctx.x(3)
    if mode == "constant":
        constant = ctx.constant(1)
        negated = e.ints([-int(p) for p in constant.reshape(-1)]) if constant is not None else e.op("Neg", [pads_name])
        inputs = [ctx.g, negated] + (["", axes_name] if axes_name else [])
        return [e.op("Pad", inputs, mode="constant")]
    if mode not in ("reflect", "edge"):
        ctx.fail(f"Pad mode {mode!r}")
    pads = ctx.constant(1)
    if pads is None:
        ctx.fail(f"Pad mode {mode!r} with pads computed at run time")
    x = ctx.x()
    rank = ctx.rank(x)
    pads = [int(p) for p in pads.reshape(-1)]
    axes = list(range(rank))
    if axes_name:
        axes_value = ctx.constant(3)
        if axes_value is None:
            ctx.fail("Pad axes computed at run time")
        axes = [ctx.axis(int(a), rank) for a in axes_value.reshape(-1)]
    count = len(axes)
    if min(pads) < 0:
        ctx.fail(f"Pad mode {mode!r} with negative pads")
    g = ctx.g
    for axis, before, after in zip(axes, pads[:count], pads[count:]):
        if before or after:
            g = _fold_axis(ctx, g, x, rank, axis, before, after, mode)
    return [g]


def _fold_axis(ctx: RuleContext, g: str, x: str, rank: int, axis: int, before: int, after: int, mode: str) -> str:
    """Undo reflect/edge padding of one axis: centre + border contributions moved into place."""
    e = ctx.e
    n = e.dims_slice(e.shape(x), axis, axis + 1)  # [1], the unpadded size
    n_plus_before = e.op("Add", [n, e.ints([before])])
    result = e.slice(g, [before], n_plus_before, [axis])

    def placed(part: str, lead: int | str, trail: int | str) -> str:
        """`part` zero-padded along `axis` to length n: `lead` zeros before, `trail` after."""
        zeros = [e.ints([0] * axis), e.ints([0] * (rank - 1)), e.ints([0] * (rank - 1 - axis))]
        pads = e.op("Concat", [zeros[0], _one(e, lead), zeros[1], _one(e, trail), zeros[2]], axis=0)
        return e.op("Pad", [part, pads], mode="constant")

    def minus(value: str, amount: int) -> str:
        return e.op("Sub", [value, e.ints([amount])])

    if mode == "edge":
        if before:
            head = e.reduce_sum(e.slice(g, [0], [before], [axis]), [axis], keepdims=True)
            result = e.op("Add", [result, placed(head, 0, minus(n, 1))])
        if after:
            tail = e.reduce_sum(e.slice(g, n_plus_before, [INT64_MAX], [axis]), [axis], keepdims=True)
            result = e.op("Add", [result, placed(tail, minus(n, 1), 0)])
        return result
    # reflect: padded[p] = x[before - p] for p < before, padded[before + n + t] = x[n - 2 - t]
    if before:
        head = e.slice(g, [before - 1], [INT64_MIN], [axis], [-1])  # g[before-1], ..., g[0] -> x[1..before]
        result = e.op("Add", [result, placed(head, 1, minus(n, 1 + before))])
    if after:
        last = e.op("Add", [n_plus_before, e.ints([after - 1])])
        stop = e.op("Sub", [n_plus_before, e.ints([1])])
        tail = e.slice(g, last, stop, [axis], [-1])  # -> x[n-1-after .. n-2]
        result = e.op("Add", [result, placed(tail, minus(n, 1 + after), 1)])
    return result



def _one(e, value: int | str) -> str:
    return e.ints([value]) if isinstance(value, int) else value
