"""Input x Gradient through the real engine, on a linear model (its gradient is the weight column)."""

from __future__ import annotations

import numpy as np

from explaind.methods.input_x_gradient import InputXGradient
from explaind.models.white_box import WhiteBox

from _linear import served_linear
from inprocess import explain

SHAPE = (3, 6, 5)
X = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


def test_input_x_gradient():
    served, weights = served_linear("lin", SHAPE, 4)
    result, _ = explain(InputXGradient(), {"channel_reduction": "sum"}, served, X, 2, "logit", white_box=WhiteBox(True))
    np.testing.assert_allclose(result.attribution, (X * weights[:, 2].reshape(SHAPE)).sum(axis=0), rtol=1e-5)
