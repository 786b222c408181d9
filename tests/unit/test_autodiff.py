"""Autodiff written as ONNX nodes (explaind.onnxgraph.autodiff), checked on values.

1. every operator rule against central differences in float64 (attribute variants, opsets 11-21);
2. guided backpropagation and deconvnet against torch with hooks on ReLU;
3. gradients at an intermediate tensor of a torch-exported network against torch autograd;
4. operators without a rule are named (op and node), off-path ones do not matter;
5. one gradient graph serves every batch size.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from explaind.onnxgraph.autodiff import (
    UnsupportedOperator,
    differentiate,
    supported_operators,
    unsupported_operators,
)

from _autodiff_cases import (
    GRAD,
    SEED,
    C,
    Case,
    Runner,
    away,
    central_differences,
    check,
    distinct,
    positive,
    relative_error,
    rng_for,
    session,
    single,
)

I64 = np.int64
BIG = np.iinfo(np.int64).max


def _r(key: str) -> np.random.Generator:
    return rng_for(key)


# 1. Finite differences for every rule ------------------------------------------------------------


def elementwise_cases() -> list[Case]:
    r = _r("elementwise")
    cases = []
    for opset in (11, 13, 18, 21):
        cases.append(single(f"Add-broadcast-op{opset}", "Add", [away(r, 2, 3, 4), away(r, 3, 1)], opset=opset))
    cases += [
        single("Add-same-shape", "Add", [away(r, 2, 3), away(r, 2, 3)]),
        single("Add-constant", "Add", [away(r, 2, 3), C(away(r, 3))]),
        Case("Add-same-tensor-twice", [("Add", ["x", "x"], ["y"], {})], {"x": away(r, 2, 3)}),
        single(
            "Add-runtime-broadcast", "Add", [away(r, 2, 3), away(r, 1, 3)], opset=11,
            shapes={"x0": ["a", 3], "x1": ["b", 3]},
        ),
        single(
            "Add-runtime-broadcast-op13", "Add", [away(r, 2, 3), away(r, 1, 3)], opset=13,
            shapes={"x0": ["a", 3], "x1": ["b", 3]},
        ),
        single("Sub-broadcast", "Sub", [away(r, 2, 3, 4), away(r, 4)]),
        single("Sub-broadcast-op11", "Sub", [away(r, 4), away(r, 2, 3, 4)], opset=11),
        single("Mul-broadcast", "Mul", [away(r, 2, 1, 4), away(r, 3, 1)]),
        single("Mul-scalar", "Mul", [away(r, 2, 3), away(r)]),
        single("Div-same-shape", "Div", [away(r, 2, 3), away(r, 2, 3, margin=0.5)]),
        single("Div-broadcast", "Div", [away(r, 2, 3, 4), away(r, 1, 3, 1, margin=0.5)], opset=13),
        single("Sum-three-broadcast", "Sum", [away(r, 2, 3), away(r, 3), away(r, 2, 1)]),
        single("Expand", "Expand", [away(r, 3, 1), np.array([2, 3, 4], I64)]),
        single("Neg", "Neg", [away(r, 2, 3)]),
        single("Exp", "Exp", [away(r, 2, 3)]),
        single("Log", "Log", [positive(r, 2, 3)]),
        single("Sqrt", "Sqrt", [positive(r, 2, 3)]),
        single("Reciprocal", "Reciprocal", [away(r, 2, 3, margin=0.5)]),
        single("Pow-both", "Pow", [positive(r, 2, 3), away(r, 3)]),
        single("Pow-int-exponent", "Pow", [away(r, 2, 3), C(np.array(3, I64))]),
        single("Erf", "Erf", [away(r, 2, 3)], ort64=False, oracle=np.vectorize(math.erf)),  # the evaluator's erf is approximate
        single("Identity", "Identity", [away(r, 2, 3)]),
        single("Cast-double", "Cast", [away(r, 2, 3)], {"to": TensorProto.DOUBLE}),
        single("Dropout-op11", "Dropout", [away(r, 2, 3)], {"ratio": 0.5}, opset=11),
        single("Dropout-op13", "Dropout", [away(r, 2, 3), C(np.array(0.5))], opset=13),
    ]
    return cases


def activation_cases() -> list[Case]:
    r = _r("activations")
    x = away(r, 2, 3, 4)
    cases = [
        single("Relu", "Relu", [x]),
        single("Relu-op11", "Relu", [x], opset=11),
        single("LeakyRelu", "LeakyRelu", [x], {"alpha": 0.1}),
        single("LeakyRelu-default", "LeakyRelu", [x]),
        single("PRelu-channel", "PRelu", [away(r, 2, 3, 2, 2), C(away(r, 3, 1, 1))]),
        single("Clip-min-max-op11", "Clip", [x, C(np.array(-0.5)), C(np.array(0.6))], opset=11, ort64=False),
        single("Clip-min-max-op12", "Clip", [x, C(np.array(-0.5)), C(np.array(0.6))], opset=12),
        single("Clip-max-only", "Clip", [x, None, C(np.array(0.4))], opset=13),
        single("Clip-relu6", "Clip", [3 * x, C(np.array(0.0)), C(np.array(2.0))]),
        single("Clip-no-bounds", "Clip", [x]),
        single("Sigmoid", "Sigmoid", [x]),
        single("Tanh", "Tanh", [x]),
        single("HardSigmoid", "HardSigmoid", [x], {"alpha": 0.3, "beta": 0.4}, ort64=False),
        single("HardSigmoid-saturated", "HardSigmoid", [4 * x], ort64=False),
        single("HardSwish", "HardSwish", [5 * x], opset=14, ort64=False),
    ]
    for opset in (11, 13):
        for op in ("Softmax", "LogSoftmax"):
            cases += [
                single(f"{op}-axis1-rank3-op{opset}", op, [x], {"axis": 1}, opset=opset),
                single(f"{op}-default-op{opset}", op, [x], opset=opset),
                single(f"{op}-axis-neg-op{opset}", op, [x], {"axis": -2}, opset=opset),
            ]
    return cases


def linear_cases() -> list[Case]:
    r = _r("linear")
    cases = []
    for ta in (0, 1):
        for tb in (0, 1):
            a = away(r, 4, 3) if ta else away(r, 3, 4)
            b = away(r, 5, 4) if tb else away(r, 4, 5)
            cases.append(
                single(f"Gemm-tA{ta}-tB{tb}", "Gemm", [a, b, away(r, 5)], {"transA": ta, "transB": tb, "alpha": 0.7, "beta": 1.5})
            )
    cases += [
        single("Gemm-C-matrix", "Gemm", [away(r, 3, 4), away(r, 4, 5), away(r, 3, 5)], opset=11),
        single("Gemm-C-row", "Gemm", [away(r, 3, 4), C(away(r, 5, 4)), away(r, 1, 5)], {"transB": 1}),
        single("Gemm-no-C", "Gemm", [away(r, 3, 4), C(away(r, 4, 5))], {"alpha": 2.0}, opset=13),
        single("MatMul-2d", "MatMul", [away(r, 3, 4), away(r, 4, 5)]),
        single("MatMul-batched", "MatMul", [away(r, 2, 3, 4), away(r, 2, 4, 5)]),
        single("MatMul-broadcast", "MatMul", [away(r, 2, 1, 3, 4), away(r, 3, 4, 2)]),
        single("MatMul-broadcast-op11", "MatMul", [away(r, 2, 3, 4), away(r, 4, 2)], opset=11),
        single("MatMul-1d-left", "MatMul", [away(r, 4), away(r, 2, 4, 3)]),
        single("MatMul-1d-right", "MatMul", [away(r, 2, 3, 4), away(r, 4)]),
        single("MatMul-1d-both", "MatMul", [away(r, 4), away(r, 4)], opset=13),
    ]
    x = away(r, 2, 4, 6, 5)
    w = C(away(r, 3, 4, 3, 3))

    def conv(id, x, w, attrs=None, bias=None, **kw):
        args = [x, w] + ([C(bias)] if bias is not None else [])
        return single(f"Conv-{id}", "Conv", args, attrs, ort64=False, **kw)

    cases += [
        conv("plain", x, w),
        conv("bias-pads", x, w, {"pads": [1, 1, 1, 1]}, bias=away(r, 3)),
        conv("asymmetric-pads", x, w, {"pads": [0, 2, 1, 0]}),
        conv("stride2-remainder", x, w, {"strides": [2, 2]}),
        conv("stride3-pads", x, w, {"strides": [3, 2], "pads": [1, 0, 2, 1]}),
        conv("dilation2", x, w, {"dilations": [2, 1], "pads": [1, 1, 1, 1]}),
        # the reference evaluator's ConvTranspose mishandles groups of several channels: float32 only
        conv("groups2", x, C(away(r, 4, 2, 3, 2)), {"group": 2, "strides": [1, 2]}, ref_grad=False),
        conv("depthwise", x, C(away(r, 4, 1, 3, 3)), {"group": 4, "pads": [1, 1, 1, 1], "strides": [2, 2]}),
        # stride 1: the adjoint is a Conv with the flipped, transposed kernel (no ConvTranspose)
        conv("groups2-stride1", x, C(away(r, 4, 2, 3, 2)), {"group": 2, "pads": [1, 0, 2, 1]}),
        conv("depthwise-stride1-dilation2", x, C(away(r, 4, 1, 3, 3)), {"group": 4, "pads": [2, 2, 2, 2], "dilations": [2, 2]}),
        conv("same-upper-stride1", x, C(away(r, 3, 4, 2, 3)), {"auto_pad": "SAME_UPPER"}),
        conv("same-lower-stride1", x, C(away(r, 3, 4, 2, 3)), {"auto_pad": "SAME_LOWER"}),
        conv("pads-beyond-kernel-stride1", x, w, {"pads": [3, 1, 0, 2]}),  # a negative adjoint pad: ConvTranspose
        conv("same-upper-stride2", x, w, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
        conv("same-lower-stride2", x, w, {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
        conv("valid-stride2", x, w, {"auto_pad": "VALID", "strides": [2, 2]}),
        conv("1d", away(r, 2, 3, 7), C(away(r, 2, 3, 3)), {"strides": [2], "pads": [1, 0]}, opset=11),
        conv(
            "dynamic-hw-stride2", x, w, {"strides": [2, 2], "pads": [1, 0, 0, 1]},
            shapes={"x0": ["N", 4, "H", "W"]},
        ),
        conv(
            "dynamic-hw-same-lower", x, w, {"strides": [2, 2], "auto_pad": "SAME_LOWER"},
            shapes={"x0": ["N", 4, "H", "W"]},
        ),
    ]
    # a dense stride-1 Conv with 16 input channels or more: the flipped-kernel Conv adjoint (fewer
    # channels, as above, get ConvTranspose)
    r16 = np.random.default_rng(16)
    x16 = away(r16, 1, 16, 4, 5)
    cases += [
        conv("16-channels-stride1", x16, C(away(r16, 3, 16, 3, 3)), {"pads": [1, 0, 2, 1]}),
        conv("16-channels-same-lower-stride1", x16, C(away(r16, 2, 16, 2, 3)), {"auto_pad": "SAME_LOWER"}),
        # strided depthwise with sizes divisible by the stride: one Conv per output phase
        conv("depthwise-stride2-phases", away(r16, 2, 4, 6, 4), C(away(r16, 4, 1, 3, 3)),
             {"group": 4, "pads": [1, 1, 1, 1], "strides": [2, 2]}),
        conv("depthwise-stride2x1-phases", away(r16, 1, 3, 6, 5), C(away(r16, 3, 1, 3, 2)),
             {"group": 3, "pads": [1, 0, 0, 1], "strides": [2, 1]}),
        # stride 3 with a kernel of 3: a phase reads g[q + 1] only (a negative pad): ConvTranspose
        conv("depthwise-stride3-no-phases", away(r16, 1, 3, 6, 6), C(away(r16, 3, 1, 3, 2)),
             {"group": 3, "pads": [2, 0, 0, 1], "strides": [3, 2]}),
        conv("depthwise-stride2-same-upper-phases", away(r16, 1, 2, 4, 6), C(away(r16, 2, 1, 2, 3)),
             {"group": 2, "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ]
    for opset in (11, 15):
        bn = [C(away(r, 3)), C(away(r, 3)), C(away(r, 3)), C(positive(r, 3))]
        cases += [
            single(f"BatchNormalization-4d-op{opset}", "BatchNormalization", [away(r, 2, 3, 2, 2), *bn], {"epsilon": 1e-3}, opset=opset),
            single(f"BatchNormalization-2d-op{opset}", "BatchNormalization", [away(r, 4, 3), *bn], opset=opset),
        ]
    return cases


def pooling_cases() -> list[Case]:
    r = _r("pooling")
    x = distinct(r, 2, 2, 7, 6)
    cases = []
    maxpool = [
        ("k2s2", {"kernel_shape": [2, 2], "strides": [2, 2]}),
        ("k3s2p1-overlap", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ("k3s1-overlap", {"kernel_shape": [3, 3]}),
        ("k2-dilation2", {"kernel_shape": [2, 2], "dilations": [2, 2], "strides": [1, 2]}),
        ("k3s2-ceil", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1, "pads": [0, 1, 1, 0]}),
        ("k2s2-same-upper", {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        ("k3s2-same-lower", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ]
    for id, attrs in maxpool:
        cases.append(single(f"MaxPool-{id}", "MaxPool", [x], attrs))
    cases += [
        # non-overlapping windows: compared per window offset, no Indices (square 2-D: SpaceToDepth)
        single("MaxPool-k2x3-tiled", "MaxPool", [x], {"kernel_shape": [2, 3], "strides": [2, 3]}),
        single("MaxPool-k3-tiled-remainder", "MaxPool", [x], {"kernel_shape": [3, 3], "strides": [3, 3]}),
        single("MaxPool-1d-tiled", "MaxPool", [distinct(r, 2, 3, 8)], {"kernel_shape": [3], "strides": [3]}),
        single("MaxPool-k3s2-op11", "MaxPool", [x], {"kernel_shape": [3, 3], "strides": [2, 2]}, opset=11),
        single("MaxPool-1d", "MaxPool", [distinct(r, 2, 3, 9)], {"kernel_shape": [3], "strides": [2]}),
        Case(
            "MaxPool-with-indices-output",
            [("MaxPool", ["x"], ["y", "i"], {"kernel_shape": [3, 3], "strides": [2, 2]})], {"x": x},
        ),
        Case(
            "MaxPool-column-major-indices",
            [("MaxPool", ["x"], ["y", "i"], {"kernel_shape": [2, 2], "strides": [1, 1], "storage_order": 1})], {"x": x},
        ),
        single("MaxPool-dynamic-hw", "MaxPool", [x], {"kernel_shape": [3, 3], "strides": [2, 2]}, shapes={"x0": ["N", 2, "H", "W"]}),
        Case(  # inference keeps the window starting in the padding that onnxruntime drops: 4x4 vs 3x3
            "MaxPool-ceil-in-padding-then-strided-Conv",
            [
                ("MaxPool", ["x"], ["p"], {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
                ("Conv", ["p", "w"], ["y"], {"strides": [2, 2]}),
            ],
            {"x": distinct(r, 1, 2, 5, 5), "w": C(away(r, 2, 2, 2, 2))},
            ort64=False,
        ),
        single("GlobalMaxPool", "GlobalMaxPool", [x], ort64=False),
        single("GlobalMaxPool-dynamic", "GlobalMaxPool", [x], ort64=False, shapes={"x0": ["N", "C", "H", "W"]}),
        single("GlobalAveragePool", "GlobalAveragePool", [x], ort64=False),
        single("GlobalAveragePool-dynamic", "GlobalAveragePool", [x], ort64=False, shapes={"x0": ["N", 2, "H", "W"]}),
    ]
    avg = [
        ("k2s2", {"kernel_shape": [2, 2], "strides": [2, 2]}),
        ("k3s2p1-include-pad", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
        ("k3s2p1-exclude-pad", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 0}),
        ("k3s2-ceil-include-pad", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 0], "ceil_mode": 1, "count_include_pad": 1}),
        ("k3s2-ceil-exclude-pad", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 0], "ceil_mode": 1}),
        ("k2s2-ceil-no-pads", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
        ("k3s1-asymmetric-pads", {"kernel_shape": [3, 2], "pads": [2, 0, 0, 1], "count_include_pad": 1}),
        ("k2s2-same-upper", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ]
    for id, attrs in avg:
        cases.append(single(f"AveragePool-{id}", "AveragePool", [x], attrs, ort64=False))
    cases += [
        single("AveragePool-op11", "AveragePool", [x], {"kernel_shape": [2, 3], "strides": [1, 2], "pads": [0, 1, 0, 1]}, opset=11, ort64=False),
        single("AveragePool-1d", "AveragePool", [away(r, 2, 3, 9)], {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, ort64=False),
        single(
            "AveragePool-dynamic-hw-ceil", "AveragePool", [x],
            {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
            ort64=False, shapes={"x0": ["N", 2, "H", "W"]},
        ),
    ]
    return cases


def shape_cases() -> list[Case]:
    r = _r("shape")
    x = away(r, 2, 3, 4)
    cases = [
        single("Flatten", "Flatten", [away(r, 2, 3, 2, 2)], {"axis": 2}),
        single("Flatten-default", "Flatten", [away(r, 2, 3, 2, 2)], opset=11),
        single("Reshape", "Reshape", [x, np.array([4, -1], I64)]),
        single("Reshape-dynamic", "Reshape", [x, np.array([0, -1], I64)], shapes={"x0": ["N", 3, 4]}),
        single("Transpose-perm", "Transpose", [x], {"perm": [2, 0, 1]}),
        single("Transpose-default", "Transpose", [x]),
        single("Concat-axis-neg", "Concat", [away(r, 2, 3, 1), C(away(r, 2, 3, 2)), away(r, 2, 3, 3)], {"axis": -1}),
        single("Concat-dynamic", "Concat", [away(r, 2, 3), away(r, 1, 3)], {"axis": 0}, shapes={"x0": ["a", 3], "x1": ["b", 3]}),
        single("Concat-op11", "Concat", [away(r, 2, 1), away(r, 2, 2)], {"axis": 1}, opset=11),
    ]

    def split_case(id, attrs, extra_inputs=(), opset=17, n=3):
        values = {"x": away(r, 2, 7)}
        ins = ["x"]
        for k, v in enumerate(extra_inputs):
            values[f"s{k}"] = C(v)
            ins.append(f"s{k}")
        outs = [f"p{k}" for k in range(n)]
        nodes = [("Split", ins, outs, attrs), ("Concat", [outs[2], outs[0]], ["y"], {"axis": 1})]
        return Case(f"Split-{id}", nodes, values, opset=opset)

    cases += [
        split_case("attr-op11", {"axis": 1, "split": [2, 4, 1]}, opset=11),
        split_case("input-op13", {"axis": -1}, [np.array([3, 1, 3], I64)], opset=13),
        split_case("num-outputs-op18", {"axis": 1, "num_outputs": 3}, opset=18),
        split_case("equal-op13", {"axis": 1}, opset=13, n=7),
    ]
    xs = away(r, 3, 5, 6)

    def slice_case(id, starts, ends, axes=None, steps=None, opset=13, **kw):
        args = [xs, np.array(starts, I64), np.array(ends, I64)]
        args += [np.array(axes, I64) if axes is not None else None] if (axes is not None or steps is not None) else []
        args += [np.array(steps, I64)] if steps is not None else []
        return single(f"Slice-{id}", "Slice", args, opset=opset, **kw)

    cases += [
        slice_case("unit-steps-op11", [1, 2], [3, 5], [0, 2], opset=11),
        slice_case("no-axes", [0, 1], [2, 4]),
        slice_case("negative-starts", [-2, -4], [BIG, -1], [1, 2]),
        slice_case("large-ends", [1], [1000], [-1]),
        slice_case("steps2", [0, 1], [BIG, BIG], [1, 2], [2, 3]),
        slice_case("negative-steps", [-1, 4], [-BIG, 0], [1, 2], [-1, -2]),
        slice_case("negative-steps-clamped", [10], [-10], [0], [-2], opset=18),
        slice_case("dynamic", [1], [-1], [1], opset=21, shapes={"x0": ["N", "H", 6]}),
        Case(
            "Slice-runtime-bounds",
            [
                ("Shape", ["x"], ["s"], {}),
                ("Slice", ["s", "one", "two"], ["h"], {}),
                ("Div", ["h", "two_v"], ["half"], {}),
                ("Slice", ["x", "zero", "half", "one"], ["y"], {}),
            ],
            {"x": xs, "one": C(np.array([1], I64)), "two": C(np.array([2], I64)), "zero": C(np.array([0], I64)), "two_v": C(np.array([2], I64))},
        ),
    ]
    xp = away(r, 2, 3, 4, 5)
    cases += [
        single("Pad-constant-op11", "Pad", [xp, np.array([0, 1, 2, 0, 0, 0, 1, 3], I64)], opset=11),
        single("Pad-constant-value", "Pad", [xp, np.array([0, 0, 1, 1, 0, 0, 1, 1], I64), C(np.array(0.5))], opset=13),
        single("Pad-negative", "Pad", [xp, np.array([0, -1, 1, -2, 0, 1, -1, 0], I64)]),
        single("Pad-axes-op18", "Pad", [xp, np.array([1, 2, 0, 3], I64), None, np.array([1, -1], I64)], opset=18),
        single("Pad-reflect", "Pad", [xp, np.array([0, 0, 2, 1, 0, 0, 1, 3], I64)], {"mode": "reflect"}),
        single("Pad-edge", "Pad", [xp, np.array([0, 1, 2, 0, 0, 2, 1, 3], I64)], {"mode": "edge"}, opset=11),
        single("Pad-reflect-axes-op18", "Pad", [xp, np.array([2, 1, 3, 2], I64), None, np.array([2, 3], I64)], {"mode": "reflect"}, opset=18),
        single(
            "Pad-edge-dynamic", "Pad", [xp, np.array([0, 0, 3, 1, 0, 0, 1, 2], I64)], {"mode": "edge"},
            shapes={"x0": ["N", 3, "H", "W"]},
        ),
        single("Pad-runtime-pads-constant-mode", "Pad", [xp, np.array([0, 0, 1, 2, 0, 0, 2, 1], I64)], opset=13),
    ]
    cases[-1].values["x1"] = np.array([0, 0, 1, 2, 0, 0, 2, 1], I64)  # a graph input, not a constant
    cases[-1].wrt = ["x0"]
    for opset in (11, 13):
        cases += [
            single(f"Squeeze-op{opset}", "Squeeze", *_axes_arg(away(r, 2, 1, 3, 1), [1, -1], opset, 13), opset=opset),
            single(f"Unsqueeze-op{opset}", "Unsqueeze", *_axes_arg(x, [0, -1], opset, 13), opset=opset),
        ]
    cases.append(single("Squeeze-all", "Squeeze", [away(r, 2, 1, 3, 1)], opset=11))
    return cases


def _axes_arg(x: np.ndarray, axes: list[int], opset: int, switch: int, **attrs) -> tuple:
    """(args, attrs) with axes as an attribute before `switch` and as an input from it on."""
    if opset >= switch:
        return [x, np.array(axes, I64)], dict(attrs)
    return [x], {"axes": axes, **attrs}


def reduce_cases() -> list[Case]:
    r = _r("reduce")
    x = away(r, 2, 3, 4)
    cases = []
    for op, switch in (("ReduceSum", 13), ("ReduceMean", 18)):
        for opset in (11, switch):
            for keepdims in (0, 1):
                args, attrs = _axes_arg(x, [0, -1], opset, switch, keepdims=keepdims)
                cases.append(single(f"{op}-axes-keepdims{keepdims}-op{opset}", op, args, attrs, opset=opset))
            cases.append(single(f"{op}-all-op{opset}", op, [x], {"keepdims": 0}, opset=opset))
        cases.append(single(f"{op}-noop-empty-axes-op{switch}", op, [x], {"noop_with_empty_axes": 1}, opset=switch))
        args, attrs = _axes_arg(x, [1], 21, switch, keepdims=0)
        cases.append(single(f"{op}-dynamic-op21", op, args, attrs, opset=21, shapes={"x0": ["N", 3, "W"]}))
    xd = distinct(r, 2, 3, 4)
    for op in ("ReduceMax", "ReduceMin"):
        for opset in (11, 13, 18):
            for keepdims in (0, 1):
                args, attrs = _axes_arg(xd, [-1, 0], opset, 18, keepdims=keepdims)
                cases.append(single(f"{op}-axes-keepdims{keepdims}-op{opset}", op, args, attrs, opset=opset))
        cases.append(single(f"{op}-all", op, [xd], {"keepdims": 0}, opset=13))
    return cases


def test_reduce_max_splits_ties_evenly() -> None:
    """At a tie the gradient is shared equally (torch.amax's convention)."""
    x = np.array([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 0.0]])
    model = single("ReduceMax-ties", "ReduceMax", [x], {"axes": [1], "keepdims": 0}).model(np.float64)
    got = session(differentiate(model, "y", ["x0"])).run([GRAD + "x0"], {"x0": x, SEED: np.array([2.0, 3.0])})[0]
    np.testing.assert_allclose(got, [[0, 1, 1, 0], [1, 1, 1, 0]])


