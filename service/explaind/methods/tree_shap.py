"""Tree SHAP (Lundberg et al. 2020, "From local explanations to global understanding with explainable
AI for trees", Nature Machine Intelligence 2:56-67): exact Shapley values of a tree ensemble.

Why: for trees the Shapley values need no sampling. The trees are read from the model's own graph
(ai.onnx.ml TreeEnsembleClassifier / TreeEnsembleRegressor / TreeEnsemble, see tree_ensemble.py:
every split mode rewritten to shap's `x <= threshold` exactly for float32 inputs) and handed to
shap's TreeExplainer as a custom model; they are checked first to reproduce the model's output for
the input (else FAILED_PRECONDITION). The prediction is the only row run through the model.

* interventional (default): phi_i = mean over the background rows r of the Shapley values of the
  game v(S) = g(f(x_S, r_~S)) (Janzing et al. 2020), the model's background rows all used (shap's
  TreeExplainer alone would sample 100 of them: the rows are taken in chunks of at most 100, each
  chunk's values weighted by its rows). g is the identity on the margin or on a NONE-transform
  output, or shap's model_output="probability" for a LOGISTIC output (per reference row, the margin's
  values rescaled by (sigma(f(x)) - sigma(f(r))) / (f(x) - f(r)), as shap does).
* tree_path_dependent: the conditional expectation along each tree's paths, weighted by each node's
  cover. ONNX trees carry no training covers, so `covers` says where they come from: `background`
  (default): the model's background rows run down the trees (shap's TreeExplainer given `data`
  does the same; uncovered nodes get 1e-6), or `hitrates`: the graph's nodes_hitrates, when the
  exporter wrote covers there (the converters write 1.0 everywhere: refused). With the training
  rows as background, or their counts as hit rates, this equals shap on the original estimator.
  Margin (or NONE-transform output) only: shap has no probability form of it.

Score: PROBABILITY (default) is the model's output column (NONE or LOGISTIC post transforms); LOGIT
is the ensemble's margin before the post transform, read from the graph even when the model outputs
probabilities (SOFTMAX models: LOGIT only). Figures: base_value (E[g]), f_x, trees, leaves,
background_rows. Work runs in chunks off the event loop, the deadline and cancellation honoured
between chunks. The first request for a column and mode prepares its TreeExplainers (shap's arrays,
the background or covers set); they are kept per model version, within tree_shap_cache_bytes (least
recently used dropped), so later requests run only shap's algorithm on the input (tabular demo,
through gRPC, warm: ~3 ms per request); tree_shap_preload prepares the interventional ones of
every column when the version loads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import numpy as np

from ..config import Settings
from ..errors import FailedPrecondition, InvalidArgument
from .base import LOGIT, PROBABILITY, Await, Method, MethodContext, ModelView, Result, Stages
from .params import TABULAR, Choice
from .tree_ensemble import IDENTITY, LOGISTIC, Column, TreeModel, read_trees

SHAP_MAX_BACKGROUND = 100   # shap's Independent masker samples more rows than this down to 100
NODE_VISITS_PER_CHUNK = 2_000_000  # rows x nodes per chunk: tens of milliseconds between deadline checks
OUTPUT_TOLERANCE = 1e-4     # the trees' output against onnxruntime's (float32 sums), relative to the scale


def tree_model(model: ModelView) -> TreeModel:
    """The model's tree ensemble (FailedPrecondition naming why there is none)."""
    if model.graph is None:
        raise FailedPrecondition("tree_shap reads the trees from the model's graph, which this model lacks")
    sig = model.signature
    graph = model.graph
    return model.derive("tree_shap", lambda: read_trees(graph, sig.input_name, sig.output_name, int(np.prod(sig.example_shape))))


def explained_column(trees: TreeModel, target: int, score: str, model_scores: str) -> Column:
    """The function of the margins the request's score is, for the target class."""
    if model_scores == "logits":
        if score == PROBABILITY:
            raise FailedPrecondition("the model outputs logits and its probability is a softmax over them, which "
                                     "TreeExplainer cannot transform: ask for the LOGIT score")
        return trees.column(target, margin=False)
    return trees.column(target, margin=score == LOGIT)


