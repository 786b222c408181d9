"""What the re-explaining metrics share (max- and avg-sensitivity, local Lipschitz estimate, random
logit, adversarial stability): the cost of one re-explanation, noisy copies of the input drawn from
the metric's generator, and the map comparisons (Quantus's `normalise_by_max`, a ratio of norms).

A re-explanation is the request's method (same parameters) run on another input or for another
class, through the engine like any request: its prediction row and the method's own rows. The
perturbed inputs are whole examples in model input space (the method then builds its rows from each
in the graph as it does for any input).
"""

from __future__ import annotations

import numpy as np


UNIFORM, GAUSSIAN = "uniform", "gaussian"


def explanation_rows(method_rows: int) -> int:
    """Model evaluations of one re-explanation: the prediction of its input and the method's rows
    (`method_rows` as the request's explanation plans them; 0 for a method that cannot say in
    advance, such as the gradient methods' single row, which then goes uncounted in the plan)."""
    return method_rows + 1


def noisy_copies(x: np.ndarray, rng: np.random.Generator, samples: int, kind: str, scale: float) -> list[np.ndarray]:
    """`samples` copies of x plus independent noise on every element: uniform on [-scale, scale] or
    Gaussian of standard deviation `scale` (float64 draws, the copies float32 as the model takes)."""
    x64 = np.asarray(x, np.float64)
    copies = []
    for _ in range(samples):
        noise = rng.uniform(-scale, scale, size=x64.shape) if kind == UNIFORM else rng.normal(0.0, scale, size=x64.shape)
        copies.append((x64 + noise).astype(np.float32))
    return copies


def normalise_by_max(a: np.ndarray) -> np.ndarray:
    """a / max |a| (Quantus's normalise_by_max over one map); an all-zero map stays as it is."""
    a = np.asarray(a, np.float64)
    peak = np.max(np.abs(a)) if a.size else 0.0
    return a if peak == 0 else a / peak


def flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float64).reshape(-1)


def norm_ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, with 0 / 0 = 0 (nothing moved) and x / 0 = inf (an all-zero map that
    moved); Quantus divides as it is (nan and inf with warnings)."""
    if denominator == 0:
        return 0.0 if numerator == 0 else float("inf")
    return float(numerator / denominator)


