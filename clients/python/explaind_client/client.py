"""A small typed wrapper over the generated stubs: build requests from Python values, get numpy back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from .tensors import from_proto, to_proto
from .v1 import explaind_pb2 as pb
from .v1 import explaind_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str
    probability: float
    logit: float | None


@dataclass(frozen=True)
class Explanation:
    attribution: np.ndarray
    target_class: int
    target_label: str
    top_classes: list[ClassScore]
    heatmap_png: bytes
    stats: dict[str, Any]
    partial: bool = False  # a map streamed before the end (explain_stream)
    figures: dict[str, float] = field(default_factory=dict)  # method-specific numbers
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # method-specific arrays (ListMethods names them)
    complete: bool = True  # False: answered at the deadline from the rows so far (allow_partial), or partial
    evaluation: list["MetricScore"] = field(default_factory=list)  # build_request(evaluate=...) metrics


@dataclass(frozen=True)
class Progress:
    rows_done: int
    rows_total: int
    fraction: float
    stage: str = ""


@dataclass(frozen=True)
class MetricScore:
    """One evaluation metric's result (MetricResult)."""

    metric: str
    value: float
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """The explanation evaluated and each metric's result, in the order asked."""

    explanation: Explanation
    results: list[MetricScore]

    def __getitem__(self, metric: str) -> MetricScore:
        for result in self.results:
            if result.metric == metric:
                return result
        raise KeyError(metric)


@dataclass
class RenderSpec:
    """Ask for a heatmap PNG; names as in the proto enums (case-insensitive)."""

    colormap: str = ""
    polarity: str = ""
    overlay: str = ""
    clip_percentile: float | None = None
    clip_percentile_low: float | None = None
    alpha: float | None = None

    def to_proto(self) -> pb.Render:
        render = pb.Render()
        if self.colormap:
            render.colormap = pb.Colormap.Value(self.colormap.upper())
        if self.polarity:
            render.polarity = pb.Polarity.Value(self.polarity.upper())
        if self.overlay:
            render.overlay = pb.Overlay.Value(self.overlay.upper())
        for name in ("clip_percentile", "clip_percentile_low", "alpha"):
            if getattr(self, name) is not None:
                setattr(render, name, getattr(self, name))
        return render


MetricSpec = str | tuple[str, Mapping[str, Any]]  # "deletion" or ("deletion", {"steps": 50})


def _set_fields(message: Any, owner: str, params: Mapping[str, Any] | None) -> None:
    message.SetInParent()
    fields = message.DESCRIPTOR.fields_by_name
    for name, value in (params or {}).items():
        if name not in fields:
            raise ValueError(f"{owner} has no parameter {name!r}; it has {', '.join(fields) or 'none'}")
        if fields[name].is_repeated:
            getattr(message, name).extend(value if isinstance(value, Sequence) else [value])
        else:
            setattr(message, name, value)


def build_metrics(metrics: Sequence[MetricSpec]) -> list[pb.Metric]:
    """Metric messages from names, or (name, parameters) pairs."""
    built = []
    for spec in metrics:
        name, params = (spec, None) if isinstance(spec, str) else spec
        metric = pb.Metric()
        if name not in pb.Metric.DESCRIPTOR.fields_by_name:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(pb.Metric.DESCRIPTOR.fields_by_name)}")
        _set_fields(getattr(metric, name), name, params)
        built.append(metric)
    return built


def build_region(box: Sequence[int] | None = None, mask: np.ndarray | None = None) -> pb.Region:
    """A Region from a box [x0, y0, x1, y1] (x1, y1 exclusive) or a mask [H, W]."""
    region = pb.Region()
    if box is not None:
        region.box.extend(int(v) for v in box)
    if mask is not None:
        region.mask.CopyFrom(to_proto(np.asarray(mask, np.float32)))
    return region


