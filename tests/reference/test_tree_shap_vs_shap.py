"""explaind's tree_shap and linear_shap (trees and weights read from the ONNX graph) against shap's
TreeExplainer and LinearExplainer on the original scikit-learn (and, where installed, XGBoost /
LightGBM) estimators, both feature perturbations, probability and margin, within 1e-5 of the score
range."""

from __future__ import annotations

import numpy as np
import pytest
import shap
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_wine
from sklearn.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor, RandomForestClassifier,
                              RandomForestRegressor)
from sklearn.linear_model import LogisticRegression

from explaind.engine.engine import ServedModel
from explaind.errors import FailedPrecondition, InvalidArgument
from explaind.methods.base import ModelView
from explaind.methods.linear_shap import LinearShap
from explaind.methods.tree_shap import TreeShap
from explaind.onnxgraph.signature import ModelSignature
from inprocess import InProcess

FEATURES = 13


@pytest.fixture(scope="module")
def data():
    x, y = load_wine(return_X_y=True)
    # On a grid of 1/8 every midpoint sklearn splits at is a float32: the ONNX trees (float32 thresholds)
    # then are the estimator's, so shap on the estimator is the reference for the ONNX model. (On raw
    # data a float64 midpoint can round onto a data value in float32 and the ONNX model differs there.)
    x = (np.round(x * 8) / 8).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    return x[order[:120]], y[order[:120]], x[order[120:]]  # train, labels, held out (58 rows)


@pytest.fixture(scope="module")
def runner():
    r = InProcess()
    yield r
    r.close()


def export(est, output: str = "probabilities", zipmap: bool = True):
    options = {id(est): {"zipmap": False}} if zipmap else None
    onx = convert_sklearn(est, initial_types=[("input", FloatTensorType([None, FEATURES]))], options=options,
                          target_opset={"": 17, "ai.onnx.ml": 3})
    return onx, next(o.name for o in onx.graph.output if o.name != "label")


def served(name: str, onx, output: str, background: np.ndarray) -> tuple[ServedModel, ModelView]:
    """(The engine caches sessions by model name: each graph gets its own.)"""
    signature = ModelSignature("input", output, (FEATURES,), "tabular", "probabilities")
    name = f"{name}-{id(onx)}"
    return ServedModel(name, onx, signature, 256, 1.0), ModelView("tabular", signature, background, None, None, onx)


def score_range(values: np.ndarray) -> float:
    return float(values.max() - values.min())


def ours(runner, model, x, target, score="probability", **params):
    outcome, _ = runner.explain(TreeShap(), params, model, x, target, score=score)
    return outcome


CLASSIFIERS = {
    "random_forest": lambda: RandomForestClassifier(n_estimators=30, max_depth=5, random_state=0),
    "gradient_boosting_binary": lambda: GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0),
    "gradient_boosting_3": lambda: GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0),
}


@pytest.fixture(scope="module")
def classifiers(data):
    x, y, _ = data
    fitted = {}
    for name, make in CLASSIFIERS.items():
        labels = (y == 1).astype(int) if name == "gradient_boosting_binary" else y
        est = make().fit(x, labels)
        onx, output = export(est)
        fitted[name] = (est, onx, output)
    return fitted


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_interventional_probability_and_margin_equal_shap(runner, data, classifiers, name):
    x_train, _, held = data
    est, onx, output = classifiers[name]
    # shap's TreeExplainer refuses a multiclass GradientBoostingClassifier: exact Kernel SHAP (equal to
    # interventional Tree SHAP over the same background) on its decision_function is the reference.
    background = x_train[:16] if name == "gradient_boosting_3" else x_train[:80]
    model = served(name, onx, output, background)
    rows = np.vstack([background, held])
    proba = est.predict_proba(rows)
    for row in held[:3]:
        if name == "random_forest":  # NONE transform: the probability is the trees' sum
            expected = shap.TreeExplainer(est, background, feature_perturbation="interventional",
                                          model_output="raw").shap_values(row[None])[0]
            for target in range(3):
                got = ours(runner, model, row, target)
                assert np.abs(got.attribution - expected[:, target]).max() <= 1e-5 * score_range(proba[:, target])
                assert got.figures["f_x"] == pytest.approx(est.predict_proba(row[None])[0, target], abs=1e-5)
            with pytest.raises(FailedPrecondition, match="NONE"):  # the probability is the margin: no logit
                ours(runner, model, row, 0, score="logit")
            continue
        if name == "gradient_boosting_3":
            margin = np.stack([shap.KernelExplainer(lambda a, k=k: est.decision_function(a)[:, k], background)
                               .shap_values(row, nsamples=8190, l1_reg=False) for k in range(3)], axis=1)
            margins = est.decision_function(rows)
            for target in range(3):
                with pytest.raises(FailedPrecondition, match="SOFTMAX"):  # no probability form in TreeExplainer
                    ours(runner, model, row, target)
        else:
            margin = shap.TreeExplainer(est, background, feature_perturbation="interventional",
                                        model_output="raw").shap_values(row[None])[0]
            probability = shap.TreeExplainer(est, background, feature_perturbation="interventional",
                                             model_output="probability").shap_values(row[None])[0]
            margin, probability = np.stack([-margin, margin], axis=1), np.stack([-probability, probability], axis=1)
            margins = est.decision_function(rows)[:, None] * np.array([-1.0, 1.0])
            for target in range(2):
                got = ours(runner, model, row, target)
                assert np.abs(got.attribution - probability[:, target]).max() <= 1e-5 * score_range(proba[:, target])
                assert got.figures["f_x"] == pytest.approx(est.predict_proba(row[None])[0, target], abs=1e-5)
        for target in range(margin.shape[1]):
            got = ours(runner, model, row, target, score="logit")
            assert np.abs(got.attribution - margin[:, target]).max() <= 1e-5 * score_range(margins[:, target])
            assert got.figures["f_x"] == pytest.approx(margins[len(background)
                                                               + int(np.nonzero((held == row).all(1))[0][0]), target],
                                                       abs=1e-5)


