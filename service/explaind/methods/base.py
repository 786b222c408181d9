"""The shared work of every method; each method overrides two small functions.

A method declares what it needs from the model (forward passes only, or gradients), which input
kinds it explains, its parameters with their defaults, and its default score. For a request it
`resolve`s the parameters (validating each, naming the field) and `plan`s the job: the graph variant,
the per-job constants, a lazy generator of row codes drawn from the request's seeded generator, and
a reducer that folds results in chunk by chunk. The base class runs the plan through the engine and
reports progress and partial maps.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping

import numpy as np

from ..config import Settings
from ..engine.engine import Engine, ServedModel
from ..engine.job import Job, RowChunk
from ..errors import InvalidArgument
from ..onnxgraph.signature import ModelSignature
from ..onnxgraph.variants import VariantSpec

FORWARD = "FORWARD"
PROBABILITY = "probability"
LOGIT = "logit"


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class ModelView:
    """What methods may know about the model: its kind, signature and background rows."""

    kind: str                 # "image" | "tabular"
    signature: ModelSignature
    background: np.ndarray | None = None
    white_box: Any = None     # methods.gradient_base.WhiteBox, for gradient methods
    preprocess: Any = None    # models.config.Preprocess of image models (to see the input as pixels)


@dataclass
class MethodContext:
    """Everything a method needs to explain one input."""

    engine: Engine
    served: ServedModel
    model: ModelView
    x: np.ndarray             # the example in model input space, no batch dim
    target: int
    score: str                # "probability" | "logit"
    rng: np.random.Generator
    settings: Settings
    deadline: float | None = None  # time.monotonic()
    on_progress: Callable[[int, int], None] | None = None
    on_partial: Callable[[np.ndarray], None] | None = None


@dataclass
class MethodResult:
    attribution: np.ndarray
    model_evaluations: int
    batches: int
    queue_seconds: float
    compute_seconds: float
    extras: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. LIME's segment map and weights


class Reducer(ABC):
    """Folds a job's results in, batch by batch, in memory independent of the number of rows."""

    @abstractmethod
    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None: ...

    @abstractmethod
    def attribution(self) -> np.ndarray:
        """The attribution from the rows so far (the final one once all rows are in)."""

    def preview(self) -> np.ndarray:
        """A partial map for streaming (on the event loop: must be cheap); by default the attribution."""
        return self.attribution()


@dataclass
class Plan:
    spec: VariantSpec
    constants: dict[str, np.ndarray]
    rows: Iterator[RowChunk]
    total_rows: int
    reducer: Reducer
    partial_maps: bool = False  # stream partial maps (sampling methods)
    evaluations_per_row: int = 1  # model evaluations one row costs (a coalition over B background rows: B)


class Method(ABC):
    name: ClassVar[str]            # the request's oneof field name
    title: ClassVar[str]
    reference: ClassVar[str]
    description: ClassVar[str]
    needs: ClassVar[str] = FORWARD
    kinds: ClassVar[frozenset[str]]
    default_score: ClassVar[str] = PROBABILITY
    parameters: ClassVar[tuple[Parameter, ...]]
    # Heatmaps clip below this percentile unless the request says otherwise (None: at zero).
    render_low_percentile: ClassVar[float | None] = None

    @abstractmethod
    def resolve(self, given: Mapping[str, Any], model: ModelView, settings: Settings) -> dict[str, Any]:
        """Validate the request's parameters and fill in defaults; returns the parameters as used."""

    def plan(self, params: dict[str, Any], ctx: MethodContext) -> Plan:
        """The one job that computes this explanation (iterative methods override `explain` instead)."""
        raise TypeError(f"{type(self).__name__} neither plans a job nor overrides explain")

    def finish(self, params: dict[str, Any], ctx: MethodContext, reducer: Reducer) -> np.ndarray:
        """The final attribution from the reducer (layer methods transform it further)."""
        return reducer.attribution()

    def extras(self, params: dict[str, Any], ctx: MethodContext, reducer: Reducer) -> dict[str, float]:
        """Method-specific figures for the response (e.g. Integrated Gradients' completeness gap)."""
        return {}

    def outputs(self, params: dict[str, Any], ctx: MethodContext, reducer: Reducer) -> dict[str, np.ndarray]:
        """Method-specific arrays for the response (LIME: the segment map and per-segment weights)."""
        return {}

    async def explain(self, params: dict[str, Any], ctx: MethodContext) -> MethodResult:
        # plan and finish may take a while (segmenting a large image, a regression over many samples):
        # they run in a worker thread so the event loop keeps serving other requests meanwhile. Both
        # touch only this request's state; the job itself is fed and consumed on the event loop.
        plan = await asyncio.to_thread(self.plan, params, ctx)
        progress = _ProgressReporter(plan, ctx)
        job = Job(constants=plan.constants, rows=plan.rows, total_rows=plan.total_rows,
                  consume=progress.consume, deadline=ctx.deadline, label=self.name)
        await ctx.engine.run(ctx.served, plan.spec, job)

        def result() -> MethodResult:
            return MethodResult(
                attribution=np.asarray(self.finish(params, ctx, plan.reducer), np.float32),
                model_evaluations=job.stats.rows * plan.evaluations_per_row, batches=job.stats.batches,
                queue_seconds=job.stats.queue_seconds, compute_seconds=job.stats.compute_seconds,
                extras=self.extras(params, ctx, plan.reducer), outputs=self.outputs(params, ctx, plan.reducer))

        return await asyncio.to_thread(result)


