"""Energy-based pointing game (Wang et al., CVPR Workshops 2020, Score-CAM, section 4.3): the share
of the map's positive attribution ("energy") that falls on the object.

    value = sum_{p in R} max(a_p, 0) / sum_p max(a_p, 0)

with R the region (box or mask); 0 when the map has no positive value. Score-CAM's maps are
non-negative; keeping only the positive part lets signed maps (gradients, IG) be scored the same way:
negative evidence is not energy pointing at the object. No parameters. Quantus has no metric of this
name; its AttributionLocalisation (Kohlbrenner et al. 2020) with positive_attributions=True and
abs=False computes the same ratio (its 1e-9 in the denominator aside). Images only; the request's
region is required. No model evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.params import IMAGE
from .base import LOCALISATION, Metric, MetricContext, MetricValue
from .localisation import flat


class EnergyPointingGame(Metric):
    name = "energy_pointing_game"
    title = "Energy-based pointing game"
    reference = "Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu 2020, Score-CAM: Score-Weighted Visual " \
                "Explanations for Convolutional Neural Networks"
    description = "Share of the map's positive attribution that lies on the object."
    category = LOCALISATION
    kinds = IMAGE
    needs_region = True

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricValue:
        a, region = flat(ctx)
        energy = np.maximum(a, 0.0)
        total = float(energy.sum())
        return MetricValue(float(energy[region].sum()) / total if total > 0 else 0.0)
