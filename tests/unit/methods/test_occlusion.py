"""Occlusion through the real engine on linear ONNX models, against Captum's definition by brute
force; its parameter checks."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from explaind.engine.engine import Engine
from explaind.errors import FailedPrecondition, InvalidArgument
from explaind.methods.base import ModelView
from explaind.methods.occlusion import Occlusion

from _linear import linear_score, served_linear, settings
from inprocess import explain, run_method


def occlusion_reference(weights, x, target, score, window, stride, baseline, layout="NCHW"):
    """Captum's Occlusion by brute force: mean over covering windows of f(x) - f(x_occluded)."""
    height, width = (x.shape[1], x.shape[2]) if layout == "NCHW" else (x.shape[0], x.shape[1])
    base = linear_score(weights, x, target, score)
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for y in range(0, height - window[0] + 1, stride[0]):
        for xx in range(0, width - window[1] + 1, stride[1]):
            occluded = x.copy()
            if layout == "NCHW":
                occluded[:, y:y + window[0], xx:xx + window[1]] = baseline
            else:
                occluded[y:y + window[0], xx:xx + window[1], :] = baseline
            total[y:y + window[0], xx:xx + window[1]] += base - linear_score(weights, occluded, target, score)
            count[y:y + window[0], xx:xx + window[1]] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("score", ["probability", "logit"])
def test_image_occlusion_matches_brute_force(layout, score):
    shape = (3, 10, 13) if layout == "NCHW" else (10, 13, 3)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    served, weights = served_linear("lin", shape, 4, layout=layout, max_batch_rows=7)
    result, params = explain(Occlusion(), {"window": [3, 4], "stride": [2, 3], "baseline": 0.5}, served, x, 2, score)
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
    served, weights = served_linear("lin", (3, 16, 16), 3, max_batch_rows=64)
    result, params = explain(Occlusion(), {}, served, x, 0)
    assert params == {"window": [8, 8], "stride": [4, 4], "baseline": 0.0}
    np.testing.assert_allclose(result.attribution, occlusion_reference(weights, x, 0, "probability", (8, 8), (4, 4), 0.0),
                               rtol=1e-4, atol=1e-6)


def test_tabular_occlusion_uses_the_background_mean():
    rng = np.random.default_rng(3)
    x = rng.normal(size=6).astype(np.float32)
    background = rng.normal(size=(20, 6)).astype(np.float32)
    served, weights = served_linear("tab", (6,), 3, layout="tabular")

    async def main():
        engine = Engine(settings())
        result, params = await run_method(engine, served, Occlusion(), {}, x, 1, kind="tabular", background=background)
        explicit, _ = await run_method(engine, served, Occlusion(), {"baseline": -2.0}, x, 1, kind="tabular",
                                       background=background)
        await engine.close()
        return result, explicit

    result, explicit = asyncio.run(main())
    base = linear_score(weights, x, 1, "probability")
    for fill, got in ((background.astype(np.float64).mean(axis=0), result), (np.full(6, -2.0), explicit)):
        expected = []
        for i in range(6):
            replaced = x.astype(np.float64).copy()
            replaced[i] = fill[i]
            expected.append(base - linear_score(weights, replaced, 1, "probability"))
        np.testing.assert_allclose(got.attribution, expected, rtol=1e-4, atol=1e-6)


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


# Window order and partial answers (allow_partial) ------------------------------------------------

def test_windows_go_coarse_to_fine_and_every_one_once():
    from explaind.methods.occlusion import coarse_to_fine

    iy, ix = coarse_to_fine(15, 15)
    assert sorted(zip(iy.tolist(), ix.tolist())) == [(y, x) for y in range(15) for x in range(15)]
    assert list(zip(iy[:4].tolist(), ix[:4].tolist())) == [(0, 0), (0, 8), (8, 0), (8, 8)]
    # The windows on every other position come first: with window 8 and stride 4 on 64 pixels they
    # are 64 of the 225 and tile the whole image.
    first = {(y, x) for y, x in zip(iy[:64].tolist(), ix[:64].tolist())}
    assert first == {(y, x) for y in range(0, 15, 2) for x in range(0, 15, 2)}
    covered = np.zeros((64, 64), bool)
    for y, x in first:
        covered[4 * y:4 * y + 8, 4 * x:4 * x + 8] = True
    assert covered.all()


def test_occlusion_reducer_on_a_prefix_of_the_windows_leaves_the_others_out():
    from explaind.methods.occlusion import ImageOcclusionReducer
    from explaind.onnxgraph.variants import SCORE_OUTPUT

    reducer = ImageOcclusionReducer(4, 4)
    assert reducer.partial_unavailable() == "no occluded window was evaluated"
    windows = np.array([[0, 0, 0, 0], [0, 0, 2, 2], [1, 1, 3, 3]])
    reducer.consume({"window": windows[:1]}, {SCORE_OUTPUT: np.array([0.9], np.float32)}, {})
    assert reducer.partial_unavailable() == "no occluded window was evaluated"  # the unoccluded input alone
    reducer.consume({"window": windows[1:]}, {SCORE_OUTPUT: np.array([0.5, 0.7], np.float32)}, {})
    assert reducer.partial_unavailable() == ""
    expected = np.zeros((4, 4))
    expected[0:2, 0:2] += 0.9 - 0.5
    expected[1:3, 1:3] += 0.9 - 0.7
    expected[1, 1] = 0.9 - (0.5 + 0.7) / 2
    np.testing.assert_allclose(reducer.attribution(), expected, atol=1e-6)


def test_occlusion_cut_by_the_deadline_is_occlusion_over_the_windows_used():
    import time

    from inprocess import slowed

    x = np.random.default_rng(3).normal(size=(3, 40, 40)).astype(np.float32)
    served, weights = served_linear("lin", (3, 40, 40), 3, max_batch_rows=16)
    params = {"window": [4, 4], "stride": [1, 1], "baseline": 0.0}

    async def main():
        engine = Engine(settings())
        try:
            await run_method(engine, served, Occlusion(), {**params, "stride": [20, 20]}, x, 1)  # session built
            return await run_method(engine, served, slowed(Occlusion(), 0.02), params, x, 1,
                                    deadline=time.monotonic() + 1.0, allow_partial=True)
        finally:
            await engine.close()

    outcome, _ = asyncio.run(main())
    rows = outcome.model_evaluations - 1
    assert not outcome.complete and 16 <= rows < 1 + 37 * 37 and outcome.planned_evaluations == 2 + 37 * 37
    # The reference: the first rows - 1 windows in the service's order, by brute force.
    from explaind.methods.occlusion import coarse_to_fine

    iy, ix = coarse_to_fine(37, 37)
    base = linear_score(weights, x, 1, "probability")
    total, count = np.zeros((40, 40)), np.zeros((40, 40))
    for y, xx in list(zip(iy, ix))[: rows - 1]:
        occluded = x.copy()
        occluded[:, y:y + 4, xx:xx + 4] = 0.0
        total[y:y + 4, xx:xx + 4] += base - linear_score(weights, occluded, 1, "probability")
        count[y:y + 4, xx:xx + 4] += 1
    expected = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    np.testing.assert_allclose(outcome.attribution, expected, rtol=1e-4, atol=1e-6)
    assert np.nonzero(count.any(axis=1))[0].max() >= 32  # coarse to fine: not only the top rows
