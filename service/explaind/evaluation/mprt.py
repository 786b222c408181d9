"""Model parameter randomisation test, MPRT (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim,
NeurIPS 2018, Sanity Checks for Saliency Maps, section 3.1; Quantus's MPRT): does the explanation
depend on what the model learned?

The model's parametrised layers (onnxgraph/randomise.py: Conv, Gemm, MatMul with an initializer,
normalisations..., in graph order) are re-drawn in copies of the ONNX graph, from the top layer
down, and the request's method explains the same input for the same target on each copy. With
`order: cascading` (the default, Adebayo's cascading randomisation, Quantus's layer_order
"top_down") step k re-draws the top k + 1 layers together; with `independent` step k re-draws only
the (k + 1)-th layer from the top. Each layer is drawn once, so both orders use the same new
weights. `layers` limits the steps to that many layers from the top (default: all).

Each step's map a_k is compared with the explanation's map a, both first divided by their largest
absolute value and, with `abs` (default true, Quantus's default), taken in absolute value:
- `spearman`: Spearman's rank correlation of the two maps (scipy.stats.spearmanr), for images and
  tabular models; 0 when either map is constant (see below);
- `ssim` (images): the structural similarity of the two [H, W] maps (skimage.metrics.
  structural_similarity, 7 x 7 uniform window, data_range the range of both maps together);
- `hog` (images): Adebayo's HOG similarity, the Pearson correlation of the maps' histograms of
  oriented gradients (skimage.feature.hog: 9 orientations, cells of a eighth of the shorter side
  (8 pixels at 64 x 64), blocks of 3 x 3 cells, L2-Hys); 1 - hog is the HOG distance.
Curves [steps], top layer first: `spearman`, `ssim`, `hog` (images), `constant` (1 where the
randomised model's map, or the judged one, is constant, else 0), and `node`, each step's deepest
re-drawn layer as its node's index in the graph. The value is the Spearman correlation at the last
step: with cascading, the fully randomised model (Quantus's return_last_correlation). Figure
`constant_steps`: how many steps had a constant map. Lower is better: an explanation that stays the
same on a random model does not explain the model.

A constant map (Grad-CAM's and guided Grad-CAM's are often all zero on a randomised model: the
ReLU of a weighted sum whose weights turned negative) has no ranks, and Spearman's coefficient
divides by its zero spread: scipy, and so Quantus, return NaN there (and Quantus's last-step value is
then NaN). explaind defines it, as adversarial_stability does: two equal maps correlate 1 (the map did
not change), a constant map and a different one 0 (a map that ranks nothing keeps none of the other's
ranking), so `value` and the curve stay defined and comparable across methods; the `constant` curve
and the `constant_steps` figure say where such a 0 or 1 comes from.

Re-drawing (onnxgraph/randomise.py): `init: uniform` (default) draws weights and biases of dense
and convolutional layers from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and resets normalisations (scale
1, bias 0, mean 0, variance 1): torch's default initialisation, which Quantus applies to a torch
model with reset_parameters, read off the ONNX operators (an ONNX file does not say how its model
was initialised); `init: normal` draws each tensor from a normal with its own mean and standard
deviation. Draws come from the metric's generator: the new weights from one stream, the method's own
draws (SmoothGrad's noise...) from another, so the weights do not depend on the method.

Differences from Quantus, on purpose: Quantus compares the maps flattened, so its SSIM there is a
one-dimensional one; explaind compares the [H, W] maps as Adebayo did (the reference test calls
Quantus's ssim on the 2-D maps). Quantus re-initialises every module with reset_parameters,
including ones the ONNX graph folds away; explaind re-draws the graph's initializers. Quantus also
scores the original model's re-explanation ("original"); explaind compares with the explanation
judged (the given attribution, if any) and spends no extra explanation on it. On a model exported
from torch, each torch module with parameters is one ONNX node, so the layers are Quantus's (its
order is the modules' registration order reversed, explaind's the graph's); the new weights follow
the same distributions, not the same numbers (Quantus seeds torch, explaind its own generator).

Each step is one explanation by the request's method on a randomised copy served for that step
alone (its sessions closed when it ends): planned rows = steps x (the method's rows + 1, the copy's
own prediction).
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator

import numpy as np

from ..methods.base import ModelView
from ..methods.params import ANY_KIND, Bool, Choice, Int
from ..onnxgraph.randomise import NORMAL, UNIFORM, parametrised_layers, randomisation_steps, redraw, with_parameters
from .base import RANDOMISATION, Metric, MetricContext, MetricSteps, MetricValue

CASCADING, INDEPENDENT = "cascading", "independent"
SSIM_WINDOW = 7        # skimage's default window
HOG_ORIENTATIONS = 9   # skimage's defaults
HOG_BLOCK = 3


def layer_count(model: ModelView) -> int:
    return len(parametrised_layers(model.graph)) if model.graph is not None else 0


def prepared(attribution: np.ndarray, absolute: bool) -> np.ndarray:
    """Quantus's preprocessing: divided by the largest absolute value (unless all zero), then |.|."""
    a = np.asarray(attribution, np.float64)
    peak = np.abs(a).max() if a.size else 0.0
    if peak > 0:
        a = a / peak
    return np.abs(a) if absolute else a


