"""Activation maximisation against torch and on the shapes demo.

- The first steps of the ascent equal the same update written in torch (autograd through the demo
  CNN's torch twin, torch.optim.Adam, affine_grid + grid_sample for the jitter / scale / rotation,
  torch.fft.irfft2 for the Fourier parameterisation, the generator's torch twin for DGN-AM), within
  1e-4, with every regulariser on: L2, blur every k steps, the norm and contribution clipping, the
  valid-range clip, the random warps drawn from the same seeded generator.
- With the default settings (pixel), and with each of the other parameterisations at its defaults,
  the image of each of the 5 shapes classes is classified as that class with probability >= 0.99 by
  the model (the attribution, and the PNG decoded and preprocessed as a client would).
"""

from __future__ import annotations

import io
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from PIL import Image

from explaind.config import Settings
from explaind.demo.shapes_data import CLASSES
from explaind.demo.train_generator import Generator
from explaind.demo.train_shapes import MEAN, STD, ShapesNet
from explaind.explainer import ExplainQuery
from explaind.methods.activation_maximization import FOURIER_SD, rfft_scale
from explaind.render.heatmap import RenderOptions
from inprocess import serve_requests

REPOSITORY = Settings().repository_path
SHAPES = REPOSITORY / "shapes"
SEED = 11
H = W = 64


def torch_twin(module: torch.nn.Module, path) -> torch.nn.Module:
    state = {t.name: torch.tensor(numpy_helper.to_array(t)) for t in onnx.load(str(path)).graph.initializer}
    missing, unexpected = module.load_state_dict(state, strict=False)
    assert not unexpected and all(n.endswith("num_batches_tracked") or n in ("mean", "std") for n in missing)
    return module.eval()


NET = torch_twin(ShapesNet(), SHAPES / "model.onnx")
MEAN_T = torch.tensor(MEAN).reshape(1, 3, 1, 1)
STD_T = torch.tensor(STD).reshape(1, 3, 1, 1)
LO, HI = (0 - MEAN_T) / STD_T, (1 - MEAN_T) / STD_T


def request(target: int, seed: int = SEED, **params) -> ExplainQuery:
    return ExplainQuery(model="shapes", method="activation_maximization", params=params,
                        tensor=np.zeros((3, H, W), np.float32), target_index=target, seed=seed, render=RenderOptions())


def draws(rng: np.random.Generator, jitter: int, scale: float, rotation: float) -> torch.Tensor:
    """theta [1, 2, 3] of the step's warp, drawn as the method draws them."""
    dy = dx = 0.0
    if jitter:
        dy, dx = float(rng.integers(-jitter, jitter + 1)), float(rng.integers(-jitter, jitter + 1))
    s = float(rng.uniform(1 - scale, 1 + scale)) if scale else 1.0
    a = math.radians(float(rng.uniform(-rotation, rotation))) if rotation else 0.0
    c, n = math.cos(a) / s, math.sin(a) / s
    return torch.tensor([[[c, -n, -2 * dx / W], [n, c, -2 * dy / H]]], dtype=torch.float64)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """TorchRay's imsmooth: separable Gaussian of half-width ceil(4 sigma), zero padding."""
    width = math.ceil(4 * sigma)
    taps = torch.exp(-(torch.arange(-width, width + 1, dtype=x.dtype) / (math.sqrt(2) * sigma + 1.1920929e-07)) ** 2)
    taps = taps / taps.sum()
    c = x.shape[1]
    x = F.conv2d(x, taps.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1), padding=(width, 0), groups=c)
    return F.conv2d(x, taps.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1), padding=(0, width), groups=c)


def ascend(p: torch.Tensor, image_of, steps: int, lr: float, l2: float, target: int, rng: np.random.Generator,
           warps: tuple[int, float, float] = (0, 0.0, 0.0), after=None, optimizer: str = "adam") -> torch.Tensor:
    """Adam (or SGD) on S(T(image_of(p))) - l2 |p|^2; `after(p, grad, t)` the projections after each step."""
    p = p.clone().requires_grad_(True)
    opt = (torch.optim.Adam([p], lr=lr, betas=(0.9, 0.999), eps=1e-8) if optimizer == "adam"
           else torch.optim.SGD([p], lr=lr))
    for t in range(steps):
        x = image_of(p)
        if any(warps):
            x = warp(x, draws(rng, *warps))
        objective = NET(x)[0, target]
        (grad,) = torch.autograd.grad(objective, p)
        p.grad = -(grad - 2 * l2 * p.detach())
        opt.step()
        if after is not None:
            with torch.no_grad():
                p.copy_(after(p.detach(), grad, t))
    return p.detach()


def test_pixel_ascent_with_every_regulariser_equals_torch():
    params = dict(steps=6, learning_rate=0.05, l2=0.01, blur_every=2, blur_sigma=0.7, norm_percentile=20.0,
                  contribution_percentile=10.0, jitter=3, scale=0.1, rotation=10.0)
    target = 3
    ours = serve_requests(request(target, **params))[0]
    rng = np.random.default_rng(SEED)
    start = torch.tensor(0.01 * rng.standard_normal((3, H, W), dtype=np.float32))[None]

    def after(p, grad, t):
        if (t + 1) % 2 == 0:
            p = blur(p, 0.7)
        norm = p.pow(2).sum(1).sqrt()
        p = p * (norm >= torch.tensor(np.percentile(norm.numpy(), 20.0)))
        contribution = (p * grad).sum(1).abs()
        p = p * (contribution >= torch.tensor(np.percentile(contribution.numpy(), 10.0)))
        return torch.maximum(torch.minimum(p, HI), LO)

    theirs = ascend(start, lambda p: p, 6, 0.05, 0.01, target, rng, (3, 0.1, 10.0), after)
    np.testing.assert_allclose(ours.attribution, theirs[0].numpy(), atol=1e-4)
    assert np.abs(ours.attribution - start[0].numpy()).max() > 0.1  # it moved


