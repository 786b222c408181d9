"""The rule variants deep_lift, rect_grad, excitation and excitation_contrastive on tiny hand-built ONNX
graphs, against values computed by hand (numpy arithmetic of the formulas, written out here), and
the refusal of an operator without a rule.

- deep_lift: rows [x; x0] in one batch, both halves seeded (Captum's layout); the input half's
  gradient is the multipliers: rescale at Relu/Sigmoid (the gradient where x == x0), Captum's
  max-pool rule, linear layers as gradients; summation-to-delta.
- rect_grad: dx = g * [a g > tau_q], tau the per-row q-th percentile (linear interpolation), q per row.
- excitation: p' = x * W+^T (p / (W+ x)) at MatMul/Gemm/Conv, batch norm passed through (not folded),
  proportional split at a residual Add, average pooling; contrastive: the classifier's W- pass subtracted.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from explaind.onnxgraph.autodiff import UnsupportedOperator, differentiate, unsupported_operators
from explaind.onnxgraph.autodiff.rules.rect_grad import Q_TENSOR

F = TensorProto.FLOAT


def graph_model(nodes, inputs, output, initializers, extra_inputs=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(name, F, shape) for name, shape in [*inputs, *extra_inputs]],
        [helper.make_tensor_value_info(output[0], F, output[1])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def backward(model: onnx.ModelProto, rule: str, feeds: dict, seed: np.ndarray, wrt=("x",), output="y") -> list:
    derived = differentiate(model, output, list(wrt), rule=rule, seed_name="seed", grad_prefix="g::")
    onnx.checker.check_model(derived)
    session = ort.InferenceSession(derived.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([f"g::{t}" for t in wrt], {**feeds, "seed": seed.astype(np.float32)})


# deep_lift ---------------------------------------------------------------------------------------

W1 = np.array([[1.0, 2.0, -1.0], [-1.0, 1.0, 0.5]])   # x [2] -> h [3]
B1 = np.array([0.5, -0.25, 0.0])
W2 = np.array([[1.0], [-2.0], [3.0]])                 # r [3] -> y [1]


def mlp(activation: str = "Relu") -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["hm"]), helper.make_node("Add", ["hm", "B1"], ["h"]),
             helper.make_node(activation, ["h"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])]
    return graph_model(nodes, [("x", ["N", 2])], ("y", ["N", 1]), {"W1": W1, "B1": B1, "W2": W2})


def test_deep_lift_rescale_rule_gives_the_multipliers_and_sums_to_the_delta():
    x, x0 = np.array([1.0, 0.5]), np.array([-0.5, 1.0])
    h, h0 = x @ W1 + B1, x0 @ W1 + B1
    # h = [1.0, 2.25, -0.75], h0 = [-1.0, -0.25, 0.0]: the units switch on, stay on, stay off
    m = (np.maximum(h, 0) - np.maximum(h0, 0)) / (h - h0)
    expected = W1 @ (m * W2[:, 0])
    (g,) = backward(mlp(), "deep_lift", {"x": np.stack([x, x0]).astype(np.float32)}, np.ones((2, 1)))
    np.testing.assert_allclose(g[0], expected, rtol=1e-6)
    f = lambda v: np.maximum(v @ W1 + B1, 0) @ W2[:, 0]  # noqa: E731
    assert float((x - x0) @ g[0]) == pytest.approx(f(x) - f(x0), rel=1e-6)
    (plain,) = backward(mlp(), "plain", {"x": x[None].astype(np.float32)}, np.ones((1, 1)))
    assert not np.allclose(plain[0], g[0])  # the rule changes something here


def test_deep_lift_falls_back_to_the_gradient_where_the_input_does_not_change():
    # x - x0 orthogonal to W1[:, 0] (and B1): Delta h_0 = 0, whose multiplier is then [h_0 > 0]
    x, x0 = np.array([1.0, 1.0]), np.array([0.0, 0.0])
    w1 = W1.copy()
    w1[:, 0] = [1.0, -1.0]
    model = mlp()
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w1.astype(np.float32), "W1"))
    h, h0 = x @ w1 + B1, x0 @ w1 + B1
    assert h[0] == h0[0] == 0.5
    m = np.where(np.abs(h - h0) < 1e-10, (h > 0).astype(float), (np.maximum(h, 0) - np.maximum(h0, 0)) / np.where(h == h0, 1, h - h0))
    (g,) = backward(model, "deep_lift", {"x": np.stack([x, x0]).astype(np.float32)}, np.ones((2, 1)))
    np.testing.assert_allclose(g[0], w1 @ (m * W2[:, 0]), rtol=1e-6)
    assert m[0] == 1.0


def test_deep_lift_rescales_sigmoid():
    x, x0 = np.array([0.3, -0.7]), np.array([0.1, 0.2])
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h, h0 = x @ W1 + B1, x0 @ W1 + B1
    m = (sig(h) - sig(h0)) / (h - h0)
    (g,) = backward(mlp("Sigmoid"), "deep_lift", {"x": np.stack([x, x0]).astype(np.float32)}, np.ones((2, 1)))
    np.testing.assert_allclose(g[0], W1 @ (m * W2[:, 0]), rtol=1e-5)


def test_deep_lift_max_pool_rule_routes_both_halves():
    """MaxPool over windows of 2 on [1, 1, 1, 4]: Captum's rule, by hand."""
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[1, 2], strides=[1, 2]),
             helper.make_node("Reshape", ["p", "flat"], ["pf"]), helper.make_node("MatMul", ["pf", "W"], ["y"])]
    w = np.array([[2.0], [-1.0]])
    model = graph_model(nodes, [("x", ["N", 1, 1, 4])], ("y", ["N", 1]), {"W": w})
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1, 2], np.int64), "flat"))
    x = np.array([1.0, 3.0, 5.0, 2.0])    # windows: max 3 (at 1), max 5 (at 2)
    x0 = np.array([4.0, 0.0, 1.0, 0.5])   # windows: max 4 (at 0), max 1 (at 2)
    y, y0 = np.array([3.0, 5.0]), np.array([4.0, 1.0])
    g = w[:, 0]
    y_max = np.maximum(y, y0)
    routed = np.zeros(4)
    for k, (i, i0) in enumerate([(1, 0), (2, 2)]):  # argmax of x and of x0 in window k
        routed[i] += g[k] * (y_max[k] - y0[k])
        routed[i0] += g[k] * (y[k] - y_max[k])
    expected = routed / (x - x0)
    feeds = {"x": np.stack([x, x0]).reshape(2, 1, 1, 4).astype(np.float32)}
    (got,) = backward(model, "deep_lift", feeds, np.ones((2, 1)))
    np.testing.assert_allclose(got[0].reshape(-1), expected, rtol=1e-6)
    assert float((x - x0) @ got[0].reshape(-1)) == pytest.approx(float((y - y0) @ g))  # summation to delta