@pytest.mark.parametrize("name", ["random_forest", "gradient_boosting_binary"])  # shap: no multiclass GBC
def test_path_dependent_equals_shap_with_the_same_covers(runner, data, classifiers, name):
    """shap's TreeExplainer given `data` recomputes the covers from it, as explaind does from the background."""
    x_train, _, held = data
    background = x_train[:100]
    est, onx, output = classifiers[name]
    model = served(name, onx, output, background)
    reference = shap.TreeExplainer(est, background, feature_perturbation="tree_path_dependent")
    proba = est.predict_proba(np.vstack([background, held]))
    for row in held[:3]:
        expected = reference.shap_values(row[None])[0]
        expected = expected if expected.ndim == 2 else np.stack([-expected, expected], axis=1)
        score = "probability" if name == "random_forest" else "logit"
        for target in range(proba.shape[1]):
            got = ours(runner, model, row, target, score=score, feature_perturbation="tree_path_dependent")
            scale = score_range(proba[:, target]) if name == "random_forest" else score_range(expected)
            assert np.abs(got.attribution - expected[:, target]).max() <= 1e-5 * max(scale, 1e-12)


def test_path_dependent_with_training_covers_equals_shap_on_the_estimator(runner, data, classifiers):
    """With the training counts written as nodes_hitrates, tree_path_dependent is shap's default on
    the original estimator (its covers: weighted_n_node_samples)."""
    x_train, _, held = data
    est = GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0).fit(x_train, data[1] == 1)
    onx, output = export(est)
    node = next(n for n in onx.graph.node if n.op_type == "TreeEnsembleClassifier")
    attrs = {a.name: a for a in node.attribute}
    trees = [stage[0] for stage in est.estimators_]
    tree_ids, node_ids = list(attrs["nodes_treeids"].ints), list(attrs["nodes_nodeids"].ints)
    hit = attrs["nodes_hitrates"]
    del hit.floats[:]
    hit.floats.extend(float(trees[t].tree_.weighted_n_node_samples[n]) for t, n in zip(tree_ids, node_ids))
    model = served("gbc_covers", onx, output, x_train[:50])
    reference = shap.TreeExplainer(est, feature_perturbation="tree_path_dependent")
    for row in held[:3]:
        expected = reference.shap_values(row[None])[0]
        got = ours(runner, model, row, 1, score="logit", feature_perturbation="tree_path_dependent",
                   covers="hitrates")
        assert np.abs(got.attribution - expected).max() <= 1e-5 * score_range(expected)
        assert got.figures["base_value"] == pytest.approx(float(np.ravel(reference.expected_value)[0]), abs=1e-5)
    with pytest.raises(FailedPrecondition, match="placeholder"):  # the exporters' 1.0 everywhere
        ours(runner, served("gbc", *export(est), x_train[:50]), held[0], 0, score="logit",
             feature_perturbation="tree_path_dependent", covers="hitrates")


@pytest.mark.parametrize("make", [lambda: GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0),
                                  lambda: RandomForestRegressor(n_estimators=20, max_depth=4, random_state=0)])
def test_regressors_equal_shap(runner, data, make):
    x_train, y, held = data
    est = make().fit(x_train, y.astype(np.float64) + x_train[:, 0] / 10)
    onx, output = export(est, zipmap=False)
    background = x_train[:60]
    model = served("regressor", onx, output, background)
    predictions = est.predict(np.vstack([background, held]))
    for perturbation in ("interventional", "tree_path_dependent"):
        reference = shap.TreeExplainer(est, background, feature_perturbation=perturbation)
        for row in held[:3]:
            got = ours(runner, model, row, 0, feature_perturbation=perturbation)
            expected = reference.shap_values(row[None])[0]
            assert np.abs(got.attribution - expected).max() <= 1e-5 * score_range(predictions)