def check_reproduces(trees: TreeModel, x: np.ndarray, output: np.ndarray) -> None:
    """The trees as read must give the model's output for x (onnxruntime's float32 sums aside)."""
    ours = trees.predict(x[None, :])[0]
    output = np.asarray(output, np.float64).ravel()
    if ours.shape != output.shape:
        raise FailedPrecondition(f"the {trees.op} read from the graph gives {ours.size} scores, the model "
                                 f"outputs {output.size}")
    gap = float(np.max(np.abs(ours - output)))
    if gap > OUTPUT_TOLERANCE * max(1.0, float(np.max(np.abs(output)))):
        raise FailedPrecondition(f"the {trees.op} read from the graph does not reproduce the model's output "
                                 f"for this input (largest difference {gap:.3g}): a layout tree_shap does not know")


def background_covers(trees: TreeModel, background: np.ndarray) -> list[np.ndarray]:
    """Per tree, how many background rows reach each node (as shap's TreeExplainer computes them
    from `data`), zero covers raised to 1e-6 as shap does (its path weights divide by them)."""
    return [np.where(count == 0.0, 1e-6, count) for count in trees.flat.covers(np.asarray(background, np.float64))]


def hitrate_covers(trees: TreeModel) -> list[np.ndarray]:
    if trees.op == "TreeEnsemble":
        raise FailedPrecondition("tree_shap.covers hitrates: an opset-5 TreeEnsemble has no hit rates for its "
                                 "leaves; use covers background")
    covers = [t.hitrates for t in trees.trees]
    if all(np.all(c == 1.0) for c in covers):
        raise FailedPrecondition("tree_shap.covers hitrates: the graph's nodes_hitrates are all 1 (the exporters' "
                                 "placeholder, not covers); use covers background")
    if any(np.any(~np.isfinite(c) | (c <= 0)) for c in covers):
        raise FailedPrecondition("tree_shap.covers hitrates: every node's hit rate must be a positive number")
    return covers


Prepared = list[tuple[Any, float]]  # per chunk: (a shap TreeExplainer, its background rows; 0 for trees)
Build = Callable[[], tuple[Any, float]]