def constant(a: np.ndarray) -> bool:
    """A map with a single value (no ranks; Spearman's coefficient is 0 / 0 there)."""
    return bool(a.size == 0 or np.all(a == a.reshape(-1)[0]))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of the flattened maps; with a constant map (scipy, and so Quantus,
    give NaN there: see the module's docstring) 1 when both are equal, else 0."""
    if constant(a) or constant(b):
        return 1.0 if np.array_equal(a, b) else 0.0
    from scipy import stats  # lazy: scipy is not imported by the server until a request needs it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(a.reshape(-1), b.reshape(-1))[0])


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two [H, W] maps, the data range taken over both (Quantus's ssim); NaN on maps smaller
    than the window; 1 for two maps of one constant value (where the formula divides 0 by 0)."""
    if min(a.shape) < SSIM_WINDOW:
        return float("nan")
    data_range = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    if data_range == 0:
        return 1.0
    from skimage.metrics import structural_similarity  # lazy: skimage loads when MPRT runs
    return float(structural_similarity(a, b, win_size=SSIM_WINDOW, data_range=data_range))


def hog_features(a: np.ndarray) -> np.ndarray:
    cell = max(1, min(a.shape) // 8)
    from skimage.feature import hog  # lazy: skimage loads when MPRT runs
    return hog(a, orientations=HOG_ORIENTATIONS, pixels_per_cell=(cell, cell), cells_per_block=(HOG_BLOCK, HOG_BLOCK),
               block_norm="L2-Hys", feature_vector=True)


def hog_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the HOG features (NaN on maps too small for a block, or flat ones)."""
    if min(a.shape) < HOG_BLOCK:
        return float("nan")
    fa, fb = hog_features(a), hog_features(b)
    if fa.size < 2 or fa.std() == 0 or fb.std() == 0:
        return float("nan")
    return float(np.corrcoef(fa, fb)[0, 1])


def similarities(original: np.ndarray, randomised: np.ndarray, absolute: bool, image: bool) -> dict[str, float]:
    a, b = prepared(original, absolute), prepared(randomised, absolute)
    out = {"spearman": spearman(a, b), "constant": float(constant(a) or constant(b))}
    if image:
        out["ssim"] = ssim(a, b)
        out["hog"] = hog_similarity(a, b)
    return out


def randomised_graphs(graph: Any, params: dict[str, Any], weights_rng: np.random.Generator) -> Iterator[tuple[int, Any]]:
    """Each step's randomised copy of `graph` (an onnx.ModelProto), with the graph index of the step's
    deepest re-drawn layer. The new weights are drawn first (top layer first, so both orders share
    them); the copies are made one at a time, as the steps ask for them."""
    layers = parametrised_layers(graph)
    steps = randomisation_steps(layers, params["layers"], params["order"])
    # Each layer drawn once, top first (the deepest layer of each step): both orders share the draws.
    drawn = {step[-1]: redraw(graph, layers[step[-1]], params["init"], weights_rng) for step in steps}
    for step in steps:
        yield layers[step[-1]].node, with_parameters(graph, {name: v for i in step for name, v in drawn[i].items()})


class MPRT(Metric):
    name = "mprt"
    title = "Model parameter randomisation test"
    reference = "Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018, Sanity Checks for Saliency Maps"
    description = ("Rank correlation of the explanation with the method's explanation on the model with its layers "
                   "re-drawn from the top (lower is better).")
    category = RANDOMISATION
    kinds = ANY_KIND
    reexplains = True
    higher_is_better = False
    curves = ("spearman", "ssim", "hog", "constant", "node")
    figures = ("constant_steps",)
    params = (
        Choice("order", CASCADING, (CASCADING, INDEPENDENT),
               "cascading: the top k layers re-drawn together; independent: one layer at a time"),
        Int("layers", None, "how many parametrised layers to re-draw, from the top", 1,
            lambda lim: max(1, layer_count(lim.model)), shown="all"),
        Choice("init", UNIFORM, (UNIFORM, NORMAL),
               "uniform: U(+-1/sqrt(fan_in)), normalisations reset (torch's init); normal: each tensor's mean and std"),
        Bool("abs", True, "compare the maps' absolute values (Quantus's default)"),
    )

    def unavailable(self, model: ModelView) -> str:
        if model.graph is None:
            return "the model's graph is not available"
        if not layer_count(model):
            return "the model's graph has no parametrised layer (Conv, Gemm, MatMul... with initializers) to re-draw"
        return ""

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Any) -> dict[str, Any]:
        params["layers"] = params.get("layers", layer_count(model))  # the declaration bounds it by the count
        return params

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        return params["layers"] * (method_rows + 1)

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        weights_rng, method_rng = ctx.rng.spawn(2)
        image = ctx.model.kind == "image"
        curves: dict[str, list[float]] = {"spearman": [], "ssim": [], "hog": [], "constant": [], "node": []}
        for node, graph in randomised_graphs(ctx.model.graph, params, weights_rng):
            randomised = yield ctx.reexplain_on(graph, method_rng)
            for name, value in similarities(ctx.attribution, randomised, params["abs"], image).items():
                curves[name].append(value)
            curves["node"].append(node)
        result = {name: np.asarray(v, np.float64) for name, v in curves.items() if v}
        return MetricValue(float(result["spearman"][-1]), curves=result,
                           figures={"constant_steps": float(result["constant"].sum())})


__all__ = ["MPRT", "constant", "randomised_graphs", "prepared", "similarities", "ssim", "spearman", "hog_similarity"]