@pytest.mark.parametrize("optimizer,steps", [("sgd", 5), ("adam", 1)])
def test_fourier_ascent_equals_torch(optimizer, steps):
    """Plain ascent for 5 steps; Adam for its first. Adam moves every Fourier coefficient by about the
    learning rate whatever its gradient, so the image moves far at each step, and after two or three
    the two runtimes' rounding (gradients agree to ~5e-7 relative) falls on different sides of ReLU and
    max-pool kinks; so does plain ascent at a large rate (20: 2e-3 after 2 steps)."""
    target, lr = 1, (5.0 if optimizer == "sgd" else 0.05)
    ours = serve_requests(request(target, parameterization="fourier", steps=steps, jitter=2, rotation=5.0,
                                  optimizer=optimizer, learning_rate=lr))[0]
    rng = np.random.default_rng(SEED)
    spectrum = torch.tensor(FOURIER_SD * rng.standard_normal((3, H, W // 2 + 1, 2), dtype=np.float32))
    scale = torch.tensor(rfft_scale(H, W, 1.0))[None, :, :, None]

    def image_of(p):
        y = torch.fft.irfft2(torch.view_as_complex((scale * p).contiguous()), s=(H, W), norm="ortho") / 4
        return ((torch.sigmoid(y) - MEAN_T[0]) / STD_T[0])[None]

    theirs = ascend(spectrum, image_of, steps, lr, 1e-4, target, rng, (2, 0.0, 5.0), optimizer=optimizer)
    np.testing.assert_allclose(ours.attribution, image_of(theirs)[0].numpy(), atol=1e-4)
    assert np.abs(ours.attribution - image_of(spectrum)[0].numpy()).max() > 0.05


def generator_twin() -> tuple[torch.nn.Module, float, float, np.ndarray]:
    model = onnx.load(str(SHAPES / "generator.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    mean = np.array([float(v) for v in meta["explaind.latent_mean"].split(",")], np.float32)
    return (torch_twin(Generator(), SHAPES / "generator.onnx"), float(meta["explaind.latent_min"]),
            float(meta["explaind.latent_max"]), mean)


def test_generator_twin_equals_the_shipped_onnx():
    gen, low, top, mean = generator_twin()
    codes = np.random.default_rng(0).uniform(low, top, size=(4, len(mean))).astype(np.float32)
    session = ort.InferenceSession(str(SHAPES / "generator.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"code": codes})[0], gen(torch.tensor(codes)).numpy(), atol=1e-5)


def test_generator_ascent_equals_torch():
    """Adam at 0.05 for 4 steps (at the 5th the two part by 2e-3, measured, as in the Fourier case: a
    kink where the runtimes' rounding falls on different sides; at the default 0.4 sooner)."""
    target = 2
    gen, low, top, mean = generator_twin()
    ours = serve_requests(request(target, parameterization="generator", steps=4, l2=0.01, learning_rate=0.05))[0]
    rng = np.random.default_rng(SEED)
    start = np.clip(mean + 0.1 * top * rng.standard_normal(mean.shape, dtype=np.float32), low, top)
    theirs = ascend(torch.tensor(start)[None], gen, 4, 0.05, 0.01, target, rng,
                    after=lambda p, grad, t: p.clamp(low, top))
    np.testing.assert_allclose(ours.arrays["code"], theirs[0].numpy(), atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(ours.attribution, gen(theirs)[0].numpy(), atol=1e-4)
    assert np.abs(ours.arrays["code"] - start).max() > 0.05


def probabilities(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(SHAPES / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x.astype(np.float32)})[0].astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def from_png(png: bytes) -> np.ndarray:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255.0
    return ((pixels - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).transpose(2, 0, 1)


@pytest.mark.parametrize("params", [{}, {"parameterization": "fourier"}, {"parameterization": "generator"},
                                    {"jitter": 2, "scale": 0.1, "rotation": 10.0, "blur_every": 4}],
                         ids=["defaults", "fourier", "generator", "olah-yosinski"])
def test_each_class_is_synthesised_as_that_class(params):
    results = serve_requests(*(request(c, **params) for c in range(len(CLASSES))))
    images = np.stack([r.attribution for r in results])
    pngs = np.stack([from_png(r.heatmap_png) for r in results])
    for c, (r, p, q) in enumerate(zip(results, probabilities(images), probabilities(pngs))):
        assert r.target_label == CLASSES[c]
        assert p[c] >= 0.99 and q[c] >= 0.99, (CLASSES[c], p.round(3), q.round(3))
        assert r.figures["final_probability"] == pytest.approx(p[c], abs=1e-4)
        curve = r.arrays["score_curve"]
        assert len(curve) == 201 and curve[-1] > curve[0]
        assert r.arrays["image"].shape == (H, W, 3)
