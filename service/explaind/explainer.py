"""One explanation from request to result, independent of gRPC.

Order of work: everything that can be refused cheaply is checked first (model, method, input,
score, parameters, render options); then the unperturbed input runs once (top classes, the target);
then the method's job runs through the engine; then the heatmap is rendered.
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
from .engine.job import Job
from .errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from .methods.base import FORWARD, LOGIT, Method, MethodContext, ModelView
from .methods.gradient_base import WhiteBox
from .models.white_box import inspect_white_box
from .methods.registry import all_methods
from .models.inputs import check_tensor, decode_image, display_image, preprocess_image
from .models.repository import ModelEntry, ModelRepository
from .onnxgraph.signature import ModelSignature
from .onnxgraph.variants import PREDICT, PROBABILITIES_OUTPUT, RAW_OUTPUT, VariantSpec
from .render import RenderOptions, render_heatmap

log = logging.getLogger(__name__)

TOP_CLASSES = 5


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


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str
    probability: float
    logit: float | None


@dataclass
class Explanation:
    attribution: np.ndarray
    target_class: int
    target_label: str
    top_classes: list[ClassScore]
    heatmap_png: bytes
    stats: dict[str, Any]
    figures: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Prepared:
    """A checked request, ready to run."""

    entry: ModelEntry
    served: ServedModel
    view: ModelView
    method: Method
    params: dict[str, Any]
    x: np.ndarray
    image: np.ndarray | None
    score: str


class Explainer:
    def __init__(self, settings: Settings, repository: ModelRepository, engine: Engine) -> None:
        self.settings = settings
        self.repository = repository
        self.engine = engine
        self.methods = all_methods()
        self._served: dict[str, ServedModel] = {}
        self._white_box: dict[str, WhiteBox] = {}

    # Models -------------------------------------------------------------------------------------

    def ready_entry(self, name: str) -> ModelEntry:
        entry = self.repository.get(name)
        if not entry.ready:
            raise Unavailable(f"model {name!r} failed to load: {entry.reason}")
        return entry

    def is_model(self, name: str) -> bool:
        """True for a name the repository holds (metrics label only known names)."""
        try:
            self.repository.get(name)
        except NotFound:
            return False
        return True

    def served(self, entry: ModelEntry) -> ServedModel:
        served = self._served.get(entry.name)
        if served is None:
            config = entry.config
            layout = "tabular" if config.kind == "tabular" else config.layout
            signature = ModelSignature(entry.input_spec.name, entry.output_spec.name, tuple(entry.example_shape),
                                       layout, config.scores)
            served = ServedModel(entry.name, entry.model, signature,
                                 config.max_batch_rows or self.settings.max_batch_rows,
                                 config.max_delay_ms if config.max_delay_ms is not None else self.settings.max_delay_ms,
                                 config.spin)
            self._served[entry.name] = served
        return served

    def white_box(self, entry: ModelEntry) -> WhiteBox:
        """Whether gradients can be derived from this model's graph (computed once per model)."""
        if entry.name not in self._white_box:
            self._white_box[entry.name] = inspect_white_box(entry)
        return self._white_box[entry.name]

    def methods_for(self, entry: ModelEntry) -> list[str]:
        if not entry.ready:
            return []
        white_box = self.white_box(entry)
        return [name for name, m in self.methods.items()
                if entry.config.kind in m.kinds and (m.needs == FORWARD or white_box.offers(m))]

    # Explain ------------------------------------------------------------------------------------

    def prepare(self, query: ExplainQuery) -> Prepared:
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
        served = self.served(entry)
        white_box = self.white_box(entry)
        if method.needs != FORWARD and not white_box.offers(method):
            raise FailedPrecondition(f"method {method.name!r} needs gradients, which model {entry.name!r} cannot "
                                     f"provide: {white_box.why_not(method)}; methods for it: "
                                     f"{', '.join(self.methods_for(entry))}")
        view = ModelView(kind, served.signature, entry.background, white_box, entry.preprocess)
        x, image = self._input(query, entry, served.signature)
        score = query.score or method.default_score
        if score == LOGIT and entry.config.scores != "logits":
            raise FailedPrecondition(f"score: LOGIT needs a model that outputs logits; model {entry.name!r} "
                                     f"outputs {entry.config.scores}")
        params = method.resolve(query.params, view, self.settings)
        if query.render is not None:
            if kind != "image":
                raise InvalidArgument("render", "no render for a tabular model (heatmaps are for images)",
                                      "a render request")
            query.render.validate()
        return Prepared(entry, served, view, method, params, x, image, score)

    def _input(self, query: ExplainQuery, entry: ModelEntry, sig: ModelSignature) -> tuple[np.ndarray, np.ndarray | None]:
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

    async def predict(self, served: ServedModel, x: np.ndarray, deadline: float | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities [K] and logits [K] (None for probability models) of one example."""
        result: dict[str, np.ndarray] = {}

        def keep(codes: dict[str, np.ndarray], rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
            result.update({k: v[0] for k, v in rows.items()})

        # Eager: the request waits on this one row before it can submit any other, so the scheduler
        # does not hold it max_delay_ms for company (predictions queued meanwhile still share a batch).
        job = Job(constants={"x0": x}, rows=iter([{"row": np.zeros(1, np.int64)}]), total_rows=1,
                  consume=keep, deadline=deadline, label="predict", eager=True)
        await self.engine.run(served, VariantSpec(PREDICT), job)
        logits = result[RAW_OUTPUT] if served.signature.scores == "logits" else None
        return result[PROBABILITIES_OUTPUT], logits

    async def explain(self, query: ExplainQuery, *, prepared: Prepared | None = None,
                      deadline: float | None = None,
                      on_progress: Callable[[int, int], None] | None = None,
                      on_partial: Callable[[Explanation], None] | None = None) -> Explanation:
        """Run a query (`prepared`: the result of prepare(query), when the caller already has it)."""
        started = time.monotonic()
        p = prepared or self.prepare(query)
        entry = p.entry
        probabilities, logits = await self.predict(p.served, p.x, deadline)
        target = self._target(query, entry, probabilities)
        top = self._top_classes(entry, probabilities, logits)
        seed = query.seed or (secrets.randbits(63) or 1)
        ctx = MethodContext(
            engine=self.engine, served=p.served, model=p.view, x=p.x, target=target, score=p.score,
            rng=np.random.default_rng(seed), settings=self.settings, deadline=deadline,
            on_progress=on_progress)

        def stats(result_rows: int, batches: int, queue: float, compute: float) -> dict[str, Any]:
            return {"seed": seed, "model_evaluations": result_rows + 1, "batches": batches + 1,
                    "queue_seconds": queue, "compute_seconds": compute,
                    "total_seconds": time.monotonic() - started, "model_sha256": entry.sha256,
                    "method": p.method.name, "parameters": p.params, "score": p.score}

        if on_partial is not None:
            def partial(attribution: np.ndarray) -> None:
                on_partial(Explanation(attribution, target, entry.labels[target], top, b"",
                                       stats(0, 0, 0.0, 0.0)))
            ctx.on_partial = partial
        result = await p.method.explain(p.params, ctx)
        heatmap = b""
        if query.render is not None:
            image = p.image if p.image is not None else display_image(p.x, entry.preprocess, p.served.signature.layout)
            options = query.render
            if options.clip_percentile_low is None and p.method.render_low_percentile is not None:
                options = dataclasses.replace(options, clip_percentile_low=p.method.render_low_percentile)
            heatmap = render_heatmap(result.attribution, options, image=image)
        return Explanation(result.attribution, target, entry.labels[target], top, heatmap,
                           stats(result.model_evaluations, result.batches, result.queue_seconds,
                                 result.compute_seconds), result.extras, result.outputs)

    def _target(self, query: ExplainQuery, entry: ModelEntry, probabilities: np.ndarray) -> int:
        if query.target_label is not None:
            return entry.label_index(query.target_label)
        if query.target_index is not None:
            if not 0 <= query.target_index < entry.num_classes:
                raise InvalidArgument("target.class_index", f"a class index in [0, {entry.num_classes - 1}]",
                                      query.target_index)
            return query.target_index
        return int(np.argmax(probabilities))

    @staticmethod
    def _top_classes(entry: ModelEntry, probabilities: np.ndarray, logits: np.ndarray | None) -> list[ClassScore]:
        order = np.argsort(-probabilities, kind="stable")[:TOP_CLASSES]
        return [ClassScore(int(i), entry.labels[i], float(probabilities[i]),
                           None if logits is None else float(logits[i])) for i in order]

