"""The evaluation metrics explaind offers, by the Metric oneof's field name (one module per metric)."""

from __future__ import annotations

from .base import Metric
from .deletion import Deletion
from .insertion import Insertion
from .pointing_game import PointingGame

# @imports-faithfulness

# @imports-robustness

# @imports-localisation

# @imports-randomisation
from .mprt import MPRT

# @imports-complexity

METRICS: tuple[type[Metric], ...] = (
    # faithfulness
    Deletion, Insertion,
    # @faithfulness

    # robustness
    # @robustness

    # localisation
    PointingGame,
    # @localisation

    # randomisation
    MPRT,
    # @randomisation

    # complexity and axiomatic
    # @complexity
)


def all_metrics() -> dict[str, Metric]:
    return {m.name: m() for m in METRICS}
