"""The one helper every test uses to run a method in process: a real Engine and real onnxruntime
sessions, no gRPC.

* `run_method(engine, served, method, given, x, target, ...)` (async): builds the ModelView and
  MethodContext a server would, validates the given parameters through the method's declarations
  (as a request would be), forces the target class, and returns what the method answered (an
  `Outcome`, its stats flattened for assertions) with the parameters as used.
* `explain(method, given, model, x, target, ...)`: the same, synchronously, on a fresh Engine that
  is closed afterwards (one request, nothing shared).
* `InProcess`: one Engine on one private event loop for many calls, so that each variant graph is
  built and compiled once per model, as the server does (a reference-test module runs on one).
* `run_metric(...)` / `evaluate(metric, given, model, x, target, attribution, ...)`: the same for an
  evaluation metric judging a given attribution (the prediction stage, then the metric's stages).
* `served_onnx(name, model, example_shape)`: an exported ONNX model (input "input", output
  "logits") with its white box (its 4-d activations as layers), as `model` for the two above.
* `serve_requests(*queries)` / `serve_request(query)`: whole requests (an ExplainQuery: preprocessing,
  target choice, the method, the response) through explaind's Explainer on the demo repository
  (`methods`: replacements for some of its methods, such as `first_rows` makes).
* `first_rows(method, rows)`: the method with each stage of more rows cut to its first `rows`, as a
  deadline cuts a partial stage (allow_partial): the reference for partial answers.
* `slowed(method, seconds)`: the method with each batch of its partial stages folded in `seconds`
  later, so that a deadline of a second or two falls after some batches and before the last.

`model` is a ServedModel (its ModelView then from `view_of(served, **view_fields)`) or a
(ServedModel, ModelView) pair such as `served_onnx` returns.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from explaind.config import Settings
from explaind.engine.engine import Engine, ServedModel
from explaind.methods.base import Method, MethodContext, ModelView, Reducer
from explaind.models.white_box import WhiteBox, four_d_activations, last_pooled_activation
from explaind.onnxgraph.signature import ModelSignature

Model = ServedModel | tuple[ServedModel, ModelView]


@dataclass
class Outcome:
    attribution: np.ndarray
    model_evaluations: int
    batches: int
    stages: int
    queue_seconds: float
    compute_seconds: float
    figures: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    complete: bool = True
    planned_evaluations: int = 0


def view_of(served: ServedModel, kind: str = "image", background: np.ndarray | None = None, white_box: Any = None,
            preprocess: Any = None, graph: Any = None) -> ModelView:
    return ModelView(kind, served.signature, background, white_box, preprocess,
                     graph if graph is not None else served.model)


async def run_method(engine: Engine, served: ServedModel, method: Method, given: dict[str, Any], x: np.ndarray,
                     target: int, score: str = "probability", seed: int = 1, view: ModelView | None = None,
                     deadline: float | None = None, allow_partial: bool = False, on_partial: Any = None,
                     **view_fields: Any) -> tuple[Outcome, dict[str, Any]]:
    """Explain `x` for class `target`; `view` (or the fields of view_of) describes the model; `deadline`
    (time.monotonic()), `allow_partial` and `on_partial` as MethodContext's."""
    view = view or view_of(served, **view_fields)
    params = method.parameters(given, view, engine.settings, score)
    ctx = MethodContext(engine=engine, served=served, model=view, x=np.asarray(x, np.float32), score=score,
                        rng=np.random.default_rng(seed), settings=engine.settings,
                        choose_target=lambda prediction: int(target), deadline=deadline,
                        allow_partial=allow_partial, on_partial=on_partial)
    run = await method.explain(params, ctx)
    s = run.stats
    outcome = Outcome(run.result.attribution, s.model_evaluations, s.batches, s.stages, s.queue_seconds,
                      s.compute_seconds, run.result.figures, run.result.arrays, run.complete,
                      s.planned_evaluations)
    return outcome, params


def _served_and_view(model: Model) -> tuple[ServedModel, ModelView | None]:
    if isinstance(model, ServedModel):
        return model, None
    served, view = model
    return served, view


