"""Activation maximisation through the real engine on tiny graphs, in closed form.

- class objective on a linear model: the logit's gradient is the weights' column, so plain ascent
  with the L2 term from the input gives p_t+1 = p_t + lr (w_c - 2 l2 p_t), and the score curve is w_c . p_t;
- channel and neuron objectives on a 1x1 Conv layer: the gradient of a channel's mean is the
  kernel's column over H W at every pixel, a neuron's the column at its position only;
- the pieces in numpy: the Fourier decoding's adjoint against finite differences, the warp's integer
  shifts against a zero-filled shift, the parameter checks, seeding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from explaind.engine.engine import ServedModel
from explaind.errors import FailedPrecondition, InvalidArgument
from explaind.methods.activation_maximization import (ActivationMaximization, fourier_adjoint, fourier_decode,
                                                      rfft_scale, warp_matrix)
from explaind.models.white_box import WhiteBox
from explaind.onnxgraph.signature import ModelSignature

from _linear import served_linear
from inprocess import explain, view_of

SHAPE = (2, 4, 5)
METHOD = ActivationMaximization()


def linear(seed: int = 0) -> tuple[ServedModel, np.ndarray, object]:
    served, weights = served_linear("am-linear", SHAPE, 3, seed=seed)
    return served, weights, view_of(served, white_box=WhiteBox(True, "", (), ""))


def conv_model(k: int = 3, classes: int = 2) -> tuple[onnx.ModelProto, np.ndarray]:
    """input -> 1x1 Conv ("pre", k channels) -> Relu -> GlobalAveragePool -> Flatten -> MatMul."""
    rng = np.random.default_rng(3)
    conv = rng.normal(size=(k, SHAPE[0], 1, 1)).astype(np.float32)
    head = rng.normal(size=(k, classes)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "cw"], ["pre"]), helper.make_node("Relu", ["pre"], ["act"]),
             helper.make_node("GlobalAveragePool", ["act"], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("MatMul", ["flat", "head"], ["logits"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              [numpy_helper.from_array(conv, "cw"), numpy_helper.from_array(head, "head")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, conv


def served_conv() -> tuple[ServedModel, np.ndarray, object]:
    model, conv = conv_model()
    served = ServedModel("am-conv", model, ModelSignature("input", "logits", SHAPE, "NCHW", "logits"), 16, 1.0)
    return served, conv, view_of(served, white_box=WhiteBox(True, "", ("pre", "act"), "act"))


X = np.random.default_rng(1).uniform(0.2, 0.8, size=SHAPE).astype(np.float32)


def test_class_objective_plain_ascent_in_closed_form():
    served, weights, view = linear()
    lr, l2, steps, target = 0.1, 0.05, 4, 2
    given = {"optimizer": "sgd", "learning_rate": lr, "l2": l2, "steps": steps, "start": "input", "clip": False}
    out, params = explain(METHOD, given, (served, view), X, target, "logit")
    w = weights[:, target].reshape(SHAPE).astype(np.float64)
    p, curve = X.astype(np.float64), []
    for _ in range(steps):
        curve.append((w * p).sum())
        p = p + lr * (w - 2 * l2 * p)
    curve.append((w * p).sum())
    np.testing.assert_allclose(out.attribution, p, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.arrays["score_curve"], curve, rtol=1e-5, atol=1e-5)
    assert out.model_evaluations == out.stages == steps + 2  # the prediction, the steps, the final point
    assert out.figures["final_score"] == pytest.approx(curve[-1], rel=1e-5)
    assert "layer" not in params and "channel" not in params and "decay_power" not in params
    # the pixels: preprocessing absent, so the model's space is pixels / 255 * 255: [0, 1] itself, clipped
    np.testing.assert_allclose(out.arrays["image"], np.clip(p, 0, 1).transpose(1, 2, 0), atol=1e-5)


def test_adam_and_the_valid_range():
    """Adam's first step moves every pixel by lr against the sign of nothing but the gradient's; the
    pixels then stay in [0, 1] (the valid range without preprocessing) with clip."""
    served, weights, view = linear()
    out, _ = explain(METHOD, {"steps": 1, "start": "input", "l2": 0.0, "learning_rate": 0.05}, (served, view), X, 0,
                     "logit")
    w = weights[:, 0].reshape(SHAPE)
    np.testing.assert_allclose(out.attribution, np.clip(X + 0.05 * np.sign(w), 0, 1), atol=1e-5)
    long, _ = explain(METHOD, {"steps": 60, "learning_rate": 0.1}, (served, view), X, 0, "logit")
    assert long.attribution.min() >= 0.0 and long.attribution.max() <= 1.0
    np.testing.assert_array_equal(long.attribution > 0.5, w > 0)  # each pixel driven to the bound of its sign


@pytest.mark.parametrize("objective", ["channel", "neuron"])
def test_layer_objectives_in_closed_form(objective):
    served, conv, view = served_conv()
    lr, steps, channel = 0.2, 3, 1
    given = {"objective": objective, "layer": "pre", "channel": channel, "optimizer": "sgd", "learning_rate": lr,
             "l2": 0.0, "steps": steps, "start": "input", "clip": False}
    if objective == "neuron":
        given["position"] = [3, 1]
    out, params = explain(METHOD, given, (served, view), X, 0, "logit")
    column = conv[channel, :, 0, 0].astype(np.float64)
    grad = np.zeros(SHAPE)
    if objective == "channel":
        grad[:] = column[:, None, None] / (SHAPE[1] * SHAPE[2])
    else:
        grad[:, 3, 1] = column
    p = X + steps * lr * grad
    np.testing.assert_allclose(out.attribution, p, rtol=1e-5, atol=1e-6)
    pre = np.einsum("c,chw->hw", column, p)
    expected = pre.mean() if objective == "channel" else pre[3, 1]
    assert out.figures["final_score"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert params["layer"] == "pre"


def test_neuron_defaults_to_the_layer_centre():
    served, conv, view = served_conv()
    given = {"objective": "neuron", "layer": "pre", "optimizer": "sgd", "l2": 0.0, "steps": 1, "start": "input",
             "clip": False, "learning_rate": 1.0}
    out, _ = explain(METHOD, given, (served, view), X, 0, "logit")
    moved = np.argwhere(np.abs(out.attribution - X).sum(axis=0) > 0)
    assert moved.tolist() == [[2, 2]]  # 4 x 5: (4 // 2, 5 // 2)


@pytest.mark.parametrize("size", [(6, 6), (5, 7)])
def test_fourier_adjoint_equals_finite_differences(size):
    rng = np.random.default_rng(0)
    h, w = size
    scale = rfft_scale(h, w, 1.0)
    spectrum = rng.normal(size=(2, h, w // 2 + 1, 2))
    grad_y = rng.normal(size=(2, h, w))
    adjoint = fourier_adjoint(grad_y, scale).astype(np.float64)
    # directional derivatives along random directions, and along each coordinate that the image depends on
    for _ in range(5):
        d = rng.normal(size=spectrum.shape)
        eps = 1e-3
        plus = fourier_decode((spectrum + eps * d).astype(np.float64), scale, size).astype(np.float64)
        minus = fourier_decode((spectrum - eps * d).astype(np.float64), scale, size).astype(np.float64)
        numeric = (grad_y * (plus - minus)).sum() / (2 * eps)
        # Imaginary parts irfft2 ignores (the DC column's and, even widths, the last column's, on the
        # self-conjugate rows) have a zero derivative; torch's (and so our) adjoint leaves them zero too.
        assert (adjoint * d).sum() == pytest.approx(numeric, rel=2e-3, abs=2e-3)


def test_rfft_scale_is_lucents():
    scale = rfft_scale(4, 4, 1.0)
    freqs = np.sqrt(np.fft.fftfreq(4)[:, None] ** 2 + np.fft.rfftfreq(4)[None, :] ** 2)
    np.testing.assert_allclose(scale, 1 / np.maximum(freqs, 0.25), rtol=1e-6)
    assert scale[0, 0] == 4.0 and scale[0, 1] == 4.0 and scale[2, 2] == pytest.approx(1 / np.sqrt(0.5))


def test_warp_integer_shift_is_a_zero_filled_shift_and_identity_is_identity():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 7))
    identity = warp_matrix(6, 7, (0.0, 0.0), 1.0, 0.0)
    np.testing.assert_allclose(identity @ image.reshape(-1), image.reshape(-1), atol=1e-12)
    shifted = (warp_matrix(6, 7, (1.0, -2.0), 1.0, 0.0) @ image.reshape(-1)).reshape(6, 7)
    expected = np.zeros_like(image)
    expected[1:, :5] = image[:-1, 2:]  # out[i, j] = in[i - dy, j - dx], dy = 1, dx = -2
    np.testing.assert_allclose(shifted, expected, atol=1e-12)
    # a half-turn about the centre maps pixel (i, j) to (H - 1 - i, W - 1 - j)
    turned = (warp_matrix(6, 7, (0.0, 0.0), 1.0, np.pi) @ image.reshape(-1)).reshape(6, 7)
    np.testing.assert_allclose(turned, image[::-1, ::-1], atol=1e-9)


def test_seeded():
    served, _, view = linear()
    a, _ = explain(METHOD, {"steps": 3}, (served, view), X, 1, "logit", seed=5)
    b, _ = explain(METHOD, {"steps": 3}, (served, view), X, 1, "logit", seed=5)
    c, _ = explain(METHOD, {"steps": 3}, (served, view), X, 1, "logit", seed=6)
    np.testing.assert_array_equal(a.attribution, b.attribution)
    assert np.abs(a.attribution - c.attribution).max() > 1e-4
    # jitter, scale and rotation draw from the same generator
    d, _ = explain(METHOD, {"steps": 3, "jitter": 1, "rotation": 5.0, "scale": 0.1}, (served, view), X, 1, "logit",
                   seed=5)
    e, _ = explain(METHOD, {"steps": 3, "jitter": 1, "rotation": 5.0, "scale": 0.1}, (served, view), X, 1, "logit",
                   seed=5)
    np.testing.assert_array_equal(d.attribution, e.attribution)


@pytest.mark.parametrize("given,field,error", [
    ({"layer": "pre"}, "layer", InvalidArgument),
    ({"position": [1, 1]}, "position", InvalidArgument),
    ({"objective": "channel", "layer": "nope"}, "layer", InvalidArgument),
    ({"objective": "channel", "layer": "pre", "position": [0, 0]}, "position", InvalidArgument),
    ({"objective": "neuron", "layer": "pre", "position": [4, 0]}, "position", InvalidArgument),
    ({"objective": "channel", "layer": "pre", "channel": 3}, "channel", InvalidArgument),
    ({"parameterization": "fourier", "start": "input"}, "start", InvalidArgument),
    ({"parameterization": "generator"}, "parameterization", FailedPrecondition),
    ({"steps": 0}, "steps", InvalidArgument),
    ({"learning_rate": 0.0}, "learning_rate", InvalidArgument),
    ({"norm_percentile": 100.0}, "norm_percentile", InvalidArgument),
    ({"objective": "pixel"}, "objective", InvalidArgument),
])
def test_bad_parameters_name_the_field(given, field, error):
    served, _, view = served_conv()
    with pytest.raises(error, match=rf"activation_maximization\.{field}"):
        explain(METHOD, {"steps": 2, **given}, (served, view), X, 0, "logit")


def linear_generator(path, latent: int = 3, seed: int = 4) -> np.ndarray:
    """code [N, latent] -> MatMul(A) -> Reshape to [N, *SHAPE] ("image"), written to `path`; returns A."""
    a = np.random.default_rng(seed).normal(size=(latent, int(np.prod(SHAPE)))).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["code", "A"], ["flat"]),
             helper.make_node("Reshape", ["flat", "shape"], ["image"])]
    graph = helper.make_graph(nodes, "gen", [helper.make_tensor_value_info("code", TensorProto.FLOAT, ["N", latent])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *SHAPE])],
                              [numpy_helper.from_array(a, "A"),
                               numpy_helper.from_array(np.array([-1, *SHAPE], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (("explaind.latent_size", str(latent)), ("explaind.latent_min", "-10"),
                       ("explaind.latent_max", "10"), ("explaind.latent_mean", "0.5,0,-0.5")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return a


def test_generator_prior_is_composed_in_front_of_the_model(tmp_path):
    """model(G(code)) with G linear: d logit_c / d code = A w_c, so plain ascent moves the code by
    lr A w_c per step from the documented start (mean + 0.1 latent_max N(0, 1), seeded), and the
    attribution is G(final code)."""
    served, weights, _ = linear()
    a = linear_generator(tmp_path / "g.onnx")
    view = view_of(served, white_box=WhiteBox(True, "", (), ""))
    view = dataclasses.replace(view, generator_file=tmp_path / "g.onnx")
    lr, steps, target, seed = 0.01, 3, 1, 8
    given = {"parameterization": "generator", "optimizer": "sgd", "learning_rate": lr, "l2": 0.0, "steps": steps}
    out, params = explain(METHOD, given, (served, view), X, target, "logit", seed=seed)
    noise = np.random.default_rng(seed).standard_normal(3, dtype=np.float32)
    start = np.array([0.5, 0, -0.5], np.float32) + 1.0 * noise
    code = start.astype(np.float64) + steps * lr * (a.astype(np.float64) @ weights[:, target])
    np.testing.assert_allclose(out.arrays["code"], code, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.attribution, (code @ a).reshape(SHAPE), rtol=1e-4, atol=1e-5)
    assert params["latent_size"] == 3
    # clipped to [latent_min, latent_max]
    far, _ = explain(METHOD, {**given, "learning_rate": 100.0}, (served, view), X, target, "logit", seed=seed)
    assert np.abs(far.arrays["code"]).max() == pytest.approx(10.0)
    with pytest.raises(InvalidArgument, match=r"activation_maximization\.rotation"):
        explain(METHOD, {**given, "rotation": 5.0}, (served, view), X, target, "logit")


def test_a_broken_generator_is_a_failed_precondition(tmp_path):
    served, _, _ = linear()
    (tmp_path / "g.onnx").write_bytes(b"not onnx")
    view = dataclasses.replace(view_of(served, white_box=WhiteBox(True, "", (), "")),
                               generator_file=tmp_path / "g.onnx")
    with pytest.raises(FailedPrecondition, match="generator cannot be read"):
        explain(METHOD, {"parameterization": "generator"}, (served, view), X, 0, "logit")


def test_a_generator_without_gradient_rules_is_a_failed_precondition(tmp_path):
    served, _, _ = linear()
    linear_generator(tmp_path / "g.onnx")
    model = onnx.load(str(tmp_path / "g.onnx"))
    model.graph.node.insert(1, helper.make_node("Sin", ["flat"], ["rounded"]))
    model.graph.node[2].input[0] = "rounded"
    onnx.save(model, str(tmp_path / "g.onnx"))
    view = dataclasses.replace(view_of(served, white_box=WhiteBox(True, "", (), "")),
                               generator_file=tmp_path / "g.onnx")
    with pytest.raises(FailedPrecondition, match="without a gradient rule: Sin"):
        explain(METHOD, {"parameterization": "generator"}, (served, view), X, 0, "logit")


def test_nhwc_models_get_their_own_layout_back():
    """The ascent works on [C, H, W] inside; an NHWC model's input, gradient and answer stay [H, W, C],
    and the warps move the spatial axes."""
    shape = (4, 5, 2)
    served, weights = served_linear("am-nhwc", shape, 3, layout="NHWC", seed=2)
    view = view_of(served, white_box=WhiteBox(True, "", (), ""))
    x = np.random.default_rng(3).uniform(0.2, 0.8, size=shape).astype(np.float32)
    given = {"optimizer": "sgd", "learning_rate": 0.1, "l2": 0.0, "steps": 2, "start": "input", "clip": False}
    out, _ = explain(METHOD, given, (served, view), x, 1, "logit")
    np.testing.assert_allclose(out.attribution, x + 0.2 * weights[:, 1].reshape(shape), rtol=1e-5, atol=1e-6)
    assert out.arrays["image"].shape == shape
    # one jittered step: the model sees x shifted by (dy, dx) (drawn from the seed), out[i, j] = x[i - dy, j - dx]
    # with zero fill, so the gradient reaching x is w shifted back: w[i + dy, j + dx] where that exists
    shifted, _ = explain(METHOD, {**given, "jitter": 1, "steps": 1}, (served, view), x, 1, "logit", seed=4)
    rng = np.random.default_rng(4)
    dy, dx = int(rng.integers(-1, 2)), int(rng.integers(-1, 2))
    assert (dy, dx) != (0, 0)
    w = weights[:, 1].reshape(shape)
    expected = np.zeros(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            if 0 <= i + dy < shape[0] and 0 <= j + dx < shape[1]:
                expected[i, j] = w[i + dy, j + dx]
    np.testing.assert_allclose((shifted.attribution - x) / 0.1, expected, atol=1e-4)
