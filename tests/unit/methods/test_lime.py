"""LIME: explaind.methods.lime_core and its all-at-once reference (tests/oracles/lime.py) against
sklearn and the `lime` package (values, not just shapes); the method's streamed reducer and its
parameter limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_iris, load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from explaind.methods import lime_core as lc
from oracles import lime as oracle

lime_image = pytest.importorskip("lime.lime_image")
lime_tabular = pytest.importorskip("lime.lime_tabular")
lime_discretize = pytest.importorskip("lime.discretize")


def _as_vector(local_exp, size: int) -> np.ndarray:
    v = np.zeros(size)
    for j, w in local_exp:
        v[int(j)] = w
    return v


# ---------------------------------------------------------------------------- surrogate


@pytest.mark.parametrize("alpha", [1.0, 0.01])
def test_ridge_accumulator_matches_sklearn_in_chunks(alpha):
    rng = np.random.default_rng(0)
    n, s = 1237, 17
    x = rng.integers(0, 2, (n, s)).astype(float)
    x[0] = 1
    y = x @ rng.normal(size=s) * 0.1 + 0.3 + rng.normal(scale=0.05, size=n)
    w = lc.image_kernel_weights(x.astype(bool))
    ref = Ridge(alpha=alpha, fit_intercept=True).fit(x, y, sample_weight=w)
    acc = lc.RidgeAccumulator(s, alpha)
    for start in range(0, n, 100):
        acc.add(x[start : start + 100], y[start : start + 100], w[start : start + 100])
    coef, intercept, r2 = acc.solve()
    np.testing.assert_allclose(coef, ref.coef_, atol=1e-8, rtol=0)
    assert abs(intercept - ref.intercept_) < 1e-8
    assert abs(r2 - ref.score(x, y, sample_weight=w)) < 1e-8
    coef2, intercept2, r22 = oracle.fit_surrogate(x, y, w, alpha)
    np.testing.assert_allclose(coef, coef2, atol=1e-8, rtol=0)
    assert abs(intercept - intercept2) < 1e-8 and abs(r2 - r22) < 1e-8


def test_feature_selection_semantics():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, (400, 9)).astype(float)
    x[0] = 1
    y = 0.8 * x[:, 2] - 0.5 * x[:, 5] + 0.1 * x[:, 7] + rng.normal(scale=0.01, size=400)
    w = lc.tabular_kernel_weights(x.astype(bool))
    for method in ("forward_selection", "highest_weights", "lasso_path"):
        used = oracle.select_features(x, y, w, 2, method)
        assert set(used.tolist()) == {2, 5}, method
        coef, _, _ = oracle.fit_surrogate(x, y, w, feature_selection=method, num_features=2)
        assert np.count_nonzero(coef) == 2 and coef[2] > 0 > coef[5]
    # auto = forward_selection for num_features <= 6, highest_weights otherwise
    assert (oracle.select_features(x, y, w, 3, "auto").tolist()
            == oracle.select_features(x, y, w, 3, "forward_selection").tolist())
    assert (oracle.select_features(x, y, w, 7, "auto").tolist()
            == oracle.select_features(x, y, w, 7, "highest_weights").tolist())


# ---------------------------------------------------------------------------- images


def _image() -> np.ndarray:
    """64 x 64 RGB of 4 x 4 coloured blocks with vertical stripes plus noise: quickshift with lime's
    parameters finds 15 segments (blocks), whose mean colour removes the stripes."""
    rng = np.random.default_rng(3)
    colours = rng.integers(30, 226, (4, 4, 3))
    img = np.repeat(np.repeat(colours, 16, axis=0), 16, axis=1)
    stripes = np.where((np.arange(64) // 2) % 2 == 0, 20, -20)[None, :, None]
    return np.clip(img + stripes + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)


def _image_model(images: np.ndarray) -> np.ndarray:
    """A simple function of segment colours and texture: red of the left half against green of the
    right half, blue at the top, horizontal red contrast (which mean-colour hiding removes)."""
    x = np.asarray(images, np.float64) / 255.0
    left_red = x[:, :, :32, 0].mean(axis=(1, 2))
    right_green = x[:, :, 32:, 1].mean(axis=(1, 2))
    top_blue = x[:, :24, :, 2].mean(axis=(1, 2))
    contrast = np.abs(np.diff(x[..., 0], axis=2))
    left_contrast = contrast[:, :, :31].mean(axis=(1, 2))
    bottom_contrast = contrast[:, 40:].mean(axis=(1, 2))
    z = 6 * left_red - 5 * right_green + 3 * top_blue + 10 * left_contrast - 12 * bottom_contrast - 1.0
    p = 1.0 / (1.0 + np.exp(-z))
    return np.stack([1 - p, p], axis=1)


def _run_lime_image(seed: int, num_samples: int, hide_color, captured: list | None = None):
    def fn(images):
        if captured is not None:
            captured.append(np.array(images))
        return _image_model(images)

    explainer = lime_image.LimeImageExplainer(random_state=seed)
    return explainer.explain_instance(
        _image(), fn, labels=(1,), top_labels=None, num_samples=num_samples, batch_size=250,
        random_seed=5, hide_color=hide_color,
    )


@pytest.mark.parametrize("hide_color", [None, 0])
def test_image_same_samples_match_lime_exactly(hide_color):
    captured: list[np.ndarray] = []
    exp = _run_lime_image(seed=7, num_samples=1000, hide_color=hide_color, captured=captured)
    img = _image()
    segments = lc.segment(img)
    np.testing.assert_array_equal(segments, exp.segments)
    s = int(segments.max()) + 1
    assert s >= 10
    z = oracle.sample_image_coalitions(s, 1000, np.random.RandomState(7))
    images = oracle.fill_images(img, oracle.hide_image(img, segments, hide_color), segments, z)
    np.testing.assert_array_equal(images, np.concatenate(captured))  # lime's own perturbed images
    y = _image_model(images)[:, 1]
    coef, intercept, r2 = oracle.fit_surrogate(z, y, lc.image_kernel_weights(z))
    np.testing.assert_allclose(coef, _as_vector(exp.local_exp[1], s), atol=1e-6, rtol=0)
    assert abs(intercept - exp.intercept[1]) < 1e-6
    assert abs(r2 - exp.score) < 1e-6
    acc = lc.RidgeAccumulator(s)
    for start in range(0, 1000, 64):
        sl = slice(start, start + 64)
        acc.add(z[sl], y[sl], lc.image_kernel_weights(z[sl]))
    coef2, intercept2, r22 = acc.solve()
    np.testing.assert_allclose(coef2, coef, atol=1e-8, rtol=0)
    assert abs(intercept2 - intercept) < 1e-8 and abs(r22 - r2) < 1e-8


def test_image_kernel_equals_lime_cosine_kernel():
    from sklearn.metrics import pairwise_distances

    z = oracle.sample_image_coalitions(23, 500, np.random.default_rng(2))
    d = pairwise_distances(z.astype(int), z[:1].astype(int), metric="cosine").ravel()
    np.testing.assert_allclose(lc.image_distances(z), d, atol=1e-12)
    np.testing.assert_allclose(lc.image_kernel_weights(z), np.sqrt(np.exp(-(d**2) / 0.25**2)), atol=1e-12)


@pytest.mark.parametrize("hide_color", [None, 0])
def test_image_independent_sampling_correlates(hide_color):
    exp = _run_lime_image(seed=11, num_samples=3000, hide_color=hide_color)
    img = _image()
    segments = lc.segment(img)
    s = int(segments.max()) + 1
    z = oracle.sample_image_coalitions(s, 3000, np.random.default_rng(12345))
    y = _image_model(oracle.fill_images(img, oracle.hide_image(img, segments, hide_color), segments, z))[:, 1]
    coef, _, _ = oracle.fit_surrogate(z, y, lc.image_kernel_weights(z))
    r = np.corrcoef(coef, _as_vector(exp.local_exp[1], s))[0, 1]
    print(f"image hide_color={hide_color} independent-sampling Pearson r = {r:.4f} over {s} segments")
    assert r >= 0.9


# ---------------------------------------------------------------------------- tabular


def _tabular(name: str):
    data = load_iris() if name == "iris" else load_wine()
    x, t = data.data, data.target
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, t)
    return x, model


@pytest.mark.parametrize("name", ["iris", "wine"])
def test_quartile_edges_and_bin_stats_match_lime(name):
    x, _ = _tabular(name)
    ours = lc.QuartileDiscretizer(x)
    ref = lime_discretize.QuartileDiscretizer(x, [], [str(i) for i in range(x.shape[1])])
    for f in range(x.shape[1]):
        np.testing.assert_array_equal(ours.edges[f], np.unique(np.percentile(x[:, f], [25, 50, 75])))
        np.testing.assert_array_equal(ours.means[f], ref.means[f])
        np.testing.assert_array_equal(ours.stds[f], ref.stds[f])
        np.testing.assert_array_equal(ours.mins[f], ref.mins[f])
        np.testing.assert_array_equal(ours.maxs[f], ref.maxs[f])
    np.testing.assert_array_equal(ours.discretize(x), ref.discretize(x))


@pytest.mark.parametrize("name,num_features", [("iris", 10), ("wine", 10)])
def test_tabular_same_samples_match_lime(name, num_features):
    """Same RandomState seed: the same neighbourhood as lime, then the same weights.

    wine has 13 columns, so lime's feature_selection='auto' with num_features=10 is highest_weights."""
    x, model = _tabular(name)
    instance = x[17]
    captured: list[np.ndarray] = []

    def predict(rows):
        captured.append(np.array(rows))
        return model.predict_proba(rows)

    explainer = lime_tabular.LimeTabularExplainer(x, random_state=21)
    exp = explainer.explain_instance(instance, predict, labels=(1,), num_features=num_features, num_samples=5000)
    disc = lc.QuartileDiscretizer(x)
    binary, rows = disc.sample(instance, 5000, np.random.RandomState(21), lime_degenerate_bins=True)
    np.testing.assert_allclose(rows, captured[0], atol=1e-12, rtol=0)
    ours_bins = disc.discretize(rows[1:]) == disc.discretize(instance)
    assert (binary[1:] == ours_bins).mean() > 0.99  # equal up to draws on a bin edge
    y = model.predict_proba(rows)[:, 1]
    w = lc.tabular_kernel_weights(binary)
    coef, intercept, r2 = oracle.fit_surrogate(binary, y, w, feature_selection="auto", num_features=num_features)
    np.testing.assert_allclose(coef, _as_vector(exp.local_exp[1], x.shape[1]), atol=1e-6, rtol=0)
    assert abs(intercept - exp.intercept[1]) < 1e-6
    assert abs(r2 - exp.score) < 1e-6


