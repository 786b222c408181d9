"""The evaluation metrics explaind offers, by the Metric oneof's field name (one module per metric)."""

from __future__ import annotations

from .base import Metric
from .deletion import Deletion
from .insertion import Insertion
from .pointing_game import PointingGame

# @imports-faithfulness

# @imports-robustness
from .adversarial_stability import AdversarialStability
from .avg_sensitivity import AvgSensitivity
from .local_lipschitz import LocalLipschitz
from .max_sensitivity import MaxSensitivity
from .random_logit import RandomLogit

# @imports-localisation

# @imports-randomisation

# @imports-complexity

METRICS: tuple[type[Metric], ...] = (
    # faithfulness
    Deletion, Insertion,
    # @faithfulness

    # robustness
    MaxSensitivity, AvgSensitivity, LocalLipschitz, AdversarialStability, RandomLogit,
    # @robustness

    # localisation
    PointingGame,
    # @localisation

    # randomisation
    # @randomisation

    # complexity and axiomatic
    # @complexity
)


def all_metrics() -> dict[str, Metric]:
    return {m.name: m() for m in METRICS}
