"""RISE through the real engine on linear ONNX models, against its definition drawing the same codes
from the same seed; batching independence; its parameter checks."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest

from explaind.engine.engine import Engine
from explaind.errors import DeadlineExceeded, InvalidArgument
from explaind.methods.base import ModelView
from explaind.methods.rise import Rise

from _linear import linear_score, served_linear, settings
from inprocess import explain, run_method, slowed


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


def rise_reference(weights, x, target, n, s, p, baseline, seed, chunk=256, used=None):
    """RISE from its definition, drawing the same codes from the same seed as the service; `used`: over
    the first `used` of the n masks only (a partial answer)."""
    used = n if used is None else used
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
        for row, (grid, (dy, dx)) in enumerate(zip(grids, shifts), start):
            if row >= used:
                break
            mask = (up_y @ grid @ up_x.T)[dy:dy + height, dx:dx + width]
            perturbed = x * mask + baseline * (1 - mask)
            saliency += linear_score(weights, perturbed, target, "probability") * mask
    return saliency / (used * p)


@pytest.mark.parametrize("baseline", [0.0, 0.25])  # 0 takes the variant without a fill input
def test_rise_matches_its_definition_for_the_same_codes(baseline):
    x = np.random.default_rng(4).normal(size=(3, 12, 9)).astype(np.float32)
    served, weights = served_linear("lin", (3, 12, 9), 3, max_batch_rows=32)
    result, params = explain(Rise(), {"num_masks": 300, "grid_size": 4, "keep_probability": 0.3, "baseline": baseline},
                             served, x, 1, seed=77)
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

    solo = asyncio.run(one(64, False))
    again = asyncio.run(one(64, False))
    crowded = asyncio.run(one(5, True))
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


# Partial answers at the deadline (allow_partial) -------------------------------------------------

RISE_PARAMS = {"num_masks": 3000, "grid_size": 4, "keep_probability": 0.3}


def rise_at_deadline(seconds: float, *, allow_partial: bool = True, fold_seconds: float = 0.02,
                     margin_ms: float = 50.0, **params):
    """RISE of 3000 masks in batches of 16, each folded in `fold_seconds`, with a deadline `seconds` away
    (the session built beforehand); returns (outcome, partial maps with their stats)."""
    x = np.random.default_rng(4).normal(size=(3, 12, 9)).astype(np.float32)
    served, weights = served_linear("lin", (3, 12, 9), 3, max_batch_rows=16)
    maps = []

    async def main():
        engine = Engine(settings(partial_margin_ms=margin_ms, partial_every=0.01))
        try:
            await run_method(engine, served, Rise(), {**RISE_PARAMS, "num_masks": 10}, x, 1)
            return await run_method(engine, served, slowed(Rise(), fold_seconds), {**RISE_PARAMS, **params}, x, 1,
                                    seed=77, deadline=time.monotonic() + seconds, allow_partial=allow_partial,
                                    on_partial=lambda a, stats: maps.append((a, stats)))
        finally:
            await engine.close()

    outcome, _ = asyncio.run(main())
    return outcome, maps, (weights, x)


def test_rise_cut_by_the_deadline_is_rise_over_the_masks_used():
    outcome, maps, (weights, x) = rise_at_deadline(1.5)
    assert not outcome.complete
    masks = outcome.model_evaluations - 1  # after the prediction's row
    assert 16 <= masks < 3000 and masks % 16 == 0, masks  # whole batches, not all of them
    assert outcome.planned_evaluations == 3001 and outcome.batches == 1 + masks // 16 and outcome.stages == 2
    expected = rise_reference(weights, x, 1, 3000, 4, 0.3, 0.0, seed=77, used=masks)
    np.testing.assert_allclose(outcome.attribution, expected, rtol=1e-4, atol=1e-6)
    # Partial maps on the way: RISE over the masks their stats count, which grow.
    assert len(maps) >= 3
    counts = [stats.model_evaluations for _, stats in maps]
    assert counts == sorted(set(counts)) and counts[-1] <= outcome.model_evaluations
    assert all(stats.planned_evaluations == 3001 and stats.batches == 1 + (stats.model_evaluations - 1) // 16
               for _, stats in maps)
    first, stats = maps[0]
    np.testing.assert_allclose(first, rise_reference(weights, x, 1, 3000, 4, 0.3, 0.0, seed=77,
                                                     used=stats.model_evaluations - 1), rtol=1e-4, atol=1e-6)


def test_rise_with_time_to_spare_is_complete_with_or_without_allow_partial():
    for allow_partial in (True, False):
        outcome, _, _ = rise_at_deadline(60.0, allow_partial=allow_partial, fold_seconds=0.0, num_masks=300)
        assert outcome.complete
        assert outcome.model_evaluations == outcome.planned_evaluations == 301


def test_rise_without_allow_partial_exceeds_the_deadline():
    with pytest.raises(DeadlineExceeded):
        rise_at_deadline(1.0, allow_partial=False)


def test_rise_stopped_before_any_mask_says_so():
    # The stop comes margin_ms before the deadline: here at once, before a batch is folded in.
    with pytest.raises(DeadlineExceeded) as err:
        rise_at_deadline(30.0, margin_ms=30_000)
    assert "too few for a partial answer: no mask was evaluated" in err.value.message
    assert "after 0 of 3000 rows" in err.value.message
