"""Intersection over union of the region and the thresholded map, as weakly supervised localisation
scores a map (Zhou et al., CVPR 2016, CAM, section 3.1: keep the pixels above 20% of the map's
maximum and compare them with the object).

    S = {p : a_p > 0 and a_p >= threshold * max_q a_q}        value = |S ∩ R| / |S ∪ R|

with R the region (box or mask). Only positive attribution is kept (negative evidence does not point
at the object): a map with no positive value selects nothing and scores 0. threshold 0 keeps every
positive pixel, 1 only the maxima. Default threshold 0.2 (Zhou et al.'s CAM boxes). explaind compares
the selected pixels with the region directly, where CAM drew a box around the largest connected
component first. Quantus has no such metric. Images only; the request's region is required. No
model evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.params import IMAGE, Float
from .base import LOCALISATION, Metric, MetricContext, MetricValue
from .localisation import flat


class Iou(Metric):
    name = "iou"
    title = "Intersection over union"
    reference = "Zhou, Khosla, Lapedriza, Oliva & Torralba 2016, Learning Deep Features for Discriminative " \
                "Localization"
    description = "Intersection over union of the object and the pixels above a fraction of the map's maximum."
    category = LOCALISATION
    kinds = IMAGE
    needs_region = True
    figures = ("selected",)
    params = (
        Float("threshold", 0.2, "keep the positive pixels at or above this fraction of the map's maximum", 0.0, 1.0),
    )

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricValue:
        a, region = flat(ctx)
        top = float(a.max())
        selected = (a > 0) & (a >= params["threshold"] * top) if top > 0 else np.zeros_like(region)
        union = int((selected | region).sum())
        value = int((selected & region).sum()) / union
        return MetricValue(value, figures={"selected": float(selected.mean())})
