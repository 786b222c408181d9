"""LIME (Ribeiro, Singh & Guestrin 2016; the lime package's semantics, see methods/lime_core.py).

Images: superpixels by quickshift(kernel_size=4, max_dist=200, ratio=0.2) on the input image
(slic and felzenszwalb as options), computed once per request and sent to the graph prefix as a
per-job constant; each sample switches every superpixel on or off uniformly (the first sample all
on) and travels as a bit-vector row; switched-off superpixels show their mean colour (lime's
hide_color=None) or a given value; kernel sqrt(exp(-d^2 / 0.25^2)) on the cosine distance to the
all-on vector; surrogate Ridge(alpha=1) on the bits, weighted, fitted from running sufficient
statistics. 1000 samples by default. The samples are drawn chunk by chunk as the engine takes rows
and folded in as results come, so a request's memory does not grow with num_samples (only with the
superpixels' S x S statistics, checked against max_request_memory_bytes). The response holds the
per-pixel map (each pixel gets its superpixel's weight), the segment map, the per-segment weights
and the weighted R^2 (`figures`). With few superpixels (2^S <= 4 num_samples, S <= 16) most samples
repeat an image already drawn: the same samples are drawn, counted, and each distinct image is
evaluated once with its kernel weight times its count (the same surrogate; quickshift finds 3-5
superpixels on the 64 x 64 demo images, so 1000 samples cost at most 32 model rows, not 1000).
Estimated error: the surrogate coefficients' standard errors (weighted least squares,
sigma^2 = SSres / (n - S - 1)), per feature or superpixel in the array `standard_errors`, their max
and mean in the figures standard_error_max / standard_error_mean; `samples` counts the samples fitted.
Tabular (lime_tabular): quartile discretisation from the model's background rows, 5000 samples,
kernel width sqrt(F) * 0.75 on the euclidean distance of the binary representation; weights per
feature ("x_i stays in its quartile"), all features kept (lime's default keeps 10). lime_tabular draws
feature by feature over all samples, so they are drawn up front: num_samples is bounded by
max_request_memory_bytes for the model's number of features.
Score: the probability by default.
Partial answer at the deadline (allow_partial): the surrogate fitted on the samples evaluated so far
(the first ones drawn from the seed, the first of them all on; with few superpixels the distinct
images evaluated so far with all their samples), its figures from them too; it needs at
least one sample per feature or superpixel and one for the intercept, else DEADLINE_EXCEEDED.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Settings
from ..engine.job import RowChunk
from ..errors import FailedPrecondition, InvalidArgument
from ..onnxgraph.variants import SCORE_OUTPUT
from ..onnxgraph.variants.rows import TabularRows
from .base import Method, MethodContext, ModelView, Reducer, Result, Stage, Stages, row_chunks
from .lime_core import (DEDUP_MAX_SEGMENTS, IMAGE_KERNEL_WIDTH, QuartileDiscretizer, RidgeAccumulator,
                        distinct_coalitions, image_coalition_chunks,
                        image_kernel_weights, max_ridge_features, max_tabular_samples, ridge_bytes,
                        tabular_kernel_weights, tabular_sample_bytes)
from .params import IMAGE, Choice, Float, Int
from .superpixels import SEGMENTATIONS, segment_means, superpixels

CHUNK_ROWS = 256


class LimeReducer(Reducer):
    """Ridge sufficient statistics; the attribution is per feature, or per pixel via the segment map.

    Tabular: the rows' binary representation and kernel weights, drawn up front, are looked up by row
    number. Images (``binary`` None): each chunk's coalition bits come with its rows (the "coalition"
    codes) and its weights are computed from them, so nothing is kept per row.
    """

    def __init__(self, binary: np.ndarray | None, weights: np.ndarray | None, alpha: float,
                 segments: np.ndarray | None = None, num_features: int | None = None,
                 kernel_width: float = IMAGE_KERNEL_WIDTH, counts: np.ndarray | None = None) -> None:
        self.counts = counts  # images, distinct coalitions: the samples each row stands for
        self.binary = binary
        self.weights = weights
        self.segments = segments
        self.num_features = binary.shape[1] if binary is not None else int(num_features)  # type: ignore[arg-type]
        self.kernel_width = kernel_width
        self.accumulator = RidgeAccumulator(self.num_features, alpha)
        self.result: tuple[np.ndarray, float, float] | None = None

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        targets = rows[SCORE_OUTPUT].astype(np.float64)
        if self.binary is None:
            bits = codes["coalition"][:, :self.num_features]
            weights = image_kernel_weights(bits, self.kernel_width)
            if self.counts is None:
                self.accumulator.add(bits, targets, weights)
            else:
                counts = self.counts[codes["row"]]
                self.accumulator.add(bits, targets, weights * counts, counts)
        else:
            ids = codes["row"]
            self.accumulator.add(self.binary[ids], targets, self.weights[ids])  # type: ignore[index]
        self.result = None

    def solve(self) -> tuple[np.ndarray, float, float]:
        if self.result is None:
            self.result = self.accumulator.solve()
        return self.result

    def preview(self) -> np.ndarray:
        return self.attribution()

    def partial_unavailable(self) -> str:
        needed = self.num_features + 1
        if self.accumulator.count >= needed:
            return ""
        return (f"the surrogate of {self.num_features} features needs at least {needed} samples, "
                f"{self.accumulator.count} were evaluated")

    def attribution(self) -> np.ndarray:
        coefficients = self.solve()[0]
        return coefficients if self.segments is None else coefficients[self.segments]


class Lime(Method):
    name = "lime"
    title = "LIME"
    reference = "Ribeiro, Singh & Guestrin 2016, Why Should I Trust You?; the lime package"
    description = "A weighted linear surrogate fitted on random on/off perturbations of superpixels or features."
    kinds = frozenset({"image", "tabular"})
    arrays = ("segments", "segment_weights", "standard_errors")
    figures = ("weighted_r2", "intercept", "num_features", "standard_error_max", "standard_error_mean", "samples")
    partial_results = ("the surrogate fitted on the samples evaluated so far (the first ones drawn from the "
                       "seed); at least one more than the features or superpixels")
    params = (
        Int("num_samples", lambda lim: 1000 if lim.model.kind == "image" else 5000, "perturbed samples", 2,
            lambda lim: lim.settings.max_rows_per_request, shown="1000 (images), 5000 (tabular)"),
        Choice("segmentation", "quickshift", SEGMENTATIONS, "images: quickshift | slic | felzenszwalb", kinds=IMAGE),
        Float("hide_value", None, "images: value of switched-off superpixels, in model input space", kinds=IMAGE,
              shown="their mean colour"),
        Float("kernel_width", None, "width of the kernel", 0.0, 1e6, exclusive_low=True, exclusive_high=True,
              shown="0.25 (images), sqrt(F) * 0.75 (tabular)"),
    )

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        if model.kind == "image":
            return params
        if model.background is None:
            raise FailedPrecondition("lime on a tabular model needs background rows (`background:` in model.yaml)")
        # lime_tabular's draws go feature by feature over all rows, so the rows are drawn up front.
        num_features = model.signature.example_shape[0]
        budget = settings.max_request_memory_bytes
        if tabular_sample_bytes(params["num_samples"], num_features) > budget:
            per_sample = tabular_sample_bytes(1, num_features) - tabular_sample_bytes(0, num_features)
            most = max_tabular_samples(num_features, budget)
            raise InvalidArgument(f"{self.name}.num_samples", f"at most {most} for the model's {num_features} "
                                  f"features (samples are drawn up front, about {per_sample} bytes each, within "
                                  f"the server's max_request_memory_bytes of {budget})", params["num_samples"])
        return params

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        """One row per perturbed sample (the first is the input itself); on images with few superpixels
        S, at most one per distinct perturbed image: min(num_samples, 2^S), an upper bound, since the
        distinct draws depend on the request's seed and the plan does not (the stage counts them exactly
        for progress). The segmentation runs here once (ctx.memo) and the stage reuses it."""
        num_samples = int(params["num_samples"])
        if ctx.model.kind == "image":
            count = superpixels(ctx, params["segmentation"]).count
            if deduplicated(count, num_samples):
                return min(num_samples, 2 ** count)
        return num_samples

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        if ctx.model.kind == "tabular":
            discretizer = QuartileDiscretizer(np.asarray(ctx.model.background, np.float64))
            binary, samples = discretizer.sample(ctx.x.astype(np.float64), params["num_samples"], ctx.rng)
            weights = tabular_kernel_weights(binary, params.get("kernel_width"))
            rows = row_chunks({"row_input": samples.astype(np.float32)}, CHUNK_ROWS)
            tabular = yield Stage(TabularRows(score=ctx.score), ctx.target_constants(), rows, len(samples),
                                  LimeReducer(binary, weights, 1.0), partial_maps=True, partial=True)
            arrays = {"standard_errors": tabular.accumulator.standard_errors().astype(np.float32)}
            return Result(tabular.attribution(), self._figures(tabular), arrays)
        sp = superpixels(ctx, params["segmentation"])
        budget = ctx.settings.max_request_memory_bytes
        if ridge_bytes(sp.count) > budget:
            raise InvalidArgument(f"{self.name}.segmentation", f"a segmentation with at most "
                                  f"{max_ridge_features(budget)} superpixels (the surrogate's {sp.count} x {sp.count} "
                                  f"statistics must fit the server's max_request_memory_bytes of {budget})",
                                  f"{sp.count} superpixels from {params['segmentation']}")
        hidden = np.full_like(sp.hwc, params["hide_value"]) if "hide_value" in params else segment_means(sp.hwc, sp.labels)
        # Coalitions are drawn chunk by chunk as the engine takes rows, and each chunk's bits come back with
        # its results: working memory independent of num_samples.
        width = params.get("kernel_width", IMAGE_KERNEL_WIDTH)
        num_samples = params["num_samples"]
        if deduplicated(sp.count, num_samples):
            # Few superpixels: many samples repeat an image already drawn; each distinct one is evaluated once.
            distinct, counts = distinct_coalitions(sp.count, num_samples, ctx.rng, CHUNK_ROWS)
            coalitions = (distinct[i:i + CHUNK_ROWS] for i in range(0, len(distinct), CHUNK_ROWS))
            reducer = LimeReducer(None, None, 1.0, sp.labels, num_features=sp.count, kernel_width=width,
                                  counts=counts)
            planned = len(distinct)
        else:
            coalitions = image_coalition_chunks(sp.count, num_samples, ctx.rng, CHUNK_ROWS)
            reducer = LimeReducer(None, None, 1.0, sp.labels, num_features=sp.count, kernel_width=width)
            planned = num_samples
        image = yield Stage(sp.variant(ctx.score), sp.constants(ctx, hidden), sp.rows(coalitions),
                            planned, reducer, partial_maps=True, partial=True)
        arrays = {"segments": sp.labels.astype(np.int32), "segment_weights": image.solve()[0].astype(np.float32),
                  "standard_errors": image.accumulator.standard_errors().astype(np.float32)}
        return Result(image.attribution(), self._figures(image), arrays)

    @staticmethod
    def _figures(reducer: LimeReducer) -> dict[str, float]:
        coefficients, intercept, r2 = reducer.solve()
        errors = reducer.accumulator.standard_errors()
        return {"weighted_r2": float(r2), "intercept": float(intercept), "num_features": float(len(coefficients)),
                "standard_error_max": float(np.max(errors)), "standard_error_mean": float(np.mean(errors)),
                "samples": float(reducer.accumulator.samples)}


def deduplicated(num_segments: int, num_samples: int) -> bool:
    """Whether repeats are likely enough (2^S <= 4 num_samples) to evaluate each distinct image once."""
    return num_segments <= DEDUP_MAX_SEGMENTS and 2 ** num_segments <= 4 * num_samples
