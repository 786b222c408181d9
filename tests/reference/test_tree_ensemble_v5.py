"""tree_shap on ai.onnx.ml opset 5's `TreeEnsemble` (the op that replaces TreeEnsembleClassifier and
TreeEnsembleRegressor; no converter writes it yet, so the scikit-learn estimators' trees are written
into it here with onnx.helper) against shap's TreeExplainer on the original estimators.

Each inner node takes one of the four threshold modes in turn, rewritten so that it decides as the
estimator's `x <= t` does for float32 inputs: BRANCH_LEQ t (true: left), BRANCH_LT next(t) (x < next(t)
is x <= t; true: left), BRANCH_GTE next(t) and BRANCH_GT t (true: right), next(t) the float32 after t.
The trees of a multi-class forest are written once per class (a v5 leaf has one target); boosting's
initial score is added to the first tree's leaves (v5 has no base values). onnxruntime runs each
graph and must reproduce the estimator first. The data sit on a grid of 1/8 so that every split
threshold is a float32 (as in test_tree_shap_vs_shap.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import shap
from onnx import TensorProto, helper
from sklearn.datasets import load_wine
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, RandomForestClassifier

from explaind.engine.engine import ServedModel
from explaind.errors import FailedPrecondition
from explaind.methods.base import ModelView
from explaind.methods.tree_ensemble import read_trees
from explaind.methods.tree_shap import TreeShap
from explaind.onnxgraph.signature import ModelSignature
from inprocess import InProcess

FEATURES = 13
LEQ, LT, GTE, GT = 0, 1, 2, 3
NONE = 0
ORT_LOGISTIC = 1  # onnxruntime 1.32 applies post_transform 1 as the logistic (the spec: SOFTMAX)


@pytest.fixture(scope="module")
def data():
    x, y = load_wine(return_X_y=True)
    x = (np.round(x * 8) / 8).astype(np.float32)
    order = np.random.default_rng(1).permutation(len(x))
    return x[order[:120]], y[order[:120]], x[order[120:]]


@pytest.fixture(scope="module")
def runner():
    r = InProcess()
    yield r
    r.close()


def v5_graph(trees: list[tuple[object, int, np.ndarray]], targets: int, post_transform: int) -> onnx.ModelProto:
    """A TreeEnsemble of sklearn trees: (tree_, target, leaf value per node [nodes]) each."""
    features, splits, modes, true_ids, true_leaf, false_ids, false_leaf = [], [], [], [], [], [], []
    leaf_targets, leaf_weights, roots = [], [], []

    def add(tree, node: int, target: int, values: np.ndarray) -> tuple[int, int]:
        """(index, is_leaf) of the subtree at `node`."""
        if tree.children_left[node] < 0:
            leaf_targets.append(target)
            leaf_weights.append(float(values[node]))
            return len(leaf_weights) - 1, 1
        i = len(features)
        features.append(int(tree.feature[node]))
        t = np.float32(tree.threshold[node])
        assert float(t) == tree.threshold[node], "off-grid threshold"
        after = np.nextafter(t, np.float32(np.inf))
        mode = len(features) % 4
        splits.append(float({LEQ: t, LT: after, GTE: after, GT: t}[mode]))
        modes.append(mode)
        for lst in (true_ids, true_leaf, false_ids, false_leaf):
            lst.append(0)
        left, right = add(tree, tree.children_left[node], target, values), add(tree, tree.children_right[node], target, values)
        yes, no = (left, right) if mode in (LEQ, LT) else (right, left)
        true_ids[i], true_leaf[i], false_ids[i], false_leaf[i] = yes[0], yes[1], no[0], no[1]
        return i, 0

    for tree, target, values in trees:
        index, leaf = add(tree, 0, target, values)
        assert not leaf, "a single-leaf tree"
        roots.append(index)
    node = helper.make_node(
        "TreeEnsemble", ["input"], ["scores"], domain="ai.onnx.ml", n_targets=targets, aggregate_function=1,
        post_transform=post_transform, tree_roots=roots, nodes_featureids=features,
        nodes_splits=helper.make_tensor("splits", TensorProto.FLOAT, [len(splits)], splits),
        nodes_modes=helper.make_tensor("modes", TensorProto.UINT8, [len(modes)], modes),
        nodes_truenodeids=true_ids, nodes_trueleafs=true_leaf, nodes_falsenodeids=false_ids,
        nodes_falseleafs=false_leaf, leaf_targetids=leaf_targets,
        leaf_weights=helper.make_tensor("weights", TensorProto.FLOAT, [len(leaf_weights)], leaf_weights))
    graph = helper.make_graph([node], "v5", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, FEATURES])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, targets])])
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)])
    onnx.checker.check_model(onx, full_check=True)
    return onx


def boosting_graph(est, x: np.ndarray, post_transform: int, signed: bool = False) -> onnx.ModelProto:
    """learning_rate x each stage's leaves, the initial raw score on the first tree's; `signed`: two
    targets -s and s (each tree twice), as onnxruntime's binary classifiers write them."""
    stages = [stage[0].tree_ for stage in est.estimators_]
    raw = est.decision_function(x[:1]) if hasattr(est, "decision_function") else est.predict(x[:1])
    init = float(np.ravel(raw)[0]) - est.learning_rate * sum(float(stage[0].predict(x[:1])[0])
                                                             for stage in est.estimators_)
    trees = [(s, 0, est.learning_rate * s.value[:, 0, 0] + (init if i == 0 else 0.0)) for i, s in enumerate(stages)]
    if signed:
        trees = [(s, k, sign * values) for s, _, values in trees for k, sign in ((0, -1.0), (1, 1.0))]
    return v5_graph(trees, 2 if signed else 1, post_transform)


