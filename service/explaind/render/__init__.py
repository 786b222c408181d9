"""Rendering attribution maps as PNG heat maps: colormaps, normalisation, overlay, encoding."""

from explaind.render.colormaps import (
    COLORMAP_NAMES,
    DIVERGING_COLORMAPS,
    apply_colormap,
    colormap_anchors,
    is_diverging,
)
from explaind.render.heatmap import (
    CHANNEL_REDUCTIONS,
    OVERLAYS,
    POLARITIES,
    RenderOptions,
    encode_png,
    normalise,
    reduce_channels,
    render_heatmap,
    render_rgb,
)

__all__ = [
    "CHANNEL_REDUCTIONS",
    "COLORMAP_NAMES",
    "DIVERGING_COLORMAPS",
    "OVERLAYS",
    "POLARITIES",
    "RenderOptions",
    "apply_colormap",
    "colormap_anchors",
    "encode_png",
    "is_diverging",
    "normalise",
    "reduce_channels",
    "render_heatmap",
    "render_rgb",
]