class _ProgressReporter:
    """Wraps a plan's reducer: progress at most every 1% of rows, partial maps every `partial_every`."""

    def __init__(self, plan: Plan, ctx: MethodContext) -> None:
        self.plan = plan
        self.ctx = ctx
        self.done = 0
        self.next_progress = 0
        self.progress_step = max(1, plan.total_rows // 100)
        self.partial_step = max(1, math.floor(plan.total_rows * ctx.settings.partial_every))
        self.next_partial = self.partial_step

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        self.plan.reducer.consume(codes, rows, slot)
        self.done += len(next(iter(codes.values())))
        total = self.plan.total_rows
        if self.ctx.on_progress and (self.done >= self.next_progress or self.done == total):
            self.ctx.on_progress(self.done, total)
            self.next_progress = self.done + self.progress_step
        if self.plan.partial_maps and self.ctx.on_partial and self.done >= self.next_partial and self.done < total:
            self.ctx.on_partial(self.plan.reducer.preview().astype(np.float32))
            while self.next_partial <= self.done:
                self.next_partial += self.partial_step


# Parameter validation helpers: every message names the field, what was expected and what came.

def refuse_given(given: Mapping[str, Any], method: str, names: tuple[str, ...], expected: str) -> None:
    """Parameters that do not apply here (e.g. image-only ones on a tabular model): refused, not ignored."""
    for name in names:
        if name in given:
            raise InvalidArgument(f"{method}.{name}", expected, given[name])


def int_param(given: Mapping[str, Any], method: str, name: str, default: int, low: int, high: int) -> int:
    value = given.get(name, default)
    if not low <= value <= high:
        raise InvalidArgument(f"{method}.{name}", f"an integer in [{low}, {high}]", value)
    return int(value)


def float_param(given: Mapping[str, Any], method: str, name: str, default: float,
                low: float, high: float, open_interval: bool = False) -> float:
    value = float(given.get(name, default))
    inside = low < value < high if open_interval else low <= value <= high
    if not math.isfinite(value) or not inside:
        interval = f"({low}, {high})" if open_interval else f"[{low}, {high}]"
        raise InvalidArgument(f"{method}.{name}", f"a number in {interval}", value)
    return value


def pair_param(given: Mapping[str, Any], method: str, name: str, default: tuple[int, int]) -> tuple[int, int]:
    """[a, b] or [a] (meaning [a, a]) of positive integers."""
    values = list(given.get(name, default))
    if len(values) not in (1, 2):
        raise InvalidArgument(f"{method}.{name}", "1 or 2 values ([height, width] or [side])", values)
    if len(values) == 1:
        values = values * 2
    if any(v <= 0 for v in values):
        raise InvalidArgument(f"{method}.{name}", "positive integers", values)
    return int(values[0]), int(values[1])


def chunked(total: int, chunk: int, make: Callable[[int, int], RowChunk]) -> Iterator[RowChunk]:
    """Rows [0, total) in chunks of `chunk`; make(start, count) draws one chunk."""
    for start in range(0, total, chunk):
        yield make(start, min(chunk, total - start))


def row_chunks(codes: dict[str, np.ndarray], chunk: int) -> Iterator[RowChunk]:
    """Codes drawn up front, in chunks, each with its row numbers under "row" for the reducer."""
    total = len(next(iter(codes.values())))
    return chunked(total, chunk, lambda start, n: {"row": np.arange(start, start + n, dtype=np.int64),
                                                   **{k: v[start:start + n] for k, v in codes.items()}})
