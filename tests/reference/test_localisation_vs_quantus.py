"""Localisation metrics against Quantus 0.6 given the same attribution and region: the pointing game,
the energy pointing game (Quantus's AttributionLocalisation with positive_attributions), relevance
mass and rank accuracy, top-k intersection. Equal within 1e-6 over random maps (continuous, with
ties, with negative values, with many zeros) and random boxes, explaind run in process on the
exported ResNet twin (the model makes only the prediction: these metrics evaluate nothing).

Ties: where equal values straddle the k-th place Quantus's answer depends on numpy's unstable sort,
and explaind counts the tie by expectation (evaluation/localisation.py). There the check is exact
too: explaind's value equals the mean of Quantus over the T maps in which the tied pixels are put
in a strict order, rotated by one place each (each tied pixel takes each of the T places once)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus

from explaind.evaluation.energy_pointing_game import EnergyPointingGame
from explaind.evaluation.pointing_game import PointingGame
from explaind.evaluation.relevance_mass import RelevanceMass
from explaind.evaluation.relevance_rank import RelevanceRank
from explaind.evaluation.top_k_intersection import TopKIntersection
from inprocess import run_metric

TOL = 1e-6
CASES = 12


def maps(shape: tuple[int, int], seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(kind, attribution, region mask) triples: continuous, quantised (ties), ReLU-like (many zeros),
    saturated (several equal maxima), each with a random box."""
    rng = np.random.default_rng(seed)
    height, width = shape
    out = []
    for i in range(CASES):
        a = rng.standard_normal(shape)
        kind = ("continuous", "ties", "zeros", "maxima")[i % 4]
        if kind == "ties":
            a = np.round(a * 2) / 2
        elif kind == "zeros":
            a = np.maximum(a - 0.8, 0.0)
        elif kind == "maxima":
            a = np.minimum(a, 1.0)
        x0, x1 = sorted(rng.choice(width + 1, 2, replace=False))
        y0, y1 = sorted(rng.choice(height + 1, 2, replace=False))
        region = np.zeros(shape, bool)
        region[y0:y1, x0:x1] = True
        out.append((kind, a, region))
    return out


def explaind(xp, ex, metric, given, x, target, a, region) -> float:
    served, view = ex.in_process
    outcome, _ = xp.loop.run_until_complete(run_metric(xp.engine, served, metric, given, x, target, a, region=region,
                                                       score="logit", view=view))
    return outcome.value.value


