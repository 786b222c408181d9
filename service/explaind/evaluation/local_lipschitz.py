"""Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018, On the Robustness of Interpretability
Methods, and Towards Robust Interpretability with Self-Explaining Neural Networks; Quantus
LocalLipschitzEstimate): how much the explanation can move per unit of input movement near x.

Alvarez-Melis & Jaakkola define L(x) = max over x' in a ball around x of ||a(x) - a(x')|| / ||x - x'||
and estimate the maximum by sampling. Here, as in Quantus: N copies x_i = x + e_i, e_i Gaussian of
mean 0 and standard deviation sigma on every input element (model input space), each re-explained
with the request's method for the same class; maps flattened, Euclidean distances:

    L_i = ||a - a_i||_2 / (||x - x_i||_2 + 1e-10),        estimate = max_i L_i

Lower is better. Defaults are Quantus's: `nr_samples` 200, `perturb_std` 0.1, and the maps normalised
(`normalise` true: each divided by its largest absolute value, Quantus's normalise_by_max, so the
estimate does not scale with the map's units). Curves: `lipschitz` [N], every L_i in draw order.
Cost: N re-explanations, run concurrently.

Differences from Quantus, on purpose: `return_nan_when_prediction_changes` is not offered (every copy
counts, as Quantus's default); the maps compared are the explanation's ([H, W] per pixel for images).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.base import ModelView
from ..methods.params import ANY_KIND, Bool, Float, Int
from .base import ROBUSTNESS, Metric, MetricContext, MetricSteps, MetricValue
from .reexplained import GAUSSIAN, explanation_rows, flat, noisy_copies, normalise_by_max

EPSILON = 1e-10  # Quantus's lipschitz_constant: added to the input distance


class LocalLipschitz(Metric):
    name = "local_lipschitz"
    title = "Local Lipschitz estimate"
    reference = "Alvarez-Melis & Jaakkola 2018, On the Robustness of Interpretability Methods"
    description = "Largest ratio of explanation change to input change under Gaussian input noise (lower is better)."
    category = ROBUSTNESS
    kinds = ANY_KIND
    reexplains = True
    higher_is_better = False
    curves = ("lipschitz",)
    params = (
        Int("nr_samples", 200, "noisy copies of the input, each re-explained", 1,
            lambda lim: lim.settings.max_rows_per_request),
        Float("perturb_std", 0.1, "standard deviation of the Gaussian noise per input element (model input space)",
              0.0, exclusive_low=True),
        Bool("normalise", True, "divide each map by its largest absolute value before comparing"),
    )

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        return params["nr_samples"] * explanation_rows(method_rows)

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        copies = noisy_copies(ctx.x, ctx.rng, params["nr_samples"], GAUSSIAN, params["perturb_std"])
        maps = yield ctx.reexplain_all(copies)
        prepare = normalise_by_max if params["normalise"] else np.asarray
        a, x = flat(prepare(ctx.attribution)), flat(ctx.x)
        values = np.array([np.linalg.norm(a - flat(prepare(m))) / (np.linalg.norm(x - flat(c)) + EPSILON)
                           for m, c in zip(maps, copies)])
        return MetricValue(float(np.max(values)), curves={"lipschitz": values})
