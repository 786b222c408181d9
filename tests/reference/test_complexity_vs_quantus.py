"""Sparseness, complexity and completeness against Quantus 0.6 given the same attribution, explaind in
process on the exported twins (ResNet for images, the MLP for tabular features).

Sparseness and complexity: equal within 1e-6 over random maps (signed, with ties, with many zeros,
tiny-scaled), with Quantus's defaults (abs, normalise) and with abs off where the value is defined.
Completeness: Quantus answers sum(a) == f(x) - f(x') exactly (a boolean), so the check is on its
parts: the score change Quantus measures (read through its output_func) against explaind's f(x) -
f(x') (within 1e-5 relative: torch and onnxruntime in float32), and explaind's value against
|sum(a) - that change|; baselines a constant and Quantus's "black" (the input's minimum), scores
logit (Quantus's default) and probability (softmax=True), normalise on and off."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus

from explaind.evaluation.completeness import Completeness
from explaind.evaluation.complexity import Complexity
from explaind.evaluation.sparseness import Sparseness
from inprocess import run_metric

TOL = 1e-6


def explaind(xp, ex, metric, given, x, target, a, score="logit"):
    served, view = ex.in_process
    outcome, _ = xp.loop.run_until_complete(run_metric(xp.engine, served, metric, given, x, target, a, score=score,
                                                       view=view))
    return outcome


def quantus_one(q, ex, x, target, a, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a_batch = a[None, None] if a.ndim == 2 and x.ndim == 3 else a[None]
        return float(np.asarray(q(model=ex.torch_model, x_batch=x[None], y_batch=np.array([target]),
                                  a_batch=a_batch.astype(np.float64), device="cpu", **kwargs), float)[0])


def maps(shape: tuple[int, ...], seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(8):
        a = rng.standard_normal(shape)
        kind = ("signed", "ties", "zeros", "tiny")[i % 4]
        if kind == "ties":
            a = np.round(a)
        elif kind == "zeros":
            a = np.maximum(a - 1.0, 0.0)
        elif kind == "tiny":
            a = a * 1e-6
        out.append((kind, a))
    return out


@pytest.fixture(params=["resnet", "mlp"])
def model(request, case):
    ex, x, _, target = case(request.param)
    shape = tuple(ex.torch_model.input_shape[1:]) if request.param == "resnet" else tuple(ex.torch_model.input_shape)
    return ex, x, target, shape


@pytest.mark.parametrize("metric, cls", [(Sparseness(), quantus.Sparseness), (Complexity(), quantus.Complexity)])
def test_sparseness_and_complexity_with_quantus_defaults(xp, model, metric, cls):
    ex, x, target, shape = model
    q = cls(disable_warnings=True)
    for kind, a in maps(shape, 11):
        ours = explaind(xp, ex, metric, {}, x, target, a).value.value
        assert ours == pytest.approx(quantus_one(q, ex, x, target, a), abs=TOL), (kind, metric.name)


def test_signed_values_without_abs(xp, model):
    """abs off: sparseness of the signed values; complexity of non-negative maps (Quantus's NaN else)."""
    ex, x, target, shape = model
    sparse, entropy = quantus.Sparseness(abs=False, disable_warnings=True), quantus.Complexity(abs=False,
                                                                                               disable_warnings=True)
    for kind, a in maps(shape, 12):
        ours = explaind(xp, ex, Sparseness(), {"abs": False}, x, target, a).value.value
        assert ours == pytest.approx(quantus_one(sparse, ex, x, target, a), abs=TOL, rel=TOL), kind
        positive = np.abs(a)
        ours = explaind(xp, ex, Complexity(), {"abs": False}, x, target, positive).value.value
        assert ours == pytest.approx(quantus_one(entropy, ex, x, target, positive), abs=TOL), kind
    negative = np.abs(maps(shape, 13)[0][1])
    negative.reshape(-1)[0] *= -1  # one negative value (Quantus refuses a map that is negative everywhere)
    assert np.isnan(explaind(xp, ex, Complexity(), {"abs": False}, x, target, negative).value.value)
    assert np.isnan(quantus_one(entropy, ex, x, target, negative))


@pytest.mark.parametrize("score", ["logit", "probability"])
@pytest.mark.parametrize("baseline", [0.0, 0.7, "black"])
@pytest.mark.parametrize("normalise", [False, True])
def test_completeness_parts(xp, model, score, baseline, normalise):
    ex, x, target, shape = model
    a = np.random.default_rng(14).standard_normal(shape) * 0.1
    changes: list[np.ndarray] = []

    def capture(change: np.ndarray) -> np.ndarray:
        changes.append(np.asarray(change, np.float64))
        return change

    q = quantus.Completeness(abs=False, normalise=normalise, perturb_baseline=baseline, output_func=capture,
                             disable_warnings=True)
    given = a
    if a.ndim == 2:
        # Quantus replaces as many flattened input values as the map has (with an [H, W] map: channel 0
        # only); the map in channel 0 and zeros elsewhere has the same sum and maximum and makes it
        # replace the whole input, as explaind's baseline does.
        given = np.zeros((x.shape[0], *a.shape))
        given[0] = a
    quantus_one(q, ex, x, target, given, softmax=score == "probability")
    (change,) = changes
    value = float(x.min()) if baseline == "black" else baseline  # Quantus's black: the input's minimum
    outcome = explaind(xp, ex, Completeness(), {"baseline": value, "normalise": normalise}, x, target, a, score=score)
    figures = outcome.value.figures
    ours_change = figures["f_input"] - figures["f_baseline"]
    assert ours_change == pytest.approx(float(change[0]), rel=1e-5, abs=1e-6)
    total = (a / np.abs(a).max() if normalise else a).sum()
    assert figures["attribution_sum"] == pytest.approx(total, rel=1e-12)
    assert outcome.value.value == pytest.approx(abs(total - float(change[0])), rel=1e-5, abs=1e-6)
    assert outcome.stats.model_evaluations == 1
