"""Colormaps as short tables of anchor colours, interpolated linearly.

Why tables and not matplotlib: the service must not pull a plotting stack into its runtime image,
and a handful of anchors sampled evenly from each well-known map reproduces it to within a few
levels per channel, which is invisible on a heat map. Anchors sit at evenly spaced positions from
0 to 1; between two anchors each channel is a straight line, and the result is rounded half up.

Sequential maps take values in [0, 1]. The diverging map ("coolwarm") takes values in [-1, 1]:
blue at -1, near-white at 0, red at +1.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

import numpy as np
from numpy.typing import NDArray

from explaind.errors import InvalidArgument


def _hex_table(*colours: str) -> NDArray[np.uint8]:
    """``"#rrggbb"`` strings -> read-only uint8 [K, 3] table."""
    table = np.array(
        [[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in colours], dtype=np.uint8
    )
    table.setflags(write=False)
    return table


# Nine evenly spaced samples (positions 0, 1/8, ..., 1) of each perceptually uniform map.
_VIRIDIS = _hex_table(
    "#440154", "#472d7b", "#3b528b", "#2c728e", "#21908c",
    "#27ad81", "#5dc863", "#aadc32", "#fde725",
)
_INFERNO = _hex_table(
    "#000004", "#210c4a", "#56106e", "#89226a", "#bb3754",
    "#e35932", "#f98c0a", "#f9c932", "#fcffa4",
)
_MAGMA = _hex_table(
    "#000004", "#1d1147", "#51127c", "#822681", "#b63679",
    "#e65164", "#fb8861", "#fec287", "#fcfdbf",
)
# Grey is exactly linear, so its two ends are all the table it needs.
_GRAY = _hex_table("#000000", "#ffffff")
# The classic jet: its breakpoints fall on multiples of 1/8, so nine anchors reproduce it exactly.
_JET = _hex_table(
    "#000080", "#0000ff", "#0080ff", "#00ffff", "#80ff80",
    "#ffff00", "#ff8000", "#ff0000", "#800000",
)
# Moreland's cool-warm diverging map at positions -1, -0.75, ..., +1.
_COOLWARM = _hex_table(
    "#3b4cc0", "#6282ea", "#8db0fe", "#b8d0f9", "#dddddd",
    "#f5c4ad", "#f49a7b", "#de604d", "#b40426",
)

_TABLES: Mapping[str, NDArray[np.uint8]] = MappingProxyType(
    {
        "viridis": _VIRIDIS,
        "inferno": _INFERNO,
        "magma": _MAGMA,
        "gray": _GRAY,
        "jet": _JET,
        "coolwarm": _COOLWARM,
    }
)

COLORMAP_NAMES: tuple[str, ...] = tuple(_TABLES)
"""Every accepted colormap name, in a stable order."""

DIVERGING_COLORMAPS: frozenset[str] = frozenset({"coolwarm"})
"""Colormaps whose input range is [-1, 1] instead of [0, 1]."""

DEFAULT_SEQUENTIAL = "viridis"
DEFAULT_DIVERGING = "coolwarm"


def _check_name(name: str) -> NDArray[np.uint8]:
    table = _TABLES.get(name) if isinstance(name, str) else None
    if table is None:
        raise InvalidArgument("render.colormap", "one of " + ", ".join(COLORMAP_NAMES), name)
    return table


def is_diverging(name: str) -> bool:
    """True when ``name`` takes signed input in [-1, 1]; raises for an unknown name."""
    _check_name(name)
    return name in DIVERGING_COLORMAPS


def colormap_anchors(name: str) -> NDArray[np.uint8]:
    """A copy of the anchor table [K, 3] of ``name`` (first row = lowest value)."""
    return _check_name(name).copy()


def apply_colormap(values: NDArray[np.floating], name: str) -> NDArray[np.uint8]:
    """Map a [H, W] float array to uint8 RGB [H, W, 3] through the named colormap.

    Inputs are in [0, 1] for sequential maps and [-1, 1] for diverging ones; anything outside is
    clipped and NaN counts as the lowest value, so a stray non-finite pixel can never crash a
    render or produce an out-of-range colour.
    """
    table = _check_name(name)
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf)
    if name in DIVERGING_COLORMAPS:
        v = (v + 1.0) * 0.5
    v = np.clip(v, 0.0, 1.0)
    positions = np.linspace(0.0, 1.0, table.shape[0])
    out = np.empty(v.shape + (3,), dtype=np.uint8)
    for channel in range(3):
        level = np.interp(v, positions, table[:, channel].astype(np.float64))
        out[..., channel] = np.floor(level + 0.5).astype(np.uint8)
    return out
