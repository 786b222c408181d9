"""Relevance mass accuracy (Arras, Osman & Samek, Information Fusion 2022, CLEVR-XAI, section 4.2):
the share of the map's total relevance that lies on the object.

    value = sum_{p in R} a_p / sum_p a_p

with R the region (box or mask); a_p replaced by |a_p| when `abs` is set. Defaults as Quantus's
RelevanceMassAccuracy: abs false (signed values, so the value leaves [0, 1] when negative relevance
outweighs positive). Quantus also scales the map by its maximum |a| first (normalise, default on),
which leaves the ratio unchanged, so explaind has no such parameter. NaN when the total is 0 (as
Quantus's 0 / 0). Images only; the request's region is required. No model evaluation.
"""

from __future__ import annotations

from typing import Any

from ..methods.params import IMAGE, Bool
from .base import LOCALISATION, Metric, MetricContext, MetricValue
from .localisation import flat


class RelevanceMass(Metric):
    name = "relevance_mass"
    title = "Relevance mass accuracy"
    reference = "Arras, Osman & Samek 2022, CLEVR-XAI: A benchmark dataset for the ground truth evaluation " \
                "of neural network explanations"
    description = "Share of the map's total relevance that lies on the object."
    category = LOCALISATION
    kinds = IMAGE
    needs_region = True
    params = (
        Bool("abs", False, "score abs(a) instead of the signed attribution"),
    )

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricValue:
        a, region = flat(ctx, params["abs"])
        total = float(a.sum())
        return MetricValue(float(a[region].sum()) / total if total != 0 else float("nan"))
