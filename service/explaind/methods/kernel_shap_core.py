"""Numerical core of Kernel SHAP (Lundberg & Lee, NeurIPS 2017), with the semantics of shap's
``KernelExplainer`` (shap 0.51, ``shap/explainers/_kernel.py``), independent of the engine.

Players are the M features; a coalition z (a boolean mask over the features) keeps x on z and takes
the other features from the background. Its value is

    v(z) = sum_b w_b f(x_z, b_{not z}) / sum_b w_b                    (``coalition_values``)

over background rows b with weights w_b (uniform, or a k-means summary's cluster weights). With the
Shapley kernel pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|)) the Shapley values solve

    min_phi  sum_z pi(z) (g(v(z)) - g(base) - z . phi)^2   s.t.  sum_i phi_i = g(f(x)) - g(base)

with g the link (identity or logit) and base = E_b[f(b)]. As shap does, the constraint is
eliminated through the last (selected) feature j: with X = z_{-j} - z_j and
y = g(v(z)) - g(base) - z_j (g(f(x)) - g(base)), phi_{-j} = (X^T W X)^{-1} X^T W y and
phi_j = g(f(x)) - g(base) - sum(phi_{-j}); efficiency therefore holds by construction.

Coalitions come from ``sample_coalitions`` (shap's scheme: exact enumeration when 2^M - 2 <= nsamples,
otherwise complete subset sizes first, then paired random samples). ``KernelShapAccumulator`` keeps
only the weighted Gram statistics, so coalition values can arrive in chunks of any size.

Deviations from shap (documented on purpose):
- Randomness comes from a ``numpy.random.Generator`` instead of the global ``np.random`` state, so
  sampled coalitions are statistically, not bitwise, the same as shap's.
- Features that never differ from the background are not dropped beforehand (shap removes them and
  gives them phi = 0); with exact enumeration they get phi = 0 anyway (null players).
- shap rounds |phi_i| < 1e-10 to 0 after solving; that would break exact efficiency, so it is not done.
- The unconstrained-rank fallback (singular X^T W X) uses least squares on the normal equations
  (minimum-norm solution) instead of shap's least squares on the weighted rows; both coincide when
  the system is regular.
- ``l1_reg`` is explicit: None/False (off), "num_features(k)", "aic", "bic", or a float (Lasso alpha);
  shap's deprecated "auto" is not offered.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Callable, Literal

import numpy as np

Link = Literal["identity", "logit"]
L1Reg = str | float | None

__all__ = [
    "KernelShapAccumulator",
    "coalition_inputs",
    "coalition_values",
    "default_nsamples",
    "link_function",
    "sample_coalitions",
    "shapley_kernel_weight",
    "solve",
]

_NUM_FEATURES = re.compile(r"^num_features\((\d+)\)$")


def shapley_kernel_weight(m: int, size: int) -> float:
    """Shapley kernel pi(M, s) = (M - 1) / (C(M, s) s (M - s)) for 0 < s < M (Lundberg & Lee 2017,
    Theorem 2). The empty and full coalitions have infinite weight and are handled by the constraint."""
    if not 0 < size < m:
        raise ValueError(f"kernel weight is defined for 0 < size < M, got size={size}, M={m}")
    return (m - 1) / (math.comb(m, size) * size * (m - size))


def default_nsamples(m: int) -> int:
    """shap's ``nsamples="auto"``: 2 M + 2048, capped at 2^M - 2 (all non-empty proper coalitions)."""
    n = 2 * m + 2**11
    return min(n, 2**m - 2) if m <= 30 else n


def link_function(link: Link) -> Callable[[np.ndarray | float], np.ndarray]:
    """The link g: identity, or logit g(p) = log(p / (1 - p)) (shap's ``convert_to_link``)."""
    if link == "identity":
        return lambda a: np.asarray(a, dtype=np.float64)
    if link == "logit":
        return lambda a: np.log(np.asarray(a, dtype=np.float64) / (1.0 - np.asarray(a, dtype=np.float64)))
    raise ValueError(f"unknown link {link!r}; expected 'identity' or 'logit'")


