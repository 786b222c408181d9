"""XRAI, Guided IG and Blur IG against the PAIR `saliency` package (its core API, framework-free), on
the zoo's torch models (see _methods.py): saliency's `call_model_function` is the torch twin of the
ONNX model explaind runs (the target logit's input gradient by autograd).

- guided_ig vs saliency GuidedIG (same baseline 0, steps, fraction, max_dist): 1e-3 relative.
- blur_ig vs saliency BlurIG (batch_size 1, its default; saliency blurs an H x W x C image with sigma
  [s, s, 0], so it is given the image channels-last and the gradients transposed back): 1e-3.
- xrai: the IG it averages vs saliency's IntegratedGradients from the same two baselines (1e-3; there
  saliency's call_model_function runs the ONNX model's gradient graph, see the test); its
  segments vs saliency's _get_segments_felzenszwalb (exact); and, given the same attributions and
  segments, saliency's XRAI region map and ranking (`flatten_xrai_segments`) exactly, full and fast.
saliency 0.2.1's GuidedIG calls np.quantile(..., interpolation=...), which numpy 2 removed: the test
hands that module a numpy whose quantile accepts the old keyword.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from _methods import GRAD, IMAGE, SEED, TOL, check

saliency = pytest.importorskip("saliency.core")
from saliency.core import guided_ig as saliency_guided_ig  # noqa: E402
from saliency.core import xrai as saliency_xrai  # noqa: E402

from explaind.methods.blur_ig import BlurIg  # noqa: E402
from explaind.methods.guided_ig import GuidedIg  # noqa: E402
from explaind.methods.xrai import Xrai, segment_masks, xrai_regions  # noqa: E402


class _Numpy(types.ModuleType):
    """numpy, with quantile taking numpy 1's `interpolation` keyword (saliency 0.2.1 uses it)."""

    def __init__(self) -> None:
        super().__init__("numpy")

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def quantile(a, q, interpolation="linear", **kw):
        return np.quantile(a, q, method=interpolation, **kw)


def call_model(ex, target, channels_last=False, onnx=False):
    """saliency's call_model_function: the target logit's gradient w.r.t. a batch of inputs, by torch
    autograd on the torch twin, or (`onnx`) by onnxruntime on the ONNX model's gradient graph."""

    def call(batch, call_model_args=None, expected_keys=None):
        xs = np.asarray(batch, np.float32)
        if channels_last:
            xs = xs.transpose(0, 3, 1, 2)
        xs = np.ascontiguousarray(xs)
        if onnx:
            seed = np.zeros((len(xs), ex.entry.num_classes), np.float32)
            seed[:, target] = 1
            grads = ex.gradient_session("plain").run([GRAD + "input"], {"input": xs, SEED: seed})[0].astype(np.float64)
        else:
            xt = torch.from_numpy(xs).requires_grad_(True)
            ex.torch_model(xt)[:, target].sum().backward()
            grads = xt.grad.numpy().astype(np.float64)
        if channels_last:
            grads = grads.transpose(0, 2, 3, 1)
        return {saliency.INPUT_OUTPUT_GRADIENTS: grads}

    return call


@pytest.mark.parametrize("name", IMAGE)
@pytest.mark.parametrize("max_dist", [0.02, 0.1])
def test_guided_ig(case, xp, summary, monkeypatch, name, max_dist):
    ex, x, _, target = case(name)
    monkeypatch.setattr(saliency_guided_ig, "np", _Numpy())
    ref = saliency.GuidedIG().GetMask(x.astype(np.float64), call_model(ex, target), x_steps=40, fraction=0.25,
                                      max_dist=max_dist)
    got, _ = xp.explain(GuidedIg(), {"steps": 40, "max_dist": max_dist}, ex.in_process, x, target)
    assert got.model_evaluations == 1 + 40 + 1
    check(summary, f"GuidedIG(max_dist={max_dist})", name, got.attribution, ref)


@pytest.mark.parametrize("name", IMAGE)
@pytest.mark.parametrize("sqrt", [False, True])
def test_blur_ig(case, xp, summary, name, sqrt):
    ex, x, _, target = case(name)
    hwc = np.ascontiguousarray(x.transpose(1, 2, 0))
    ref = saliency.BlurIG().GetMask(hwc, call_model(ex, target, channels_last=True), max_sigma=8.0, steps=24,
                                    sqrt=sqrt).transpose(2, 0, 1)
    got, _ = xp.explain(BlurIg(), {"steps": 24, "max_sigma": 8.0, "sqrt": sqrt}, ex.in_process, x, target)
    assert got.model_evaluations == 1 + 24
    check(summary, f"BlurIG(sqrt={sqrt})", name, got.attribution, ref)


@pytest.mark.parametrize("name", IMAGE)
def test_xrai_ig_segments_and_regions(case, xp, summary, name):
    ex, x, _, target = case(name)
    got, _ = xp.explain(Xrai(), {"steps": 20}, ex.in_process, x, target)
    assert got.model_evaluations == 1 + 2 * 20
    hwc = np.ascontiguousarray(x.transpose(1, 2, 0))
    # The path starts at a constant image, where VGG's max pools tie and torch and onnxruntime route
    # the gradient to different (equal) inputs: saliency is given the ONNX model's gradients here.
    call = call_model(ex, target, channels_last=True, onnx=True)
    ig = saliency.IntegratedGradients()
    ref_ig = np.mean([ig.GetMask(hwc, call, x_baseline=np.full_like(hwc, b), x_steps=20) for b in (x.min(), x.max())],
                     axis=0)
    check(summary, "XRAI's IG", name, got.arrays["ig_attribution"].transpose(1, 2, 0), ref_ig)

    masks = segment_masks(hwc, 224, [50, 100, 150, 250, 500, 1200], 0.8, 150, 5)
    ref_masks = saliency_xrai._get_segments_felzenszwalb(hwc)
    assert len(masks) == len(ref_masks) > 6
    np.testing.assert_array_equal(masks, np.array(ref_masks))

    # Given the same attributions and segments: the same regions, gains and ranks, exactly.
    attr = got.arrays["ig_attribution"].astype(np.float64).max(axis=0)
    ref_map, ref_ranks = saliency.XRAI._xrai(attr, list(masks), min_pixel_diff=50)
    np.testing.assert_array_equal(got.arrays["segments"], ref_ranks)
    np.testing.assert_array_equal(got.attribution, ref_map.astype(np.float32))
    assert len(np.unique(ref_ranks)) > 3  # several regions: the ranking is not vacuous
    for algorithm, area in (("full", 1.0), ("full", 0.3), ("fast", 1.0)):
        gains, ranks, _ = xrai_regions(attr, masks, area, 50, algorithm)
        run = saliency.XRAI._xrai_fast if algorithm == "fast" else saliency.XRAI._xrai
        kw = {} if algorithm == "fast" else {"area_perc_th": area}
        ref_map, ref_ranks = run(attr, list(masks), min_pixel_diff=50, **kw)
        np.testing.assert_array_equal(ranks, ref_ranks)
        np.testing.assert_array_equal(gains, ref_map)
    # and saliency's whole XRAI with explaind's IG as base attribution and its segments
    details = saliency.XRAI().GetMaskWithDetails(hwc, call, segments=list(masks),
                                                 base_attribution=got.arrays["ig_attribution"].transpose(1, 2, 0),
                                                 extra_parameters=saliency.XRAIParameters(return_xrai_segments=True))
    np.testing.assert_array_equal(got.arrays["segments"], details.segments)
    assert TOL == 1e-3
