"""Numerical core of LIME (Ribeiro, Singh & Guestrin, KDD 2016) with the `lime` package's semantics.

Independent of explaind's engine: coalitions are boolean rows ``z`` (1 = interpretable feature kept),
the caller evaluates the model on the images / rows they map to, and the surrogate is fitted from
streamed chunks (:class:`RidgeAccumulator`). The all-at-once forms of the same steps (lime's
perturbed images, its Ridge fit with feature selection) are the tests' reference, in
tests/oracles/lime.py.

Images (lime_image.LimeImageExplainer):
  * superpixels: quickshift(kernel_size=4, max_dist=200, ratio=0.2, random_seed) (slic, felzenszwalb);
  * ``num_samples`` = 1000 rows, each superpixel on/off with probability 1/2, the first row all on;
  * a switched-off superpixel takes its mean colour (``hide_color=None``) or a constant value;
  * distance d = cosine distance of z to the all-on row = 1 - sqrt(|z| / S) (1 for the empty row),
    NOT multiplied by 100 (lime_text does that, lime_image does not);
  * kernel pi(z) = sqrt(exp(-d^2 / w^2)), w = 0.25.
Tabular (lime_tabular.LimeTabularExplainer, discretize_continuous=True, discretizer='quartile'):
  * per-feature quartile edges of the background, per-bin mean/std/min/max;
  * ``num_samples`` = 5000 rows: bin indices drawn from the background's bin frequencies, values by
    truncated-normal draws inside the bin, the first row the instance itself;
  * binary representation z_j = [bin_j(row) == bin_j(instance)] (the first row all ones);
  * with everything discretised lime's scaler is the identity, so d = ||z - 1||_2 and
    the kernel width is w = sqrt(F) * 0.75 (F = number of columns), pi = sqrt(exp(-d^2 / w^2)).
Surrogate (lime_base.LimeBase.explain_instance_with_data):
  Ridge(alpha=1, fit_intercept=True) on z with sample weights pi, score = weighted R^2.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Iterable, Iterator, Literal

import numpy as np

Rng = np.random.Generator | np.random.RandomState

IMAGE_KERNEL_WIDTH = 0.25
IMAGE_NUM_SAMPLES = 1000
TABULAR_NUM_SAMPLES = 5000
TABULAR_KERNEL_WIDTH_FACTOR = 0.75
QUICKSHIFT_DEFAULTS: dict[str, Any] = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2}
LIME_STD_EPSILON = 1e-11  # lime adds this to every bin's std


def _rng(rng: Rng | int | None) -> Rng:
    if isinstance(rng, (np.random.Generator, np.random.RandomState)):
        return rng
    return np.random.default_rng(rng)


def exponential_kernel(distances: np.ndarray, kernel_width: float) -> np.ndarray:
    """lime's default kernel: pi(d) = sqrt(exp(-d^2 / w^2))."""
    d = np.asarray(distances, np.float64)
    return np.sqrt(np.exp(-(d**2) / float(kernel_width) ** 2))


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def segment(
    image: np.ndarray,
    algorithm: Literal["quickshift", "slic", "felzenszwalb"] = "quickshift",
    *,
    random_seed: int | None = None,
    **params: Any,
) -> np.ndarray:
    """Superpixels of an RGB image [H, W, 3] (uint8 or float) as int labels [H, W] in 0..S-1.

    quickshift defaults are lime's: kernel_size=4, max_dist=200, ratio=0.2. lime also passes
    ``random_seed`` (drawn as ``random_state.randint(0, 1000)``), but its wrapper drops arguments
    the skimage function does not accept, and skimage >= 0.20 renamed it ``rng`` (default 42): so
    with current skimage lime's quickshift always runs with rng=42, which ``random_seed=None``
    reproduces. A given ``random_seed`` is passed as ``rng`` (or ``random_seed`` on old skimage);
    it only breaks ties (quickshift adds tiny noise to the density).
    slic / felzenszwalb use skimage's defaults unless overridden in ``params``. Labels are
    renumbered to 0..S-1 in order of first label value (lime assumes this; skimage's slic starts
    at 1, which lime mishandles).
    """
    from skimage import segmentation as sk

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if algorithm == "quickshift":
        kw = {**QUICKSHIFT_DEFAULTS, **params}
        if random_seed is not None:
            seed_arg = "rng" if "rng" in inspect.signature(sk.quickshift).parameters else "random_seed"
            kw[seed_arg] = random_seed
        labels = sk.quickshift(img, **kw)
    elif algorithm == "slic":
        labels = sk.slic(img, **params)
    elif algorithm == "felzenszwalb":
        labels = sk.felzenszwalb(img, **params)
    else:
        raise ValueError(f"unknown segmentation algorithm {algorithm!r}")
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int64)


