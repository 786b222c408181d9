"""The faithfulness metrics against Quantus 0.6 on the same models (small torch CNNs and the zoo's MLP,
exported to ONNX and served by explaind in process) and the same attributions.

Deterministic metrics are equal within 1e-6 (relative where values are large):
- pixel flipping: Quantus's PixelFlipping with features_in_step = C * k (the C equal channel values of a
  pixel's broadcast attribution go together) and the same baseline (black, mean);
- deletion: the same loop with Quantus's baseline 0.0 (explaind's zero substrate), the unperturbed
  score prepended; insertion: Quantus's PixelFlipping loop started from the blurred input, its
  replacement function revealing the input's values (Quantus has no insertion metric of its own);
- IROF: Quantus's IROF (SLIC on the same input, mean baseline), its area over the curve;
- infidelity: Quantus's Infidelity (patches of 4, black baseline, logits), deterministic in Quantus too;
- ROAD without noise: Quantus's ROAD curve (one-channel input: Quantus's ROAD only handles one channel)
  and, on three channels, explaind's scores against the torch model on Quantus's noisy_linear_imputation.

Sampled metrics agree in expectation: for K seeds each side at equal sample counts, the means of the K
figures differ by less than 4 standard errors of that difference, estimated from the observed spread
(sqrt(var_explaind / K + var_quantus / K)). If both sides estimate the same expectation the test fails
with probability about 6e-5 (normal approximation). It cannot pass by accident: the same test with
explaind's baseline changed (white for black) must fail it, and each test asserts that it does.
- faithfulness correlation vs FaithfulnessCorrelation (one-channel input, where Quantus's subsets of
  channel values are subsets of pixels, as explaind's);
- sensitivity-n at each n vs FaithfulnessCorrelation(subset_size=n) (Quantus's own SensitivityN
  correlates across a batch of inputs, a different figure: see evaluation/sensitivity_n.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch
from quantus.functions.perturb_func import noisy_linear_imputation
from scipy import ndimage
from torch import nn

import zoo
from explaind.evaluation.curves import blur_kernel
from explaind.evaluation.deletion import Deletion
from explaind.evaluation.faithfulness_correlation import FaithfulnessCorrelation
from explaind.evaluation.infidelity import Infidelity
from explaind.evaluation.insertion import Insertion
from explaind.evaluation.irof import Irof
from explaind.evaluation.pixel_flipping import PixelFlipping
from explaind.evaluation.road import Road
from explaind.evaluation.sensitivity_n import SensitivityN
from inprocess import InProcess, run_metric, served_onnx

SEEDS = 16
SIGMAS = 4.0


class SmallCNN(nn.Module):
    def __init__(self, channels: int, size: int, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * (size // 2) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def twin(channels: int, size: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    model = SmallCNN(channels, size).eval()
    with torch.no_grad():
        model.fc.weight.mul_(30.0)  # decisive scores, so that curves fall far (not a flat 1 / 4)
    model.input_shape = (channels, size, size)
    return model, served_onnx(f"cnn{channels}", zoo.export(model), model.input_shape)


_ENGINE: list[InProcess] = []


@pytest.fixture(scope="module", autouse=True)
def engine():
    """One engine for the module: each variant graph is built and compiled once per model."""
    _ENGINE.append(InProcess())
    yield
    _ENGINE.pop().close()


def evaluate(metric, given, model, x, target, attribution, **kwargs):
    ip = _ENGINE[-1]
    served, view = model
    return ip.loop.run_until_complete(run_metric(ip.engine, served, metric, given, x, target, attribution, view=view,
                                                 **kwargs))


@pytest.fixture(scope="module")
def rgb():
    # 12 x 12: Quantus wants features_in_step to divide H * W, and a multiple of 3 channels must.
    return twin(3, 12)


@pytest.fixture(scope="module")
def grey():
    return twin(1)


def blocks(rng: np.random.Generator, channels: int, size: int = 16) -> np.ndarray:
    """A smooth image (colour blocks and a little noise), so that SLIC finds many segments."""
    base = rng.uniform(0, 1, size=(channels, 4, 4))
    image = np.kron(base, np.ones((size // 4, size // 4))) + 0.02 * rng.normal(size=(channels, size, size))
    return image.astype(np.float32)


def target_of(model: nn.Module, x: np.ndarray) -> int:
    with torch.no_grad():
        return int(model(torch.from_numpy(x[None])).argmax())


def scores_of(model: nn.Module, images: np.ndarray, target: int, softmax: bool) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(np.asarray(images, np.float32)))
        return (torch.softmax(out, 1) if softmax else out)[:, target].double().numpy()


def close(a, b, tol: float = 1e-6) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    print(f"max |explaind - quantus| {np.abs(a - b).max():.2e} (values up to {np.abs(b).max():.3g})")
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


@pytest.fixture(autouse=True)
def trapz(monkeypatch):
    """Quantus 0.6 calls np.trapz, which numpy 2.4 removed (np.trapezoid is the same function)."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


