"""Avg-sensitivity (Yeh, Hsieh, Suggala, Inouye & Ravikumar, NeurIPS 2019, On the (In)fidelity and
Sensitivity of Explanations; Bhatt, Weller & Moura, IJCAI 2020; Quantus AvgSensitivity): the mean
relative change of the explanation when the input moves a little.

As max-sensitivity (evaluation/max_sensitivity.py: N copies x_i = x + u_i, u_i uniform on [-r, r]
per input element, each re-explained with the request's method), averaged instead of maximised:

    s_i = ||a - a_i||_2 / ||a||_2,        avg-sensitivity = (1 / N) sum_i s_i

a Monte Carlo estimate of E_u ||a(x) - a(x + u)|| / ||a(x)||. Lower is better. Defaults are
Quantus's: `nr_samples` 200, `lower_bound` 0.2, no normalisation. Curves: `sensitivities` [N].
The differences from Quantus are max-sensitivity's (no upper_bound, no NaN on a changed prediction,
0 / 0 = 0 and x / 0 = inf for an all-zero judged map).
"""

from __future__ import annotations

import numpy as np

from .max_sensitivity import MaxSensitivity, sensitivity_params


class AvgSensitivity(MaxSensitivity):
    name = "avg_sensitivity"
    title = "Avg-sensitivity"
    reference = ("Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, On the (In)fidelity and Sensitivity of "
                 "Explanations; Bhatt, Weller & Moura 2020")
    description = "Mean relative change of the explanation under small uniform input noise (lower is better)."
    params = sensitivity_params()

    def aggregate(self, values: np.ndarray) -> float:
        return float(np.mean(values))