def image_coalition_chunks(num_segments: int, num_samples: int = IMAGE_NUM_SAMPLES, rng: Rng | int | None = None,
                           chunk_rows: int = 256) -> Iterator[np.ndarray]:
    """Bool [n, S] chunks of ``chunk_rows`` rows: each superpixel on/off with probability 1/2, row 0 all
    on (lime_image.data_labels), drawn lazily. With a ``np.random.RandomState`` the draws are lime's
    exactly (``randint(0, 2, N * S).reshape(N, S)``); a Generator uses ``integers(0, 2, (N, S))``.

    The same rows as one draw of all N x S bits: both ``Generator.integers(0, 2)`` and
    ``RandomState.randint(0, 2)`` spend exactly one 32-bit draw per bit (the generator keeps the odd half
    of a 64-bit draw), so drawing N x S bits in pieces gives the bits of one draw, and leaves the
    generator in the same state.
    """
    r = _rng(rng)
    for start in range(0, num_samples, chunk_rows):
        n = min(chunk_rows, num_samples - start)
        if isinstance(r, np.random.RandomState):
            bits = r.randint(0, 2, n * num_segments).reshape((n, num_segments))
        else:
            bits = r.integers(0, 2, (n, num_segments))
        z = bits.astype(bool)
        if start == 0:
            z[0, :] = True
        yield z


DEDUP_MAX_SEGMENTS = 16  # distinct coalitions counted in a 2^S table (1 MiB at 16)


