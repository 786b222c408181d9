"""IROF through the real engine on linear ONNX models, against the definition written out in numpy:
SLIC segments of the input, removed by mean attribution, the area over the relative score curve."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import slic

from explaind.errors import FailedPrecondition
from explaind.evaluation.irof import Irof, most_segments

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
    assert count <= most_segments(view_of(served))


def test_images_only():
    tab, _ = served_linear("tab", (5,), 2)
    from explaind.config import Settings
    from explaind.evaluation.run import prepare_metrics, MetricQuery
    with pytest.raises(FailedPrecondition) as err:
        prepare_metrics([MetricQuery("irof", {})], view_of(tab, kind="tabular"), Settings(), method_rows=0,
                        has_method=False, region=None, field="metrics")
    assert "does not apply to tabular models" in err.value.message
