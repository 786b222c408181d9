"""XRAI (Kapishnikov et al. 2019, "XRAI: Better Attributions Through Regions"; Vertex AI's region
method; the PAIR `saliency` package's `XRAI` semantics and defaults).

1. Base attribution: Integrated Gradients from each baseline (default two constant images, min(x) and
   max(x): black and white), the straight path at alpha = linspace(0, 1, steps) with weight 1/steps
   (saliency's IG), averaged over the baselines, then the maximum over channels.
2. Segments: felzenszwalb (scikit-image) of the image min-max scaled to [-1, 1] and resized (bicubic,
   anti-aliased) to segmentation_size x segmentation_size, at scales [50, 100, 150, 250, 500, 1200],
   sigma 0.8, min_size 150; each segmentation resized back (nearest), every label a mask, each mask
   dilated by a disk of radius 5.
3. Regions, greedily ("full"): while the covered fraction is at most area_threshold, drop the masks
   adding fewer than min_pixel_diff new pixels, add the mask whose new pixels have the highest mean
   attribution (the first such mask on ties) and give those pixels that gain. Pixels no mask covered
   get their own mean. "fast": masks ranked once by their whole mean, added in that order.
The attribution is each pixel's region gain; `segments` ranks the regions (1 = the highest gain, the
uncovered rest last); `ig_attribution` is the averaged IG map [C, H, W] (or [H, W, C]).
Gradients come from the model's own graph (one row per path point). Score: the logit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Settings
from ..errors import InvalidArgument
from ..onnxgraph.variants import gradient as g
from .base import MethodContext, ModelView, Result, Stages
from .gradient_base import GradientMethod, gradient_stage
from .params import IMAGE, Choice, Float, Floats, Int

SCALES = [50.0, 100.0, 150.0, 250.0, 500.0, 1200.0]
MAX_MASKS = 1024  # segments in all scales: the greedy search is O(masks^2 x pixels)
MIN_SEGMENTATION_SIZE = 16


def to_hwc(x: np.ndarray, layout: str) -> np.ndarray:
    return np.transpose(x, (1, 2, 0)) if layout == "NCHW" else x


def segment_masks(image: np.ndarray, size: int, scales: list[float], sigma: float, min_size: int,
                  dilation_radius: int, max_masks: int | None = None) -> np.ndarray:
    """[M, H, W] bool: the felzenszwalb masks of an H x W x C image at every scale, dilated; refused
    (InvalidArgument on xrai.scales) beyond `max_masks` before any mask is made."""
    from skimage import segmentation  # lazy: scikit-image is imported only when a request needs it
    from skimage.morphology import dilation, disk
    from skimage.transform import resize
    shape = image.shape[:2]
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / (high - low) * 2.0 - 1.0 if high > low else np.zeros_like(image, np.float64)
    if size:
        scaled = resize(scaled, (size, size), order=3, mode="constant", preserve_range=True, anti_aliasing=True)
    segmentations = []
    for scale in scales:
        labels = segmentation.felzenszwalb(scaled, scale=scale, sigma=sigma, min_size=min_size)
        if size:
            labels = resize(labels, shape, order=0, preserve_range=True, mode="constant",
                            anti_aliasing=False).astype(int)
        segmentations.append(labels)
    count = sum(int(labels.max() - labels.min()) + 1 for labels in segmentations)
    if max_masks is not None and count > max_masks:
        raise InvalidArgument("xrai.scales", f"segmentations giving at most {max_masks} masks in all (larger scales "
                              "or min_segment_size)", f"{count} masks")
    masks = [labels == label for labels in segmentations for label in range(labels.min(), labels.max() + 1)]
    if dilation_radius:
        footprint = disk(dilation_radius)
        masks = [dilation(mask, footprint=footprint) for mask in masks]
    return np.array(masks, bool).reshape(len(masks), *shape)


def _density(selected: np.ndarray, attr: np.ndarray) -> float:
    return float(attr[selected].mean()) if selected.any() else -np.inf


def xrai_regions(attr: np.ndarray, masks: np.ndarray, area_threshold: float = 1.0, min_pixel_diff: int = 50,
                 algorithm: str = "full") -> tuple[np.ndarray, np.ndarray, int]:
    """(region gain per pixel, region rank per pixel (1 = highest gain), regions) of an [H, W] map."""
    regions: list[tuple[np.ndarray, float]] = []  # (new pixels, gain) in the order added
    covered = np.zeros(attr.shape, bool)
    gains = np.full(attr.shape, -np.inf)
    flat = masks.reshape(len(masks), -1)
    values = attr.reshape(-1).astype(np.float64)
    if algorithm == "fast":
        whole = [_density(mask, attr) for mask in masks]
        for index in sorted(range(len(masks)), key=lambda i: -whole[i]):
            new = masks[index] & ~covered
            if new.sum() < min_pixel_diff:
                continue
            gain = _density(new, attr)
            regions.append((new, gain))
            gains[new] = gain
            covered |= masks[index]
    else:
        # Each mask's count and attribution sum over the pixels not yet covered, updated as regions are
        # added (each pixel is subtracted once: masks x pixels in all, not per iteration).
        counts = flat.sum(axis=1).astype(np.int64)
        sums = np.concatenate([flat[i:i + 64].astype(np.float64) @ values for i in range(0, len(flat), 64)]) \
            if len(flat) else np.zeros(0)
        alive = np.ones(len(masks), bool)
        covered_flat = covered.reshape(-1)
        while covered_flat.mean() <= area_threshold:
            alive &= counts >= min_pixel_diff
            candidates = np.flatnonzero(alive)
            if not len(candidates):
                break
            densities = sums[candidates] / counts[candidates]
            # Candidates the running sums cannot tell apart are compared as saliency does (each one's
            # mean over its new pixels, the first of the highest), so the ranking is the same to the bit.
            top = float(densities.max())
            close = candidates[densities >= top - 1e-9 * max(abs(top), 1e-300)]
            exact = [float(values[flat[i] & ~covered_flat].mean()) for i in close]
            best = int(close[int(np.argmax(exact))])
            added = flat[best] & ~covered_flat
            gain = float(values[added].mean())
            regions.append((added.reshape(attr.shape), gain))
            gains.reshape(-1)[added] = gain
            covered_flat |= flat[best]
            alive[best] = False
            pixels = np.flatnonzero(added)
            touched = flat[:, pixels]
            counts -= touched.sum(axis=1)
            sums -= touched.astype(np.float64) @ values[pixels]
    uncovered = gains == -np.inf
    gains[uncovered] = _density(uncovered, attr)
    ranks = np.zeros(attr.shape, np.int64)
    ordered = [m for m, _ in sorted(regions, key=lambda r: -r[1])]
    if uncovered.any():
        ordered.append(uncovered)
    for rank, region in enumerate(ordered, start=1):
        ranks[region] = rank
    return gains, ranks, len(regions)


class Xrai(GradientMethod):
    name = "xrai"
    title = "XRAI"
    reference = "Kapishnikov et al. 2019, XRAI: Better Attributions Through Regions; PAIR saliency XRAI"
    description = "Integrated Gradients gathered into regions of multi-scale felzenszwalb segments, ranked greedily."
    kinds = IMAGE
    arrays = ("segments", "ig_attribution")
    figures = ("regions", "masks")
    params = (
        Int("steps", 100, "IG steps per baseline", 2, lambda lim: lim.settings.max_rows_per_request),
        Floats("baselines", None, "constant baselines in model input space", length=(1, 8), shown="[min(x), max(x)]"),
        Choice("algorithm", "full", ("full", "fast"), "full | fast"),
        Float("area_threshold", 1.0, "full: stop once this fraction of the image is covered", 0.0, 1.0),
        Int("min_pixel_diff", 50, "skip masks adding fewer new pixels", 1, 1 << 30),
        Int("segmentation_size", 224, "side the image is resized to for felzenszwalb (16 to 1024); 0: no resize",
            0, 1024),
        Floats("scales", SCALES, "felzenszwalb scales", 0.0, 1e6, exclusive_low=True, length=(1, 16)),
        Float("felzenszwalb_sigma", 0.8, "felzenszwalb's smoothing", 0.0, 100.0),
        Int("min_segment_size", 150, "felzenszwalb min_size", 1, 1 << 30),
        Int("dilation_radius", 5, "disk radius each mask is dilated by; 0: none", 0, 64),
    )

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        size = params["segmentation_size"]
        if 0 < size < MIN_SEGMENTATION_SIZE:
            raise InvalidArgument(f"{self.name}.segmentation_size", f"0 (no resize) or {MIN_SEGMENTATION_SIZE} to 1024",
                                  size)
        rows = params["steps"] * len(params.get("baselines", [0, 0]))
        if rows > settings.max_rows_per_request:
            raise InvalidArgument(f"{self.name}.steps", f"at most {settings.max_rows_per_request} gradient rows in all "
                                  "(steps x baselines)", rows)
        return params

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return params["steps"] * len(params.get("baselines", [0, 0]))

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        x = ctx.x.astype(np.float32)
        sig = ctx.model.signature
        # The segments first: a segmentation with too many masks is refused before any row is spent.
        masks = segment_masks(to_hwc(x, sig.layout), params["segmentation_size"], params["scales"],
                              params["felzenszwalb_sigma"], params["min_segment_size"], params["dilation_radius"],
                              MAX_MASKS)
        baselines = params.get("baselines") or [float(x.min()), float(x.max())]
        steps = params["steps"]
        alphas = np.linspace(0, 1, steps).astype(np.float32)
        weights = np.full(steps, 1.0 / steps)
        grads = yield [gradient_stage(ctx, path=g.PATH_LINE, weights=weights, codes={"alpha": alphas},
                                      constants={"reference": np.full_like(x, b)}) for b in baselines]
        ig = np.mean([(x.astype(np.float64) - b) * r.total for b, r in zip(baselines, grads)], axis=0)
        channel = sig.channel_axis - 1
        attr = ig.max(axis=channel)
        gains, ranks, regions = xrai_regions(attr, masks, params["area_threshold"], params["min_pixel_diff"],
                                             params["algorithm"])
        return Result(gains.astype(np.float32), {"regions": float(regions), "masks": float(len(masks))},
                      {"segments": ranks.astype(np.float32), "ig_attribution": ig.astype(np.float32)})
