"""Metrics of one request, from the query to their outcomes: checked before any work, run together.

Everything that can be refused is refused before the explanation starts: unknown metrics, their
parameters, a metric for the wrong model kind, a region missing, malformed or given for a tabular
model, a given attribution of the wrong shape or not finite, a re-explaining metric without a
method, and a request whose explanation and metrics together ask for more model evaluations than
one request may (RESOURCE_EXHAUSTED). The metrics then run concurrently (their rows share batches),
each with its own seeded generator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..config import Settings
from ..errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from ..methods.base import MethodContext, ModelView, Result, Stages
from ..methods.base import Method
from ..methods.params import ANY_KIND
from .base import Metric, MetricContext, MetricOutcome, Reexplain
from .registry import all_metrics


@dataclass
class MetricQuery:
    """One requested metric: its Metric oneof field name and the fields the client set."""

    name: str
    params: dict[str, Any]


@dataclass
class RegionQuery:
    """The request's region: a box [x0, y0, x1, y1] or a mask [H, W] (exactly one)."""

    box: list[int] | None = None
    mask: np.ndarray | None = None


@dataclass
class PreparedMetric:
    metric: Metric
    params: dict[str, Any]
    rows: int              # model evaluations (the request's row budget)
    engine_rows: int = 0   # engine rows (admission): rows, with re-explanations in the method's engine rows
    memo: dict[str, Any] = dataclasses.field(default_factory=dict)  # planning's work for the run (MetricContext.memo)


class GivenAttribution(Method):
    """The caller's attribution, evaluated as it is: no stage beyond the prediction."""

    name = "attribution"
    title = "Given attribution"
    reference = ""
    description = "The attribution given in EvaluateRequest.attribution."
    kinds = ANY_KIND

    def __init__(self, attribution: np.ndarray) -> None:
        self.attribution = attribution

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages | Result:
        return Result(self.attribution)


def attribution_shape(view: ModelView) -> tuple[int, ...]:
    return tuple(view.signature.spatial_shape) if view.kind == "image" else tuple(view.signature.example_shape)


def check_attribution(attribution: np.ndarray, view: ModelView, field: str = "attribution") -> np.ndarray:
    expected = attribution_shape(view)
    if attribution.shape != expected:
        what = "[H, W] per pixel" if view.kind == "image" else "[F] per feature"
        raise InvalidArgument(field, f"shape {list(expected)} ({what}, as ExplainResponse.attribution)",
                              list(attribution.shape))
    if not np.issubdtype(attribution.dtype, np.floating) and not np.issubdtype(attribution.dtype, np.integer):
        raise InvalidArgument(field, "a float or integer tensor", str(attribution.dtype))
    values = attribution.astype(np.float64)
    if not np.isfinite(values).all():
        raise InvalidArgument(field, "finite values", f"{int((~np.isfinite(values)).sum())} NaN or infinite")
    return values


def per_pixel(attribution: np.ndarray, view: ModelView) -> np.ndarray:
    """The attribution the metrics judge: an image method's map with channels ([C, H, W] or [H, W, C],
    e.g. saliency with channel_reduction none) summed over them to [H, W]; others as they are."""
    if view.kind == "image" and attribution.ndim == 3:
        return attribution.sum(axis=0 if view.signature.layout == "NCHW" else 2)
    return attribution


def region_mask(region: RegionQuery | None, view: ModelView, field: str = "region") -> np.ndarray | None:
    """The region as a boolean [H, W] mask (None when not given)."""
    if region is None:
        return None
    if view.kind != "image":
        raise InvalidArgument(field, "no region for a tabular model (regions are parts of images)", "a region")
    height, width = view.signature.spatial_shape
    if (region.box is None) == (region.mask is None):
        raise InvalidArgument(field, "exactly one of box and mask", "both" if region.box is not None else "neither")
    if region.box is not None:
        box = list(region.box)
        if len(box) != 4:
            raise InvalidArgument(f"{field}.box", "4 values [x0, y0, x1, y1]", f"{len(box)} values")
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise InvalidArgument(f"{field}.box", f"0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} "
                                  "(model input pixels, x1 and y1 exclusive)", box)
        mask = np.zeros((height, width), bool)
        mask[y0:y1, x0:x1] = True
        return mask
    mask = np.asarray(region.mask)
    if mask.shape != (height, width):
        raise InvalidArgument(f"{field}.mask", f"shape [{height}, {width}] (the model's input pixels)", list(mask.shape))
    if not np.isfinite(mask.astype(np.float64)).all():
        raise InvalidArgument(f"{field}.mask", "finite values (nonzero: the object)", "NaN or infinite values")
    mask = mask != 0
    if not mask.any():
        raise InvalidArgument(f"{field}.mask", "at least one nonzero pixel", "an empty mask")
    return mask


