"""The shared work of every method: a method is its parameters and a sequence of stages.

A method declares what it needs from the model (forward passes, input gradients, a layer's
activations or gradients), which input kinds it explains, its parameters (`params`, see
methods/params.py: they alone validate requests) and its default score. For a request it writes
`stages`: a generator that yields `Stage`s, each one engine job over one graph variant (per-job
constants, a lazy generator of row codes drawn from the request's seeded generator, a reducer that
folds results in chunk by chunk), receives each stage's reducer back once its rows are in, and
returns the `Result`. A stage may depend on the previous ones (Score-CAM's masks on the layer's
activations, each extremal-perturbation step on the last); a list of stages runs concurrently.

The base class alone runs them: it first runs the prediction of the unperturbed input (a stage like
any other, which settles the target), then drives the generator in a worker thread (so segmenting
or a regression never holds the event loop), sums the stages' statistics, reports progress and
partial maps, and honours the deadline between stages (the engine drops expired rows within one).

Anytime answers (`allow_partial`): a stage marked `partial` whose method declares `partial_results`
ends a margin before the request's deadline with the rows folded in so far; its reducer says whether
they give an answer (`Reducer.partial_unavailable`), the method finishes from it as from a complete
stage, and the stats count the rows used beside those planned. The margin is
`partial_margin_ms` (finishing the reducer, rendering and sending the answer) plus the longest time
one of the request's batches took to fold in on the event loop (the stop cannot fire while one is
being folded in), re-armed as batches come. Rows still queued are dropped; rows on the device when
the stop fires are discarded (waiting for them could cost a whole batch of time past the deadline).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, ClassVar, Generator, Generic, Iterator, Mapping, TypeVar, Union

import numpy as np

from ..config import Settings
from ..engine.engine import Engine, ServedModel
from ..engine.job import Consumer, Job, JobStats, RowChunk, chunk_rows
from ..errors import DeadlineExceeded
from ..onnxgraph.signature import ModelSignature
from ..onnxgraph.variants import PROBABILITIES_OUTPUT, RAW_OUTPUT, VariantSpec
from ..onnxgraph.variants.predict import LAYER_OUTPUT, Predict
from .params import Limits, Param, resolve_all

T = TypeVar("T")

FORWARD = "FORWARD"
INPUT_GRADIENTS = "INPUT_GRADIENTS"
LAYER_GRADIENTS = "LAYER_GRADIENTS"
LAYER_ACTIVATIONS = "LAYER_ACTIVATIONS"
PROBABILITY = "probability"
LOGIT = "logit"


@dataclass(frozen=True)
class ModelView:
    """What methods may know about the model: its kind, signature, background rows and graph."""

    kind: str                 # "image" | "tabular"
    signature: ModelSignature
    background: np.ndarray | None = None
    white_box: Any = None     # models.white_box.WhiteBox: gradients and the layers layer methods may use
    preprocess: Any = None    # models.config.Preprocess of image models (to see the input as pixels)
    graph: Any = None         # the model's onnx.ModelProto (CAM reads its head's weights)
    generator_file: Path | None = None  # model.yaml's generator (activation_maximization's learned prior)
    # What methods derive from the graph once per model version (tree_shap's trees), by method name;
    # the explainer keeps one dict per version and drops it when the version retires.
    derived: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def derive(self, key: str, make: Callable[[], T]) -> T:
        """make(), remembered per model version when the view carries the version's dict."""
        if self.derived is None:
            return make()
        if key not in self.derived:
            self.derived[key] = make()
        return self.derived[key]


@dataclass(frozen=True)
class Prediction:
    """The model's scores for the unperturbed input: probabilities [K] and logits [K] (None for a
    model that outputs probabilities)."""

    probabilities: np.ndarray
    logits: np.ndarray | None


