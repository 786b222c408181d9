"""LRP rules (onnxgraph/autodiff, variant "lrp") on tiny hand-built graphs, against relevances
computed by hand in the comments; composites' per-layer assignment; operators without a rule.

The dense layer: x = [1, -2], y = x W + b with W = [[1, 2], [3, -1]], b = [0.5, -1], so
y = [-4.5, 3]; the seed puts the target's logit 3 on class 1 (column [2, -1] of W, bias -1).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from explaind.errors import FailedPrecondition
from explaind.onnxgraph.autodiff import differentiate, unsupported_operators
from explaind.onnxgraph.autodiff.lrp import Composite, assign, operators_without_rule, relevance_graph

SEED, GRAD = "seed", "grad::"
X = np.array([[1.0, -2.0]], np.float32)
W = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
B = np.array([0.5, -1.0], np.float32)
R = np.array([[0.0, 3.0]], np.float32)


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _dense() -> onnx.ModelProto:
    return _model([helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="dense")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [("W", W), ("b", B)])


def _relevance(model: onnx.ModelProto, composite: Composite, x: np.ndarray, seed: np.ndarray, output: str = "y") -> np.ndarray:
    derived = relevance_graph(model, output, "x", composite, seed_name=SEED, grad_prefix=GRAD)
    onnx.checker.check_model(derived)
    session = ort.InferenceSession(derived.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([GRAD + "x"], {"x": x, SEED: seed})[0]


@pytest.mark.parametrize(("rule", "expected"), [
    # x_i W_i1 R / y1 = [1 * 2, -2 * -1] * 3 / 3 (the bias keeps 3 - 4 = -1)
    ("epsilon", [2.0, 2.0]),
    # z = W+ x+ + b+ + W- x- = 2 + 0 + 2 = 4: [1 * 2, -2 * -1] * 3 / 4
    ("zplus", [1.5, 1.5]),
    ("alpha1_beta0", [1.5, 1.5]),
    # positive part as z+ times 2; z_n = W- x+ + b- + W+ x- = 0 - 1 + 0, but no input feeds it: 0
    ("alpha2_beta1", [3.0, 3.0]),
    # z = y + g (W+ x+ + b+ + W- x-) = 3 + 0.25 * 4 = 4; x+ (2 + 0.25 * 2) 3/4, x- (-1 - 0.25) 3/4
    ("gamma", [1.875, 1.875]),
    # W^2 column [4, 1], b^2 = 1: z = 6, R = [4, 1] * 3 / 6
    ("wsquare", [2.0, 0.5]),
    # ones: z = 2, R = [1, 1] * 3 / 2
    ("flat", [1.5, 1.5]),
    # l = [-1, -3], h = [2, 2]: z = 3 - (W+ l + b+) - (W- h + b-) = 3 + 2 + 3 = 8;
    # R = (x W - l W+ - h W-) 3/8 = ([2, 2] - [-2, 0] - [0, -2]) 3/8
    ("zbox", [1.5, 1.5]),
])
def test_dense_rules_by_hand(rule, expected):
    composite = Composite("epsilon_plus", epsilon=0.0, low=np.array([[-1.0, -3.0]], np.float32),
                          high=np.array([[2.0, 2.0]], np.float32), layer_rules=(("dense", rule),))
    np.testing.assert_allclose(_relevance(_dense(), composite, X, R)[0], expected, rtol=1e-5)


def test_epsilon_and_gamma_may_be_tensors_of_the_graph():
    """Per-row parameters (the serving variant feeds them per job): gamma 0 is the epsilon rule
    without its epsilon, gamma 0.25 as by hand above."""
    model = _dense()
    model.graph.input.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N"]))
    composite = Composite("epsilon_plus", gamma="g", layer_rules=(("dense", "gamma"),))
    derived = relevance_graph(model, "y", "x", composite, seed_name=SEED, grad_prefix=GRAD)
    session = ort.InferenceSession(derived.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run([GRAD + "x"], {"x": np.repeat(X, 2, 0), SEED: np.repeat(R, 2, 0),
                                     "g": np.array([0.0, 0.25], np.float32)})[0]
    np.testing.assert_allclose(out, [[2.0, 2.0], [1.875, 1.875]], rtol=1e-5)


def test_residual_add_splits_in_proportion():
    """y = x + relu(x), x = [1, -2]: y = [2, -2]; seed [1, 1]. Direct share x R / y = [1/2, 1], the
    relu branch's relu(x) R / y = [1/2, 0] passes back: [1, 1] (the gradient would give [2, 1])."""
    model = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    out = _relevance(model, Composite(), X, np.ones((1, 2), np.float32))
    np.testing.assert_allclose(out, [[1.0, 1.0]], rtol=1e-5)


