"""Occlusion and RISE through the real engine on linear ONNX models, against numpy references; parameter
checks the demo models cannot reach over gRPC (tabular white-box models, one-feature Kernel SHAP)."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from explaind.engine.engine import Engine
from explaind.errors import FailedPrecondition, InvalidArgument
from explaind.methods.base import ModelView
from explaind.models.white_box import WhiteBox
from explaind.methods.input_x_gradient import InputXGradient
from explaind.methods.integrated_gradients import IntegratedGradients
from explaind.methods.kernel_shap import KernelShap
from explaind.methods.occlusion import Occlusion
from explaind.methods.rise import Rise
from explaind.methods.saliency import Saliency
from explaind.methods.smooth_grad import SmoothGrad

from _linear import run, run_method, served_linear, settings, softmax


def _score(weights: np.ndarray, x: np.ndarray, target: int, score: str) -> float:
    logits = x.reshape(-1).astype(np.float64) @ weights.astype(np.float64)
    return float(softmax(logits)[target] if score == "probability" else logits[target])


def occlusion_reference(weights, x, target, score, window, stride, baseline, layout="NCHW"):
    """Captum's Occlusion by brute force: mean over covering windows of f(x) - f(x_occluded)."""
    height, width = (x.shape[1], x.shape[2]) if layout == "NCHW" else (x.shape[0], x.shape[1])
    base = _score(weights, x, target, score)
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for y in range(0, height - window[0] + 1, stride[0]):
        for xx in range(0, width - window[1] + 1, stride[1]):
            occluded = x.copy()
            if layout == "NCHW":
                occluded[:, y:y + window[0], xx:xx + window[1]] = baseline
            else:
                occluded[y:y + window[0], xx:xx + window[1], :] = baseline
            total[y:y + window[0], xx:xx + window[1]] += base - _score(weights, occluded, target, score)
            count[y:y + window[0], xx:xx + window[1]] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("score", ["probability", "logit"])
def test_image_occlusion_matches_brute_force(layout, score):
    shape = (3, 10, 13) if layout == "NCHW" else (10, 13, 3)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)

    async def main():
        engine = Engine(settings())
        served, weights = served_linear("lin", shape, 4, layout=layout, max_batch_rows=7)
        result, params = await run_method(engine, served, Occlusion(), {"window": [3, 4], "stride": [2, 3],
                                                                        "baseline": 0.5}, x, 2, score)
        await engine.close()
        return result, params, weights

    result, params, weights = run(main())
    expected = occlusion_reference(weights, x, 2, score, (3, 4), (2, 3), 0.5, layout)
    assert params == {"window": [3, 4], "stride": [2, 3], "baseline": 0.5}
    assert result.attribution.shape == (10, 13)
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-4, atol=1e-6)
    # Rows start at 0, 2, 4, 6 with height 3: the last row (y = 9) is never covered and gets 0.
    assert np.all(result.attribution[9, :] == 0)
    assert np.all(result.attribution[:9, :] != 0)
    assert result.model_evaluations == 1 + 1 + 4 * 4  # the prediction, the unoccluded row, the windows
    assert result.batches == 1 + math.ceil(17 / 7)  # the prediction, then 17 rows 7 at a time


def test_image_occlusion_defaults_are_captum_8_by_8_stride_4():
    x = np.random.default_rng(2).normal(size=(3, 16, 16)).astype(np.float32)

    async def main():
        engine = Engine(settings())
        served, weights = served_linear("lin", (3, 16, 16), 3, max_batch_rows=64)
        result, params = await run_method(engine, served, Occlusion(), {}, x, 0)
        await engine.close()
        return result, params, weights

    result, params, weights = run(main())
    assert params == {"window": [8, 8], "stride": [4, 4], "baseline": 0.0}
    np.testing.assert_allclose(result.attribution, occlusion_reference(weights, x, 0, "probability", (8, 8), (4, 4), 0.0),
                               rtol=1e-4, atol=1e-6)