@pytest.mark.parametrize("name", ["iris", "wine"])
def test_tabular_independent_sampling_correlates(name):
    x, model = _tabular(name)
    instance = x[60]
    f = x.shape[1]
    explainer = lime_tabular.LimeTabularExplainer(x, random_state=3, feature_selection="none")
    exp = explainer.explain_instance(instance, model.predict_proba, labels=(1,), num_features=f, num_samples=5000)
    disc = lc.QuartileDiscretizer(x)
    binary, rows = disc.sample(instance, 5000, np.random.default_rng(999))
    y = model.predict_proba(rows)[:, 1]
    coef, _, _ = oracle.fit_surrogate(binary, y, lc.tabular_kernel_weights(binary))
    r = np.corrcoef(coef, _as_vector(exp.local_exp[1], f))[0, 1]
    print(f"tabular {name} independent-sampling Pearson r = {r:.4f} over {f} features")
    assert r >= 0.9


# ---------------------------------------------------------------------------- truncated normal


def _truncnorm_grid():
    """(q, a, b): central, one-sided, far (|z| >= 30, up to 1e10 and inf) and tiny intervals."""
    bounds = [-np.inf, -1e10, -1e3, -37, -30, -29.5, -20, -8, -5, -3, -2, -1, -0.5, -1e-3, -1e-8, 0,
              1e-8, 1e-3, 0.5, 1, 2, 3, 5, 8, 20, 29.5, 30, 37, 1e3, 1e10, np.inf]
    pairs = [(a, b) for i, a in enumerate(bounds) for b in bounds[i + 1:]]
    for c in (-30, -25, -10, -5, -1, -1e-4, 0, 1e-4, 1, 5, 10, 25, 30):
        for w in (1e-12, 1e-8, 1e-4, 1e-2, 0.1):
            pairs += [(c, c + w), (c - w, c), (c - w / 2, c + w / 2)]
    qs = [0.0, 2.0**-53, 1e-16, 1e-10, 1e-6, 1e-3, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1 - 1e-6, 1 - 2.0**-32]
    ab = np.array(pairs, np.float64)
    return np.repeat(qs, len(ab)), np.tile(ab[:, 0], len(qs)), np.tile(ab[:, 1], len(qs))


