"""Linear layers: Gemm, MatMul, Conv, and BatchNormalization at inference.

Gradients flow to the data inputs only: explanations never differentiate with respect to weights
(initializers), so a path through a weight or bias is reported as unsupported.
"""

from __future__ import annotations

from ..registry import RuleContext, register
from .windows import flipped_conv_adjoint, phase_conv_adjoint, transposed_window


@register("Gemm", grad_inputs=(0, 1, 2))
def gemm(ctx: RuleContext) -> list:
    """Y = alpha * A' B' + beta * C with A' = A^T if transA, B' = B^T if transB.

    dA' = alpha * g B'^T, dB' = alpha * A'^T g, dC = beta * sum_broadcast(g); transposed back.
    """
    e = ctx.e
    a, b, c = ctx.x(0), ctx.x(1), ctx.x(2)
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    trans_a, trans_b = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    g = ctx.g
    da = db = dc = None
    if ctx.need[0]:
        if trans_a:  # dA = alpha * B' g^T
            da = e.op("Gemm", [b, g], alpha=alpha, transA=trans_b, transB=1)
        else:  # dA = alpha * g B'^T
            da = e.op("Gemm", [g, b], alpha=alpha, transB=1 - trans_b)
    if ctx.need[1]:
        if trans_b:  # dB = alpha * g^T A'
            db = e.op("Gemm", [g, a], alpha=alpha, transA=1, transB=trans_a)
        else:  # dB = alpha * A'^T g
            db = e.op("Gemm", [a, g], alpha=alpha, transA=1 - trans_a)
    if len(ctx.need) > 2 and ctx.need[2]:
        scaled = g if beta == 1.0 else e.op("Mul", [g, ctx.scalar(beta, c)])
        dc = ctx.unbroadcast(scaled, ctx.info.dims(ctx.y()), c)
    return [da, db, dc]


def _swap_last(ctx: RuleContext, t: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return ctx.e.op("Transpose", [t], perm=perm)


@register("MatMul", grad_inputs=(0, 1))
def matmul(ctx: RuleContext) -> list:
    """Y = A @ B (numpy semantics: batched, broadcast, 1-D operands promoted then squeezed).

    dA = sum_broadcast(g @ B^T), dB = sum_broadcast(A^T @ g), transposes on the last two axes.
    """
    e = ctx.e
    a, b = ctx.x(0), ctx.x(1)
    a_dims, b_dims, y_dims = ctx.dims(a), ctx.dims(b), ctx.dims(ctx.y())
    ra, rb = len(a_dims), len(b_dims)
    # Promote 1-D operands as MatMul does: A [K] -> [1, K], B [K] -> [K, 1], and g to match.
    g = ctx.g
    if ra == 1 and rb == 1:
        g = e.unsqueeze(g, [0, 1])
    elif ra == 1:
        g = e.unsqueeze(g, [len(y_dims) - 1])
    elif rb == 1:
        g = e.unsqueeze(g, [len(y_dims)])
    a2 = e.unsqueeze(a, [0]) if ra == 1 else a
    b2 = e.unsqueeze(b, [1]) if rb == 1 else b
    batch = max(ra, rb, 2) - 2
    y_batch = list(y_dims[:batch])
    da = db = None
    if ctx.need[0]:
        full = e.op("MatMul", [g, _swap_last(ctx, b2, max(rb, 2))])  # [batch, M, K]
        if ra == 1:
            da = e.reduce_sum(full, list(range(batch + 1)), keepdims=False)
        else:
            da = ctx.unbroadcast(full, [*y_batch, *a_dims[-2:]], a)
    if ctx.need[1]:
        full = e.op("MatMul", [_swap_last(ctx, a2, max(ra, 2)), g])  # [batch, K, N]
        if rb == 1:
            db = e.reduce_sum(full, [*range(batch), batch + 1], keepdims=False)
        else:
            db = ctx.unbroadcast(full, [*y_batch, *b_dims[-2:]], b)
    return [da, db]


@register("Conv", grad_inputs=(0,))
def conv(ctx: RuleContext) -> list:
    """Y = conv(X, W) + B: dX = conv_transpose(g, W) with the same strides, dilations and groups
    (stride 1 with a constant W: the equal Conv of g with W flipped and transposed, which is faster;
    a strided depthwise Conv: one Conv per output phase, interleaved, also faster).

    The transposed convolution is cut (pads, or a Slice) and zero-extended (output_padding) so its
    output matches X exactly: input positions no window reaches (a strided conv's remainder) get 0.
    """
    w = ctx.x(1)
    w_shape = ctx.info.static_shape(w)
    nd = ctx.rank(ctx.x()) - 2
    kernel = ctx.attr("kernel_shape") or (w_shape[2:] if w_shape else None)
    if kernel is None:
        ctx.fail("the kernel shape is unknown")
    group = int(ctx.attr("group", 1))
    fast = flipped_conv_adjoint(ctx, ctx.g, [int(k) for k in kernel], nd, group)
    if fast is None and group > 1 and w_shape is not None and w_shape[0] == group and w_shape[1] == 1:  # depthwise
        fast = phase_conv_adjoint(ctx, ctx.g, [int(k) for k in kernel], nd, group)
    return [fast or transposed_window(ctx, ctx.g, w, list(kernel), nd, group=group)]


@register("BatchNormalization", grad_inputs=(0,), outputs=(0,))
def batch_normalization(ctx: RuleContext) -> list:
    """Inference: y = scale * (x - mean) / sqrt(var + eps) + B: dx = g * scale / sqrt(var + eps)
    (per channel, axis 1)."""
    if int(ctx.attr("training_mode", 0)) or len([o for o in ctx.node.output if o]) > 1:
        ctx.fail("training-mode batch normalisation (batch statistics) has no inference gradient")
    e = ctx.e
    x, scale, var = ctx.x(0), ctx.x(1), ctx.x(4)
    eps = float(ctx.attr("epsilon", 1e-5))
    factor = e.op("Div", [scale, e.op("Sqrt", [e.op("Add", [var, ctx.scalar(eps, var)])])])
    rank = ctx.rank(x)
    if rank > 2:
        factor = e.unsqueeze(factor, list(range(1, rank - 1)))
    if ctx.dtype(scale) != ctx.dtype(x):
        factor = e.op("Cast", [factor], to=ctx.dtype(x))
    return [e.op("Mul", [ctx.g, factor])]