def distinct_coalitions(num_segments: int, num_samples: int, rng: Rng | int | None = None,
                        chunk_rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of :func:`image_coalition_chunks` (the same draws, the generator left in the same
    state) in order of first draw, and how many samples each stands for: bool [D, S], int64 [D].

    Why: with S superpixels there are at most 2^S different perturbed images; when 2^S is below
    num_samples most samples repeat one already drawn (quickshift finds 3-5 superpixels on the 64 x 64
    demo images: 1000 samples, at most 32 images). The model is deterministic, so one evaluation per
    distinct image, its kernel weight multiplied by its count, gives the same sufficient statistics and
    so the same surrogate as lime's fit over every sample. Memory: a 2^S table (S <= DEDUP_MAX_SEGMENTS).
    """
    if num_segments > DEDUP_MAX_SEGMENTS:
        raise ValueError(f"at most {DEDUP_MAX_SEGMENTS} segments")
    size = 1 << num_segments
    powers = (1 << np.arange(num_segments)).astype(np.int64)
    counts = np.zeros(size, np.int64)
    first = np.full(size, np.iinfo(np.int64).max)
    start = 0
    for chunk in image_coalition_chunks(num_segments, num_samples, rng, chunk_rows):
        codes = chunk.astype(np.int64) @ powers
        counts += np.bincount(codes, minlength=size)
        np.minimum.at(first, codes, np.arange(start, start + len(codes)))
        start += len(codes)
    present = np.flatnonzero(counts)
    present = present[np.argsort(first[present], kind="stable")]
    bits = ((present[:, None] >> np.arange(num_segments)) & 1).astype(bool)
    return bits, counts[present]


def image_distances(coalitions: np.ndarray) -> np.ndarray:
    """Cosine distance of each row to the all-on row: d = 1 - |z| / (sqrt(|z|) sqrt(S)) = 1 - sqrt(|z|/S).

    The empty row gets d = 1 (sklearn's cosine distance of a zero vector). lime_image does not
    scale it by 100 (only lime_text does).
    """
    z = np.asarray(coalitions)
    s = z.shape[1]
    on = z.astype(np.float64).sum(axis=1)
    return np.clip(1.0 - np.sqrt(on / s), 0.0, 2.0)


def image_kernel_weights(coalitions: np.ndarray, kernel_width: float = IMAGE_KERNEL_WIDTH) -> np.ndarray:
    """pi(z) = sqrt(exp(-d^2 / w^2)) with d = :func:`image_distances` and w = 0.25 (lime_image)."""
    return exponential_kernel(image_distances(coalitions), kernel_width)


# --------------------------------------------------------------------------------------------
# Tabular
# --------------------------------------------------------------------------------------------


TRUNCNORM_FAR_TAIL = 30.0  # an interval entirely beyond |z| = 30 is done in logs by truncnorm_ppf


def truncnorm_masses(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Phi(a), Phi(-b), m = Phi(b) - Phi(a)) for :func:`truncnorm_ppf`, from the small tails only.

    With ta = Phi(-|a|) and tb = Phi(-|b|): Phi(a) = ta if a < 0 else 1 - ta, Phi(-b) = tb if b > 0
    else 1 - tb, m = tb - ta (b <= 0), ta - tb (a >= 0), 1 - ta - tb (a < 0 < b): whatever is small
    is never a difference from 1.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    from scipy import special  # lazy: scipy is not imported by the server until a request needs it
    ta, tb = special.ndtr(-np.abs(a)), special.ndtr(-np.abs(b))
    mass = np.where(b <= 0, tb - ta, np.where(a >= 0, ta - tb, 1.0 - ta - tb))
    return np.where(a < 0, ta, 1.0 - ta), np.where(b > 0, tb, 1.0 - tb), mass


def truncnorm_ppf(q: np.ndarray, a: np.ndarray, b: np.ndarray,
                  masses: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Quantile of the standard normal truncated to [a, b], elementwise: ``scipy.stats.truncnorm.ppf(q, a, b)``.

    With Phi the normal CDF and m = Phi(b) - Phi(a) the mass of [a, b], the quantile x solves
        P := Phi(x) = Phi(a) + q m     or, the same with the tails swapped,     Pc := Phi(-x) = Phi(-b) + (1 - q) m,
    so x = ndtri(P) where P <= Pc and x = -ndtri(Pc) otherwise: ndtri only sees the smaller tail (<= 1/2),
    where it is accurate; Phi(a), Phi(-b), m come from :func:`truncnorm_masses` (or ``masses``, its
    result for these a, b, e.g. computed once per bin). An interval entirely beyond |z| = 30, where
    the tails near Phi's underflow (|z| ~ 37.5), is mirrored to the left (a, b, q -> -b, -a, 1 - q;
    x -> -x) and done in logs: log m = log Phi(b) + log(-expm1(log Phi(a) - log Phi(b))),
    log P = logaddexp(log Phi(a), log q + log m), x = ndtri_exp(log P) refined by one Newton step.
    The result is clipped to [a, b]. scipy computes every case in logs (log_ndtr, logsumexp, ndtri_exp).
    Against 60-digit values: <= 3e-15 relative for |x| >= 0.1, <= 4e-16 absolute near x = 0 (where
    Phi(x) ~ 1/2 holds x to that; scipy alike), also for q -> 1 where scipy's logs lose up to 1e-2.
    """
    from scipy import special  # lazy: scipy is not imported by the server until a request needs it
    q, a, b = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (q, a, b)))
    pa, pnb, mass = truncnorm_masses(a, b) if masses is None else masses
    lower = pa + q * mass  # P = Phi(x)
    upper = pnb + (1.0 - q) * mass  # Pc = Phi(-x)
    left = lower <= upper
    x = special.ndtri(np.where(left, lower, upper))
    x = np.where(left, x, -x)
    far = (b < -TRUNCNORM_FAR_TAIL) | (a > TRUNCNORM_FAR_TAIL)
    if far.any():
        flip = a[far] > 0
        lo, hi = np.where(flip, -b[far], a[far]), np.where(flip, -a[far], b[far])
        qq = np.where(flip, 1.0 - q[far], q[far])
        la, lb = special.log_ndtr(lo), special.log_ndtr(hi)
        with np.errstate(divide="ignore", invalid="ignore"):  # q = 0: log P = -inf, x = a
            log_p = np.logaddexp(la, np.log(qq) + lb + np.log(-np.expm1(la - lb)))
            y = special.ndtri_exp(log_p)
            # ndtri_exp drifts to ~1e-12 relative beyond |x| ~ 100: one Newton step on log Phi(y) = log P,
            # with 1 / (log Phi)'(y) = Phi(y) / phi(y) = sqrt(pi / 2) erfcx(-y / sqrt 2).
            step = (special.log_ndtr(y) - log_p) * math.sqrt(math.pi / 2) * special.erfcx(-y / math.sqrt(2))
        x[far] = np.where(flip, -1.0, 1.0) * np.where(np.isfinite(step), y - step, y)
    return np.clip(x, a, b)