def test_truncnorm_ppf_matches_scipy_on_a_grid():
    q, a, b = _truncnorm_grid()
    ours = lc.truncnorm_ppf(q, a, b)
    ref = stats.truncnorm.ppf(q, a, b)
    assert ours.shape == q.shape and ((ours >= a) & (ours <= b)).all()
    inf = ~np.isfinite(ref)  # q = 0 with a = -inf
    assert (q[inf] == 0).all() and (a[inf] == -np.inf).all() and (ours[inf] == -np.inf).all()
    err = np.abs(np.where(inf, 0, ours) - np.where(inf, 0, ref))
    # scipy itself drifts as q -> 1 (log1p(-q) in logs: 9e-9 relative at q = 1 - 2^-32, 1e-2 at 1 - 2^-53,
    # see the high-precision values below), so the comparison stops at q = 1 - 1e-6.
    err[q > 1 - 1e-6] = 0
    # Relative 1e-10 (reached: ~6e-13, where scipy's ndtri_exp drifts beyond |x| ~ 100), plus 1e-15
    # absolute: next to x = 0 both hold Phi(x) ~ 1/2 to double precision, i.e. x to ~3e-16.
    assert (err <= 1e-10 * np.abs(ref) + 1e-15).all(), np.max(err / (np.abs(ref) + 1e-5))
    away = (np.abs(ref) >= 0.1) & (q <= 0.999)  # scipy: 7e-12 at q = 1 - 1e-6
    assert np.max(err[away] / np.abs(ref[away])) < 1e-12
    # One vectorised call equals element-by-element calls, and precomputed masses change nothing.
    some = slice(None, None, 97)
    one = [lc.truncnorm_ppf(qi, ai, bi) for qi, ai, bi in zip(q[some], a[some], b[some])]
    np.testing.assert_array_equal(np.array(one), ours[some])
    np.testing.assert_array_equal(lc.truncnorm_ppf(q, a, b, lc.truncnorm_masses(a, b)), ours)