def interventional_builds(trees: TreeModel, column: Column, background: np.ndarray) -> list[Build]:
    """Chunks of background rows, each a TreeExplainer over its rows (weighted by them)."""
    nodes = max(1, sum(len(t.features) for t in trees.trees))
    size = int(max(1, min(SHAP_MAX_BACKGROUND, NODE_VISITS_PER_CHUNK // nodes)))
    model = trees.shap_model(column)
    output = "probability" if column.transform == LOGISTIC else "raw"
    rows = np.asarray(background, np.float64)

    def build(chunk: np.ndarray) -> Build:
        def run() -> tuple[Any, float]:
            import shap

            return (shap.TreeExplainer(model, data=chunk, feature_perturbation="interventional", model_output=output),
                    float(len(chunk)))
        return run

    return [build(rows[start:start + size]) for start in range(0, len(rows), size)]


def path_dependent_builds(trees: TreeModel, column: Column, covers: list[np.ndarray]) -> list[Build]:
    """Chunks of trees (the values add over trees), each a TreeExplainer over its trees."""
    model = trees.shap_model(column, covers)
    all_trees = model["trees"]
    nodes = [len(t["features"]) for t in all_trees]
    per_chunk = max(1, NODE_VISITS_PER_CHUNK // max(1, max(nodes) * 64))
    builds = []
    for start in range(0, len(all_trees), per_chunk):
        chunk = {**model, "trees": all_trees[start:start + per_chunk],
                 "base_offset": model["base_offset"] if start == 0 else 0.0}

        def run(chunk: dict[str, Any] = chunk) -> tuple[Any, float]:
            import shap

            return shap.TreeExplainer(chunk, feature_perturbation="tree_path_dependent"), 0.0
        builds.append(run)
    return builds


def explain_part(explainer: Any, rows: float, x: np.ndarray) -> tuple[np.ndarray, float]:
    """One chunk's phi and expected value, weighted by its background rows (trees: unweighted)."""
    phi = np.asarray(explainer.shap_values(x[None, :], check_additivity=False), np.float64).reshape(-1)
    base = float(np.ravel(explainer.expected_value)[0])
    weight = rows if rows else 1.0
    return phi * weight, base * weight


def held_bytes(value: Any, seen: set[int] | None = None, depth: int = 0) -> int:
    """The bytes of the numpy arrays an object holds (through dicts, lists and attributes, 4 levels):
    what a prepared TreeExplainer costs the cache."""
    seen = set() if seen is None else seen
    if id(value) in seen or depth > 4:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(held_bytes(v, seen, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(held_bytes(v, seen, depth + 1) for v in value)
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return sum(held_bytes(v, seen, depth + 1) for v in vars(value).values())
    return 0


class PreparedCache:
    """The TreeExplainers prepared for one model version, by (feature_perturbation, covers, column).

    A version's graph (its sha256) and background rows are fixed, so the key within it is the mode
    and the explained column; the explainer keeps one cache per version (ModelView.derived) and drops
    it with the version. Bounded by `budget` bytes (the arrays the explainers hold, measured): the
    least recently used are dropped beyond it; a preparation larger than the budget is not kept.
    Thread-safe (requests prepare in worker threads; two concurrent misses both build, one is kept)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.entries: OrderedDict[Hashable, tuple[Prepared, int]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Hashable) -> Prepared | None:
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                return None
            self.entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, prepared: Prepared) -> int:
        """Keep `prepared` (unless over the whole budget or already there); returns how many entries
        were dropped to make room, -1 when it was not kept."""
        size = held_bytes(prepared)
        dropped = 0
        with self.lock:
            if size > self.budget or key in self.entries:
                return -1
            self.entries[key] = (prepared, size)
            self.used += size
            while self.used > self.budget:
                _, (_, freed) = self.entries.popitem(last=False)
                self.used -= freed
                dropped += 1
        return dropped


def prepared_cache(model: ModelView, settings: Settings) -> PreparedCache:
    return model.derive("tree_shap.prepared", lambda: PreparedCache(settings.tree_shap_cache_bytes))


async def _checkpoint() -> None:
    """Nothing: a yield between chunks, where the deadline and cancellation are honoured."""


class TreeShap(Method):
    name = "tree_shap"
    title = "Tree SHAP"
    reference = ("Lundberg et al. 2020, From local explanations to global understanding with explainable AI for "
                 "trees; shap TreeExplainer")
    description = "Exact Shapley values of an ONNX tree ensemble, its trees read from the graph (shap TreeExplainer)."
    kinds = TABULAR
    default_score = PROBABILITY
    margin_logit = True
    figures = ("base_value", "f_x", "trees", "leaves", "background_rows")
    params = (
        Choice("feature_perturbation", "interventional", ("interventional", "tree_path_dependent"),
               "interventional (the model's background rows) | tree_path_dependent (node covers)"),
        Choice("covers", "background", ("background", "hitrates"),
               "tree_path_dependent: node covers from the background rows run down the trees | the graph's "
               "nodes_hitrates"),
    )

    def unavailable(self, model: ModelView) -> str:
        try:
            tree_model(model)
        except FailedPrecondition as why:
            return str(why)
        return ""

    def preload(self, model: ModelView, settings: Settings) -> None:
        """tree_shap_preload: the interventional explainers of every output column, PROBABILITY and LOGIT
        where the model has them, prepared into the version's cache (the key a request looks up);
        stops once the cache is full (an entry not kept or one dropped)."""
        if not settings.tree_shap_preload or model.background is None:
            return
        trees = tree_model(model)
        cache = prepared_cache(model, settings)
        background = np.asarray(model.background, np.float32)
        for c in range(max(trees.outputs, 1)):
            for score in (PROBABILITY, LOGIT):
                try:
                    column = explained_column(trees, c, score, model.signature.scores)
                except FailedPrecondition:
                    continue
                key = ("interventional", "background", column)
                if cache.get(key) is not None:
                    continue
                if cache.put(key, [build() for build in interventional_builds(trees, column, background)]) != 0:
                    return  # full: what is there now serves the requests

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        interventional = params["feature_perturbation"] == "interventional"
        if interventional and "covers" in params and params["covers"] != "background":
            raise InvalidArgument("tree_shap.covers", "background (or unset) with interventional feature_perturbation "
                                  "(covers are for tree_path_dependent)", params["covers"])
        if model.background is None and (interventional or params["covers"] == "background"):
            raise FailedPrecondition("tree_shap needs background rows (interventional, or covers from the background): "
                                     "add `background:` to the model's model.yaml, or use tree_path_dependent with "
                                     "covers hitrates")
        trees = tree_model(model)
        nodes = sum(len(t.features) for t in trees.trees)
        need = nodes * (4 * 4 + 4 * 8)  # shap's dense arrays: 4 int32 and 4 float64 per node (one output)
        if need > settings.max_request_memory_bytes:
            raise FailedPrecondition(f"tree_shap: the ensemble's {nodes} nodes need {need} bytes in shap's layout, "
                                     f"over the server's max_request_memory_bytes of {settings.max_request_memory_bytes}")
        if not interventional:
            for c in range(max(trees.outputs, 1)):  # the score must have a margin form (checked per target later)
                try:
                    column = explained_column(trees, c, score, model.signature.scores)
                except FailedPrecondition:
                    continue
                if column.transform != IDENTITY:
                    raise InvalidArgument("tree_shap.feature_perturbation", "interventional for the probability of "
                                          f"a {trees.post_transform} ensemble (shap's path-dependent algorithm explains "
                                          "the margin only), or the LOGIT score", "tree_path_dependent")
                break
        return params

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        trees = tree_model(ctx.model)
        prediction = ctx.prediction
        output = prediction.logits if prediction.logits is not None else prediction.probabilities  # type: ignore[union-attr]
        check_reproduces(trees, ctx.x.astype(np.float32).astype(np.float64), output)
        column = explained_column(trees, ctx.target, ctx.score, ctx.model.signature.scores)
        x = ctx.x.astype(np.float32).astype(np.float64)
        background = ctx.model.background
        perturbation = params["feature_perturbation"]
        covers = params.get("covers", "background")
        key = (perturbation, covers, column)
        cache = prepared_cache(ctx.model, ctx.settings)
        prepared = cache.get(key)
        if prepared is None:  # first request for this column and mode: build, one chunk per step
            if perturbation == "interventional":
                builds = interventional_builds(trees, column, np.asarray(background, np.float32))
            else:
                node_covers = (background_covers(trees, np.asarray(background, np.float32)) if covers == "background"
                               else hitrate_covers(trees))
                builds = path_dependent_builds(trees, column, node_covers)
            prepared = []
            for build in builds:
                yield Await(_checkpoint)
                prepared.append(build())
            cache.put(key, prepared)
        phi = np.zeros(len(x))
        base, rows = 0.0, 0.0
        for i, (explainer, weight) in enumerate(prepared):  # the generator runs off the event loop
            if i:
                yield Await(_checkpoint)
            part_phi, part_base = explain_part(explainer, weight, x)
            phi += part_phi
            base += part_base
            rows += weight
        if rows:  # interventional: the rows' weighted means
            phi, base = phi / rows, base / rows
        figures = {"base_value": base, "f_x": base + float(phi.sum()), "trees": float(len(trees.trees)),
                   "leaves": float(trees.leaves),
                   "background_rows": float(len(background)) if background is not None else 0.0}
        return Result(phi.astype(np.float32), figures)
