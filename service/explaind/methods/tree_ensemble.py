"""Tree ensembles read from an ONNX graph, in the layout shap's TreeExplainer takes (for `tree_shap`).

ai.onnx.ml `TreeEnsembleClassifier` and `TreeEnsembleRegressor` (opsets 1-3, as skl2onnx and
onnxmltools export scikit-learn, XGBoost and LightGBM) and `TreeEnsemble` (opset 5) are read from
their node attributes: per tree, its nodes (feature, threshold, mode, true and false children,
missing_value_tracks_true, hit rate) and its leaves' weights per class or target, the base values,
the aggregate function and the post transform.

shap's trees send a row left when x <= threshold (NaN: to `children_default`), so each ONNX mode is
rewritten exactly for the graph's input type (float32 inputs against float32 thresholds, as
onnxruntime compares them): BRANCH_LEQ as it is; BRANCH_LT t as <= the largest representable value
below t; BRANCH_GTE and BRANCH_GT as those with the children swapped; BRANCH_EQ and BRANCH_NEQ as two
nested splits (x <= t and not x <= below(t)), the other branch copied so the result stays a tree;
NaN follows the true branch when missing_value_tracks_true, else the branch onnxruntime's comparison
gives (false, except NEQ). BRANCH_MEMBER and the MIN/MAX aggregates have no additive form: refused.

The model's output column c is a function of the margins m (the trees' sums plus base values):
T(a m_j + b), with T identity or logistic. onnxruntime's binary case (two class labels, one class
scored) writes [1 - s, s] (weights all positive, no transform), [-s, s] or [sigma(-s), sigma(s)].
A post transform other than NONE and LOGISTIC (SOFTMAX, SOFTMAX_ZERO, PROBIT) leaves only the margin.
The transforms are read as onnxruntime applies them (measured, 1.32): a single-target
TreeEnsembleRegressor or TreeEnsemble outputs its sum untransformed (PROBIT aside), and opset 5's
post_transform 1 is the logistic, 2 the softmax (the spec numbers them the other way round).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import FailedPrecondition

FLAT_CELLS = 1 << 20  # rows x trees per step of a flattened traversal (8 MiB of node indices)
TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble")
PASS_THROUGH = {"Identity", "Cast"}
V5_MODES = {0: "BRANCH_LEQ", 1: "BRANCH_LT", 2: "BRANCH_GTE", 3: "BRANCH_GT", 4: "BRANCH_EQ", 5: "BRANCH_NEQ",
            6: "BRANCH_MEMBER"}
# The opset-5 spec numbers post_transform NONE 0, SOFTMAX 1, LOGISTIC 2, SOFTMAX_ZERO 3, PROBIT 4;
# onnxruntime (measured on 1.32) applies 1 as the logistic and 2 as the softmax. The model's output is
# what onnxruntime computes, so its reading is used (the reproduction check refuses a model whose
# runtime reads them otherwise).
V5_TRANSFORMS = {0: "NONE", 1: "LOGISTIC", 2: "SOFTMAX", 3: "SOFTMAX_ZERO", 4: "PROBIT"}
# onnxruntime writes a single-target regressor's (and opset-5 ensemble's) sum untransformed unless PROBIT.
UNTRANSFORMED_SINGLE = {"TreeEnsembleRegressor", "TreeEnsemble"}
V5_AGGREGATES = {0: "AVERAGE", 1: "SUM", 2: "MIN", 3: "MAX"}
IDENTITY = "identity"
LOGISTIC = "logistic"


@dataclass(frozen=True)
class Column:
    """An output column as a function of the margins: T(a * m[j] + b)."""

    margin: int
    scale: float
    offset: float
    transform: str  # IDENTITY | LOGISTIC


@dataclass
class Tree:
    children_left: np.ndarray
    children_right: np.ndarray
    children_default: np.ndarray
    features: np.ndarray
    thresholds: np.ndarray
    values: np.ndarray       # [nodes, margins], leaves only (inner nodes 0)
    hitrates: np.ndarray     # [nodes]: the graph's nodes_hitrates (copied nodes keep their source's)


@dataclass
class TreeModel:
    """The trees, the margins' base values and how the model's output columns come from the margins."""

    op: str
    trees: list[Tree]
    base: np.ndarray          # [margins]
    post_transform: str
    layout: str               # "margins" (column c is margin c) | "binary_positive" | "binary_signed"
    outputs: int              # the model output's columns
    num_features: int

    @property
    def margins(self) -> int:
        return len(self.base)

    @property
    def leaves(self) -> int:
        return int(sum((t.children_left < 0).sum() for t in self.trees))

    def column(self, c: int, margin: bool) -> Column:
        """Column c of the output (margin False) or its margin (the pre-transform score, margin True);
        FailedPrecondition when shap's transforms cannot express it."""
        if self.layout == "margins":
            j, a, b = c, 1.0, 0.0
        else:  # binary: one margin s; column 1 is s, column 0 is 1 - s or -s (before the transform)
            j, a = 0, (1.0 if c == 1 else -1.0)
            b = 1.0 if (self.layout == "binary_positive" and c == 0) else 0.0
        if margin:
            if self.post_transform == "NONE":
                raise FailedPrecondition(f"the {self.op}'s post_transform is NONE: its output is the trees' sum "
                                         "itself and has no separate margin (ask for the PROBABILITY score)")
            if self.layout == "binary_positive":
                raise FailedPrecondition(f"the {self.op} writes [1 - s, s] for its two classes: no margin")
            return Column(j, a, 0.0, IDENTITY)
        if self.post_transform == "NONE":
            return Column(j, a, b, IDENTITY)
        if self.post_transform == "LOGISTIC" and self.layout != "binary_positive":
            return Column(j, a, b, LOGISTIC)
        raise FailedPrecondition(f"the {self.op}'s post_transform {self.post_transform} over the margins has no "
                                 "form in TreeExplainer (identity or logistic of one margin); explain the margin "
                                 "(score LOGIT) instead")

    @functools.cached_property
    def flat(self) -> "FlatTrees":
        """All trees in one node array (computed once per model: the per-request traversals use it)."""
        return FlatTrees.of(self.trees)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """[R, outputs]: the model's output as onnxruntime computes it, from these trees (a check that
        they were read right)."""
        flat = self.flat
        rows = np.asarray(rows, np.float64)
        margins = np.empty((len(rows), self.margins))
        for start, leaves in flat.leaves_reached(rows):
            margins[start:start + len(leaves)] = self.base + flat.values[leaves].sum(axis=1)
        if self.layout != "margins":
            s = margins[:, 0]
            if self.layout == "binary_positive":
                return np.stack([1.0 - s, s], axis=1)
            return (np.stack([_sigmoid(-s), _sigmoid(s)], axis=1) if self.post_transform == "LOGISTIC"
                    else np.stack([-s, s], axis=1))
        if self.post_transform == "LOGISTIC":
            return _sigmoid(margins)
        if self.post_transform in ("SOFTMAX", "SOFTMAX_ZERO"):
            shifted = np.exp(margins - margins.max(axis=1, keepdims=True))
            if self.post_transform == "SOFTMAX_ZERO":
                shifted = np.where(margins == 0, 0.0, shifted)
            return shifted / np.maximum(shifted.sum(axis=1, keepdims=True), 1e-300)
        if self.post_transform == "PROBIT":
            from scipy.special import ndtri

            return ndtri(margins)  # onnxruntime: sqrt(2) erfinv(2 m - 1)
        return margins

    def shap_model(self, column: Column, covers: list[np.ndarray] | None = None) -> dict[str, Any]:
        """shap's custom model dict for one column: single-output trees a * values[:, j], base offset
        a * base[j] + b, tree_output log_odds for a logistic column. `covers` (per tree, per node)
        are the node weights for the path-dependent algorithm (shap recomputes them from the
        background in interventional mode)."""
        trees = []
        for i, t in enumerate(self.trees):
            weights = covers[i] if covers is not None else np.ones(len(t.features))
            trees.append({"children_left": t.children_left, "children_right": t.children_right,
                          "children_default": t.children_default, "features": t.features,
                          "thresholds": t.thresholds, "values": column.scale * t.values[:, column.margin:column.margin + 1],
                          "node_sample_weight": np.asarray(weights, np.float64).copy()})
        return {"trees": trees, "base_offset": column.scale * float(self.base[column.margin]) + column.offset,
                "tree_output": "log_odds" if column.transform == LOGISTIC else "raw_value",
                "objective": "binary_crossentropy" if column.transform == LOGISTIC else "squared_error",
                "input_dtype": np.float64, "internal_dtype": np.float64}


