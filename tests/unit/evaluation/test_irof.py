"""IROF through the real engine on linear ONNX models, against the definition written out in numpy:
SLIC segments of the input, removed by mean attribution, the area over the relative score curve."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import slic

from explaind.errors import FailedPrecondition
from explaind.evaluation.irof import Irof

from _linear import linear_score, served_linear
from inprocess import evaluate, view_of


def smooth_image(rng, channels, size):
    """Blocks of colour, so that SLIC finds several segments."""
    blocks = rng.uniform(0, 1, size=(channels, 4, 4))
    return np.kron(blocks, np.ones((size // 4, size // 4))).astype(np.float32) + \
        0.01 * rng.normal(size=(channels, size, size)).astype(np.float32)


@pytest.mark.parametrize("baseline", ["mean", "black"])
def test_area_over_the_curve_of_segment_removal(baseline):
    rng = np.random.default_rng(41)
    x = smooth_image(rng, 3, 16)
    attribution = rng.normal(size=(16, 16))
    served, weights = served_linear("lin", (3, 16, 16), 3, max_batch_rows=64)
    outcome, params = evaluate(Irof(), {"baseline": baseline}, served, x, 1, attribution)
    assert params == {"baseline": baseline}
    labels = slic(np.moveaxis(x, 0, -1).astype(np.float64), start_label=0)
    count = len(np.unique(labels))
    assert count > 5
    means = np.array([attribution[labels == s].mean() for s in range(count)])
    current = x.astype(np.float64).copy()
    start = linear_score(weights, x, 1, "probability")
    scores = []
    for s in np.argsort(-means, kind="stable"):
        value = current.mean() if baseline == "mean" else current.min()
        current[:, labels == s] = value
        scores.append(linear_score(weights, current, 1, "probability") / start)
    scores = np.array(scores)
    np.testing.assert_allclose(outcome.value.curves["scores"], scores, rtol=1e-5, atol=1e-6)
    area = count - sum((scores[i] + scores[i + 1]) / 2 for i in range(count - 1))
    assert outcome.value.value == pytest.approx(area, rel=1e-5)
    assert outcome.value.figures == {"normalised": pytest.approx(area / count, rel=1e-5), "segment_count": count}
    assert outcome.stats.model_evaluations == count


def test_images_only():
    tab, _ = served_linear("tab", (5,), 2)
    from explaind.config import Settings
    from explaind.evaluation.run import prepare_metrics, MetricQuery
    with pytest.raises(FailedPrecondition) as err:
        prepare_metrics([MetricQuery("irof", {})], view_of(tab, kind="tabular"), Settings(), method_rows=0,
                        has_method=False, region=None, field="metrics",
                        x=np.zeros(tab.signature.example_shape, np.float32))
    assert "does not apply to tabular models" in err.value.message


def test_the_plan_is_the_segment_count_so_progress_reaches_its_total():
    """The input is segmented at planning: the rows planned (budget and admission) are the rows run,
    and the metrics' progress ends at rows_done == rows_total (it ended below: the plan was an upper
    bound of SLIC's segments, 256 here)."""
    import asyncio

    from explaind.config import Settings
    from explaind.engine.engine import Engine
    from explaind.evaluation.run import GivenAttribution, MetricQuery, prepare_metrics, run_metrics
    from explaind.methods.base import MethodContext

    rng = np.random.default_rng(43)
    x = smooth_image(rng, 3, 16)
    attribution = rng.normal(size=(16, 16))
    served, _ = served_linear("lin", (3, 16, 16), 3, max_batch_rows=4)
    view = view_of(served)
    count = len(np.unique(slic(np.moveaxis(x, 0, -1).astype(np.float64), start_label=0)))
    prepared = prepare_metrics([MetricQuery("irof", {})], view, Settings(), method_rows=0, has_method=False,
                               region=None, field="metrics", x=x)
    assert count > 5 and prepared[0].rows == prepared[0].engine_rows == count
    progress: list[tuple[int, int]] = []

    async def main():
        engine = Engine(Settings(intra_op_threads=1))
        try:
            ctx = MethodContext(engine=engine, served=served, model=view, x=x, score="probability",
                                rng=np.random.default_rng(0), settings=engine.settings, choose_target=lambda _: 1)
            await GivenAttribution(attribution.astype(np.float32)).explain({}, ctx)
            return await run_metrics(prepared, ctx, attribution, 5, None, None,
                                     lambda done, total: progress.append((done, total)))
        finally:
            await engine.close()

    (outcome,) = asyncio.run(main())
    assert outcome.stats.model_evaluations == outcome.value.figures["segment_count"] == count
    assert len(progress) > 1 and {total for _, total in progress} == {count}
    assert progress[-1] == (count, count)
    # The same figures as when the stage segments for itself (no plan in the memo).
    alone, _ = evaluate(Irof(), {}, served, x, 1, attribution)
    np.testing.assert_array_equal(alone.value.curves["scores"], outcome.value.curves["scores"])
