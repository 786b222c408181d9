"""Linear interpolation with half-pixel centres and clamped edges (torch's bilinear,
align_corners=False), as a matrix: upsampling an [h, w] map to [H, W] is A_H @ map @ A_W^T.

Used by the RISE and Score-CAM prefixes (in the graph, as MatMuls: no Resize operator, so the
operator is the same at every opset and on every execution provider) and by the layer methods'
upsampling on the host.
"""

from __future__ import annotations

import math

import numpy as np


def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] linear interpolation with half-pixel centres and clamped edges."""
    matrix = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        source = min(max((i + 0.5) * scale - 0.5, 0.0), in_size - 1)
        low = int(math.floor(source))
        high = min(low + 1, in_size - 1)
        weight = source - low
        matrix[i, low] += 1.0 - weight
        matrix[i, high] += weight
    return matrix


def aligned_interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] linear interpolation with the corners aligned (torch's align_corners=True,
    `nn.UpsamplingBilinear2d`): output i samples input position i (in - 1) / (out - 1)."""
    matrix = np.zeros((out_size, in_size), np.float64)
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    for i in range(out_size):
        source = i * scale
        low = min(int(math.floor(source)), in_size - 1)
        high = min(low + 1, in_size - 1)
        weight = source - low
        matrix[i, low] += 1.0 - weight
        matrix[i, high] += weight
    return matrix


def upsample(maps: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """[h, w] -> [H, W]: bilinear (torch align_corners=False) or nearest (torch's: floor(i * in / out))."""
    h, w = maps.shape
    if mode == "nearest":
        rows = np.minimum((np.arange(size[0]) * h) // size[0], h - 1)
        cols = np.minimum((np.arange(size[1]) * w) // size[1], w - 1)
        return maps[rows][:, cols]
    return interpolation_matrix(h, size[0]) @ maps @ interpolation_matrix(w, size[1]).T