def build_request(model: str, *, method: str, params: Mapping[str, Any] | None = None,
                  image: bytes | str | Path | None = None, tensor: np.ndarray | None = None,
                  target: int | str | None = None, score: str = "", seed: int = 0,
                  render: RenderSpec | bool | None = None, allow_partial: bool = False,
                  evaluate: Sequence[MetricSpec] = (), box: Sequence[int] | None = None,
                  mask: np.ndarray | None = None) -> pb.ExplainRequest:
    """An ExplainRequest from plain values; `params` are the method message's fields. With
    `allow_partial`, a sampling method answers at the deadline from the rows so far (complete=False)."""
    request = pb.ExplainRequest(model=model, seed=seed, allow_partial=allow_partial)
    if image is not None:
        request.image = image if isinstance(image, bytes) else Path(image).read_bytes()
    if tensor is not None:
        request.tensor.CopyFrom(to_proto(np.asarray(tensor)))
    if isinstance(target, bool):
        raise TypeError("target must be a class index or a label")
    if isinstance(target, (int, np.integer)):
        request.target.class_index = int(target)
    elif isinstance(target, str):
        request.target.label = target
    if score:
        request.score = pb.Score.Value(score.upper())
    if render:
        request.render.CopyFrom((render if isinstance(render, RenderSpec) else RenderSpec()).to_proto())
    if method:
        _set_fields(getattr(request, method), method, params)  # AttributeError names an unknown method
    elif params:
        raise ValueError("params without a method")
    request.evaluate.extend(build_metrics(evaluate))
    if box is not None or mask is not None:
        request.region.CopyFrom(build_region(box, mask))
    return request


def build_evaluate_request(model: str, *, metrics: Sequence[MetricSpec], method: str = "",
                           attribution: np.ndarray | None = None, box: Sequence[int] | None = None,
                           mask: np.ndarray | None = None, **explain: Any) -> pb.EvaluateRequest:
    """An EvaluateRequest: the explanation (build_request's keywords; `method` may be empty when
    `attribution` is given) and the metrics, region and attribution to evaluate."""
    request = pb.EvaluateRequest(explain=build_request(model, method=method, **explain),
                                 metrics=build_metrics(metrics))
    if attribution is not None:
        request.attribution.CopyFrom(to_proto(np.asarray(attribution, np.float32)))
    if box is not None or mask is not None:
        request.region.CopyFrom(build_region(box, mask))
    return request


def metric_score_from_proto(result: pb.MetricResult) -> MetricScore:
    return MetricScore(result.metric, result.value, {name: from_proto(c) for name, c in result.curves.items()},
                       dict(result.figures), MessageToDict(result.stats, preserving_proto_field_name=True))


def evaluation_from_proto(response: pb.EvaluateResponse) -> Evaluation:
    return Evaluation(explanation_from_proto(response.explanation),
                      [metric_score_from_proto(r) for r in response.results])