def explain(method: Method, given: dict[str, Any], model: Model, x: np.ndarray, target: int,
            score: str = "probability", seed: int = 1, settings: Settings | None = None, metrics: Any = None,
            **view_fields: Any) -> tuple[Outcome, dict[str, Any]]:
    """run_method on a fresh Engine (`settings`, by default one onnxruntime thread; `metrics` to observe
    it), closed afterwards."""
    served, view = _served_and_view(model)

    async def main() -> tuple[Outcome, dict[str, Any]]:
        engine = Engine(settings or Settings(intra_op_threads=1), metrics)
        try:
            return await run_method(engine, served, method, given, x, target, score, seed, view=view, **view_fields)
        finally:
            await engine.close()

    return asyncio.run(main())


async def run_metric(engine: Engine, served: ServedModel, metric: Any, given: dict[str, Any], x: np.ndarray,
                     target: int, attribution: np.ndarray, *, region: np.ndarray | None = None,
                     score: str = "probability", seed: int = 1, view: ModelView | None = None,
                     method: Method | None = None, method_params: dict[str, Any] | None = None,
                     **view_fields: Any) -> tuple[Any, dict[str, Any]]:
    """Evaluate `attribution` of `x` for class `target` with `metric` (its `given` parameters validated
    by its declarations), as a request would: the prediction first, then the metric's stages; its
    generator seeded as the first metric of a request with `seed`. `method` (and `method_params`) is
    what re-explaining metrics run. Returns the MetricOutcome and the parameters as used."""
    from explaind.evaluation.base import MetricContext
    from explaind.evaluation.run import GivenAttribution, metric_rng

    view = view or view_of(served, **view_fields)
    params = metric.parameters(given, view, engine.settings)
    ctx = MethodContext(engine=engine, served=served, model=view, x=np.asarray(x, np.float32), score=score,
                        rng=np.random.default_rng(seed), settings=engine.settings,
                        choose_target=lambda prediction: int(target))
    await GivenAttribution(np.asarray(attribution, np.float32)).explain({}, ctx)  # prediction and target
    reexplain: Any = None
    if method is not None:
        used = method.parameters(method_params or {}, view, engine.settings, score)

        async def rerun(x2: np.ndarray, target2: int, rng: np.random.Generator, graph: Any = None) -> tuple[np.ndarray, Any]:
            if graph is not None:  # another model of the same signature, served for this call (as the Explainer)
                with engine.temporary(served, graph) as copy:
                    return await on(copy, dataclasses.replace(view, graph=graph), x2, target2, rng)
            return await on(served, view, x2, target2, rng)

        async def on(served2: ServedModel, view2: ModelView, x2: np.ndarray, target2: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, Any]:
            ctx2 = MethodContext(engine=engine, served=served2, model=view2, x=np.asarray(x2, np.float32), score=score,
                                 rng=rng, settings=engine.settings, choose_target=lambda _: int(target2))
            run = await method.explain(used, ctx2)
            return run.result.attribution, run.stats

        reexplain = rerun

    mctx = MetricContext(ctx, np.asarray(attribution, np.float64), metric_rng(seed, 0, metric.name), region, reexplain)
    return await metric.evaluate(params, mctx), params


def evaluate(metric: Any, given: dict[str, Any], model: Model, x: np.ndarray, target: int, attribution: np.ndarray,
             settings: Settings | None = None, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """run_metric on a fresh Engine (one onnxruntime thread by default), closed afterwards."""
    served, view = _served_and_view(model)

    async def main() -> tuple[Any, dict[str, Any]]:
        engine = Engine(settings or Settings(intra_op_threads=1))
        try:
            return await run_metric(engine, served, metric, given, x, target, attribution, view=view, **kwargs)
        finally:
            await engine.close()

    return asyncio.run(main())


class InProcess:
    """One Engine on one private event loop, for many calls; `score` is the default of `explain`."""

    def __init__(self, settings: Settings | None = None, score: str = "probability") -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = Engine(settings or Settings(intra_op_threads=1))
        self.score = score

    def explain(self, method: Method, given: dict[str, Any], model: Model, x: np.ndarray, target: int,
                score: str | None = None, seed: int = 1, **view_fields: Any) -> tuple[Outcome, dict[str, Any]]:
        served, view = _served_and_view(model)
        return self.loop.run_until_complete(run_method(self.engine, served, method, given, x, target,
                                                       score or self.score, seed, view=view, **view_fields))

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.close())
        self.loop.close()