@dataclass(frozen=True)
class FlatTrees:
    """Every tree's nodes in one array (children as indices into it, -1 for a leaf's): one traversal
    step moves every row down every tree at once (numpy, no loop over trees)."""

    left: np.ndarray         # [N]
    right: np.ndarray
    default: np.ndarray
    feature: np.ndarray      # [N], 0 at leaves (never read there)
    threshold: np.ndarray
    values: np.ndarray       # [N, margins]
    roots: np.ndarray        # [T]
    offsets: np.ndarray      # [T + 1]: tree t's nodes are offsets[t]:offsets[t + 1]

    @staticmethod
    def of(trees: list[Tree]) -> "FlatTrees":
        sizes = np.array([len(t.features) for t in trees], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

        def shifted(name: str) -> np.ndarray:
            return np.concatenate([np.where(getattr(t, name) >= 0, getattr(t, name).astype(np.int64) + offsets[i], -1)
                                   for i, t in enumerate(trees)])

        return FlatTrees(shifted("children_left"), shifted("children_right"), shifted("children_default"),
                         np.concatenate([np.maximum(t.features, 0) for t in trees]).astype(np.int64),
                         np.concatenate([t.thresholds for t in trees]), np.concatenate([t.values for t in trees]),
                         offsets[:-1].copy(), offsets)

    def chunks(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """The rows (float64) in chunks of at most FLAT_CELLS rows x trees: (start, chunk)."""
        rows = np.asarray(rows, np.float64)
        per = max(1, FLAT_CELLS // max(1, len(self.roots)))
        for start in range(0, len(rows), per):
            yield start, rows[start:start + per]

    def steps(self, chunk: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(nodes [r, T], moved [r, T]): every row at every tree's root (moved None), then after each
        step down (a row already at a leaf stays there, moved False)."""
        node = np.broadcast_to(self.roots, (len(chunk), len(self.roots))).copy()
        yield node, None
        at = np.arange(len(chunk))[:, None]
        while True:
            left = self.left[node]
            inner = left >= 0
            if not inner.any():
                return
            x = chunk[at, self.feature[node]]
            step = np.where(np.isnan(x), self.default[node], np.where(x <= self.threshold[node], left, self.right[node]))
            node = np.where(inner, step, node)
            yield node, inner

    def leaves_reached(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """For chunks of rows (start, [r, T] the leaf each row reaches in each tree)."""
        for start, chunk in self.chunks(rows):
            for node, _ in self.steps(chunk):
                pass
            yield start, node

    def covers(self, rows: np.ndarray) -> list[np.ndarray]:
        """Per tree, how many of the rows reach each of its nodes."""
        count = np.zeros(len(self.left))
        for _, chunk in self.chunks(rows):
            for node, moved in self.steps(chunk):
                count += np.bincount(node.ravel() if moved is None else node[moved], minlength=len(count))
        return [count[self.offsets[t]:self.offsets[t + 1]] for t in range(len(self.roots))]

def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        out[a.name] = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
    return out


def _get(attrs: dict[str, Any], name: str, default: Any = None) -> Any:
    """An attribute or its `_as_tensor` form."""
    if name in attrs:
        return attrs[name]
    return attrs.get(f"{name}_as_tensor", default)


def find_tree_node(model: onnx.ModelProto, input_name: str, output_name: str) -> tuple[onnx.NodeProto, str]:
    """The tree-ensemble node whose scores are the model's output (through Identity/Cast), fed by the
    graph's input (through Identity/Cast), and the input's element type; FailedPrecondition naming
    what is there instead."""
    producer = {out: node for node in model.graph.node for out in node.output}
    ones = {t.name for t in model.graph.initializer if np.all(numpy_helper.to_array(t) == 1)}
    tensor = output_name
    while True:
        node = producer.get(tensor)
        if node is None:
            raise FailedPrecondition(f"tree_shap needs a model whose output {output_name!r} is a tree ensemble's "
                                     f"scores (ai.onnx.ml {', '.join(TREE_OPS)}); it is a graph input or initializer")
        if node.op_type in PASS_THROUGH:
            tensor = node.input[0]
            continue
        if node.op_type == "Mul" and len(node.input) == 2 and any(i in ones for i in node.input):
            tensor = next((i for i in node.input if i not in ones), node.input[0])  # onnxmltools' LightGBM: x 1
            continue
        if node.op_type not in TREE_OPS or node.domain != "ai.onnx.ml":
            raise FailedPrecondition(f"tree_shap needs a model whose output {output_name!r} is a tree ensemble's "
                                     f"scores (ai.onnx.ml {', '.join(TREE_OPS)}, through Identity, Cast or x 1 only); "
                                     f"it comes from a {node.op_type} node ({node.name!r})")
        wanted = 1 if node.op_type == "TreeEnsembleClassifier" else 0
        if list(node.output).index(tensor) != wanted:
            raise FailedPrecondition(f"tree_shap explains the scores of {node.op_type} {node.name!r}; the model's "
                                     f"output {output_name!r} is its label output")
        break
    feed = node.input[0]
    while feed != input_name:
        up = producer.get(feed)
        if up is None or up.op_type not in PASS_THROUGH:
            what = "an initializer" if up is None else f"a {up.op_type} node ({up.name!r})"
            raise FailedPrecondition(f"tree_shap needs the {node.op_type} to read the model's input {input_name!r} "
                                     f"directly (through Identity or Cast only); it reads {what}")
        feed = up.input[0]
    dtype = next((i.type.tensor_type.elem_type for i in model.graph.input if i.name == input_name), 1)
    return node, ("float64" if dtype == onnx.TensorProto.DOUBLE else "float32")


def read_trees(model: onnx.ModelProto, input_name: str, output_name: str, num_features: int) -> TreeModel:
    """The tree ensemble producing the model's output, in shap's layout (module docstring)."""
    node, dtype = find_tree_node(model, input_name, output_name)
    attrs = _attributes(node)
    if node.op_type == "TreeEnsemble":
        return _read_v5(node, attrs, dtype, num_features)
    return _read_v3(node, attrs, dtype, num_features)


def _largest_at_most(t: float, dtype: str, strict: bool) -> float:
    """The largest input value v (of the graph's input type) with v <= t, or v < t when strict: the
    threshold that makes shap's `x <= threshold` the comparison onnxruntime makes."""
    kind = np.float32 if dtype == "float32" else np.float64
    v = kind(t)
    if float(v) > t or (strict and float(v) == t):
        v = np.nextafter(v, kind(-np.inf))
    return float(v)


class _Builder:
    """One tree in shap's layout, node by node (copies of subtrees for EQ/NEQ)."""

    def __init__(self) -> None:
        self.left: list[int] = []
        self.right: list[int] = []
        self.default: list[int] = []
        self.feature: list[int] = []
        self.threshold: list[float] = []
        self.value: list[np.ndarray] = []
        self.hit: list[float] = []

    def new(self, hit: float, margins: int) -> int:
        self.left.append(-1), self.right.append(-1), self.default.append(-1)
        self.feature.append(-1), self.threshold.append(0.0), self.value.append(np.zeros(margins)), self.hit.append(hit)
        return len(self.left) - 1

    def split(self, i: int, feature: int, threshold: float, left: int, right: int, default_left: bool) -> None:
        self.feature[i], self.threshold[i], self.left[i], self.right[i] = feature, threshold, left, right
        self.default[i] = left if default_left else right

    def tree(self) -> Tree:
        return Tree(np.array(self.left, np.int32), np.array(self.right, np.int32), np.array(self.default, np.int32),
                    np.array(self.feature, np.int32), np.array(self.threshold, np.float64),
                    np.array(self.value, np.float64), np.array(self.hit, np.float64))


@dataclass
class _Node:
    mode: str
    feature: int
    threshold: float
    true: Any       # a _Node key or a leaf value [margins]
    false: Any
    tracks_true: bool
    hit: float


def _emit(b: _Builder, key: Any, nodes: dict[Any, _Node], leaves: dict[Any, tuple[np.ndarray, float]], dtype: str,
          margins: int, depth: int, where: str) -> int:
    """Write the subtree at `key` into b (leaves: their values and hit rates); returns its root's index."""
    if depth > 256:
        raise FailedPrecondition(f"{where}: a tree deeper than 256 levels (or a cycle in its node ids)")
    if key in leaves:
        value, hit = leaves[key]
        i = b.new(hit, margins)
        b.value[i] = value
        return i
    n = nodes[key]
    i = b.new(n.hit, margins)

    def sub(k: Any) -> int:
        return _emit(b, k, nodes, leaves, dtype, margins, depth + 1, where)

    mode = n.mode
    if mode in ("BRANCH_LEQ", "BRANCH_LT"):
        t = _largest_at_most(n.threshold, dtype, strict=mode == "BRANCH_LT")
        true, false = sub(n.true), sub(n.false)
        b.split(i, n.feature, t, true, false, default_left=n.tracks_true)
    elif mode in ("BRANCH_GT", "BRANCH_GTE"):  # x > t is not x <= t; x >= t is not x < t
        t = _largest_at_most(n.threshold, dtype, strict=mode == "BRANCH_GTE")
        false, true = sub(n.false), sub(n.true)
        b.split(i, n.feature, t, false, true, default_left=not n.tracks_true)
    elif mode in ("BRANCH_EQ", "BRANCH_NEQ"):  # x == t: x <= t and not x <= below(t)
        at, below = _largest_at_most(n.threshold, dtype, False), _largest_at_most(n.threshold, dtype, True)
        eq, ne = (n.true, n.false) if mode == "BRANCH_EQ" else (n.false, n.true)
        inner = b.new(n.hit, margins)
        ne_low, eq_node = sub(ne), sub(eq)
        b.split(inner, n.feature, below, ne_low, eq_node, default_left=False)
        ne_high = sub(ne)
        # NaN == t is false, NaN != t is true: the true branch unless EQ without tracks_true
        nan_true = n.tracks_true or mode == "BRANCH_NEQ"
        nan_to_eq = nan_true == (mode == "BRANCH_EQ")
        b.split(i, n.feature, at, inner, ne_high, default_left=nan_to_eq)
        b.default[inner] = eq_node if nan_to_eq else ne_low
    else:
        raise FailedPrecondition(f"{where}: node mode {mode} has no threshold form in TreeExplainer")
    return i


def _check_feature(feature: int, num_features: int, where: str) -> None:
    if not 0 <= feature < num_features:
        raise FailedPrecondition(f"{where}: a node splits on feature {feature}, outside the model's "
                                 f"{num_features} features")


def _read_v3(node: onnx.NodeProto, attrs: dict[str, Any], dtype: str, num_features: int) -> TreeModel:
    op = node.op_type
    where = f"{op} {node.name!r}"
    classifier = op == "TreeEnsembleClassifier"
    prefix = "class" if classifier else "target"
    tree_ids = np.asarray(attrs.get("nodes_treeids", []), np.int64)
    node_ids = np.asarray(attrs.get("nodes_nodeids", []), np.int64)
    features = np.asarray(attrs.get("nodes_featureids", []), np.int64)
    values = np.asarray(_get(attrs, "nodes_values", []), np.float64)
    modes = [m.decode() if isinstance(m, bytes) else str(m) for m in attrs.get("nodes_modes", [])]
    true_ids = np.asarray(attrs.get("nodes_truenodeids", []), np.int64)
    false_ids = np.asarray(attrs.get("nodes_falsenodeids", []), np.int64)
    count = len(tree_ids)
    tracks = np.asarray(attrs.get("nodes_missing_value_tracks_true", [0] * count), np.int64)
    hits = np.asarray(_get(attrs, "nodes_hitrates", [1.0] * count), np.float64)
    if not (len(node_ids) == len(features) == len(values) == len(modes) == len(true_ids) == len(false_ids)
            == len(tracks) == len(hits) == count) or count == 0:
        raise FailedPrecondition(f"{where}: its nodes_* attributes are missing or of different lengths")
    w_trees = np.asarray(attrs.get(f"{prefix}_treeids", []), np.int64)
    w_nodes = np.asarray(attrs.get(f"{prefix}_nodeids", []), np.int64)
    w_ids = np.asarray(attrs.get(f"{prefix}_ids", []), np.int64)
    w_values = np.asarray(_get(attrs, f"{prefix}_weights", []), np.float64)
    if not len(w_trees) == len(w_nodes) == len(w_ids) == len(w_values):
        raise FailedPrecondition(f"{where}: its {prefix}_* attributes are of different lengths")
    if classifier:
        labels = attrs.get("classlabels_int64s") or attrs.get("classlabels_strings") or []
        outputs = len(labels)
    else:
        outputs = int(attrs.get("n_targets", 1))
    base = np.asarray(_get(attrs, "base_values", []), np.float64)
    transform = attrs.get("post_transform", b"NONE")
    transform = transform.decode() if isinstance(transform, bytes) else str(transform)
    aggregate = attrs.get("aggregate_function", b"SUM")
    aggregate = aggregate.decode() if isinstance(aggregate, bytes) else str(aggregate)
    scored = sorted(set(w_ids.tolist()))
    if scored and not 0 <= scored[0] <= scored[-1] < max(outputs, 1):
        raise FailedPrecondition(f"{where}: {prefix}_ids outside its {outputs} outputs")
    binary = classifier and outputs == 2 and len(scored) == 1 and len(base) <= 1
    if binary:
        layout = "binary_positive" if (w_values >= 0).all() and transform == "NONE" else "binary_signed"
        if (w_values >= 0).all() and transform != "NONE":
            raise FailedPrecondition(f"{where}: a two-class ensemble with all-positive weights and post_transform "
                                     f"{transform} (onnxruntime's binary case without a transform): not supported")
        margins = 1
        w_ids = np.zeros_like(w_ids)
    else:
        layout, margins = "margins", outputs
    base_margins = np.zeros(margins)
    if len(base):
        if len(base) != margins:
            raise FailedPrecondition(f"{where}: {len(base)} base_values for {margins} scores")
        base_margins = base.copy()
    leaf_values: dict[tuple[int, int], np.ndarray] = {}
    for t, n, k, v in zip(w_trees.tolist(), w_nodes.tolist(), w_ids.tolist(), w_values.tolist()):
        leaf_values.setdefault((t, n), np.zeros(margins))[k] += v
    nodes: dict[Any, _Node] = {}
    leaves: dict[Any, tuple[np.ndarray, float]] = {}
    children: dict[int, set[int]] = {}
    for i in range(count):
        key = (int(tree_ids[i]), int(node_ids[i]))
        if modes[i] == "LEAF":
            leaves[key] = (leaf_values.get(key, np.zeros(margins)), float(hits[i]))
            continue
        _check_feature(int(features[i]), num_features, where)
        nodes[key] = _Node(modes[i], int(features[i]), float(values[i]), (key[0], int(true_ids[i])),
                           (key[0], int(false_ids[i])), bool(tracks[i]), float(hits[i]))
        children.setdefault(key[0], set()).update((int(true_ids[i]), int(false_ids[i])))
    for n in nodes.values():
        for child in (n.true, n.false):
            if child not in nodes and child not in leaves:
                raise FailedPrecondition(f"{where}: tree {child[0]} refers to node {child[1]}, which it lacks")
    trees = []
    for tree in sorted(set(tree_ids.tolist())):
        ids = set(node_ids[tree_ids == tree].tolist())
        roots = sorted(ids - children.get(tree, set()))
        if len(roots) != 1:
            raise FailedPrecondition(f"{where}: tree {tree} has {len(roots)} roots")
        b = _Builder()
        _emit(b, (tree, roots[0]), nodes, leaves, dtype, margins, 0, where)
        trees.append(b.tree())
    return _aggregate(op, where, trees, base_margins, transform, aggregate, layout, outputs, num_features)


def _aggregate(op: str, where: str, trees: list[Tree], base: np.ndarray, transform: str, aggregate: str,
               layout: str, outputs: int, num_features: int) -> TreeModel:
    if aggregate == "AVERAGE":  # onnxruntime: the sum over trees / their number, then the base values
        for t in trees:
            t.values = t.values / len(trees)
    elif aggregate != "SUM":
        raise FailedPrecondition(f"{where}: aggregate_function {aggregate} is not a sum over trees (Tree SHAP "
                                 "needs an additive ensemble)")
    if op in UNTRANSFORMED_SINGLE and layout == "margins" and len(base) == 1 and transform != "PROBIT":
        transform = "NONE"
    return TreeModel(op, trees, base, transform, layout, outputs, num_features)


def _read_v5(node: onnx.NodeProto, attrs: dict[str, Any], dtype: str, num_features: int) -> TreeModel:
    where = f"TreeEnsemble {node.name!r}"
    features = np.asarray(attrs.get("nodes_featureids", []), np.int64)
    splits = np.asarray(attrs.get("nodes_splits", np.zeros(0)), np.float64).ravel()
    modes = np.asarray(attrs.get("nodes_modes", np.zeros(len(features))), np.int64).ravel()
    true_ids = np.asarray(attrs.get("nodes_truenodeids", []), np.int64)
    false_ids = np.asarray(attrs.get("nodes_falsenodeids", []), np.int64)
    true_leaf = np.asarray(attrs.get("nodes_trueleafs", [0] * len(features)), np.int64)
    false_leaf = np.asarray(attrs.get("nodes_falseleafs", [0] * len(features)), np.int64)
    tracks = np.asarray(attrs.get("nodes_missing_value_tracks_true", [0] * len(features)), np.int64)
    hits = np.asarray(attrs.get("nodes_hitrates", np.ones(len(features))), np.float64).ravel()
    roots = [int(r) for r in attrs.get("tree_roots", [])]
    targets = np.asarray(attrs.get("leaf_targetids", []), np.int64)
    weights = np.asarray(attrs.get("leaf_weights", np.zeros(0)), np.float64).ravel()
    outputs = int(attrs.get("n_targets", 1))
    if not roots or not (len(splits) == len(modes) == len(true_ids) == len(false_ids) == len(true_leaf)
                         == len(false_leaf) == len(tracks) == len(hits) == len(features)):
        raise FailedPrecondition(f"{where}: its nodes_* attributes are missing or of different lengths")
    if len(targets) != len(weights) or (len(targets) and not 0 <= targets.min() <= targets.max() < outputs):
        raise FailedPrecondition(f"{where}: its leaf_* attributes disagree with each other or with n_targets")
    nodes: dict[Any, _Node] = {}
    leaves: dict[Any, tuple[np.ndarray, float]] = {}
    for leaf in range(len(weights)):  # opset 5 has no leaf hit rates: a leaf's cover is 1
        value = np.zeros(outputs)
        value[targets[leaf]] = weights[leaf]
        leaves[("leaf", leaf)] = (value, 1.0)
    for i in range(len(features)):
        mode = V5_MODES.get(int(modes[i]), f"mode {int(modes[i])}")
        if mode == "BRANCH_MEMBER":
            raise FailedPrecondition(f"{where}: node {i} is a set-membership split (BRANCH_MEMBER), which has no "
                                     "threshold form in TreeExplainer")
        _check_feature(int(features[i]), num_features, where)
        true = ("leaf", int(true_ids[i])) if true_leaf[i] else ("node", int(true_ids[i]))
        false = ("leaf", int(false_ids[i])) if false_leaf[i] else ("node", int(false_ids[i]))
        nodes[("node", i)] = _Node(mode, int(features[i]), float(splits[i]), true, false, bool(tracks[i]),
                                   float(hits[i]))
    for n in nodes.values():
        for child in (n.true, n.false):
            if child not in nodes and child not in leaves:
                raise FailedPrecondition(f"{where}: a node refers to {child[0]} {child[1]}, which it lacks")
    trees = []
    for root in roots:
        b = _Builder()
        key = ("node", root)
        n = nodes.get(key)
        if n is not None and n.true == n.false and n.true in leaves:  # the spec's single-leaf tree
            key = n.true
        _emit(b, key, nodes, leaves, dtype, outputs, 0, where)
        trees.append(b.tree())
    transform = V5_TRANSFORMS.get(int(attrs.get("post_transform", 0)), "unknown")
    aggregate = V5_AGGREGATES.get(int(attrs.get("aggregate_function", 1)), "unknown")
    return _aggregate("TreeEnsemble", where, trees, np.zeros(outputs), transform, aggregate, "margins", outputs,
                      num_features)