def test_tabular_occlusion_uses_the_background_mean():
    rng = np.random.default_rng(3)
    x = rng.normal(size=6).astype(np.float32)
    background = rng.normal(size=(20, 6)).astype(np.float32)

    async def main():
        engine = Engine(settings())
        served, weights = served_linear("tab", (6,), 3, layout="tabular")
        result, params = await run_method(engine, served, Occlusion(), {}, x, 1, kind="tabular", background=background)
        explicit, _ = await run_method(engine, served, Occlusion(), {"baseline": -2.0}, x, 1, kind="tabular",
                                       background=background)
        await engine.close()
        return result, explicit, weights

    result, explicit, weights = run(main())
    base = _score(weights, x, 1, "probability")
    for fill, got in ((background.astype(np.float64).mean(axis=0), result), (np.full(6, -2.0), explicit)):
        expected = []
        for i in range(6):
            replaced = x.astype(np.float64).copy()
            replaced[i] = fill[i]
            expected.append(base - _score(weights, replaced, 1, "probability"))
        np.testing.assert_allclose(got.attribution, expected, rtol=1e-4, atol=1e-6)


def _bilinear_rows(in_size: int, out_size: int) -> np.ndarray:
    """Independent half-pixel bilinear weights (torch align_corners=False)."""
    out = np.zeros((out_size, in_size))
    for i in range(out_size):
        src = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        lo = min(int(np.floor(src)), in_size - 1)
        hi = min(lo + 1, in_size - 1)
        frac = src - lo if lo < in_size - 1 else 0.0
        out[i, lo] += 1 - frac
        out[i, hi] += frac
    return out


def rise_reference(weights, x, target, n, s, p, baseline, seed, chunk=256):
    """RISE from its definition, drawing the same codes from the same seed as the service."""
    _, height, width = x.shape
    cells = np.array([math.ceil(height / s), math.ceil(width / s)])
    up_y = _bilinear_rows(s, (s + 1) * cells[0])
    up_x = _bilinear_rows(s, (s + 1) * cells[1])
    rng = np.random.default_rng(seed)
    saliency = np.zeros((height, width))
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        grids = (rng.random((count, s, s)) < p).astype(np.float64)
        shifts = rng.integers(0, cells, size=(count, 2))
        for grid, (dy, dx) in zip(grids, shifts):
            mask = (up_y @ grid @ up_x.T)[dy:dy + height, dx:dx + width]
            perturbed = x * mask + baseline * (1 - mask)
            saliency += _score(weights, perturbed, target, "probability") * mask
    return saliency / (n * p)


@pytest.mark.parametrize("baseline", [0.0, 0.25])  # 0 takes the variant without a fill input
def test_rise_matches_its_definition_for_the_same_codes(baseline):
    x = np.random.default_rng(4).normal(size=(3, 12, 9)).astype(np.float32)

    async def main():
        engine = Engine(settings())
        served, weights = served_linear("lin", (3, 12, 9), 3, max_batch_rows=32)
        result, params = await run_method(engine, served, Rise(), {"num_masks": 300, "grid_size": 4,
                                                                   "keep_probability": 0.3, "baseline": baseline},
                                          x, 1, seed=77)
        await engine.close()
        return result, weights

    result, weights = run(main())
    expected = rise_reference(weights, x, 1, 300, 4, 0.3, baseline, seed=77)
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-4, atol=1e-6)
    assert result.model_evaluations == 1 + 300  # the prediction and the masks


