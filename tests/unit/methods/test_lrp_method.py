"""Method lrp through the real engine on a linear model (logits = flatten(x) W, no bias), where every
composite has a closed form: the epsilon rule gives x * w_t (z_t = sum_i x_i w_it enters and all of
it arrives), flat spreads z_t evenly, w-square gives z_t w_t^2 / sum w_t^2; and its parameters."""

from __future__ import annotations

import numpy as np
import pytest

from explaind.config import Settings
from explaind.errors import InvalidArgument
from explaind.methods.base import ModelView
from explaind.methods.lrp import Lrp, input_bounds, parse_layer_rules
from explaind.models.config import Preprocess
from explaind.models.white_box import WhiteBox

from _linear import served_linear
from inprocess import explain

SHAPE = (2, 3, 3)
X = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
LRP_BOX = WhiteBox(True, rules=("plain", "guided", "deconvnet", "lrp"))


def _run(params: dict, target: int = 1):
    served, weights = served_linear("lin", SHAPE, 4)
    result, used = explain(Lrp(), params, served, X, target, "logit", white_box=LRP_BOX)
    z = X.reshape(-1).astype(np.float64) @ weights.astype(np.float64)
    return result, used, weights.astype(np.float64), z


def test_epsilon_on_a_linear_model_is_input_times_weight_and_conserves():
    result, used, w, z = _run({"composite": "epsilon_plus", "epsilon": 0.0})
    assert used["composite"] == "epsilon_plus" and used["contrast"] == "none" and used["layer_rules"] == ()
    np.testing.assert_allclose(result.attribution, (X.reshape(-1) * w[:, 1]).reshape(SHAPE), rtol=1e-4, atol=1e-6)
    assert result.figures["target_relevance"] == pytest.approx(z[1], rel=1e-5)
    assert result.figures["conservation_error"] < 1e-4
    assert result.model_evaluations == 2  # the prediction and one relevance row


def test_flat_and_wsquare_first_layers():
    flat, _, w, z = _run({})  # default epsilon_plus_flat: the only layer is the first: flat
    np.testing.assert_allclose(flat.attribution, np.full(SHAPE, z[1] / X.size), rtol=1e-4)
    taylor, _, _, _ = _run({"composite": "deep_taylor"})  # no bounds (no preprocessing): w-square
    expected = z[1] * w[:, 1] ** 2 / (w[:, 1] ** 2).sum()
    np.testing.assert_allclose(taylor.attribution, expected.reshape(SHAPE), rtol=1e-4)


def test_clrp_subtracts_the_dual_of_the_other_classes():
    result, _, w, z = _run({"composite": "epsilon_plus", "epsilon": 0.0, "contrast": "clrp"}, target=2)
    x = X.reshape(-1).astype(np.float64)
    own = x * w[:, 2]
    dual = sum(x * w[:, n] * (z[2] / 3) / z[n] for n in (0, 1, 3))
    np.testing.assert_allclose(result.attribution, np.maximum(own - dual, 0).reshape(SHAPE), rtol=1e-4, atol=1e-6)
    assert result.model_evaluations == 3


def test_sglrp_is_the_lrp_of_the_softmax_gradient():
    result, _, w, z = _run({"composite": "epsilon_plus", "epsilon": 0.0, "contrast": "sglrp"}, target=0)
    y = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    x = X.reshape(-1).astype(np.float64)
    seed = -y[0] * y
    seed[0] = y[0] * (1 - y[0])
    expected = sum(x * w[:, n] * seed[n] / z[n] for n in range(4))  # epsilon 0: R_n x_i w_in / z_n
    np.testing.assert_allclose(result.attribution, expected.reshape(SHAPE), rtol=1e-4, atol=1e-7)


def test_layer_rules_parse_and_refuse_with_the_field_named():
    assert parse_layer_rules(" b = gamma, a=ZPlus ,") == (("a", "zplus"), ("b", "gamma"))
    with pytest.raises(InvalidArgument, match=r"lrp\.layer_rules: expected comma-separated layer=rule pairs"):
        parse_layer_rules("conv")
    with pytest.raises(InvalidArgument, match=r"lrp\.layer_rules: expected a rule for 'conv' among epsilon"):
        parse_layer_rules("conv=best")
    with pytest.raises(InvalidArgument, match=r"each layer named once"):
        parse_layer_rules("a=flat,a=gamma")
    served, _ = served_linear("lin", SHAPE, 4)
    with pytest.raises(InvalidArgument, match=r"lrp\.layer_rules: expected names of Conv, Gemm or MatMul nodes"):
        explain(Lrp(), {"layer_rules": "nowhere=flat"}, served, X, 0, "logit", white_box=LRP_BOX)
    with pytest.raises(InvalidArgument, match=r"score: expected logit"):
        explain(Lrp(), {}, served, X, 0, "probability", white_box=LRP_BOX)


def test_bounds_come_from_the_preprocessing():
    served, _ = served_linear("lin", (3, 4, 4), 2)
    view = ModelView("image", served.signature, preprocess=Preprocess((4, 4), 255.0, (0.5, 0.4, 0.0), (0.25, 0.2, 1.0)))
    low, high = input_bounds(view)
    np.testing.assert_allclose(low, [-2.0, -2.0, 0.0])
    np.testing.assert_allclose(high, [2.0, 3.0, 1.0])
    assert input_bounds(ModelView("tabular", served.signature)) == ((), ())


def test_a_model_without_relevance_rules_is_refused_with_the_reason():
    served, _ = served_linear("lin", SHAPE, 4)
    reason = "operator Mul (node 'gate') has no relevance rule (LRP)"
    view = ModelView("image", served.signature, white_box=WhiteBox(True, blocked_rules=(("lrp", reason),)))
    assert Lrp().unavailable(view) == reason
    assert Lrp().unavailable(ModelView("image", served.signature, white_box=LRP_BOX)) == ""
    assert "no gradients" in Lrp().unavailable(ModelView("image", served.signature))
    assert Lrp().parameters({}, ModelView("image", served.signature, white_box=LRP_BOX), Settings(), "logit") == {
        "composite": "epsilon_plus_flat", "epsilon": 1e-6, "gamma": 0.25, "layer_rules": (), "contrast": "none",
        "channel_reduction": "none"}