def served_onnx(name: str, model: Any, example_shape: tuple[int, ...], max_batch_rows: int = 64,
                max_delay_ms: float = 1.0) -> tuple[ServedModel, ModelView]:
    """An exported classifier (input "input", output "logits"; an image model when `example_shape` is
    [C, H, W], tabular otherwise) served as the server would, with its white box: every 4-d activation
    a layer, the last pooled one the default layer."""
    shape = tuple(example_shape)
    image = len(shape) == 3
    signature = ModelSignature("input", "logits", shape, "NCHW" if image else "tabular", "logits")
    served = ServedModel(name, model, signature, max_batch_rows, max_delay_ms)
    if image:
        layers = four_d_activations(model)
        white_box = WhiteBox(True, "", tuple(layers), last_pooled_activation(model, set(layers)))
    else:
        white_box = WhiteBox(True, "", (), "")
    return served, ModelView("image" if image else "tabular", signature, None, white_box, None, model)


def first_rows(method: Method, rows: int) -> Method:
    """A copy of `method` whose stages of more than `rows` rows run only their first `rows` (the same
    codes, drawn from the same seed in the same order, the rest never drawn): what a stage cut short by
    the deadline with allow_partial folds in, finished the same way."""
    return _map_stages(method, lambda s: dataclasses.replace(s, rows=_prefix(s.rows, rows), total_rows=rows)
                       if s.total_rows > rows else s)


def slowed(method: Method, seconds: float) -> Method:
    """A copy of `method` whose partial stages fold each batch in `seconds` later (a sleep on the event
    loop, as a slow reducer would), the reducers' answers unchanged."""
    return _map_stages(method, lambda s: dataclasses.replace(s, reducer=_Slow(s.reducer, seconds)) if s.partial else s)


class _Slow(Reducer):
    def __init__(self, inner: Reducer, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds

    def consume(self, codes: Any, rows: Any, slot: Any) -> None:
        time.sleep(self.seconds)
        self.inner.consume(codes, rows, slot)

    def preview(self) -> np.ndarray:
        return self.inner.preview()

    def partial_unavailable(self) -> str:
        return self.inner.partial_unavailable()

    def __getattr__(self, name: str) -> Any:  # the method reads its reducer's results
        return getattr(self.inner, name)


def _map_stages(method: Method, change: Any) -> Method:
    """A copy of `method` whose stages go through `change(stage) -> stage` (reducers sent back as made)."""
    cut = copy.copy(method)
    stages_of = method.stages

    def stages(params: dict[str, Any], ctx: MethodContext) -> Any:
        steps = stages_of(params, ctx)
        if not hasattr(steps, "send"):  # a Result: no stage
            return steps
        sent = None
        while True:
            try:
                step = steps.send(sent)
            except StopIteration as stop:
                return stop.value
            group = [change(s) for s in (step if isinstance(step, list) else [step])]
            sent = yield (group if isinstance(step, list) else group[0])

    cut.stages = stages  # type: ignore[method-assign]
    return cut


def _prefix(chunks: Iterator[dict[str, np.ndarray]], rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The first `rows` rows of a lazy chunk source (the last chunk cut)."""
    left = rows
    for chunk in chunks:
        n = min(left, len(next(iter(chunk.values()))))
        yield {k: v[:n] for k, v in chunk.items()}
        left -= n
        if left == 0:
            return


def serve_requests(*queries: Any, repository: Path | None = None, threads: int = 2,
                   methods: dict[str, Method] | None = None) -> list[Any]:
    """Whole ExplainQuery requests through explaind's Explainer, in process: the model repository
    (by default the demo one) scanned as a server would, one Engine for all of them, all at once
    (their rows share batches); `methods` replace the Explainer's methods of those names. Returns the
    Explainer's results in order; the first error is raised."""
    from explaind.explainer import Explainer  # here: only whole-request tests need the request path
    from explaind.models.repository import ModelRepository

    async def main() -> list[Any]:
        repo = ModelRepository(repository or Settings().repository_path)
        repo.scan()
        engine = Engine(Settings(intra_op_threads=threads))
        explainer = Explainer(engine.settings, repo, engine)
        explainer.methods.update(methods or {})
        try:
            return list(await asyncio.gather(*(explainer.explain(q) for q in queries)))
        finally:
            await engine.close()

    return asyncio.run(main())


def serve_request(query: Any, repository: Path | None = None, threads: int = 2,
                  methods: dict[str, Method] | None = None) -> Any:
    """One request through serve_requests."""
    return serve_requests(query, repository=repository, threads=threads, methods=methods)[0]