# Deterministic ------------------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["black", "mean"])
def test_pixel_flipping_equals_quantus(rgb, baseline):
    model, served = rgb
    rng = np.random.default_rng(1)
    x, attribution = blocks(rng, 3, 12), rng.normal(size=(12, 12))
    target = target_of(model, x)
    ours, _ = evaluate(PixelFlipping(), {"features_in_step": 4, "baseline": baseline}, served, x, target, attribution)
    theirs = quantus.PixelFlipping(features_in_step=12, perturb_baseline=baseline, normalise=False,
                                   disable_warnings=True)(
        model=model, x_batch=x[None], y_batch=np.array([target]), a_batch=attribution[None, None], device="cpu")
    curve = np.asarray(theirs[0])
    assert len(curve) == 36
    close(ours.value.curves["scores"], curve)
    close(ours.value.value, np.trapezoid(curve))


def test_deletion_and_insertion_equal_quantus_loops(rgb):
    model, served = rgb
    rng = np.random.default_rng(2)
    x, attribution = blocks(rng, 3, 12), rng.normal(size=(12, 12))
    target = target_of(model, x)
    deletion, _ = evaluate(Deletion(), {"steps": 36, "substrate": "zero"}, served, x, target, attribution)
    theirs = quantus.PixelFlipping(features_in_step=12, perturb_baseline=0.0, normalise=False, disable_warnings=True)(
        model=model, x_batch=x[None], y_batch=np.array([target]), a_batch=attribution[None, None], device="cpu")
    curve = np.concatenate([scores_of(model, x[None], target, True), theirs[0]])
    close(deletion.value.curves["scores"], curve)
    close(deletion.value.value, np.trapezoid(curve, dx=1 / 36))

    blurred = np.stack([ndimage.convolve(c.astype(np.float64), blur_kernel(), mode="constant") for c in x])
    blurred = blurred.astype(np.float32)
    original = x.reshape(1, -1)

    def reveal(arr, indices, **kwargs):
        out = arr.copy()
        out[np.arange(len(arr))[:, None], indices] = original[np.zeros((len(arr), 1), int), indices]
        return out

    insertion, _ = evaluate(Insertion(), {"steps": 36}, served, x, target, attribution)
    theirs = quantus.PixelFlipping(features_in_step=12, perturb_func=reveal, normalise=False, disable_warnings=True)(
        model=model, x_batch=blurred[None], y_batch=np.array([target]), a_batch=attribution[None, None], device="cpu")
    curve = np.concatenate([scores_of(model, blurred[None], target, True), theirs[0]])
    close(insertion.value.curves["scores"], curve)
    close(insertion.value.value, np.trapezoid(curve, dx=1 / 36))