def forest_graph(est) -> onnx.ModelProto:
    """Each tree once per class: its leaves' class fractions / the number of trees (the forest's mean)."""
    n = len(est.estimators_)
    trees = [(e.tree_, k, e.tree_.value[:, 0, k] / n) for e in est.estimators_ for k in range(len(est.classes_))]
    return v5_graph(trees, len(est.classes_), NONE)


def runs(onx: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["scores"], {"input": x})[0].astype(np.float64)


def served(name: str, onx: onnx.ModelProto, background: np.ndarray, targets: int) -> tuple[ServedModel, ModelView]:
    signature = ModelSignature("input", "scores", (FEATURES,), "tabular", "probabilities")
    return (ServedModel(f"{name}-{id(onx)}", onx, signature, 256, 1.0),
            ModelView("tabular", signature, background, None, None, onx))


def ours(runner, model, x, target, score="probability", **params):
    return runner.explain(TreeShap(), params, model, x, target, score=score)[0]


def spread(values: np.ndarray) -> float:
    return float(values.max() - values.min())


def test_the_graph_uses_every_mode_and_onnxruntime_runs_it(data):
    x, y, held = data
    est = GradientBoostingRegressor(n_estimators=10, max_depth=3, random_state=0).fit(x, y.astype(float))
    onx = boosting_graph(est, x, NONE)
    node = onx.graph.node[0]
    assert node.op_type == "TreeEnsemble" and node.domain == "ai.onnx.ml"
    modes = onnx.numpy_helper.to_array(next(a.t for a in node.attribute if a.name == "nodes_modes"))
    assert set(modes.tolist()) == {LEQ, LT, GTE, GT}
    rows = np.vstack([x, held])
    np.testing.assert_allclose(runs(onx, rows)[:, 0], est.predict(rows), atol=1e-5)
    trees = read_trees(onx, "input", "scores", FEATURES)
    assert trees.op == "TreeEnsemble" and len(trees.trees) == 10
    np.testing.assert_allclose(trees.predict(rows)[:, 0], est.predict(rows), atol=1e-5)


def test_regressor_equals_shap_both_perturbations(runner, data):
    x, y, held = data
    est = GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0).fit(x, y + x[:, 0] / 10)
    onx = boosting_graph(est, x, NONE)
    rows = np.vstack([x, held])
    np.testing.assert_allclose(runs(onx, rows)[:, 0], est.predict(rows), atol=1e-4)
    background = x[:60]
    model = served("gbr", onx, background, 1)
    scale = spread(est.predict(rows))
    for perturbation in ("interventional", "tree_path_dependent"):
        reference = shap.TreeExplainer(est, background, feature_perturbation=perturbation)
        for row in held[:3]:
            got = ours(runner, model, row, 0, feature_perturbation=perturbation)
            expected = reference.shap_values(row[None])[0]
            assert np.abs(got.attribution - expected).max() <= 1e-5 * scale
            assert got.figures["f_x"] == pytest.approx(float(est.predict(row[None])[0]), abs=1e-4)