# rect_grad ---------------------------------------------------------------------------------------

def rect_model(width: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["y"])]
    w = np.linspace(-1.0, 2.0, width).reshape(width, 1)
    return graph_model(nodes, [("x", ["N", width])], ("y", ["N", 1]), {"W": w},
                       extra_inputs=[(Q_TENSOR, ["N"])]), w[:, 0]


def test_rect_grad_keeps_units_above_the_percentile_of_activation_times_gradient():
    model, w = rect_model(5)              # w = [-1, -0.25, 0.5, 1.25, 2]
    x = np.array([[3.0, 1.0, 2.0, 0.4, -1.0],
                  [1.0, 2.0, 4.0, 1.0, 0.5]])
    importance = np.maximum(x, 0) * w     # row 0: [-3, -0.25, 1, 0.5, 0]; row 1: [-1, -0.5, 2, 1.25, 1]
    q = np.array([50.0, 70.0])
    # row 0, q 50: sorted [-3, -0.25, 0, 0.5, 1], position 2 -> tau 0: keep 0.5 and 1 (units 2, 3)
    # row 1, q 70: sorted [-1, -0.5, 1, 1.25, 2], position 2.8 -> tau 1 + 0.8 * 0.25 = 1.2: units 2, 3
    taus = [np.percentile(importance[r], q[r]) for r in range(2)]
    assert taus == pytest.approx([0.0, 1.2])
    expected = np.stack([w * (importance[r] > taus[r]) for r in range(2)])
    (g,) = backward(model, "rect_grad", {"x": x.astype(np.float32), Q_TENSOR: q.astype(np.float32)}, np.ones((2, 1)))
    np.testing.assert_allclose(g, expected)
    np.testing.assert_array_equal(g != 0, [[False, False, True, True, False], [False, False, True, True, False]])