@pytest.mark.parametrize("q,a,b,truth", [  # truth: mpmath at 60 digits (root of Phi(x) = Phi(a) + q m)
    (1 - 2.0**-53, -1e-3, np.inf, 8.292266236179605),  # scipy: 8.2095 (its log1p(-q) path, 1e-2 off)
    (1 - 2.0**-32, -1e-8, 8.0, 6.3379569297786045),  # scipy: 9e-9 off
    (1 - 2.0**-40, -2.0, 30.0, 7.050902742281477),  # scipy: 3e-7 off
    (0.01, 1000.0, 1e10, 1000.0000100503257),  # scipy: 6e-13 off (ndtri_exp)
    (0.3, -1e10, -1000.0, -1000.0012039708756),
    (0.5, -30.000000000001, -30.0, -30.000000000000497),
    (0.7, 35.0, 35.5, 35.03435437609341),
    (2.0**-53, -40.0, -38.0, -38.95412777570539),
    (0.25, -1e-10, 1e-10, -5e-11),  # x ~ 0: 4e-17 absolute (scipy: 2e-16)
    (0.9, 5.0, 5.0 + 1e-9, 5.0000000009),
    (0.1, -8.0, -7.9, -7.985576022497694),
    (1e-12, 2.0, 3.0, 2.0000000000003966),
    (0.999, -np.inf, -29.0, -29.000034459113945),
])
def test_truncnorm_ppf_against_high_precision_values(q, a, b, truth):
    np.testing.assert_allclose(lc.truncnorm_ppf(q, a, b), truth, rtol=1e-14, atol=1e-16)


def _undiscretize_scipy(disc: lc.QuartileDiscretizer, bins: np.ndarray, rng, lime_degenerate_bins: bool = False):
    """The implementation truncnorm_ppf replaced (as lime draws): one scipy.stats.truncnorm.rvs per feature."""
    out = np.array(bins, np.float64, copy=True)
    for f in disc.to_discretize:
        idx = out[:, f].astype(int)
        lo, hi = disc.mins[f][idx], disc.maxs[f][idx]
        mu, sd = disc.means[f][idx], disc.stds[f][idx]
        minz, maxz = (lo - mu) / sd, (hi - mu) / sd
        ok = minz != maxz
        val = minz.copy() if lime_degenerate_bins else lo.copy()
        if ok.any():
            val[ok] = stats.truncnorm.rvs(minz[ok], maxz[ok], loc=mu[ok], scale=sd[ok], random_state=rng)
        out[:, f] = val
    return out


