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
and the weighted R^2 (`figures`).
Tabular (lime_tabular): quartile discretisation from the model's background rows, 5000 samples,
kernel width sqrt(F) * 0.75 on the euclidean distance of the binary representation; weights per
feature ("x_i stays in its quartile"), all features kept (lime's default keeps 10). lime_tabular draws
feature by feature over all samples, so they are drawn up front: num_samples is bounded by
max_request_memory_bytes for the model's number of features.
Score: the probability by default.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..config import Settings
from ..engine.job import RowChunk
from ..errors import FailedPrecondition, InvalidArgument
from ..onnxgraph.variants import ROWS_TABULAR, SCORE_OUTPUT, VariantSpec
from .base import (Method, MethodContext, ModelView, Parameter, Plan, Reducer, float_param, int_param, refuse_given,
                   row_chunks)
from .gradient_base import choice_param
from .lime_core import (IMAGE_KERNEL_WIDTH, QuartileDiscretizer, RidgeAccumulator, image_coalition_chunks,
                        image_kernel_weights, max_ridge_features, max_tabular_samples, ridge_bytes,
                        tabular_kernel_weights, tabular_sample_bytes)
from .superpixels import segment_means, superpixels

CHUNK_ROWS = 256


class LimeReducer(Reducer):
    """Ridge sufficient statistics; the attribution is per feature, or per pixel via the segment map.

    Tabular: the rows' binary representation and kernel weights, drawn up front, are looked up by row
    number. Images (``binary`` None): each chunk's coalition bits come with its rows (the "coalition"
    codes) and its weights are computed from them, so nothing is kept per row.
    """

    def __init__(self, binary: np.ndarray | None, weights: np.ndarray | None, alpha: float,
                 segments: np.ndarray | None = None, num_features: int | None = None,
                 kernel_width: float = IMAGE_KERNEL_WIDTH) -> None:
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
            self.accumulator.add(bits, targets, image_kernel_weights(bits, self.kernel_width))
        else:
            ids = codes["row"]
            self.accumulator.add(self.binary[ids], targets, self.weights[ids])  # type: ignore[index]
        self.result = None

    def solve(self) -> tuple[np.ndarray, float, float]:
        if self.result is None:
            self.result = self.accumulator.solve()
        return self.result

    def attribution(self) -> np.ndarray:
        coefficients = self.solve()[0]
        return coefficients if self.segments is None else coefficients[self.segments]


class Lime(Method):
    name = "lime"
    title = "LIME"
    reference = "Ribeiro, Singh & Guestrin 2016, Why Should I Trust You?; the lime package"
    description = "A weighted linear surrogate fitted on random on/off perturbations of superpixels or features."
    kinds = frozenset({"image", "tabular"})
    parameters = (
        Parameter("num_samples", "int32", "1000 (images), 5000 (tabular)", "perturbed samples"),
        Parameter("segmentation", "string", "quickshift", "images: quickshift | slic | felzenszwalb"),
        Parameter("hide_value", "float", "unset: each superpixel's mean colour",
                  "images: value of switched-off superpixels, in model input space"),
        Parameter("kernel_width", "float", "0.25 (images), sqrt(F) * 0.75 (tabular)", "width of the kernel"),
    )

    def resolve(self, given: Mapping[str, Any], model: ModelView, settings: Settings) -> dict[str, Any]:
        image = model.kind == "image"
        params: dict[str, Any] = {
            "num_samples": int_param(given, self.name, "num_samples", 1000 if image else 5000, 2,
                                     settings.max_rows_per_request)}
        if "kernel_width" in given:
            params["kernel_width"] = float_param(given, self.name, "kernel_width", 0.25, 0.0, 1e6, open_interval=True)
        if image:
            params["segmentation"] = choice_param(given, self.name, "segmentation", "quickshift",
                                                  ("quickshift", "slic", "felzenszwalb"))
            if "hide_value" in given:
                value = float(given["hide_value"])
                if not np.isfinite(value):
                    raise InvalidArgument(f"{self.name}.hide_value", "a finite number", value)
                params["hide_value"] = value
        else:
            refuse_given(given, self.name, ("segmentation", "hide_value"), "unset for a tabular model (it applies "
                         "to images: features are switched through the background's quartiles)")
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

    def plan(self, params: dict[str, Any], ctx: MethodContext) -> Plan:
        if ctx.model.kind == "tabular":
            return self._plan_tabular(params, ctx)
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
        coalitions = image_coalition_chunks(sp.count, params["num_samples"], ctx.rng, CHUNK_ROWS)
        reducer = LimeReducer(None, None, 1.0, sp.labels, num_features=sp.count,
                              kernel_width=params.get("kernel_width", IMAGE_KERNEL_WIDTH))
        return Plan(sp.spec(ctx.score), sp.constants(ctx, hidden), sp.rows(coalitions), params["num_samples"],
                    reducer, partial_maps=True)

    def _plan_tabular(self, params: dict[str, Any], ctx: MethodContext) -> Plan:
        discretizer = QuartileDiscretizer(np.asarray(ctx.model.background, np.float64))
        binary, samples = discretizer.sample(ctx.x.astype(np.float64), params["num_samples"], ctx.rng)
        weights = tabular_kernel_weights(binary, params.get("kernel_width"))
        rows = row_chunks({"row_input": samples.astype(np.float32)}, CHUNK_ROWS)
        constants = {"x0": ctx.x, "target": np.array(ctx.target, np.int64)}
        return Plan(VariantSpec(ROWS_TABULAR, ctx.score), constants, rows, len(samples),
                    LimeReducer(binary, weights, 1.0), partial_maps=True)

    def outputs(self, params: dict[str, Any], ctx: MethodContext, reducer: Reducer) -> dict[str, np.ndarray]:
        if reducer.segments is None:  # type: ignore[attr-defined]
            return {}
        return {"segments": reducer.segments.astype(np.int32),  # type: ignore[attr-defined]
                "segment_weights": reducer.solve()[0].astype(np.float32)}  # type: ignore[attr-defined]

    def extras(self, params: dict[str, Any], ctx: MethodContext, reducer: Reducer) -> dict[str, float]:
        coefficients, intercept, r2 = reducer.solve()  # type: ignore[attr-defined]
        return {"weighted_r2": float(r2), "intercept": float(intercept), "num_features": float(len(coefficients))}
