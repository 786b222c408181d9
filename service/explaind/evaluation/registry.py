"""The evaluation metrics explaind offers, by the Metric oneof's field name (one module per metric)."""

from __future__ import annotations

from .base import Metric
from .deletion import Deletion
from .insertion import Insertion
from .pointing_game import PointingGame

METRICS: tuple[type[Metric], ...] = (
    Deletion, Insertion,
    PointingGame,
)


def all_metrics() -> dict[str, Metric]:
    return {m.name: m() for m in METRICS}
