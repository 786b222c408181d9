"""Relevance rank accuracy (Arras, Osman & Samek, Information Fusion 2022, CLEVR-XAI, section 4.2):
the share of the K most relevant pixels that lie on the object, K the object's size in pixels.

    value = |top_K(a) ∩ R| / K,   K = |R|

with R the region (box or mask); a_p replaced by |a_p| when `abs` is set. Defaults as Quantus's
RelevanceRankAccuracy: abs false. Quantus's normalise (scaling by max |a|) does not change the
order, so explaind has no such parameter. Differs from Quantus on purpose only where equal values
straddle the K-th place: explaind counts those pixels by expectation over the ways to break the tie
(evaluation/localisation.py), where Quantus's answer depends on numpy's unstable sort. Images only;
the request's region is required. No model evaluation.
"""

from __future__ import annotations

from typing import Any

from ..methods.params import IMAGE, Bool
from .base import LOCALISATION, Metric, MetricContext, MetricValue
from .localisation import flat, top_k_in_region


class RelevanceRank(Metric):
    name = "relevance_rank"
    title = "Relevance rank accuracy"
    reference = "Arras, Osman & Samek 2022, CLEVR-XAI: A benchmark dataset for the ground truth evaluation " \
                "of neural network explanations"
    description = "Share of the K most relevant pixels on the object, K the object's size."
    category = LOCALISATION
    kinds = IMAGE
    needs_region = True
    params = (
        Bool("abs", False, "rank abs(a) instead of the signed attribution"),
    )

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricValue:
        a, region = flat(ctx, params["abs"])
        k = int(region.sum())
        return MetricValue(top_k_in_region(a, region, k) / k)
