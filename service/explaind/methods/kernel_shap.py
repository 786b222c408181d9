"""Kernel SHAP for tabular models (Lundberg & Lee 2017) and images (shap's `KernelExplainer` semantics).

Players are the features; a coalition z keeps x on z and takes the other features from each
background row (the model's background rows, or their k-means summary as `shap.kmeans`), and its
value is the weighted mean of f_c over them. The Shapley values solve the Shapley-kernel weighted
least squares under the efficiency constraint sum(phi) = g(f(x)) - g(E[f(background)]) with link g
identity (default) or logit. Two coalition designs (`estimator`, tabular):
- leverage (default): stratified by size, leverage-score allocation (Musco & Witter 2024, "Provably
  Accurate Shapley Value Estimation via Leverage Score Sampling": equal weight per size), paired
  (Covert & Lee 2021, "Improving KernelSHAP"), sizes enumerated exactly where the allocation covers
  them, without replacement, Horvitz-Thompson weights (kernel_shap_core.LeverageCoalitions). Default
  nsamples 8M (capped at 2^M - 2, exact), chosen to meet 1% of the score range on the tabular demo;
  the response reports its standard errors (the array `standard_errors` per feature, the figures
  standard_error_max and standard_error_mean; a linearisation of the constrained regression over the
  sampled pairs, 0 when exact; absent with l1_reg).
- shap: shap's scheme (exact enumeration when 2^M - 2 <= nsamples, else complete subset sizes then
  paired samples with repeats counted; default nsamples 2M + 2048), bit for bit in distribution
  what shap's KernelExplainer does; images always use it.
l1 feature selection "num_features(k)", "aic" or "bic" (default: off for the leverage estimator and for
M <= 10, else num_features(10), as METHODS.md). Each coalition is one row (its mask); the graph expands it over the
background, so a request costs nsamples * B model evaluations. Coalitions are drawn chunk by chunk
as the engine takes rows and folded into the regression's statistics as results come; what stays
per coalition (its dedup key, the leverage estimator's packed mask and value for its errors, and
with l1_reg its row) is bounded by max_request_memory_bytes, checked before the request starts.
Score: the probability by default. The response's figures hold base_value and f_x.
Images: superpixels (quickshift by default, as LIME) are the players; an absent superpixel shows
the blurred image (default, Gaussian sigma 5 px), its mean colour, or a value; coalitions travel as
bit-vector rows through the same superpixel prefix as LIME; base_value is f of the all-absent image.
The response holds the per-pixel map, the segment map and phi per segment.
Partial answer at the deadline (allow_partial): the regression over the coalitions evaluated so far
(shap's order: complete subset sizes first, then the sampled ones, their weights renormalised to
their sizes' kernel mass over the draws of those evaluated; leverage: enumerated sizes first, then
the interleaved pairs, their weights scaled to the pairs planned); f(x) and the base value are the
first two rows. It needs the coalitions to determine the M - 1 free Shapley values (the constrained
normal equations of full rank), else DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator

import numpy as np

from ..config import Settings
from ..engine.job import RowChunk
from ..errors import FailedPrecondition, InvalidArgument, echo
from ..onnxgraph.variants import SCORE_OUTPUT
from ..onnxgraph.variants.coalition import TabularCoalition
from .base import PROBABILITY, Method, MethodContext, ModelView, Reducer, Result, Stage, Stages
from .kernel_shap_core import (CoalitionStream, LeverageCoalitions, LeverageKernelShap, StreamingKernelShap,
                               default_nsamples, leverage_nsamples, max_stream_nsamples, stream_bytes)
from .params import IMAGE, TABULAR, Choice, Float, Int, Text
from .superpixels import SEGMENTATIONS, segment_means, superpixels

CHUNK_ROWS = 512


class KernelShapReducer(Reducer):
    """Rows 0 and 1 are the full and the empty coalition (f(x), the base value); then the stream's rows,
    whose masks come back with their results (the `code` codes, the first M columns)."""

    def __init__(self, stream: CoalitionStream | LeverageCoalitions, link: str, l1_reg: str | None, code: str,
                 segments: np.ndarray | None = None) -> None:
        self.segments = segments
        self.link = link
        self.code = code
        self.num_players = stream.m
        self.regression: StreamingKernelShap | LeverageKernelShap
        if isinstance(stream, LeverageCoalitions):
            self.regression = LeverageKernelShap(stream, link, l1_reg)  # type: ignore[arg-type]
        else:
            self.regression = StreamingKernelShap(stream, link, l1_reg)  # type: ignore[arg-type]
        self.f_x: float | None = None
        self.base: float | None = None
        self.seen = 0

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        ids, values = codes["row"], rows[SCORE_OUTPUT].astype(np.float64)
        if self.link == "logit":
            outside = values[(values <= 0.0) | (values >= 1.0)]
            if outside.size:  # log(p / (1 - p)) is infinite there: the regression would be NaN
                raise InvalidArgument("kernel_shap.link", "identity for this input: the logit link needs every "
                                      "coalition's probability strictly inside (0, 1)", f"a probability of {outside[0]:g}")
        for special, name in ((0, "f_x"), (1, "base")):
            hit = ids == special
            if hit.any():
                setattr(self, name, float(values[hit][0]))
        sampled = ids >= 2
        if sampled.any():
            masks = codes[self.code][sampled, :self.num_players] > 0.5
            self.regression.add(ids[sampled] - 2, masks, values[sampled])
            self.seen += int(sampled.sum())

    def partial_unavailable(self) -> str:
        if self.f_x is None or self.base is None:
            return "f(x) and the base value were not evaluated"
        if self.num_players == 1:
            return ""
        rank = self.regression.rank()
        if rank == self.num_players - 1:
            return ""
        return (f"the {self.seen} coalitions evaluated determine {rank} of the {self.num_players - 1} free "
                f"Shapley values of {self.num_players} players")

    def phi(self, select: bool = True) -> np.ndarray:
        one_player = self.num_players == 1  # no coalition rows: phi = f(x) - base directly
        if self.f_x is None or self.base is None or (self.regression.count == 0 and not one_player):
            return np.zeros(self.num_players)
        return self.regression.solve(self.f_x, self.base, select=select)

    def attribution(self) -> np.ndarray:
        phi = self.phi()
        return phi if self.segments is None else phi[self.segments]

    def figures(self) -> dict[str, float]:
        figures = {"base_value": float(self.base), "f_x": float(self.f_x)}  # type: ignore[arg-type]
        errors = self.standard_errors()
        if errors is not None:
            figures["standard_error_max"] = float(errors.max()) if errors.size else 0.0
            figures["standard_error_mean"] = float(errors.mean()) if errors.size else 0.0
        return figures

    def standard_errors(self) -> np.ndarray | None:
        """The leverage estimator's per-feature standard errors (None for shap's scheme, or with l1_reg)."""
        if not isinstance(self.regression, LeverageKernelShap) or self.f_x is None or self.base is None:
            return None
        if not hasattr(self, "_errors"):
            self._errors = self.regression.standard_errors(self.f_x, self.base, self.phi(select=False))
        return self._errors

    def preview(self) -> np.ndarray:
        """Partial maps skip the l1 selection: they are computed on the event loop, between batches."""
        phi = self.phi(select=False)
        return phi if self.segments is None else phi[self.segments]


def coalition_chunks(stream: CoalitionStream | LeverageCoalitions) -> Iterator[np.ndarray]:
    """The full and the empty coalition, then the stream's rows drawn chunk by chunk as the engine takes them."""
    yield np.stack([np.ones(stream.m, bool), np.zeros(stream.m, bool)])
    yield from stream.chunks(CHUNK_ROWS)


