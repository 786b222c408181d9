"""The shared work of every evaluation metric: a metric is its parameters and a sequence of stages.

A metric judges one explanation (the attribution a method returned, or one the caller gave) of one
input. It declares the input kinds it applies to, whether it needs the object's region
(localisation) or re-explains other inputs with the same method (robustness, randomisation), and its
parameters (methods/params.py: the declaration alone validates, answers ListMetrics and writes the
docs). For a request it writes `stages`, exactly as a method does (methods/base.py): a generator
yielding engine stages (its perturbed inputs, built in the graph and batched with every other
request's rows) and returning a `MetricValue`; a metric that needs no model evaluation (pointing
game, sparseness...) returns the value directly. The base class runs the stages with the method's
stage runner, so stats, progress, deadlines and cancellation behave as for methods.

Conventions every metric shares (documented in docs/evaluation.md):
- the attribution is per pixel [H, W] for images (as ExplainResponse.attribution) and per feature
  [F] for tabular models; a region is a boolean [H, W] mask (a box is turned into one);
- the model's score is the probability of the target class, or its logit when the request asks for
  LOGIT (whatever score the method explained with); the target is the explanation's;
- a metric's random draws come from its own generator, seeded from the request's seed and the
  metric's position in the request, so the same request gives the same figures whatever the batching.
"""

from __future__ import annotations

import asyncio
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar, Generator, Mapping

import numpy as np

from ..config import Settings
from ..methods.base import Await, MethodContext, ModelView, RunStats, StageRunner, drive
from ..methods.params import Limits, Param, resolve_all

FAITHFULNESS = "faithfulness"
ROBUSTNESS = "robustness"
LOCALISATION = "localisation"
RANDOMISATION = "randomisation"
COMPLEXITY = "complexity"
AXIOMATIC = "axiomatic"


# reexplain(x, target, rng[, graph]) -> (attribution, stats): the request's method (same parameters)
# on input x for class `target`, drawing from rng; awaited on the event loop. `graph` (an
# onnx.ModelProto of the same signature, MPRT's randomised copies): explain on that model instead,
# served for this call only (its sessions closed after).
Reexplain = Callable[..., Awaitable[tuple[np.ndarray, RunStats]]]

# reexplain_all runs at most this many re-explanations at once: enough for their rows to share
# batches, few enough that one metric's jobs leave room in the engine's queue (max_queued_jobs).
REEXPLAIN_CONCURRENCY = 16


def positions(model: ModelView) -> int:
    """Entries of an attribution: pixels of an image model, features of a tabular one."""
    shape = model.signature.spatial_shape if model.kind == "image" else model.signature.example_shape
    return int(np.prod(shape))


@dataclass
class MetricContext:
    """Everything a metric needs: the explanation's context (engine, served model, input x, target,
    prediction, score, deadline), the attribution judged, the region, and the metric's own generator."""

    explain: MethodContext
    attribution: np.ndarray            # float64, [H, W] or [F]
    rng: np.random.Generator
    region: np.ndarray | None = None   # bool [H, W], for localisation metrics
    reexplain_with: Reexplain | None = None  # set when the request names a method (re-explaining metrics)
    spent: RunStats = field(default_factory=RunStats)  # what re-explanations cost, in the metric's stats
    on_reexplained: Callable[[], None] | None = None   # after each re-explanation (progress)
    memo: dict[str, Any] = field(default_factory=dict)  # what planned_rows_for worked out for this input

    def reexplain(self, x: np.ndarray, target: int | None = None) -> Await:
        """A step to yield from `stages`: the method's attribution of `x` (for `target`, default the
        explanation's) comes back; its cost counts in this metric's stats."""
        if self.reexplain_with is None:
            raise RuntimeError("reexplain without a method: Metric.reexplains is checked before the run")
        reexplain, rng = self.reexplain_with, self.rng

        async def run() -> np.ndarray:
            attribution, stats = await reexplain(x, self.target if target is None else target, rng)
            self._spend(stats)
            return attribution

        return Await(run)

    def reexplain_all(self, xs: list[np.ndarray], targets: list[int] | None = None) -> Await:
        """A step to yield from `stages`: the method's attributions of every input in `xs` (for
        `targets`, default the explanation's), in order, run concurrently (REEXPLAIN_CONCURRENCY at a
        time) so that their rows share batches. Each re-explanation draws from its own generator,
        spawned from the metric's in order, so the figures do not depend on how the runs interleave."""
        if self.reexplain_with is None:
            raise RuntimeError("reexplain without a method: Metric.reexplains is checked before the run")
        if targets is not None and len(targets) != len(xs):
            raise ValueError(f"{len(xs)} inputs and {len(targets)} targets")
        reexplain = self.reexplain_with
        chosen = [self.target] * len(xs) if targets is None else list(targets)
        generators = self.rng.spawn(len(xs))

        async def run() -> list[np.ndarray]:
            gate = asyncio.Semaphore(REEXPLAIN_CONCURRENCY)

            async def one(x: np.ndarray, target: int, rng: np.random.Generator) -> tuple[np.ndarray, RunStats]:
                async with gate:
                    attribution, stats = await reexplain(x, target, rng)
                self._spend(stats)
                return attribution

            tasks = [asyncio.ensure_future(one(x, t, r)) for x, t, r in zip(xs, chosen, generators)]
            try:
                return list(await asyncio.gather(*tasks))
            finally:  # one failed (a deadline, a refusal) or the request was cancelled: stop the rest
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        return Await(run)

    def _spend(self, stats: RunStats) -> None:
        self.spent.merge(stats)
        if self.on_reexplained is not None:
            self.on_reexplained()

    def reexplain_on(self, graph: Any, rng: np.random.Generator) -> Await:
        """A step to yield from `stages`: the method's attribution of the explanation's input and
        target on another model, `graph` (an onnx.ModelProto with the model's signature), drawing
        from `rng`; its cost counts in this metric's stats."""
        if self.reexplain_with is None:
            raise RuntimeError("reexplain without a method: Metric.reexplains is checked before the run")
        reexplain = self.reexplain_with

        async def run() -> np.ndarray:
            attribution, stats = await reexplain(self.x, self.target, rng, graph)
            self._spend(stats)
            return attribution

        return Await(run)

    @property
    def x(self) -> np.ndarray:
        return self.explain.x

    @property
    def target(self) -> int:
        return self.explain.target

    @property
    def model(self) -> ModelView:
        return self.explain.model

    def target_score(self) -> float:
        """The unperturbed input's score for the target (the request's score kind)."""
        prediction = self.explain.prediction
        if self.explain.score == "logit" and prediction.logits is not None:
            return float(prediction.logits[self.target])
        return float(prediction.probabilities[self.target])


