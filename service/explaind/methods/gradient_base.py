"""What the white-box methods share: the gradient stage, post-processing, layers, one reducer.

Gradients come from the model's own ONNX graph through `onnxgraph.autodiff` (variant `Gradient`);
nothing but onnxruntime runs them. A white-box method picks the backward rule, the path its rows
sample (the input itself, a straight path, noisy copies), the weights of its rows and a final
transform of the weighted gradient sum. Default score: the logit (pre-softmax), as Captum and the
papers use for gradients.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine.job import RowChunk
from ..errors import InvalidArgument, echo
from ..onnxgraph.resample import upsample
from ..onnxgraph.variants import SCORE_OUTPUT
from ..onnxgraph.variants import gradient as g
from .base import INPUT_GRADIENTS, LOGIT, Method, MethodContext, ModelView, Reducer, Stage, row_chunks
from .params import IMAGE, Choice, Param, Text

POSTPROCESS = ("raw", "absolute", "squared")
CHANNEL_REDUCTIONS = ("none", "max", "sum", "mean")
UPSAMPLE = ("bilinear", "nearest", "none")

__all__ = ["upsample"]  # re-exported for the layer methods


def channel_reduction(default: str = "none") -> Param:
    return Choice("channel_reduction", default, CHANNEL_REDUCTIONS, "reduction over the channels of images: "
                  "none | max | sum | mean", kinds=IMAGE, neutral=("none",))


def postprocess_param(default: str, what: str = "") -> Param:
    return Choice("postprocess", default, POSTPROCESS, f"raw | absolute | squared{what}")


def layer_param(default_text: str = "model.yaml layers.cam, else the last 4-D activation feeding a global pooling") -> Param:
    return Text("layer", None, "tensor name of the layer (GetModel lists them)", shown=default_text)


def upsample_param(default: str = "bilinear", choices: tuple[str, ...] = UPSAMPLE) -> Param:
    return Choice("upsample", default, choices, " | ".join(choices) + " (none: the layer's resolution)"
                  if "none" in choices else " | ".join(choices))


def postprocess(values: np.ndarray, how: str) -> np.ndarray:
    if how == "absolute":
        return np.abs(values)
    if how == "squared":
        return values * values
    return values


def reduce_channels(values: np.ndarray, how: str | None, model: ModelView) -> np.ndarray:
    """[C, H, W] or [H, W, C] -> [H, W] (or unchanged for "none" and for tabular models)."""
    if how in (None, "none") or model.kind != "image":
        return values
    axis = model.signature.channel_axis - 1
    return {"max": np.max, "sum": np.sum, "mean": np.mean}[how](values, axis=axis)


def resolve_layer(params: dict[str, Any], method: str, model: ModelView) -> str:
    """The request's layer, or the model's default; refused unless it is one of the model's 4-D activations."""
    white_box = model.white_box
    name = params.get("layer", "") or (white_box.default_layer if white_box else "")
    usable = white_box.layers if white_box else ()
    if not name:
        raise InvalidArgument(f"{method}.layer", "a tensor name (the model has no default layer); usable: "
                              + ", ".join(usable[-10:]), "none")
    if name not in usable:
        shown = ", ".join(usable[-10:]) + (f" (and {len(usable) - 10} earlier)" if len(usable) > 10 else "")
        raise InvalidArgument(f"{method}.layer", f"a 4-D activation of the model, e.g. {shown}", echo(name))
    return name


def finish_map(cam: np.ndarray, relu: bool, how: str, model: ModelView) -> np.ndarray:
    """A layer map [h, w]: ReLU if asked, then upsampled to the input (or left at the layer's size)."""
    if relu:
        cam = np.maximum(cam, 0)
    return cam if how == "none" else upsample(cam, model.signature.spatial_shape, how)


class GradientReducer(Reducer):
    """sum_r weight_r * input_grad_r (float64), the rows' scores by row id (IG's gap), and the layer's
    activation and gradient of the first row (layer methods)."""

    def __init__(self, shape: tuple[int, ...], weights: np.ndarray, keep_layer: bool = False) -> None:
        self.total = np.zeros(shape, np.float64)
        self.weights = weights
        self.scores: dict[int, float] = {}
        self.keep_layer = keep_layer
        self.layer: np.ndarray | None = None
        self.layer_grad: np.ndarray | None = None
        self.rows = 0  # rows folded in (fewer than planned in a partial answer)

    def partial_unavailable(self) -> str:
        return "" if self.rows else "no gradient was evaluated"

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        ids = codes["row"]
        self.rows += len(ids)
        grads = rows[g.INPUT_GRAD_OUTPUT].astype(np.float64)
        self.total += np.tensordot(self.weights[ids].astype(np.float64), grads, axes=1)
        for row, score in zip(ids, rows[SCORE_OUTPUT]):
            self.scores[int(row)] = float(score)
        if self.keep_layer:
            self.layer = rows[g.LAYER_OUTPUT][0].astype(np.float64)
            self.layer_grad = rows[g.LAYER_GRAD_OUTPUT][0].astype(np.float64)


def gradient_stage(ctx: MethodContext, *, rule: str = "plain", path: str = g.PATH_INPUT, layer: str = "",
                   weights: np.ndarray | None = None, codes: dict[str, np.ndarray] | None = None,
                   constants: dict[str, np.ndarray] | None = None, partial: bool = False) -> Stage[GradientReducer]:
    """Rows on `path` (one plain row by default) through the gradient variant, weighted by `weights`;
    `partial`: the stage may end at the deadline (allow_partial) with the rows so far."""
    weights = np.ones(1) if weights is None else weights
    exported = ctx.model.white_box.exported if ctx.model.white_box else None
    variant = g.Gradient(score=ctx.score, rule=rule, path=path, layer=layer, exported=exported)
    n = len(weights)
    rows = row_chunks(codes or {"row": np.arange(n, dtype=np.int64)}, 256)
    return Stage(variant, {**ctx.target_constants(), **(constants or {})}, rows, n,
                 GradientReducer(ctx.x.shape, weights, keep_layer=bool(layer)), partial=partial)


class GradientMethod(Method):
    needs = INPUT_GRADIENTS
    default_score = LOGIT
    kinds = frozenset({"image", "tabular"})

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        """One gradient row; methods on a path of many rows say how many."""
        return 1
