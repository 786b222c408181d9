"""Extremal perturbation (Fong, Patrick & Vedaldi 2019, "Understanding Deep Networks via Extremal
Perturbations and Smooth Masks"; TorchRay's `extremal_perturbation` semantics and defaults).

For each area a, a smooth mask m of area a that maximises the target score of the input perturbed
where the mask is off (preservation game; the deletion game minimises the score of the input perturbed
where the mask is on, the dual game does both):
    max_p  f_c(perturb(x, m(p))) - lambda_t * mean_i (sort(m)_i - r_a,i)^2,
r_a = 0 for the lowest (1 - a) of the values, 1 for the rest. Defaults as TorchRay: areas [0.1],
800 iterations, mask parameters every step = 7 pixels (ceil(H/7) x ceil(W/7)), smooth-max
upsampling with sigma = 21 (see onnxgraph/extremal.py), blur perturbation from an 8-level pyramid
(sigma_l = 20 (1 - l/7), zero padding) (pixel sizes for 224-pixel inputs, see below), SGD with learning rate 0.01, momentum 0.9 and dampening
0.9 on p (clamped to [0, 1] after each step, starting from all ones), lambda 300 growing x1.0035 per
iteration, the input flipped horizontally on even iterations (jitter), and the masks returned are
those of the last iteration. Score: the logit (TorchRay rewards the model's raw output) for models
that output logits, else the probability.

Two deliberate differences, each undone by a parameter:
- the area is a fraction of the image, as the request says (TorchRay constrains the mask including
  its sigma-wide margin, so its masks cover more than `a` of the image: up to ((H + 2 sigma) / H)^2 a);
  `area_reference: padded` restores TorchRay's choice;
- TorchRay's pixel sizes (step 7, sigma 21, max_blur 20) are those of its 224-pixel inputs; for other
  sizes they scale with s = min(H, W) / 224 (step max(1, round(7 s)), sigma 21 s, max_blur 20 s), so
  masks keep the same size relative to the image (on 64-pixel images TorchRay's absolute values give
  one blob a tenth of the image and a blur that erases it, and the masks miss the object); pass
  step, sigma and max_blur to use TorchRay's absolute values.

Gradient of the score with respect to p:
- exact (models with gradients): from the model's own graph, one row per area and iteration;
- estimated (black-box models, or on request): antithetic Gaussian smoothing (Salimans et al. 2017's
  evolution-strategies estimator) in the space of the mask parameters,
      g = 1/(2 s n) sum_j [R(clip(p + s u_j)) - R(clip(p - s u_j))] u_j,   u_j ~ N(0, I),
  with n = gradient_samples pairs (default 16) and s = gradient_sigma (default 0.1), plus the
  regulariser's exact gradient (it needs no model evaluation). Cost: 2n + 1 model evaluations per
  area, game and iteration (the extra one reports the score and the mask), 26,400 per area at the
  defaults; reported in Stats.model_evaluations and figures.evaluations_per_iteration.
Either way one more row per area and game scores the returned masks on the unflipped input.
Each iteration is one engine job; concurrent requests' iterations share batches.
Area projection: TorchRay's penalty is smallest for smooth masks whose mean exceeds a (the smooth
max's low tails add area that a squared penalty hardly sees: with no score at all its minimum lies
~0.01 above a = 0.1 and ~0.018 above a = 0.2), so its last iterates come out larger than a (measured
on the shapes demo: +0.006 at a = 0.025 to +0.013 at a = 0.2, at most +0.021). By default
(`area_projection`) each mask whose mean exceeds a is brought down to it after the last iteration
by stretching its parameters, p' = clip((p - c) / (1 - c), 0, 1), c in [0, 1) found by bisection on
the mask's mean (numpy's copy of the graph's mask, `MaskGeometry.masks`): parameters below c go to
0 and those at 1 stay 1, so the mask keeps the same places fully and loses its low tails; where even
c -> 1 leaves the mean above a (the parameters at exactly 1 already cover more: short runs that
start from all ones), those are lowered together instead, p' = t [p = 1], t in [0, 1].
`area_projection: false` returns TorchRay's last iterate.
`achieved_area_i` reports each returned mask's mean.
Response: the masks in `masks` [A, H, W], as optimised (and projected), and per area i in `figures`:
area_i (asked), achieved_area_i (the mask's mean), score_i (the target score of the input as the game
shows it with that mask: preserved where the mask is on, or deleted, for the deletion game; both
score_i and deleted_score_i for the dual game). The attribution is the saliency map of TorchRay's
pointing benchmark: the masks summed over areas, blurred by a Gaussian of sigma = smooth x min(H, W)
(TorchRay's `smooth`, 0.09 in that benchmark; zero padding, as its `imsmooth`); `smooth: 0` gives the
plain sum. Why: a mask is flat at 1 over what it keeps, so its maximum is a plateau and an argmax
picks the plateau's first pixel in raster order, on its edge (on the shapes demo that pixel is outside
the object's box for ~25% of single 0.1 masks); the blur peaks where the kept region is thickest.
Unlike TorchRay, which returns the blurred masks, explaind blurs only the attribution: the blurred
masks no longer keep the score (shapes demo: median preserved logit 6.7 at 0.1 for the masks, -0.7 for
them blurred at 0.09), and the masks are what score_i and achieved_area_i describe.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ..config import Settings
from ..engine.job import RowChunk
from ..errors import FailedPrecondition, InvalidArgument
from ..onnxgraph.variants import SCORE_OUTPUT
from ..onnxgraph.variants.extremal import MASK_OUTPUT, PARAM_GRAD_OUTPUT, Extremal, MaskGeometry
from .base import LOGIT, Method, MethodContext, ModelView, Reducer, Result, Stage, Stages
from .params import Bool, Choice, Float, Floats, Int

LEARNING_RATE = 0.01
MOMENTUM = 0.9
AREA_WEIGHT = 300.0
AREA_WEIGHT_GROWTH = 1.0035
MAX_AREAS = 16
PROJECTION_STEPS = 20  # bisection steps of the area projection: c to within 1e-6
SMOOTH = 0.09  # the attribution's blur, a fraction of the image side: TorchRay's pointing benchmark
DESIGN_SIZE = 224  # TorchRay's pixel defaults (step 7, sigma 21, max_blur 20) are for 224-pixel inputs
CANVAS_BUDGET_BYTES = 512 * 2**20  # one row's widest tensor, [(2r + 1)^2, canvas] float32
GAMES = {"preserve": ((0.0, 1.0),), "delete": ((1.0, -1.0),), "dual": ((0.0, 1.0), (1.0, -1.0))}  # (invert, sign)


def perturbation_pyramid(x: np.ndarray, layout: str, levels: int, kind: str, max_blur: float) -> np.ndarray:
    """[L, ...] TorchRay's pyramid: level l blurred with sigma = max_blur (1 - l/(L-1)) (separable
    Gaussian of half-width ceil(4 sigma), zero padding), or faded to x l/(L-1); level L-1 is x."""
    axes = (1, 2) if layout == "NCHW" else (0, 1)
    out = []
    for level in range(levels):
        t = level / (levels - 1)
        if kind == "fade":
            out.append(x * np.float32(t))
            continue
        out.append(gaussian_smooth(x, (1.0 - t) * max_blur, axes))
    return np.stack(out).astype(np.float32)


def gaussian_smooth(x: np.ndarray, sigma: float, axes: tuple[int, ...]) -> np.ndarray:
    """TorchRay's `imsmooth`: a separable Gaussian of half-width ceil(4 sigma), taps normalised to sum
    to 1, zero padding, along `axes`; float32."""
    width = math.ceil(4 * sigma)
    taps = np.exp(-(np.arange(-width, width + 1) / (math.sqrt(2.0) * sigma + 1.1920929e-07)) ** 2)
    taps /= taps.sum()
    from scipy.ndimage import correlate1d  # lazy: scipy is not imported by the server until a request needs it
    y = x.astype(np.float64)
    for axis in axes:
        y = correlate1d(y, taps, axis=axis, mode="constant", cval=0.0)
    return y.astype(np.float32)


def _bisect(fits: Callable[[float], bool], outside: float, inside: float) -> float:
    """The point nearest `outside` where `fits` holds, `fits(inside)` holding (monotone between them)."""
    for _ in range(PROJECTION_STEPS):
        middle = 0.5 * (outside + inside)
        if fits(middle):
            inside = middle
        else:
            outside = middle
    return inside


class ExtremalPerturbation(Method):
    name = "extremal_perturbation"
    title = "Extremal perturbation"
    reference = ("Fong, Patrick & Vedaldi 2019, Understanding Deep Networks via Extremal Perturbations and "
                 "Smooth Masks; TorchRay extremal_perturbation")
    description = ("Smooth masks of given areas that keep (or delete) the target score best, optimised "
                   "through the model; exact gradients when the model has them, else estimated; images only.")
    kinds = frozenset({"image"})
    default_score = LOGIT
    arrays = ("masks",)
    figures = ("evaluations_per_iteration", "gradient_exact", "area_i", "achieved_area_i", "score_i",
               "deleted_score_i")
    params = (
        Floats("areas", [0.1], "fractions of the image each mask keeps", 0.0, 1.0, exclusive_low=True,
               exclusive_high=True, length=(1, MAX_AREAS)),
        Int("iterations", 800, "optimisation steps (TorchRay max_iter)", 1, 100_000),
        Int("step", None, "pixels between mask parameters", 1, lambda lim: min(lim.model.signature.spatial_shape),
            shown="7 at 224 px: max(1, round(7 s)), s = min(H, W) / 224"),
        Float("sigma", None, "mask smoothing, pixels", 0.0, lambda lim: 4.0 * max(lim.model.signature.spatial_shape),
              exclusive_low=True, exclusive_high=True, shown="21 s (21 at 224 px)"),
        Int("num_levels", 8, "perturbation pyramid levels", 2, 64),
        Float("max_blur", None, "blur sigma of the most perturbed level, pixels", 0.0, 1000.0, exclusive_low=True,
              exclusive_high=True, shown="20 s (20 at 224 px)"),
        Choice("perturbation", "blur", ("blur", "fade"), "blur | fade"),
        Choice("variant", "preserve", tuple(GAMES), "preserve | delete | dual"),
        Bool("jitter", True, "flip the input horizontally on even iterations"),
        Choice("gradient", "auto", ("auto", "exact", "estimated"),
               "auto (exact when the model has gradients) | exact | estimated"),
        Int("gradient_samples", 16, "estimated: antithetic pairs per iteration", 1, 4096),
        Float("gradient_sigma", 0.1, "estimated: smoothing of the mask parameters", 0.0, 1.0, exclusive_low=True,
              exclusive_high=True),
        Choice("area_reference", "image", ("image", "padded"),
               "image (area of the image) | padded (TorchRay: with margin)"),
        Bool("area_projection", True, "bring masks above their area down to it after the last iteration "
             "(false: TorchRay's last iterate)"),
        Float("smooth", SMOOTH, "the attribution is the masks' sum blurred by a Gaussian of sigma smooth x min(H, W), "
              "zero padding (TorchRay's pointing benchmark); 0: the sum itself; the masks are returned unblurred",
              0.0, 1.0),
    )

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        n = self.name
        height, width = model.signature.spatial_shape
        scale = min(height, width) / DESIGN_SIZE
        params.setdefault("step", max(1, round(7 * scale)))
        params.setdefault("sigma", round(21 * scale, 3))
        params.setdefault("max_blur", round(20 * scale, 3))
        geometry = MaskGeometry(height, width, params["step"], params["sigma"])
        widest = 4 * geometry.candidates * geometry.shape_out[0] * geometry.shape_out[1]
        if widest > CANVAS_BUDGET_BYTES:
            raise InvalidArgument(f"{n}.sigma", f"a smaller sigma / step ratio or a larger step (the mask needs "
                                  f"{widest / 2**20:.0f} MiB per row, the limit is {CANVAS_BUDGET_BYTES // 2**20} MiB)",
                                  f"sigma {params['sigma']:g}, step {params['step']}")
        white_box = model.white_box
        exact_available = bool(white_box and white_box.available)
        if params["gradient"] == "exact" and not exact_available:
            reason = white_box.reason if white_box else "the model has no gradients"
            raise FailedPrecondition(f"{n}.gradient: exact needs a model with gradients; {reason}; "
                                     "use gradient: estimated")
        if params["gradient"] == "auto":
            params["gradient"] = "exact" if exact_available else "estimated"
        rows_per_iteration = len(params["areas"]) * len(GAMES[params["variant"]])
        if params["gradient"] == "estimated":
            rows_per_iteration *= 2 * params["gradient_samples"] + 1
        else:  # only the estimate uses them: reported parameters are the ones used
            del params["gradient_samples"], params["gradient_sigma"]
        total = rows_per_iteration * params["iterations"]
        if total > settings.max_rows_per_request:
            raise InvalidArgument(f"{n}.iterations", f"at most {settings.max_rows_per_request} model evaluations "
                                  f"in all (iterations x {rows_per_iteration} per iteration)", total)
        return params

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        games = len(GAMES[params["variant"]])
        per_area = games * (1 + 2 * params.get("gradient_samples", 0))
        return len(params["areas"]) * (per_area * params["iterations"] + games)

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        return (yield from _Optimisation(params, ctx).steps())


class StepReducer(Reducer):
    """One iteration's rows kept whole (a few per area); the preview is the current masks' map."""

    def __init__(self, saliency: Callable[[np.ndarray], np.ndarray], areas: int, per_area: int,
                 shape: tuple[int, int]) -> None:
        self.parts: dict[str, list[np.ndarray]] = {SCORE_OUTPUT: [], MASK_OUTPUT: [], PARAM_GRAD_OUTPUT: []}
        self.saliency = saliency
        self.areas, self.per_area, self.shape = areas, per_area, shape

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        for name, parts in self.parts.items():
            parts.append(rows[name])

    def output(self, name: str) -> np.ndarray:
        return np.concatenate(self.parts[name])

    def masks(self) -> np.ndarray:
        """[A, H, W]: each area's first row's mask (its current point)."""
        return self.output(MASK_OUTPUT).reshape(self.areas, self.per_area, *self.shape)[:, 0]

    def preview(self) -> np.ndarray:
        return self.saliency(self.masks())


class _Optimisation:
    """One request's optimisation: the state of TorchRay's loop, one engine job per iteration."""

    def __init__(self, params: dict[str, Any], ctx: MethodContext) -> None:
        self.params = params
        self.ctx = ctx
        sig = ctx.model.signature
        self.height, self.width = sig.spatial_shape
        self.geometry = MaskGeometry(self.height, self.width, params["step"], params["sigma"])
        self.exact = params["gradient"] == "exact"
        padded = params["area_reference"] == "padded"
        exported = ctx.model.white_box.exported if (self.exact and ctx.model.white_box) else None
        self.variant = Extremal(score=ctx.score, step=params["step"], sigma=params["sigma"], levels=params["num_levels"],
                                padded_area=padded, exact=self.exact, exported=exported)
        pyramid = perturbation_pyramid(ctx.x, sig.layout, params["num_levels"], params["perturbation"],
                                       params["max_blur"])
        self.constants = {**ctx.target_constants(), "pyramid": pyramid}
        count = (self.geometry.shape_out[0] * self.geometry.shape_out[1]) if padded else self.height * self.width
        self.keep = np.array([max(1, count - int(count * (1.0 - a))) for a in params["areas"]], np.int64)
        self.padded = padded
        self.games = GAMES[params["variant"]]
        self.pairs = params.get("gradient_samples", 0)
        self.rows_per_point = len(self.games)
        self.points_per_area = 1 + 2 * self.pairs

    def _rows(self, p: np.ndarray, flip: bool, weight: float, pairs: bool = True) -> tuple[RowChunk, np.ndarray]:
        """Rows of one iteration: per area, the current point then (estimated, `pairs`) its antithetic
        pairs; per point, one row per game (the regulariser on the first). Returns the codes and the
        directions [A, n, h, w]."""
        areas, (hi, wi) = len(p), self.geometry.shape_in
        points_per_area = self.points_per_area if pairs else 1
        directions = np.zeros((areas, self.pairs, hi, wi), np.float32)
        points = []
        for a in range(areas):
            points.append(p[a])
            if self.pairs and pairs:
                directions[a] = self.ctx.rng.standard_normal((self.pairs, hi, wi), dtype=np.float32)
                step = self.params["gradient_sigma"] * directions[a]
                points.extend(np.clip(p[a] + step, 0.0, 1.0))
                points.extend(np.clip(p[a] - step, 0.0, 1.0))
        stacked = np.repeat(np.stack(points).astype(np.float32), self.rows_per_point, axis=0)
        games = np.tile(np.arange(self.rows_per_point), len(points))
        is_centre = np.repeat(np.tile(np.arange(points_per_area) == 0, areas), self.rows_per_point)
        codes: RowChunk = {
            "mask_params": stacked,
            "flip": np.full(len(stacked), 1.0 if flip else 0.0, np.float32),
            "invert": np.array([self.games[g][0] for g in games], np.float32),
            "regul_weight": np.where(is_centre & (games == 0), weight, 0.0).astype(np.float32),
            "keep_count": np.repeat(np.repeat(self.keep, points_per_area), self.rows_per_point),
        }
        if self.exact:
            codes["reward_sign"] = np.array([self.games[g][1] for g in games], np.float32)
        return codes, directions

    def _stage(self, codes: RowChunk, points_per_area: int) -> Stage[StepReducer]:
        """One iteration's rows as an eager stage (the request waits on them alone)."""
        areas = len(self.params["areas"])
        reducer = StepReducer(self._saliency, areas, points_per_area * self.rows_per_point, (self.height, self.width))
        return Stage(self.variant, self.constants, iter([codes]), len(codes["mask_params"]), reducer,
                     partial_maps=True, eager=True)

    def _saliency(self, masks: np.ndarray) -> np.ndarray:
        """The attribution: the masks [A, H, W] summed, blurred by `smooth` (see the module's docstring)."""
        total = masks.sum(axis=0)
        sigma = self.params["smooth"] * min(self.height, self.width)
        return gaussian_smooth(total, sigma, (0, 1)) if sigma > 0 else total.astype(np.float32)

    def _project(self, p: np.ndarray) -> np.ndarray:
        """Each mask above its area brought down to it (see the module's docstring), by bisection."""
        areas = self.keep / (self.geometry.shape_out[0] * self.geometry.shape_out[1] if self.padded
                             else self.height * self.width)
        projected = p.copy()
        for i, (params, area) in enumerate(zip(p, areas)):
            def mean(q: np.ndarray) -> float:
                return float(self.geometry.masks(q[None].astype(np.float32), canvas=self.padded).mean())

            def stretched(c: float) -> np.ndarray:
                return np.clip((params - c) / (1.0 - c), 0.0, 1.0) if c < 1.0 else saturated

            saturated = (params >= 1.0).astype(np.float32)
            if mean(params) <= area:
                continue
            if mean(saturated) > area:  # the stretch cannot reach the area: lower the saturated parameters
                projected[i] = _bisect(lambda t: mean(t * saturated) <= area, 1.0, 0.0) * saturated
            else:
                projected[i] = stretched(_bisect(lambda c: mean(stretched(c)) <= area, 0.0, 1.0))
        return projected

    def steps(self) -> Stages:
        params = self.params
        areas, iterations = len(params["areas"]), params["iterations"]
        hi, wi = self.geometry.shape_in
        p = np.ones((areas, hi, wi), np.float32)
        momentum: np.ndarray | None = None
        weight = AREA_WEIGHT
        rows_per_iteration = areas * self.points_per_area * self.rows_per_point
        last_p = p
        for t in range(iterations):
            flipped = params["jitter"] and t % 2 == 0
            codes, directions = self._rows(p, flipped, weight)
            step: StepReducer = yield self._stage(codes, self.points_per_area)
            per_area = self.points_per_area * self.rows_per_point
            score = step.output(SCORE_OUTPUT).astype(np.float64).reshape(areas, self.points_per_area, self.rows_per_point)
            grad = step.output(PARAM_GRAD_OUTPUT).reshape(areas, per_area, hi, wi)[:, : self.rows_per_point].sum(axis=1)
            if self.pairs:
                signs = np.array([g[1] for g in self.games])
                reward = (score * signs).sum(axis=2)                               # [A, 1 + 2n]
                difference = reward[:, 1 : 1 + self.pairs] - reward[:, 1 + self.pairs :]
                grad = grad + np.einsum("an,anhw->ahw", difference, directions) / (2 * params["gradient_sigma"] * self.pairs)
            descent = -grad.astype(np.float32)
            momentum = descent if momentum is None else MOMENTUM * momentum + (1 - MOMENTUM) * descent
            last_p = p
            p = np.clip(p - LEARNING_RATE * momentum, 0.0, 1.0).astype(np.float32)
            weight *= AREA_WEIGHT_GROWTH
        if params["area_projection"]:
            last_p = self._project(last_p)
        # The returned masks and their scores on the input as it is (unflipped): one row per area and game.
        final: StepReducer = yield self._stage(self._rows(last_p, False, 0.0, pairs=False)[0], 1)
        scores = final.output(SCORE_OUTPUT).astype(np.float64).reshape(areas, self.rows_per_point)
        masks = final.masks()
        figures: dict[str, float] = {"evaluations_per_iteration": float(rows_per_iteration),
                                     "gradient_exact": 1.0 if self.exact else 0.0}
        for i, area in enumerate(params["areas"]):
            figures[f"area_{i}"] = area
            figures[f"achieved_area_{i}"] = float(masks[i].mean())
            figures[f"score_{i}"] = float(scores[i, 0])
            if len(self.games) == 2:
                figures[f"deleted_score_{i}"] = float(scores[i, 1])
        return Result(self._saliency(masks), figures, {"masks": masks.astype(np.float32)})