@dataclass
class MetricValue:
    """A metric's answer: its value, named curves or per-step arrays, named figures."""

    value: float
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class MetricOutcome:
    """One metric's result as the response carries it (MetricResult)."""

    metric: str
    parameters: dict[str, Any]
    value: MetricValue
    stats: RunStats
    score: str = "probability"  # the score the metric's model evaluations used


MetricSteps = Generator[Any, Any, MetricValue]


class Metric(ABC):
    name: ClassVar[str]                 # the Metric oneof field's name
    title: ClassVar[str]
    reference: ClassVar[str]
    description: ClassVar[str]
    category: ClassVar[str]
    kinds: ClassVar[frozenset[str]]
    params: ClassVar[tuple[Param, ...]] = ()
    needs_region: ClassVar[bool] = False
    reexplains: ClassVar[bool] = False  # runs the request's method again (needs explain.method)
    higher_is_better: ClassVar[bool | None] = True  # None: neither (e.g. a correlation to read either way)
    curves: ClassVar[tuple[str, ...]] = ()
    figures: ClassVar[tuple[str, ...]] = ()

    def parameters(self, given: Mapping[str, Any], model: ModelView, settings: Settings) -> dict[str, Any]:
        """The request's parameters validated by the declarations (errors name `metric.field`), then
        by `resolve`."""
        return self.resolve(resolve_all(self.name, self.params, given, Limits(model, settings)), model, settings)

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings) -> dict[str, Any]:
        """Checks across parameters or against the model beyond the declarations."""
        return params

    def unavailable(self, model: ModelView) -> str:
        """Why this model cannot be evaluated by the metric ("" when it can), beyond its kinds."""
        return ""

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        """Model evaluations the metric will ask for (the row budget is checked before any work);
        `method_rows`: what one explanation by the request's method costs (re-explaining metrics).
        The metric's own rows are one model evaluation each, so given the method's engine rows
        instead, this is the metric's engine rows (admission's cost; a tabular Kernel SHAP coalition
        is one engine row that the graph expands over the background)."""
        return 0

    def planned_rows_for(self, params: dict[str, Any], model: ModelView, method_rows: int, x: np.ndarray,
                         memo: dict[str, Any]) -> int:
        """planned_rows for the input `x`: a metric whose rows depend on the input (IROF's segments)
        works them out here, keeping in `memo` what its stages reuse (MetricContext.memo)."""
        return self.planned_rows(params, model, method_rows)

    @abstractmethod
    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps | MetricValue:
        """Yield stages (each receives its reducer back) and return the MetricValue; a metric needing
        no model evaluation returns its value directly."""

    async def evaluate(self, params: dict[str, Any], ctx: MetricContext,
                       on_progress: Callable[[int, int], None] | None = None,
                       planned: int | None = None) -> MetricOutcome:
        """Run the metric; `planned`: its model evaluations as planned for the request (re-explanations
        included), else its own rows. Progress counts its stage rows and its re-explanations' rows."""
        if planned is None:
            planned = self.planned_rows_for(params, ctx.model, 0, ctx.x, ctx.memo)
        stage_rows = [0]
        run = dataclasses.replace(ctx)

        def report() -> None:
            if on_progress is not None:
                done = stage_rows[0] + run.spent.model_evaluations
                on_progress(done, max(planned, done))

        def stage_progress(rows: int, _: int) -> None:
            stage_rows[0] = rows
            report()

        explain = dataclasses.replace(ctx.explain, on_progress=stage_progress if on_progress else None,
                                      on_partial=None, allow_partial=False)
        run.explain, run.on_reexplained = explain, report
        runner = StageRunner(explain, planned or None)
        value = await drive(self.stages(params, run), runner, self.name)
        stats = runner.stats
        stats.merge(run.spent)
        value.value = float(value.value)
        return MetricOutcome(self.name, params, value, stats, ctx.explain.score)


__all__ = ["AXIOMATIC", "COMPLEXITY", "FAITHFULNESS", "LOCALISATION", "RANDOMISATION", "REEXPLAIN_CONCURRENCY",
           "ROBUSTNESS", "Metric",
           "MetricContext", "MetricOutcome", "MetricSteps", "MetricValue", "Reexplain", "positions"]
