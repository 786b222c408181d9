"""DeepLIFT and DeepLIFT SHAP against Captum's DeepLift and DeepLiftShap on the same torch models (see
_methods.py for the setup; explaind through the engine in process, onnxruntime on the exported graph).

- Captum DeepLift (baseline 0 and 0.25) vs deep_lift, per channel, and the convergence delta:
  resnet, densenet, senet (residual and concatenating nets, a squeeze-excitation gate), mlp, and a
  max-pooling net whose pools follow convolutions.
- Captum DeepLiftShap (a background of 12 rows) vs deep_lift_shap: mlp (tabular; the background is
  the model's, which only tabular models have).
Not compared, by convention rather than by a bug: mobilenetv2 (Captum takes the gradient at ReLU6,
not in its list of nonlinearities; explaind rescales every element-wise nonlinearity), and the
zoo's VGG, where a ReLU feeds a MaxPool directly: Captum's hooks on two adjacent nonlinear modules
do not compose (its own convergence delta is then far from 0, asserted below), so there explaind is
checked for summation-to-delta instead.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from captum.attr import DeepLift, DeepLiftShap
from torch import nn

import zoo
from _methods import check, logits
from explaind.methods.deep_lift import DeepLift as XDeepLift
from explaind.methods.deep_lift_shap import DeepLiftShap as XDeepLiftShap
from inprocess import served_onnx

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")

MODELS = ["resnet", "densenet", "senet", "mlp"]
TARGETS = {"resnet": 3, "densenet": 1, "senet": 5, "mlp": 1, "pooled": 2, "vgg": 2}


class PooledNet(nn.Module):
    """Conv -> MaxPool -> Conv -> ReLU -> Conv -> MaxPool -> Conv -> ReLU -> Linear: every pool follows
    a convolution (no nonlinear module beside another). Windows do not overlap: Captum routes with
    max_unpool, which keeps one of several contributions to a shared argmax (explaind sums them)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.pool1 = nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(8, 12, 3, padding=1), nn.ReLU()
        self.conv3, self.pool3 = nn.Conv2d(12, 12, 1), nn.MaxPool2d(2)
        self.conv4, self.relu4 = nn.Conv2d(12, 10, 3), nn.ReLU()
        self.fc = nn.Linear(10 * 6 * 6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.relu2(self.conv2(self.pool1(self.conv1(x)))))
        return self.fc(torch.flatten(self.relu4(self.conv4(self.pool3(x))), 1))


@pytest.fixture(scope="module")
def pooled():
    torch.manual_seed(7)
    model = PooledNet().eval()
    model.input_shape = (3, 32, 32)
    return model, zoo.export(model)


def example(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def compare(xp, summary, name, torch_model, onnx_model, baseline: float, served=None):
    served = served or served_onnx(name, onnx_model, torch_model.input_shape)
    x = example(torch_model.input_shape, 40 + len(name))
    target = TARGETS[name]
    xt = torch.from_numpy(x[None].copy())
    ref, delta = DeepLift(torch_model).attribute(xt, baselines=baseline, target=target, return_convergence_delta=True)
    got, params = xp.explain(XDeepLift(), {"baseline": baseline}, served, x, target)
    assert params["baseline"] == baseline and params.get("channel_reduction", "none") == "none"
    check(summary, f"DeepLift(baseline={baseline})", name, got.attribution, ref[0].detach().numpy())
    scale = max(abs(got.figures["f_input"]), abs(got.figures["f_baseline"]), 1.0)
    assert abs(got.figures["convergence_delta"]) < 1e-4 * scale
    assert abs(float(delta[0])) < 1e-3 * scale  # Captum agrees that these nets sum to delta
    with torch.no_grad():
        f = torch_model(torch.from_numpy(np.stack([x, np.full_like(x, baseline)]))).double().numpy()[:, target]
    assert got.figures["f_input"] == pytest.approx(f[0], rel=1e-4, abs=1e-5)
    assert got.figures["f_baseline"] == pytest.approx(f[1], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("baseline", [0.0, 0.25])
@pytest.mark.parametrize("name", MODELS)
def test_deep_lift_agrees_with_captum(exported, xp, summary, name, baseline):
    ex = exported(name)
    compare(xp, summary, name, ex.torch_model, ex.onnx_model, baseline)


@pytest.mark.parametrize("baseline", [0.0, 0.25])
def test_deep_lift_max_pool_rule_agrees_with_captum(pooled, xp, summary, baseline):
    torch_model, onnx_model = pooled
    assert {n.op_type for n in onnx_model.graph.node} >= {"MaxPool", "Relu", "Conv", "Gemm"}
    compare(xp, summary, "pooled", torch_model, onnx_model, baseline)


def test_deep_lift_sums_to_delta_where_captum_does_not(exported, xp):
    """The zoo's VGG (ReLU then MaxPool): explaind's attribution sums to f(x) - f(x0); Captum's
    convergence delta is far from 0 there (hooks on adjacent nonlinear modules)."""
    ex = exported("vgg")
    x = example(ex.torch_model.input_shape, 9)
    got, _ = xp.explain(XDeepLift(), {}, ex.in_process, x, TARGETS["vgg"])
    f_gap = got.figures["f_input"] - got.figures["f_baseline"]
    assert abs(f_gap) > 1e-3
    assert got.attribution.sum() == pytest.approx(f_gap, rel=1e-4, abs=1e-5)
    _, delta = DeepLift(ex.torch_model).attribute(torch.from_numpy(x[None].copy()), target=TARGETS["vgg"],
                                                  return_convergence_delta=True)
    assert abs(float(delta[0])) > 1e-3 * max(abs(f_gap), 1e-3)


def test_deep_lift_shap_agrees_with_captum(exported, xp, summary):
    ex = exported("mlp")
    background = np.random.default_rng(5).standard_normal((12, *ex.torch_model.input_shape)).astype(np.float32)
    served, view = served_onnx("mlp", ex.onnx_model, ex.torch_model.input_shape)
    view = dataclasses.replace(view, background=background)
    for seed, target in [(1, 1), (2, 4)]:
        x = example(ex.torch_model.input_shape, seed)
        ref = DeepLiftShap(ex.torch_model).attribute(torch.from_numpy(x[None].copy()),
                                                      baselines=torch.from_numpy(background), target=target)
        got, params = xp.explain(XDeepLiftShap(), {}, (served, view), x, target)
        assert params == {}
        check(summary, "DeepLiftShap", "mlp", got.attribution, ref[0].detach().numpy())
        assert got.model_evaluations == 1 + len(background)
        f = logits(ex, np.concatenate([x[None], background]))[:, target]
        assert got.figures["f_baseline"] == pytest.approx(f[1:].mean(), rel=1e-4, abs=1e-5)
        assert abs(got.figures["convergence_delta"]) < 1e-4 * max(1.0, abs(f[0]))
