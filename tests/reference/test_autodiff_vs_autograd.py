"""explaind's ONNX-derived gradients against torch autograd on the same torch models (float32).

For every zoo model: export to ONNX, derive the gradient graph with
``differentiate(model, "logits", ["input", layer])``, run it with onnxruntime (CPU) and compare
d sum(seed * logits) / d input and / d layer with torch autograd (the layer tensor captured with a
forward hook + retain_grad on the module that produces it, checked to be the tensor ONNX names).
Seeds: a random tensor, and one-hot rows (a target class per sample).

Modified rules ("guided", "deconvnet") are checked against Captum's semantics, reproduced with full
backward hooks on every nn.ReLU (every ONNX Relu comes from one, see zoo.py):
- GuidedBackprop:  grad_in = relu(grad_in_of_relu) = relu(grad_out) * (x > 0)
- Deconvolution:   grad_in = relu(grad_out)        (the forward sign is ignored)
on the ReLU models (ResNet- and VGG-style as asked, plus SE, DenseNet and the MLP).

ReLU6 (MobileNetV2): Captum's GuidedBackprop/Deconvolution only hook ``nn.ReLU`` modules, and
``nn.ReLU6`` is a Hardtanh, not a ReLU, so Captum backpropagates plain gradients through ReLU6,
whereas explaind modifies Clip(min=0) too (documented in autodiff/rules/activations.py). The
Captum comparison is therefore made on plain gradients only; a separate test checks explaind's own
documented ReLU6 semantics (guided: relu(g) * [0 < x < 6], deconvnet: relu(g)) with hooks on
nn.ReLU6 *and* nn.ReLU.

Relative error: see :func:`rel_err`. Tolerance 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _methods import GRAD, SEED
from torch import nn

import zoo

TOL = 1e-4
BATCH = 3
ALL = list(zoo.ZOO)
RELU_MODELS = [name for name, e in zoo.ZOO.items() if not e.has_relu6]
RELU6_MODELS = [name for name, e in zoo.ZOO.items() if e.has_relu6]


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """Relative error of `actual` against the reference `expected`:
    max|actual - expected| / max(max|expected|, 1e-12) (one scale for the whole tensor)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-12))


def _inputs(ex, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *ex.torch_model.input_shape)).astype(np.float32)


def _seeds(ex, n: int, kind: str, seed: int) -> np.ndarray:
    classes = ex.entry.num_classes
    rng = np.random.default_rng(seed + 1000)
    if kind == "random":
        return rng.standard_normal((n, classes)).astype(np.float32)
    targets = (np.arange(n) * 3 + seed) % classes  # a (different) target class per sample
    return np.eye(classes, dtype=np.float32)[targets]


def _modified_hook(rule: str):
    """Captum's ModifiedReluGradientAttribution hooks (register_full_backward_hook)."""
    if rule == "guided":  # GuidedBackprop: relu of the gradient w.r.t. the module input
        return lambda module, grad_in, grad_out: (F.relu(grad_in[0]),)
    if rule == "deconvnet":  # Deconvolution: relu of the gradient w.r.t. the module output
        return lambda module, grad_in, grad_out: (F.relu(grad_out[0]),)
    raise ValueError(rule)


def torch_reference(ex, x: np.ndarray, seed: np.ndarray, rule: str = "plain", hooked=(nn.ReLU,)) -> dict:
    """logits, d<seed, logits>/d input and / d layer by torch autograd, with `rule`'s backward
    hooks on the modules of the types in `hooked`."""
    model = ex.torch_model
    captured = {}

    def keep(module, args, out):
        out.retain_grad()
        captured["layer"] = out

    handles = [model.get_submodule(ex.entry.layer_module).register_forward_hook(keep)]
    if rule != "plain":
        hook = _modified_hook(rule)
        handles += [m.register_full_backward_hook(hook) for m in model.modules() if isinstance(m, hooked)]
    try:
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        logits = model(xt)
        (logits * torch.from_numpy(seed)).sum().backward()
    finally:
        for h in handles:
            h.remove()
    return {
        "logits": logits.detach().numpy(),
        "layer_value": captured["layer"].detach().numpy(),
        "input": xt.grad.numpy(),
        "layer": captured["layer"].grad.numpy(),
    }