def test_rise_is_the_same_whatever_the_batching():
    x = np.random.default_rng(5).normal(size=(3, 8, 8)).astype(np.float32)

    async def one(max_batch_rows: int, crowd: bool) -> np.ndarray:
        engine = Engine(settings())
        served, _ = served_linear("lin", (3, 8, 8), 3, max_batch_rows=max_batch_rows)
        others = []
        if crowd:  # other requests' rows share the batches
            others = [asyncio.ensure_future(run_method(engine, served, Rise(), {"num_masks": 150}, x * k, 0, seed=k))
                      for k in (2, 3)]
        result, _ = await run_method(engine, served, Rise(), {"num_masks": 400}, x, 2, seed=123)
        await asyncio.gather(*others)
        await engine.close()
        return result.attribution

    solo = run(one(64, False))
    again = run(one(64, False))
    crowded = run(one(5, True))
    np.testing.assert_array_equal(solo, again)
    np.testing.assert_allclose(crowded, solo, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("given, field", [
    ({"num_masks": 0}, "rise.num_masks"),
    ({"num_masks": 10_000_000}, "rise.num_masks"),
    ({"keep_probability": 0.0}, "rise.keep_probability"),
    ({"keep_probability": 1.0}, "rise.keep_probability"),
    ({"keep_probability": float("nan")}, "rise.keep_probability"),
    ({"grid_size": 0}, "rise.grid_size"),
    ({"baseline": float("inf")}, "rise.baseline"),
])
def test_rise_parameters_are_validated(given, field):
    served, _ = served_linear("lin", (3, 8, 8), 3)
    with pytest.raises(InvalidArgument) as err:
        Rise().parameters(given, ModelView("image", served.signature), settings(), "logit")
    assert err.value.field == field
    assert "expected" in err.value.message and "got" in err.value.message


@pytest.mark.parametrize("given, field", [
    ({"stride": [0]}, "occlusion.stride"),
    ({"stride": [2, -1]}, "occlusion.stride"),
    ({"window": [9, 9]}, "occlusion.window"),
    ({"window": [1, 2, 3]}, "occlusion.window"),
    ({"baseline": float("nan")}, "occlusion.baseline"),
])
def test_occlusion_parameters_are_validated(given, field):
    served, _ = served_linear("lin", (3, 8, 8), 3)
    with pytest.raises(InvalidArgument) as err:
        Occlusion().parameters(given, ModelView("image", served.signature), settings(), "logit")
    assert err.value.field == field


def test_tabular_occlusion_without_background_or_baseline_is_refused():
    served, _ = served_linear("tab", (6,), 3, layout="tabular")
    with pytest.raises(FailedPrecondition, match="background"):
        Occlusion().parameters({}, ModelView("tabular", served.signature, None), settings(), "logit")
    with pytest.raises(InvalidArgument, match="occlusion.window"):
        Occlusion().parameters({"window": [2]}, ModelView("tabular", served.signature, np.zeros((2, 6))), settings(), "logit")


@pytest.mark.parametrize("method", [Saliency(), InputXGradient(), SmoothGrad(), IntegratedGradients()],
                         ids=lambda m: m.name)
def test_gradient_methods_refuse_a_channel_reduction_on_a_tabular_model(method):
    served, _ = served_linear("tab", (6,), 3, layout="tabular")
    view = ModelView("tabular", served.signature, None, WhiteBox(True))
    with pytest.raises(InvalidArgument) as err:
        method.parameters({"channel_reduction": "max"}, view, settings(), "logit")
    assert err.value.field == f"{method.name}.channel_reduction" and "tabular" in err.value.message
    # Unset or "none" is fine; the parameters as used leave out what does not apply to the model.
    assert "channel_reduction" not in method.parameters({}, view, settings(), "logit")
    assert "channel_reduction" not in method.parameters({"channel_reduction": "NONE"}, view, settings(), "logit")


def test_kernel_shap_with_one_feature_gives_f_x_minus_the_base_value():
    """One player has no proper coalition to sample: phi is f(x) - E[f(background)] exactly (not 0)."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=1).astype(np.float32)
    background = rng.normal(size=(8, 1)).astype(np.float32)

    async def main():
        engine = Engine(settings())
        served, weights = served_linear("tab1", (1,), 3, layout="tabular")
        result, params = await run_method(engine, served, KernelShap(), {}, x, 2, kind="tabular", background=background)
        await engine.close()
        return result, weights

    result, weights = run(main())
    base = np.mean([_score(weights, row, 2, "probability") for row in background])
    np.testing.assert_allclose(result.attribution, [_score(weights, x, 2, "probability") - base], rtol=1e-4, atol=1e-6)