def quantus_values(q, ex, x, target, a_batch, region) -> np.ndarray:
    n = len(a_batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(q(model=ex.torch_model, x_batch=np.repeat(x[None], n, 0), y_batch=np.full(n, target),
                            a_batch=a_batch[:, None].astype(np.float64),
                            s_batch=np.repeat(region[None, None], n, 0).astype(np.float64), device="cpu"), float)


def quantus_one(q, ex, x, target, a, region) -> float:
    return float(quantus_values(q, ex, x, target, a[None], region)[0])


def rotations(a: np.ndarray, k: int) -> np.ndarray | None:
    """The T maps breaking the tie at the k-th largest value in rotated strict orders (None: no tie
    straddles the k-th place)."""
    flat = a.reshape(-1)
    kth = np.sort(flat)[::-1][k - 1]
    tied = np.flatnonzero(flat == kth)
    above = int((flat > kth).sum())
    if len(tied) == 1 or above + len(tied) == k:
        return None
    distinct = np.unique(flat)
    gap = np.diff(distinct).min() if len(distinct) > 1 else 1.0
    out = np.repeat(flat[None], len(tied), 0)
    for j in range(len(tied)):
        places = (np.arange(len(tied)) - j) % len(tied)  # 0: first among the tied
        out[j, tied] = kth + gap / 2 * (len(tied) - places) / len(tied)
    return out.reshape(len(tied), *a.shape)


def check_ranked(q, xp, ex, metric, given, x, target, a, region, k, summary_counts) -> None:
    ours = explaind(xp, ex, metric, given, x, target, a, region)
    broken = rotations(np.abs(a) if given.get("abs") else a, k)  # (|a| with abs: the order both rank)
    if broken is None:
        theirs = quantus_one(q, ex, x, target, a, region)
        summary_counts["plain"] += 1
    else:
        theirs = float(quantus_values(q, ex, x, target, broken, region).mean())
        summary_counts["straddling ties"] += 1
    assert ours == pytest.approx(theirs, abs=TOL), (metric.name, ours, theirs)


@pytest.fixture
def resnet(case):
    ex, x, _, target = case("resnet")
    return ex, x, target, tuple(ex.torch_model.input_shape[1:])


def test_pointing_game(xp, resnet):
    ex, x, target, shape = resnet
    q = quantus.PointingGame(disable_warnings=True)
    hits = []
    for kind, a, region in maps(shape, 1):
        ours = explaind(xp, ex, PointingGame(), {}, x, target, a, region)
        assert ours == quantus_one(q, ex, x, target, a, region), kind
        hits.append(ours)
    # a map whose two maxima lie on either side, only the second (row-major) on the object
    a = np.zeros(shape)
    a[0, 0] = a[-1, -1] = 1.0
    region = np.zeros(shape, bool)
    region[-2:, -2:] = True
    assert explaind(xp, ex, PointingGame(), {}, x, target, a, region) == 1.0 == quantus_one(q, ex, x, target, a, region)
    assert 0 < sum(hits) < len(hits)  # both outcomes compared


def test_energy_pointing_game_is_quantus_attribution_localisation_of_the_positive_part(xp, resnet):
    ex, x, target, shape = resnet
    q = quantus.AttributionLocalisation(abs=False, positive_attributions=True, disable_warnings=True)
    for kind, a, region in maps(shape, 2):
        ours = explaind(xp, ex, EnergyPointingGame(), {}, x, target, a, region)
        assert ours == pytest.approx(quantus_one(q, ex, x, target, a, region), abs=TOL), kind


@pytest.mark.parametrize("absolute", [False, True])
def test_relevance_mass(xp, resnet, absolute):
    ex, x, target, shape = resnet
    q = quantus.RelevanceMassAccuracy(abs=absolute, disable_warnings=True)
    for kind, a, region in maps(shape, 3):
        ours = explaind(xp, ex, RelevanceMass(), {"abs": absolute}, x, target, a, region)
        theirs = quantus_one(q, ex, x, target, a, region)
        assert ours == pytest.approx(theirs, abs=TOL, rel=TOL), kind  # signed sums: any size


@pytest.mark.parametrize("absolute", [False, True])
def test_relevance_rank(xp, resnet, absolute):
    ex, x, target, shape = resnet
    q = quantus.RelevanceRankAccuracy(abs=absolute, disable_warnings=True)
    counts = {"plain": 0, "straddling ties": 0}
    for kind, a, region in maps(shape, 4):
        k = int(region.sum())
        check_ranked(q, xp, ex, RelevanceRank(), {"abs": absolute}, x, target, a, region, k, counts)
    assert counts["plain"] and counts["straddling ties"], counts  # both paths exercised


@pytest.mark.parametrize("given", [{"k": 40}, {"k": 200, "concept_influence": True}, {"k": 97, "abs": True}])
def test_top_k_intersection(xp, resnet, given):
    ex, x, target, shape = resnet
    q = quantus.TopKIntersection(k=given["k"], concept_influence=given.get("concept_influence", False),
                                 abs=given.get("abs", False), disable_warnings=True)
    counts = {"plain": 0, "straddling ties": 0}
    for kind, a, region in maps(shape, 5):
        check_ranked(q, xp, ex, TopKIntersection(), given, x, target, a, region, given["k"], counts)
    assert counts["plain"] and counts["straddling ties"], counts
