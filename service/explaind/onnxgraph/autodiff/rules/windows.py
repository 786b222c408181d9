"""Sliding-window geometry shared by Conv and AveragePool: padding, and the exact-size adjoint.

For one spatial axis with input size n, begin/end pads p0/p1, kernel k, dilation d (extent
e = d (k - 1) + 1) and stride s, a window-op's adjoint is a transposed convolution with the same
kernel, stride and dilation. Unpadded, it covers padded positions [0, s (out - 1) + e); the input
gradient is its slice [p0, p0 + n), with zeros where no window reached (output_padding extends the
transposed output by s - 1 so the slice never runs past its end).
"""

from __future__ import annotations

import numpy as np

from ..registry import RuleContext

# A dense convolution with fewer input channels gets its input gradient from ConvTranspose (see
# flipped_conv_adjoint).
MIN_ADJOINT_CHANNELS = 16


def geometry(ctx: RuleContext, nd: int) -> tuple[list[int], list[int], str, list[int]]:
    """strides, dilations, auto_pad, pads of a window operator (ONNX defaults filled in)."""
    strides = [int(v) for v in (ctx.attr("strides") or [1] * nd)]
    dilations = [int(v) for v in (ctx.attr("dilations") or [1] * nd)]
    auto_pad = str(ctx.attr("auto_pad", "NOTSET") or "NOTSET")
    pads = [int(v) for v in (ctx.attr("pads") or [0] * (2 * nd))]
    return strides, dilations, auto_pad, pads


def _same_begin(total: int, auto_pad: str) -> int:
    """onnxruntime's split of SAME padding (C++ integer division, truncating toward zero)."""
    numerator = total + 1 if auto_pad == "SAME_LOWER" else total
    return int(numerator / 2)


def static_pads(
    n: list, kernel: list[int], strides: list[int], dilations: list[int], auto_pad: str, pads: list[int]
) -> tuple[list[int], list[int]] | None:
    """(begin, end) pads when they are known before run time, else None."""
    nd = len(kernel)
    if auto_pad in ("NOTSET", ""):
        return pads[:nd], pads[nd:]
    if auto_pad == "VALID":
        return [0] * nd, [0] * nd
    if not all(isinstance(v, int) for v in n):
        return None
    begin, end = [], []
    for size, k, s, d in zip(n, kernel, strides, dilations):
        out = (size + s - 1) // s
        total = (out - 1) * s + (k - 1) * d + 1 - size
        begin.append(_same_begin(total, auto_pad))
        end.append(total - begin[-1])
    return begin, end


def runtime_begin_pads(
    ctx: RuleContext, x: str, kernel: list[int], strides: list[int], dilations: list[int], auto_pad: str
) -> str:
    """SAME_UPPER/SAME_LOWER begin pads computed from Shape(x) at run time (int64 [nd])."""
    e = ctx.e
    nd = len(kernel)
    size = e.dims_slice(e.shape(x), 2, 2 + nd)
    s = e.ints(strides)
    out = e.op("Div", [e.op("Add", [size, e.ints([v - 1 for v in strides])]), s])
    extent = e.ints([(k - 1) * d + 1 for k, d in zip(kernel, dilations)])
    total = e.op("Sub", [e.op("Add", [e.op("Mul", [e.op("Sub", [out, e.ints([1] * nd)]), s]), extent]), size])
    if auto_pad == "SAME_LOWER":
        total = e.op("Add", [total, e.ints([1] * nd)])
    return e.op("Div", [total, e.ints([2] * nd)])


