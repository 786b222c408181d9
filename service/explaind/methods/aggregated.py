"""Aggregated explanations (Rieger & Hansen 2019, "Aggregating explanation methods for stability and
robustness"): the pixel-wise combination of several methods' normalised maps.

Each constituent (`methods`, comma-separated names; default saliency, integrated_gradients and
smooth_grad, as the paper's gradient-based ensemble) runs with its own defaults through the engine,
for the request's target, score and seed (its stages are this method's stages, so progress counts
them all); its map is reduced over channels (sum by default; max, mean, or max_abs = max of |.|), then
normalised: max_abs (divided by max |e|, default), l1 (by sum |e|), l2 (by ||e||_2), min_max (to
[0, 1]) or none; a map that is all zeros stays zero. Aggregation: the (weighted) mean (the paper's
AGG-Mean), the median or the maximum over the constituents. `arrays` holds each normalised map
under its method's name. Image or tabular, as the constituents allow. Score: the logit unless the
request says otherwise (the default constituents are gradient methods).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from ..config import Settings
from ..errors import FailedPrecondition, InvalidArgument, echo
from ..onnxgraph.variants.predict import LAYER_OUTPUT
from .base import LOGIT, Method, MethodContext, ModelView, Result, Stages, prediction_stage
from .params import Choice, Floats, Text

DEFAULT_METHODS = "saliency,integrated_gradients,smooth_grad"
NORMALIZATIONS = ("max_abs", "l1", "l2", "min_max", "none")
AGGREGATIONS = ("mean", "median", "max")
REDUCTIONS = ("sum", "max", "mean", "max_abs")
MAX_METHODS = 8


def normalise(values: np.ndarray, how: str) -> np.ndarray:
    values = values.astype(np.float64)
    if how == "none":
        return values
    if how == "min_max":
        span = values.max() - values.min()
        return (values - values.min()) / span if span > 0 else np.zeros_like(values)
    scale = {"max_abs": lambda v: np.abs(v).max(), "l1": lambda v: np.abs(v).sum(),
             "l2": lambda v: np.sqrt((v * v).sum())}[how](values)
    return values / scale if scale > 0 else np.zeros_like(values)


def combine(maps: list[np.ndarray], how: str, weights: list[float] | None) -> np.ndarray:
    stack = np.stack(maps)
    if how == "median":
        return np.median(stack, axis=0)
    if how == "max":
        return stack.max(axis=0)
    w = np.ones(len(maps)) if weights is None else np.asarray(weights, np.float64)
    return np.tensordot(w / w.sum(), stack, axes=1)


class Aggregated(Method):
    name = "aggregated"
    title = "Aggregated explanations"
    reference = "Rieger & Hansen 2019, Aggregating explanation methods for stability and robustness"
    description = "The pixel-wise mean (or median, max) of several methods' normalised maps."
    kinds = frozenset({"image", "tabular"})
    default_score = LOGIT  # the default constituents are gradient methods
    params = (
        Text("methods", DEFAULT_METHODS, "comma-separated method names (each with its defaults)"),
        Choice("normalization", "max_abs", NORMALIZATIONS, " | ".join(NORMALIZATIONS)),
        Choice("aggregation", "mean", AGGREGATIONS, " | ".join(AGGREGATIONS)),
        Floats("weights", None, "mean: one weight per method", 0.0, length=(1, MAX_METHODS), shown="equal"),
        Choice("channel_reduction", "sum", REDUCTIONS, " | ".join(REDUCTIONS)),
    )

    def constituents(self, params: dict[str, Any]) -> list[Method]:
        from .registry import all_methods  # the registry lists this method too
        known = all_methods()
        return [known[name] for name in params["methods"].split(",")]

    def own(self, method: Method, ctx: MethodContext) -> dict[str, Any]:
        """A constituent's parameters: its defaults for this model, server and score."""
        return method.parameters({}, ctx.model, ctx.settings, ctx.score)

    def unavailable(self, model: ModelView) -> str:
        """Offered where the default constituents serve the model (the request's are checked in resolve)."""
        from .registry import all_methods
        known = all_methods()
        for name in DEFAULT_METHODS.split(","):
            why = known[name].unavailable(model)
            if why:
                return f"its default constituent {name} is not available: {why}"
        return ""

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        from .registry import all_methods
        known = all_methods()
        names = [n.strip() for n in params["methods"].split(",") if n.strip()]
        where = f"{self.name}.methods"
        if not 1 <= len(names) <= MAX_METHODS or len(set(names)) != len(names):
            raise InvalidArgument(where, f"1 to {MAX_METHODS} distinct method names", echo(params["methods"]))
        for name in names:
            method = known.get(name)
            if method is None or name == self.name:
                raise InvalidArgument(where, "names of explaind's methods other than aggregated", echo(name))
            if model.kind not in method.kinds:
                raise InvalidArgument(where, f"methods that explain {model.kind} models", echo(name))
            why = method.unavailable(model)
            if why:
                raise FailedPrecondition(f"{where}: {name} is not available for this model: {why}")
        weights = params.get("weights")
        if weights is not None and (params["aggregation"] != "mean" or len(weights) != len(names)):
            raise InvalidArgument(f"{self.name}.weights", f"{len(names)} weights, with aggregation mean",
                                  f"{len(weights)} weights with aggregation {params['aggregation']}")
        if weights is not None and sum(weights) <= 0:
            raise InvalidArgument(f"{self.name}.weights", "weights with a positive sum", weights)
        params["methods"] = ",".join(names)
        for name in names:  # refuse now what a constituent would refuse later
            known[name].parameters({}, model, settings, score)
        return params

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int | None:
        """The constituents' rows (and the layer prediction of those that read one), when all are known."""
        return self._planned(params, ctx, engine=False)

    def planned_engine_rows(self, params: dict[str, Any], ctx: MethodContext) -> int | None:
        return self._planned(params, ctx, engine=True)

    def _planned(self, params: dict[str, Any], ctx: MethodContext, engine: bool) -> int | None:
        total = 0
        for method in self.constituents(params):
            own = self.own(method, ctx)
            rows = method.planned_engine_rows(own, ctx) if engine else method.planned_rows(own, ctx)
            if rows is None:
                return None
            total += rows + (1 if method.prediction_layer(own) else 0)
        return total

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        maps: dict[str, np.ndarray] = {}
        for method in self.constituents(params):
            own = self.own(method, ctx)
            layer = method.prediction_layer(own)
            if layer:
                predicted = yield prediction_stage(ctx.x, layer)
                ctx.layer_activation = np.asarray(predicted.outputs[LAYER_OUTPUT], np.float32)
            steps = method.stages(own, ctx)
            result = (yield from steps) if inspect.isgenerator(steps) else steps
            maps[method.name] = normalise(self.reduce(result.attribution, params["channel_reduction"], ctx), params["normalization"])
        shapes = {m.shape for m in maps.values()}
        if len(shapes) != 1:
            raise FailedPrecondition(f"{self.name}.methods: the maps have different shapes "
                                     + ", ".join(f"{n} {list(m.shape)}" for n, m in maps.items()))
        combined = combine(list(maps.values()), params["aggregation"], params.get("weights"))
        return Result(combined.astype(np.float32), {}, {n: m.astype(np.float32) for n, m in maps.items()})

    @staticmethod
    def reduce(attribution: np.ndarray, how: str, ctx: MethodContext) -> np.ndarray:
        """An image method's [C, H, W] (or [H, W, C]) map -> [H, W]; [H, W] and tabular maps as they are."""
        if ctx.model.kind != "image" or attribution.ndim == 2:
            return attribution
        axis = ctx.model.signature.channel_axis - 1
        if how == "max_abs":
            return np.abs(attribution).max(axis=axis)
        return {"sum": np.sum, "max": np.max, "mean": np.mean}[how](attribution, axis=axis)
