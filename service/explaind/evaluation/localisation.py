"""What the localisation metrics share: the attribution and the region flattened, Quantus's `abs`
option, and the share of the region among the k highest-ranked pixels with ties averaged.

Ties: Quantus orders pixels with numpy's default (unstable) argsort, so when equal values straddle
the k-th place its answer depends on the sort's implementation. explaind counts the tied pixels at
the boundary by expectation instead: of the t pixels tied at the k-th value, the `needed` places left
after the strictly higher ones go to region pixels in proportion (needed * tied-in-region / t), the
mean over every way of breaking the tie. Without a tie at the boundary both answers are the same.
"""

from __future__ import annotations

import numpy as np

from .base import MetricContext


def flat(ctx: MetricContext, absolute: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The attribution (|a| when `absolute`) and the region, flattened row-major."""
    a = np.asarray(ctx.attribution, np.float64).reshape(-1)
    return (np.abs(a) if absolute else a), np.asarray(ctx.region, bool).reshape(-1)


def top_k_in_region(a: np.ndarray, region: np.ndarray, k: int) -> float:
    """How many of the k highest-valued positions lie in the region (expected over ties at the k-th
    value, so possibly fractional); 0 <= k <= len(a)."""
    if k <= 0:
        return 0.0
    kth = np.sort(a)[::-1][k - 1]
    above = a > kth
    tied = a == kth
    needed = k - int(above.sum())
    return float((above & region).sum()) + needed * float((tied & region).sum()) / float(tied.sum())


__all__ = ["flat", "top_k_in_region"]
