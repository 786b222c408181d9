"""The one helper every test uses to run a method in process: a real Engine and real onnxruntime
sessions, no gRPC. It builds the ModelView and MethodContext a server would, validates the given
parameters through the method's declarations (as a request would be), forces the target class,
and returns what the method answered with its stats flattened for assertions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explaind.engine.engine import Engine, ServedModel
from explaind.methods.base import Method, MethodContext, ModelView


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


def view_of(served: ServedModel, kind: str = "image", background: np.ndarray | None = None, white_box: Any = None,
            preprocess: Any = None, graph: Any = None) -> ModelView:
    return ModelView(kind, served.signature, background, white_box, preprocess,
                     graph if graph is not None else served.model)


async def run_method(engine: Engine, served: ServedModel, method: Method, given: dict[str, Any], x: np.ndarray,
                     target: int, score: str = "probability", seed: int = 1, view: ModelView | None = None,
                     **view_fields: Any) -> tuple[Outcome, dict[str, Any]]:
    """Explain `x` for class `target`; `view` (or the fields of view_of) describes the model."""
    view = view or view_of(served, **view_fields)
    params = method.parameters(given, view, engine.settings, score)
    ctx = MethodContext(engine=engine, served=served, model=view, x=np.asarray(x, np.float32), score=score,
                        rng=np.random.default_rng(seed), settings=engine.settings,
                        choose_target=lambda prediction: int(target))
    run = await method.explain(params, ctx)
    s = run.stats
    outcome = Outcome(run.result.attribution, s.model_evaluations, s.batches, s.stages, s.queue_seconds,
                      s.compute_seconds, run.result.figures, run.result.arrays)
    return outcome, params