@dataclass
class MethodContext:
    """Everything a method needs to explain one input. `target` is settled by the prediction stage."""

    engine: Engine
    served: ServedModel
    model: ModelView
    x: np.ndarray             # the example in model input space, no batch dim
    score: str                # "probability" | "logit"
    rng: np.random.Generator
    settings: Settings
    choose_target: Callable[[Prediction], int] = lambda p: int(np.argmax(p.probabilities))
    target: int = -1
    prediction: Prediction | None = None
    layer_activation: np.ndarray | None = None  # Method.prediction_layer's activation [K, h, w], read by the prediction
    deadline: float | None = None  # time.monotonic()
    tenant: str = "anonymous"      # who asked (the engine's quotas and priorities are per tenant)
    allow_partial: bool = False    # at the deadline, answer from the rows so far (partial stages only)
    on_progress: Callable[[int, int], None] | None = None
    on_partial: Callable[[np.ndarray, "RunStats"], None] | None = None  # a partial map and the stats so far
    # What a method works out once per input and needs both to plan its rows and to run (the superpixels
    # of LIME and Kernel SHAP): shared by the contexts of one request's explanation, never across inputs.
    memo: dict[str, Any] = field(default_factory=dict)

    def target_constants(self) -> dict[str, np.ndarray]:
        """The constants nearly every scoring stage has: the input and the target class."""
        return {"x0": self.x, "target": np.array(self.target, np.int64)}


class Reducer(ABC):
    """Folds a stage's results in, batch by batch, in memory independent of the number of rows."""

    @abstractmethod
    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None: ...

    def preview(self) -> np.ndarray:
        """A partial map for streaming (on the event loop: must be cheap)."""
        raise NotImplementedError(f"{type(self).__name__} streams no partial maps")

    def partial_unavailable(self) -> str:
        """Why the rows folded in so far give no answer ("" when they do); asked when a `partial` stage
        ended at the deadline, so the method's finish then runs on what this reducer holds."""
        return ""


R = TypeVar("R", bound=Reducer)


@dataclass
class Stage(Generic[R]):
    """One engine job: `total_rows` rows of `variant`, folded into `reducer`."""

    variant: VariantSpec
    constants: dict[str, np.ndarray]
    rows: Iterator[RowChunk]
    total_rows: int
    reducer: R
    evaluations_per_row: int = 1  # model evaluations one row costs (a coalition over B background rows: B)
    partial_maps: bool = False    # stream reducer.preview() as partial maps
    eager: bool = False           # the request waits on these rows alone: no wait for company in a batch
    partial: bool = False         # with allow_partial, may end at the deadline with the rows so far


