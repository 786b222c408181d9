"""Kernel SHAP: the numerical core (explaind.methods.kernel_shap_core) and its all-at-once reference
(tests/oracles/kernel_shap.py) against shap.KernelExplainer and closed forms; the method's parameter
limits; the method in process on a linear ONNX model."""

from __future__ import annotations

import numpy as np
import pytest

from explaind.methods.kernel_shap_core import (
    CoalitionStream,
    KernelShapAccumulator,
    StreamingKernelShap,
    default_nsamples,
    max_stream_nsamples,
    stream_bytes,
)
from explaind.methods.kernel_shap import KernelShap
from oracles.kernel_shap import coalition_inputs, coalition_values, sample_coalitions, shapley_kernel_weight, solve

from _linear import linear_score, served_linear
from inprocess import explain

shap = pytest.importorskip("shap")


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def linear_model(m: int, seed: int = 0):
    w = np.random.default_rng(seed).normal(size=m)
    return w, (lambda X: np.asarray(X) @ w + 0.7)


def nonlinear_model(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X)
    return X[:, 0] * X[:, 1] + np.sin(X[:, 2]) * X[:, -1] + _sigmoid(X[:, 3] - X[:, 4]) + 0.3 * X[:, 5] ** 2


def prob_model(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X)
    return _sigmoid(0.8 * X[:, 0] * X[:, 1] - X[:, 2] + 0.5 * np.tanh(X[:, 3] + X[:, -1]))


def two_output_model(X: np.ndarray) -> np.ndarray:
    return np.stack([nonlinear_model(X), np.asarray(X) @ np.linspace(-1, 1, np.shape(X)[1])], axis=1)


def data(m: int, n_bg: int = 30, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_bg, m)), rng.normal(size=m) * 1.5


def ours(f, x, bg, nsamples, rng=None, bg_weights=None, **kw):
    m = x.shape[0]
    masks, weights = sample_coalitions(m, nsamples, rng if rng is not None else np.random.default_rng(0))
    bw = np.ones(bg.shape[0]) if bg_weights is None else bg_weights
    values = coalition_values(f(coalition_inputs(x, bg, masks)), bw)
    f_x = f(x[None, :])[0]
    base = np.tensordot(bw / bw.sum(), f(bg), axes=(0, 0))
    return solve(masks, weights, values, f_x, base, **kw), f_x, base, (masks, weights, values)


def theirs(f, x, bg, nsamples, link="identity", l1_reg=False, seed=None):
    explainer = shap.KernelExplainer(f, bg, link=link)
    if seed is not None:
        np.random.seed(seed)
    phi = np.asarray(explainer.shap_values(x[None, :], nsamples=nsamples, l1_reg=l1_reg, silent=True))
    return phi[0], explainer


