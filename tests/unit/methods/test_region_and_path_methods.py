"""xrai, guided_ig, blur_ig, meaningful_perturbation, aggregated and occlusion's random fill through
the real engine on linear ONNX models (f = w . x: gradients are w everywhere, so every answer is
known in closed form), and their pieces on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from explaind.errors import InvalidArgument
from explaind.methods.aggregated import Aggregated, normalise
from explaind.methods.blur_ig import BlurIg, sigmas
from explaind.methods.guided_ig import GuidedIg, guided_step
from explaind.methods.meaningful_perturbation import MeaningfulPerturbation, regularisers
from explaind.onnxgraph.variants.meaningful import upsample_matrix
from explaind.methods.occlusion import Occlusion, coarse_to_fine, window_positions
from explaind.methods.xrai import Xrai, xrai_regions
from explaind.models.white_box import WhiteBox

from _linear import served_linear
from inprocess import explain
from oracles.noise import gaussian_noise_reference

SHAPE = (3, 8, 8)
X = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
WB = WhiteBox(True)


@pytest.mark.parametrize("shape", [SHAPE, (7,)])
def test_guided_ig_of_a_linear_model_is_x_times_w(shape):
    x = X if shape == SHAPE else np.linspace(-1, 2, 7).astype(np.float32)
    served, w = served_linear("lin", shape, 3, layout="NCHW" if len(shape) == 3 else "tabular")
    kind = "image" if len(shape) == 3 else "tabular"
    got, _ = explain(GuidedIg(), {"steps": 10, "max_dist": 0.1}, served, x, 1, "logit", white_box=WB, kind=kind)
    np.testing.assert_allclose(got.attribution, x * w[:, 1].reshape(shape), rtol=1e-5, atol=1e-6)
    assert got.figures["completeness_gap"] == pytest.approx(0.0, abs=1e-4)
    assert got.model_evaluations == 1 + 10 + 1


def test_guided_step_moves_the_smallest_gradients_first_by_hand():
    """Half way (2 steps) from 0 to [1, 1, 1, 1] with gradients [4, 3, 2, 1], fraction 0.25, unbounded:
    the smallest |gradient| (feature 3) reaches its bound (gamma 2 > 1), then feature 2 closes the
    remaining L1 gap exactly (gamma 1); attribution = moves x gradients."""
    x_in, base = np.ones(4), np.zeros(4)
    x, added = guided_step(base, np.array([4.0, 3.0, 2.0, 1.0]), x_in, base, 0, 2, 0.25, 1.0)
    np.testing.assert_array_equal(x, [0, 0, 1, 1])
    np.testing.assert_array_equal(added, [0, 0, 2, 1])
    # max_dist 0: the straight path, every feature moves together (IG, Riemann left)
    x, added = guided_step(base, np.array([4.0, 3.0, 2.0, 1.0]), x_in, base, 0, 2, 0.25, 0.0)
    np.testing.assert_allclose(x, [0.5] * 4)
    np.testing.assert_allclose(added, [2.0, 1.5, 1.0, 0.5])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("max_sigma", [2.0, 5.0])  # 5: kernels wider than the image (radius 20 > 8 px)
def test_blur_ig_of_a_linear_model(layout, max_sigma):
    """The graph's blurs are scipy's gaussian_filter (zero padding), for either layout."""
    shape = SHAPE if layout == "NCHW" else (8, 8, 3)
    x = X if layout == "NCHW" else np.ascontiguousarray(X.transpose(1, 2, 0))
    served, w = served_linear("lin", shape, 3, layout=layout)
    got, _ = explain(BlurIg(), {"steps": 5, "max_sigma": max_sigma}, served, x, 0, "logit", white_box=WB)
    s = [i * max_sigma / 5 for i in range(6)]
    np.testing.assert_allclose(sigmas(5, max_sigma, False), s)
    per_axis = (lambda v: [0, v, v]) if layout == "NCHW" else (lambda v: [v, v, 0])

    def blur(sigma):
        return x if sigma == 0 else ndimage.gaussian_filter(x.astype(np.float64), per_axis(sigma), mode="constant")

    expected = -sum((s[i + 1] - s[i]) * (blur(s[i] + 0.01) - blur(s[i])) / 0.01 for i in range(5))
    reference = expected * w[:, 0].reshape(shape)
    # float32 in the graph, the forward difference over 0.01 (scipy here in float64): ~1e-5 measured
    error = np.abs(got.attribution - reference).max() / np.abs(reference).max()
    assert error < 1e-4, error
    assert got.model_evaluations == 1 + 5


def test_xrai_regions_by_hand():
    attr = np.array([[4.0, 4.0, 0.0, 0.0], [4.0, 4.0, 0.0, 0.0], [1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]])
    top_left = np.zeros((4, 4), bool)
    top_left[:2, :2] = True
    bottom = np.zeros((4, 4), bool)
    bottom[2:] = True
    left = np.zeros((4, 4), bool)
    left[:, :2] = True  # after top_left, it adds the bottom-left pixels: gain 1
    masks = np.stack([bottom, left, top_left])
    gains, ranks, regions = xrai_regions(attr, masks, 1.0, 1)
    # top_left (4) first; then bottom (mean 1.5) beats left's new pixels (1); left adds nothing new.
    np.testing.assert_array_equal(gains, [[4, 4, 0, 0], [4, 4, 0, 0], [1.5] * 4, [1.5] * 4])
    np.testing.assert_array_equal(ranks, [[1, 1, 3, 3], [1, 1, 3, 3], [2] * 4, [2] * 4])  # uncovered last
    assert regions == 2


def test_xrai_on_a_linear_model_ranks_the_heavy_corner_first():
    served, w = served_linear("lin", (3, 16, 16), 2)
    x = np.zeros((3, 16, 16), np.float32)
    x[:, :8, :8] = 1.0
    got, params = explain(Xrai(), {"steps": 4, "baselines": [0.0], "segmentation_size": 0, "scales": [10.0],
                                   "min_segment_size": 10, "dilation_radius": 0, "min_pixel_diff": 1}, served, x, 0,
                          "logit", white_box=WB)
    ig = x * w[:, 0].reshape(3, 16, 16) * 1.0  # linspace(0, 1, 4) with weight 1/4: sum 1
    np.testing.assert_allclose(got.arrays["ig_attribution"], ig, rtol=1e-5, atol=1e-6)
    assert got.model_evaluations == 1 + 4
    assert got.arrays["segments"].min() == 1 and got.figures["regions"] >= 1


def test_xrai_refuses_too_many_masks_before_any_row():
    served, _ = served_linear("lin", (3, 16, 16), 2)
    x = np.random.default_rng(1).normal(size=(3, 16, 16)).astype(np.float32)
    with pytest.raises(InvalidArgument, match=r"xrai\.scales: expected segmentations giving at most 1024 masks"):
        explain(Xrai(), {"segmentation_size": 0, "scales": [1e-3] * 5, "min_segment_size": 1}, served, x, 0, "logit",
                white_box=WB)
    with pytest.raises(InvalidArgument, match=r"xrai\.segmentation_size"):
        explain(Xrai(), {"segmentation_size": 4}, served, x, 0, "logit", white_box=WB)


def test_meaningful_perturbation_pieces_by_hand():
    np.testing.assert_allclose(upsample_matrix(4, 2), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    mask = np.array([[1.0, 0.5], [0.5, 0.0]])
    l1, tv, grad = regularisers(mask, 0.1, 0.2, 2.0)
    assert l1 == pytest.approx(0.1 * 2.0) and tv == pytest.approx(0.2 * 1.0)
    # d/dM: -0.1 sign(1 - M) + 0.2 * 2 * (sum of the differences touching each cell, signed)
    np.testing.assert_allclose(grad, [[0.0 + 0.4, -0.1 + 0.0], [-0.1 + 0.0, -0.1 - 0.4]])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_meaningful_perturbation_first_step_on_a_linear_model(layout):
    """Logit score, constant fill 0, no jitter: f(Phi) = sum_c w . (m x); the first Adam step moves
    every cell by -lr sign(gradient) (Adam's first step), from M = 1; the mask and its gradient are
    made in the graph (variant meaningful), for either layout."""
    shape = SHAPE if layout == "NCHW" else (8, 8, 3)
    x = X if layout == "NCHW" else np.ascontiguousarray(X.transpose(1, 2, 0))
    served, w = served_linear("lin", shape, 3, layout=layout)
    given = {"iterations": 1, "perturbation": "constant", "fill": 0.0, "jitter": 0, "mask_size": 4,
             "l1_coeff": 0.0, "tv_coeff": 0.0, "learning_rate": 0.1}
    got, _ = explain(MeaningfulPerturbation(), given, served, x, 2, "logit", white_box=WB)
    u = upsample_matrix(8, 4)
    contribution = (x * w[:, 2].reshape(shape)).sum(axis=0 if layout == "NCHW" else 2)
    g = u.T @ contribution @ u
    expected_mask = u @ np.clip(1 - 0.1 * np.sign(g), 0, 1) @ u.T
    np.testing.assert_allclose(got.arrays["mask"], expected_mask, atol=1e-5)
    assert got.arrays["objective"][0] == pytest.approx(float(contribution.sum()), rel=1e-5)
    with pytest.raises(InvalidArgument, match="meaningful_perturbation.fill"):
        explain(MeaningfulPerturbation(), {"fill": 1.0}, served, x, 2, "logit", white_box=WB)


def test_meaningful_perturbation_jitter_shifts_the_mask_in_the_graph():
    """One iteration with a shift: the objective's score is f of the input under the shifted mask."""
    served, w = served_linear("lin", SHAPE, 3)
    given = {"iterations": 2, "perturbation": "constant", "fill": 0.0, "jitter": 3, "mask_size": 4,
             "l1_coeff": 0.0, "tv_coeff": 0.0, "learning_rate": 0.1}
    got, _ = explain(MeaningfulPerturbation(), given, served, X, 0, "logit", seed=5, white_box=WB)
    (dy, dx), _ = got.arrays["jitter"].astype(int)
    u = upsample_matrix(8, 4)
    rows, cols = np.clip(np.arange(8) - dy, 0, 7), np.clip(np.arange(8) - dx, 0, 7)
    # step 1 from all ones (the shifted mask is all ones too); its gradient through the shifted matrices
    grad = u[rows].T @ (X * w[:, 0].reshape(SHAPE)).sum(axis=0) @ u[cols]
    mask1 = np.clip(1 - 0.1 * np.sign(grad), 0, 1)
    shown = X * (u[rows] @ np.ones((4, 4)) @ u[cols].T)
    assert got.arrays["objective"][0] == pytest.approx(float((shown * w[:, 0].reshape(SHAPE)).sum()), rel=1e-5)
    (dy, dx) = got.arrays["jitter"].astype(int)[1]
    rows, cols = np.clip(np.arange(8) - dy, 0, 7), np.clip(np.arange(8) - dx, 0, 7)
    shown = X * (u[rows] @ mask1 @ u[cols].T)
    assert got.arrays["objective"][1] == pytest.approx(float((shown * w[:, 0].reshape(SHAPE)).sum()), rel=1e-5)
    assert np.abs(got.arrays["jitter"]).max() <= 3


def test_aggregated_of_two_exact_methods_is_their_common_normalised_map():
    served, w = served_linear("lin", SHAPE, 3)
    got, params = explain(Aggregated(), {"methods": "input_x_gradient, integrated_gradients"}, served, X, 1, "logit",
                          white_box=WB)
    expected = normalise((X * w[:, 1].reshape(SHAPE)).sum(axis=0), "max_abs")
    np.testing.assert_allclose(got.attribution, expected, rtol=1e-4, atol=1e-6)
    assert params["methods"] == "input_x_gradient,integrated_gradients"
    assert set(got.arrays) == {"input_x_gradient", "integrated_gradients"}
    assert got.model_evaluations == 1 + 1 + 52
    assert np.abs(got.attribution).max() == pytest.approx(1.0, rel=1e-6)
    for given, field in (({"methods": "nope"}, "aggregated.methods"), ({"methods": "aggregated"}, "aggregated.methods"),
                         ({"weights": [1.0]}, "aggregated.weights")):
        with pytest.raises(InvalidArgument, match=field):
            explain(Aggregated(), given, served, X, 1, "logit", white_box=WB)


def test_normalisations_by_hand():
    v = np.array([-2.0, 1.0, 1.0])
    np.testing.assert_allclose(normalise(v, "max_abs"), [-1, 0.5, 0.5])
    np.testing.assert_allclose(normalise(v, "l1"), [-0.5, 0.25, 0.25])
    np.testing.assert_allclose(normalise(v, "min_max"), [0, 1, 1])
    np.testing.assert_allclose(normalise(v, "l2"), v / np.sqrt(6))


def test_occlusion_random_fill_against_a_numpy_reference():
    """Each window's patch: fill + scale * noise(seed of the window), the seeds drawn from the request's seed."""
    served, w = served_linear("lin", SHAPE, 3)
    got, params = explain(Occlusion(), {"window": [4, 4], "stride": [4, 4], "fill": "gaussian"}, served, X, 1, "logit",
                          seed=7)
    assert params == {"window": [4, 4], "stride": [4, 4], "fill": "gaussian"}
    ys = xs = window_positions(8, 4, 4)
    iy, ix = coarse_to_fine(len(ys), len(xs))
    seeds = np.random.default_rng(7).integers(0, 2**31 - 1, size=1 + len(iy), dtype=np.int64)
    noise = gaussian_noise_reference(seeds, X.size).reshape(-1, *SHAPE)
    weights = w[:, 1].reshape(SHAPE)
    expected = np.zeros((8, 8))
    for k, (a, b) in enumerate(zip(ys[iy], xs[ix]), start=1):
        occluded = X.astype(np.float64).copy()
        patch = X.mean() + X.std() * noise[k]
        occluded[:, a:a + 4, b:b + 4] = patch[:, a:a + 4, b:b + 4]
        expected[a:a + 4, b:b + 4] = float((X * weights).sum() - (occluded * weights).sum())
    np.testing.assert_allclose(got.attribution, expected, rtol=1e-3, atol=1e-4)
    with pytest.raises(InvalidArgument, match="occlusion.baseline"):
        explain(Occlusion(), {"fill": "uniform", "baseline": 1.0}, served, X, 1, "logit")


def test_blur_path_batches_are_capped_by_their_blur_matrices():
    from explaind.onnxgraph.signature import ModelSignature
    from explaind.onnxgraph.variants.blur_path import BlurPath
    big = ModelSignature("input", "logits", (3, 224, 224), "NCHW", "logits")
    assert BlurPath().max_batch_rows(big, 1024) == 256 * 2**20 // (32 * 2 * 224 * 224) == 83
    assert BlurPath().max_batch_rows(ModelSignature("input", "logits", (3, 8, 8), "NCHW", "logits"), 64) == 64