@pytest.mark.parametrize("seed", [3, 4])
def test_irof_equals_quantus(grey, seed):
    # One channel: Quantus's IROF masks [N, 1, H, W] and its replacement asserts the input's shape.
    model, served = grey
    rng = np.random.default_rng(seed)
    x, attribution = blocks(rng, 1), rng.normal(size=(16, 16))
    target = target_of(model, x)
    ours, _ = evaluate(Irof(), {}, served, x, target, attribution)
    assert ours.value.figures["segment_count"] > 5
    theirs = quantus.IROF(normalise=False, return_aggregate=False, disable_warnings=True)(
        model=model, x_batch=x[None], y_batch=np.array([target]), a_batch=attribution[None, None], device="cpu")
    close(ours.value.value, theirs[0])


def test_infidelity_equals_quantus(rgb):
    model, served = rgb
    rng = np.random.default_rng(5)
    x, attribution = blocks(rng, 3, 12), rng.normal(size=(12, 12))
    target = target_of(model, x)
    ours, _ = evaluate(Infidelity(), {}, served, x, target, attribution, score="logit")
    assert ours.stats.model_evaluations == 9
    theirs = quantus.Infidelity(perturb_patch_sizes=[4], n_perturb_samples=1, disable_warnings=True)(
        model=model, x_batch=x[None], y_batch=np.array([target]), a_batch=attribution[None, None], device="cpu")
    close(ours.value.value, theirs[0])


def test_road_without_noise_equals_quantus(grey, rgb):
    percentages = [5.0, 20.0, 40.0, 60.0, 80.0, 95.0]
    model, served = grey
    rng = np.random.default_rng(6)
    x, attribution = blocks(rng, 1), rng.normal(size=(16, 16))
    target = target_of(model, x)
    ours, _ = evaluate(Road(), {"percentages": percentages, "noise": 0.0}, served, x, target, attribution)
    theirs = quantus.ROAD(percentages=percentages, noise=0.0, normalise=False, disable_warnings=True)(
        model=model, x_batch=x[None], y_batch=np.array([target]), a_batch=attribution[None, None], device="cpu")
    np.testing.assert_array_equal(ours.value.curves["kept"], [theirs[p] for p in percentages])
    # Three channels: explaind's imputed rows score as Quantus's imputation of the same pixels.
    model, served = rgb
    x, attribution = blocks(rng, 3, 12), rng.normal(size=(12, 12))
    target = target_of(model, x)
    ours, _ = evaluate(Road(), {"percentages": percentages, "noise": 0.0}, served, x, target, attribution)
    order = np.argsort(-attribution.reshape(-1), kind="stable")
    images = [noisy_linear_imputation(x.astype(np.float64), order[:int(144 * p / 100)], noise=0.0) for p in percentages]
    close(ours.value.curves["scores"], scores_of(model, np.stack(images), target, True))


# Sampled ------------------------------------------------------------------------------------------


def agree(ours: list[float], theirs: list[float]) -> tuple[float, float]:
    """(|difference of the means|, SIGMAS standard errors of it)."""
    ours_a, theirs_a = np.asarray(ours), np.asarray(theirs)
    gap = abs(ours_a.mean() - theirs_a.mean())
    bound = SIGMAS * np.sqrt(ours_a.var(ddof=1) / len(ours_a) + theirs_a.var(ddof=1) / len(theirs_a))
    return float(gap), float(bound)


def occlusion(model: nn.Module, x: np.ndarray, target: int) -> np.ndarray:
    """Each pixel's own logit drop when set to the input's minimum: a map close to faithful, so the
    correlations are high and their spread small (a sharp test)."""
    images = np.repeat(x[None], x[0].size, axis=0)
    images.reshape(len(images), -1)[np.arange(len(images)), np.arange(len(images))] = x.min()
    return (scores_of(model, x[None], target, False)[0] - scores_of(model, images, target, False)).reshape(x.shape[1:])