def assert_efficient(phi, f_x, base, link="identity"):
    g = (lambda p: np.log(p / (1 - p))) if link == "logit" else (lambda a: a)
    np.testing.assert_allclose(np.sum(phi, axis=0), g(np.asarray(f_x)) - g(np.asarray(base)), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- kernel and sampling


def test_shapley_kernel_weight_formula():
    assert shapley_kernel_weight(4, 1) == pytest.approx(3 / (4 * 1 * 3))
    assert shapley_kernel_weight(10, 5) == pytest.approx(9 / (252 * 25))
    with pytest.raises(ValueError):
        shapley_kernel_weight(4, 0)
    with pytest.raises(ValueError):
        shapley_kernel_weight(4, 4)


@pytest.mark.parametrize("m", [2, 3, 4, 5, 8, 11])
def test_exact_enumeration_covers_every_coalition_with_kernel_weights(m):
    masks, weights = sample_coalitions(m, 2**m + 100, np.random.default_rng(0))
    assert masks.shape == (2**m - 2, m) and masks.dtype == bool
    assert len({row.tobytes() for row in masks}) == 2**m - 2
    sizes = masks.sum(axis=1)
    assert sizes.min() >= 1 and sizes.max() <= m - 1
    kernel = np.array([shapley_kernel_weight(m, int(s)) for s in sizes])
    np.testing.assert_allclose(weights, kernel / kernel.sum(), rtol=1e-12)
    assert weights.sum() == pytest.approx(1.0)


def test_default_nsamples():
    assert default_nsamples(4) == 14
    assert default_nsamples(12) == 24 + 2048


def test_exact_masks_match_shap_order_and_weights():
    m = 6
    bg, x = data(m)
    _, explainer = theirs(nonlinear_model, x, bg, 2**m)
    masks, weights = sample_coalitions(m, 2**m, np.random.default_rng(0))
    np.testing.assert_array_equal(masks, explainer.maskMatrix.astype(bool))
    np.testing.assert_allclose(weights, explainer.kernelWeights, rtol=1e-14)


def test_sampling_branch_structure_matches_shap():
    m, nsamples = 12, 500
    bg, x = data(m)
    _, explainer = theirs(nonlinear_model, x, bg, nsamples, seed=0)
    masks, weights = sample_coalitions(m, nsamples, np.random.default_rng(0))
    assert masks.shape == (nsamples, m)
    assert len({row.tobytes() for row in masks}) == nsamples
    # the completely enumerated sizes are identical to shap's rows, order and weights included
    n_fixed = 2 * m  # size 1 and its complements fit the budget, size 2 does not
    np.testing.assert_array_equal(masks[:n_fixed], explainer.maskMatrix[:n_fixed].astype(bool))
    np.testing.assert_allclose(weights[:n_fixed], explainer.kernelWeights[:n_fixed], rtol=1e-14)
    assert not np.allclose(weights[n_fixed:], weights[n_fixed])  # sampled part is reweighted
    np.testing.assert_allclose(weights.sum(), explainer.kernelWeights.sum(), rtol=1e-12)
    # sampled rows of the paired sizes come with their complements (size M/2 is unpaired)
    sampled = masks[n_fixed:]
    present = {row.tobytes() for row in sampled}
    paired = [row for row in sampled[:-1] if row.sum() != m // 2]
    assert paired and all((~row).tobytes() in present for row in paired)


def test_coalition_inputs_and_values():
    x = np.array([1.0, 2.0, 3.0])
    bg = np.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
    masks = np.array([[True, False, True], [False, True, False]])
    rows = coalition_inputs(x, bg, masks)
    np.testing.assert_array_equal(
        rows, [[1, 20, 3], [1, 50, 3], [10, 2, 30], [40, 2, 60]]
    )
    v = coalition_values(rows.sum(axis=1), np.array([1.0, 3.0]))
    np.testing.assert_allclose(v, [(24 + 3 * 54) / 4, (42 + 3 * 102) / 4])
    v2 = coalition_values(np.stack([rows.sum(axis=1), rows[:, 0]], axis=1), np.ones(2))
    assert v2.shape == (2, 2)
    np.testing.assert_allclose(v2[:, 1], [1.0, 25.0])


# --------------------------------------------------------------------------- exact values


@pytest.mark.parametrize("m", [3, 6, 10])
def test_linear_model_closed_form(m):
    bg, x = data(m, n_bg=40)
    w, f = linear_model(m)
    phi, f_x, base, _ = ours(f, x, bg, 2**m)
    np.testing.assert_allclose(phi, w * (x - bg.mean(axis=0)), rtol=1e-9, atol=1e-10)
    assert_efficient(phi, f_x, base)


@pytest.mark.parametrize("m", [6, 8, 10])
def test_exact_matches_shap_nonlinear(m):
    bg, x = data(m, n_bg=25, seed=m)
    phi, f_x, base, _ = ours(nonlinear_model, x, bg, 2**m)
    ref, _ = theirs(nonlinear_model, x, bg, 2**m)
    np.testing.assert_allclose(phi, ref, rtol=0, atol=1e-8)
    assert_efficient(phi, f_x, base)


def test_exact_matches_shap_linear():
    m = 7
    bg, x = data(m, n_bg=50)
    _, f = linear_model(m, seed=3)
    phi, f_x, base, _ = ours(f, x, bg, 2**m)
    np.testing.assert_allclose(phi, theirs(f, x, bg, 2**m)[0], rtol=0, atol=1e-8)
    assert_efficient(phi, f_x, base)


def test_multi_output_matches_shap():
    m = 6
    bg, x = data(m, n_bg=20)
    phi, f_x, base, _ = ours(two_output_model, x, bg, 2**m)
    ref, _ = theirs(two_output_model, x, bg, 2**m)
    assert phi.shape == (m, 2)
    np.testing.assert_allclose(phi, ref.reshape(m, 2), rtol=0, atol=1e-8)
    assert_efficient(phi, f_x, base)


def test_kmeans_background_weights_match_shap():
    m = 6
    bg, x = data(m, n_bg=50)
    summary = shap.kmeans(bg, 7)
    phi, f_x, base, _ = ours(nonlinear_model, x, summary.data, 2**m, bg_weights=summary.weights)
    explainer = shap.KernelExplainer(nonlinear_model, summary)
    ref = explainer.shap_values(x[None, :], nsamples=2**m, l1_reg=False, silent=True)[0]
    np.testing.assert_allclose(phi, ref, rtol=0, atol=1e-8)
    assert base == pytest.approx(explainer.expected_value, abs=1e-12)
    assert_efficient(phi, f_x, base)


def test_logit_link_matches_shap():
    m = 7
    bg, x = data(m, n_bg=30, seed=5)
    phi, f_x, base, _ = ours(prob_model, x, bg, 2**m, link="logit")
    ref, explainer = theirs(prob_model, x, bg, 2**m, link="logit")
    np.testing.assert_allclose(phi, ref, rtol=0, atol=1e-8)
    assert_efficient(phi, f_x, base, link="logit")
    assert np.sum(phi) == pytest.approx(np.log(f_x / (1 - f_x)) - explainer.expected_value, abs=1e-10)


def test_single_feature():
    x = np.array([2.0])
    bg = np.array([[0.0], [1.0]])
    phi, f_x, base, _ = ours(lambda X: 3 * np.asarray(X)[:, 0], x, bg, 10)
    np.testing.assert_allclose(phi, [6.0 - 1.5])


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_accumulator_chunks_equal_batch(chunk):
    m = 8
    bg, x = data(m, n_bg=20)
    phi, f_x, base, (masks, weights, values) = ours(two_output_model, x, bg, 2**m)
    acc = KernelShapAccumulator(m)
    order = np.random.default_rng(chunk).permutation(len(masks))  # arrival order does not matter
    for start in range(0, len(masks), chunk):
        idx = order[start : start + chunk]
        acc.add(masks[idx], weights[idx], values[idx])
    np.testing.assert_allclose(acc.solve(f_x, base), phi, rtol=1e-10, atol=1e-12)
    assert_efficient(acc.solve(f_x, base), f_x, base)


def test_accumulator_irregular_chunks_sampled_logit():
    m = 12
    bg, x = data(m, n_bg=20)
    phi, f_x, base, (masks, weights, values) = ours(prob_model, x, bg, 300, link="logit")
    acc = KernelShapAccumulator(m, link="logit")
    cuts = [0, 1, 5, 50, 51, 200, 300]
    for a, b in zip(cuts[:-1], cuts[1:]):
        acc.add(masks[a:b], weights[a:b], values[a:b])
    np.testing.assert_allclose(acc.solve(f_x, base), phi, rtol=1e-10, atol=1e-12)
    assert acc.count == 300 and not acc._rows  # statistics only, no rows without l1


def test_accumulator_with_l1_keeps_rows_and_matches_batch():
    m = 8
    bg, x = data(m, n_bg=20)
    phi, f_x, base, (masks, weights, values) = ours(nonlinear_model, x, bg, 2**m, l1_reg="num_features(3)")
    acc = KernelShapAccumulator(m, l1_reg="num_features(3)")
    for start in range(0, len(masks), 50):
        acc.add(masks[start : start + 50], weights[start : start + 50], values[start : start + 50])
    assert len(acc._rows) > 0
    np.testing.assert_allclose(acc.solve(f_x, base), phi, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- sampling vs shap


def test_sampling_branch_close_to_shap():
    m, nsamples = 12, 500
    bg, x = data(m, n_bg=30, seed=7)
    phi, f_x, base, _ = ours(nonlinear_model, x, bg, nsamples, rng=np.random.default_rng(0))
    ref, _ = theirs(nonlinear_model, x, bg, nsamples, seed=0)
    assert np.corrcoef(phi, ref)[0, 1] > 0.95
    assert_efficient(phi, f_x, base)
    assert np.sum(ref) == pytest.approx(np.sum(phi), abs=1e-10)


def test_sampling_branch_linear_is_exact():
    # Kernel SHAP recovers a linear model exactly from any full-rank design
    m = 12
    bg, x = data(m, n_bg=30)
    w, f = linear_model(m)
    phi, f_x, base, _ = ours(f, x, bg, 200, rng=np.random.default_rng(3))
    np.testing.assert_allclose(phi, w * (x - bg.mean(axis=0)), rtol=1e-8, atol=1e-9)
    assert_efficient(phi, f_x, base)


# --------------------------------------------------------------------------- l1 feature selection


def sparse_model(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X)
    return 2.0 * X[:, 1] - 3.0 * X[:, 4] + np.sin(X[:, 6]) * 1.5 + 0.01 * X[:, 0] * X[:, 2]


@pytest.mark.parametrize("l1_reg", ["num_features(3)", "aic", "bic"])
def test_l1_selection_matches_shap(l1_reg):
    m = 8
    bg, x = data(m, n_bg=30, seed=11)
    phi, f_x, base, _ = ours(sparse_model, x, bg, 2**m, l1_reg=l1_reg)
    ref, _ = theirs(sparse_model, x, bg, 2**m, l1_reg=l1_reg)
    np.testing.assert_allclose(phi, ref, rtol=0, atol=1e-8)
    assert_efficient(phi, f_x, base)
    if l1_reg == "num_features(3)":
        assert set(np.flatnonzero(phi)) == {1, 4, 6}


def test_l1_sampled_selects_relevant_features():
    m = 12
    bg, x = data(m, n_bg=30, seed=11)
    phi, f_x, base, _ = ours(sparse_model, x, bg, 500, l1_reg="num_features(3)")
    assert set(np.flatnonzero(phi)) == {1, 4, 6}
    assert_efficient(phi, f_x, base)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        KernelShapAccumulator(3, link="probit")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        KernelShapAccumulator(3, l1_reg="auto")
    acc = KernelShapAccumulator(3)
    with pytest.raises(ValueError):
        acc.add(np.ones((2, 4), bool), np.ones(2), np.ones(2))
    with pytest.raises(ValueError):
        coalition_values(np.ones(7), np.ones(2))


# --------------------------------------------------------------------------- lazy coalition stream


# sample_coalitions as it was when it drew all rows at once (before CoalitionStream): (M, nsamples, seed,
# rows, sha256 of the packed masks, sum_i (i + 1) w_i, the generator's next integers(0, 2**31) afterwards).
# (5, 29, 252) is a case where shap's 4 nsamples size draws run out before nsamples distinct rows.
SEEDED_COALITIONS = [
    (2, 1, 0, 1, "76be8b528d0075f7", 1.0, 1746484540),
    (4, 12, 1, 12, "92798f3f1a32ba9e", 5.999999999999999, 1556474546),
    (5, 29, 2, 29, "a0174c8f8c9faa5e", 11.11090909090909, 923318910),
    (5, 29, 252, 28, "cd3931d7fc8b99eb", 10.826315789473686, 1009811400),
    (6, 64, 0, 62, "59a5ac9124f81956", 20.11313868613139, 1826701615),
    (8, 100, 3, 100, "4d4a5ad666093e26", 32.82166654893928, 1693873125),
    (12, 500, 0, 500, "2ea5c21260893593", 166.04421106402933, 140705225),
    (12, 2000, 4, 2000, "01ca0173c98da4b9", 439.1606007646095, 570085615),
    (40, 3000, 5, 3000, "6bd2c9f7c44be782", 1169.8973686464574, 1221386052),
    (300, 5000, 6, 5000, "d11d54b3636cb0e4", 2401.0368430197896, 367272963),
]


@pytest.mark.parametrize("m, nsamples, seed, rows, digest, fingerprint, after", SEEDED_COALITIONS)
def test_seeded_coalitions_are_unchanged(m, nsamples, seed, rows, digest, fingerprint, after):
    import hashlib

    rng = np.random.default_rng(seed)
    masks, weights = sample_coalitions(m, nsamples, rng)
    assert masks.shape == (rows, m) and masks.dtype == bool
    assert hashlib.sha256(np.packbits(masks, axis=1).tobytes()).hexdigest()[:16] == digest
    assert float(np.dot(weights, np.arange(1, rows + 1))) == pytest.approx(fingerprint, rel=1e-13)
    assert int(rng.integers(0, 2**31)) == after  # the generator ends where it did


@pytest.mark.parametrize("m, nsamples, seed", [(5, 29, 252), (5, 29, 2), (8, 100, 3), (12, 2000, 4), (40, 3000, 5)])
@pytest.mark.parametrize("chunk", [1, 7, 512])
def test_stream_chunks_are_sample_coalitions(m, nsamples, seed, chunk):
    masks, weights = sample_coalitions(m, nsamples, np.random.default_rng(seed))
    stream = CoalitionStream(m, nsamples, np.random.default_rng(seed))
    assert stream.total == nsamples  # known before drawing: shap's rows, padded when its draws run out
    parts = list(stream.chunks(chunk))
    assert all(len(p) == chunk for p in parts[:-1]) and sum(len(p) for p in parts) == stream.total
    drawn = np.concatenate(parts)
    assert stream.real_rows == len(masks)
    np.testing.assert_array_equal(drawn[: len(masks)], masks)
    assert drawn[len(masks):].all()  # padding: every player present, weight 0
    all_weights = stream.weights(np.arange(stream.total))
    np.testing.assert_array_equal(all_weights[: len(masks)], weights)
    assert not all_weights[len(masks):].any()
    with pytest.raises(RuntimeError):
        next(stream.chunks(chunk))


def _stream_and_deliver(m, nsamples, seed, f, link="identity", l1_reg=None, chunk=64, lag=3, order_seed=0):
    """Draw chunk by chunk and deliver each chunk's values `lag` chunks later, in a shuffled order and in
    pieces, as the engine does; returns the streamed phi and the batch one from sample_coalitions."""
    x = np.linspace(-1.0, 1.5, m)
    bg = np.linspace(0.5, -0.5, m)[None, :]
    stream = CoalitionStream(m, nsamples, np.random.default_rng(seed))
    reg = StreamingKernelShap(stream, link, l1_reg)
    repeats_after_delivery = []
    inner = stream.on_repeat

    def spy(row, mask):
        if reg._in[row]:
            repeats_after_delivery.append(row)
        inner(row, mask)

    stream.on_repeat = spy
    shuffle = np.random.default_rng(order_seed)
    waiting: list[tuple[np.ndarray, np.ndarray]] = []
    start = 0

    def deliver(ids, masks):
        pieces = np.array_split(shuffle.permutation(len(ids)), 3)
        for piece in pieces:
            reg.add(ids[piece], masks[piece], f(np.where(masks[piece], x, bg)))

    for masks in stream.chunks(chunk):
        waiting.append((np.arange(start, start + len(masks)), masks))
        start += len(masks)
        if len(waiting) > lag:
            deliver(*waiting.pop(0))
    for ids, masks in waiting:
        deliver(ids, masks)
    f_x, base = f(x[None])[0], f(bg)[0]
    masks, weights = sample_coalitions(m, nsamples, np.random.default_rng(seed))
    batch = solve(masks, weights, f(np.where(masks, x, bg)), f_x, base, l1_reg=l1_reg, link=link)
    return reg.solve(f_x, base), batch, f_x, base, repeats_after_delivery


@pytest.mark.parametrize("m, nsamples, seed", [(12, 2000, 4), (9, 300, 1), (30, 800, 2), (5, 29, 252)])
def test_streaming_kernel_shap_equals_batch_solve(m, nsamples, seed):
    def small_model(X):
        return X[:, 0] * X[:, 1] + np.sin(X[:, 2]) + X[:, -1] ** 2

    phi, batch, f_x, base, late = _stream_and_deliver(m, nsamples, seed, nonlinear_model if m >= 6 else small_model)
    np.testing.assert_allclose(phi, batch, rtol=1e-10, atol=1e-12)
    assert_efficient(phi, f_x, base)
    if (m, nsamples) == (12, 2000):
        assert late  # draws repeated rows whose values were already in: their weight grew afterwards


def test_streaming_kernel_shap_logit_two_outputs_and_l1():
    phi, batch, f_x, base, _ = _stream_and_deliver(12, 700, 3, prob_model, link="logit", chunk=16, lag=5)
    np.testing.assert_allclose(phi, batch, rtol=1e-10, atol=1e-12)
    assert_efficient(phi, f_x, base, link="logit")
    phi, batch, *_ = _stream_and_deliver(12, 700, 3, two_output_model, chunk=100, lag=1)
    assert phi.shape == (12, 2)
    np.testing.assert_allclose(phi, batch, rtol=1e-10, atol=1e-12)
    for l1 in ("num_features(3)", "aic"):
        phi, batch, f_x, base, _ = _stream_and_deliver(12, 900, 5, sparse_model, l1_reg=l1, chunk=50, lag=2)
        np.testing.assert_allclose(phi, batch, rtol=1e-9, atol=1e-10)
        assert_efficient(phi, f_x, base)


def test_stream_bytes_bounds_the_measured_memory():
    import importlib
    import tracemalloc

    for module in ("sklearn.linear_model", "sklearn.pipeline", "sklearn.preprocessing"):
        importlib.import_module(module)  # imported by the l1 selection; not part of a request's memory

    for m, nsamples, l1 in ((200, 20000, None), (60, 4000, "aic"), (13, 20000, "num_features(10)")):
        beta = np.random.default_rng(0).normal(size=m)
        tracemalloc.start()
        try:
            stream = CoalitionStream(m, nsamples, np.random.default_rng(1))
            reg = StreamingKernelShap(stream, "identity", l1)
            start = 0
            for masks in stream.chunks(512):
                for a in range(0, len(masks), 64):
                    reg.add(np.arange(start + a, start + min(a + 64, len(masks))), masks[a : a + 64],
                            masks[a : a + 64] @ beta)
                start += len(masks)
            reg.solve(1.0, 0.0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak <= stream_bytes(m, nsamples, l1 is not None), (m, nsamples, l1, peak)
    for m, l1 in ((300, False), (300, True), (13, True), (2, False)):
        most = max_stream_nsamples(m, l1, 1 << 30)
        assert stream_bytes(m, most, l1) <= 1 << 30
        if m > 30:
            assert stream_bytes(m, most + 1, l1) > 1 << 30
    assert stream_bytes(2, 10**9, True) == stream_bytes(2, 2, True)  # 2 players: at most 2 coalitions


def test_tabular_nsamples_over_the_memory_budget_is_refused():
    from explaind.config import Settings
    from explaind.errors import InvalidArgument
    from explaind.methods.base import ModelView
    from explaind.methods.kernel_shap import KernelShap
    from explaind.onnxgraph.signature import ModelSignature

    view = ModelView("tabular", ModelSignature("x", "y", (40,), "tabular", "probabilities"), np.zeros((5, 40)))
    settings = Settings()
    most = max_stream_nsamples(40, True, settings.max_request_memory_bytes)  # l1_reg num_features(10) by default
    shap_scheme = {"estimator": "shap"}  # its default l1_reg keeps the rows; the leverage estimator's is none
    assert KernelShap().parameters({"nsamples": most, **shap_scheme}, view, settings, "probability")["l1_reg"] == \
        "num_features(10)"
    with pytest.raises(InvalidArgument) as err:
        KernelShap().parameters({"nsamples": most + 1, **shap_scheme}, view, settings, "probability")
    assert err.value.field == "kernel_shap.nsamples"
    for words in (f"at most {most} for the model's 40 features", "l1_reg num_features(10)",
                  "max_request_memory_bytes of 1073741824", f"got {most + 1}"):
        assert words in err.value.message, err.value.message
    # without l1_reg only a dedup key per coalition stays: the row budget binds first
    assert KernelShap().parameters({"nsamples": 399_998, "l1_reg": "none"}, view, settings, "probability")["nsamples"] == 399_998


def test_preview_without_selection_is_the_unregularised_solve():
    """solve(select=False), used for partial maps, skips the l1 selection: it equals the batch solve
    without l1_reg, while solve() keeps the selection (and differs when it drops features)."""
    m, nsamples, seed = 12, 600, 3
    x = np.linspace(-1.0, 1.5, m)
    bg = np.linspace(0.5, -0.5, m)[None, :]
    stream = CoalitionStream(m, nsamples, np.random.default_rng(seed))
    reg = StreamingKernelShap(stream, "identity", "num_features(3)")
    start = 0
    for masks in stream.chunks(64):
        reg.add(np.arange(start, start + len(masks)), masks, nonlinear_model(np.where(masks, x, bg)))
        start += len(masks)
    f_x, base = nonlinear_model(x[None])[0], nonlinear_model(bg)[0]
    masks, weights = sample_coalitions(m, nsamples, np.random.default_rng(seed))
    values = nonlinear_model(np.where(masks, x, bg))
    plain = solve(masks, weights, values, f_x, base, l1_reg=None)
    selected = solve(masks, weights, values, f_x, base, l1_reg="num_features(3)")
    np.testing.assert_allclose(reg.solve(f_x, base, select=False), plain, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(reg.solve(f_x, base), selected, rtol=1e-10, atol=1e-12)
    assert np.count_nonzero(selected) <= 3 < np.count_nonzero(plain)


def test_kernel_shap_with_one_feature_gives_f_x_minus_the_base_value():
    """One player has no proper coalition to sample: phi is f(x) - E[f(background)] exactly (not 0)."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=1).astype(np.float32)
    background = rng.normal(size=(8, 1)).astype(np.float32)
    served, weights = served_linear("tab1", (1,), 3, layout="tabular")
    result, params = explain(KernelShap(), {}, served, x, 2, kind="tabular", background=background)
    base = np.mean([linear_score(weights, row, 2, "probability") for row in background])
    np.testing.assert_allclose(result.attribution, [linear_score(weights, x, 2, "probability") - base], rtol=1e-4,
                               atol=1e-6)


# Partial answers (allow_partial) -----------------------------------------------------------------

@pytest.mark.parametrize("l1_reg", [None, "num_features(5)"])
@pytest.mark.parametrize("used, beyond", [(40, 300), (700, 0), (700, 1000)])
def test_partial_solve_is_the_regression_over_the_rows_used_with_their_mass_renormalised(l1_reg, used, beyond):
    """What a deadline leaves: the first `used` rows folded in, `beyond` more drawn (in flight) but not.
    The answer is the weighted regression over the rows used, enumerated ones with their kernel weight,
    sampled ones with their draw counts so far scaled so that all of them carry the kernel mass left
    (1 minus the enumerated weights): not the mass over every draw, which rows never used would dilute."""
    m, nsamples, seed = 12, 2000, 8
    x = np.linspace(-1.0, 1.5, m)
    bg = np.linspace(0.5, -0.5, m)[None, :]
    stream = CoalitionStream(m, nsamples, np.random.default_rng(seed))
    reg = StreamingKernelShap(stream, "identity", l1_reg)
    chunks, have = [], 0
    for masks in stream.chunks(50):
        chunks.append(masks)
        have += len(masks)
        if have >= used + beyond:
            break
    masks = np.concatenate(chunks)[:used]
    values = nonlinear_model(np.where(masks, x, bg))
    reg.add(np.arange(used), masks, values)
    f_x, base = nonlinear_model(x[None])[0], nonlinear_model(bg)[0]
    ids = np.arange(used)
    fixed = ids < stream.fixed
    weights = np.zeros(used)
    weights[fixed] = stream.fixed_weights(ids[fixed])
    mass = 1.0 - stream.fixed_weights(np.arange(stream.fixed)).sum()
    counts = stream.counts[ids[~fixed] - stream.fixed]
    if counts.size:
        weights[~fixed] = counts * mass / counts.sum()
    expected = solve(masks, weights, values, f_x, base, l1_reg=l1_reg)
    np.testing.assert_allclose(reg.solve(f_x, base), expected, rtol=1e-8, atol=1e-10)
    assert (used > stream.fixed) == bool(counts.size) and stream.fixed < 700  # both kinds of rows are tried


def test_partial_solve_of_every_row_is_the_complete_solve():
    m, nsamples, seed = 12, 600, 3
    x = np.linspace(-1.0, 1.5, m)
    bg = np.linspace(0.5, -0.5, m)[None, :]
    stream = CoalitionStream(m, nsamples, np.random.default_rng(seed))
    reg = StreamingKernelShap(stream, "identity")
    start = 0
    for masks in stream.chunks(64):
        reg.add(np.arange(start, start + len(masks)), masks, nonlinear_model(np.where(masks, x, bg)))
        start += len(masks)
    assert reg.sampled_scale() == stream.sampled_scale()  # every draw belongs to a row in


def test_kernel_shap_partial_answer_needs_coalitions_of_full_rank():
    from explaind.methods.kernel_shap import KernelShapReducer
    from explaind.onnxgraph.variants import SCORE_OUTPUT

    m = 6
    stream = CoalitionStream(m, 62, np.random.default_rng(0))  # all 2^6 - 2, sizes 1 and 5 first
    reducer = KernelShapReducer(stream, "identity", None, "mask")
    assert reducer.partial_unavailable() == "f(x) and the base value were not evaluated"
    rows = np.concatenate([np.stack([np.ones(m, bool), np.zeros(m, bool)])] + list(stream.chunks(62)))

    def fold(start, stop):
        masks = rows[start:stop]
        values = masks.astype(np.float64) @ np.arange(1.0, m + 1) + 0.5 * masks[:, 0] * masks[:, 1]
        reducer.consume({"row": np.arange(start, stop), "mask": masks.astype(np.float32)},
                        {SCORE_OUTPUT: values.astype(np.float32)}, {})

    fold(0, 2 + 6)  # f(x), the base and 3 singletons with their complements: 3 of the 5 free values
    assert reducer.partial_unavailable() == ("the 6 coalitions evaluated determine 3 of the 5 free Shapley "
                                             "values of 6 players")
    fold(8, 2 + 12)  # every singleton and its complement
    assert reducer.partial_unavailable() == ""
    phi = reducer.phi()
    assert phi.sum() == pytest.approx(reducer.f_x - reducer.base, abs=1e-5)  # efficiency
