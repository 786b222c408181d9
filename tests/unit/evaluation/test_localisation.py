"""Localisation metrics on tiny maps and regions, against values worked out by hand; the model (a
linear ONNX graph) only makes the prediction: none of them evaluates it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from explaind.errors import InvalidArgument
from explaind.evaluation.energy_pointing_game import EnergyPointingGame
from explaind.evaluation.iou import Iou
from explaind.evaluation.localisation import top_k_in_region
from explaind.evaluation.pointing_game import PointingGame
from explaind.evaluation.relevance_mass import RelevanceMass
from explaind.evaluation.relevance_rank import RelevanceRank
from explaind.evaluation.top_k_intersection import TopKIntersection

from _linear import served_linear
from inprocess import evaluate

# A 2 x 3 map and the object on its two top-left pixels (flat positions 0 and 1).
A = np.array([[3.0, -1.0, 0.0],
              [2.0, 1.0, -4.0]])
R = np.array([[True, True, False],
              [False, False, False]])
SERVED, _ = served_linear("lin", (3, 2, 3), 3)
X = np.zeros((3, 2, 3), np.float32)


def value(metric, given=None, attribution=A, region=R):
    outcome, params = evaluate(metric, given or {}, SERVED, X, 0, attribution, region=region)
    assert outcome.stats.model_evaluations == 0
    return outcome.value.value, params, outcome


def test_energy_pointing_game_is_the_positive_share_on_the_object():
    # positive energy 3 + 2 + 1 = 6, of which 3 on the object
    assert value(EnergyPointingGame())[0] == pytest.approx(0.5)
    assert value(EnergyPointingGame(), attribution=-np.abs(A))[0] == 0.0  # no positive energy


def test_relevance_mass_is_the_signed_share_unless_abs():
    v, params, _ = value(RelevanceMass())
    assert params == {"abs": False}
    assert v == pytest.approx((3 - 1) / (3 - 1 + 0 + 2 + 1 - 4))  # 2: negative relevance outside
    assert value(RelevanceMass(), {"abs": True})[0] == pytest.approx(4 / 11)
    assert math.isnan(value(RelevanceMass(), attribution=np.array([[1.0, 0, 0], [0, 0, -1.0]]))[0])  # total 0


def test_relevance_rank_takes_as_many_top_pixels_as_the_object_has():
    # K = 2: the two largest are 3 (on the object) and 2 (off it)
    assert value(RelevanceRank())[0] == pytest.approx(0.5)
    # abs: 4 (off) and 3 (on)
    assert value(RelevanceRank(), {"abs": True})[0] == pytest.approx(0.5)
    # the object on the two largest values
    assert value(RelevanceRank(), region=np.array([[True, False, False], [True, False, False]]))[0] == 1.0


def test_ties_at_the_boundary_count_by_expectation():
    # K = 1 and three pixels tie at the maximum, one of them on the object: 1/3
    tied = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    one = np.array([[False, True, False], [False, False, False]])
    assert value(RelevanceRank(), attribution=tied, region=one)[0] == pytest.approx(1 / 3)
    # k = 2 on [2, 1, 1, 1, 0, 0]: the 2 (off the object), then one of three tied 1s, two of them on it
    a = np.array([2.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    region = np.array([False, True, True, False, False, False])
    assert top_k_in_region(a, region, 2) == pytest.approx(2 / 3)
    # no tie at the boundary: the count is whole whatever the order
    assert top_k_in_region(a, region, 4) == 2.0 and top_k_in_region(a, region, 1) == 0.0


def test_top_k_intersection_and_its_concept_influence():
    # k = 3: 3 (on), 2 (off), 1 (off)
    v, params, _ = value(TopKIntersection(), {"k": 3})
    assert params == {"k": 3, "concept_influence": False, "abs": False} and v == pytest.approx(1 / 3)
    assert value(TopKIntersection(), {"k": 3, "concept_influence": True})[0] == pytest.approx(1 / 3 * 6 / 2)
    # k defaults to 1000, or every pixel of a smaller image: then the object's share of the image
    v, params, _ = value(TopKIntersection())
    assert params["k"] == 6 and v == pytest.approx(2 / 6)
    big, _ = served_linear("big", (1, 40, 40), 2)
    _, params = evaluate(TopKIntersection(), {}, big, np.zeros((1, 40, 40), np.float32), 0, np.zeros((40, 40)),
                         region=np.ones((40, 40), bool))
    assert params["k"] == 1000
    with pytest.raises(InvalidArgument) as err:
        value(TopKIntersection(), {"k": 7})
    assert err.value.message.startswith("top_k_intersection.k: expected an integer in [1, 6], got 7")


def test_iou_thresholds_the_positive_map_relative_to_its_maximum():
    # threshold 0.5 of the maximum 3: the pixels 3 and 2 -> intersection {3}, union {3, -1, 2}
    v, params, outcome = value(Iou(), {"threshold": 0.5})
    assert params == {"threshold": 0.5} and v == pytest.approx(1 / 3)
    assert outcome.value.figures["selected"] == pytest.approx(2 / 6)
    # default 0.2 (>= 0.6): 3, 2 and 1 -> 1 / 4; threshold 0: every positive pixel, the same here
    assert value(Iou())[0] == pytest.approx(1 / 4)
    assert value(Iou(), {"threshold": 0.0})[0] == pytest.approx(1 / 4)
    # threshold 1: only the maximum, on the object: 1 of the union of 2
    assert value(Iou(), {"threshold": 1.0})[0] == pytest.approx(1 / 2)
    # the selection equal to the object
    assert value(Iou(), {"threshold": 0.5}, attribution=R.astype(float))[0] == 1.0
    assert value(Iou(), attribution=-np.abs(A))[0] == 0.0  # nothing positive selected
    with pytest.raises(InvalidArgument) as err:
        value(Iou(), {"threshold": 1.5})
    assert err.value.message.startswith("iou.threshold: expected a number in [0, 1], got 1.5")


def test_pointing_game_counts_every_maximum():
    # two equal maxima, the second (row-major) on the object: a hit, as Quantus counts it
    tied = np.array([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]])
    on_second = np.array([[False, False, False], [True, False, False]])
    v, _, outcome = value(PointingGame(), attribution=tied, region=on_second)
    assert v == 1.0 and outcome.value.figures["distance"] == 0.0
    # neither maximum on the object: distance from the nearer one
    far = np.array([[False, False, False], [False, False, True]])
    v, _, outcome = value(PointingGame(), attribution=tied, region=far)
    assert v == 0.0 and outcome.value.figures["distance"] == pytest.approx(math.sqrt(2))
    assert value(PointingGame(), {"tolerance": 2}, attribution=tied, region=far)[0] == 1.0


@pytest.mark.parametrize("metric", [EnergyPointingGame(), RelevanceMass(), RelevanceRank(), TopKIntersection(),
                                    Iou(), PointingGame()])
def test_localisation_metrics_need_a_region_and_an_image(metric):
    assert metric.needs_region and metric.kinds == frozenset({"image"})