def explanation_from_proto(response: pb.ExplainResponse, partial: bool = False) -> Explanation:
    return Explanation(
        attribution=from_proto(response.attribution),
        target_class=response.target_class,
        target_label=response.target_label,
        top_classes=[ClassScore(c.class_index, c.label, c.probability, c.logit if c.HasField("logit") else None)
                     for c in response.top_classes],
        heatmap_png=response.heatmap_png,
        stats=MessageToDict(response.stats, preserving_proto_field_name=True),
        partial=partial,
        figures=dict(response.figures),
        arrays={name: from_proto(tensor) for name, tensor in response.arrays.items()},
        complete=response.complete and not partial,
        evaluation=[metric_score_from_proto(r) for r in response.evaluation],
    )


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: list[tuple[str, str | bytes]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer TOKEN` to every call. An interceptor rather than call credentials,
    which gRPC sends only over TLS: a laptop's plaintext server on loopback takes tokens too."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [(k, v) for k, v in (details.metadata or ()) if k.lower() != "authorization"]
        return _CallDetails(details, [*metadata, self._header])

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), requests)


class ExplaindClient:
    """Blocking client. Use as a context manager or call close().

    TLS when `tls` is true or any certificate is given: `root_certificates` (PEM) the CAs to trust
    (None: the system's), `private_key` and `certificate_chain` (PEM) the client certificate for mTLS,
    `server_name` the name to verify in the server's certificate when it differs from `target`'s host.
    `token` is sent as `authorization: Bearer TOKEN` on every call (over plaintext too: fine on
    loopback, readable by anyone on the path elsewhere)."""

    def __init__(self, target: str = "localhost:50051", *, timeout: float | None = None, token: str | None = None,
                 root_certificates: bytes | None = None, private_key: bytes | None = None,
                 certificate_chain: bytes | None = None, tls: bool = False, server_name: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, channel: grpc.Channel | None = None) -> None:
        if (private_key is None) != (certificate_chain is None):
            raise ValueError("private_key and certificate_chain go together (the client certificate for mTLS)")
        if token is not None and (not token or any(not 0x21 <= ord(c) <= 0x7e for c in token)):
            raise ValueError("token: expected visible ASCII characters without spaces")
        options: list[tuple[str, object]] = [("grpc.max_receive_message_length", max_message_bytes),
                                             ("grpc.max_send_message_length", max_message_bytes)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if channel is None and (tls or root_certificates or private_key or certificate_chain):
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            channel = grpc.secure_channel(target, credentials, options=options)
        elif channel is None:
            channel = grpc.insecure_channel(target, options=options)
        self.channel = grpc.intercept_channel(channel, _BearerToken(token)) if token is not None else channel
        self.stub = pb_grpc.ExplainerStub(self.channel)
        self.timeout = timeout

    def explain(self, model: str, *, method: str, timeout: float | None = None, **kwargs: Any) -> Explanation:
        """One explanation; keyword arguments as build_request's."""
        request = build_request(model, method=method, **kwargs)
        return explanation_from_proto(self.stub.Explain(request, timeout=timeout or self.timeout))

    def explain_stream(self, model: str, *, method: str, timeout: float | None = None,
                       **kwargs: Any) -> Iterator[Progress | Explanation]:
        """Progress, partial explanations (partial=True), then the final explanation."""
        request = build_request(model, method=method, **kwargs)
        for update in self.stub.ExplainStream(request, timeout=timeout or self.timeout):
            kind = update.WhichOneof("kind")
            if kind == "progress":
                p = update.progress
                yield Progress(p.rows_done, p.rows_total, p.fraction, p.stage)
            elif kind == "partial":
                yield explanation_from_proto(update.partial, partial=True)
            elif kind == "result":
                yield explanation_from_proto(update.result)

    def evaluate(self, model: str, *, metrics: Sequence[MetricSpec], timeout: float | None = None,
                 **kwargs: Any) -> Evaluation:
        """Evaluate an explanation (computed by `method`, or the `attribution` given) with `metrics`;
        keyword arguments as build_evaluate_request's."""
        request = build_evaluate_request(model, metrics=metrics, **kwargs)
        return evaluation_from_proto(self.stub.Evaluate(request, timeout=timeout or self.timeout))

    def evaluate_stream(self, model: str, *, metrics: Sequence[MetricSpec], timeout: float | None = None,
                        **kwargs: Any) -> Iterator[Progress | Evaluation]:
        """Progress (stage "explaining", then "evaluating"), then the Evaluation."""
        request = build_evaluate_request(model, metrics=metrics, **kwargs)
        for update in self.stub.EvaluateStream(request, timeout=timeout or self.timeout):
            if update.WhichOneof("kind") == "progress":
                p = update.progress
                yield Progress(p.rows_done, p.rows_total, p.fraction, p.stage)
            else:
                yield evaluation_from_proto(update.result)

    def list_metrics(self, model: str = "") -> list[pb.MetricInfo]:
        return list(self.stub.ListMetrics(pb.ListMetricsRequest(model=model), timeout=self.timeout).metrics)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout).models)

    def get_model(self, name: str) -> pb.ModelInfo:
        return self.stub.GetModel(pb.GetModelRequest(name=name), timeout=self.timeout)

    def list_methods(self, model: str = "") -> list[pb.MethodInfo]:
        return list(self.stub.ListMethods(pb.ListMethodsRequest(model=model), timeout=self.timeout).methods)

    def load_model(self, name: str) -> pb.ModelInfo:
        """(Re)load the repository folder `name` and serve it (LoadModel; the server must allow it)."""
        return self.stub.LoadModel(pb.LoadModelRequest(name=name), timeout=self.timeout)

    def unload_model(self, name: str) -> pb.ModelInfo:
        """Take model `name` out of service; it stays listed UNLOADED until load_model (UnloadModel)."""
        return self.stub.UnloadModel(pb.UnloadModelRequest(name=name), timeout=self.timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "ExplaindClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ClassScore", "Evaluation", "Explanation", "ExplaindClient", "MetricScore", "Progress", "RenderSpec",
           "build_evaluate_request", "build_metrics", "build_region", "build_request", "evaluation_from_proto",
           "explanation_from_proto"]
