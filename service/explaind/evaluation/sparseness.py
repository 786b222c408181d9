"""Sparseness (Chalasani, Chen, Chowdhury, Wu & Jha, ICML 2020, Concise Explanations of Neural
Networks using Adversarial Training, section 5): the Gini index of the attribution's magnitudes.

With v = |a| / max |a| + 1e-7 (P pixels or features) sorted ascending, v_(1) <= ... <= v_(P):

    G = sum_i (2 i - P - 1) v_(i) / (P * sum_i v_(i))

1 when one value holds everything, 0 when all are equal. Defaults as Quantus's Sparseness: abs true
(with abs false the signed values are used as they are and G has no bound); the scaling by the
maximum and the 1e-7 are Quantus's (its normalise default and its epsilon), kept so the figures agree:
the epsilon makes a zero map score 0 and weighs the same whatever the map's scale. Images (per pixel)
and tabular models (per feature). No model evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.params import ANY_KIND, Bool
from .base import COMPLEXITY, Metric, MetricContext, MetricValue

EPSILON = 1e-7


def gini(values: np.ndarray) -> float:
    v = np.sort(np.asarray(values, np.float64).reshape(-1))
    n = len(v)
    weights = 2 * np.arange(1, n + 1) - n - 1
    total = float(v.sum())
    return float((weights * v).sum() / (n * total)) if total != 0 else 0.0


class Sparseness(Metric):
    name = "sparseness"
    title = "Sparseness (Gini index)"
    reference = "Chalasani, Chen, Chowdhury, Wu & Jha 2020, Concise Explanations of Neural Networks using " \
                "Adversarial Training"
    description = "Gini index of the attribution's magnitudes: 1 when one value holds everything, 0 when uniform."
    category = COMPLEXITY
    kinds = ANY_KIND
    params = (
        Bool("abs", True, "measure abs(a) (false: the signed values as they are)"),
    )

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricValue:
        a = np.asarray(ctx.attribution, np.float64).reshape(-1)
        top = float(np.abs(a).max())
        if top > 0:
            a = a / top
        if params["abs"]:
            a = np.abs(a)
        return MetricValue(gini(a + EPSILON))