def mask_rows(chunks: Iterable[np.ndarray]) -> Iterator[RowChunk]:
    """Tabular rows: {"row": ids, "mask": float32 mask} per chunk of coalitions."""
    start = 0
    for chunk in chunks:
        yield {"row": np.arange(start, start + len(chunk), dtype=np.int64), "mask": chunk.astype(np.float32)}
        start += len(chunk)


def check_memory(nsamples: int, num_players: int, l1_reg: str, budget: int, players: str) -> None:
    """Refuse nsamples whose working memory (:func:`stream_bytes`) would not fit the budget."""
    l1 = l1_reg != "none"
    if stream_bytes(num_players, nsamples, l1) <= budget:
        return
    most = max_stream_nsamples(num_players, l1, budget)
    if l1:
        why = f"with l1_reg {l1_reg} every coalition's row is kept for the feature selection"
    else:
        why = "each sampled coalition is remembered to count repeated draws"
    raise InvalidArgument("kernel_shap.nsamples", f"at most {most} for the {players} ({why}; the request's working "
                          f"memory must fit the server's max_request_memory_bytes of {budget})", nsamples)


def coalition_rows(num_players: int, nsamples: int) -> int:
    """The coalitions CoalitionStream hands out for these players and nsamples (its `total`, fixed by
    the enumeration alone: no draw is made to know it)."""
    return CoalitionStream(num_players, nsamples, np.random.default_rng(0)).total