def prepare_metrics(queries: list[MetricQuery], view: ModelView, settings: Settings, *, method_rows: int,
                    has_method: bool, region: np.ndarray | None, field: str, x: np.ndarray,
                    method_engine_rows: int | None = None) -> list[PreparedMetric]:
    """The metrics checked and planned for input `x`: `method_rows` (and `method_engine_rows`, the
    same in engine rows; default method_rows) is what one explanation by the request's method costs."""
    metrics = all_metrics()
    engine_method_rows = method_rows if method_engine_rows is None else method_engine_rows
    prepared = []
    for i, query in enumerate(queries):
        where = f"{field}[{i}]"
        metric = metrics.get(query.name)
        if metric is None:
            raise InvalidArgument(where, f"one of {', '.join(metrics)}", repr(query.name) if query.name else "no metric set")
        if view.kind not in metric.kinds:
            what = metric.description[0].lower() + metric.description[1:].rstrip(".")
            raise FailedPrecondition(f"metric {metric.name!r} does not apply to {view.kind} models "
                                     f"({what}); metrics for "
                                     f"this model: {', '.join(m.name for m in metrics.values() if view.kind in m.kinds)}")
        why = metric.unavailable(view)
        if why:
            raise FailedPrecondition(f"metric {metric.name!r} cannot evaluate this model: {why}")
        if metric.needs_region and region is None:
            raise InvalidArgument("region", f"a box or a mask: metric {metric.name!r} measures localisation", "no region")
        if metric.reexplains and not has_method:
            raise InvalidArgument("explain.method", f"a method: metric {metric.name!r} re-explains perturbed inputs "
                                  "with the method that made the attribution", "no method")
        params = metric.parameters(query.params, view, settings)
        memo: dict[str, Any] = {}
        prepared.append(PreparedMetric(metric, params, metric.planned_rows_for(params, view, method_rows, x, memo),
                                       metric.planned_rows_for(params, view, engine_method_rows, x, memo), memo))
    return prepared


def check_budget(explanation_rows: int, metrics: list[PreparedMetric], settings: Settings) -> int:
    """The request's model evaluations (explanation and metrics); refused over max_rows_per_request."""
    total = explanation_rows + sum(m.rows for m in metrics)
    if total > settings.max_rows_per_request:
        parts = ", ".join(f"{m.metric.name} {m.rows}" for m in metrics)
        raise ResourceExhausted(f"the explanation ({explanation_rows}) and its metrics ({parts}) need {total} model "
                                f"evaluations, over this server's max_rows_per_request of "
                                f"{settings.max_rows_per_request}")
    return total


def metric_rng(seed: int, index: int, name: str) -> np.random.Generator:
    """Each metric's own generator: from the request's seed, the metric's position and name."""
    return np.random.default_rng([seed, index, zlib.crc32(name.encode())])


async def run_metrics(prepared: list[PreparedMetric], ctx: MethodContext, attribution: np.ndarray, seed: int,
                      region: np.ndarray | None, reexplain: Reexplain | None,
                      on_progress: Callable[[int, int], None] | None = None) -> list[MetricOutcome]:
    """Every metric concurrently; progress over all their rows together."""
    total = sum(p.rows for p in prepared)
    done = [0] * len(prepared)

    def progress(i: int) -> Callable[[int, int], None] | None:
        if on_progress is None:
            return None

        def report(rows: int, _: int) -> None:
            done[i] = rows
            on_progress(sum(done), max(total, sum(done)))
        return report

    attribution = per_pixel(np.asarray(attribution, np.float64), ctx.model)
    runs = [p.metric.evaluate(p.params, MetricContext(ctx, attribution, metric_rng(seed, i, p.metric.name),
                                                      region, reexplain, memo=p.memo), progress(i), p.rows)
            for i, p in enumerate(prepared)]
    return list(await asyncio.gather(*runs))


def applicable(view: ModelView) -> list[Metric]:
    return [m for m in all_metrics().values() if view.kind in m.kinds and not m.unavailable(view)]


__all__ = ["GivenAttribution", "MetricQuery", "PreparedMetric", "RegionQuery", "applicable", "attribution_shape",
           "check_attribution", "check_budget", "metric_rng", "per_pixel", "prepare_metrics", "region_mask",
           "run_metrics"]
