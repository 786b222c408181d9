"""Exact interventional Shapley values by enumeration (Shapley 1953; Janzing et al. 2020): every
coalition S of the M features, v(S) = mean over the background rows r of f(x_S, r_~S), and
phi_i = sum over S not holding i of |S|! (M - |S| - 1)! / M! (v(S + i) - v(S)). 2^M coalitions times
the background rows through `predict`: for M up to about 14."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np


def interventional_shapley(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, background: np.ndarray,
                           chunk_rows: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
    """(phi [M, K], v(empty set) [K]) for predict: [R, M] -> [R, K] (or [R], then K = 1)."""
    x = np.asarray(x)
    background = np.asarray(background)
    m = x.shape[0]
    if m > 16:
        raise ValueError(f"enumeration of 2^{m} coalitions is too many")
    codes = np.arange(1 << m)
    masks = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)  # coalition c holds feature i when bit i is set
    values = []
    per = max(1, chunk_rows // len(background))
    for start in range(0, len(masks), per):
        block = masks[start:start + per]
        rows = np.where(block[:, None, :], x, background[None]).reshape(-1, m).astype(x.dtype)
        out = np.asarray(predict(rows), np.float64).reshape(len(block), len(background), -1)
        values.append(out.mean(axis=1))
    v = np.concatenate(values)  # [2^M, K]
    sizes = masks.sum(axis=1)
    weight = np.array([math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) for s in range(m)])
    phi = np.zeros((m, v.shape[1]))
    for i in range(m):
        without = codes[~masks[:, i]]
        phi[i] = (weight[sizes[without]][:, None] * (v[without | (1 << i)] - v[without])).sum(axis=0)
    return phi, v[0]
