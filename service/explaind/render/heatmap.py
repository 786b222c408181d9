"""Turning an attribution map into a PNG a person can read.

The pipeline is: reduce channels -> apply polarity -> clip at percentiles and scale -> resize to
the image -> colour-map -> blend over the image -> encode PNG. Normalisation happens at the map's
own resolution (its statistics are those of the attribution, not of interpolated pixels); the
resize comes after it, on values already in [0, 1] (or [-1, 1]), and before colouring, so that
interpolation happens between values and not between unrelated colours.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from explaind.errors import InvalidArgument
from explaind.render.colormaps import (
    COLORMAP_NAMES,
    DEFAULT_DIVERGING,
    DEFAULT_SEQUENTIAL,
    DIVERGING_COLORMAPS,
    apply_colormap,
)

POLARITIES: tuple[str, ...] = ("positive", "negative", "both", "absolute")
OVERLAYS: tuple[str, ...] = ("original", "grayscale", "heatmap_only")
CHANNEL_REDUCTIONS: tuple[str, ...] = ("sum_abs", "max_abs", "sum")


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


@dataclass(frozen=True)
class RenderOptions:
    """How a map is drawn; the defaults are those of METHODS.md."""

    colormap: str = ""  # "" = viridis, or coolwarm when polarity == "both"
    polarity: str = "positive"  # positive | negative | both | absolute
    overlay: str = "original"  # original | grayscale | heatmap_only
    clip_percentile: float = 99.9  # high clip percentile, in (0, 100]
    clip_percentile_low: float | None = None  # in [0, clip_percentile)
    alpha: float = 0.5  # heatmap opacity over the image, [0, 1]

    def validate(self) -> None:
        """Raise InvalidArgument naming the first bad field; NaN is never accepted."""
        if self.colormap != "" and self.colormap not in COLORMAP_NAMES:
            raise InvalidArgument(
                "render.colormap", "empty or one of " + ", ".join(COLORMAP_NAMES), self.colormap
            )
        if self.polarity not in POLARITIES:
            raise InvalidArgument(
                "render.polarity", "one of " + ", ".join(POLARITIES), self.polarity
            )
        if self.overlay not in OVERLAYS:
            raise InvalidArgument("render.overlay", "one of " + ", ".join(OVERLAYS), self.overlay)
        high = self.clip_percentile
        if not (_is_real(high) and math.isfinite(high) and 0.0 < high <= 100.0):
            raise InvalidArgument("render.clip_percentile", "a number in (0, 100]", high)
        low = self.clip_percentile_low
        if low is not None and not (_is_real(low) and math.isfinite(low) and 0.0 <= low < high):
            raise InvalidArgument(
                "render.clip_percentile_low", f"unset or a number in [0, {high})", low
            )
        if not (_is_real(self.alpha) and math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise InvalidArgument("render.alpha", "a number in [0, 1]", self.alpha)

    def resolved_colormap(self) -> str:
        """The colormap actually used: an empty name picks the default for the polarity."""
        if self.colormap:
            return self.colormap
        return DEFAULT_DIVERGING if self.polarity == "both" else DEFAULT_SEQUENTIAL


def _as_finite_float(attribution: NDArray[np.generic]) -> NDArray[np.float64]:
    a = np.asarray(attribution)
    if a.dtype.kind not in "biuf":
        raise InvalidArgument("attribution", "a real-valued array", a.dtype)
    a = a.astype(np.float64, copy=False)
    if a.size == 0:
        raise InvalidArgument("attribution", "a non-empty map", a.shape)
    if not np.isfinite(a).all():
        raise InvalidArgument(
            "attribution", "finite values", f"{int(np.size(a) - np.isfinite(a).sum())} non-finite"
        )
    return a


def reduce_channels(attribution: NDArray[np.generic], how: str = "sum_abs") -> NDArray[np.float64]:
    """[C, H, W] -> [H, W]; a [H, W] map passes through (as float64).

    "sum_abs" and "max_abs" measure how much a pixel matters regardless of sign, the usual way to
    read per-channel gradients; "sum" keeps the sign, for renders that show both polarities.
    """
    if how not in CHANNEL_REDUCTIONS:
        raise InvalidArgument(
            "render.channel_reduction", "one of " + ", ".join(CHANNEL_REDUCTIONS), how
        )
    a = _as_finite_float(attribution)
    if a.ndim == 2:
        return a
    if a.ndim != 3:
        raise InvalidArgument("attribution", "shape [H, W] or [C, H, W]", a.shape)
    if how == "sum_abs":
        return np.abs(a).sum(axis=0)
    if how == "max_abs":
        return np.abs(a).max(axis=0)
    return a.sum(axis=0)


def _scale_magnitude(
    m: NDArray[np.float64], high_pct: float, low_pct: float | None
) -> NDArray[np.float64]:
    """Scale a non-negative map to [0, 1] between its low and high percentiles.

    Percentiles are taken over the strictly positive values only: the zeros that the polarity cut
    (or a sparse method) leaves behind would otherwise dominate the statistics, so the same
    evidence would be drawn differently depending on how much of the map had the other sign.
    """
    evidence = m[m > 0.0]
    if evidence.size == 0:
        return np.zeros_like(m)
    high = float(np.percentile(evidence, high_pct))
    low = 0.0 if low_pct is None else float(np.percentile(evidence, low_pct))
    if high <= low:
        # Constant evidence between the percentiles: what reaches the top is drawn at full strength.
        return (m >= high).astype(np.float64)
    return np.clip((m - low) / (high - low), 0.0, 1.0)


def normalise(attribution: NDArray[np.generic], options: RenderOptions) -> NDArray[np.float64]:
    """[H, W] attribution -> [H, W] float64 ready for a colormap.

    positive / negative / absolute give [0, 1]: the magnitude of positive evidence, of negative
    evidence, or of either. "both" gives [-1, 1] with the sign kept, scaled by the magnitude's
    percentile so that both signs share one scale. The high percentile clips outliers (a single
    huge pixel would otherwise flatten everything else to black); values below the optional low
    percentile become 0 (for "both", magnitudes below it). A map with no evidence gives zeros.
    """
    options.validate()
    a = _as_finite_float(attribution)
    if a.ndim != 2:
        raise InvalidArgument("attribution", "shape [H, W]", a.shape)
    if options.polarity == "positive":
        magnitude = np.maximum(a, 0.0)
    elif options.polarity == "negative":
        magnitude = np.maximum(-a, 0.0)
    else:
        magnitude = np.abs(a)
    scaled = _scale_magnitude(magnitude, options.clip_percentile, options.clip_percentile_low)
    if options.polarity == "both":
        return np.sign(a) * scaled
    return scaled


def _to_colormap_input(
    values: NDArray[np.float64], polarity: str, colormap: str
) -> NDArray[np.float64]:
    """Adapt normalised values to the colormap's domain.

    A sequential map shown with "both" puts zero at its middle colour; a diverging map shown with
    one polarity uses its red half for positive (and absolute) evidence and its blue half for
    negative evidence, so the colour keeps meaning the sign.
    """
    diverging = colormap in DIVERGING_COLORMAPS
    if polarity == "both":
        return values if diverging else (values + 1.0) * 0.5
    if diverging and polarity == "negative":
        return -values
    return values


def _check_image(image: NDArray[np.generic]) -> NDArray[np.uint8]:
    img = np.asarray(image)
    ok_shape = img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)
    if img.dtype != np.uint8 or not ok_shape or img.shape[0] == 0 or img.shape[1] == 0:
        raise InvalidArgument(
            "image", "a uint8 array of shape [H, W, 3] or [H, W]", f"{img.dtype} {img.shape}"
        )
    return img


def _check_size(size: object) -> tuple[int, int]:
    ok = (
        isinstance(size, tuple)
        and len(size) == 2
        and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size
        )
    )
    if not ok:
        raise InvalidArgument("size", "a (height, width) pair of positive integers", size)
    return int(size[0]), int(size[1])  # type: ignore[index]


def _grey_rgb(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Luma (ITU-R 601 weights, as PIL's "L") replicated to three channels."""
    if image.ndim == 2:
        grey = image
    else:
        rgb = image.astype(np.uint32)
        luma = (rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000
        grey = luma.astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _resize_map(values: NDArray[np.float64], shape: tuple[int, int]) -> NDArray[np.float64]:
    """Bilinear resize; bilinear weights are convex, so the value range is preserved."""
    if values.shape == shape:
        return values
    from skimage.transform import resize  # lazy: skimage (and scipy) load at the first resize
    return resize(values, shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True)


def render_rgb(
    attribution: NDArray[np.generic],
    options: RenderOptions,
    image: NDArray[np.uint8] | None = None,
    size: tuple[int, int] | None = None,
    *,
    channel_reduction: str = "sum_abs",
) -> NDArray[np.uint8]:
    """Everything :func:`render_heatmap` does except the PNG encoding: uint8 RGB [H, W, 3].

    Output size: the image's when there is one, else ``size`` (height, width), else the map's.
    """
    options.validate()
    a = np.asarray(attribution)
    if a.ndim == 3:
        a = reduce_channels(a, channel_reduction)
    values = normalise(a, options)

    img = None if image is None else _check_image(image)
    if img is not None:
        target = (img.shape[0], img.shape[1])
        if size is not None and _check_size(size) != target:
            raise InvalidArgument("size", f"unset or the image's size {target}", size)
    elif size is not None:
        target = _check_size(size)
    else:
        target = (values.shape[0], values.shape[1])

    colormap = options.resolved_colormap()
    values = _resize_map(values, target)
    heat = apply_colormap(_to_colormap_input(values, options.polarity, colormap), colormap)
    if img is None or options.overlay == "heatmap_only":
        return heat

    base = _grey_rgb(img) if options.overlay == "grayscale" or img.ndim == 2 else img
    alpha = float(options.alpha)
    blended = (1.0 - alpha) * base.astype(np.float64) + alpha * heat.astype(np.float64)
    return np.floor(blended + 0.5).astype(np.uint8)


def encode_png(rgb: NDArray[np.uint8]) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (RGB, 8 bits per channel)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def render_heatmap(
    attribution: NDArray[np.generic],
    options: RenderOptions,
    image: NDArray[np.uint8] | None = None,
    size: tuple[int, int] | None = None,
    *,
    channel_reduction: str = "sum_abs",
) -> bytes:
    """Render an attribution map as a PNG, over ``image`` when one is given.

    ``attribution`` is [H, W] or [C, H, W] (reduced with ``channel_reduction``, default sum_abs);
    ``image`` is uint8 [h, w, 3] or [h, w]; ``size`` is (height, width) when there is no image.
    """
    rgb = render_rgb(attribution, options, image, size, channel_reduction=channel_reduction)
    return encode_png(rgb)