def _background(name: str) -> np.ndarray:
    if name == "demo":
        return np.load(Path(lc.__file__).resolve().parents[1] / "demo" / "repository" / "tabular" / "background.npy")
    if name == "wine":
        return load_wine().data
    # ties: a constant column (degenerate bins only), small integers (bins of one value, std 1e-11,
    # so |a| or |b| up to ~1e11), a column with a heavy repeated value, and a plain normal one
    rng = np.random.default_rng(4)
    x = rng.normal(size=(150, 4))
    x[:, 0] = 2.5
    x[:, 1] = rng.integers(0, 3, 150)
    x[:100, 2] = 7.0
    return x


def _state(rng):
    return rng.get_state(legacy=False) if isinstance(rng, np.random.RandomState) else rng.bit_generator.state


@pytest.mark.parametrize("make", [np.random.RandomState, np.random.default_rng], ids=["RandomState", "Generator"])
@pytest.mark.parametrize("name", ["demo", "wine", "ties"])
def test_undiscretize_equals_the_scipy_implementation(make, name):
    x = np.asarray(_background(name), np.float64)
    disc = lc.QuartileDiscretizer(x)
    for seed in (0, 21, 12345):
        pick = np.random.default_rng(seed).integers(0, len(x), 3000)
        bins = disc.discretize(x[pick])
        for degenerate in (False, True):
            r_new, r_old = make(seed), make(seed)
            ours = disc.undiscretize(bins, r_new, lime_degenerate_bins=degenerate)
            ref = _undiscretize_scipy(disc, bins, r_old, degenerate)
            # not bit-equal: scipy's ppf runs in logs and loses up to ~1e-13 relative in x as u -> 1
            np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)
            # the same uniforms, consumed in the same order: the generators are left in the same state
            state_new, state_old = _state(r_new), _state(r_old)
            assert repr(state_new) == repr(state_old)
            assert r_new.uniform() == r_old.uniform()


# ---------------------------------------------------------------------------- streaming and memory


@pytest.mark.parametrize("make", [lambda: np.random.default_rng(3), lambda: np.random.RandomState(3)],
                         ids=["Generator", "RandomState"])
@pytest.mark.parametrize("chunk", [1, 100, 256, 5000])
def test_image_coalition_chunks_are_one_draw(make, chunk):
    s, n = 37, 1201
    rng = make()
    if isinstance(rng, np.random.RandomState):  # the draw as lime_image.data_labels makes it, at once
        expected = rng.randint(0, 2, n * s).reshape((n, s)).astype(bool)
    else:
        expected = rng.integers(0, 2, (n, s)).astype(bool)
    expected[0] = True
    streamed_rng = make()
    parts = list(lc.image_coalition_chunks(s, n, streamed_rng, chunk))
    assert all(p.dtype == bool and len(p) == chunk for p in parts[:-1])
    np.testing.assert_array_equal(np.concatenate(parts), expected)
    np.testing.assert_array_equal(oracle.sample_image_coalitions(s, n, make()), expected)
    after = rng.randint(0, 10**9) if isinstance(rng, np.random.RandomState) else rng.integers(0, 10**9)
    after_streamed = (streamed_rng.randint(0, 10**9) if isinstance(streamed_rng, np.random.RandomState)
                      else streamed_rng.integers(0, 10**9))
    assert after == after_streamed  # and the generator ends in the same state


def test_lime_reducer_on_streamed_image_chunks_equals_sklearn_ridge():
    from explaind.methods.lime import CHUNK_ROWS, LimeReducer
    from explaind.methods.superpixels import Superpixels
    from explaind.onnxgraph.variants import SCORE_OUTPUT

    s, n = 45, 3000
    labels = np.arange(64 * 64).reshape(64, 64) % s
    sp = Superpixels(labels, s, np.zeros((64, 64, 3), np.float32), "NHWC")
    beta = np.random.default_rng(0).normal(size=s)
    noise = np.random.default_rng(1)
    reducer = LimeReducer(None, None, 1.0, labels, num_features=s, kernel_width=0.3)
    sent = []
    for chunk in sp.rows(lc.image_coalition_chunks(s, n, np.random.default_rng(9), CHUNK_ROWS)):
        assert chunk["coalition"].shape == (len(chunk["row"]), sp.width)  # padded to the variant's width
        for piece in np.array_split(np.arange(len(chunk["row"])), 3):  # batches cut chunks anywhere
            codes = {k: v[piece] for k, v in chunk.items()}
            score = 1.0 / (1.0 + np.exp(-(codes["coalition"][:, :s] @ beta * 0.3))) + noise.normal(scale=0.01,
                                                                                                  size=len(piece))
            sent.append(score.astype(np.float32))
            reducer.consume(codes, {SCORE_OUTPUT: sent[-1]}, {})
    # The direct computation: all rows at once, sklearn's weighted Ridge(alpha=1).
    z = oracle.sample_image_coalitions(s, n, np.random.default_rng(9)).astype(np.float64)
    y = np.concatenate(sent).astype(np.float64)
    w = lc.image_kernel_weights(z, 0.3)
    ref = Ridge(alpha=1.0, fit_intercept=True).fit(z, y, sample_weight=w)
    coef, intercept, r2 = reducer.solve()
    np.testing.assert_allclose(coef, ref.coef_, atol=1e-8, rtol=0)
    assert abs(intercept - ref.intercept_) < 1e-8
    assert abs(r2 - ref.score(z, y, sample_weight=w)) < 1e-8
    np.testing.assert_array_equal(reducer.attribution(), coef[labels])


