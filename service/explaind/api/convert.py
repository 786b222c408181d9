"""proto <-> domain conversions, and nothing else."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from explaind_client.tensors import from_proto, to_proto
from explaind_client.v1 import explaind_pb2 as pb
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from ..engine.health import HealthView
from ..errors import InvalidArgument
from ..evaluation.base import Metric, MetricOutcome
from ..evaluation.run import MetricQuery, RegionQuery
from ..explainer import Explanation, ExplainQuery
from ..methods.base import Method
from ..methods.params import Param
from ..models.repository import LoadedModel, ModelEntry
from ..render import RenderOptions

SCORES = {pb.SCORE_UNSPECIFIED: "", pb.PROBABILITY: "probability", pb.LOGIT: "logit"}
SCORE_ENUM = {"probability": pb.PROBABILITY, "logit": pb.LOGIT}
POLARITY = {pb.POLARITY_UNSPECIFIED: "positive", pb.POSITIVE: "positive", pb.NEGATIVE: "negative",
            pb.BOTH: "both", pb.ABSOLUTE: "absolute"}
OVERLAY = {pb.OVERLAY_UNSPECIFIED: "original", pb.ORIGINAL: "original", pb.GRAYSCALE: "grayscale",
           pb.HEATMAP_ONLY: "heatmap_only"}
KINDS = {"image": pb.IMAGE, "tabular": pb.TABULAR}
NEEDS = {"FORWARD": pb.FORWARD, "INPUT_GRADIENTS": pb.INPUT_GRADIENTS, "LAYER_GRADIENTS": pb.LAYER_GRADIENTS,
         "LAYER_ACTIVATIONS": pb.LAYER_ACTIVATIONS}


def enum_value(enum: Any, field: str, value: int, known: dict[int, Any]) -> Any:
    if value not in known:
        raise InvalidArgument(field, f"one of {', '.join(enum.Name(v) for v in known)}", value)
    return known[value]


def message_fields(message: Message) -> dict[str, Any]:
    """The fields a client set, as plain Python values (repeated fields as lists)."""
    return {f.name: list(v) if f.is_repeated else v for f, v in message.ListFields()}


def explain_query(request: pb.ExplainRequest) -> ExplainQuery:
    query = ExplainQuery(model=request.model, seed=request.seed, allow_partial=request.allow_partial)
    input_kind = request.WhichOneof("input")
    if input_kind == "tensor":
        try:
            query.tensor = from_proto(request.tensor)
        except ValueError as exc:
            raise InvalidArgument(*_split(str(exc))) from None
    elif input_kind == "image":
        query.image = request.image
    if request.HasField("target"):
        which = request.target.WhichOneof("kind")
        if which == "class_index":
            query.target_index = request.target.class_index
        elif which == "label":
            query.target_label = request.target.label
    query.score = enum_value(pb.Score, "score", request.score, SCORES)
    method = request.WhichOneof("method")
    if method:
        query.method = method
        query.params = message_fields(getattr(request, method))
    if request.HasField("render"):
        r = request.render
        colormap = "" if r.colormap == pb.COLORMAP_UNSPECIFIED else _enum_name(pb.Colormap, "render.colormap", r.colormap)
        query.render = RenderOptions(
            colormap=colormap.lower(),
            polarity=enum_value(pb.Polarity, "render.polarity", r.polarity, POLARITY),
            overlay=enum_value(pb.Overlay, "render.overlay", r.overlay, OVERLAY),
            clip_percentile=r.clip_percentile if r.HasField("clip_percentile") else 99.9,
            clip_percentile_low=r.clip_percentile_low if r.HasField("clip_percentile_low") else None,
            alpha=r.alpha if r.HasField("alpha") else 0.5)
    query.metrics = metric_queries(request.evaluate)
    if request.HasField("region"):
        query.region = region_query(request.region, "region")
    return query


def metric_queries(metrics: Any) -> list[MetricQuery]:
    """The requested metrics: each Metric's oneof field name and the fields set in its message."""
    queries = []
    for metric in metrics:
        name = metric.WhichOneof("metric") or ""
        queries.append(MetricQuery(name, message_fields(getattr(metric, name)) if name else {}))
    return queries


