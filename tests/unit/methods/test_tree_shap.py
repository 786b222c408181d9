"""tree_shap on a hand-made two-tree ONNX ensemble, Shapley values computed by hand.

Tree 0: x0 < 1 (BRANCH_LT) ? 1 : 3.  Tree 1: x1 >= 2 (BRANCH_GTE) ? 10 : 0.  Regressor, SUM, base 0.5.
Background rows r1 = (0, 0), r2 = (2, 3); input x = (1, 2) (both splits exactly at the threshold: LT
and GTE are decided as onnxruntime decides them). f(x) = 3 + 10 = 13.5.
Interventional, reference r1 = (0, 0): tree 0 gives 1 at r1, 3 at x: phi0 = 2; tree 1: 0 at r1, 10
at x: phi1 = 10. Reference r2 = (2, 3): both trees give x's leaf: 0, 0. Mean: phi = (1, 5), base
value = mean f(background) = (11.5 + 13.5) / 2 = 7.5; 7.5 + 1 + 5 = 13.5.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import TensorProto, helper

from explaind.config import Settings
from explaind.engine.engine import ServedModel
from explaind.methods.base import ModelView
from explaind.methods.tree_shap import PreparedCache, TreeShap, held_bytes
from explaind.onnxgraph.signature import ModelSignature
from inprocess import explain


def two_trees(modes=("BRANCH_LT", "BRANCH_GTE")):
    node = helper.make_node(
        "TreeEnsembleRegressor", ["input"], ["scores"], domain="ai.onnx.ml", n_targets=1,
        nodes_treeids=[0, 0, 0, 1, 1, 1], nodes_nodeids=[0, 1, 2, 0, 1, 2], nodes_featureids=[0, 0, 0, 1, 0, 0],
        nodes_values=[1.0, 0, 0, 2.0, 0, 0], nodes_modes=[modes[0], "LEAF", "LEAF", modes[1], "LEAF", "LEAF"],
        nodes_truenodeids=[1, 0, 0, 1, 0, 0], nodes_falsenodeids=[2, 0, 0, 2, 0, 0],
        target_treeids=[0, 0, 1, 1], target_nodeids=[1, 2, 1, 2], target_ids=[0, 0, 0, 0],
        target_weights=[1.0, 3.0, 10.0, 0.0], base_values=[0.5])
    graph = helper.make_graph([node], "two_trees", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])


BACKGROUND = np.array([[0.0, 0.0], [2.0, 3.0]], np.float32)


def model(onx):
    signature = ModelSignature("input", "scores", (2,), "tabular", "probabilities")
    return ServedModel(f"trees-{id(onx)}", onx, signature, 16, 1.0), ModelView("tabular", signature, BACKGROUND, None,
                                                                               None, onx)


def test_interventional_values_are_the_hand_computed_ones():
    outcome, _ = explain(TreeShap(), {}, model(two_trees()), np.array([1.0, 2.0], np.float32), 0)
    np.testing.assert_allclose(outcome.attribution, [1.0, 5.0], atol=1e-6)
    assert outcome.figures["base_value"] == pytest.approx(7.5)
    assert outcome.figures["f_x"] == pytest.approx(13.5)
    assert outcome.model_evaluations == 1  # the prediction row only: the trees do the rest


def test_path_dependent_with_background_covers():
    """Covers from the background: each split sends one row each way, so every child has cover 1 of 2.
    With covers c, tree 0 (feature 0 alone) gives phi0 = f0(x) - E f0 = 3 - 2 = 1; tree 1: phi1 = 10 - 5."""
    outcome, _ = explain(TreeShap(), {"feature_perturbation": "tree_path_dependent"}, model(two_trees()),
                         np.array([1.0, 2.0], np.float32), 0)
    np.testing.assert_allclose(outcome.attribution, [1.0, 5.0], atol=1e-6)
    assert outcome.figures["base_value"] == pytest.approx(7.5)


def test_leq_and_gt_modes_at_the_threshold():
    """x0 = 1 <= 1 is true (leaf 1), x1 = 2 > 2 is false (leaf 0): f(x) = 1 + 0 + 0.5; reference r1 is
    the same leaves, r2 = (2, 3) gives 3 and 10: phi = mean((0, 0), (1 - 3, 0 - 10)) = (-1, -5)."""
    outcome, _ = explain(TreeShap(), {}, model(two_trees(("BRANCH_LEQ", "BRANCH_GT"))),
                         np.array([1.0, 2.0], np.float32), 0)
    np.testing.assert_allclose(outcome.attribution, [-1.0, -5.0], atol=1e-6)
    assert outcome.figures["f_x"] == pytest.approx(1.5)


def test_a_model_without_trees_is_refused():
    node = helper.make_node("Gemm", ["input", "w"], ["scores"])
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 1])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [1.0, 2.0])])
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    why = TreeShap().unavailable(model(onx)[1])
    assert "tree ensemble" in why and "Gemm" in why


def test_prepared_cache_drops_the_least_recently_used_beyond_its_budget():
    cache = PreparedCache(budget=1000)
    entry = [(np.zeros(50), 1.0)]  # 400 bytes held
    for key in ("a", "b"):
        cache.put(key, [(np.zeros(50), 1.0)])
    assert cache.get("a") is not None and cache.used == 800  # "a" now the most recently used
    cache.put("c", entry)
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is entry
    assert cache.used == 800
    cache.put("big", [(np.zeros(200), 1.0)])  # 1600 bytes: over the whole budget, not kept
    assert cache.get("big") is None and cache.used == 800


def test_held_bytes_counts_the_arrays_an_explainer_holds():
    shap = pytest.importorskip("shap")
    explainer = shap.TreeExplainer({"trees": [{"children_left": np.array([1, -1, -1]), "children_right": np.array([2, -1, -1]),
                                               "children_default": np.array([1, -1, -1]), "features": np.array([0, -1, -1]),
                                               "thresholds": np.array([1.0, 0, 0]), "values": np.array([[0.0], [1.0], [3.0]]),
                                               "node_sample_weight": np.array([2.0, 1.0, 1.0])}]},
                                   data=BACKGROUND.astype(np.float64), feature_perturbation="interventional")
    assert held_bytes(explainer) >= BACKGROUND.astype(np.float64).nbytes + 7 * 3 * 8


def test_repeated_requests_reuse_the_prepared_explainers():
    """With the version's derived dict (as the server passes it) the second request finds the first's
    explainers: same values; with tree_shap_cache_bytes 0 none are kept."""
    onx = two_trees()
    served, view = model(onx)
    derived: dict = {}
    view = dataclasses.replace(view, derived=derived)
    x = np.array([1.0, 2.0], np.float32)
    first, _ = explain(TreeShap(), {}, (served, view), x, 0)
    cache = derived["tree_shap.prepared"]
    assert len(cache.entries) == 1 and cache.used > 0
    (prepared, _), = cache.entries.values()
    second, _ = explain(TreeShap(), {}, (served, view), x, 0)
    assert next(iter(cache.entries.values()))[0] is prepared
    np.testing.assert_array_equal(first.attribution, second.attribution)
    np.testing.assert_allclose(second.attribution, [1.0, 5.0], atol=1e-6)
    explain(TreeShap(), {"feature_perturbation": "tree_path_dependent"}, (served, view), x, 0)
    assert len(cache.entries) == 2  # another mode, another entry
    derived.clear()
    explain(TreeShap(), {}, (served, view), x, 0, settings=Settings(intra_op_threads=1, tree_shap_cache_bytes=0))
    assert len(derived["tree_shap.prepared"].entries) == 0


def test_preload_prepares_what_a_request_looks_up():
    onx = two_trees()
    served, view = model(onx)
    derived: dict = {}
    view = dataclasses.replace(view, derived=derived)
    TreeShap().preload(view, Settings(intra_op_threads=1))
    assert derived == {}  # off by default
    settings = Settings(intra_op_threads=1, tree_shap_preload=True)
    TreeShap().preload(view, settings)
    cache = derived["tree_shap.prepared"]
    assert [key[:2] for key in cache.entries] == [("interventional", "background")]  # NONE: no LOGIT column
    prepared = next(iter(cache.entries.values()))[0]
    outcome, _ = explain(TreeShap(), {}, (served, view), np.array([1.0, 2.0], np.float32), 0, settings=settings)
    assert len(cache.entries) == 1 and next(iter(cache.entries.values()))[0] is prepared
    np.testing.assert_allclose(outcome.attribution, [1.0, 5.0], atol=1e-6)