@dataclass
class Result:
    """A method's answer: the attribution, named figures and named arrays (ExplainResponse.arrays)."""

    attribution: np.ndarray
    figures: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class RunStats:
    """What a request's stages cost, summed (concurrent stages: the longest wait). `planned_evaluations`
    counts the stages' planned rows, which the evaluations reach unless a stage ended at the deadline."""

    model_evaluations: int = 0
    batches: int = 0
    stages: int = 0
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    planned_evaluations: int = 0

    def add(self, stats: list[tuple[JobStats, int, int]]) -> None:
        """One step: the stats of the jobs that ran together, each with its evaluations per row and its
        planned rows."""
        self.model_evaluations += sum(s.rows * per_row for s, per_row, _ in stats)
        self.planned_evaluations += sum(planned * per_row for _, per_row, planned in stats)
        self.batches += sum(s.batches for s, _, _ in stats)
        self.stages += len(stats)
        self.queue_seconds += max(s.queue_seconds for s, _, _ in stats)
        self.compute_seconds += sum(s.compute_seconds for s, _, _ in stats)

    def merge(self, other: "RunStats") -> None:
        """Another run's stats (a re-explanation an evaluation metric awaited) added to these."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class MethodResult:
    result: Result
    stats: RunStats
    target: int
    prediction: Prediction
    complete: bool = True  # False: a stage ended at the deadline (allow_partial) and the answer is partial


@dataclass(frozen=True)
class Await:
    """A step that is not a stage: `make()` is awaited on the event loop and its result sent back to
    the generator (an evaluation metric re-explaining a perturbed input with the request's method)."""

    make: Callable[[], Awaitable[Any]]


Stages = Generator[Union[Stage[Any], list[Stage[Any]], Await], Any, Result]


class PredictionReducer(Reducer):
    def __init__(self) -> None:
        self.outputs: dict[str, np.ndarray] = {}

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        self.outputs.update({k: v[0] for k, v in rows.items()})


def prediction_stage(x: np.ndarray, layer: str = "") -> Stage[PredictionReducer]:
    """The model's output for `x` (and a layer's activation, with `layer`): one eager row."""
    return Stage(Predict(layer=layer), {"x0": x}, iter([{"row": np.zeros(1, np.int64)}]), 1, PredictionReducer(),
                 eager=True)


class Method(ABC):
    name: ClassVar[str]            # the request's oneof field name
    title: ClassVar[str]
    reference: ClassVar[str]
    description: ClassVar[str]
    needs: ClassVar[str] = FORWARD
    kinds: ClassVar[frozenset[str]]
    default_score: ClassVar[str] = PROBABILITY
    params: ClassVar[tuple[Param, ...]] = ()
    rules_needed: ClassVar[tuple[str, ...]] = ("plain",)  # backward rules a white-box method uses
    arrays: ClassVar[tuple[str, ...]] = ()   # names of the arrays its Result may hold (documented)
    figures: ClassVar[tuple[str, ...]] = ()  # names of its figures (documented; per-area ones as name_i)
    # Heatmaps clip below this percentile unless the request says otherwise (None: at zero).
    render_low_percentile: ClassVar[float | None] = None
    # How the answer is formed from the rows so far when the deadline comes with allow_partial (its
    # stages marked `partial`); "": no partial form, the request ends with DEADLINE_EXCEEDED (documented).
    partial_results: ClassVar[str] = ""
    # The method reads the margin before the model's output transform from the graph itself (tree or
    # linear models), so it explains a LOGIT score of a model that outputs probabilities.
    margin_logit: ClassVar[bool] = False

    def unavailable(self, model: ModelView) -> str:
        """Why this model cannot serve the method ("" when it can), from what the method needs."""
        white_box = model.white_box
        if self.needs == FORWARD:
            return ""
        if white_box is None:
            return "the model has no gradients"
        if self.needs == LAYER_ACTIVATIONS:
            return "" if white_box.layers else "the model has no 4-D activation to use as a layer"
        if white_box.offers(self.needs, self.rules_needed):
            return ""
        return white_box.why_not(self.rules_needed)

    def parameters(self, given: Mapping[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        """The request's parameters validated by the declarations, then by `resolve`; as used."""
        return self.resolve(resolve_all(self.name, self.params, given, Limits(model, settings)), model, settings, score)

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        """Checks across parameters or against the model beyond the declarations; returns the
        parameters as used (defaults settled)."""
        return params

    @abstractmethod
    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages | Result:
        """Yield the stages (each receives its reducer back), return the Result; a method that needs
        nothing beyond the prediction stage returns its Result directly."""

    def prediction_layer(self, params: dict[str, Any]) -> str:
        """A layer whose activation the prediction stage reads too (ctx.layer_activation), so a method
        needing only the forward activation (CAM, Score-CAM) spends no pass of its own on it."""
        return ""

    def preload(self, model: ModelView, settings: Settings) -> None:
        """Work done once per model version before it serves (Explainer.warm, off the event loop), for
        a method the model offers: nothing by default."""

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int | None:
        """All rows the stages will take, when known in advance (progress); None: per stage."""
        return None

    def planned_engine_rows(self, params: dict[str, Any], ctx: MethodContext) -> int | None:
        """The engine rows behind planned_rows' model evaluations, for admission's cost (rows times the
        variant's measured seconds per row): the same unless a row expands inside the graph."""
        return self.planned_rows(params, ctx)

    def render(self, result: Result, options: Any, image: np.ndarray | None) -> bytes:
        """The response's PNG for `render` (render.RenderOptions): the attribution's heatmap."""
        from ..render import render_heatmap  # the renderer loads only when a request renders
        return render_heatmap(result.attribution, options, image=image)

    async def explain(self, params: dict[str, Any], ctx: MethodContext) -> MethodResult:
        runner = StageRunner(ctx, self.planned_engine_rows(params, ctx), allow_partial=ctx.allow_partial and
                              bool(self.partial_results))
        layer = self.prediction_layer(params)
        predicted = await runner.run([prediction_stage(ctx.x, layer)], counted=False)
        out = predicted[0].outputs
        logits = out[RAW_OUTPUT] if ctx.served.signature.scores == "logits" else None
        ctx.prediction = Prediction(out[PROBABILITIES_OUTPUT], logits)
        if layer:
            ctx.layer_activation = np.asarray(out[LAYER_OUTPUT], np.float32)
        ctx.target = ctx.choose_target(ctx.prediction)
        result: Result = await drive(self.stages(params, ctx), runner, self.name)
        result.attribution = np.asarray(result.attribution, np.float32)
        return MethodResult(result, runner.stats, ctx.target, ctx.prediction, complete=not runner.stopped)


async def drive(steps: Generator[Any, Any, T] | T, runner: "StageRunner", name: str) -> T:
    """Run a generator of stages (a Stage, or a list of concurrent ones, per step; each step gets its
    reducers back) to its return value; a value that is not a generator is the answer already.
    Shared by methods and evaluation metrics (evaluation/base.py)."""
    if not inspect.isgenerator(steps):
        return steps  # type: ignore[return-value]
    sent: Any = None
    while True:
        kind, value = await asyncio.to_thread(_advance, steps, sent)
        if kind == "done":
            return value
        if runner.stopped:
            steps.close()
            raise DeadlineExceeded(f"the request's deadline came during stage {runner.stats.stages} and "
                                   f"{name} has more stages: no partial answer")
        runner.check_deadline()
        if isinstance(value, Await):
            sent = await value.make()
            continue
        group = value if isinstance(value, list) else [value]
        reducers = await runner.run(group)
        sent = reducers if isinstance(value, list) else reducers[0]


def _advance(steps: Generator[Any, Any, Any], sent: Any) -> tuple[str, Any]:
    """One step of a method's generator (in a worker thread; StopIteration cannot cross a Future)."""
    try:
        return "stage", steps.send(sent)
    except StopIteration as stop:
        return "done", stop.value


class StageRunner:
    """Runs a request's stages through the engine: stats, progress at most every 1% of the rows,
    partial maps every `partial_every` of them, and (allow_partial) the early end of partial stages."""

    def __init__(self, ctx: MethodContext, planned: int | None, allow_partial: bool = False) -> None:
        self.ctx = ctx
        self.planned = planned
        self.allow_partial = allow_partial
        self.stats = RunStats()
        self.done = 0
        self.next_progress = 0
        self.next_partial = 0
        self.slowest_fold = 0.0  # seconds: the longest a batch took to fold in on the event loop
        self.stopped = False     # a stage ended at the deadline with the rows so far

    def check_deadline(self) -> None:
        if self.ctx.deadline is not None and time.monotonic() >= self.ctx.deadline:
            raise DeadlineExceeded(f"the request's deadline passed after {self.stats.stages} stages "
                                   f"({self.stats.model_evaluations} model evaluations)")

    async def run(self, stages: list[Stage[Any]], counted: bool = True) -> list[Any]:
        total = self.planned if self.planned is not None else self.done + sum(s.total_rows for s in stages)
        progress_step = max(1, total // 100)
        partial_step = max(1, math.floor(total * self.ctx.settings.partial_every))
        if self.next_partial == 0:
            self.next_partial = partial_step
        stop = self._stop(stages)
        # What each job's reducer holds: the rows and batches folded in (a batch that lands after a stop
        # is counted by the job, not folded in), with the job's queue and compute time as of the last.
        folded = [JobStats() for _ in stages]
        jobs: list[Job] = []

        def so_far() -> RunStats:
            stats = dataclasses.replace(self.stats)
            stats.add([(f, s.evaluations_per_row, s.total_rows) for f, s in zip(folded, stages)])
            return stats

        def consumer(i: int, stage: Stage[Any]) -> Consumer:
            def consume(codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
                began = time.monotonic()
                stage.reducer.consume(codes, rows, slot)
                job = jobs[i].stats
                folded[i] = JobStats(batches=folded[i].batches + 1, rows=folded[i].rows + chunk_rows(codes),
                                     queue_seconds=job.queue_seconds, compute_seconds=job.compute_seconds)
                if counted:
                    self.done += chunk_rows(codes)
                    ctx = self.ctx
                    if ctx.on_progress and (self.done >= self.next_progress or self.done == total):
                        ctx.on_progress(self.done, total)
                        self.next_progress = self.done + progress_step
                    if stage.partial_maps and ctx.on_partial and self.next_partial <= self.done < total:
                        ctx.on_partial(np.asarray(stage.reducer.preview(), np.float32), so_far())
                        while self.next_partial <= self.done:
                            self.next_partial += partial_step
                self.slowest_fold = max(self.slowest_fold, time.monotonic() - began)
                if stop is not None:
                    stop.arm(self.slowest_fold)
            return consume

        jobs.extend(Job(constants=s.constants, rows=s.rows, total_rows=s.total_rows, consume=consumer(i, s),
                        deadline=self.ctx.deadline, label=type(s.variant).kind, eager=s.eager,
                        tenant=self.ctx.tenant, partial=self.allow_partial and s.partial)
                    for i, s in enumerate(stages))
        runs = [self.ctx.engine.run(self.ctx.served, s.variant, j) for s, j in zip(stages, jobs)]
        if stop is None:
            await asyncio.gather(*runs)
        elif await _until_done_or(runs, stop):
            # (every row may have been folded in just as the stop came: then nothing is missing)
            self.stopped = any(f.rows < s.total_rows for f, s in zip(folded, stages))
            used = sum(f.rows for f in folded)
            why = "; ".join(w for w in (s.reducer.partial_unavailable() for s in stages) if w)
            if why:
                raise DeadlineExceeded(f"the request's deadline came after {used} of "
                                       f"{sum(s.total_rows for s in stages)} rows, too few for a partial "
                                       f"answer: {why}")
            self.stats = so_far()
            return [s.reducer for s in stages]
        self.stats.add([(j.stats, s.evaluations_per_row, s.total_rows) for s, j in zip(stages, jobs)])
        return [s.reducer for s in stages]

    def _stop(self, stages: list[Stage[Any]]) -> "_Stop | None":
        """The early end of these stages, when the request allows a partial answer and they have one."""
        if not self.allow_partial or self.ctx.deadline is None or not all(s.partial for s in stages):
            return None
        stop = _Stop(self.ctx.deadline - self.ctx.settings.partial_margin_ms / 1000.0)
        stop.arm(self.slowest_fold)
        return stop


class _Stop:
    """Fires at `end` less the longest fold seen (re-armed as that grows)."""

    def __init__(self, end: float) -> None:
        self.end = end
        self.fired: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._margin = -1.0
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, margin: float) -> None:
        if margin <= self._margin or self.fired.done():
            return
        self._margin = margin
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, self.end - margin - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        if not self.fired.done():
            self.fired.set_result(None)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


async def _until_done_or(runs: list[Any], stop: _Stop) -> bool:
    """Wait for the engine runs; True if `stop` fired first (the unfinished runs are then cancelled,
    which drops their queued rows). A failed run raises at once, the others cancelled."""
    tasks = [asyncio.ensure_future(r) for r in runs]
    waiting = set(tasks)
    try:
        while waiting:
            done, _ = await asyncio.wait(waiting | {stop.fired}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stop.fired}:
                waiting.discard(task)
                task.result()
            if stop.fired.done() and waiting:
                return True
        return False
    finally:
        stop.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def chunked(total: int, chunk: int, make: Callable[[int, int], RowChunk]) -> Iterator[RowChunk]:
    """Rows [0, total) in chunks of `chunk`; make(start, count) draws one chunk."""
    for start in range(0, total, chunk):
        yield make(start, min(chunk, total - start))


def row_chunks(codes: dict[str, np.ndarray], chunk: int) -> Iterator[RowChunk]:
    """Codes drawn up front, in chunks, each with its row numbers under "row" for the reducer."""
    total = len(next(iter(codes.values())))
    return chunked(total, chunk, lambda start, n: {"row": np.arange(start, start + n, dtype=np.int64),
                                                   **{k: v[start:start + n] for k, v in codes.items()}})
