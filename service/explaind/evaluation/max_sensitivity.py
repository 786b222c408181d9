"""Max-sensitivity (Yeh, Hsieh, Suggala, Inouye & Ravikumar, NeurIPS 2019, On the (In)fidelity and
Sensitivity of Explanations, section 4; Quantus MaxSensitivity): the largest relative change of the
explanation when the input moves a little.

Draw N noisy copies x_i = x + u_i, u_i uniform on [-r, r] on every input element (model input space,
all channels), re-explain each with the request's method for the same class, and compare each map
a_i with the judged map a (both flattened, Frobenius / L2 norms as Quantus's defaults):

    s_i = ||a - a_i||_2 / ||a||_2,        max-sensitivity = max_i s_i

Lower is better (0: the explanation does not move). Defaults are Quantus's: N = `nr_samples` 200,
r = `lower_bound` 0.2, no normalisation of the maps (`normalise`: divide each map by its largest
absolute value first, Quantus's normalise_by_max). Curves: `sensitivities` [N], every s_i in draw
order. Cost: N re-explanations (each its prediction row and the method's rows), run concurrently.

Differences from Quantus, on purpose: Quantus's `upper_bound` (noise on [lower, upper], one-signed)
and `return_nan_when_prediction_changes` are not offered (the noise is symmetric, and the maps of
every copy count, as Quantus's defaults do); an all-zero judged map gives 0 when no copy's map moved
and inf otherwise (Quantus divides by zero); the maps compared are the explanation's ([H, W] per pixel
as ExplainResponse.attribution), where Quantus compares whatever its explain_func returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.base import ModelView
from ..methods.params import ANY_KIND, Bool, Float, Int
from .base import ROBUSTNESS, Metric, MetricContext, MetricSteps, MetricValue
from .reexplained import UNIFORM, explanation_rows, flat, noisy_copies, norm_ratio, normalise_by_max


def sensitivity_params() -> tuple:
    return (
        Int("nr_samples", 200, "noisy copies of the input, each re-explained", 1,
            lambda lim: lim.settings.max_rows_per_request),
        Float("lower_bound", 0.2, "noise uniform on [-lower_bound, lower_bound] per input element (model input space)",
              0.0, exclusive_low=True),
        Bool("normalise", False, "divide each map by its largest absolute value before comparing"),
    )


def sensitivities(ctx: MetricContext, maps: list[np.ndarray], normalise: bool) -> np.ndarray:
    """||a - a_i|| / ||a|| for every re-explained map a_i."""
    prepare = normalise_by_max if normalise else np.asarray
    a = flat(prepare(ctx.attribution))
    denominator = float(np.linalg.norm(a))
    return np.array([norm_ratio(float(np.linalg.norm(a - flat(prepare(m)))), denominator) for m in maps])


class MaxSensitivity(Metric):
    name = "max_sensitivity"
    title = "Max-sensitivity"
    reference = "Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, On the (In)fidelity and Sensitivity of Explanations"
    description = "Largest relative change of the explanation under small uniform input noise (lower is better)."
    category = ROBUSTNESS
    kinds = ANY_KIND
    reexplains = True
    higher_is_better = False
    curves = ("sensitivities",)
    params = sensitivity_params()

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        return params["nr_samples"] * explanation_rows(method_rows)

    def aggregate(self, values: np.ndarray) -> float:
        return float(np.max(values))

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        copies = noisy_copies(ctx.x, ctx.rng, params["nr_samples"], UNIFORM, params["lower_bound"])
        maps = yield ctx.reexplain_all(copies)
        values = sensitivities(ctx, maps, params["normalise"])
        return MetricValue(self.aggregate(values), curves={"sensitivities": values})
