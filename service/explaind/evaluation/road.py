"""ROAD, remove and debias (Rong, Leemann, Borisov, Kasneci & Kasneci, ICML 2022, A Consistent and
Efficient Evaluation Strategy for Attribution Methods; Quantus's ROAD): does the prediction survive
when the most relevant pixels are removed and imputed from their neighbours, so that the removal
itself leaks no shape?

For each percentage p, the k = int(P * p / 100) most relevant pixels (ties in row-major order) are
replaced by noisy linear imputation: every removed pixel takes the weighted mean of its 8 neighbours
(weight 1/6 for the 4 direct ones, 1/12 for the diagonal ones; neighbours outside the image left out
of the mean), the removed neighbours themselves unknowns of one sparse linear system per channel,
solved exactly, then Gaussian noise of standard deviation `noise` is added to each imputed value
(drawn from the metric's seeded generator). The curve `kept` [len(percentages)] is 1 where the
imputed image is still classified as the target (argmax of the model's output), Quantus's per-input
ROAD curve; `scores` holds the target score there. The value is the mean of `kept` over the
percentages (the area under the accuracy curve, as a fraction); lower is better (most relevant
first: a faithful map loses the class early).

Defaults (Quantus's): percentages 1, 3, ..., 99 (50 imputed images, one model evaluation each), noise
0.01, in model input space. The imputed images depend on the mask through the linear solve, so they
are made on the host and sent as whole rows (onnxgraph/variants/rows.py, rows_image): one sparse
solve each (milliseconds at 64 x 64, up to a second at 224 x 224, the deadline checked between
them). Images only.
Quantus imputes channel values of the map broadcast over the channels, which its imputation only
supports for one-channel inputs; explaind removes whole pixels (all channels), as the paper.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..errors import DeadlineExceeded
from ..methods.base import ModelView, Reducer, Stage, row_chunks
from ..methods.params import IMAGE, Float, Floats
from ..onnxgraph.variants import PROBABILITIES_OUTPUT, SCORE_OUTPUT
from ..onnxgraph.variants.rows import ImageRows
from .base import FAITHFULNESS, Metric, MetricContext, MetricSteps, MetricValue
from .curves import MORF, order
from .perturbation import channels_pixels, model_input

PERCENTAGES = [float(p) for p in range(1, 100, 2)]
CHUNK_ROWS = 16
# (row offset, column offset, weight): the imputation's neighbourhood.
NEIGHBOURS = ((1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12), (0, -1, 1 / 6), (-1, -1, 1 / 12),
              (1, 0, 1 / 6), (-1, 0, 1 / 6))


def impute(cp: np.ndarray, shape: tuple[int, int], removed: np.ndarray) -> np.ndarray:
    """[C, P]: the removed pixels (flat indices) solved as the weighted mean of their neighbours."""
    height, width = shape
    out = cp.copy()
    n = len(removed)
    if n == 0:
        return out
    unknown = np.full(height * width, -1, np.int64)
    unknown[removed] = np.arange(n)
    rows, cols = removed // width, removed % width
    diagonal = np.zeros(n)
    right = np.zeros((n, cp.shape[0]))
    entries_i, entries_j, entries_w = [], [], []
    for dr, dc, weight in NEIGHBOURS:
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        ids = np.nonzero(inside)[0]
        neighbour = r[ids] * width + c[ids]
        diagonal[ids] += weight
        known = unknown[neighbour] < 0
        right[ids[known]] -= weight * cp[:, neighbour[known]].T
        entries_i.append(ids[~known])
        entries_j.append(unknown[neighbour[~known]])
        entries_w.append(np.full(int((~known).sum()), weight))
    from scipy import sparse  # lazy: scipy is not imported by the server until a request needs it
    from scipy.sparse.linalg import spsolve
    system = sparse.coo_matrix((np.concatenate(entries_w + [-diagonal]),
                                (np.concatenate(entries_i + [np.arange(n)]), np.concatenate(entries_j + [np.arange(n)]))),
                               shape=(n, n)).tocsc()
    solved = spsolve(system, right)
    out[:, removed] = np.asarray(solved).reshape(n, -1).T
    return out


class RoadReducer(Reducer):
    def __init__(self, rows: int) -> None:
        self.scores = np.zeros(rows, np.float64)
        self.predicted = np.zeros(rows, np.int64)

    def consume(self, codes, rows, slot) -> None:
        self.scores[codes["row"]] = rows[SCORE_OUTPUT].astype(np.float64)
        self.predicted[codes["row"]] = np.argmax(rows[PROBABILITIES_OUTPUT], axis=1)


class Road(Metric):
    name = "road"
    title = "ROAD (remove and debias)"
    reference = ("Rong, Leemann, Borisov, Kasneci & Kasneci 2022, A Consistent and Efficient Evaluation Strategy "
                 "for Attribution Methods")
    description = "Share of removal percentages at which the class survives noisy linear imputation (lower is better)."
    category = FAITHFULNESS
    kinds = IMAGE
    higher_is_better = False
    curves = ("kept", "scores", "percentages")
    params = (
        Floats("percentages", PERCENTAGES, "percentages of the pixels removed, most relevant first", 0.0, 100.0,
               length=(1, 1000), shown="1, 3, ..., 99"),
        Float("noise", 0.01, "standard deviation of the Gaussian noise added to imputed values", 0.0),
    )

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        return len(params["percentages"])

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        cp = channels_pixels(ctx)
        shape = tuple(ctx.model.signature.spatial_shape)
        ranked = order(ctx.attribution, MORF)
        percentages = np.asarray(params["percentages"], np.float64)
        counts = [int(len(ranked) * p / 100) for p in percentages]
        rng, noise = ctx.rng, params["noise"]

        def image(k: int) -> np.ndarray:
            removed = ranked[:k]
            imputed = impute(cp, shape, removed)
            if noise > 0 and k:
                imputed[:, removed] += noise * rng.standard_normal((cp.shape[0], k))
            return model_input(ctx, imputed)

        # Made here (in the metric's worker thread, not on the event loop), in order: the noise of
        # row i is the i-th draw whatever the batching. A solve takes up to about a second on a
        # 224 x 224 input, so the deadline is checked between them.
        made = []
        for k in counts:
            deadline = ctx.explain.deadline
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(f"the request's deadline passed while road imputed image {len(made) + 1} "
                                       f"of {len(counts)}")
            made.append(image(k))
        images = np.stack(made)
        rows = len(counts)
        reducer = yield Stage(ImageRows(score=ctx.explain.score), ctx.explain.target_constants(),
                              row_chunks({"row_input": images}, CHUNK_ROWS), rows, RoadReducer(rows))
        kept = (reducer.predicted == ctx.target).astype(np.float64)
        return MetricValue(float(kept.mean()), curves={"kept": kept, "scores": reducer.scores,
                                                      "percentages": percentages})
