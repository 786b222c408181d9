"""Pointing game (Zhang et al., ECCV 2016, Top-down Neural Attention by Excitation Backprop): does the
attribution's maximum fall on the object?

hit = 1 if a pixel of largest attribution lies within `tolerance` pixels (Euclidean) of the region,
else 0. Equal maxima all count, as in Quantus's PointingGame (a hit when any of them is on the
object): a tie is not broken by pixel order, which would favour objects near the top left. Figure
`distance`: from the nearest maximum to the region. Defaults: tolerance 0 (Quantus's PointingGame;
Zhang et al. used 15 pixels at 224 x 224). Images only; the request's region is required. No model evaluation.
"""

from __future__ import annotations

from typing import Any


from ..methods.params import IMAGE, Int
from .base import LOCALISATION, Metric, MetricContext, MetricValue


class PointingGame(Metric):
    name = "pointing_game"
    title = "Pointing game"
    reference = "Zhang, Lin, Brandt, Shen & Sclaroff 2016, Top-down Neural Attention by Excitation Backprop"
    description = "1 when the attribution's maximum lies on the object (within the tolerance), else 0."
    category = LOCALISATION
    kinds = IMAGE
    needs_region = True
    figures = ("distance",)
    params = (
        Int("tolerance", 0, "pixels from the region that still count as a hit (Euclidean)", 0),
    )

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricValue:
        region = ctx.region
        maxima = ctx.attribution == ctx.attribution.max()
        # Distance from the nearest maximum to the nearest region pixel (0 inside it).
        from scipy import ndimage  # lazy: scipy is not imported by the server until a request needs it
        distance = float(ndimage.distance_transform_edt(~region)[maxima].min()) if region.any() else float("inf")
        return MetricValue(float(distance <= params["tolerance"]), figures={"distance": distance})