class QuartileDiscretizer:
    """lime.discretize.QuartileDiscretizer, fitted on background rows [B, F].

    For each non-categorical feature f: edges_f = unique(percentile(x_f, [25, 50, 75])) (numpy's
    linear interpolation); bin(x) = searchsorted(edges_f, x) (side='left', so x <= q25 is bin 0);
    per bin b: mean and std (ddof=0, + 1e-11) of the background values in it (0 for an empty bin),
    min = [min x_f] + edges_f, max = edges_f + [max x_f]. Sampling frequencies: the sorted
    distinct values of the discretised background column and their relative counts (lime's
    ``feature_values`` / ``feature_frequencies``); categorical features keep their raw values.
    """

    def __init__(self, data: np.ndarray, categorical_features: Iterable[int] = ()) -> None:
        x = np.asarray(data, np.float64)
        if x.ndim != 2:
            raise ValueError("background data must be [rows, features]")
        self.num_features = x.shape[1]
        self.categorical_features = sorted(set(int(c) for c in categorical_features))
        self.to_discretize = [f for f in range(self.num_features) if f not in self.categorical_features]
        self.edges: dict[int, np.ndarray] = {}
        self.means: dict[int, np.ndarray] = {}
        self.stds: dict[int, np.ndarray] = {}
        self.mins: dict[int, np.ndarray] = {}
        self.maxs: dict[int, np.ndarray] = {}
        for f in self.to_discretize:
            col = x[:, f]
            qts = np.unique(np.percentile(col, [25, 50, 75]))
            bins = np.searchsorted(qts, col)
            means, stds = [], []
            for b in range(qts.size + 1):
                sel = col[bins == b]
                means.append(float(np.mean(sel)) if sel.size else 0.0)
                stds.append((float(np.std(sel)) if sel.size else 0.0) + LIME_STD_EPSILON)
            self.edges[f] = qts
            self.means[f] = np.array(means)
            self.stds[f] = np.array(stds)
            self.mins[f] = np.concatenate([[col.min()], qts])
            self.maxs[f] = np.concatenate([qts, [col.max()]])
        disc = self.discretize(x)
        self.values: list[np.ndarray] = []
        self.frequencies: list[np.ndarray] = []
        for f in range(self.num_features):
            vals, counts = np.unique(disc[:, f], return_counts=True)
            self.values.append(vals)
            self.frequencies.append(counts / counts.sum())

    def discretize(self, data: np.ndarray) -> np.ndarray:
        """Float array like ``data`` with discretised columns replaced by bin indices 0..len(edges)."""
        x = np.array(data, np.float64, copy=True)
        for f in self.to_discretize:
            x[..., f] = np.searchsorted(self.edges[f], x[..., f])
        return x

    def undiscretize(self, bins: np.ndarray, rng: Rng | int | None = None, *, lime_degenerate_bins: bool = False) -> np.ndarray:
        """Values for rows of bin indices [N, F]: per feature (in order) a truncated normal
        N(mean_b, std_b) on [min_b, max_b], drawn as lime's vectorised
        ``scipy.stats.truncnorm.rvs(a, b, loc, scale, random_state=rng)`` draws it, by inversion:
        ``u = rng.uniform(size=k)`` (k = the feature's rows with min < max; the one draw scipy's
        ``rv_continuous._rvs`` makes, for RandomState and Generator alike), then
        ``truncnorm_ppf(u, a, b) * scale + loc``: the same uniforms as scipy, in the same order, and
        values within ~1e-14 relative of scipy's (scipy's log-space rounding, largest as u -> 1), at
        a quarter of the cost (bin constants once per bin, one ndtri per value).

        A bin with min == max has value min; lime instead returns the z-score (min - mean) / std
        there (a lime bug), reproduced with ``lime_degenerate_bins=True``.
        """
        r = _rng(rng)
        out = np.array(bins, np.float64, copy=True)
        for f in self.to_discretize:
            idx = out[:, f].astype(int)
            lo, mu, sd = self.mins[f], self.means[f], self.stds[f]  # per bin, gathered by idx below
            minz, maxz = (lo - mu) / sd, (self.maxs[f] - mu) / sd
            ok = (minz != maxz)[idx]
            val = (minz if lime_degenerate_bins else lo)[idx]
            if ok.any():
                sel = idx if ok.all() else idx[ok]
                a, b = minz[sel], maxz[sel]
                if not np.all(a < b):  # scipy's domain check (NaN data)
                    raise ValueError("truncated normal bins need min < max")
                u = r.uniform(size=sel.size)
                masses = tuple(m[sel] for m in truncnorm_masses(minz, maxz))
                val[ok] = truncnorm_ppf(u, a, b, masses) * sd[sel] + mu[sel]
            out[:, f] = val
        return out

    def sample(
        self,
        instance: np.ndarray,
        num_samples: int = TABULAR_NUM_SAMPLES,
        rng: Rng | int | None = None,
        *,
        lime_degenerate_bins: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """lime_tabular's neighbourhood: (binary bool [N, F], rows float [N, F]).

        For each feature f in order: bins_f ~ choice(values_f, N, p=frequencies_f); binary
        z_f = [bins_f == bin_f(instance)]; then rows 1.. are undiscretised (:meth:`undiscretize`)
        and row 0 is the instance with z_0 = all ones. With a ``np.random.RandomState`` seeded
        like lime's ``random_state`` the draws are lime's exactly.
        """
        r = _rng(rng)
        x0 = np.asarray(instance, np.float64)
        first = self.discretize(x0)
        n, nf = int(num_samples), self.num_features
        binary = np.zeros((n, nf), bool)
        rows = np.zeros((n, nf), np.float64)
        for f in range(nf):
            col = r.choice(self.values[f], size=n, replace=True, p=self.frequencies[f])
            binary[:, f] = col == first[f]
            rows[:, f] = col
        binary[0] = True
        if n > 1:
            rows[1:] = self.undiscretize(rows[1:], r, lime_degenerate_bins=lime_degenerate_bins)
        rows[0] = x0
        return binary, rows


def tabular_kernel_width(num_features: int) -> float:
    """lime_tabular's default kernel width: sqrt(F) * 0.75."""
    return math.sqrt(num_features) * TABULAR_KERNEL_WIDTH_FACTOR


def tabular_distances(binary: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distance of each scaled row to the first (the instance): d = ||(z - z_0) / scale||.

    With every feature discretised lime's scaler has mean 0 and scale 1, so d = sqrt(#zeros in z).
    """
    z = np.asarray(binary, np.float64)
    diff = z - z[0]
    if scale is not None:
        diff = diff / np.asarray(scale, np.float64)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def tabular_kernel_weights(binary: np.ndarray, kernel_width: float | None = None) -> np.ndarray:
    """pi = sqrt(exp(-d^2 / w^2)), d = :func:`tabular_distances`, w = sqrt(F) * 0.75 by default."""
    z = np.asarray(binary)
    w = tabular_kernel_width(z.shape[1]) if kernel_width is None else kernel_width
    return exponential_kernel(tabular_distances(z), w)


# --------------------------------------------------------------------------------------------
# Surrogate
# --------------------------------------------------------------------------------------------


class RidgeAccumulator:
    """Streaming weighted Ridge with intercept from sufficient statistics.

    Keeps W = sum w, Sx = sum w x, Sxx = sum w x x^T, Sy = sum w y, Sxy = sum w x y, Syy = sum w y^2.
    With xbar = Sx/W, ybar = Sy/W, Cxx = Sxx - W xbar xbar^T, Cxy = Sxy - W xbar ybar,
    Cyy = Syy - W ybar^2:  b = (Cxx + alpha I)^-1 Cxy,  c = ybar - xbar . b,
    SSres = Cyy - 2 b.Cxy + b^T Cxx b,  R^2 = 1 - SSres / Cyy (sklearn's convention when Cyy = 0).
    This is exactly sklearn's Ridge(alpha, fit_intercept=True).fit(X, y, sample_weight=w).
    """

    def __init__(self, num_features: int, alpha: float = 1.0) -> None:
        self.num_features = int(num_features)
        self.alpha = float(alpha)
        s = self.num_features
        self.sum_w = 0.0
        self.sum_wx = np.zeros(s)
        self.sum_wxx = np.zeros((s, s))
        self.sum_wy = 0.0
        self.sum_wxy = np.zeros(s)
        self.sum_wyy = 0.0
        self.count = 0    # rows added
        self.samples = 0  # samples they stand for

    def add(self, binary: np.ndarray, targets: np.ndarray, weights: np.ndarray,
            counts: np.ndarray | None = None) -> None:
        """Accumulate a chunk: rows [n, S], targets [n], weights [n]; ``counts`` [n]: how many samples each
        row stands for (repeated samples evaluated once; their weights already multiplied by it)."""
        x = np.asarray(binary, np.float64).reshape(-1, self.num_features)
        y = np.asarray(targets, np.float64).ravel()
        w = np.asarray(weights, np.float64).ravel()
        if not (x.shape[0] == y.size == w.size):
            raise ValueError("rows, targets and weights differ in length")
        xw = x * w[:, None]
        self.sum_w += float(w.sum())
        self.sum_wx += xw.sum(axis=0)
        self.sum_wxx += xw.T @ x
        self.sum_wy += float(w @ y)
        self.sum_wxy += xw.T @ y
        self.sum_wyy += float(w @ (y * y))
        self.count += x.shape[0]
        self.samples += x.shape[0] if counts is None else int(np.sum(counts))

    def solve(self) -> tuple[np.ndarray, float, float]:
        """(coefficients [S], intercept, weighted R^2), as sklearn's weighted Ridge on all the rows."""
        if self.sum_w <= 0:
            raise ValueError("no weighted rows accumulated")
        big_w = self.sum_w
        xbar = self.sum_wx / big_w
        ybar = self.sum_wy / big_w
        cxx = self.sum_wxx - big_w * np.outer(xbar, xbar)
        cxy = self.sum_wxy - big_w * xbar * ybar
        cyy = self.sum_wyy - big_w * ybar * ybar
        a = cxx + self.alpha * np.eye(self.num_features)
        try:
            coef = np.linalg.solve(a, cxy)
        except np.linalg.LinAlgError:
            coef = np.linalg.lstsq(a, cxy, rcond=None)[0]
        intercept = float(ybar - xbar @ coef)
        ss_res = max(float(cyy - 2.0 * coef @ cxy + coef @ cxx @ coef), 0.0)
        if cyy <= 0.0:
            r2 = 1.0 if ss_res == 0.0 else 0.0
        else:
            r2 = 1.0 - ss_res / cyy
        return coef, intercept, r2

    def standard_errors(self) -> np.ndarray:
        """The coefficients' standard errors under the weighted-least-squares model (Var(e_i) = sigma^2 / w_i):
        Cov(b) = sigma^2 (Cxx + alpha I)^-1 Cxx (Cxx + alpha I)^-1 with sigma^2 = SSres / (n - S - 1), n the
        samples. It measures how much the surrogate's weights move with the random perturbations (NaN
        when n <= S + 1)."""
        coef, _, _ = self.solve()
        big_w = self.sum_w
        xbar = self.sum_wx / big_w
        ybar = self.sum_wy / big_w
        cxx = self.sum_wxx - big_w * np.outer(xbar, xbar)
        cxy = self.sum_wxy - big_w * xbar * ybar
        cyy = self.sum_wyy - big_w * ybar * ybar
        dof = self.samples - self.num_features - 1
        if dof <= 0:
            return np.full(self.num_features, np.nan)
        ss_res = max(float(cyy - 2.0 * coef @ cxy + coef @ cxx @ coef), 0.0)
        ainv = np.linalg.pinv(cxx + self.alpha * np.eye(self.num_features))
        cov = (ss_res / dof) * (ainv @ cxx @ ainv)
        return np.sqrt(np.clip(np.diag(cov), 0.0, None))


# --------------------------------------------------------------------------------------------
# Working memory (bytes), to refuse a request before starting what would not fit
# --------------------------------------------------------------------------------------------

# Measured with tracemalloc and rounded up (tests/unit/methods/test_lime.py checks they stay upper bounds).
RIDGE_BYTES_PER_FEATURE2 = 5 * 8          # RidgeAccumulator: S x S sums, the chunk's product, the solve's systems
RIDGE_CHUNK_BYTES_PER_FEATURE = 4 * 8 * 1024  # a chunk's float64 rows and weighted rows (up to 1024 rows)
TABULAR_BYTES_PER_SAMPLE_AND_FEATURE = 32  # QuartileDiscretizer.sample + kernel weights + float32 rows (~25)
TABULAR_BYTES_PER_SAMPLE = 320


def ridge_bytes(num_features: int) -> int:
    """Upper bound of :class:`RidgeAccumulator`'s working memory for S features (independent of the rows)."""
    s = int(num_features)
    return RIDGE_BYTES_PER_FEATURE2 * s * s + RIDGE_CHUNK_BYTES_PER_FEATURE * s


def max_ridge_features(budget: int) -> int:
    """The largest S whose :func:`ridge_bytes` fits ``budget``."""
    s = int(math.isqrt(max(0, budget) // RIDGE_BYTES_PER_FEATURE2))
    while s > 0 and ridge_bytes(s) > budget:
        s -= 1
    return s


def tabular_sample_bytes(num_samples: int, num_features: int) -> int:
    """Upper bound of the peak memory of drawing lime_tabular's neighbourhood up front
    (:meth:`QuartileDiscretizer.sample`, the kernel weights, the rows as float32) and keeping it for the fit,
    plus the surrogate's statistics."""
    per_sample = TABULAR_BYTES_PER_SAMPLE_AND_FEATURE * int(num_features) + TABULAR_BYTES_PER_SAMPLE
    return int(num_samples) * per_sample + ridge_bytes(num_features)


def max_tabular_samples(num_features: int, budget: int) -> int:
    """The largest num_samples whose :func:`tabular_sample_bytes` fits ``budget``."""
    fixed = tabular_sample_bytes(0, num_features)
    return max(0, (int(budget) - fixed) // (tabular_sample_bytes(1, num_features) - fixed))
