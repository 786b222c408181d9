"""Infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar, NeurIPS 2019, On the (In)fidelity and
Sensitivity of Explanations; Quantus's Infidelity): the mean squared difference between the score's
drop under a perturbation I and the attribution's prediction of it, the dot product of the map and I:

    INFD = E_I[ (a . I - (f(x) - f(x - I)))^2 ]

The perturbations are Quantus's: square patches of `patch_size` pixels (features: runs of
`patch_size` consecutive features), in row-major order of the patches, replaced by the baseline one
after the other, the replacements accumulating, so perturbation k (k = 1..K, K patches) is
I_k = x - x_k with the first k patches replaced, and a . I_k = sum_p a_p sum_c (x - x_k)[c, p] (the
pixel's attribution times its change summed over the channels). The value is the mean over the K
perturbations; lower is better. One model evaluation per patch (a 64 x 64 image with patches of 4:
256). Patches at the right and bottom edges are smaller when the size does not divide the image
(Quantus then fails); Quantus's n_perturb_samples repeats this deterministic sequence and averages
identical numbers, so explaind has no such parameter.

Defaults (Quantus's): patch_size 4 for images, 1 for tabular models (Quantus has no tabular form);
baseline black (the input's minimum; white, mean, zero also); the attribution as given (Quantus's
normalise=False); the request's score (Quantus scores logits by default: ask for LOGIT to match).
Curves: `score_drops` and `attribution_sums` [K].

Yeh et al. also define infidelity over random perturbations (Gaussian noise, square removals at
random); Captum's infidelity takes such a perturbation function. Quantus's (and so explaind's) is
deterministic: the same input and map always give the same figure.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.base import ModelView
from ..methods.params import ANY_KIND, Choice, Int
from .base import FAITHFULNESS, Metric, MetricContext, MetricSteps, MetricValue
from .curves import curve_stage
from .perturbation import BASELINE_TEXT, BASELINES, BLACK, channels_pixels, cumulative_fill, model_input


def patch_of(model: ModelView, patch_size: int) -> tuple[np.ndarray, int]:
    """Each pixel's (feature's) patch, row-major over the patches, and the number of patches."""
    if model.kind != "image":
        features = int(np.prod(model.signature.example_shape))
        return np.arange(features, dtype=np.int64) // patch_size, -(-features // patch_size)
    height, width = model.signature.spatial_shape
    across = -(-width // patch_size)
    rows, cols = np.meshgrid(np.arange(height) // patch_size, np.arange(width) // patch_size, indexing="ij")
    return (rows * across + cols).reshape(-1).astype(np.int64), -(-height // patch_size) * across


def largest_patch(lim: Any) -> int:
    if lim.model.kind == "image":
        return int(max(lim.model.signature.spatial_shape))
    return int(np.prod(lim.model.signature.example_shape))


class Infidelity(Metric):
    name = "infidelity"
    title = "Infidelity"
    reference = ("Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, On the (In)fidelity and Sensitivity of "
                 "Explanations")
    description = "Mean squared gap between the score's drop under patch removals and the map's prediction of it."
    category = FAITHFULNESS
    kinds = ANY_KIND
    higher_is_better = False
    curves = ("score_drops", "attribution_sums")
    params = (
        Int("patch_size", lambda lim: 4 if lim.model.kind == "image" else 1,
            "side of the square patches removed one after the other (tabular: features per run)", 1, largest_patch,
            shown="4 (images), 1 (tabular)"),
        Choice("baseline", BLACK, BASELINES, f"what a removed pixel shows: {BASELINE_TEXT}"),
    )

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        return patch_of(model, params["patch_size"])[1]

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        patch, count = patch_of(ctx.model, params["patch_size"])
        cp = channels_pixels(ctx)
        fill = cumulative_fill(cp, patch, count, params["baseline"])
        removed = np.arange(1, count + 1, dtype=np.int64)
        reducer = yield curve_stage(ctx, patch, removed, ctx.x, model_input(ctx, fill))
        drops = ctx.target_score() - reducer.scores
        # a . I_k: the map times each pixel's change, summed over the pixels of the first k patches.
        per_patch = np.bincount(patch, weights=ctx.attribution.reshape(-1) * (cp - fill).sum(axis=0), minlength=count)
        sums = np.cumsum(per_patch)
        return MetricValue(float(np.mean((drops - sums) ** 2)),
                           curves={"score_drops": drops, "attribution_sums": sums})