def image_nsamples(nsamples: int, count: int, settings: Settings) -> int:
    """nsamples as used on an image of `count` superpixels: shap's auto (2M + 2048, capped at
    2^M - 2) within the row budget when unset, else as given."""
    if nsamples == AUTO_NSAMPLES:
        return min(default_nsamples(count), settings.max_rows_per_request - 2)
    return nsamples


def parse_l1(value: str, num_features: int | None) -> str | None:
    """num_features None: not known before the request's image is segmented (images)."""
    if value in ("", "default"):
        return None if num_features is None or num_features <= 10 else "num_features(10)"
    if value in ("none", "off", "false"):
        return None
    if value in ("aic", "bic"):
        return value
    match = re.fullmatch(r"num_features\((\d+)\)", value)
    if match:
        k = int(match.group(1))
        if k < 1 or (num_features is not None and k > num_features):
            k_range = f"in [1, {num_features}] (the model's features)" if num_features is not None else ">= 1"
            raise InvalidArgument("kernel_shap.l1_reg", f"num_features(k) with k {k_range}", echo(value))
        return value
    raise InvalidArgument("kernel_shap.l1_reg", "none, num_features(k), aic or bic", echo(value))


AUTO_NSAMPLES = 0  # images: nsamples not given, shap's default once the superpixels are known


def nsamples_low(limits: Any) -> int:
    """Tabular: the regression's minimum for the model's features; images: settled once segmented."""
    if limits.model.kind == "tabular":  # the smaller of the two estimators' minimums; resolve checks its own
        return min_nsamples(limits.model.signature.example_shape[0])
    return 1


def nsamples_high(limits: Any) -> int:
    return 10_000_000 if limits.model.kind == "tabular" else limits.settings.max_rows_per_request - 2


def min_nsamples(num_players: int, estimator: str = "shap") -> int:
    """Coalitions the regression needs: M - 1 unknowns after the efficiency constraint, so M (one to
    spare), or all 2^M - 2 when that is fewer (M <= 2). The leverage estimator draws units of two
    (a coalition and its complement), one per size pair at least: 2M, or all 2^M - 2 when fewer."""
    if estimator == "leverage":
        return min(2 * num_players, 2 ** num_players - 2) if num_players > 1 else 0
    return min(num_players, 2 ** num_players - 2)