def transposed_window(
    ctx: RuleContext, g: str, w: str, kernel: list[int], nd: int, group: int = 1, x: str | None = None, exact_static: bool = True
) -> str:
    """The adjoint of a window operator on x: ConvTranspose(g, w) cut to exactly x's shape.

    With pads and sizes known (and no ceil_mode: `exact_static`), pads and output_padding give the
    exact size directly; otherwise the unpadded transposed output is sliced at run time.
    """
    e = ctx.e
    x = x or ctx.x(0)
    strides, dilations, auto_pad, pads = geometry(ctx, nd)
    n = ctx.dims(x)[2:]
    known = static_pads(n, kernel, strides, dilations, auto_pad, pads)
    if exact_static and known is not None and all(isinstance(v, int) for v in n):
        begin, end = known
        remainder = []
        for size, p0, p1, k, s, d in zip(n, begin, end, kernel, strides, dilations):
            span = size + p0 + p1 - ((k - 1) * d + 1)
            remainder.append(span - (span // s) * s)
        if min(begin + end) >= 0:
            return e.op(
                "ConvTranspose", [g, w], strides=strides, dilations=dilations, group=group,
                pads=[*begin, *end], output_padding=remainder if any(remainder) else None,
            )
    full = e.op(
        "ConvTranspose", [g, w], strides=strides, dilations=dilations, group=group,
        output_padding=[s - 1 for s in strides] if any(s > 1 for s in strides) else None,
    )
    if known is not None:
        if min(known[0]) < 0:
            ctx.fail("negative begin padding")
        starts = e.ints(known[0])
    else:
        starts = runtime_begin_pads(ctx, x, kernel, strides, dilations, auto_pad)
    ends = e.op("Add", [starts, e.dims_slice(e.shape(x), 2, 2 + nd)])
    return e.slice(full, starts, ends, list(range(2, 2 + nd)))


def flipped_conv_adjoint(ctx: RuleContext, g: str, kernel: list[int], nd: int, group: int) -> str | None:
    """dX of a stride-1 Conv as a Conv of g with the flipped, transposed kernel; None where not applicable.

    For stride 1 the adjoint of a correlation is a correlation (Dumoulin & Visin 2016, "A guide to
    convolution arithmetic", section 4.1): dx[i] = sum_t W'[t] g[i + t d - (e - 1 - p0)] with
    W'[ci, co] = W[co, ci] flipped along every spatial axis (per group), e = d (k - 1) + 1 the
    kernel's extent, so it is a Conv with begin pads e - 1 - p0 and end pads e - 1 - p1. It runs as
    onnxruntime's blocked (NCHWc) convolution, several times faster on CPU than its ConvTranspose.
    Needs the weight as a constant, the pads known before run time and no negative pad. Strided
    convolutions keep ConvTranspose: the same Conv over g with zeros inserted (Pad + Reshape) ran
    at 0.44-0.70x the ConvTranspose graph's rows/s on the zoo's resnet, mobilenetv2, senet and densenet.
    So does a dense (group 1) convolution with fewer than MIN_ADJOINT_CHANNELS input channels (an
    image's first layer): the NCHWc convolution computes output channels in blocks of 16 (AVX-512),
    so 3 of them cost as much as 16; ConvTranspose (one GEMM and col2im per image) was 5.7x faster
    for 3 channels and 1.4x for 8 (16 -> 3 and 16 -> 8 channels, 3x3, 32 rows of 32x32, 1 thread).
    """
    strides, dilations, auto_pad, pads = geometry(ctx, nd)
    w = ctx.constant(1)
    n = ctx.dims(ctx.x(0))[2:]
    if w is None or any(s != 1 for s in strides) or not all(isinstance(v, int) for v in n):
        return None
    if group == 1 and w.shape[1] < MIN_ADJOINT_CHANNELS:
        return None
    known = static_pads(n, kernel, strides, dilations, auto_pad, pads)
    if known is None:
        return None
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    new_pads = [e - 1 - p for e, p in zip(extents, known[0])] + [e - 1 - p for e, p in zip(extents, known[1])]
    if min(new_pads) < 0:
        return None
    c_out, c_in_per_group = w.shape[0], w.shape[1]
    per_group = w.reshape(group, c_out // group, c_in_per_group, *w.shape[2:])
    transposed = np.swapaxes(per_group, 1, 2).reshape(group * c_in_per_group, c_out // group, *w.shape[2:])
    flipped = np.ascontiguousarray(np.flip(transposed, axis=tuple(range(2, 2 + nd))))
    return ctx.e.op("Conv", [g, ctx.e.const(flipped, "adjoint_kernel")], kernel_shape=list(kernel),
                    dilations=dilations, group=group, pads=new_pads)


def _phase_taps(n: int, k: int, s: int, p0: int, out: int) -> list[tuple[int, int, list[int]]] | None:
    """Per phase r of one axis: (begin pad, end pad, kernel taps t for j = 0..M-1) of the Conv
    giving dx[s q + r]; None where a phase has no tap or a pad would be negative."""
    phases = []
    q_len = n // s
    for r in range(s):
        m_lo, m_hi = -((r + p0) // s), (k - 1 - r - p0) // s  # t = r + p0 + s m in [0, k)
        if m_hi < m_lo or m_hi < 0:
            return None
        taps = [r + p0 + s * (m_hi - j) for j in range(m_hi - m_lo + 1)]
        end = q_len - 1 + len(taps) - out - m_hi
        if end < 0:
            return None
        phases.append((m_hi, end, taps))
    return phases


def phase_conv_adjoint(ctx: RuleContext, g: str, kernel: list[int], nd: int, group: int) -> str | None:
    """dX of a strided 2-D Conv as one stride-1 Conv per output phase, interleaved; None where not
    applicable (weight not constant, sizes unknown or not multiples of the stride, dilation,
    a phase without taps, a negative pad).

    Input position i = s q + r of phase r receives dx[s q + r] = sum_m W[r + p0 + s m] g[q - m]
    (the sub-pixel view of a transposed convolution, Shi et al. 2016, "Real-time single image and
    video super-resolution using an efficient sub-pixel convolutional neural network"): a stride-1
    correlation of g with the taps of W that fall on that phase, per group with the kernel
    transposed as in flipped_conv_adjoint. The s_h * s_w parts are interleaved by Unsqueeze + Concat
    + Reshape. For the zoo's depthwise stride-2 convolutions (64 and 96 channels, 16x16) this ran
    1.5-3x faster than the ConvTranspose (8 rows, 1 thread): onnxruntime runs the phase Convs in
    its blocked layout and ConvTranspose runs one small GEMM per group and image. For a dense
    strided Conv (resnet's 16 -> 32, stride 2) it was no faster, so the Conv rule uses it for
    depthwise convolutions only.
    """
    strides, dilations, auto_pad, pads = geometry(ctx, nd)
    w = ctx.constant(1)
    x = ctx.x(0)
    n, out = ctx.dims(x)[2:], ctx.dims(ctx.y())[2:] if ctx.info.dims(ctx.y()) else None
    if (nd != 2 or w is None or out is None or all(s == 1 for s in strides) or any(d != 1 for d in dilations)
            or not all(isinstance(v, int) for v in [*n, *out])):
        return None
    known = static_pads(n, kernel, strides, dilations, auto_pad, pads)
    if known is None or any(size % s for size, s in zip(n, strides)):
        return None
    axes = [_phase_taps(size, k, s, p0, o) for size, k, s, p0, o in zip(n, kernel, strides, known[0], out)]
    if any(a is None for a in axes):
        return None
    c_out, c_in_per_group = w.shape[0], w.shape[1]
    per_group = w.reshape(group, c_out // group, c_in_per_group, *w.shape[2:])
    transposed = np.swapaxes(per_group, 1, 2).reshape(group * c_in_per_group, c_out // group, *w.shape[2:])
    e = ctx.e
    rows = []
    for begin_h, end_h, taps_h in axes[0]:  # type: ignore[union-attr]
        parts = []
        for begin_w, end_w, taps_w in axes[1]:  # type: ignore[union-attr]
            v = np.ascontiguousarray(transposed[:, :, taps_h][:, :, :, taps_w])
            part = e.op("Conv", [g, e.const(v, "phase_kernel")], kernel_shape=[len(taps_h), len(taps_w)], group=group,
                        pads=[begin_h, begin_w, end_h, end_w])
            parts.append(e.unsqueeze(part, [3, 5]))  # [N, C, q_h, 1, q_w, 1]
        rows.append(e.op("Concat", parts, axis=5))
    tiles = e.op("Concat", rows, axis=3)  # [N, C, q_h, s_h, q_w, s_w]
    return e.op("Reshape", [tiles, e.ints([0, 0, *n])])
