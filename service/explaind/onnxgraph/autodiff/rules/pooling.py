"""Pooling: the max routes the gradient to its argmax, the average spreads it over its window.

MaxPool with non-overlapping windows compares x with y per window offset (no Indices, no scatter);
otherwise it uses its own Indices output (flat positions in X, padding ignored), so strides, pads,
dilations and ceil_mode are exactly onnxruntime's. Overlapping windows can share an argmax, and a
plain ScatterElements keeps one of the duplicates: the output positions are therefore split into
groups whose windows cannot overlap (position mod ceil(extent / stride) per axis), each group
scattered and accumulated exactly (gather, add, scatter of unique indices).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from onnx import helper

from ..emitter import INT64_MAX
from ..registry import RuleContext, register
from .windows import geometry, transposed_window


@register("MaxPool", grad_inputs=(0,), outputs=(0,))
def max_pool(ctx: RuleContext) -> list:
    """y[o] = max over the window of x: dx[i] = sum of g[o] over the windows o whose argmax is i."""
    e = ctx.e
    x = ctx.x()
    nd = ctx.rank(x) - 2
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    strides, dilations, _, _ = geometry(ctx, nd)
    tiled = _tiled_max_pool(ctx, kernel, nd)
    if tiled is not None:
        return [tiled]
    indices = _indices(ctx)
    flat = e.flatten(ctx.zeros_like(x))
    g = ctx.g
    period = [math.ceil(((k - 1) * d + 1) / s) for k, d, s in zip(kernel, dilations, strides)]
    if all(p == 1 for p in period):  # windows never overlap: the indices are unique
        flat = e.op("ScatterElements", [flat, e.flatten(indices), e.flatten(g)], axis=0)
    else:
        axes = list(range(2, 2 + nd))
        for offset in itertools.product(*[range(p) for p in period]):
            part_g = e.slice(g, list(offset), [INT64_MAX] * nd, axes, period)
            part_i = e.flatten(e.slice(indices, list(offset), [INT64_MAX] * nd, axes, period))
            current = e.op("GatherElements", [flat, part_i], axis=0)
            updated = e.op("Add", [current, e.flatten(part_g)])
            flat = e.op("ScatterElements", [flat, part_i, updated], axis=0)
    return [e.reshape_like(flat, x)]


def _tiled_max_pool(ctx: RuleContext, kernel: list[int], nd: int) -> str | None:
    """Non-overlapping windows (stride = kernel, no pads or dilation), sizes known: no Indices.

    Each window offset j (row-major) is a strided slice x_j of x at y's size; the gradient left to
    route starts as h = g and at each offset dx_j = h * [x_j == y], h -= dx_j, so a window's gradient
    goes to its first maximum exactly as with Indices (h * 0 or 1 is exact). The offsets' parts are
    interleaved back by Concat + Reshape; rows and columns past the last window get 0. Everything
    but the Concat runs at y's size, a k-th of x's.
    """
    strides, dilations, auto_pad, pads = geometry(ctx, nd)
    x = ctx.x()
    n = ctx.dims(x)[2:]
    if (strides != kernel or any(d != 1 for d in dilations) or any(pads) or auto_pad not in ("NOTSET", "VALID")
            or int(ctx.attr("ceil_mode", 0)) or not all(isinstance(v, int) for v in n)):
        return None
    e = ctx.e
    out = [size // k for size, k in zip(n, kernel)]
    if min(out) < 1:
        return None
    axes = list(range(2, 2 + nd))
    dtype = ctx.dtype(x)
    rest = [size - o * k for size, o, k in zip(n, out, kernel)]
    if nd == 2 and kernel[0] == kernel[1]:
        return _blocked_max_pool(ctx, kernel[0], out, rest, dtype)
    h, parts = ctx.g, {}
    offsets = list(itertools.product(*[range(k) for k in kernel]))
    for index, offset in enumerate(offsets):
        x_j = e.slice(x, list(offset), [o + k * m for o, k, m in zip(offset, kernel, out)], axes, kernel)
        part = e.op("Mul", [h, e.op("Cast", [e.op("Equal", [x_j, ctx.y()])], to=dtype)])
        if index < len(offsets) - 1:
            h = e.op("Sub", [h, part])
        parts[offset] = e.unsqueeze(part, [3 + 2 * a for a in range(nd)])  # [N, C, o1, 1, o2, 1, ...]

    def interleave(prefix: tuple[int, ...]) -> str:
        level = len(prefix)
        if level == nd:
            return parts[prefix]
        return e.op("Concat", [interleave((*prefix, j)) for j in range(kernel[level])], axis=3 + 2 * level)

    tiles = e.op("Reshape", [interleave(()), e.ints([0, 0, *[o * k for o, k in zip(out, kernel)]])])
    if any(rest):
        tiles = e.op("Pad", [tiles, e.ints([0] * (nd + 2) + [0, 0, *rest])])
    return tiles


def _blocked_max_pool(ctx: RuleContext, k: int, out: list[int], rest: list[int], dtype: int) -> str:
    """The same for square 2-D windows, with whole-tensor moves: SpaceToDepth puts window offset j
    of every window in channel block j, Split along channels makes contiguous copies (cheaper than
    strided slices on onnxruntime's CPU); Concat interleaves the parts back (cheaper than DepthToSpace)."""
    e = ctx.e
    x = ctx.x()
    if any(rest):
        x = e.slice(x, [0, 0], [o * k for o in out], [2, 3])
    blocks = e.op("SpaceToDepth", [x], blocksize=k)
    count = k * k
    e.op("Split", [blocks], outputs=count, axis=1, num_outputs=count if e.opset >= 18 else None)
    names = list(e.nodes[-1].output)  # the Split's `count` outputs
    h, parts = ctx.g, []
    for index, x_j in enumerate(names):
        part = e.op("Mul", [h, e.op("Cast", [e.op("Equal", [x_j, ctx.y()])], to=dtype)])
        if index < count - 1:
            h = e.op("Sub", [h, part])
        parts.append(part)
    rows = [e.op("Concat", [e.unsqueeze(parts[r * k + c], [3, 5]) for c in range(k)], axis=5) for r in range(k)]
    tiles = e.op("Reshape", [e.op("Concat", rows, axis=3), e.ints([0, 0, out[0] * k, out[1] * k])])
    if any(rest):
        tiles = e.op("Pad", [tiles, e.ints([0, 0, 0, 0, 0, 0, *rest])])
    return tiles


def _indices(ctx: RuleContext) -> str:
    """MaxPool's row-major Indices: the node's own output, one added to it, or a second MaxPool."""
    node = ctx.node
    storage_order = int(ctx.attr("storage_order", 0))
    if storage_order == 0:
        if len(node.output) > 1 and node.output[1]:
            return node.output[1]
        if len(node.output) > 1:  # the Indices output was declared but omitted ('')
            node.output[1] = ctx.e.fresh("maxpool_indices")
            return node.output[1]
        return ctx.add_forward_output()
    e = ctx.e
    outputs = [e.fresh("maxpool_values"), e.fresh("maxpool_indices")]
    twin = helper.make_node("MaxPool", [ctx.x()], outputs, name=e.fresh("MaxPool"))
    twin.attribute.extend(a for a in node.attribute if a.name != "storage_order")
    e.nodes.append(twin)
    return outputs[1]


@register("GlobalMaxPool")
def global_max_pool(ctx: RuleContext) -> list:
    """y[n, c] = max over space of x[n, c]: the gradient goes to the (first) argmax."""
    e = ctx.e
    x = ctx.x()
    per_channel = e.op("Reshape", [x, e.ints([0, 0, -1])])  # [N, C, H*W]
    argmax = e.op("ArgMax", [per_channel], axis=2, keepdims=1)  # [N, C, 1]
    g = e.op("Reshape", [ctx.g, e.ints([0, 0, -1])])
    zeros = ctx.zeros_like(per_channel)
    return [e.reshape_like(e.op("ScatterElements", [zeros, argmax, g], axis=2), x)]


@register("GlobalAveragePool")
def global_average_pool(ctx: RuleContext) -> list:
    """y[n, c] = mean over space of x[n, c]: dx = g / (H * W), broadcast over space."""
    e = ctx.e
    x = ctx.x()
    count = e.op("Cast", [e.op("Div", [e.op("Size", [x]), e.op("Size", [ctx.y()])])], to=ctx.dtype(x))
    return [e.op("Expand", [e.op("Div", [ctx.g, count]), e.shape(x)])]  # divided at y's size, then spread


@register("AveragePool")
def average_pool(ctx: RuleContext) -> list:
    """y[o] = sum of x over window o / d(o): dx = S^T (g / d), S the window-sum operator.

    The divisor d(o) (the window size, or its count of real elements without count_include_pad,
    clipped windows under ceil_mode) is read off the operator itself: with ones as input,
    AveragePool(1)[o] = r(o) / d(o), r(o) the real elements of window o (a Conv of ones), so
    1 / d = AveragePool(1) / r. S^T is a transposed convolution with a kernel of ones, run per
    channel on [N*C, 1, ...].
    """
    e = ctx.e
    x = ctx.x()
    nd = ctx.rank(x) - 2
    dtype = ctx.dtype(x)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    strides, dilations, auto_pad, pads = geometry(ctx, nd)
    ceil_mode = int(ctx.attr("ceil_mode", 0))
    ones_kernel = e.const(np.ones([1, 1, *kernel], np_dtype), "ones_kernel")

    space = e.dims_slice(e.shape(x), 2, 2 + nd)
    ones = e.op(
        "ConstantOfShape", [e.op("Concat", [e.ints([1, 1]), space], axis=0)],
        value=helper.make_tensor("value", dtype, [1], [1]),
    )
    pooled_ones = e.op("AveragePool", [ones], outputs=1)
    e.nodes[-1].attribute.extend(ctx.node.attribute)  # the very same pooling: r / d
    if auto_pad.startswith("SAME"):
        real = e.op("Conv", [ones, ones_kernel], strides=strides, dilations=dilations, auto_pad=auto_pad)
    else:
        begin = pads[:nd] if auto_pad != "VALID" else [0] * nd
        end = pads[nd:] if auto_pad != "VALID" else [0] * nd
        if ceil_mode:  # one more (partial) window per axis at most; cut to y's size below
            end = [p + s - 1 for p, s in zip(end, strides)]
        real = e.op("Conv", [ones, ones_kernel], strides=strides, dilations=dilations, pads=[*begin, *end])
        if ceil_mode:
            out_space = e.dims_slice(e.shape(ctx.y()), 2, 2 + nd)
            real = e.slice(real, [0] * nd, out_space, list(range(2, 2 + nd)))
    real = e.op("Max", [real, ctx.scalar(1.0)])
    scaled = e.op("Mul", [ctx.g, e.op("Div", [pooled_ones, real])])
    per_channel_shape = e.op("Concat", [e.ints([-1, 1]), e.dims_slice(e.shape(ctx.g), 2, 2 + nd)], axis=0)
    per_channel = e.op("Reshape", [scaled, per_channel_shape])
    spread = transposed_window(ctx, per_channel, ones_kernel, kernel, nd, x=x, exact_static=not ceil_mode)
    return [e.reshape_like(spread, x)]
