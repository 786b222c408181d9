"""One explanation from request to result, independent of gRPC.

Order of work: everything that can be refused cheaply is checked first (model, method, input,
score, parameters, render options); then the method runs its stages through the engine (the first
is the prediction of the unperturbed input: top classes and the target); then the heatmap is rendered.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .config import Settings
from .engine.engine import Engine, ServedModel
from .errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from .evaluation.base import MetricOutcome, Reexplain
from .evaluation.run import (GivenAttribution, MetricQuery, PreparedMetric, RegionQuery, check_attribution, check_budget,
                             per_pixel, prepare_metrics, region_mask, run_metrics)
from .methods.base import LOGIT, PROBABILITY, Method, MethodContext, ModelView, Prediction, RunStats
from .methods.registry import all_methods
from .models.inputs import check_tensor, decode_image, display_image, preprocess_image
from .models.live import ModelControl
from .models.repository import LoadedModel, ModelEntry, ModelRepository, UnloadedModel
from .models.white_box import WhiteBox, inspect_white_box
from .onnxgraph.signature import ModelSignature
from .render import RenderOptions

log = logging.getLogger(__name__)

TOP_CLASSES = 5
# The stats a method's run reports (RunStats), copied into Stats.
RUN_STATS = ("model_evaluations", "batches", "stages", "queue_seconds", "compute_seconds", "planned_evaluations")


@dataclass
class ExplainQuery:
    model: str
    method: str = ""                    # the request's method field name; "" when none was chosen
    params: dict[str, Any] = field(default_factory=dict)
    tensor: np.ndarray | None = None
    image: bytes | None = None
    target_index: int | None = None
    target_label: str | None = None
    seed: int = 0
    score: str = ""                     # "" (method default), "probability" or "logit"
    render: RenderOptions | None = None
    allow_partial: bool = False         # at the deadline, a partial answer from the rows so far
    metrics: list[MetricQuery] = field(default_factory=list)  # quality metrics of the explanation
    region: RegionQuery | None = None   # the object, for localisation metrics
    attribution: np.ndarray | None = None  # evaluate this map instead of computing one (Evaluate)
    metrics_field: str = "evaluate"     # the request field metrics came from (error messages)


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str
    probability: float
    logit: float | None


@dataclass
class Stats:
    """What a request cost and how it ran (ExplainResponse.stats)."""

    seed: int
    model_sha256: str
    method: str
    parameters: dict[str, Any]
    score: str
    tenant: str = "anonymous"
    model_evaluations: int = 0
    batches: int = 0
    stages: int = 0
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0  # the device time of this request's rows (their share of each batch)
    total_seconds: float = 0.0
    planned_evaluations: int = 0  # what the method planned (model_evaluations unless the answer is partial)


@dataclass
class Explanation:
    attribution: np.ndarray
    target_class: int
    target_label: str
    top_classes: list[ClassScore]
    heatmap_png: bytes
    stats: Stats
    figures: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    complete: bool = True  # False: a streamed partial map, or a partial answer at the deadline
    evaluation: list[MetricOutcome] = field(default_factory=list)  # one per query.metrics, in order


@dataclass
class Prepared:
    """A checked request, ready to run."""

    entry: LoadedModel
    served: ServedModel
    view: ModelView
    method: Method
    params: dict[str, Any]
    x: np.ndarray
    image: np.ndarray | None
    score: str
    metrics: list[PreparedMetric] = field(default_factory=list)
    region: np.ndarray | None = None       # bool [H, W]
    given: np.ndarray | None = None        # the attribution to evaluate instead of computing one
    planned_rows: int | None = None        # the explanation's and the metrics' model evaluations (the budget)
    engine_rows: int | None = None         # the same in engine rows (admission), with metrics
    memo: dict[str, Any] = field(default_factory=dict)  # MethodContext.memo: planning and the run share it


class Explainer:
    def __init__(self, settings: Settings, repository: ModelRepository, engine: Engine) -> None:
        self.settings = settings
        self.repository = repository
        self.engine = engine
        self.methods = all_methods()
        # Per version of a model, (name, LoadedModel.version): a reloaded model gets new ones, and
        # requests running on the old version keep theirs (in their Prepared) until they finish.
        self._served: dict[tuple[str, int], ServedModel] = {}
        self._white_box: dict[tuple[str, int], WhiteBox] = {}
        self._offered: dict[tuple[str, int], dict[str, str]] = {}  # method -> why not ("" offered)
        self._derived: dict[tuple[str, int], dict[str, Any]] = {}  # ModelView.derived per version
        self.control = ModelControl(repository, settings.repository_poll_s, retire=self.retire, prepare=self.warm)

    # Models -------------------------------------------------------------------------------------

    def ready_entry(self, name: str) -> LoadedModel:
        entry = self.repository.get(name)
        if isinstance(entry, UnloadedModel):
            raise Unavailable(f"model {name!r} is unloaded ({entry.reason})")
        if not isinstance(entry, LoadedModel):
            raise Unavailable(f"model {name!r} failed to load: {entry.reason}")
        return entry

    def is_model(self, name: str) -> bool:
        """True for a name the repository holds (metrics label only known names)."""
        try:
            self.repository.get(name)
        except NotFound:
            return False
        return True

    def warm(self, entry: LoadedModel) -> None:
        """Fill a new version's caches before it serves (the model control runs this off the event
        loop: inspecting a big model's graph must not stall requests), then let each method the model
        offers preload what it prepares once per version (tree_shap with tree_shap_preload)."""
        offered = self.unavailable(entry)
        view = self.view(entry)
        for name, why in offered.items():
            if not why:
                self.methods[name].preload(view, self.settings)

    def retire(self, entry: LoadedModel) -> None:
        """A version out of service (replaced, unloaded, removed): forget its caches and let the engine
        close its sessions once the requests still running on it are done."""
        key = (entry.name, entry.version)
        self._served.pop(key, None)
        self._white_box.pop(key, None)
        self._offered.pop(key, None)
        self._derived.pop(key, None)
        self.engine.retire(entry.name, entry.version + 1)
        self.engine.health.forget(entry.name)  # a new version starts with a clean record

    def served(self, entry: LoadedModel) -> ServedModel:
        key = (entry.name, entry.version)
        served = self._served.get(key)
        if served is None:
            config = entry.config
            layout = "tabular" if config.kind == "tabular" else config.layout
            signature = ModelSignature(entry.input_spec.name, entry.output_spec.name, tuple(entry.example_shape),
                                       layout, config.scores)
            served = ServedModel(entry.name, entry.model, signature,
                                 config.max_batch_rows or self.settings.max_batch_rows,
                                 config.max_delay_ms if config.max_delay_ms is not None else self.settings.max_delay_ms,
                                 config.spin, version=entry.version)
            self._served[key] = served
        return served

    def white_box(self, entry: LoadedModel) -> WhiteBox:
        """Whether gradients can be derived from this model's graph (computed once per version)."""
        key = (entry.name, entry.version)
        if key not in self._white_box:
            self._white_box[key] = inspect_white_box(entry)
        return self._white_box[key]

    def view(self, entry: LoadedModel) -> ModelView:
        served = self.served(entry)
        return ModelView(entry.config.kind, served.signature, entry.background, self.white_box(entry),
                         entry.preprocess, entry.model,
                         generator_file=entry.folder / entry.config.generator if entry.config.generator else None,
                         derived=self._derived.setdefault((entry.name, entry.version), {}))

    def unavailable(self, entry: LoadedModel) -> dict[str, str]:
        """For each method: why this model cannot serve it, "" when it can (computed once per version)."""
        key = (entry.name, entry.version)
        if key not in self._offered:
            view = self.view(entry)
            self._offered[key] = {
                name: (m.unavailable(view) if entry.config.kind in m.kinds else f"it does not explain {entry.config.kind} models")
                for name, m in self.methods.items()}
        return self._offered[key]

    def methods_for(self, entry: ModelEntry) -> list[str]:
        if not isinstance(entry, LoadedModel):
            return []
        return [name for name, why in self.unavailable(entry).items() if not why]

    # Explain ------------------------------------------------------------------------------------

    def prepare(self, query: ExplainQuery) -> Prepared:
        if query.attribution is not None and not query.method:
            return self._prepare_given(query)
        if not query.method:
            raise InvalidArgument("method", f"one of {', '.join(self.methods)}", "no method set")
        entry = self.ready_entry(query.model)
        method = self.methods.get(query.method)
        if method is None:
            raise InvalidArgument("method", f"one of {', '.join(self.methods)}", repr(query.method))
        kind = entry.config.kind
        if kind not in method.kinds:
            raise FailedPrecondition(f"method {method.name!r} does not explain {kind} models such as "
                                     f"{entry.name!r}; methods for this model: {', '.join(self.methods_for(entry))}")
        why = self.unavailable(entry)[method.name]
        if why:
            needs = "gradients" if method.needs in ("INPUT_GRADIENTS", "LAYER_GRADIENTS") else "what the model lacks"
            raise FailedPrecondition(f"method {method.name!r} needs {needs}, which model {entry.name!r} cannot "
                                     f"provide: {why}; methods for it: {', '.join(self.methods_for(entry))}")
        served = self.served(entry)
        view = self.view(entry)
        x, image = self._input(query, entry, served.signature)
        score = query.score or method.default_score
        # Metrics score rows through the model's output, which holds no logit of a probabilities model.
        if score == LOGIT and entry.config.scores != "logits" and (not method.margin_logit or query.metrics):
            also = (" (tree_shap and linear_shap read a margin from the graph, but not with evaluation metrics)"
                    if method.margin_logit else "")
            raise FailedPrecondition(f"score: LOGIT needs a model that outputs logits; model {entry.name!r} "
                                     f"outputs {entry.config.scores}{also}")
        params = method.parameters(query.params, view, self.settings, score)
        if query.render is not None:
            if kind != "image":
                raise InvalidArgument("render", "no render for a tabular model (heatmaps are for images)",
                                      "a render request")
            query.render.validate()
        return self._with_metrics(query, Prepared(entry, served, view, method, params, x, image, score))

    def _prepare_given(self, query: ExplainQuery) -> Prepared:
        """Evaluate: the caller's attribution instead of a method's (the prediction still runs)."""
        entry = self.ready_entry(query.model)
        served, view = self.served(entry), self.view(entry)
        x, image = self._input(query, entry, served.signature)
        given = check_attribution(query.attribution, view)
        score = query.score or "probability"
        if score == LOGIT and entry.config.scores != "logits":
            raise FailedPrecondition(f"score: LOGIT needs a model that outputs logits; model {entry.name!r} "
                                     f"outputs {entry.config.scores}")
        if query.render is not None:
            if entry.config.kind != "image":
                raise InvalidArgument("render", "no render for a tabular model (heatmaps are for images)",
                                      "a render request")
            query.render.validate()
        prepared = Prepared(entry, served, view, GivenAttribution(given), {}, x, image, score, given=given)
        return self._with_metrics(query, prepared)

    def _with_metrics(self, query: ExplainQuery, p: Prepared) -> Prepared:
        """The metrics checked, and the request's rows against the budget, before any work."""
        if query.attribution is not None and p.given is None:
            p.given = check_attribution(query.attribution, p.view)
            p.method = GivenAttribution(p.given)  # the request's method stays for re-explaining metrics
        if not query.metrics and query.region is None:
            return p
        region = region_mask(query.region, p.view)
        method_rows, method_engine_rows = self._method_rows(query, p)
        p.metrics = prepare_metrics(query.metrics, p.view, self.settings, method_rows=method_rows,
                                    has_method=bool(query.method), region=region, field=query.metrics_field,
                                    x=p.x, method_engine_rows=method_engine_rows)
        p.region = region
        explained = p.given is None
        p.planned_rows = check_budget(1 + (method_rows if explained else 0), p.metrics, self.settings)
        p.engine_rows = 1 + (method_engine_rows if explained else 0) + sum(m.engine_rows for m in p.metrics)
        return p

    def _method_rows(self, query: ExplainQuery, p: Prepared) -> tuple[int, int]:
        """What one explanation by the request's method costs (0 when none is named or not known):
        model evaluations (the budget) and engine rows (admission; fewer where a row expands in the
        graph, a tabular Kernel SHAP coalition over the background)."""
        if not query.method:
            return 0, 0
        method = self.methods[query.method]
        ctx = MethodContext(engine=self.engine, served=p.served, model=p.view, x=p.x, score=p.score,
                            rng=np.random.default_rng(0), settings=self.settings, memo=p.memo)
        return method.planned_rows(p.params, ctx) or 0, method.planned_engine_rows(p.params, ctx) or 0

    def _input(self, query: ExplainQuery, entry: LoadedModel, sig: ModelSignature) -> tuple[np.ndarray, np.ndarray | None]:
        if query.tensor is not None:
            return check_tensor(query.tensor, sig.example_shape, entry.input_spec.dtype), None
        if query.image is not None:
            if entry.config.kind != "image":
                raise InvalidArgument("image", f"a tensor: model {entry.name!r} is tabular", "an image")
            channels = entry.example_shape[0] if sig.layout == "NCHW" else entry.example_shape[2]
            image = decode_image(query.image, self.settings.max_image_bytes, self.settings.max_image_pixels, channels)
            x = preprocess_image(image, entry.preprocess, sig.layout)
            return x, (np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image)
        raise InvalidArgument("input", "a tensor or an image", "neither")

    async def explain(self, query: ExplainQuery, *, prepared: Prepared | None = None,
                      deadline: float | None = None, tenant: str = "anonymous",
                      on_progress: Callable[[int, int], None] | None = None,
                      on_partial: Callable[[Explanation], None] | None = None,
                      on_metrics_progress: Callable[[int, int], None] | None = None) -> Explanation:
        """Run a query (`prepared`: the result of prepare(query), when the caller already has it) for
        `tenant` (the caller's name, from its token: quotas and priority)."""
        started = time.monotonic()
        p = prepared or self.prepare(query)
        entry = p.entry
        seed = query.seed or (secrets.randbits(63) or 1)
        ctx = MethodContext(
            engine=self.engine, served=p.served, model=p.view, x=p.x, score=p.score,
            rng=np.random.default_rng(seed), settings=self.settings,
            choose_target=lambda prediction: self._target(query, entry, prediction.probabilities),
            deadline=deadline, tenant=tenant, allow_partial=query.allow_partial, on_progress=on_progress,
            memo=p.memo)

        def stats(run: RunStats) -> Stats:
            return Stats(seed=seed, model_sha256=entry.sha256, method=p.method.name, parameters=p.params,
                         score=p.score, tenant=tenant, total_seconds=time.monotonic() - started,
                         **{name: getattr(run, name) for name in RUN_STATS})

        if on_partial is not None:
            def partial(attribution: np.ndarray, so_far: RunStats) -> None:
                # Partial maps come after the prediction stage, so the target and top classes are known.
                top = self._top_classes(entry, ctx.prediction) if ctx.prediction is not None else []
                on_partial(Explanation(attribution, ctx.target, entry.labels[ctx.target], top, b"",
                                       stats(so_far), complete=False))
            ctx.on_partial = partial
        # Admission prices engine rows (a tabular Kernel SHAP coalition is one row the graph expands over
        # the background), the metrics' included.
        planned = p.method.planned_engine_rows(p.params, ctx)
        planned = p.engine_rows if p.engine_rows is not None else None if planned is None else planned + 1
        # Admitted (or refused at once) as a whole before the first stage: the prediction row and the rest.
        # A request that takes a partial answer at its deadline is not refused for lack of time.
        partial = query.allow_partial and bool(p.method.partial_results) and not p.metrics
        with self.engine.admit(p.served, p.method.name, tenant, deadline, planned, partial):
            run = await p.method.explain(p.params, ctx)
            evaluation = []
            if p.metrics and p.given is None and query.method and p.method.planned_rows(p.params, ctx) is None:
                # A method that cannot say its rows in advance (every method does, Score-CAM too unless
                # shape inference on the concrete input shape cannot say its layer's channels):
                # re-explaining metrics are costed again with what its explanation took, before they run.
                method_rows = run.stats.model_evaluations - 1
                for m in p.metrics:
                    m.rows = m.metric.planned_rows_for(m.params, p.view, method_rows, p.x, m.memo)
                check_budget(run.stats.model_evaluations, p.metrics, self.settings)
            if p.metrics:
                # Metrics score probabilities (Quantus's softmax=True) unless the request asked for logits,
                # whatever score the method explained.
                scored = dataclasses.replace(ctx, score=query.score or PROBABILITY)
                evaluation = await run_metrics(p.metrics, scored, run.result.attribution, seed, p.region,
                                               self._reexplainer(query, p, deadline, tenant), on_metrics_progress)
        heatmap = b""
        if query.render is not None:
            image = p.image if p.image is not None else display_image(p.x, entry.preprocess, p.served.signature.layout)
            options = query.render
            if options.clip_percentile_low is None and p.method.render_low_percentile is not None:
                options = dataclasses.replace(options, clip_percentile_low=p.method.render_low_percentile)
            heatmap = p.method.render(run.result, options, image)
        return Explanation(run.result.attribution, run.target, entry.labels[run.target],
                           self._top_classes(entry, run.prediction), heatmap, stats(run.stats), run.result.figures,
                           run.result.arrays, complete=run.complete, evaluation=evaluation)

    def _reexplainer(self, query: ExplainQuery, p: Prepared, deadline: float | None, tenant: str) -> Reexplain | None:
        """The request's method (same parameters) on another input or target, for re-explaining metrics."""
        if not query.method:
            return None
        method = self.methods[query.method]

        async def on(served: ServedModel, view: ModelView, x: np.ndarray, target: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, RunStats]:
            ctx = MethodContext(engine=self.engine, served=served, model=view, x=np.asarray(x, np.float32),
                                score=p.score, rng=rng, settings=self.settings, choose_target=lambda _: target,
                                deadline=deadline, tenant=tenant)
            run = await method.explain(p.params, ctx)
            return per_pixel(run.result.attribution, p.view), run.stats  # as the judged map

        async def reexplain(x: np.ndarray, target: int, rng: np.random.Generator,
                            graph: Any = None) -> tuple[np.ndarray, RunStats]:
            if graph is None:
                return await on(p.served, p.view, x, target, rng)
            # Another model of the same signature (MPRT's randomised copies): served for this call only,
            # its sessions closed when it ends (the engine's session cache does not grow with copies).
            with self.engine.temporary(p.served, graph) as served:
                return await on(served, dataclasses.replace(p.view, graph=graph), x, target, rng)

        return reexplain

    def _target(self, query: ExplainQuery, entry: LoadedModel, probabilities: np.ndarray) -> int:
        if query.target_label is not None:
            return entry.label_index(query.target_label)
        if query.target_index is not None:
            if not 0 <= query.target_index < entry.num_classes:
                raise InvalidArgument("target.class_index", f"a class index in [0, {entry.num_classes - 1}]",
                                      query.target_index)
            return query.target_index
        return int(np.argmax(probabilities))

    @staticmethod
    def _top_classes(entry: LoadedModel, prediction: Prediction) -> list[ClassScore]:
        probabilities, logits = prediction.probabilities, prediction.logits
        order = np.argsort(-probabilities, kind="stable")[:TOP_CLASSES]
        return [ClassScore(int(i), entry.labels[i], float(probabilities[i]),
                           None if logits is None else float(logits[i])) for i in order]