def composite_cases() -> list[Case]:
    r = _r("composite")
    x = away(r, 2, 3, 4)
    return [
        Case(  # a tensor read by several nodes: contributions are summed
            "Residual-fanout",
            [("Relu", ["x"], ["h"], {}), ("Mul", ["h", "x"], ["m"], {}), ("Add", ["m", "h"], ["y"], {})],
            {"x": x},
        ),
        Case(  # shape arithmetic on the way (Shape, Gather, Unsqueeze, Concat, Cast, Range, Equal) is passed through
            "Shape-arithmetic-passthrough",
            [
                ("Shape", ["x"], ["s"], {}),
                ("Gather", ["s", "zero"], ["n"], {"axis": 0}),
                ("Unsqueeze", ["n", "zero1"], ["n1"], {}),
                ("Concat", ["n1", "minus1"], ["target"], {"axis": 0}),
                ("Reshape", ["x", "target"], ["flat"], {}),
                ("Cast", ["x"], ["xi"], {"to": TensorProto.INT64}),
                ("ReduceMax", ["xi"], ["mx"], {"keepdims": 0}),
                ("Range", ["zero", "twelve", "one"], ["rng"], {}),
                ("Equal", ["rng", "mx"], ["eq"], {}),
                ("Cast", ["eq"], ["eqf"], {"to": TensorProto.DOUBLE}),
                ("Mul", ["flat", "eqf"], ["masked"], {}),
                ("Add", ["masked", "flat"], ["y"], {}),
            ],
            {
                "x": x, "zero": C(np.array(0, I64)), "zero1": C(np.array([0], I64)), "minus1": C(np.array([-1], I64)),
                "twelve": C(np.array(12, I64)), "one": C(np.array(1, I64)),
            },
            opset=13,
            output_rank=2,  # inference loses the rank at the Reshape: broadcasting is undone at run time
        ),
        Case(  # batch norm folded into the Conv before differentiating; Relu moved after the MaxPool
            "Conv-BatchNormalization-Relu-MaxPool",
            [
                ("Conv", ["x", "w", "b"], ["c"], {"pads": [1, 1, 1, 1]}),
                ("BatchNormalization", ["c", "scale", "offset", "mean", "var"], ["n"], {"epsilon": 1e-3}),
                ("Relu", ["n"], ["r"], {}),
                ("MaxPool", ["r"], ["p"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
                ("Conv", ["p", "w2"], ["y"], {}),
            ],
            {
                "x": away(r, 2, 2, 6, 5), "w": C(away(r, 3, 2, 3, 3)), "b": C(away(r, 3)), "scale": C(away(r, 3)),
                "offset": C(away(r, 3)), "mean": C(away(r, 3)), "var": C(positive(r, 3)), "w2": C(away(r, 2, 3, 1, 1)),
            },
            ort64=False,
        ),
        *[Case(  # batch norm folded into the Gemm (a Linear then a BatchNorm1d), either weight layout
            f"Gemm-BatchNormalization-transB{t}",
            [
                ("Gemm", ["x", "w", "b"], ["c"], {"transB": t}),
                ("BatchNormalization", ["c", "scale", "offset", "mean", "var"], ["n"], {"epsilon": 1e-3}),
                ("Tanh", ["n"], ["y"], {}),
            ],
            {
                "x": away(r, 2, 4), "w": C(away(r, *((3, 4) if t else (4, 3)))), "b": C(away(r, 3)),
                "scale": C(away(r, 3)), "offset": C(away(r, 3)), "mean": C(away(r, 3)), "var": C(positive(r, 3)),
            },
            ort64=False,
        ) for t in (0, 1)],
        Case(  # the same with the tensors the rewrites would remove asked for: nothing is rewritten
            "Conv-BatchNormalization-Relu-MaxPool-kept",
            [
                ("Conv", ["x", "w"], ["c"], {}),
                ("BatchNormalization", ["c", "scale", "offset", "mean", "var"], ["n"], {}),
                ("Relu", ["n"], ["r"], {}),
                ("MaxPool", ["r"], ["y"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
            ],
            {
                "x": away(r, 2, 2, 6, 5), "w": C(away(r, 3, 2, 3, 3)), "scale": C(away(r, 3)),
                "offset": C(away(r, 3)), "mean": C(away(r, 3)), "var": C(positive(r, 3)),
            },
            ort64=False,
            wrt=["x", "c", "r"],
        ),
        Case(  # gradients at an intermediate tensor and at the input of the same graph
            "Intermediate-and-input",
            [("Tanh", ["x"], ["h"], {}), ("Mul", ["h", "h"], ["h2"], {}), ("ReduceSum", ["h2"], ["y"], {"axes": [2]})],
            {"x": x},
            opset=11,
            wrt=["x", "h"],
        ),
    ]


ALL_CASES = (
    elementwise_cases() + activation_cases() + linear_cases() + pooling_cases() + shape_cases() + reduce_cases() + composite_cases()
)


@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_rule_matches_finite_differences(case: Case) -> None:
    check(case)


def test_every_rule_has_a_finite_difference_case() -> None:
    tested = {op for case in ALL_CASES for (op, *_rest) in case.nodes}
    assert set(supported_operators()) <= tested, set(supported_operators()) - tested


def _backward_ops(case_id: str) -> list[str]:
    case = next(c for c in ALL_CASES if c.id == case_id)
    model = case.model(np.float32)
    forward = len(model.graph.node)
    return [n.op_type for n in differentiate(model, case.output, case.differentiated()).graph.node[forward:]]


@pytest.mark.parametrize(("case_id", "adjoint"), [
    ("Conv-16-channels-stride1", "Conv"), ("Conv-16-channels-same-lower-stride1", "Conv"),
    ("Conv-groups2-stride1", "Conv"), ("Conv-depthwise-stride1-dilation2", "Conv"),
    ("Conv-plain", "ConvTranspose"), ("Conv-same-lower-stride1", "ConvTranspose"),
    ("Conv-pads-beyond-kernel-stride1", "ConvTranspose"),
    ("Conv-stride2-remainder", "ConvTranspose"), ("Conv-dynamic-hw-stride2", "ConvTranspose"),
    ("Conv-depthwise-stride2-phases", "Conv"), ("Conv-depthwise-stride2x1-phases", "Conv"),
    ("Conv-depthwise-stride3-no-phases", "ConvTranspose"),
    ("Conv-depthwise-stride2-same-upper-phases", "Conv"), ("Conv-depthwise", "ConvTranspose"),  # 6x5 by stride 2
])
def test_conv_adjoint_form(case_id: str, adjoint: str) -> None:
    """Stride 1 with pads <= the kernel's extent - 1 and grouped or >= 16 input channels: a Conv
    (faster on CPU); otherwise ConvTranspose (a dense conv over 4 input channels, as an image's
    first layer, and every strided one but depthwise ones with sizes divisible by the stride)."""
    ops = _backward_ops(case_id)
    assert adjoint in ops and ({"Conv", "ConvTranspose"} - {adjoint}).isdisjoint(ops), ops


def test_forward_rewrites_apply_only_where_nothing_asked_for_is_removed() -> None:
    """Batch norm is folded and the Relu moved after the MaxPool, unless the removed tensor is wanted."""
    folded = {n.op_type for n in differentiate(next(c for c in ALL_CASES if c.id == "Conv-BatchNormalization-Relu-MaxPool")
                                               .model(np.float32), "y", ["x"]).graph.node}
    assert "BatchNormalization" not in folded and "ScatterElements" not in folded, folded
    for t in (0, 1):
        gemm = next(c for c in ALL_CASES if c.id == f"Gemm-BatchNormalization-transB{t}")
        assert "BatchNormalization" not in {n.op_type for n in differentiate(gemm.model(np.float32), "y", ["x"]).graph.node}
    case = next(c for c in ALL_CASES if c.id == "Conv-BatchNormalization-Relu-MaxPool")
    deconvnet = differentiate(case.model(np.float32), "y", ["x"], rule="deconvnet")  # relu(g) at x <= 0 too: no move
    assert [n.op_type for n in deconvnet.graph.node[:4]] == ["Conv", "Relu", "MaxPool", "Conv"]
    kept_case = next(c for c in ALL_CASES if c.id == "Conv-BatchNormalization-Relu-MaxPool-kept")
    kept = differentiate(kept_case.model(np.float32), "y", ["x", "c", "r"])
    assert [n.op_type for n in kept.graph.node[:4]] == ["Conv", "BatchNormalization", "Relu", "MaxPool"]


@pytest.mark.parametrize(("kernel", "shape"), [([2, 2], (1, 2, 5, 4)), ([2, 3], (1, 1, 4, 7)), ([3], (2, 1, 7))])
def test_non_overlapping_max_pool_gives_ties_to_the_first_maximum(kernel: list[int], shape: tuple) -> None:
    """Flat windows (all values equal, as on an image's flat background): the whole gradient of each
    window goes to its first element in row-major order, as with MaxPool's Indices and in torch;
    rows and columns no window covers get 0."""
    x = np.ones(shape, np.float32)
    x[..., 0] = 2.0  # one window per row of windows has a strict maximum at its first column
    model = Case("ties", [("MaxPool", ["x"], ["y"], {"kernel_shape": kernel, "strides": kernel})], {"x": x}).model(np.float32)
    grad_model = differentiate(model, "y", ["x"])
    out = [size // k for size, k in zip(shape[2:], kernel)]
    seed = _r("ties").uniform(1.0, 2.0, size=(*shape[:2], *out)).astype(np.float32)
    got = session(grad_model).run([GRAD + "x"], {"x": x, SEED: seed})[0]
    want = np.zeros(shape, np.float32)
    want[(..., *[slice(0, o * k, k) for o, k in zip(out, kernel)])] = seed  # first of each window
    np.testing.assert_array_equal(got, want)


def test_intermediate_gradient_is_exact() -> None:
    """The gradient at h (intermediate) is the total derivative through every consumer of h."""
    case = next(c for c in composite_cases() if c.id == "Intermediate-and-input")
    model = case.model(np.float64)
    grad_model = differentiate(model, "y", ["h"])
    x = case.feeds(np.float64)["x"]
    seed = _r("inter").standard_normal((2, 3, 1))
    got = session(grad_model).run([GRAD + "h"], {"x": x, SEED: seed})[0]
    np.testing.assert_allclose(got, 2 * np.tanh(x) * seed, rtol=1e-12)


def test_wrt_not_reaching_output_gets_zeros() -> None:
    case = Case("Disconnected", [("Relu", ["x"], ["y"], {}), ("Neg", ["z"], ["w"], {})], {"x": away(_r("d"), 2, 3), "z": away(_r("e"), 4)})
    grad_model = differentiate(case.model(np.float64), "y", ["z", "x"])
    feeds = {**case.feeds(np.float64), SEED: np.ones((2, 3))}
    gz, gx = session(grad_model).run([GRAD + "z", GRAD + "x"], feeds)
    assert np.all(gz == 0) and gz.shape == (4,)
    np.testing.assert_array_equal(gx, (feeds["x"] > 0).astype(float))


def test_local_functions_are_inlined() -> None:
    """A model-local function (as torch's dynamo exporter writes them) is differentiated through."""
    body = [helper.make_node("Mul", ["a", "a"], ["t"]), helper.make_node("Relu", ["t"], ["b"])]
    function = helper.make_function("local", "SquareRelu", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("SquareRelu", ["x"], ["y"], domain="local")], "fn",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 3])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[function])
    model.ir_version = 9
    x = away(_r("fn"), 2, 3)
    seed = _r("fn-seed").standard_normal((2, 3))
    got = session(differentiate(model, "y", ["x"])).run([GRAD + "x"], {"x": x, SEED: seed})[0]
    np.testing.assert_allclose(got, 2 * x * seed, rtol=1e-12)


def test_bad_arguments_are_refused() -> None:
    model = single("Relu-args", "Relu", [away(_r("a"), 2)]).model(np.float64)
    with pytest.raises(ValueError, match="nope"):
        differentiate(model, "nope", ["x0"])
    with pytest.raises(ValueError, match="rule"):
        differentiate(model, "y", ["x0"], rule="lrp-unknown")
    with pytest.raises(ValueError, match="already"):
        differentiate(model, "y", ["x0"], seed_name="x0")
    with pytest.raises(ValueError, match="distinct"):
        differentiate(model, "y", ["x0", "x0"])
    with pytest.raises(ValueError, match="grad_prefix"):
        differentiate(differentiate(model, "y", ["x0"]), "y", ["x0"], seed_name="other seed")


def test_a_registered_variant_falls_back_to_plain_rules() -> None:
    """The rule table is open: a new variant (an LRP rule, say) overrides some operators only."""
    from explaind.onnxgraph.autodiff import RULES, register

    @register("Relu", variant="test-double-relu")
    def doubled(ctx):
        return [ctx.e.op("Mul", [ctx.g, ctx.scalar(2.0)])]

    try:
        x = away(_r("variant"), 2, 3)
        nodes = [("Relu", ["x"], ["h"], {}), ("Neg", ["h"], ["y"], {})]
        model = Case("Variant", nodes, {"x": x}).model(np.float64)
        grad = differentiate(model, "y", ["x"], rule="test-double-relu")
        got = session(grad).run([GRAD + "x"], {"x": x, SEED: np.ones((2, 3))})[0]
        np.testing.assert_array_equal(got, -2.0 * np.ones((2, 3)))  # Neg: plain rule; Relu: the new one
    finally:
        del RULES[("test-double-relu", "", "Relu")]


# 2. Guided backpropagation and deconvnet against torch --------------------------------------------


def _tiny_cnn(torch):
    """Conv-Relu-Conv-Relu-GAP-Gemm in float64 with fixed random weights."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 5, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(5, 3),
    ).double()
    return net.eval()


def _tiny_cnn_onnx(net, dtype) -> onnx.ModelProto:
    """The same network written with onnx.helper (no exporter involved)."""
    def init(name, t):
        return numpy_helper.from_array(t.detach().numpy().astype(dtype), name)

    conv1, conv2, fc = net[0], net[2], net[6]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("x", elem, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", elem, ["N", 3])],
        [init("w1", conv1.weight), init("b1", conv1.bias), init("w2", conv2.weight), init("b2", conv2.bias),
         init("wf", fc.weight), init("bf", fc.bias)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 9
    return model


def _torch_modified_relu_gradient(torch, net, x: np.ndarray, seed: np.ndarray, rule: str) -> np.ndarray:
    """Input gradient with ReLU's backward replaced by backward hooks (Captum's way)."""
    def hook(module, grad_input, grad_output):
        if rule == "guided":  # grad_input is already masked by [x > 0]
            return (torch.clamp(grad_input[0], min=0),)
        return (torch.clamp(grad_output[0], min=0),)

    handles = [m.register_full_backward_hook(hook) for m in net if isinstance(m, torch.nn.ReLU)]
    try:
        xt = torch.tensor(x, requires_grad=True)
        (net(xt) * torch.tensor(seed)).sum().backward()
        return xt.grad.numpy()
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("rule", ["guided", "deconvnet", "plain"])
def test_modified_relu_rules_match_torch(rule: str) -> None:
    torch = pytest.importorskip("torch")
    net = _tiny_cnn(torch)
    rng = _r("guided")
    x = rng.standard_normal((2, 3, 8, 8))
    seed = np.zeros((2, 3))
    seed[0, 1] = seed[1, 2] = 1.0  # one target class per example, as the explainers seed it
    if rule == "plain":
        xt = torch.tensor(x, requires_grad=True)
        (net(xt) * torch.tensor(seed)).sum().backward()
        want = xt.grad.numpy()
    else:
        want = _torch_modified_relu_gradient(torch, net, x, seed, rule)
        if rule == "guided":  # a real check: the variants differ from the gradient here
            xt = torch.tensor(x, requires_grad=True)
            (net(xt) * torch.tensor(seed)).sum().backward()
            assert relative_error(xt.grad.numpy(), want) > 0.1
    # float64 graph on the reference evaluator (onnxruntime has no float64 Conv on CPU)
    grad64 = differentiate(_tiny_cnn_onnx(net, np.float64), "logits", ["x"], rule=rule)
    got64 = Runner(grad64, use_ort=False)({"x": x, SEED: seed})[GRAD + "x"]
    assert relative_error(got64, want) <= 1e-10
    # float32 graph on onnxruntime
    grad32 = differentiate(_tiny_cnn_onnx(net, np.float32), "logits", ["x"], rule=rule)
    got32 = session(grad32).run([GRAD + "x"], {"x": x.astype(np.float32), SEED: seed.astype(np.float32)})[0]
    assert relative_error(got32, want) <= 1e-5


@pytest.mark.parametrize("op", ["Relu", "Clip"])
def test_modified_rules_at_relu_and_relu6(op: str) -> None:
    """guided: relu(g) * [0 < x (< 6)]; deconvnet: relu(g); Clip(0, 6) is treated as ReLU6."""
    r = _r("relu6")
    x = 4 * away(r, 3, 8)  # values in (-4, 4) with some above 6 after the scaling below
    x[0, :3] = [6.5, 7.0, 9.0]
    args = [x] if op == "Relu" else [x, C(np.array(0.0)), C(np.array(6.0))]
    model = single(f"{op}-variants", op, args).model(np.float64)
    seed = r.standard_normal(x.shape)
    window = (x > 0) & (x < 6) if op == "Clip" else x > 0
    want = {"plain": seed * window, "guided": np.maximum(seed, 0) * window, "deconvnet": np.maximum(seed, 0)}
    for rule, expected in want.items():
        got = session(differentiate(model, "y", ["x0"], rule=rule)).run([GRAD + "x0"], {"x0": x, SEED: seed})[0]
        np.testing.assert_array_equal(got, expected)


def test_variants_leave_other_activations_plain() -> None:
    """LeakyRelu and Clip with a non-zero minimum keep their gradient under guided/deconvnet."""
    r = _r("other")
    x = away(r, 2, 6)
    nodes = [("LeakyRelu", ["x"], ["h"], {"alpha": 0.25}), ("Clip", ["h", "lo", "hi"], ["y"], {})]
    model = Case("Leaky-Clip", nodes, {"x": x, "lo": C(np.array(-0.1)), "hi": C(np.array(0.5))}).model(np.float64)
    seed = r.standard_normal(x.shape)
    h = np.where(x > 0, x, 0.25 * x)
    want = seed * ((h > -0.1) & (h < 0.5)) * np.where(x > 0, 1.0, 0.25)
    for rule in ("guided", "deconvnet"):
        got = session(differentiate(model, "y", ["x"], rule=rule)).run([GRAD + "x"], {"x": x, SEED: seed})[0]
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_input_model_is_left_unchanged() -> None:
    case = single("MaxPool-untouched", "MaxPool", [distinct(_r("u"), 1, 1, 4, 4)], {"kernel_shape": [2, 2]})
    model = case.model(np.float32)
    before = model.SerializeToString()
    grad_model = differentiate(model, "y", ["x0"])
    assert model.SerializeToString() == before
    assert [o.name for o in grad_model.graph.output] == ["y", GRAD + "x0"]
    assert [i.name for i in grad_model.graph.input] == ["x0", SEED]


# 3. and 5. A torch-exported network: intermediate gradients, dynamic batch ------------------------


@pytest.fixture(scope="module")
def exported():
    """A small CNN exported by torch.onnx (opset 17, dynamic batch) and the torch module itself."""
    torch = pytest.importorskip("torch")
    import io

    torch.manual_seed(1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(6)
            self.pool = torch.nn.MaxPool2d(3, stride=2, padding=1)
            self.conv2 = torch.nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2)
            self.act2 = torch.nn.ReLU6()
            self.conv3 = torch.nn.Conv2d(8, 8, 1)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv1(x)))
            h = self.pool(h)
            self.mid = self.act2(self.conv2(h))  # the intermediate tensor explained
            h = torch.nn.functional.hardswish(self.conv3(self.mid)) + self.mid
            h = torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)
            return self.fc(torch.sigmoid(h) * h)

    net = Net().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, torch.zeros(1, 3, 12, 12), buffer, dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
    model = onnx.load_from_string(buffer.getvalue())
    clip = next(n for n in model.graph.node if n.op_type == "Clip")  # ReLU6 -> Clip(0, 6)
    return torch, net, model, clip.output[0]


def _torch_gradients(torch, net, x: np.ndarray, seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xt = torch.tensor(x, requires_grad=True)
    out = net(xt)
    net.mid.retain_grad()
    (out * torch.tensor(seed)).sum().backward()
    return xt.grad.numpy(), net.mid.grad.numpy()


def test_intermediate_gradient_matches_torch_autograd(exported) -> None:
    torch, net, model, mid = exported
    grad_model = differentiate(model, "logits", ["input", mid])
    rng = _r("exported")
    x = rng.standard_normal((3, 3, 12, 12)).astype(np.float32)
    seed = rng.standard_normal((3, 4)).astype(np.float32)
    got_x, got_mid = session(grad_model).run([GRAD + "input", GRAD + mid], {"input": x, SEED: seed})
    want_x, want_mid = _torch_gradients(torch, net, x, seed)
    assert relative_error(got_mid, want_mid) <= 1e-4
    assert relative_error(got_x, want_x) <= 1e-4


def test_dynamic_batch(exported) -> None:
    torch, net, model, mid = exported
    sess = session(differentiate(model, "logits", ["input", mid], rule="guided"))
    plain = session(differentiate(model, "logits", ["input"]))
    rng = _r("batch")
    x5 = rng.standard_normal((5, 3, 12, 12)).astype(np.float32)
    seed5 = np.eye(4, dtype=np.float32)[[0, 3, 1, 2, 3]]
    g5, m5 = sess.run([GRAD + "input", GRAD + mid], {"input": x5, SEED: seed5})
    assert g5.shape == x5.shape and m5.shape[0] == 5
    for i in (0, 4):  # each row alone, N = 1, gives the same as within the batch of 5
        g1, m1 = sess.run([GRAD + "input", GRAD + mid], {"input": x5[i : i + 1], SEED: seed5[i : i + 1]})
        assert relative_error(g1[0], g5[i]) <= 1e-5 and relative_error(m1[0], m5[i]) <= 1e-5
    got = plain.run([GRAD + "input"], {"input": x5, SEED: seed5})[0]
    want, _ = _torch_gradients(torch, net, x5, seed5)
    assert relative_error(got, want) <= 1e-4


# 4. Operators without a rule --------------------------------------------------------------------


def _topk_model(on_path: bool) -> onnx.ModelProto:
    r = _r("topk")
    nodes = [
        ("Relu", ["x"], ["h"], {}),
        ("TopK", ["h", "k"], ["top", "idx"], {"axis": 1}),
        ("ReduceSum", ["top"], ["s"], {"axes": [1], "keepdims": 1}),
        ("Add", ["h", "s" if on_path else "bias"], ["y"], {}),
    ]
    values = {"x": away(r, 2, 5), "k": C(np.array([2], I64)), "bias": C(away(r, 1, 5))}
    case = Case("TopK", nodes, values, opset=11)
    return case.model(np.float32)


def test_unsupported_operator_on_the_path_is_named() -> None:
    model = _topk_model(on_path=True)
    assert unsupported_operators(model, "y", ["x"]) == [("TopK", "topk_1")]
    with pytest.raises(UnsupportedOperator) as info:
        differentiate(model, "y", ["x"])
    err = info.value
    assert (err.op_type, err.node_name, err.domain) == ("TopK", "topk_1", "")
    assert "TopK" in str(err) and "topk_1" in str(err)


def test_unsupported_operator_off_the_path_does_not_matter() -> None:
    model = _topk_model(on_path=False)
    assert unsupported_operators(model, "y", ["x"]) == []
    grad_model = differentiate(model, "y", ["x"])
    x = away(_r("topk-off"), 2, 5).astype(np.float32)
    got = session(grad_model).run([GRAD + "x"], {"x": x, SEED: np.ones((2, 5), np.float32)})[0]
    np.testing.assert_array_equal(got, (x > 0).astype(np.float32))
    # an unsupported op upstream of the tensor we differentiate with respect to is off the path too
    assert unsupported_operators(model, "y", ["h"]) == []


def test_tree_ensemble_on_the_path_is_named() -> None:
    tree = {
        "nodes_treeids": [0, 0, 0], "nodes_nodeids": [0, 1, 2], "nodes_featureids": [0, 0, 0],
        "nodes_modes": ["BRANCH_LEQ", "LEAF", "LEAF"], "nodes_values": [0.5, 0.0, 0.0],
        "nodes_truenodeids": [1, 0, 0], "nodes_falsenodeids": [2, 0, 0],
        "class_treeids": [0, 0], "class_nodeids": [1, 2], "class_ids": [0, 1], "class_weights": [1.0, 1.0],
        "classlabels_int64s": [0, 1],
    }
    nodes = [
        ("Mul", ["x", "scale"], ["scaled"], {}),
        ("TreeEnsembleClassifier", ["scaled"], ["label", "proba"], tree, "ai.onnx.ml"),
        ("Softmax", ["proba"], ["y"], {"axis": 1}),
        ("TopK", ["x", "k"], ["unused", "unused_idx"], {"axis": 1}),  # off the path
    ]
    values = {"x": away(_r("tree"), 2, 4), "scale": C(np.full(4, 2.0)), "k": C(np.array([1], I64))}
    model = Case("Tree", nodes, values, opset=13, extra_opsets=(("ai.onnx.ml", 3),)).model(np.float32)
    assert unsupported_operators(model, "y", ["x"]) == [("TreeEnsembleClassifier", "treeensembleclassifier_1")]
    with pytest.raises(UnsupportedOperator, match="TreeEnsembleClassifier.*treeensembleclassifier_1") as info:
        differentiate(model, "y", ["x"])
    assert info.value.domain == "ai.onnx.ml"


def test_unnamed_node_is_named_by_its_outputs() -> None:
    model = _topk_model(on_path=True)
    for node in model.graph.node:
        node.name = ""
    [(op, name)] = unsupported_operators(model, "y", ["x"])
    assert op == "TopK" and "top" in name and "#1" in name


def test_weight_on_the_path_is_reported() -> None:
    """Gradients with respect to a Conv weight are not implemented and say so."""
    r = _r("weight")
    case = Case(
        "Conv-weight-path",
        [("Relu", ["w"], ["wr"], {}), ("Conv", ["x", "wr"], ["y"], {})],
        {"x": away(r, 1, 2, 4, 4), "w": away(r, 3, 2, 3, 3)},
    )
    model = case.model(np.float32)
    assert unsupported_operators(model, "y", ["w"]) == [("Conv", "conv_1")]
    assert unsupported_operators(model, "y", ["x"]) == []
    with pytest.raises(UnsupportedOperator, match="input 1"):
        differentiate(model, "y", ["x", "w"])


def test_central_differences_helper_is_sane() -> None:
    """The oracle itself: d sum(s * x^2) / dx = 2 s x."""
    case = single("Square", "Mul", [away(_r("sq"), 3)])
    case.nodes[0] = ("Mul", ["x0", "x0"], ["y"], {})
    forward = Runner(case.model(np.float64), True)
    x = case.feeds(np.float64)["x0"]
    seed = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(central_differences(forward, {"x0": x}, "x0", "y", seed), 2 * seed * x, rtol=1e-8)
