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
from .adversarial_stability import AdversarialStability
from .avg_sensitivity import AvgSensitivity
from .local_lipschitz import LocalLipschitz
from .max_sensitivity import MaxSensitivity
from .random_logit import RandomLogit

# @imports-localisation
from .energy_pointing_game import EnergyPointingGame
from .iou import Iou
from .relevance_mass import RelevanceMass
from .relevance_rank import RelevanceRank
from .top_k_intersection import TopKIntersection

# @imports-randomisation
from .mprt import MPRT

# @imports-complexity
from .completeness import Completeness
from .complexity import Complexity
from .sparseness import Sparseness

METRICS: tuple[type[Metric], ...] = (
    # faithfulness
    Deletion, Insertion,
    # @faithfulness
    PixelFlipping, Irof, Road, FaithfulnessCorrelation, SensitivityN, Infidelity,

    # robustness
    MaxSensitivity, AvgSensitivity, LocalLipschitz, AdversarialStability, RandomLogit,
    # @robustness

    # localisation
    PointingGame,
    # @localisation
    EnergyPointingGame, RelevanceMass, RelevanceRank, TopKIntersection, Iou,

    # randomisation
    MPRT,
    # @randomisation

    # complexity and axiomatic
    # @complexity
    Sparseness, Complexity, Completeness,
)


def all_metrics() -> dict[str, Metric]:
    return {m.name: m() for m in METRICS}