def region_query(region: pb.Region, field: str) -> RegionQuery:
    mask = None
    if region.HasField("mask"):
        try:
            mask = from_proto(region.mask)
        except ValueError as exc:
            where, expected, got = _split(str(exc))
            raise InvalidArgument(f"{field}.mask{where.removeprefix('tensor')}", expected, got) from None
    return RegionQuery(box=list(region.box) if region.box else None, mask=mask)


def evaluate_query(request: pb.EvaluateRequest) -> ExplainQuery:
    """An EvaluateRequest as the ExplainQuery it runs: the explanation's query with the metrics, the
    region and (optionally) the attribution to evaluate."""
    if not request.HasField("explain"):
        raise InvalidArgument("explain", "an ExplainRequest (model, input, target, seed, score, method)", "none")
    query = explain_query(request.explain)
    if request.explain.evaluate or request.explain.HasField("region"):
        raise InvalidArgument("explain.evaluate", "unset in an EvaluateRequest (give metrics and region in "
                              "EvaluateRequest.metrics and .region)", "set")
    if not request.metrics:
        raise InvalidArgument("metrics", "at least one metric", "none")
    query.metrics = metric_queries(request.metrics)
    query.metrics_field = "metrics"
    if request.HasField("region"):
        query.region = region_query(request.region, "region")
    if request.HasField("attribution"):
        try:
            query.attribution = from_proto(request.attribution)
        except ValueError as exc:
            where, expected, got = _split(str(exc))
            raise InvalidArgument(f"attribution{where.removeprefix('tensor')}", expected, got) from None
    return query


def stats_message(s: Any, *, seed: int = 0, model_sha256: str = "", method: str = "", parameters: dict | None = None,
                  score: str = "probability", tenant: str = "", total_seconds: float = 0.0) -> pb.Stats:
    return pb.Stats(seed=seed, model_evaluations=s.model_evaluations, batches=s.batches, stages=s.stages,
                    queue_seconds=s.queue_seconds, compute_seconds=s.compute_seconds, total_seconds=total_seconds,
                    model_sha256=model_sha256, method=method, parameters=to_struct(parameters or {}),
                    score=SCORE_ENUM[score], tenant=tenant, planned_evaluations=s.planned_evaluations)


def metric_result(outcome: MetricOutcome, explanation: Explanation) -> pb.MetricResult:
    s = explanation.stats
    value = outcome.value
    return pb.MetricResult(
        metric=outcome.metric, value=value.value, figures=value.figures,
        curves={name: to_proto(np.ascontiguousarray(c, dtype=np.float32)) for name, c in value.curves.items()},
        stats=stats_message(outcome.stats, seed=s.seed, model_sha256=s.model_sha256, method=outcome.metric,
                            parameters=outcome.parameters, score=outcome.score, tenant=s.tenant))


def evaluate_response(result: Explanation) -> pb.EvaluateResponse:
    return pb.EvaluateResponse(explanation=explain_response(result),
                               results=[metric_result(o, result) for o in result.evaluation])