class KernelShap(Method):
    name = "kernel_shap"
    title = "Kernel SHAP"
    reference = "Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions; shap KernelExplainer"
    description = "Shapley values from a kernel-weighted regression over coalitions of features or superpixels."
    kinds = frozenset({"tabular", "image"})
    arrays = ("segments", "segment_weights", "standard_errors")
    figures = ("base_value", "f_x", "standard_error_max", "standard_error_mean")
    partial_results = ("the regression over the coalitions evaluated so far (shap's order), their weights "
                       "renormalised; they must determine the Shapley values (full rank)")
    params = (
        Int("nsamples", None, "coalitions to evaluate, at least min(M, 2^M - 2) (estimator leverage: "
            "min(2M, 2^M - 2))", nsamples_low, nsamples_high,
            shown="8M (leverage) or 2M + 2048 (shap, images)"),
        Choice("estimator", "leverage", ("leverage", "shap"), "tabular: leverage (stratified leverage-score "
               "sampling, paired, exact small sizes; reports standard errors) | shap (KernelExplainer's scheme)",
               kinds=TABULAR),
        Text("l1_reg", None, "none | num_features(k) | aic | bic", shown="none for estimator leverage or M <= 10, else num_features(10)"),
        Choice("link", "identity", ("identity", "logit"), "identity | logit"),
        Int("background_kmeans", None, "tabular: summarise the background with k-means to this many weighted rows "
            "(shap.kmeans)", 1, lambda lim: len(lim.model.background) if lim.model.background is not None else 1,
            kinds=TABULAR, shown="unset (all background rows)"),
        Choice("segmentation", "quickshift", SEGMENTATIONS, "images: quickshift | slic | felzenszwalb", kinds=IMAGE),
        Choice("fill", "blur", ("blur", "mean", "value"), "images: absent superpixels show blur | mean | value",
               kinds=IMAGE),
        Float("fill_value", None, "images, fill=value: the value, in model input space", -1e6, 1e6, kinds=IMAGE,
              shown="0"),
        Float("blur_sigma", None, "images, fill=blur: Gaussian sigma in pixels, at most the image's larger side",
              0.0, lambda lim: float(max(lim.model.signature.spatial_shape)), exclusive_low=True, kinds=IMAGE,
              shown="5"),
    )

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        if params["link"] == "logit" and score != PROBABILITY:
            raise InvalidArgument(f"{self.name}.link", "identity when the score is LOGIT (the logit link maps "
                                  "probabilities in (0, 1) to log-odds)", "logit")
        if model.kind == "image":
            # Unset: shap's "auto" (2M + 2048, capped at 2^M - 2), settled once the image is segmented.
            params.setdefault("nsamples", AUTO_NSAMPLES)
            params["l1_reg"] = parse_l1(str(params.get("l1_reg", "none")).lower(), None) or "none"
            for name, fill in (("fill_value", "value"), ("blur_sigma", "blur")):
                if name in params and params["fill"] != fill:
                    raise InvalidArgument(f"{self.name}.{name}", f"unset unless fill is {fill}",
                                          f"{params[name]} with fill {params['fill']}")
            if params["fill"] == "value":
                params.setdefault("fill_value", 0.0)
            if params["fill"] == "blur":
                # The blur's cost grows with sigma (skimage's kernel spans 8 sigma); past the image's larger side
                # it is the image's mean anyway (the declared bound).
                params.setdefault("blur_sigma", 5.0)
            return params
        if model.background is None:
            raise FailedPrecondition("kernel_shap needs background rows: add `background:` to the model's model.yaml")
        num_features = model.signature.example_shape[0]
        leverage = params["estimator"] == "leverage"
        params.setdefault("nsamples", leverage_nsamples(num_features) if leverage else default_nsamples(num_features))
        if params["nsamples"] < min_nsamples(num_features, params["estimator"]):
            raise InvalidArgument(f"{self.name}.nsamples", f"at least {min_nsamples(num_features, params['estimator'])} for "
                                  f"the {params['estimator']} estimator and the model's {num_features} features "
                                  "(coalitions come in pairs, one per size pair at least)", params["nsamples"])
        # shap's default selection (num_features(10) above 10 features) belongs to its scheme; the leverage
        # estimator estimates every Shapley value (and its error) unless a selection is asked for.
        l1_default = "none" if leverage else ""
        params["l1_reg"] = parse_l1(str(params.get("l1_reg", l1_default)).lower(), num_features) or "none"
        if num_features <= 30:  # every coalition is enumerated at 2^M - 2 (shap's cap): report what is used
            params["nsamples"] = min(params["nsamples"], 2 ** num_features - 2)
        background = params.get("background_kmeans", len(model.background))
        evaluations = (params["nsamples"] + 2) * background
        if evaluations > settings.max_rows_per_request:
            raise InvalidArgument(f"{self.name}.nsamples", f"at most {settings.max_rows_per_request} model "
                                  "evaluations (nsamples x background rows; the server's max_rows_per_request)",
                                  f"{params['nsamples']} x {background} = {evaluations}")
        check_memory(params["nsamples"], num_features, params["l1_reg"], settings.max_request_memory_bytes,
                     f"model's {num_features} features")
        return {name: params[name] for name in ("nsamples", "estimator", "l1_reg", "link", "background_kmeans")
                if name in params}

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        """f(x), the base value and the stream's coalitions, times the background rows (tabular); on
        images the superpixel count settles shap's auto nsamples and the enumeration (the
        segmentation runs here once and the stage reuses it)."""
        if ctx.model.kind == "image":
            sp, nsamples = self._image_plan(params, ctx)
            return coalition_rows(sp.count, nsamples) + 2
        background = params.get("background_kmeans", len(ctx.model.background))
        return (coalition_rows(int(ctx.model.signature.example_shape[0]), params["nsamples"]) + 2) * background

    def planned_engine_rows(self, params: dict[str, Any], ctx: MethodContext) -> int | None:
        """Tabular: each coalition is one engine row that the graph expands over the background."""
        if ctx.model.kind == "image":
            return self.planned_rows(params, ctx)
        return coalition_rows(int(ctx.model.signature.example_shape[0]), params["nsamples"]) + 2

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        if ctx.model.kind == "image":
            return (yield from self._image(params, ctx))
        background = np.asarray(ctx.model.background, np.float32)
        weights = np.full(len(background), 1.0 / len(background))
        if "background_kmeans" in params:
            import shap

            summary = shap.kmeans(background, params["background_kmeans"])
            background = np.asarray(summary.data, np.float32)
            weights = np.asarray(summary.weights, np.float64) / np.sum(summary.weights)
        stream: CoalitionStream | LeverageCoalitions
        if params["estimator"] == "leverage":
            stream = LeverageCoalitions(ctx.x.shape[0], params["nsamples"], ctx.rng)
        else:
            stream = CoalitionStream(ctx.x.shape[0], params["nsamples"], ctx.rng)
        constants = {**ctx.target_constants(), "background": background,
                     "background_weights": weights.astype(np.float32)}
        l1 = None if params["l1_reg"] == "none" else params["l1_reg"]
        reducer = yield Stage(TabularCoalition(score=ctx.score, background_rows=len(background)), constants,
                              mask_rows(coalition_chunks(stream)), stream.total + 2,
                              KernelShapReducer(stream, params["link"], l1, "mask"), partial_maps=True,
                              evaluations_per_row=len(background), partial=True)
        errors = reducer.standard_errors()
        arrays = {} if errors is None else {"standard_errors": errors.astype(np.float32)}
        return Result(reducer.attribution(), reducer.figures(), arrays)

    def _image_plan(self, params: dict[str, Any], ctx: MethodContext) -> tuple[Any, int]:
        """The superpixels and the coalition count for an image, checked against the regression's
        needs and the memory budget (at planning, so a bad parameter is INVALID_ARGUMENT before
        admission weighs its rows)."""
        sp = superpixels(ctx, params["segmentation"])
        nsamples = image_nsamples(params["nsamples"], sp.count, ctx.settings)
        if nsamples < min_nsamples(sp.count):
            raise InvalidArgument(f"{self.name}.nsamples", f"at least {min_nsamples(sp.count)} for the {sp.count} "
                                  f"superpixels {params['segmentation']} made of this image (the regression has "
                                  "one unknown per superpixel but one)", nsamples)
        budget = ctx.settings.max_request_memory_bytes
        if stream_bytes(sp.count, min_nsamples(sp.count), params["l1_reg"] != "none") > budget:
            raise InvalidArgument(f"{self.name}.segmentation", f"a segmentation with fewer superpixels than the "
                                  f"{sp.count} {params['segmentation']} made of this image (their {sp.count} x "
                                  f"{sp.count} regression statistics must fit the server's max_request_memory_bytes "
                                  f"of {budget})", params["segmentation"])
        check_memory(nsamples, sp.count, params["l1_reg"], budget,
                     f"{sp.count} superpixels {params['segmentation']} made of this image")
        return sp, nsamples

    def _image(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        sp, params["nsamples"] = self._image_plan(params, ctx)  # reported as used
        if params["fill"] == "value":
            absent = np.full_like(sp.hwc, params["fill_value"])
        elif params["fill"] == "blur":
            from skimage.filters import gaussian

            absent = gaussian(sp.hwc.astype(np.float64), sigma=params["blur_sigma"], channel_axis=-1).astype(np.float32)
        else:
            absent = segment_means(sp.hwc, sp.labels)
        stream = CoalitionStream(sp.count, params["nsamples"], ctx.rng)
        l1 = None if params["l1_reg"] == "none" else params["l1_reg"]
        reducer = yield Stage(sp.variant(ctx.score), sp.constants(ctx, absent), sp.rows(coalition_chunks(stream)),
                              stream.total + 2, KernelShapReducer(stream, params["link"], l1, "coalition", sp.labels),
                              partial_maps=True, partial=True)
        arrays = {"segments": sp.labels.astype(np.int32), "segment_weights": reducer.phi().astype(np.float32)}
        return Result(reducer.attribution(), reducer.figures(), arrays)
