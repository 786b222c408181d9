"""explaind's white-box methods against the libraries users trust, on the same torch models.

explaind runs through the real engine in-process (Engine, ServedModel, ModelView with a WhiteBox,
method.resolve + method.explain) on the zoo's exported ONNX model (float32, onnxruntime CPU, its
gradients derived from the ONNX graph); the references run on the torch model the ONNX was
exported from. Score: the logit of a fixed target class per model. Inputs: standard normal.
Relative error = max|explaind - reference| / max|reference|, tolerance 1e-3 (see _methods.rel_err).

What is compared, and the conventions chosen to make both sides compute the same thing:
- Captum Saliency(abs=True) vs saliency postprocess=absolute, channel_reduction=none;
  Saliency(abs=False) vs postprocess=raw (per channel).                  resnet, vgg, mlp
- Captum InputXGradient vs input_x_gradient (per channel).               resnet, vgg, mlp
- Captum IntegratedGradients (baseline 0, same n_steps, same method: gausslegendre,
  riemann_trapezoid, riemann_left/right/middle) vs integrated_gradients (per channel); explaind's
  completeness gap (extras["completeness_gap"]) vs sum(attr) - (f(x) - f(0)) computed with torch,
  and vs Captum's convergence delta (the same quantity for Captum's attribution). resnet, vgg, mlp
  riemann_trapezoid uses Captum's own weights (1/n, ends halved, summing to (n - 1)/n).
- Captum GuidedBackprop / Deconvolution vs guided_backprop / deconvnet.   resnet, vgg
  Captum modifies the backward pass of nn.ReLU modules only; explaind also modifies ReLU6
  (ONNX Clip(0, 6)). ResNet- and VGG-style use nn.ReLU only (one module per call), so both
  apply the rule to the same nodes; MobileNetV2-style (ReLU6) would differ by convention, not by
  a bug, and is not used here (test_autodiff_vs_autograd checks explaind's ReLU6 rule).
- Captum LayerGradCam(relu_attributions=True) on the zoo's Grad-CAM layer, then
  LayerAttribution.interpolate(..., (32, 32), "bilinear") vs grad_cam (default bilinear); also the
  un-upsampled map vs grad_cam upsample="none".                          resnet, vgg
- Captum GuidedGradCam (default interpolate_mode "nearest") vs guided_grad_cam.  resnet, vgg
- pytorch-grad-cam GradCAMPlusPlus vs grad_cam_plus_plus.                resnet, vgg
  pytorch-grad-cam min-max scales each cam and resizes it with cv2 (INTER_LINEAR), then scales
  again after averaging the layers; explaind returns the un-scaled map. Two comparisons:
  (1) the un-scaled cams at layer resolution: ReLU(get_cam_image(...)) of the library, on the
      activations and gradients it captured, vs explaind with upsample="none";
  (2) the library's final output vs explaind's upsample="none" map put through the library's own
      scale_cam_image(·, (W, H)) then scale_cam_image(·) (what compute_cam_per_layer and
      aggregate_multi_layers do for one layer). Both scaled maps have max 1, so the relative error
      is the largest absolute difference.
  torchvision: see _methods._torchvision_stub (the registry's torchvision wheels are CUDA builds
  that cannot be imported with torch 2.13.0+cpu; GradCAMPlusPlus never calls torchvision).
- SmoothGrad with the same noise: explaind draws its per-sample seeds from the request generator
  and makes the noise in the graph; gaussian_noise_reference reproduces it, and the reference is
  the mean of torch autograd gradients at x + sigma * noise_i, sigma = noise_level * (max x - min x).
  resnet, vgg, mlp; the seed is one whose noisy copies sit at no ReLU kink where torch and
  onnxruntime round to different masks (checked, see the test). Also Captum NoiseTunnel(Saliency)
  statistically (its own torch noise): the normalised squared difference of the two Monte-Carlo
  means is ~1 (chi-square / k). resnet, vgg.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import pytest
import torch
from captum.attr import (Deconvolution, GuidedBackprop, GuidedGradCam, InputXGradient, IntegratedGradients,
                         LayerAttribution, LayerGradCam, NoiseTunnel, Saliency)
from captum.attr._utils.approximation_methods import approximation_parameters

import zoo
from _methods import Explaind, import_pytorch_grad_cam, rel_err, relu_mask_flips
from explaind.methods.deconvnet import Deconvnet as XDeconvnet
from explaind.methods.grad_cam import GradCam as XGradCam
from explaind.methods.grad_cam_plus_plus import GradCamPlusPlus as XGradCamPlusPlus
from explaind.methods.guided_backprop import GuidedBackprop as XGuidedBackprop
from explaind.methods.guided_grad_cam import GuidedGradCam as XGuidedGradCam
from explaind.methods.input_x_gradient import InputXGradient as XInputXGradient
from explaind.methods.integrated_gradients import IntegratedGradients as XIntegratedGradients
from explaind.methods.integrated_gradients import quadrature
from explaind.methods.saliency import Saliency as XSaliency
from explaind.methods.smooth_grad import SmoothGrad as XSmoothGrad
from explaind.onnxgraph.noise import gaussian_noise_reference

# Captum's notices ("Input Tensor 0 did not already require gradients", "Setting backward hooks on ReLU").
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")

TOL = 1e-3
IMAGE = ["resnet", "vgg"]
ALL = ["resnet", "vgg", "mlp"]
TARGET = {"resnet": 3, "vgg": 2, "mlp": 1}  # a fixed class per model (hence per input)
IG_STEPS = 16
IG_METHODS = ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"]
# Captum's riemann_trapezoid takes step sizes 1/n with both ends halved (they sum to (n - 1)/n);
# explaind uses the same weights, so every method compares directly.


# Fixtures -------------------------------------------------------------------------------------


class _Summary:
    """Prints the largest relative error per (method, model) at the end of the run."""

    def __init__(self) -> None:
        self.errors: dict[str, dict[str, float]] = defaultdict(dict)
        self.started = time.perf_counter()
        self.elapsed = 0.0

    def record(self, check: str, model: str, value: float) -> None:
        self.errors[check][model] = max(value, self.errors[check].get(model, 0.0))

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.errors:
            return
        terminalreporter.section("explaind vs Captum / pytorch-grad-cam / torch: max relative error")
        for check in self.errors:
            detail = "  ".join(f"{m}={v:.1e}" for m, v in self.errors[check].items())
            terminalreporter.write_line(f"{check:34s} {detail}")
        terminalreporter.write_line(f"(module time {self.elapsed:.1f} s)")


@pytest.fixture(scope="module")
def summary(request):
    s = _Summary()
    request.config.pluginmanager.register(s, "explaind-captum-agreement-summary")
    yield s
    s.elapsed = time.perf_counter() - s.started


@pytest.fixture(scope="module")
def xp():
    e = Explaind(threads=2)
    yield e
    e.close()


@pytest.fixture
def case(exported, xp, summary):
    """case(name) -> (Exported, x [no batch dim], x as a [1, ...] tensor, target)."""

    def get(name: str):
        ex = exported(name)
        x = np.random.default_rng(100 + list(TARGET).index(name)).standard_normal(
            ex.torch_model.input_shape).astype(np.float32)
        return ex, x, torch.from_numpy(x[None].copy()), TARGET[name]

    return get


def check(summary: _Summary, name: str, model: str, actual: np.ndarray, expected: np.ndarray,
          tol: float = TOL) -> float:
    err = rel_err(actual, expected)
    summary.record(name, model, err)
    assert np.max(np.abs(expected)) > 0, f"{name}/{model}: the reference is all zeros (a vacuous comparison)"
    assert err <= tol, f"{name}/{model}: relative error {err:.2e} > {tol:.0e}"
    return err


def logits(ex, xs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return ex.torch_model(torch.from_numpy(np.ascontiguousarray(xs, np.float32))).double().numpy()


# Gradient methods -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("absolute", [True, False], ids=["abs", "raw"])
def test_saliency(case, xp, summary, name, absolute):
    ex, x, xt, target = case(name)
    ref = Saliency(ex.torch_model).attribute(xt, target=target, abs=absolute)[0].detach().numpy()
    got, params = xp.explain(XSaliency(), {"postprocess": "absolute" if absolute else "raw",
                                           "channel_reduction": "none"}, ex, x, target)
    assert got.attribution.shape == x.shape and got.model_evaluations == 1 + 1  # the prediction, the gradient
    check(summary, f"Saliency(abs={absolute})", name, got.attribution, ref)


@pytest.mark.parametrize("name", ALL)
def test_input_x_gradient(case, xp, summary, name):
    ex, x, xt, target = case(name)
    ref = InputXGradient(ex.torch_model).attribute(xt, target=target)[0].detach().numpy()
    got, params = xp.explain(XInputXGradient(), {}, ex, x, target)
    assert params.get("channel_reduction", "none") == "none"
    check(summary, "InputXGradient", name, got.attribution, ref)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("method", IG_METHODS)
def test_integrated_gradients_and_completeness_gap(case, xp, summary, name, method):
    ex, x, xt, target = case(name)
    ig = IntegratedGradients(ex.torch_model)
    ref, delta = ig.attribute(xt, baselines=0.0, target=target, n_steps=IG_STEPS, method=method,
                              return_convergence_delta=True)
    ref, delta = ref[0].detach().numpy().astype(np.float64), float(delta[0])
    # Same nodes and weights as Captum's.
    captum_steps, captum_alphas = approximation_parameters(method)
    alphas, steps = quadrature(method, IG_STEPS)
    np.testing.assert_allclose(alphas, captum_alphas(IG_STEPS), atol=1e-7)
    np.testing.assert_allclose(steps, np.asarray(captum_steps(IG_STEPS)), rtol=1e-7)
    got, params = xp.explain(XIntegratedGradients(), {"n_steps": IG_STEPS, "method": method, "baseline": 0.0},
                             ex, x, target)
    assert params.get("channel_reduction", "none") == "none" and got.model_evaluations == 1 + IG_STEPS + 2  # prediction, nodes, f(x), f(0)
    check(summary, f"IntegratedGradients({method})", name, got.attribution, ref)

    # Completeness gap: sum(attr) - (f(x) - f(0)), f the torch model's target logit.
    f_x, f_0 = logits(ex, np.stack([x, np.zeros_like(x)]))[:, target]
    extras = got.figures
    scale = max(abs(f_x - f_0), abs(f_x), abs(f_0))
    assert extras["f_input"] == pytest.approx(f_x, rel=1e-4, abs=1e-5 * scale)
    assert extras["f_baseline"] == pytest.approx(f_0, rel=1e-4, abs=1e-5 * scale)
    torch_gap = float(np.asarray(got.attribution, np.float64).sum()) - (f_x - f_0)
    gap_err = abs(extras["completeness_gap"] - torch_gap) / scale
    summary.record("IG completeness gap (vs torch f)", name, gap_err)
    assert gap_err <= 1e-4, (extras, torch_gap)
    # ... and Captum's convergence delta is the same quantity for Captum's attribution: they agree to
    # the attributions' agreement (a sum of 3072 of them), relative to the total attribution f(x) - f(0).
    delta_err = abs(extras["completeness_gap"] - delta) / scale
    summary.record("IG completeness gap (vs Captum delta)", name, delta_err)
    assert delta_err <= TOL, (extras["completeness_gap"], delta)


def test_riemann_trapezoid_weights_are_captums(case, xp):
    ex, x, xt, target = case("mlp")
    ref = IntegratedGradients(ex.torch_model).attribute(xt, baselines=0.0, target=target, n_steps=IG_STEPS,
                                                        method="riemann_trapezoid")[0].detach().numpy()
    got, _ = xp.explain(XIntegratedGradients(), {"n_steps": IG_STEPS, "method": "riemann_trapezoid"}, ex, x, target)
    assert rel_err(got.attribution, ref) <= TOL, rel_err(got.attribution, ref)


@pytest.mark.parametrize("name", IMAGE)
@pytest.mark.parametrize("rule", ["guided_backprop", "deconvnet"])
def test_guided_backprop_and_deconvolution(case, xp, summary, name, rule):
    """ResNet- and VGG-style have only nn.ReLU activations: Captum's hooks and explaind's modified
    Relu rule see the same nodes (see the module docstring on ReLU6)."""
    ex, x, xt, target = case(name)
    assert not ex.entry.has_relu6
    library, ours = (GuidedBackprop, XGuidedBackprop()) if rule == "guided_backprop" else (Deconvolution, XDeconvnet())
    ref = library(ex.torch_model).attribute(xt, target=target)[0].detach().numpy()
    got, params = xp.explain(ours, {}, ex, x, target)
    assert params.get("channel_reduction", "none") == "none"
    check(summary, library.__name__, name, got.attribution, ref)


# Layer methods --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGE)
def test_grad_cam(case, xp, summary, name):
    ex, x, xt, target = case(name)
    assert zoo.module_of_node(zoo.producer_of(ex.onnx_model, ex.layer)) == ex.entry.layer_module  # same tensor
    layer = ex.torch_model.get_submodule(ex.entry.layer_module)
    raw = LayerGradCam(ex.torch_model, layer).attribute(xt, target=target, relu_attributions=True)
    ref = LayerAttribution.interpolate(raw, tuple(x.shape[1:]), "bilinear")[0, 0].detach().numpy()
    got, params = xp.explain(XGradCam(), {"layer": ex.layer}, ex, x, target)
    assert params["upsample"] == "bilinear" and params["relu"] is True
    check(summary, "LayerGradCam+interpolate(bilinear)", name, got.attribution, ref)
    small, _ = xp.explain(XGradCam(), {"layer": ex.layer, "upsample": "none"}, ex, x, target)
    check(summary, "LayerGradCam (layer resolution)", name, small.attribution, raw[0, 0].detach().numpy())


@pytest.mark.parametrize("name", IMAGE)
def test_guided_grad_cam(case, xp, summary, name):
    ex, x, xt, target = case(name)
    layer = ex.torch_model.get_submodule(ex.entry.layer_module)
    ref = GuidedGradCam(ex.torch_model, layer).attribute(xt, target=target)[0].detach().numpy()  # "nearest"
    got, params = xp.explain(XGuidedGradCam(), {"layer": ex.layer}, ex, x, target)
    assert params["upsample"] == "nearest" and params.get("channel_reduction", "none") == "none"
    check(summary, "GuidedGradCam(nearest)", name, got.attribution, ref)


@pytest.mark.parametrize("name", IMAGE)
def test_grad_cam_plus_plus(case, xp, summary, name):
    gc = import_pytorch_grad_cam()
    ex, x, xt, target = case(name)
    layer = ex.torch_model.get_submodule(ex.entry.layer_module)
    targets = [gc.ClassifierOutputTarget(target)]
    with gc.GradCAMPlusPlus(model=ex.torch_model, target_layers=[layer]) as cam:
        final = cam(input_tensor=xt, targets=targets)  # [1, H, W], min-max scaled, cv2-resized, scaled
        activations = cam.activations_and_grads.activations[0].numpy()
        gradients = cam.activations_and_grads.gradients[0].numpy()
        unscaled = np.maximum(cam.get_cam_image(xt, layer, targets, activations, gradients), 0)  # [1, h, w]
    ex.torch_model.zero_grad(set_to_none=True)  # pytorch-grad-cam calls loss.backward()
    got, params = xp.explain(XGradCamPlusPlus(), {"layer": ex.layer, "upsample": "none"}, ex, x, target)
    assert params["relu"] is True
    # (1) un-scaled cams at layer resolution
    check(summary, "GradCAMPlusPlus (layer resolution)", name, got.attribution, unscaled[0])
    # (2) the library's output vs explaind's map through the library's scaling and cv2 resize
    width_height = (x.shape[2], x.shape[1])
    ours = gc.scale_cam_image(gc.scale_cam_image(np.float32(got.attribution)[None], width_height))
    check(summary, "GradCAMPlusPlus (scaled, cv2 resize)", name, ours[0], final[0])


# SmoothGrad -----------------------------------------------------------------------------------


def torch_gradients(ex, xs: np.ndarray, target: int) -> np.ndarray:
    """d logit_target / d x for each row of `xs`, by torch autograd (float32)."""
    xt = torch.from_numpy(np.ascontiguousarray(xs, np.float32)).requires_grad_(True)
    (grad,) = torch.autograd.grad(ex.torch_model(xt)[:, target].sum(), xt)
    return grad.numpy()


def smooth_grad_noise(x: np.ndarray, n: int, seed: int, noise_level: float) -> tuple[np.ndarray, float]:
    """explaind's noisy copies: per-sample seeds from the request generator (smooth_grad.py), the
    noise as the graph makes it (gaussian_noise_reference), sigma = noise_level * (max - min)."""
    seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=n, dtype=np.int64)
    noise = gaussian_noise_reference(seeds, x.size).reshape(n, *x.shape)
    sigma = noise_level * float(x.max() - x.min())
    return x[None] + np.float32(sigma) * noise, sigma


SMOOTH_GRAD_SEEDS = range(7, 17)


@pytest.mark.parametrize("name", ALL)
def test_smooth_grad_with_the_same_noise(case, xp, summary, name):
    """The request seed is the first of SMOOTH_GRAD_SEEDS for which no noisy copy puts a ReLU
    pre-activation within float32 rounding of 0 in one framework and not the other (relu_mask_flips):
    there, torch's and onnxruntime's rounding pick different ReLU masks and that copy's gradient
    differs by a whole unit's contribution. Seen with seed 7 on the ResNet-style model: copy 22,
    /block2/relu2/Relu, z = +7.5e-8 in torch and 0.0 in onnxruntime (layer scale ~2), that copy's
    gradient off by 2.9e-2 and the mean over 24 copies by 1.6e-3. explaind's saliency on that same
    float32 copy is off from torch's gradient by the same 2.9e-2 (its other 23 copies by < 1e-6): the
    kink, not SmoothGrad."""
    ex, x, xt, target = case(name)
    n, level = 24, 0.15
    for seed in SMOOTH_GRAD_SEEDS:
        noisy, _ = smooth_grad_noise(x, n, seed, level)
        flips = relu_mask_flips(ex, noisy)
        assert all(abs(z_torch) < 1e-5 and abs(z_ort) < 1e-5 for _, _, z_torch, z_ort in flips), flips
        if not flips:
            break
    else:
        pytest.fail(f"every seed in {SMOOTH_GRAD_SEEDS} puts a noisy copy at a ReLU kink")
    ref = torch_gradients(ex, noisy, target).astype(np.float64).mean(axis=0)
    got, params = xp.explain(XSmoothGrad(), {"num_samples": n, "noise_level": level}, ex, x, target, seed=seed)
    assert params["postprocess"] == "raw" and got.model_evaluations == 1 + n
    check(summary, "SmoothGrad (same noise, torch)", name, got.attribution, ref)
    plain = torch_gradients(ex, x[None], target)[0]
    assert rel_err(got.attribution, plain) > 10 * TOL  # the noise was really there


@pytest.mark.parametrize("name", IMAGE)
def test_smooth_grad_matches_captum_noise_tunnel_statistically(case, xp, summary, name):
    """Captum NoiseTunnel(Saliency, "smoothgrad") with stdevs = explaind's sigma draws its own noise
    (torch's generator), so the two maps are independent Monte-Carlo means of the same expectation.
    With s_j^2 the per-element variance of the per-copy gradients (torch, on explaind's noise),
    T = mean_j (a_j - b_j)^2 / (s_j^2 (1/n + 1/n)) is ~1 when both sample the same distribution
    (3072 correlated elements: 0.99-1.05 over seeds here). Captum with sigma * 0.8 or * 1.25 gives
    1.2-1.5 on the ResNet-style model, so a wrong sigma shows. Not on the MLP: 16 elements make T
    too noisy (chi-square with 16 degrees of freedom / 16)."""
    ex, x, xt, target = case(name)
    n, level, seed = 64, 0.15, 11
    noisy, sigma = smooth_grad_noise(x, n, seed, level)
    per_copy = torch_gradients(ex, noisy, target).astype(np.float64)
    got, _ = xp.explain(XSmoothGrad(), {"num_samples": n, "noise_level": level}, ex, x, target, seed=seed)
    torch.manual_seed(seed)
    captum = NoiseTunnel(Saliency(ex.torch_model)).attribute(xt, nt_type="smoothgrad", nt_samples=n,
                                                             stdevs=sigma, target=target, abs=False)
    captum = captum[0].detach().numpy().astype(np.float64)
    variance = per_copy.var(axis=0, ddof=1) * (2.0 / n)
    keep = variance > 1e-12 * variance.max()
    statistic = float(np.mean((got.attribution - captum)[keep] ** 2 / variance[keep]))
    summary.record("NoiseTunnel: T (~1; not rel. err)", name, statistic)
    assert 0.8 < statistic < 1.25, statistic
