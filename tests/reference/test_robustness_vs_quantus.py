"""The robustness metrics against Quantus 0.6 (MaxSensitivity, AvgSensitivity, LocalLipschitzEstimate,
RandomLogit) on the same torch models: Quantus on the torch twin with a torch explain_func, explaind
in process on the exported ONNX model with its own method (the same definition: input x gradient of
the logit for the tabular MLP, saliency |d logit / dx| with the max over channels for the ResNet).

- Exact: with Quantus's perturb_func replaced by one adding the very noise explaind drew (from the
  metric's seeded generator), max- and avg-sensitivity and the local Lipschitz estimate agree to 1e-4
  relative (float32 models, one on onnxruntime, one on torch; 1e-7 observed): the norms, the normalisation, the max
  and mean are Quantus's. RandomLogit's SSIM given the same two maps: equal to 1e-9.
- Statistical: with Quantus's own noise (its default batch_uniform_noise / batch_gaussian_noise on
  numpy's global generator), one Quantus call with nr_samples = 1 is one draw of the per-copy ratio
  s_i (sensitivity) or L_i (Lipschitz); N = 150 such calls against explaind's N per-copy values (its
  `sensitivities` / `lipschitz` curve, one request of nr_samples = N). Same expectation: |mean_Q -
  mean_X| <= 4 * sqrt(var_Q / N + var_X / N), a two-sided z-test at 4 standard errors (a false
  failure about 6e-5 when the two agree). It cannot pass by accident: the same check with explaind's
  noise 1.5 times larger (lower_bound 0.3; for the Lipschitz estimate, nearly scale-free, the maps
  unnormalised) is asserted to fail it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus
import torch

from explaind.evaluation.avg_sensitivity import AvgSensitivity
from explaind.evaluation.local_lipschitz import LocalLipschitz
from explaind.evaluation.max_sensitivity import MaxSensitivity
from explaind.evaluation.random_logit import RandomLogit, ssim
from explaind.evaluation.run import metric_rng
from explaind.methods.input_x_gradient import InputXGradient
from explaind.methods.saliency import Saliency
from inprocess import run_metric

pytestmark = pytest.mark.filterwarnings("ignore")
SEED = 3
N = 150      # draws per side of the statistical comparisons
Z = 4.0      # standard errors allowed


def torch_explain(kind: str):
    """Quantus explain_func: input x gradient (tabular) or saliency max over channels (images), of the logit."""
    def explain(model, inputs, targets, **kwargs):
        x = torch.from_numpy(np.asarray(inputs, np.float32)).requires_grad_(True)
        out = model(x)
        picked = out[torch.arange(len(x)), torch.as_tensor(np.asarray(targets), dtype=torch.long)]
        (grad,) = torch.autograd.grad(picked.sum(), x)
        grad = grad.double().numpy()
        if kind == "tabular":
            return grad * np.asarray(inputs, np.float64)
        return np.abs(grad).max(axis=1, keepdims=True)
    return explain


def setup(case, name):
    ex, x, xt, target = case(name)
    kind = "tabular" if name == "mlp" else "image"
    method = InputXGradient() if kind == "tabular" else Saliency()
    attribution = torch_explain(kind)(ex.torch_model, x[None], [target])[0]
    attribution = attribution if kind == "tabular" else attribution[0]
    return ex, x, target, kind, method, attribution


def explaind(xp, ex, metric, given, x, target, attribution, method, seed=SEED):
    served, view = ex.in_process
    outcome, _ = xp.loop.run_until_complete(run_metric(xp.engine, served, metric, given, x, target, attribution,
                                                       view=view, score="logit", seed=seed, method=method))
    return outcome


def quantus_call(metric, ex, x, target, kind, attribution):
    a = attribution[None] if kind == "tabular" else attribution[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(metric(model=ex.torch_model, x_batch=x[None], y_batch=np.array([target]), a_batch=a,
                            device="cpu", explain_func=torch_explain(kind), channel_first=True if kind == "image" else None)[0])


def replayed(noises):
    """A Quantus batch perturb_func adding the given noise arrays, one per call, as Quantus adds its own
    (float64 noise on the float32 input, stored back as float32)."""
    it = iter(noises)

    def perturb(arr, indices, **kwargs):
        noise = next(it).reshape(arr.shape)
        return (arr.astype(np.float64) + noise).astype(arr.dtype)
    return perturb


def drawn(name, n, shape, kind, scale, seed=SEED):
    rng = metric_rng(seed, 0, name)
    return [rng.uniform(-scale, scale, size=shape) if kind == "uniform" else rng.normal(0.0, scale, size=shape)
            for _ in range(n)]


EXACT = [
    ("max_sensitivity", MaxSensitivity, quantus.MaxSensitivity, {"lower_bound": 0.2}, "uniform", 0.2),
    ("avg_sensitivity", AvgSensitivity, quantus.AvgSensitivity, {"lower_bound": 0.2}, "uniform", 0.2),
    ("local_lipschitz", LocalLipschitz, quantus.LocalLipschitzEstimate, {"perturb_std": 0.1}, "gaussian", 0.1),
]


@pytest.mark.parametrize("name", ["mlp", "resnet"])
@pytest.mark.parametrize("metric_name,ours,theirs,kwargs,noise,scale", EXACT)
def test_same_noise_same_value(case, xp, name, metric_name, ours, theirs, kwargs, noise, scale):
    ex, x, target, kind, method, attribution = setup(case, name)
    n = 8
    got = explaind(xp, ex, ours(), {"nr_samples": n}, x, target, attribution, method)
    reference = quantus_call(theirs(nr_samples=n, perturb_func=replayed(drawn(metric_name, n, x.shape, noise, scale)),
                                    disable_warnings=True, **kwargs), ex, x, target, kind, attribution)
    assert reference > 1e-3, "a vacuous comparison: the maps did not move"
    print(f"\n{metric_name}/{name}: explaind {got.value.value:.6g}, Quantus {reference:.6g}, "
          f"relative difference {abs(got.value.value - reference) / reference:.1e}")
    assert got.value.value == pytest.approx(reference, rel=1e-5)


# The control that the bound must reject: 1.5 times the noise for the sensitivities; for the Lipschitz
# estimate (a ratio of changes, nearly the same at any small noise) the maps left unnormalised.
STATISTICAL = [
    ("max_sensitivity", MaxSensitivity, quantus.MaxSensitivity, "lower_bound", 0.2, "sensitivities",
     {"lower_bound": 0.3}),
    ("avg_sensitivity", AvgSensitivity, quantus.AvgSensitivity, "lower_bound", 0.2, "sensitivities",
     {"lower_bound": 0.3}),
    ("local_lipschitz", LocalLipschitz, quantus.LocalLipschitzEstimate, "perturb_std", 0.1, "lipschitz",
     {"normalise": False}),
]


def agree(a: np.ndarray, b: np.ndarray) -> tuple[bool, float]:
    gap = abs(a.mean() - b.mean())
    bound = Z * np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return bool(gap <= bound), gap / bound


@pytest.mark.parametrize("metric_name,ours,theirs,noise_param,scale,curve,control", STATISTICAL)
def test_same_expectation_with_quantus_noise(case, xp, metric_name, ours, theirs, noise_param, scale, curve, control):
    ex, x, target, kind, method, attribution = setup(case, "mlp")
    np.random.seed(0)
    metric = theirs(nr_samples=1, disable_warnings=True, **{noise_param: scale})
    reference = np.array([quantus_call(metric, ex, x, target, kind, attribution) for _ in range(N)])
    got = explaind(xp, ex, ours(), {"nr_samples": N, noise_param: scale}, x, target, attribution, method)
    values = got.value.curves[curve]
    ok, ratio = agree(values, reference)
    print(f"\n{metric_name}: explaind mean {values.mean():.5g}, Quantus {reference.mean():.5g}, gap {ratio:.2f} of the bound")
    assert ok, f"{metric_name}: explaind mean {values.mean():.4g}, Quantus {reference.mean():.4g} ({ratio:.2f} of the bound)"
    other = explaind(xp, ex, ours(), {"nr_samples": N, noise_param: scale, **control}, x, target, attribution, method)
    rejected, control_ratio = agree(other.value.curves[curve], reference)
    print(f"{metric_name} control {control}: {control_ratio:.2f} of the bound")
    assert not rejected, f"the bound cannot tell {control} apart"


@pytest.mark.parametrize("shape", [(16,), (32, 32), (5, 9)])
def test_random_logit_ssim_is_quantus_ssim(shape):
    rng = np.random.default_rng(sum(shape))
    a, b = rng.normal(size=shape), rng.normal(size=shape)
    a, b = a / np.abs(a).max(), b / np.abs(b).max()
    reference = quantus.similarity_func.ssim(a.reshape(1, -1), b.reshape(1, -1), batched=True)[0]
    assert ssim(a, b) == pytest.approx(reference, abs=1e-9)
    assert abs(reference) < 0.5  # unrelated maps: not the trivial 1


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_random_logit_is_quantus_ssim_of_the_two_maps(case, xp, name):
    """explaind's random_logit on the ONNX model, against Quantus's similarity (with its
    normalise_by_max) of the torch explanations for the target and for the class explaind drew."""
    ex, x, target, kind, method, attribution = setup(case, name)
    got = explaind(xp, ex, RandomLogit(), {}, x, target, attribution, method)
    other = int(got.value.figures["other_class"])
    assert other != target
    theirs = torch_explain(kind)(ex.torch_model, x[None], [other])
    a = quantus.normalise_func.normalise_by_max(attribution.reshape(1, -1))
    b = quantus.normalise_func.normalise_by_max(theirs.reshape(1, -1))
    reference = quantus.similarity_func.ssim(a, b, batched=True)[0]
    assert got.value.value == pytest.approx(reference, abs=1e-5)