def _enum_name(enum: Any, field: str, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        raise InvalidArgument(field, f"one of {', '.join(enum.keys()[1:])}", value) from None


def _split(message: str) -> tuple[str, str, str]:
    """'field: expected X, got Y' (explaind_client's ValueError text) -> (field, X, Y)."""
    field, _, rest = message.partition(": expected ")
    expected, _, got = rest.partition(", got ")
    return field, expected, got


def to_struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({k: _plain(v) for k, v in values.items()})
    return struct


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def explain_response(result: Explanation) -> pb.ExplainResponse:
    s = result.stats
    stats = stats_message(s, seed=s.seed, model_sha256=s.model_sha256, method=s.method, parameters=s.parameters,
                          score=s.score, tenant=s.tenant, total_seconds=s.total_seconds)
    top = [pb.ClassScore(class_index=c.index, label=c.label, probability=c.probability,
                         **({} if c.logit is None else {"logit": c.logit})) for c in result.top_classes]
    return pb.ExplainResponse(attribution=to_proto(result.attribution.astype(np.float32)),
                              target_class=result.target_class, target_label=result.target_label,
                              top_classes=top, heatmap_png=result.heatmap_png, stats=stats,
                              figures=result.figures, complete=result.complete,
                              arrays={name: to_proto(np.ascontiguousarray(a)) for name, a in result.arrays.items()},
                              evaluation=[metric_result(o, result) for o in result.evaluation])


def tensor_info(spec: Any) -> pb.TensorInfo:
    dtypes = {np.dtype(np.float32): pb.FLOAT32, np.dtype(np.float64): pb.FLOAT64, np.dtype(np.float16): pb.FLOAT16,
              np.dtype(np.int64): pb.INT64, np.dtype(np.int32): pb.INT32, np.dtype(np.int16): pb.INT16,
              np.dtype(np.int8): pb.INT8, np.dtype(np.uint8): pb.UINT8, np.dtype(bool): pb.BOOL}
    return pb.TensorInfo(name=spec.name, dtype=dtypes.get(np.dtype(spec.dtype), pb.DATA_TYPE_UNSPECIFIED),
                         shape=list(spec.shape))


def model_info(entry: ModelEntry, methods: list[str], max_batch_rows: int, max_delay_ms: float,
               white_box: Any = None, note: str = "", health: HealthView | None = None) -> pb.ModelInfo:
    """`note`: why a READY model is not its folder's newest version (a reload that failed);
    `health`: its runs' record (a model whose runs keep failing is UNHEALTHY, with the last failure)."""
    info = pb.ModelInfo(name=entry.name, status=pb.ModelStatus.Value(entry.status), reason=note or entry.reason,
                        sha256=entry.sha256)
    if health is not None and isinstance(entry, LoadedModel):
        info.run_failures = health.run_failures
        if not health.healthy:
            info.status, info.reason = pb.UNHEALTHY, health.reason
    if entry.kind:  # a FailedModel whose model.yaml was never parsed has no kind
        info.kind = KINDS.get(entry.kind, pb.MODEL_KIND_UNSPECIFIED)
    if not isinstance(entry, LoadedModel):  # FAILED or UNLOADED
        return info
    info.loaded_at.FromNanoseconds(round(entry.loaded_at * 1e9))
    info.feature_names.extend(entry.feature_names)
    config = entry.config
    info.inputs.extend(tensor_info(t) for t in entry.inputs)
    info.outputs.extend(tensor_info(t) for t in entry.outputs)
    info.labels.extend(entry.labels)
    info.methods.extend(methods)
    info.scores = config.scores
    info.generator = config.generator or ""
    info.num_classes = entry.num_classes
    info.max_batch_rows = max_batch_rows
    info.max_delay_ms = max_delay_ms
    if white_box is not None:
        info.white_box = white_box.available
        info.white_box_reason = white_box.reason
        info.layers.extend(white_box.layers)
        info.default_layer = white_box.default_layer
        if white_box.available:
            info.rule_families.extend(white_box.rules)
        info.lrp_reason = white_box.lrp_reason or ("" if "lrp" in white_box.rules else white_box.reason or
                                                   "the model offers no relevance rules")
    if config.kind == "tabular":
        info.num_features = entry.example_shape[0]
    elif entry.preprocess is not None:
        pre = entry.preprocess
        info.preprocess.CopyFrom(pb.Preprocess(size=list(pre.size or ()), scale=pre.scale, mean=list(pre.mean or ()),
                                               std=list(pre.std or ()), layout=config.layout))
    return info


def parameter_info(p: Param) -> pb.ParameterInfo:
    return pb.ParameterInfo(name=p.name, type=p.type, default_value=p.default_text, description=p.description,
                            choices=list(p.choices), minimum=p.bound_text(p.low), maximum=p.bound_text(p.high),
                            exclusive_minimum=p.exclusive_low, exclusive_maximum=p.exclusive_high)


def metric_info(metric: Metric) -> pb.MetricInfo:
    better = {True: "higher", False: "lower", None: ""}[metric.higher_is_better]
    return pb.MetricInfo(
        name=metric.name, title=metric.title, description=metric.description, reference=metric.reference,
        category=metric.category, kinds=[KINDS[k] for k in sorted(metric.kinds)],
        parameters=[parameter_info(p) for p in metric.params], needs_region=metric.needs_region,
        reexplains=metric.reexplains, better=better, curves=list(metric.curves), figures=list(metric.figures))


def method_info(method: Method) -> pb.MethodInfo:
    return pb.MethodInfo(
        name=method.name, title=method.title, description=method.description, reference=method.reference,
        needs=NEEDS[method.needs], kinds=[KINDS[k] for k in sorted(method.kinds)],
        default_score=SCORE_ENUM[method.default_score], parameters=[parameter_info(p) for p in method.params],
        arrays=list(method.arrays), figures=list(method.figures),
        partial_results=method.partial_results)