def test_logistic_booster_margin_equals_shap(runner, data):
    x, y, held = data
    labels = (y == 1).astype(int)
    est = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0).fit(x, labels)
    onx = boosting_graph(est, x, ORT_LOGISTIC, signed=True)
    rows = np.vstack([x, held])
    proba = est.predict_proba(rows)
    np.testing.assert_allclose(runs(onx, rows), proba, atol=1e-5)
    background = x[:80]
    model = served("gbc", onx, background, 2)
    margin = shap.TreeExplainer(est, background, feature_perturbation="interventional", model_output="raw")
    margins = est.decision_function(rows)
    for row in held[:3]:
        m = margin.shap_values(row[None])[0]
        for target, sign in ((0, -1.0), (1, 1.0)):
            got = ours(runner, model, row, target)
            # The probability's interventional values are shap's rescaling of the margin's (not the exact
            # Shapley values of the sigmoid) and shap's depend on the layout of the trees (feature 0, first
            # row: -0.366 here; shap on the stages as a custom model -0.266, on the same stages reversed
            # -0.366, on the estimator -0.261; exact -0.282). Checked here: efficiency, f(x), base value.
            assert float(got.attribution.sum()) == pytest.approx(got.figures["f_x"] - got.figures["base_value"], abs=1e-5)
            assert got.figures["f_x"] == pytest.approx(float(est.predict_proba(row[None])[0, target]), abs=1e-5)
            assert got.figures["base_value"] == pytest.approx(float(est.predict_proba(background)[:, target].mean()), abs=1e-5)
            got = ours(runner, model, row, target, score="logit")
            assert np.abs(got.attribution - sign * m).max() <= 1e-5 * spread(margins)
            assert got.figures["f_x"] == pytest.approx(sign * float(est.decision_function(row[None])[0]), abs=1e-4)
    with pytest.raises(FailedPrecondition, match="hit rates"):  # opset 5 has no leaf covers
        ours(runner, model, held[0], 1, score="logit", feature_perturbation="tree_path_dependent", covers="hitrates")


def one_split(targets: int, post_transform: int) -> onnx.ModelProto:
    """x0 <= 1: leaf 1.0 for target 0, else 3.0 for the last target."""
    node = helper.make_node(
        "TreeEnsemble", ["input"], ["scores"], domain="ai.onnx.ml", n_targets=targets, aggregate_function=1,
        post_transform=post_transform, tree_roots=[0], nodes_featureids=[0],
        nodes_splits=helper.make_tensor("s", TensorProto.FLOAT, [1], [1.0]),
        nodes_modes=helper.make_tensor("m", TensorProto.UINT8, [1], [LEQ]), nodes_truenodeids=[0],
        nodes_trueleafs=[1], nodes_falsenodeids=[1], nodes_falseleafs=[1], leaf_targetids=[0, targets - 1],
        leaf_weights=helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 3.0]))
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, targets])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)])


@pytest.mark.parametrize("post_transform", [0, 1, 2, 3])
@pytest.mark.parametrize("targets", [1, 2])
def test_post_transforms_are_read_as_onnxruntime_applies_them(targets, post_transform):
    """onnxruntime (1.32) leaves one target untransformed, applies 1 as the logistic and 2 as the softmax
    (the spec: 1 SOFTMAX, 2 LOGISTIC): the trees as read must give what the served model outputs."""
    onx = one_split(targets, post_transform)
    rows = np.array([[0.0], [2.0]], np.float32)
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(["scores"], {"input": rows})[0]
    np.testing.assert_allclose(read_trees(onx, "input", "scores", 1).predict(rows), expected, atol=1e-6)


def test_forest_written_per_class_equals_shap(runner, data):
    x, y, held = data
    est = RandomForestClassifier(n_estimators=15, max_depth=4, random_state=0).fit(x, y)
    onx = forest_graph(est)
    rows = np.vstack([x, held])
    proba = est.predict_proba(rows)
    np.testing.assert_allclose(runs(onx, rows), proba, atol=1e-5)
    background = x[:70]
    model = served("rf", onx, background, 3)
    reference = shap.TreeExplainer(est, background, feature_perturbation="interventional", model_output="raw")
    for row in held[:2]:
        expected = reference.shap_values(row[None])[0]
        for target in range(3):
            got = ours(runner, model, row, target)
            assert np.abs(got.attribution - expected[:, target]).max() <= 1e-5 * spread(proba[:, target])
