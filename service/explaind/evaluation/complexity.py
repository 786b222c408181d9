"""Complexity (Bhatt, Weller & Moura, IJCAI 2020, Evaluating and Aggregating Feature-based Model
Explanations, section 4.2): the entropy of the fractional contributions.

    p_i = a_i / sum_j |a_j|        H = - sum_i p_i ln(p_i + 1e-12)

over the P pixels or features, a_i replaced by |a_i| when `abs` is set: 0 when one value holds
everything, ln P when all are equal (natural logarithm, nats). Defaults as Quantus's Complexity: abs
true; the 1e-12 is Quantus's (so a zero contribution adds 0); its normalise (scaling by max |a|)
leaves p unchanged, so explaind has no such parameter. NaN where the entropy is undefined, as in
Quantus: a map that is zero everywhere, or negative values with abs false. Images (per pixel) and
tabular models (per feature). No model evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.params import ANY_KIND, Bool
from .base import COMPLEXITY, Metric, MetricContext, MetricValue

EPSILON = 1e-12


class Complexity(Metric):
    name = "complexity"
    title = "Complexity (entropy)"
    reference = "Bhatt, Weller & Moura 2020, Evaluating and Aggregating Feature-based Model Explanations"
    description = "Entropy of the fractional contributions abs(a_i) / sum abs(a): lower is a more concise map."
    category = COMPLEXITY
    kinds = ANY_KIND
    higher_is_better = False
    params = (
        Bool("abs", True, "measure abs(a) (false: signed values; NaN if any is negative)"),
    )

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricValue:
        a = np.asarray(ctx.attribution, np.float64).reshape(-1)
        if params["abs"]:
            a = np.abs(a)
        total = float(np.abs(a).sum())
        if total == 0 or (a < 0).any():
            return MetricValue(float("nan"))
        p = a / total
        return MetricValue(float(-(p * np.log(p + EPSILON)).sum()))
