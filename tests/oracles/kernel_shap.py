"""Kernel SHAP all at once, as shap's ``KernelExplainer`` computes it: every coalition with its kernel
weight, the coalition inputs and values over the background, and one constrained weighted least
squares solve.

explaind streams the same computation (explaind.methods.kernel_shap_core: CoalitionStream,
StreamingKernelShap); the tests check the streamed results against these, and these against shap.
"""

from __future__ import annotations

import math

import numpy as np

from explaind.methods.kernel_shap_core import CoalitionStream, KernelShapAccumulator, L1Reg, Link


def shapley_kernel_weight(m: int, size: int) -> float:
    """Shapley kernel pi(M, s) = (M - 1) / (C(M, s) s (M - s)) for 0 < s < M (Lundberg & Lee 2017,
    Theorem 2). The empty and full coalitions have infinite weight and are handled by the constraint."""
    if not 0 < size < m:
        raise ValueError(f"kernel weight is defined for 0 < size < M, got size={size}, M={m}")
    return (m - 1) / (math.comb(m, size) * size * (m - size))


def sample_coalitions(m: int, nsamples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coalitions and kernel weights as in shap ``KernelExplainer.explain``.

    Returns masks (bool [S, M]) and weights ([S], summing to 1). nsamples is capped at 2^M - 2 for
    M <= 30; when 2^M - 2 <= nsamples every non-empty proper coalition is enumerated once with weight
    pi(M, |z|) normalised to sum 1. Otherwise subset sizes s = 1, 2, ... (each paired with M - s,
    the middle size unpaired when M is even) are enumerated completely while the remaining budget
    times the remaining share of the size's kernel mass covers all of its subsets; the remaining
    sizes are sampled (size drawn by kernel mass, a random subset, then its complement), repeated
    draws add 1 to the existing row's weight, and the sampled part is rescaled to the kernel mass
    of the sizes not enumerated. Order of rows: shap's (each subset followed by its complement).
    All rows at once, from a :class:`CoalitionStream` (which draws the same rows lazily, chunk by chunk)
    read to the end; the padding rows after ``real_rows`` are left out.
    """
    stream = CoalitionStream(m, nsamples, rng)
    if stream.total == 0:
        return np.zeros((0, m), dtype=bool), np.zeros(0)
    masks = np.concatenate(list(stream.chunks(4096)))[: stream.real_rows]
    return masks, stream.weights(np.arange(len(masks)))


def coalition_inputs(x: np.ndarray, background: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Model inputs for the coalitions: row s * B + b is where(masks[s], x, background[b]) ([S*B, M])."""
    x = np.asarray(x)
    background = np.asarray(background)
    masks = np.asarray(masks, dtype=bool)
    if x.ndim != 1 or background.ndim != 2 or masks.ndim != 2:
        raise ValueError("expected x [M], background [B, M], masks [S, M]")
    if not (x.shape[0] == background.shape[1] == masks.shape[1]):
        raise ValueError("x, background and masks disagree on M")
    out = np.where(masks[:, None, :], x[None, None, :], background[None, :, :])
    return out.reshape(-1, x.shape[0])


def coalition_values(model_outputs: np.ndarray, background_weights: np.ndarray) -> np.ndarray:
    """v(z_s) = sum_b w_b f(row s*B + b) / sum_b w_b: [S*B, K] (or [S*B]) -> [S, K] (or [S]).

    Weights are normalised as shap's ``DenseData`` does (uniform, or ``shap.kmeans`` cluster sizes).
    """
    y = np.asarray(model_outputs, dtype=np.float64)
    w = np.asarray(background_weights, dtype=np.float64)
    n_bg = w.shape[0]
    if y.shape[0] % n_bg:
        raise ValueError(f"{y.shape[0]} outputs are not a multiple of the {n_bg} background rows")
    w = w / w.sum()
    k = y.shape[1] if y.ndim == 2 else 1
    y3 = y.reshape(y.shape[0] // n_bg, n_bg, k)
    v = np.einsum("sbk,b->sk", y3, w)
    return v[:, 0] if y.ndim == 1 else v


def solve(
    masks: np.ndarray,
    weights: np.ndarray,
    values_per_coalition: np.ndarray,
    f_x: np.ndarray | float,
    base_value: np.ndarray | float,
    l1_reg: L1Reg | bool = None,
    link: Link = "identity",
) -> np.ndarray:
    """Kernel SHAP values phi [M] (or [M, K] when values are [S, K]) by constrained weighted least
    squares, as shap ``KernelExplainer.solve``: sum(phi) = g(f(x)) - g(base_value) exactly, with the
    link g applied to the coalition values, f(x) and the base value (all given in output space).
    ``l1_reg``: None (off), "num_features(k)", "aic", "bic" or a Lasso alpha, as in shap."""
    masks = np.asarray(masks)
    acc = KernelShapAccumulator(masks.shape[1], link=link, l1_reg=l1_reg)
    acc.add(masks, weights, values_per_coalition)
    return acc.solve(f_x, base_value)