def quantus_fc(model, x, target, attribution, runs, size, seed, softmax):
    np.random.seed(seed)
    metric = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, perturb_baseline="black",
                                             normalise=False, return_aggregate=False, disable_warnings=True)
    return float(metric(model=model, x_batch=x[None], y_batch=np.array([target]), a_batch=attribution[None, None],
                        device="cpu", softmax=softmax)[0])


def test_faithfulness_correlation_agrees_with_quantus_in_expectation(grey):
    model, served = grey
    rng = np.random.default_rng(7)
    x = blocks(rng, 1)
    target = target_of(model, x)
    attribution = occlusion(model, x, target)
    runs, size = 50, 32
    ours = [evaluate(FaithfulnessCorrelation(), {"nr_runs": runs, "subset_size": size}, served, x, target,
                     attribution, score="logit", seed=s)[0].value.value for s in range(SEEDS)]
    theirs = [quantus_fc(model, x, target, attribution, runs, size, s, False) for s in range(SEEDS)]
    gap, bound = agree(ours, theirs)
    print(f"faithfulness_correlation: explaind {np.mean(ours):.4f}, quantus {np.mean(theirs):.4f}, "
          f"gap {gap:.4f} < bound {bound:.4f}")
    assert gap < bound
    white = [evaluate(FaithfulnessCorrelation(), {"nr_runs": runs, "subset_size": size, "baseline": "white"}, served,
                      x, target, attribution, score="logit", seed=s)[0].value.value for s in range(SEEDS)]
    control_gap, control_bound = agree(white, theirs)
    assert control_gap > control_bound, "the bound must be able to reject a different expectation"


def test_sensitivity_n_agrees_with_quantus_faithfulness_correlation_per_n(grey):
    model, served = grey
    rng = np.random.default_rng(8)
    x = blocks(rng, 1)
    target = target_of(model, x)
    attribution = occlusion(model, x, target)
    params = {"steps": 3, "nr_samples": 40, "n_max_percentage": 0.15}
    runs = [evaluate(SensitivityN(), params, served, x, target, attribution, score="logit", seed=s)[0]
            for s in range(SEEDS)]
    sizes = runs[0].value.curves["subset_sizes"].astype(int)
    np.testing.assert_array_equal(sizes, [13, 26, 38])  # round(k / 3 * 0.15 * 256)
    theirs_first: list[float] = []
    for i, n in enumerate(sizes):
        ours = [r.value.curves["correlations"][i] for r in runs]
        theirs = [quantus_fc(model, x, target, attribution, 40, int(n), s, False) for s in range(SEEDS)]
        theirs_first = theirs_first or theirs
        gap, bound = agree(ours, theirs)
        print(f"sensitivity_n n={n}: explaind {np.mean(ours):.4f}, quantus {np.mean(theirs):.4f}, "
              f"gap {gap:.4f} < bound {bound:.4f}")
        assert gap < bound
    white = [evaluate(SensitivityN(), {**params, "baseline": "white"}, served, x, target, attribution, score="logit",
                      seed=s)[0].value.curves["correlations"][0] for s in range(SEEDS)]
    control_gap, control_bound = agree(white, theirs_first)
    assert control_gap > control_bound, "the bound must be able to reject a different expectation"


def test_tabular_pixel_flipping_equals_quantus():
    model = zoo.mlp()
    served = served_onnx("mlp", zoo.export(model), (16,))
    rng = np.random.default_rng(9)
    x, attribution = rng.normal(size=16).astype(np.float32), rng.normal(size=16)
    target = target_of(model, x)
    # Quantus's PixelFlipping checks features_in_step against the input's "image" size, which for a
    # 1-d input is 1: only one feature a step passes.
    ours, _ = evaluate(PixelFlipping(), {"features_in_step": 1}, served, x, target, attribution)
    theirs = quantus.PixelFlipping(features_in_step=1, perturb_baseline="black", normalise=False,
                                   disable_warnings=True)(
        model=model, x_batch=x[None], y_batch=np.array([target]), a_batch=attribution[None], device="cpu")
    close(ours.value.curves["scores"], theirs[0])
