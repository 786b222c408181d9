"""Top-k intersection (Theiner, Müller-Budack & Ewerth, WACV 2022, Interpretable Semantic Photo
Geolocation): the share of the k most relevant pixels that lie on the object.

    value = |top_k(a) ∩ R| / k          (concept_influence: times P / |R|, P the pixel count)

with R the region (box or mask); a_p replaced by |a_p| when `abs` is set. Defaults as Quantus's
TopKIntersection: k 1000 (here at most P: a smaller image takes all its pixels, where Quantus refuses
k >= P), concept_influence false, abs false; Quantus's normalise (scaling by max |a|) does not
change the order, so explaind has no such parameter. Ties at the k-th place are counted by
expectation (evaluation/localisation.py), where Quantus's answer depends on numpy's unstable sort.
Images only; the request's region is required. No model evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.params import IMAGE, Bool, Int, Limits
from .base import LOCALISATION, Metric, MetricContext, MetricValue
from .localisation import flat, top_k_in_region

K = 1000


def pixels(limits: Limits) -> int:
    return int(np.prod(limits.model.signature.spatial_shape))


class TopKIntersection(Metric):
    name = "top_k_intersection"
    title = "Top-k intersection"
    reference = "Theiner, Müller-Budack & Ewerth 2022, Interpretable Semantic Photo Geolocation"
    description = "Share of the k most relevant pixels that lie on the object."
    category = LOCALISATION
    kinds = IMAGE
    needs_region = True
    params = (
        Int("k", lambda lim: min(K, pixels(lim)), "how many of the most relevant pixels are checked", 1, pixels,
            shown=f"{K} or the pixel count if fewer"),
        Bool("concept_influence", False, "scale by the pixel count over the object's size"),
        Bool("abs", False, "rank abs(a) instead of the signed attribution"),
    )

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricValue:
        a, region = flat(ctx, params["abs"])
        k = params["k"]
        value = top_k_in_region(a, region, k) / k
        if params["concept_influence"]:
            value *= len(a) / int(region.sum())
        return MetricValue(value)