def test_rect_grad_q_zero_passes_all_but_the_smallest_and_q_100_passes_nothing():
    model, w = rect_model(4)
    x = np.array([[1.0, 1.0, 1.0, 1.0]])
    importance = w                          # [-1, 0, 1, 2]
    for q, keep in [(0.0, importance > -1), (100.0, np.zeros(4, bool)), (60.0, importance > 0.8)]:
        (g,) = backward(model, "rect_grad", {"x": x.astype(np.float32), Q_TENSOR: np.array([q], np.float32)},
                        np.ones((1, 1)))
        np.testing.assert_allclose(g[0], w * keep, err_msg=f"q={q}")


# excitation --------------------------------------------------------------------------------------

V1 = np.array([[1.0, -2.0, 0.5], [0.5, 1.0, -1.0]])   # x [2] -> h [3]
V2 = np.array([[2.0, -1.0], [-1.0, 1.0], [0.5, 3.0]])  # r [3] -> y [2]


def ebp_mlp() -> onnx.ModelProto:
    nodes = [helper.make_node("Gemm", ["x", "V1", "C1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "V2"], ["y"])]
    return graph_model(nodes, [("x", ["N", 2])], ("y", ["N", 2]), {"V1": V1, "C1": [0.1, 0.2, 0.3], "V2": V2})


def excite(x: np.ndarray, w: np.ndarray, p: np.ndarray) -> np.ndarray:
    """p'_j = x_j * sum_i w+_ji p_i / (sum_k x_k w+_ki) (the TorchRay rule, written out)."""
    wp = np.maximum(w, 0)
    return x * (wp @ (p / (x @ wp + 1e-20)))


def test_excitation_backprop_passes_winning_probabilities_through_positive_weights():
    x = np.array([0.5, 2.0])
    r = np.maximum(x @ V1 + [0.1, 0.2, 0.3], 0)          # [1.1, 1.2, 0] : the last unit is off
    p_r = excite(r, V2, np.array([1.0, 0.0]))
    p_h = p_r * (r > 0)                                   # ReLU: its gradient
    expected = excite(x, V1, p_h)
    (g,) = backward(ebp_mlp(), "excitation", {"x": x[None].astype(np.float32)}, np.array([[1.0, 0.0]]))
    np.testing.assert_allclose(g[0], expected, rtol=1e-6)
    assert p_r.sum() == pytest.approx(1.0)                # probabilities are conserved by a layer


def test_contrastive_excitation_subtracts_the_negated_classifier_pass():
    x = np.array([0.5, 2.0])
    r = np.maximum(x @ V1 + [0.1, 0.2, 0.3], 0)
    seed = np.array([0.0, 1.0])
    p_r = excite(r, V2, seed) - excite(r, -V2, seed)      # the classifier (last layer) with W+ and W-
    expected = excite(x, V1, p_r * (r > 0))
    (g,) = backward(ebp_mlp(), "excitation_contrastive", {"x": x[None].astype(np.float32)}, seed[None])
    np.testing.assert_allclose(g[0], expected, rtol=1e-6)
    (plain_ebp,) = backward(ebp_mlp(), "excitation", {"x": x[None].astype(np.float32)}, seed[None])
    assert not np.allclose(plain_ebp, g)


def test_excitation_passes_through_batch_norm_unfolded_splits_residual_sums_and_pools():
    """x [1, 2, 1, 2] -> Conv 1x1 (W) -> BatchNorm -> r = Relu -> s = r + x -> GlobalAveragePool -> y."""
    w = np.array([[1.0, -1.0], [0.5, 2.0]]).reshape(2, 2, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
             helper.make_node("Relu", ["b"], ["r"]), helper.make_node("Add", ["r", "x"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["gp"]),
             helper.make_node("Reshape", ["gp", "flat"], ["y"])]
    bn = {"scale": [-2.0, 1.0], "bias": [3.0, 0.5], "mean": [0.0, 0.1], "var": [1.0, 4.0]}
    model = graph_model(nodes, [("x", ["N", 2, 1, 2])], ("y", ["N", 2]), {"W": w, **bn})
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1, 2], np.int64), "flat"))
    x = np.array([[1.0, 2.0], [0.5, 0.25]])              # [channel, width]
    wm = w[:, :, 0, 0]
    c = np.einsum("oi,iw->ow", wm, x)
    b = (c - np.array(bn["mean"])[:, None]) / np.sqrt(np.array(bn["var"])[:, None] + 1e-5) * np.array(bn["scale"])[:, None] \
        + np.array(bn["bias"])[:, None]
    r = np.maximum(b, 0)
    s = r + x
    p_y = np.array([1.0, 0.0])
    p_s = s / (s.mean(axis=1, keepdims=True) + 1e-20) * p_y[:, None] / 2       # average pooling's rule
    p_r, p_x_skip = r / s * p_s, x / s * p_s                                     # proportional split
    p_c = p_r * (b > 0)                                                          # ReLU, then BN passes
    wp = np.maximum(wm, 0)                                                       # the unfolded weight
    p_x_conv = x * np.einsum("oi,ow->iw", wp, p_c / (np.einsum("oi,iw->ow", wp, x) + 1e-20))
    (g,) = backward(model, "excitation", {"x": x[None, :, None, :].astype(np.float32)}, p_y[None])
    np.testing.assert_allclose(g[0, :, 0, :], p_x_conv + p_x_skip, rtol=1e-5)
    assert (p_x_conv + p_x_skip).sum() == pytest.approx(1.0, rel=1e-6)          # conserved here: all x > 0