def _apply_link(link: Link, a: np.ndarray | float) -> np.ndarray:
    return link_function(link)(a)


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
    """
    if m < 1:
        raise ValueError("need at least one feature")
    if nsamples < 0:
        raise ValueError("nsamples must be >= 0")
    if m == 1:  # no proper non-empty coalition; phi = f(x) - base directly
        return np.zeros((0, 1), dtype=bool), np.zeros(0)
    if m <= 30:
        nsamples = min(nsamples, 2**m - 2)

    num_subset_sizes = int(np.ceil((m - 1) / 2.0))
    num_paired = int(np.floor((m - 1) / 2.0))
    weight_vector = np.array([(m - 1.0) / (i * (m - i)) for i in range(1, num_subset_sizes + 1)])
    weight_vector[:num_paired] *= 2
    weight_vector /= np.sum(weight_vector)

    masks: list[np.ndarray] = []
    weights: list[float] = []
    num_full = 0
    samples_left = nsamples
    remaining = weight_vector.copy()
    for size in range(1, num_subset_sizes + 1):
        nsubsets = math.comb(m, size) * (2 if size <= num_paired else 1)
        if samples_left * remaining[size - 1] / nsubsets < 1.0 - 1e-8:
            break
        num_full += 1
        samples_left -= nsubsets
        if remaining[size - 1] < 1.0:
            remaining /= 1 - remaining[size - 1]
        w = weight_vector[size - 1] / math.comb(m, size)
        if size <= num_paired:
            w /= 2.0
        for inds in itertools.combinations(range(m), size):
            mask = np.zeros(m, dtype=bool)
            mask[list(inds)] = True
            masks.append(mask)
            weights.append(w)
            if size <= num_paired:
                masks.append(~mask)
                weights.append(w)

    n_fixed = len(masks)
    samples_left = nsamples - n_fixed
    if num_full != num_subset_sizes and samples_left > 0:
        probs = weight_vector.copy()
        probs[:num_paired] /= 2  # two rows per draw for paired sizes
        probs = probs[num_full:]
        probs /= np.sum(probs)
        draws = rng.choice(len(probs), 4 * samples_left, p=probs)
        used: dict[bytes, int] = {}
        sampled_w: list[float] = []
        pos = 0
        while samples_left > 0 and pos < len(draws):
            size = int(draws[pos]) + num_full + 1
            pos += 1
            mask = np.zeros(m, dtype=bool)
            mask[rng.permutation(m)[:size]] = True
            key = mask.tobytes()
            new = key not in used
            if new:
                used[key] = len(sampled_w)
                masks.append(mask)
                sampled_w.append(1.0)
                samples_left -= 1
            else:
                sampled_w[used[key]] += 1.0
            if samples_left > 0 and size <= num_paired:
                if new:
                    masks.append(~mask)
                    sampled_w.append(1.0)
                    samples_left -= 1
                else:  # the complement is the row after the original
                    sampled_w[used[key] + 1] += 1.0
        if sampled_w:
            sw = np.asarray(sampled_w)
            sw *= np.sum(weight_vector[num_full:]) / sw.sum()
            weights.extend(sw.tolist())

    if not masks:
        return np.zeros((0, m), dtype=bool), np.zeros(0)
    return np.stack(masks), np.asarray(weights, dtype=np.float64)


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


def _parse_l1(l1_reg: L1Reg | bool) -> L1Reg:
    if l1_reg is None or l1_reg is False:
        return None
    if isinstance(l1_reg, (int, float)) and not isinstance(l1_reg, bool) and l1_reg == 0:
        return None
    if isinstance(l1_reg, str):
        if l1_reg in ("aic", "bic") or _NUM_FEATURES.match(l1_reg):
            return l1_reg
        raise ValueError(f"unknown l1_reg {l1_reg!r}; expected 'num_features(k)', 'aic', 'bic', a float or None")
    if isinstance(l1_reg, (int, float)) and not isinstance(l1_reg, bool) and l1_reg > 0:
        return float(l1_reg)
    raise ValueError(f"unknown l1_reg {l1_reg!r}")


def _l1_select(masks: np.ndarray, weights: np.ndarray, y_adj: np.ndarray, diff: float, l1_reg: L1Reg) -> np.ndarray:
    """Feature selection as shap ``KernelExplainer.solve``: the constraint is imposed softly by
    augmenting the rows (z, weight pi (M - |z|)) and (z - 1, weight pi |z|, target y - diff), then
    LARS with k steps ("num_features(k)"), LassoLarsIC ("aic"/"bic"), or Lasso(alpha) (float)."""
    from sklearn.linear_model import Lasso, LassoLarsIC, lars_path
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    z = masks.astype(np.float64)
    s = z.sum(axis=1)
    m = z.shape[1]
    w_aug = np.hstack((weights * (m - s), weights * s))
    w_sqrt = np.sqrt(w_aug)
    y_aug = np.hstack((y_adj, y_adj - diff)) * w_sqrt
    x_aug = w_sqrt[:, None] * np.vstack((z, z - 1))
    if isinstance(l1_reg, str) and (match := _NUM_FEATURES.match(l1_reg)):
        return np.asarray(lars_path(x_aug, y_aug, max_iter=int(match.group(1)))[1], dtype=np.intp)
    if l1_reg in ("aic", "bic"):
        model = make_pipeline(StandardScaler(with_mean=False), LassoLarsIC(criterion=l1_reg))
        return np.nonzero(model.fit(x_aug, y_aug)[1].coef_)[0]
    return np.nonzero(Lasso(alpha=float(l1_reg)).fit(x_aug, y_aug).coef_)[0]  # type: ignore[arg-type]


class KernelShapAccumulator:
    """Streaming Kernel SHAP: keeps the weighted Gram statistics of the coalitions,

        G = sum w z z^T [M, M],  g = sum w z [M],  P = sum w z g(v)^T [M, K],

    whose size does not depend on the number of coalitions; the constrained normal equations for
    any eliminated feature j are formed from them at ``solve`` time (X = z_{-j} - z_j):

        X^T W X = G_{RR} - G_{Rj} - G_{jR} + G_{jj},
        X^T W y = P_R - P_j - g(base) (g_R - g_j) - diff (G_{Rj} - G_{jj}).

    With ``l1_reg`` set, feature selection needs the rows (LARS / information criteria), so the
    masks, weights and linked values are kept as well, and only then.
    """

    def __init__(self, m: int, link: Link = "identity", l1_reg: L1Reg | bool = None) -> None:
        if m < 1:
            raise ValueError("need at least one feature")
        link_function(link)
        self.m = m
        self.link: Link = link
        self.l1_reg = _parse_l1(l1_reg)
        self.count = 0
        self._k: int | None = None
        self._squeeze = False
        self._gram = np.zeros((m, m))
        self._g = np.zeros(m)
        self._p: np.ndarray | None = None
        self._rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, masks_chunk: np.ndarray, weights_chunk: np.ndarray, values_chunk: np.ndarray) -> None:
        """Add coalitions: masks [n, M], kernel weights [n], values v(z) [n] or [n, K] (output space)."""
        z = np.asarray(masks_chunk, dtype=np.float64)
        w = np.asarray(weights_chunk, dtype=np.float64)
        v = np.asarray(values_chunk, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.m or w.shape != (z.shape[0],) or v.shape[:1] != (z.shape[0],):
            raise ValueError("expected masks [n, M], weights [n], values [n] or [n, K]")
        squeeze = v.ndim == 1
        v2 = v[:, None] if squeeze else v
        if self._k is None:
            self._k, self._squeeze = v2.shape[1], squeeze
            self._p = np.zeros((self.m, self._k))
        elif v2.shape[1] != self._k:
            raise ValueError("number of outputs changed between chunks")
        gv = _apply_link(self.link, v2)
        wz = w[:, None] * z
        self._gram += wz.T @ z
        self._g += wz.sum(axis=0)
        assert self._p is not None
        self._p += wz.T @ gv
        self.count += z.shape[0]
        if self.l1_reg is not None:
            self._rows.append((z, w, gv))

    def solve(self, f_x: np.ndarray | float, base_value: np.ndarray | float) -> np.ndarray:
        """phi [M] (or [M, K]) with sum(phi) = g(f(x)) - g(base); f_x and base in model-output space."""
        k = self._k if self._k is not None else np.asarray(f_x).size
        fx = _apply_link(self.link, np.asarray(f_x, dtype=np.float64).reshape(-1))
        base = _apply_link(self.link, np.asarray(base_value, dtype=np.float64).reshape(-1))
        if fx.shape != (k,) or base.shape != (k,):
            raise ValueError(f"f_x and base_value need {k} output(s)")
        diff = fx - base
        phi = np.zeros((self.m, k))
        if self.m == 1:
            phi[0] = diff
        else:
            if self.count == 0:
                raise ValueError("no coalitions added")
            assert self._p is not None
            rows = None
            if self.l1_reg is not None:
                rows = tuple(np.concatenate(parts) for parts in zip(*self._rows))
            for d in range(k):
                if rows is None:
                    selected = np.arange(self.m)
                else:
                    z, w, gv = rows
                    selected = _l1_select(z, w, gv[:, d] - base[d], float(diff[d]), self.l1_reg)
                phi[:, d] = self._solve_selected(selected, float(base[d]), float(diff[d]), self._p[:, d])
        return phi[:, 0] if self._squeeze or (self._k is None and np.ndim(f_x) == 0) else phi

    def _solve_selected(self, selected: np.ndarray, base: float, diff: float, p: np.ndarray) -> np.ndarray:
        phi = np.zeros(self.m)
        if len(selected) == 0:
            return phi
        j, r = int(selected[-1]), np.asarray(selected[:-1], dtype=np.intp)
        if len(r):
            gram = self._gram
            a = gram[np.ix_(r, r)] - gram[r, j][:, None] - gram[j, r][None, :] + gram[j, j]
            b = (p[r] - p[j]) - base * (self._g[r] - self._g[j]) - diff * (gram[r, j] - gram[j, j])
            try:
                w = np.linalg.solve(a, b)
            except np.linalg.LinAlgError:
                w = np.linalg.lstsq(a, b, rcond=None)[0]
            phi[r] = w
            phi[j] = diff - np.sum(w)
        else:
            phi[j] = diff
        return phi


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
