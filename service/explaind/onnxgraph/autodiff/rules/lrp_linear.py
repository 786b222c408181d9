"""LRP rules for the linear layers (Conv, Gemm, MatMul with a constant weight): variant "lrp".

The tensor flowing back is the relevance R at the layer's output (not a gradient). Every rule is a
modified forward z = sum_k f(x_k; W_k, b_k) and a backward R_in = sum_k c_k x_k * f_k^T(R / stab(z)),
with f_k^T the adjoint of the layer with weight W_k (the plain gradient rule of the operator, run on
W_k), x+ = max(x, 0), x- = min(x, 0), W+/W- and b+/b- the clamped parameters, and
stab(z) = z + eps * sign(z) (sign(0) = +1). As in Zennit (Anders et al. 2021) and its defaults:

- epsilon (Bach et al. 2015): z = W x + b, R_in = x * W^T (R / stab_epsilon(z));
- zplus (alpha 1 beta 0 with negative inputs): z = W+ x+ + b+ + W- x-, R_in = x+ W+^T s + x- W-^T s;
- alpha2_beta1 / alpha1_beta0 (Bach et al. 2015): R_in = alpha (x+ W+^T s_p + x- W-^T s_p)
  - beta (x+ W-^T s_n + x- W+^T s_n) with z_p = W+ x+ + b+ + W- x-, z_n = W- x+ + b- + W+ x-;
- gamma (Montavon et al. 2019, generalised to negative inputs as Zennit's): where W x + b > 0,
  z = (W + g W+) x+ + (b + g b+) + (W + g W-) x-, R_in = x+ (W + g W+)^T s + x- (W + g W-)^T s;
  where it is < 0 the same with W+ and W- (b+ and b-) swapped. g is per row: (W + g W+)^T s =
  W^T s + g W+^T s, so a batch of requests with different gammas shares the weights;
- zbox (Montavon et al. 2017): z = W x + b - (W+ l + b+) - (W- h + b-),
  R_in = x W^T s - l W+^T s - h W-^T s, l/h the lowest/highest input values;
- wsquare (Montavon et al. 2017): z = W^2 1 + b^2, R_in = (W^2)^T s;
- flat (Lapuschkin et al. 2019): z = 1 1 (weights and input ones, no bias), R_in = 1^T s.

Parameters come from the node's NodeRule: rule (default epsilon), epsilon and gamma (names of [rows]
tensors of the graph, or floats), stabilizer (float, default 1e-6), low and high (arrays that
broadcast to the input, zbox only), bias (MatMul: the constant of the Add that reads it alone, a
Linear layer exported as MatMul + Add: z includes it as Zennit's Linear does; the Add passes R).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from ..registry import RuleContext, register
from . import linear

LRP = "lrp"
LINEAR_RULES = ("epsilon", "gamma", "alpha2_beta1", "alpha1_beta0", "zplus", "zbox", "wsquare", "flat")
STABILIZER = 1e-6


def stabilise(ctx: RuleContext, z: str, eps: float | str) -> str:
    """z + eps * sign(z), sign(0) = +1 (Zennit's stabilizer); `eps` a float or a [rows] tensor."""
    e = ctx.e
    if isinstance(eps, str):
        rank = ctx.rank(z) if ctx.info.dims(z) is not None else ctx.rank(ctx.y())
        eps_t = e.op("Reshape", [eps, e.ints([-1] + [1] * (rank - 1))])
        if ctx.dtype(eps) != ctx.dtype(z):
            eps_t = e.op("Cast", [eps_t], to=ctx.dtype(z))
    else:
        eps_t = ctx.scalar(eps, z)
    negative = e.op("Less", [z, ctx.scalar(0.0, z)])
    return e.op("Add", [z, e.op("Where", [negative, e.op("Neg", [eps_t]), eps_t])])


def per_row(ctx: RuleContext, value: float | str, like: str) -> str:
    """A [rows] tensor (or a float) shaped to broadcast against `like` (rows first)."""
    if not isinstance(value, str):
        return ctx.scalar(float(value), like)
    e = ctx.e
    rank = ctx.rank(like)
    out = e.op("Reshape", [value, e.ints([-1] + [1] * (rank - 1))])
    return out if ctx.dtype(value) == ctx.dtype(like) else e.op("Cast", [out], to=ctx.dtype(like))


@dataclasses.dataclass
class Layer:
    """One linear node seen as f(x; W, b): its modified forwards and their adjoints."""

    ctx: RuleContext
    weight: np.ndarray
    bias: np.ndarray | None

    def _const(self, value: np.ndarray, hint: str) -> str:
        name = self.ctx.e.const(np.ascontiguousarray(value.astype(self.weight.dtype)), hint)
        info = self.ctx.info
        info.constants[name] = value
        info.types[name] = (helper.np_dtype_to_tensor_dtype(self.weight.dtype), list(value.shape))
        return name

    def forward(self, x: str, w: np.ndarray, b: np.ndarray | None) -> str:
        """The node itself on input `x` with weight `w` and bias `b` (None: none)."""
        e, node = self.ctx.e, self.ctx.node
        inputs = [x, self._const(w, "lrp_weight")]
        matmul = node.op_type == "MatMul"
        if b is not None and not matmul:
            inputs.append(self._const(b, "lrp_bias"))
        out = e.op(node.op_type, inputs)
        e.nodes[-1].attribute.extend(node.attribute)
        if b is not None and matmul:  # the bias of the Add after it (params["bias"])
            out = e.op("Add", [out, self._const(b, "lrp_bias")])
        return out

    def adjoint(self, s: str, w: np.ndarray) -> str:
        """f^T s: the input gradient of the node with weight `w` for the output gradient `s`."""
        ctx = self.ctx
        node = onnx.NodeProto()
        node.CopyFrom(ctx.node)
        node.input[1] = self._const(w, "lrp_weight")
        del node.input[2:]
        sub = dataclasses.replace(ctx, node=node, gy=[s], need=[True, False])
        rule: Callable[[RuleContext], list] = {"Conv": linear.conv, "Gemm": linear.gemm, "MatMul": linear.matmul}[
            node.op_type]
        out = rule(sub)[0]
        self.ctx.e.discard_if_unused(node.input[1])  # a stride-1 Conv's adjoint holds its own flipped kernel
        return out


def _layer(ctx: RuleContext) -> Layer:
    op = ctx.node.op_type
    w = ctx.constant(1)
    if w is None:
        ctx.fail("LRP needs the weight (input 1) as a constant")
    if op == "MatMul" and w.ndim != 2:
        ctx.fail("LRP needs a 2-D constant weight for MatMul")
    b = ctx.constant(2) if len(ctx.node.input) > 2 and ctx.node.input[2] else None
    if len(ctx.node.input) > 2 and ctx.node.input[2] and b is None:
        ctx.fail("LRP needs the bias (input 2) as a constant")
    if op == "MatMul" and ctx.params.get("bias") is not None:
        b = np.asarray(ctx.params["bias"], w.dtype)
    if op == "Gemm" and float(ctx.attr("beta", 1.0)) < 0:
        ctx.fail("LRP needs Gemm's beta >= 0")
    return Layer(ctx, np.asarray(w), None if b is None else np.asarray(b))


def _pos(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.maximum(a, 0)


def _neg(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.minimum(a, 0)


def _sum(ctx: RuleContext, terms: list[str]) -> str:
    return ctx.e.add_all(terms)


def _mul(ctx: RuleContext, a: str, b: str) -> str:
    return ctx.e.op("Mul", [a, b])


def _div(ctx: RuleContext, r: str, z: str, eps: float | str) -> str:
    return ctx.e.op("Div", [r, stabilise(ctx, z, eps)])


def _parts(ctx: RuleContext, x: str) -> tuple[str, str]:
    e = ctx.e
    return e.op("Relu", [x]), e.op("Min", [x, ctx.scalar(0.0, x)])


def epsilon(ctx: RuleContext, layer: Layer) -> str:
    x = ctx.x()
    z = layer.forward(x, layer.weight, layer.bias)
    s = _div(ctx, ctx.g, z, ctx.params.get("epsilon", STABILIZER))
    return _mul(ctx, x, layer.adjoint(s, layer.weight))


def alpha_beta(ctx: RuleContext, layer: Layer, alpha: float, beta: float) -> str:
    e, w, b = ctx.e, layer.weight, layer.bias
    xp, xn = _parts(ctx, ctx.x())
    eps = ctx.params.get("stabilizer", STABILIZER)
    zp = _sum(ctx, [layer.forward(xp, _pos(w), _pos(b)), layer.forward(xn, _neg(w), None)])
    sp = _div(ctx, ctx.g, zp, eps)
    positive = _sum(ctx, [_mul(ctx, xp, layer.adjoint(sp, _pos(w))), _mul(ctx, xn, layer.adjoint(sp, _neg(w)))])
    if beta == 0:
        return positive if alpha == 1 else e.op("Mul", [positive, ctx.scalar(alpha, ctx.x())])
    zn = _sum(ctx, [layer.forward(xp, _neg(w), _neg(b)), layer.forward(xn, _pos(w), None)])
    sn = _div(ctx, ctx.g, zn, eps)
    negative = _sum(ctx, [_mul(ctx, xp, layer.adjoint(sn, _neg(w))), _mul(ctx, xn, layer.adjoint(sn, _pos(w)))])
    return e.op("Sub", [e.op("Mul", [positive, ctx.scalar(alpha, ctx.x())]),
                        e.op("Mul", [negative, ctx.scalar(beta, ctx.x())])])


def gamma(ctx: RuleContext, layer: Layer) -> str:
    """Zennit's generalised gamma: the part of each output with the sign of W x + b, its weights
    boosted by g times their parts of that sign, g per row (linear in g, see the module docstring)."""
    e, w, b = ctx.e, layer.weight, layer.bias
    x = ctx.x()
    xp, xn = _parts(ctx, x)
    eps = ctx.params.get("stabilizer", STABILIZER)
    g_out = per_row(ctx, ctx.params.get("gamma", 0.25), ctx.y())
    g_in = per_row(ctx, ctx.params.get("gamma", 0.25), x)
    y = ctx.y()
    zero = ctx.scalar(0.0, y)
    relevance = []
    for sign, clamp, other, clamp_b in ((e.op("Greater", [y, zero]), _pos, _neg, _pos),
                                        (e.op("Less", [y, zero]), _neg, _pos, _neg)):
        # z = (W + g W_s) x+ + (b + g b_s) + (W + g W_o) x- = y + g (W_s x+ + b_s + W_o x-)
        base = y
        boost = _sum(ctx, [layer.forward(xp, clamp(w), clamp_b(b)), layer.forward(xn, other(w), None)])
        z = e.op("Add", [base, e.op("Mul", [g_out, boost])])
        masked = e.op("Mul", [ctx.g, e.op("Cast", [sign], to=ctx.dtype(y))])
        s = _div(ctx, masked, z, eps)
        plain = layer.adjoint(s, w)
        boost_p, boost_n = layer.adjoint(s, clamp(w)), layer.adjoint(s, other(w))
        through_p = e.op("Add", [plain, e.op("Mul", [g_in, boost_p])])
        through_n = e.op("Add", [plain, e.op("Mul", [g_in, boost_n])])
        relevance += [_mul(ctx, xp, through_p), _mul(ctx, xn, through_n)]
    return _sum(ctx, relevance)


def zbox(ctx: RuleContext, layer: Layer) -> str:
    e, w, b = ctx.e, layer.weight, layer.bias
    x = ctx.x()
    low, high = ctx.params.get("low"), ctx.params.get("high")
    if low is None or high is None:
        ctx.fail("the zbox rule needs the input bounds (the model's preprocessing gives them for images)")
    shape = e.shape(x)
    dtype = helper.tensor_dtype_to_np_dtype(ctx.dtype(x))
    lo = e.op("Expand", [e.const(np.asarray(low, dtype), "lrp_low"), shape])
    hi = e.op("Expand", [e.const(np.asarray(high, dtype), "lrp_high"), shape])
    z = e.op("Sub", [layer.forward(x, w, b), _sum(ctx, [layer.forward(lo, _pos(w), _pos(b)),
                                                       layer.forward(hi, _neg(w), _neg(b))])])
    s = _div(ctx, ctx.g, z, ctx.params.get("stabilizer", STABILIZER))
    subtracted = _sum(ctx, [_mul(ctx, lo, layer.adjoint(s, _pos(w))), _mul(ctx, hi, layer.adjoint(s, _neg(w)))])
    return e.op("Sub", [_mul(ctx, x, layer.adjoint(s, w)), subtracted])


def _ones_input(ctx: RuleContext) -> str:
    x = ctx.x()
    return ctx.e.op("ConstantOfShape", [ctx.e.shape(x)],
                    value=helper.make_tensor("value", ctx.dtype(x), [1], [1]))


def wsquare(ctx: RuleContext, layer: Layer) -> str:
    w2 = layer.weight * layer.weight
    b2 = None if layer.bias is None else layer.bias * layer.bias
    z = layer.forward(_ones_input(ctx), w2, b2)
    return layer.adjoint(_div(ctx, ctx.g, z, ctx.params.get("stabilizer", STABILIZER)), w2)


def flat(ctx: RuleContext, layer: Layer) -> str:
    ones = np.ones_like(layer.weight)
    z = layer.forward(_ones_input(ctx), ones, None)
    return layer.adjoint(_div(ctx, ctx.g, z, ctx.params.get("stabilizer", STABILIZER)), ones)


def _apply(ctx: RuleContext) -> str:
    rule = str(ctx.params.get("rule", "epsilon"))
    layer = _layer(ctx)
    if rule == "epsilon":
        return epsilon(ctx, layer)
    if rule == "zplus" or rule == "alpha1_beta0":
        return alpha_beta(ctx, layer, 1.0, 0.0)
    if rule == "alpha2_beta1":
        return alpha_beta(ctx, layer, 2.0, 1.0)
    if rule == "gamma":
        return gamma(ctx, layer)
    if rule == "zbox":
        return zbox(ctx, layer)
    if rule == "wsquare":
        return wsquare(ctx, layer)
    if rule == "flat":
        return flat(ctx, layer)
    ctx.fail(f"unknown LRP rule {rule!r}: expected one of {', '.join(LINEAR_RULES)}")
    raise AssertionError  # (fail raises)


@register(("Conv", "Gemm"), variant=LRP, grad_inputs=(0,))
def lrp_linear(ctx: RuleContext) -> list:
    """The node's LRP rule (params["rule"]), relevance to the data input only."""
    return [_apply(ctx)]


@register("MatMul", variant=LRP, grad_inputs=(0,))
def lrp_matmul(ctx: RuleContext) -> list:
    """x @ W with W a constant 2-D weight (the bias, if any, is a separate Add)."""
    return [_apply(ctx)]
