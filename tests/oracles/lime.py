"""LIME all at once, as the `lime` package computes it: the perturbed images of lime_image and the
weighted Ridge surrogate of lime_base with its feature selection.

explaind streams the same steps (explaind.methods.lime_core: image_coalition_chunks, the segments
graph variant, RidgeAccumulator); the tests check the streamed results against these, and these
against the lime package.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from sklearn.linear_model import Ridge, lars_path

from explaind.methods.lime_core import IMAGE_NUM_SAMPLES, Rng, image_coalition_chunks

FeatureSelection = Literal["auto", "none", "forward_selection", "highest_weights", "lasso_path"]


def sample_image_coalitions(num_segments: int, num_samples: int = IMAGE_NUM_SAMPLES, rng: Rng | int | None = None) -> np.ndarray:
    """Bool [N, S]: each superpixel on/off with probability 1/2, row 0 all on (lime_image.data_labels).

    With a ``np.random.RandomState`` the draws are lime's exactly
    (``randint(0, 2, N * S).reshape(N, S)``); a Generator uses ``integers(0, 2, (N, S))``.
    All rows at once; :func:`image_coalition_chunks` draws the same rows lazily.
    """
    chunks = list(image_coalition_chunks(num_segments, num_samples, rng, 4096))
    return np.concatenate(chunks) if chunks else np.zeros((0, num_segments), bool)


def segment_mean_colors(image: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Float64 [S, C]: the mean colour of each superpixel (labels 0..S-1)."""
    img = np.asarray(image)
    flat = img.reshape(-1, img.shape[-1]).astype(np.float64)
    seg = np.asarray(segments).ravel()
    count = np.bincount(seg, minlength=int(seg.max()) + 1).astype(np.float64)
    sums = np.stack([np.bincount(seg, weights=flat[:, c], minlength=count.size) for c in range(flat.shape[1])], axis=1)
    return sums / np.maximum(count, 1.0)[:, None]


def hide_image(image: np.ndarray, segments: np.ndarray, hide_color: float | Sequence[float] | None = None) -> np.ndarray:
    """lime's ``fudged_image``: the image every switched-off superpixel is taken from.

    ``hide_color=None`` (lime's default): each superpixel's mean colour; otherwise the constant.
    Same dtype as ``image`` (a uint8 image gets the means cast to uint8 as numpy assignment does,
    i.e. truncated, as in lime).
    """
    img = np.asarray(image)
    fudged = img.copy()
    if hide_color is None:
        fudged[...] = segment_mean_colors(img, segments)[np.asarray(segments)]
    else:
        fudged[...] = hide_color
    return fudged


def fill_images(image: np.ndarray, fudged: np.ndarray, segments: np.ndarray, coalitions: np.ndarray) -> np.ndarray:
    """Images [N, H, W, C] for coalition rows [N, S]: pixel of segment j from ``image`` if z_j else ``fudged``."""
    z = np.asarray(coalitions, bool)
    keep = z[:, np.asarray(segments)]  # [N, H, W]
    return np.where(keep[..., None], np.asarray(image)[None], np.asarray(fudged)[None])


def weighted_r2(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> float:
    ybar = np.average(y, weights=w)
    ss_res = float(np.sum(w * (y - pred) ** 2))
    ss_tot = float(np.sum(w * (y - ybar) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def select_features(
    binary: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    num_features: int | None = None,
    method: FeatureSelection = "auto",
) -> np.ndarray:
    """lime_base.LimeBase.feature_selection: the indices used by the surrogate.

    * ``none``: all S features.
    * ``forward_selection``: greedily add the feature maximising the weighted R^2 of
      Ridge(alpha=0) with intercept, num_features times (cost O(K S) fits).
    * ``highest_weights``: Ridge(alpha=0.01) on all features; the num_features with the largest
      |coef_j * z_0j| (z_0 = the instance's row, all ones for LIME), stable order.
    * ``lasso_path``: LARS lasso path on weighted-centred data (x - avg_w x) sqrt(w); walking back
      from the least regularised end, the first set with <= num_features non-zeros.
    * ``auto`` (lime's default): forward_selection if num_features <= 6, else highest_weights.
      lime_image passes num_features=100000 and lime_tabular 10, so with S <= num_features auto
      keeps every feature and equals ``none``.
    ``num_features=None`` means S.
    """
    x = np.asarray(binary, np.float64)
    y = np.asarray(targets, np.float64)
    w = np.asarray(weights, np.float64)
    s = x.shape[1]
    k = s if num_features is None else int(num_features)
    if method == "none":
        return np.arange(s)
    if method == "auto":
        method = "forward_selection" if k <= 6 else "highest_weights"
    if method == "forward_selection":
        used: list[int] = []
        clf = Ridge(alpha=0, fit_intercept=True)
        for _ in range(min(k, s)):
            best, best_score = 0, -1e8
            for j in range(s):
                if j in used:
                    continue
                cols = used + [j]
                clf.fit(x[:, cols], y, sample_weight=w)
                score = clf.score(x[:, cols], y, sample_weight=w)
                if score > best_score:
                    best, best_score = j, score
            used.append(best)
        return np.array(used, dtype=int)
    if method == "highest_weights":
        clf = Ridge(alpha=0.01, fit_intercept=True).fit(x, y, sample_weight=w)
        contrib = clf.coef_ * x[0]
        order = sorted(range(s), key=lambda j: abs(contrib[j]), reverse=True)
        return np.array(order[:k], dtype=int)
    if method == "lasso_path":
        xw = (x - np.average(x, axis=0, weights=w)) * np.sqrt(w)[:, None]
        yw = (y - np.average(y, weights=w)) * np.sqrt(w)
        _, _, coefs = lars_path(xw, yw, method="lasso", verbose=False)
        nonzero = np.arange(s)
        for i in range(coefs.shape[1] - 1, 0, -1):
            nonzero = coefs[:, i].nonzero()[0]
            if len(nonzero) <= k:
                break
        return np.asarray(nonzero, dtype=int)
    raise ValueError(f"unknown feature_selection {method!r}")


def fit_surrogate(
    binary: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    alpha: float = 1.0,
    *,
    feature_selection: FeatureSelection = "none",
    num_features: int | None = None,
) -> tuple[np.ndarray, float, float]:
    """The weighted linear surrogate: (coefficients [S], intercept, weighted R^2).

    Ridge(alpha, fit_intercept=True) minimising sum_i w_i (y_i - c - z_i . b)^2 + alpha ||b||^2 on the
    features chosen by :func:`select_features` (others get coefficient 0), and
    R^2 = 1 - sum w (y - yhat)^2 / sum w (y - avg_w y)^2 (sklearn's ``score`` with sample_weight),
    as lime_base.explain_instance_with_data. The default ``none`` equals lime's ``auto`` whenever
    S <= num_features (always for lime_image's 100000); pass ``feature_selection="auto"`` and
    num_features=10 for lime_tabular's behaviour with more than 10 columns.
    """
    x = np.asarray(binary, np.float64)
    y = np.asarray(targets, np.float64)
    w = np.asarray(weights, np.float64)
    used = select_features(x, y, w, num_features, feature_selection)
    model = Ridge(alpha=alpha, fit_intercept=True).fit(x[:, used], y, sample_weight=w)
    coef = np.zeros(x.shape[1])
    coef[used] = model.coef_
    r2 = weighted_r2(y, model.predict(x[:, used]), w)
    return coef, float(model.intercept_), r2