def test_memory_estimates_bound_the_measured_peaks():
    import tracemalloc

    s = 600
    rng = np.random.default_rng(0)
    tracemalloc.start()
    try:
        acc = lc.RidgeAccumulator(s)
        for _ in range(3):
            z = rng.integers(0, 2, (256, s)).astype(np.float32)
            acc.add(z, z.sum(axis=1) * 0.01, lc.image_kernel_weights(z))
        acc.solve()
        ridge_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ridge_peak <= lc.ridge_bytes(s)
    most = lc.max_ridge_features(1 << 30)
    assert lc.ridge_bytes(most) <= 1 << 30 < lc.ridge_bytes(most + 1)

    for features, n in ((13, 40000), (2, 60000), (60, 8000)):
        background = np.random.default_rng(1).normal(size=(100, features))
        discretizer = lc.QuartileDiscretizer(background)
        tracemalloc.start()
        try:  # what Lime._plan_tabular draws up front and keeps
            binary, samples = discretizer.sample(background[3], n, np.random.default_rng(2))
            weights = lc.tabular_kernel_weights(binary)
            rows = samples.astype(np.float32)
            del samples
            acc = lc.RidgeAccumulator(features)
            acc.add(binary[:256], rows[:256, 0], weights[:256])
            acc.solve()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak <= lc.tabular_sample_bytes(n, features), (features, n, peak)
        most = lc.max_tabular_samples(features, 1 << 30)
        assert lc.tabular_sample_bytes(most, features) <= 1 << 30 < lc.tabular_sample_bytes(most + 1, features)


def test_tabular_num_samples_over_the_memory_budget_is_refused():
    from explaind.config import Settings
    from explaind.errors import InvalidArgument
    from explaind.methods.base import ModelView
    from explaind.methods.lime import Lime
    from explaind.onnxgraph.signature import ModelSignature

    view = ModelView("tabular", ModelSignature("x", "y", (13,), "tabular", "probabilities"), np.zeros((10, 13)))
    settings = Settings(max_request_memory_bytes=100 << 20)
    most = lc.max_tabular_samples(13, 100 << 20)
    assert Lime().parameters({"num_samples": most}, view, settings, "probability")["num_samples"] == most
    with pytest.raises(InvalidArgument) as err:
        Lime().parameters({"num_samples": most + 1}, view, settings, "probability")
    assert err.value.field == "lime.num_samples"
    for words in (f"at most {most}", "13 features", "max_request_memory_bytes of 104857600", f"got {most + 1}"):
        assert words in err.value.message, err.value.message