# Refusals ----------------------------------------------------------------------------------------

def product_model() -> onnx.ModelProto:
    """y = (x @ A) @ (x @ B)^T-ish: a MatMul of two activations, then a linear layer."""
    nodes = [helper.make_node("MatMul", ["x", "A"], ["u"]), helper.make_node("MatMul", ["x", "B"], ["v"]),
             helper.make_node("Unsqueeze", ["u", "ax2"], ["u3"]), helper.make_node("Unsqueeze", ["v", "ax1"], ["v3"]),
             helper.make_node("MatMul", ["u3", "v3"], ["uv"], name="outer"),
             helper.make_node("Reshape", ["uv", "flat"], ["f"]), helper.make_node("MatMul", ["f", "C"], ["y"])]
    rng = np.random.default_rng(0)
    model = graph_model(nodes, [("x", ["N", 2])], ("y", ["N", 2]),
                        {"A": rng.normal(size=(2, 2)), "B": rng.normal(size=(2, 2)), "C": rng.normal(size=(4, 2))})
    model.graph.initializer.extend([numpy_helper.from_array(np.array([2], np.int64), "ax2"),
                                    numpy_helper.from_array(np.array([1], np.int64), "ax1"),
                                    numpy_helper.from_array(np.array([-1, 4], np.int64), "flat")])
    return model


def test_an_operator_without_an_excitation_rule_is_named_and_the_gradient_still_works():
    model = product_model()
    assert unsupported_operators(model, "y", ["x"], rule="plain") == []
    assert ("MatMul", "outer") in unsupported_operators(model, "y", ["x"], rule="excitation")
    with pytest.raises(UnsupportedOperator) as err:
        differentiate(model, "y", ["x"], rule="excitation")
    assert "MatMul" in str(err.value) and "outer" in str(err.value)
    x = np.array([[0.5, -1.0]], np.float32)
    (g,) = backward(model, "plain", {"x": x}, np.array([[1.0, 0.0]]))
    eps = 1e-3
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    numeric = [(session.run(None, {"x": x + eps * np.eye(2, dtype=np.float32)[i]})[0][0, 0]
                - session.run(None, {"x": x - eps * np.eye(2, dtype=np.float32)[i]})[0][0, 0]) / (2 * eps) for i in range(2)]
    np.testing.assert_allclose(g[0], numeric, rtol=1e-2, atol=1e-4)


def test_deep_lift_softmax_rule_subtracts_the_mean_multiplier_per_row():
    """y = softmax(x @ W): with g = one-hot(t), m_j = [j = t] dp_t / dz_t, minus its mean over the classes."""
    w = np.array([[1.0, -0.5, 0.25], [0.5, 2.0, -1.0]])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Softmax", ["z"], ["y"], axis=-1)]
    model = graph_model(nodes, [("x", ["N", 2])], ("y", ["N", 3]), {"W": w})
    x, x0 = np.array([1.0, -1.0]), np.array([0.2, 0.4])
    soft = lambda v: np.exp(v) / np.exp(v).sum()  # noqa: E731
    z, z0 = x @ w, x0 @ w
    t = 1
    m = np.zeros(3)
    m[t] = (soft(z)[t] - soft(z0)[t]) / (z[t] - z0[t])
    m -= m.mean()
    seed = np.zeros((2, 3))
    seed[:, t] = 1
    (g,) = backward(model, "deep_lift", {"x": np.stack([x, x0]).astype(np.float32)}, seed)
    np.testing.assert_allclose(g[0], w @ m, rtol=1e-5)
