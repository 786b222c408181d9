"""Extremal perturbation's mask canvas where TorchRay's falls short of the image (issue 12, the sigma bug).

TorchRay's MaskGenerator sizes leave the canvas smaller than margin + image whenever 2 sigma / step is a
whole number (and for some other sizes): step 2, sigma 1.0 on 64 px gives a 63 px canvas cropped from
pixel 1. The crop then made a 62 px mask, the model input lost its shape and the exact gradient was
refused ("no gradient rule for operator BatchNormalization ... the rank of ... is unknown"). The
geometry now appends cells at the canvas's far end; these tests check the extended canvas covers the
image, leaves TorchRay's part unchanged, and that the graph's mask and gradient match numpy.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from _onnx_builders import image_model
from explaind.onnxgraph.builder import NAMESPACE
from explaind.onnxgraph.signature import ModelSignature
from explaind.onnxgraph.variants.extremal import Extremal, MaskGeometry

SHORT = [(64, 2, 1.0), (64, 2, 0.5), (64, 7, 3.48), (64, 5, 0.3), (33, 4, 2.0), (64, 3, 1.0)]


class TorchRaySizes(MaskGeometry):
    """TorchRay's own sizes: no extra cells (its canvas may then be smaller than the image)."""

    @property
    def extra_cells(self) -> tuple[int, int]:
        return 0, 0


@pytest.mark.parametrize("size,step,sigma", SHORT)
def test_torchray_canvas_is_short_and_the_extended_one_covers_the_image(size, step, sigma):
    ours, theirs = MaskGeometry(size, size, step, sigma), TorchRaySizes(size, size, step, sigma)
    assert theirs.shape_out[0] < theirs.margin + size  # the case of the bug
    assert ours.extra_cells[0] >= 1
    assert all(out >= ours.margin + size for out in ours.shape_out)
    assert all(out - step < ours.margin + size for out in ours.shape_out)  # no more cells than needed


def test_covering_geometries_are_torchray_s():
    for step in range(1, 10):
        for sigma in np.arange(0.25, 12.0, 0.25):
            ours, theirs = MaskGeometry(64, 64, step, float(sigma)), TorchRaySizes(64, 64, step, float(sigma))
            if theirs.shape_out[0] >= theirs.margin + 64:
                assert ours.extra_cells == (0, 0) and ours.shape_out == theirs.shape_out
            assert ours.shape_out[0] >= ours.margin + 64


@pytest.mark.parametrize("size,step,sigma", SHORT)
def test_the_extension_leaves_torchray_s_canvas_unchanged(size, step, sigma):
    ours, theirs = MaskGeometry(size, size, step, sigma), TorchRaySizes(size, size, step, sigma)
    params = np.random.default_rng(0).random((2, *ours.shape_in)).astype(np.float32)
    ho, wo = theirs.shape_out
    np.testing.assert_array_equal(ours.masks(params, canvas=True)[:, :ho, :wo], theirs.masks(params, canvas=True))
    assert ours.masks(params).shape == (2, size, size)


def _run(geometry: MaskGeometry, params: np.ndarray, weights: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    size = geometry.height
    sig = ModelSignature("input", "logits", (3, size, size), "NCHW", "logits")
    spec = Extremal(score="logit", step=geometry.step, sigma=geometry.sigma, levels=4, exact=False)
    session = ort.InferenceSession(spec.build(image_model(3, size, 3), sig).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    rows = len(params)
    x = np.random.default_rng(1).random((3, size, size)).astype(np.float32)
    feed = {"x0": x[None], "target": np.array([1]), "pyramid": np.stack([x * t for t in (0, 0.3, 0.6, 1)])[None],
            "job_index": np.zeros(rows, np.int64), "mask_params": params, "flip": np.zeros(rows, np.float32),
            "invert": np.zeros(rows, np.float32), "regul_weight": weights, "keep_count": keep}
    names = {i.name for i in session.get_inputs()}
    outputs = session.run(None, {NAMESPACE + k: v for k, v in feed.items() if NAMESPACE + k in names})
    return {o.name.removeprefix(NAMESPACE): v for o, v in zip(session.get_outputs(), outputs)}


def _regulariser(geometry: MaskGeometry, params: np.ndarray, weight: float, keep: int) -> float:
    """TorchRay's area energy -w mean((sort(m) - ref)^2) of one row, in float64."""
    values = np.sort(geometry.masks(params[None])[0].astype(np.float64).ravel())
    reference = np.zeros_like(values)
    reference[len(values) - keep:] = 1.0
    return -weight * float(np.mean((values - reference) ** 2))


@pytest.mark.parametrize("size,step,sigma", [(64, 2, 1.0), (64, 7, 3.48), (33, 4, 2.0)])
def test_graph_mask_and_gradient_on_an_extended_canvas(size, step, sigma):
    geometry = MaskGeometry(size, size, step, sigma)
    rng = np.random.default_rng(2)
    params = rng.uniform(0.2, 0.8, (2, *geometry.shape_in)).astype(np.float32)
    weights, keep = np.array([1.0, 3.0], np.float32), np.array([size * size // 10, size * size // 3], np.int64)
    out = _run(geometry, params, weights, keep)
    np.testing.assert_allclose(out["mask"], geometry.masks(params), atol=1e-5)
    # The regulariser's gradient (the black-box variant's param_grad) against central differences along
    # a random direction: it goes back through the unfold's asymmetric pads (a ConvTranspose).
    direction = rng.normal(size=geometry.shape_in)
    direction /= np.linalg.norm(direction)
    for row in range(2):
        eps = 1e-3
        plus = _regulariser(geometry, params[row] + eps * direction, float(weights[row]), int(keep[row]))
        minus = _regulariser(geometry, params[row] - eps * direction, float(weights[row]), int(keep[row]))
        numeric = (plus - minus) / (2 * eps)
        analytic = float(np.sum(out["param_grad"][row] * direction))
        assert analytic == pytest.approx(numeric, rel=1e-2, abs=1e-7)
        assert abs(analytic) > 1e-5  # the check is not vacuous