def _pooled(op: str) -> onnx.ModelProto:
    pool = (helper.make_node("GlobalAveragePool", ["x"], ["p"]) if op == "avg"
            else helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]))
    return _model([pool, helper.make_node("Flatten", ["p"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])])


def test_average_pool_normalises_and_max_pool_routes_to_the_winner():
    x = np.array([[[[1.0, 3.0], [2.0, 6.0]]]], np.float32)  # mean 3, max 6
    seed = np.array([[3.0]], np.float32)
    # average: x * (R / y) / 4 = x / 4, in proportion, summing to 3 (the gradient gives 3/4 everywhere)
    np.testing.assert_allclose(_relevance(_pooled("avg"), Composite(), x, seed), x / 4, rtol=1e-5)
    # max: all to the argmax
    np.testing.assert_allclose(_relevance(_pooled("max"), Composite(), x, seed), [[[[0, 0], [0, 3.0]]]], rtol=1e-6)


def _gated() -> onnx.ModelProto:
    """x * sigmoid(x W): a gate computed from x by a dense layer (not element-wise: gating)."""
    return _model([helper.make_node("MatMul", ["x", "W"], ["h"], name="gate_dense"),
                   helper.make_node("Sigmoid", ["h"], ["s"], name="gate"),
                   helper.make_node("Mul", ["x", "s"], ["m"], name="gating"),
                   helper.make_node("Gemm", ["m", "W", "b"], ["y"], name="dense")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [("W", W), ("b", B)])


def test_a_product_of_two_activations_has_no_relevance_rule():
    model = _gated()
    with pytest.raises(FailedPrecondition, match=r"operator Mul at node 'gating'.*no relevance rule"):
        relevance_graph(model, "y", "x", Composite())
    assert operators_without_rule(model, "y", "x") == [("Mul", "gating")]
    assert unsupported_operators(model, "y", ["x"]) == []  # gradients still work
    differentiate(model, "y", ["x"])


def test_a_constant_factor_passes_as_the_gradient():
    """Mul by a constant 2 before the dense layer: relevance as the gradient (Zennit's functional ops),
    then the epsilon rule on m = 2x: [2 * 2, -4 * -1] * 3 / 3 halved back = [2, 2]."""
    model = _model([helper.make_node("Mul", ["x", "two"], ["m"]), helper.make_node("Gemm", ["m", "W", "b"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                   [("W", W), ("b", B), ("two", np.array(2.0, np.float32))])
    # y1 = 2*2 + (-4)(-1) - 1 = 7; R_m = m W R / y1 = [4, 4] * 3 / 7; the gradient through Mul doubles it
    np.testing.assert_allclose(_relevance(model, Composite("epsilon_plus", epsilon=0.0), X, R)[0],
                               np.array([4.0, 4.0]) * 3 / 7 * 2, rtol=1e-5)


def _conv_net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((2, 1, 3, 3)).astype(np.float32), rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    w3 = rng.standard_normal((8, 3)).astype(np.float32)
    return _model([helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
                   helper.make_node("Relu", ["c1"], ["r1"]),
                   helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", strides=[2, 2], pads=[1, 1, 1, 1]),
                   helper.make_node("Relu", ["c2"], ["r2"]),
                   helper.make_node("Flatten", ["r2"], ["f"]),
                   helper.make_node("MatMul", ["f", "w3"], ["y"], name="dense")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                  [("w1", w1), ("w2", w2), ("w3", w3)])


@pytest.mark.parametrize(("composite", "expected"), [
    ("epsilon_gamma_box", {"conv1": "zbox", "conv2": "gamma", "dense": "epsilon"}),
    ("epsilon_plus", {"conv1": "zplus", "conv2": "zplus", "dense": "epsilon"}),
    ("epsilon_alpha2_beta1", {"conv1": "alpha2_beta1", "conv2": "alpha2_beta1", "dense": "epsilon"}),
    ("epsilon_plus_flat", {"conv1": "flat", "conv2": "zplus", "dense": "epsilon"}),
    ("epsilon_alpha2_beta1_flat", {"conv1": "flat", "conv2": "alpha2_beta1", "dense": "epsilon"}),
    ("deep_taylor", {"conv1": "zbox", "conv2": "zplus", "dense": "zplus"}),
])
def test_composites_assign_rules_by_type_and_position(composite, expected):
    model = _conv_net()
    names = {i: n.name for i, n in enumerate(model.graph.node)}
    got = {names[i]: r for i, r in assign(model, "x", Composite(composite, low=-1.0, high=1.0)).items()}
    assert got == expected
    overridden = assign(model, "x", Composite(composite, low=-1.0, high=1.0, layer_rules=(("c2", "flat"),)))
    assert {names[i]: r for i, r in overridden.items()} == {**expected, "conv2": "flat"}  # by output name


def test_deep_taylor_without_bounds_starts_with_wsquare():
    model = _conv_net()
    assert assign(model, "x", Composite("deep_taylor"))[0] == "wsquare"


def test_a_conv_net_conserves_relevance_under_z_plus_without_biases():
    """z+ everywhere (deep Taylor's hidden rule), no biases: the input relevance sums to the seed."""
    model = _conv_net()
    x = np.random.default_rng(1).random((2, 1, 4, 4)).astype(np.float32)
    seed = np.array([[0.0, 2.0, 0.0], [1.5, 0.0, 0.0]], np.float32)
    rules = (("conv1", "zplus"), ("conv2", "zplus"), ("dense", "zplus"))
    out = _relevance(model, Composite("epsilon_plus", layer_rules=rules), x, seed)
    np.testing.assert_allclose(out.reshape(2, -1).sum(1), [2.0, 1.5], rtol=1e-4)


def test_unknown_composite_and_rule_are_refused():
    with pytest.raises(ValueError, match="composite: expected one of"):
        Composite("bogus")
    with pytest.raises(ValueError, match="layer_rules: rule for 'dense'"):
        Composite(layer_rules=(("dense", "bogus"),))


def test_an_activation_written_out_as_a_product_passes_relevance():
    """y = x * sigmoid(x) (SiLU as exported) then a constant factor 0.5 (GELU's tail): an activation,
    so the seed [1, 2] reaches x whole; x * sigmoid(W x) would be gating (refused above)."""
    model = _model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["m"]),
                    helper.make_node("Mul", ["m", "half"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                   [("half", np.array(0.5, np.float32))])
    out = _relevance(model, Composite(), X, np.array([[1.0, 2.0]], np.float32))
    np.testing.assert_allclose(out, [[1.0, 2.0]], rtol=1e-6)


def test_deep_taylor_is_montavons_decomposition():
    """Deep Taylor decomposition (Montavon et al. 2017) of a ReLU net with non-positive biases, written
    from the paper in numpy: the z+ rule (root points on the positive orthant) in the hidden layer,
    z^B (root points in the box [l, h]) at the input. The `deep_taylor` composite gives it."""
    rng = np.random.default_rng(4)
    w1, w2 = rng.standard_normal((4, 5)), rng.standard_normal((5, 3))
    b1, b2 = -np.abs(rng.standard_normal(5)), -np.abs(rng.standard_normal(3))
    model = _model([helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="dense1"),
                    helper.make_node("Relu", ["h"], ["a"]),
                    helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="dense2")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                   [(k, v.astype(np.float32)) for k, v in {"w1": w1, "b1": b1, "w2": w2, "b2": b2}.items()])
    x = rng.random((1, 4))
    low, high = np.zeros(4), np.ones(4)
    a = np.maximum(x[0] @ w1 + b1, 0)
    y = a @ w2 + b2
    target = int(np.argmax(y))
    r2 = np.zeros(3)
    r2[target] = y[target]
    # z+: R_j = sum_k a_j w_jk+ / sum_j a_j w_jk+ R_k
    zp = a[:, None] * np.maximum(w2, 0)
    r1 = zp @ (r2 / np.where(zp.sum(0) == 0, 1, zp.sum(0)))  # (a class no unit feeds positively gets none)
    # z^B: R_i = sum_j (x_i w_ij - l_i w_ij+ - h_i w_ij-) / sum_i (...) R_j
    zb = x[0][:, None] * w1 - low[:, None] * np.maximum(w1, 0) - high[:, None] * np.minimum(w1, 0)
    r0 = zb @ (r1 / zb.sum(0))
    seed = r2[None].astype(np.float32)
    ours = _relevance(model, Composite("deep_taylor", low=low[None].astype(np.float32),
                                       high=high[None].astype(np.float32)), x.astype(np.float32), seed)
    np.testing.assert_allclose(ours[0], r0, rtol=1e-4, atol=1e-6)
