"""What the white-box methods share: the gradient variant, post-processing, and one reducer.

Each white-box method is a GradientMethod that picks the backward rule, the path its rows sample
(the input itself, a straight path, noisy copies), the per-row weights of its rows, and a final
transform of the weighted gradient sum. Gradients come from the model's own ONNX graph through
`onnxgraph.autodiff`; nothing else than onnxruntime runs them.
Default score: the logit (pre-softmax), as Captum and the papers use for gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..engine.job import RowChunk
from ..errors import InvalidArgument
from ..onnxgraph import gradients as g
from ..onnxgraph.rise import interpolation_matrix
from ..onnxgraph.variants import GRADIENT, SCORE_OUTPUT, VariantSpec
from .base import LOGIT, Method, MethodContext, ModelView, Plan, Reducer, row_chunks

INPUT_GRADIENTS = "INPUT_GRADIENTS"
LAYER_GRADIENTS = "LAYER_GRADIENTS"

POSTPROCESS = ("raw", "absolute", "squared")
CHANNEL_REDUCTIONS = ("none", "max", "sum", "mean")


@dataclass(frozen=True)
class WhiteBox:
    """Whether a model can be differentiated, why not, and the layers layer methods may use."""

    available: bool
    reason: str = ""
    layers: tuple[str, ...] = ()       # 4-D float activations, in graph order
    default_layer: str = ""            # model.yaml layers.cam, else the last 4-D input of a global pooling
    rules: tuple[str, ...] = ("plain", "guided", "deconvnet")  # backward rules the model offers
    exported: tuple[str, str] | None = None  # gradients: exported: (seed input, gradient output)

    def offers(self, method: "GradientMethod") -> bool:
        """Whether this model can serve a white-box method (rules and layers it needs)."""
        if not self.available:
            return False
        if method.needs == LAYER_GRADIENTS and not self.layers:
            return False
        return all(rule in self.rules for rule in method.rules_needed)

    def why_not(self, method: "GradientMethod") -> str:
        if not self.available:
            return self.reason
        if self.exported:
            return "the model exports its plain input gradient only (layer methods and guided or deconvnet " \
                   "rules need gradients: auto)"
        return "the model has no 4-D activation to use as a layer"


def choice_param(given: Mapping[str, Any], method: str, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = given.get(name, default)
    if isinstance(value, str):
        value = value.lower()
    if value not in choices:
        raise InvalidArgument(f"{method}.{name}", f"one of {', '.join(choices)}", value)
    return value


def channel_reduction_param(given: Mapping[str, Any], method: str, default: str, model: ModelView) -> str:
    """An image's reduction over channels; a tabular model has no channels: unset or "none" only."""
    if model.kind == "image":
        return choice_param(given, method, "channel_reduction", default, CHANNEL_REDUCTIONS)
    value = choice_param(given, method, "channel_reduction", "none", CHANNEL_REDUCTIONS)
    if value != "none":
        raise InvalidArgument(f"{method}.channel_reduction", "unset or none for a tabular model (one value per "
                              "feature, no channels)", value)
    return value


def postprocess(values: np.ndarray, how: str) -> np.ndarray:
    if how == "absolute":
        return np.abs(values)
    if how == "squared":
        return values * values
    return values


def reduce_channels(values: np.ndarray, how: str, model: ModelView) -> np.ndarray:
    """[C, H, W] or [H, W, C] -> [H, W] (or unchanged for "none" and for tabular models)."""
    if how == "none" or model.kind != "image":
        return values
    axis = model.signature.channel_axis - 1
    return {"max": np.max, "sum": np.sum, "mean": np.mean}[how](values, axis=axis)


def resolve_layer(given: Mapping[str, Any], method: str, model: ModelView) -> str:
    white_box = model.white_box
    name = given.get("layer", "") or (white_box.default_layer if white_box else "")
    usable = white_box.layers if white_box else ()
    if not name:
        raise InvalidArgument(f"{method}.layer", "a tensor name (the model has no default layer); usable: "
                              + ", ".join(usable[-10:]), "none")
    if name not in usable:
        shown = ", ".join(usable[-10:]) + (f" (and {len(usable) - 10} earlier)" if len(usable) > 10 else "")
        raise InvalidArgument(f"{method}.layer", f"a 4-D activation of the model, e.g. {shown}", repr(name))
    return name


def upsample(maps: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """[h, w] -> [H, W]: bilinear with half-pixel centres (torch align_corners=False) or nearest."""
    h, w = maps.shape
    if mode == "nearest":  # torch's "nearest": source index floor(i * in / out)
        rows = np.minimum((np.arange(size[0]) * h) // size[0], h - 1)
        cols = np.minimum((np.arange(size[1]) * w) // size[1], w - 1)
        return maps[rows][:, cols]
    return interpolation_matrix(h, size[0]) @ maps @ interpolation_matrix(w, size[1]).T


class WeightedGradientReducer(Reducer):
    """sum_r weight_r * input_grad_r (float64), plus the rows' scores by row id (for IG's gap)."""

    def __init__(self, shape: tuple[int, ...], weights: np.ndarray, keep_layer: bool = False) -> None:
        self.total = np.zeros(shape, np.float64)
        self.weights = weights
        self.scores: dict[int, float] = {}
        self.keep_layer = keep_layer
        self.layer: np.ndarray | None = None
        self.layer_grad: np.ndarray | None = None
        self.rows = 0

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        ids = codes["row"]
        w = self.weights[ids].astype(np.float64)
        grads = rows[g.INPUT_GRAD_OUTPUT].astype(np.float64)
        self.total += np.tensordot(w, grads, axes=1)
        for row, score in zip(ids, rows[SCORE_OUTPUT]):
            self.scores[int(row)] = float(score)
        if self.keep_layer:
            self.layer = rows[g.LAYER_OUTPUT][0].astype(np.float64)
            self.layer_grad = rows[g.LAYER_GRAD_OUTPUT][0].astype(np.float64)
        self.rows += len(ids)

    def attribution(self) -> np.ndarray:
        return self.total


@dataclass
class GradientPlan:
    """What a GradientMethod asks of the engine: rows on a path, with their weights."""

    path: str = g.PATH_INPUT
    rule: str = "plain"
    layer: str = ""
    weights: np.ndarray = field(default_factory=lambda: np.ones(1))
    codes: dict[str, np.ndarray] = field(default_factory=dict)  # per-row codes, all rows
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # beyond x0 and target


class GradientMethod(Method):
    needs = INPUT_GRADIENTS
    default_score = LOGIT
    kinds = frozenset({"image", "tabular"})
    rules_needed: tuple[str, ...] = ("plain",)

    def gradient_plan(self, params: dict[str, Any], ctx: MethodContext) -> GradientPlan:
        return GradientPlan()

    def plan(self, params: dict[str, Any], ctx: MethodContext) -> Plan:
        gp = self.gradient_plan(params, ctx)
        exported = ctx.model.white_box.exported if ctx.model.white_box else None
        spec = VariantSpec(GRADIENT, ctx.score, rule=gp.rule, path=gp.path, layer=gp.layer, exported=exported)
        n = len(gp.weights)
        constants = {"x0": ctx.x, "target": np.array(ctx.target, np.int64), **gp.constants}
        reducer = WeightedGradientReducer(ctx.x.shape, gp.weights, keep_layer=bool(gp.layer))
        codes = gp.codes or {"row": np.arange(n, dtype=np.int64)}
        return Plan(spec, constants, row_chunks(codes, 256), n, reducer)