def onnx_gradients(ex, x: np.ndarray, seed: np.ndarray, rule: str = "plain") -> dict:
    sess = ex.gradient_session(rule)
    names = ["logits", GRAD + "input", GRAD + ex.layer]
    logits, g_input, g_layer = sess.run(names, {"input": x, SEED: seed})
    return {"logits": logits, "input": g_input, "layer": g_layer}


def _compare(ex, error_log, x, seed, rule: str, tag: str, hooked=(nn.ReLU,)) -> None:
    ref = torch_reference(ex, x, seed, rule, hooked)
    got = onnx_gradients(ex, x, seed, rule)
    errors = {key: rel_err(got[key], ref[key]) for key in ("logits", "input", "layer")}
    for key, value in errors.items():
        error_log(ex.entry.name, f"{tag}:{key}", value)
    # The reference must not be trivially zero (e.g. a dead network, or a target without signal).
    assert np.abs(ref["input"]).max() > 1e-6 and np.abs(ref["layer"]).max() > 1e-6
    bad = {k: v for k, v in errors.items() if not v <= TOL}
    assert not bad, f"{ex.entry.name} [{tag}] relative errors above {TOL}: {bad} (layer {ex.layer!r})"


# The layer: the ONNX tensor is the hooked torch tensor ----------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_layer_tensor_is_the_hooked_module_output(exported, error_log, name):
    ex = exported(name)
    producer = zoo.producer_of(ex.onnx_model, ex.layer)
    assert zoo.module_of_node(producer) == ex.entry.layer_module, (producer.name, ex.entry.layer_module)
    x = _inputs(ex, BATCH, seed=7)
    logits, layer = ex.forward_session().run(["logits", ex.layer], {"input": x})
    ref = torch_reference(ex, x, np.zeros_like(logits))
    assert layer.shape == ref["layer_value"].shape
    if name != "mlp":
        assert layer.ndim == 4
    error_log(name, "forward:logits", rel_err(logits, ref["logits"]))
    error_log(name, "forward:layer", rel_err(layer, ref["layer_value"]))
    assert rel_err(logits, ref["logits"]) <= TOL
    assert rel_err(layer, ref["layer_value"]) <= TOL


# Plain gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed_kind", ["random", "onehot"])
@pytest.mark.parametrize("name", ALL)
def test_plain_gradients(exported, error_log, name, seed_kind):
    ex = exported(name)
    for trial in range(2):
        x = _inputs(ex, BATCH, seed=trial)
        seed = _seeds(ex, BATCH, seed_kind, seed=trial)
        _compare(ex, error_log, x, seed, "plain", f"plain/{seed_kind}")


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("name", ALL)
def test_dynamic_batch(exported, error_log, name, n):
    """One exported model (batch axis "N"), one gradient graph, run at N=1 and N=4."""
    ex = exported(name)
    x = _inputs(ex, n, seed=10 + n)
    _compare(ex, error_log, x, _seeds(ex, n, "random", seed=10 + n), "plain", f"plain/N={n}")


# Guided backpropagation and deconvnet (Captum semantics) --------------------------------------


@pytest.mark.parametrize("seed_kind", ["random", "onehot"])
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
@pytest.mark.parametrize("name", RELU_MODELS)
def test_modified_relu_rules_match_captum_semantics(exported, error_log, name, rule, seed_kind):
    ex = exported(name)
    x = _inputs(ex, BATCH, seed=3)
    seed = _seeds(ex, BATCH, seed_kind, seed=3)
    _compare(ex, error_log, x, seed, rule, f"{rule}/{seed_kind}")
    # Not vacuous: the torch hooks (hence the rule) really change the input gradient.
    modified, plain = torch_reference(ex, x, seed, rule), torch_reference(ex, x, seed, "plain")
    assert rel_err(modified["input"], plain["input"]) > 1e-2


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
@pytest.mark.parametrize("name", RELU6_MODELS)
def test_relu6_rules_match_explaind_documented_semantics(exported, error_log, name, rule):
    """Not Captum (which leaves ReLU6 plain): explaind's own ReLU6 rule, hooks on nn.ReLU6 too.
    guided: relu(grad_out * [0 < x < 6]) = relu(grad_out) * [0 < x < 6]; deconvnet: relu(grad_out)."""
    ex = exported(name)
    x = _inputs(ex, BATCH, seed=5)
    seed = _seeds(ex, BATCH, "random", seed=5)
    _compare(ex, error_log, x, seed, rule, f"{rule}-relu6/random", hooked=(nn.ReLU, nn.ReLU6))