def test_lime_partial_answer_needs_a_sample_per_feature_and_one_more():
    from explaind.methods.lime import LimeReducer
    from explaind.onnxgraph.variants import SCORE_OUTPUT

    s = 6
    reducer = LimeReducer(None, None, 1.0, np.arange(s).reshape(2, 3), num_features=s)
    z = oracle.sample_image_coalitions(s, 20, np.random.default_rng(2))
    y = z @ np.arange(1.0, s + 1) / 10
    for start in range(0, 20, 3):
        assert (reducer.partial_unavailable() == "") == (start >= s + 1), start
        reducer.consume({"coalition": z[start:start + 3]}, {SCORE_OUTPUT: y[start:start + 3].astype(np.float32)}, {})
    reducer = LimeReducer(None, None, 1.0, np.arange(s).reshape(2, 3), num_features=s)
    reducer.consume({"coalition": z[:4]}, {SCORE_OUTPUT: y[:4].astype(np.float32)}, {})
    assert reducer.partial_unavailable() == "the surrogate of 6 features needs at least 7 samples, 4 were evaluated"
    # What it then answers is the weighted ridge over the samples in.
    reducer.consume({"coalition": z[4:9]}, {SCORE_OUTPUT: y[4:9].astype(np.float32)}, {})
    first = z[:9].astype(np.float64)
    ref = Ridge(alpha=1.0).fit(first, y[:9].astype(np.float32).astype(np.float64),
                               sample_weight=lc.image_kernel_weights(first, lc.IMAGE_KERNEL_WIDTH))
    np.testing.assert_allclose(reducer.solve()[0], ref.coef_, atol=1e-8)


# ---------------------------------------------------------------------------- repeated samples, errors


@pytest.mark.parametrize("s, n", [(3, 1000), (5, 64), (9, 1201)])
def test_distinct_coalitions_are_the_draws_counted(s, n):
    """The same draws as image_coalition_chunks (the generator left in the same state), each distinct
    row once in order of first draw, with its count; the fit on them equals sklearn's on every sample."""
    rng, again = np.random.default_rng(4), np.random.default_rng(4)
    distinct, counts = lc.distinct_coalitions(s, n, rng, 100)
    every = np.concatenate(list(lc.image_coalition_chunks(s, n, again, 100)))
    assert rng.integers(0, 10**9) == again.integers(0, 10**9)
    assert counts.sum() == n and len(distinct) == len({r.tobytes() for r in every}) <= 2**s
    _, first = np.unique(every, axis=0, return_index=True)
    np.testing.assert_array_equal(distinct, every[np.sort(first)])
    for row, count in zip(distinct, counts):
        assert int((every == row).all(axis=1).sum()) == count
    y_of = lambda z: np.sin(z @ np.arange(1.0, s + 1)) + 0.1 * z[:, 0] * z[:, -1]  # deterministic "model"
    acc = lc.RidgeAccumulator(s)
    acc.add(distinct, y_of(distinct), lc.image_kernel_weights(distinct) * counts, counts)
    ref = Ridge(alpha=1.0).fit(every.astype(float), y_of(every), sample_weight=lc.image_kernel_weights(every))
    coef, intercept, r2 = acc.solve()
    np.testing.assert_allclose(coef, ref.coef_, atol=1e-9)
    assert intercept == pytest.approx(ref.intercept_, abs=1e-9) and acc.samples == n


def test_ridge_standard_errors_match_the_spread_over_draws():
    """The reported standard errors against the coefficients' spread over 200 independent draws of 400
    samples of a noisy linear game (ratio of root mean squares within 0.8..1.25), and the closed form
    sigma^2 (X^T W X + alpha I)^-1 X^T W X (...)^-1 on one draw."""
    s, n = 6, 400
    beta = np.linspace(-1, 1, s)
    fits, reported = [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        z = rng.integers(0, 2, (n, s)).astype(float)
        w = rng.uniform(0.5, 1.5, n)
        y = z @ beta + 0.3 + rng.normal(scale=0.2, size=n) / np.sqrt(w)
        acc = lc.RidgeAccumulator(s)
        acc.add(z, y, w)
        fits.append(acc.solve()[0])
        reported.append(acc.standard_errors())
    spread = np.std(np.array(fits), axis=0)
    ratio = np.sqrt(np.mean(np.square(reported), axis=0)) / spread
    assert np.all((0.8 <= ratio) & (ratio <= 1.25)), ratio
    # closed form on the last draw (centred design for the intercept)
    zc = z - np.average(z, axis=0, weights=w)
    cxx = (zc * w[:, None]).T @ zc
    ainv = np.linalg.inv(cxx + np.eye(s))
    coef, intercept, _ = acc.solve()
    resid = y - z @ coef - intercept
    sigma2 = float(w @ resid**2) / (n - s - 1)
    np.testing.assert_allclose(acc.standard_errors(), np.sqrt(np.diag(sigma2 * ainv @ cxx @ ainv)), rtol=1e-8)
    few = lc.RidgeAccumulator(s)
    few.add(z[:s + 1], y[:s + 1], w[:s + 1])
    assert np.isnan(few.standard_errors()).all()  # no degree of freedom left