def test_more_background_rows_than_shap_samples_are_all_used(runner, data, classifiers):
    """shap's TreeExplainer samples 100 background rows; explaind uses all (chunks of 100, weighted)."""
    x_train, _, held = data
    est, onx, output = classifiers["gradient_boosting_binary"]
    background = x_train[:120]
    model = served("gbc2", onx, output, background)
    masker = shap.maskers.Independent(background, max_samples=len(background))
    expected = shap.TreeExplainer(est, masker, feature_perturbation="interventional",
                                  model_output="probability").shap_values(held[:1])[0]
    got = ours(runner, model, held[0], 1)
    assert np.abs(got.attribution - expected).max() <= 1e-6


def test_probability_of_path_dependent_logistic_is_refused(data, classifiers):
    est, onx, output = classifiers["gradient_boosting_binary"]
    _, view = served("gbc2", onx, output, data[0][:10])
    with pytest.raises(InvalidArgument) as err:
        TreeShap().parameters({"feature_perturbation": "tree_path_dependent"}, view, InProcess().engine.settings,
                              "probability")
    assert err.value.field == "tree_shap.feature_perturbation"


def test_boosters_through_onnxmltools(runner, data):
    """XGBoost and LightGBM exported by onnxmltools (dev extra), margin and probability."""
    xgboost = pytest.importorskip("xgboost")
    lightgbm = pytest.importorskip("lightgbm")
    onnxmltools = pytest.importorskip("onnxmltools")
    from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat

    x_train, y, held = data
    labels = (y == 1).astype(int)
    background = x_train[:80]
    for est, convert in ((xgboost.XGBClassifier(n_estimators=25, max_depth=3, random_state=0),
                          onnxmltools.convert_xgboost),
                         (lightgbm.LGBMClassifier(n_estimators=25, num_leaves=8, random_state=0, verbose=-1),
                          onnxmltools.convert_lightgbm)):
        est.fit(x_train, labels)
        onx = convert(est, initial_types=[("input", MLFloat([None, FEATURES]))], target_opset=15,
                      **({"zipmap": False} if "lightgbm" in type(est).__module__ else {}))
        for opset in onx.opset_import:  # onnxmltools' LightGBM graph says opset 9 (Identity, Cast, Mul: the same
            if opset.domain in ("", "ai.onnx"):  # in 15); explaind's graph variants need >= 11
                opset.version = max(opset.version, 15)
        output = next(o.name for o in onx.graph.output if o.name != "label")
        model = served(type(est).__name__, onx, output, background)
        proba = est.predict_proba(np.vstack([background, held]))[:, 1]
        for row in held[:3]:
            probability = shap.TreeExplainer(est, background, feature_perturbation="interventional",
                                             model_output="probability").shap_values(row[None])[0]
            margin = shap.TreeExplainer(est, background, feature_perturbation="interventional",
                                        model_output="raw").shap_values(row[None])[0]
            got = ours(runner, model, row, 1)
            assert np.abs(got.attribution - probability).max() <= 1e-5 * score_range(proba)
            got = ours(runner, model, row, 1, score="logit")
            assert np.abs(got.attribution - margin).max() <= 1e-5 * max(1.0, np.abs(margin).sum())


def test_linear_shap_equals_linear_explainer(runner, data):
    x_train, y, held = data
    background = x_train[:80]
    for labels in (y, (y == 1).astype(int)):
        est = LogisticRegression(max_iter=5000).fit(x_train, labels)
        onx, output = export(est)
        model = served("logistic", onx, output, background)
        reference = shap.LinearExplainer(est, background)
        margins = est.decision_function(np.vstack([background, held]))
        for row in held[:4]:
            expected = reference.shap_values(row[None])[0]
            for target in range(len(est.classes_)):
                outcome, _ = runner.explain(LinearShap(), {}, model, row, target, score="logit")
                if margins.ndim == 1:  # binary: shap explains class 1's log-odds; class 0's is its negation
                    want, scale = (expected if target == 1 else -expected), score_range(margins)
                else:
                    want, scale = expected[:, target], score_range(margins[:, target])
                assert np.abs(outcome.attribution - want).max() <= 1e-5 * scale
                assert outcome.figures["f_x"] - outcome.figures["base_value"] == pytest.approx(
                    float(outcome.attribution.sum()), abs=1e-4)
        with pytest.raises(FailedPrecondition, match="not linear"):
            LinearShap().parameters({}, model[1], runner.engine.settings, "probability")


def test_inapplicable_models_are_refused(data, classifiers):
    _, onx_tree, output = classifiers["random_forest"]
    est = LogisticRegression(max_iter=5000).fit(data[0], data[1])
    onx_linear, linear_output = export(est)
    assert "linear" in LinearShap().unavailable(served("rf", onx_tree, output, data[0])[1])
    assert "TreeEnsembleClassifier" in LinearShap().unavailable(served("rf", onx_tree, output, data[0])[1])
    why = TreeShap().unavailable(served("lr", onx_linear, linear_output, data[0])[1])
    assert "tree ensemble" in why and "Normalizer" in why
