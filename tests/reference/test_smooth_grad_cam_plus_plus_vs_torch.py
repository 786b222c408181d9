"""Smooth Grad-CAM++ (Omeiza et al. 2019) against a torch autograd implementation of the same formula
on the zoo's image models: the same noisy copies (tests/oracles/noise.py reproduces the graph's noise
from the seeds the method draws from the request's generator), the layer gradient of the target logit
of each by torch.autograd, D1, D2, D3 the means of g, g^2, g^3, alpha = D2 / (2 D2 + sum A D3 + 1e-6)
(0 where D2 = 0), w_k = sum alpha ReLU(D1), A the clean input's activation, map = ReLU(sum w_k A_k),
compared at the layer's resolution (1e-3 relative). pytorch-grad-cam has no Smooth Grad-CAM++.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _methods import check
from explaind.methods.smooth_grad_cam_plus_plus import SmoothGradCamPlusPlus
from oracles.noise import gaussian_noise_reference

MODELS = ["resnet", "vgg", "senet"]
TARGETS = {"resnet": 3, "vgg": 2, "senet": 1}
N, SEED, NOISE_LEVEL = 6, 7, 0.15


def torch_smooth_grad_cam_plus_plus(ex, x: np.ndarray, target: int, noisy: np.ndarray) -> np.ndarray:
    module = ex.torch_model.get_submodule(ex.entry.layer_module)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        with torch.no_grad():
            ex.torch_model(torch.from_numpy(x[None].copy()))
        activation = seen.pop()[0].double().numpy()
        grads = []
        for row in noisy:
            logits = ex.torch_model(torch.from_numpy(row[None].astype(np.float32)))
            layer = seen.pop()
            grads.append(torch.autograd.grad(logits[0, target], layer)[0][0].double().numpy())
    finally:
        handle.remove()
    g = np.stack(grads)
    d1, d2, d3 = g.mean(axis=0), (g ** 2).mean(axis=0), (g ** 3).mean(axis=0)
    sums = activation.sum(axis=(1, 2))[:, None, None]
    alpha = np.where(d2 != 0, d2 / (2 * d2 + sums * d3 + 1e-6), 0.0)
    weights = (alpha * np.maximum(d1, 0)).sum(axis=(1, 2))
    return np.maximum(np.tensordot(weights, activation, axes=1), 0)


@pytest.mark.parametrize("name", MODELS)
def test_smooth_grad_cam_plus_plus(exported, xp, summary, name):
    ex = exported(name)
    x = np.random.default_rng(700 + MODELS.index(name)).standard_normal(ex.torch_model.input_shape).astype(np.float32)
    target = TARGETS[name]
    seeds = np.random.default_rng(SEED).integers(0, 2**31 - 1, size=N, dtype=np.int64)  # the method's draw
    sigma = np.float32(NOISE_LEVEL * float(x.max() - x.min()))
    noisy = x[None] + sigma * gaussian_noise_reference(seeds, x.size).reshape(N, *x.shape)
    expected = torch_smooth_grad_cam_plus_plus(ex, x, target, noisy)
    got, params = xp.explain(SmoothGradCamPlusPlus(), {"layer": ex.layer, "upsample": "none", "num_samples": N},
                             ex.in_process, x, target, seed=SEED)
    assert params["noise_level"] == NOISE_LEVEL
    assert got.model_evaluations == 1 + N
    check(summary, "Smooth Grad-CAM++ vs torch (layer)", name, got.attribution, expected)
