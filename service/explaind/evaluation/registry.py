"""The evaluation metrics explaind offers, by the Metric oneof's field name (one module per metric)."""

from __future__ import annotations

from .base import Metric
from .deletion import Deletion
from .insertion import Insertion
from .pointing_game import PointingGame

# @imports-faithfulness
from .faithfulness_correlation import FaithfulnessCorrelation
from .infidelity import Infidelity
from .irof import Irof
from .pixel_flipping import PixelFlipping
from .road import Road
from .sensitivity_n import SensitivityN

# @imports-robustness

# @imports-localisation

# @imports-randomisation

# @imports-complexity

METRICS: tuple[type[Metric], ...] = (
    # faithfulness
    Deletion, Insertion,
    # @faithfulness
    PixelFlipping, Irof, Road, FaithfulnessCorrelation, SensitivityN, Infidelity,

    # robustness
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
