"""The leverage estimator (kernel_shap_core.LeverageCoalitions / LeverageKernelShap): its design (strata,
enumeration, pairs, no repeats, Horvitz-Thompson weights), exactness at 2^M - 2, the error against exact
Shapley values computed by enumerating every coalition, and the calibration of its standard errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from explaind.methods.kernel_shap_core import LeverageCoalitions, LeverageKernelShap, kernel_mass, leverage_nsamples


def game(m: int, seed: int = 0):
    """A non-additive game on M players: v(z) = mean over 16 baselines b of f(x_z, b_{not z})."""
    rng = np.random.default_rng(seed)
    x, background = rng.normal(size=m), rng.normal(size=(16, m))
    w = rng.normal(size=m)

    def f(rows: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(rows @ w + 0.8 * rows[:, 0] * rows[:, 1] - 0.5 * np.sin(3 * rows[:, -1]))))

    def v(masks: np.ndarray) -> np.ndarray:
        rows = np.where(masks[:, None, :], x[None, None, :], background[None, :, :])
        return f(rows.reshape(-1, m)).reshape(len(masks), -1).mean(axis=1)

    return v


def exact_shapley(v, m: int) -> np.ndarray:
    """phi_i = sum over S not holding i of |S|! (M - |S| - 1)! / M! (v(S + i) - v(S)), every coalition."""
    masks = np.array(list(itertools.product([False, True], repeat=m)))
    values = dict(zip(map(bytes, np.packbits(masks, axis=1)), v(masks)))
    phi = np.zeros(m)
    for mask in masks:
        s = int(mask.sum())
        for i in np.flatnonzero(~mask):
            plus = mask.copy()
            plus[i] = True
            weight = math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m)
            phi[i] += weight * (values[bytes(np.packbits(plus))] - values[bytes(np.packbits(mask))])
    return phi


def estimate(v, m: int, nsamples: int, seed: int, chunk: int = 7):
    stream = LeverageCoalitions(m, nsamples, np.random.default_rng(seed))
    reg = LeverageKernelShap(stream)
    start = 0
    for masks in stream.chunks(chunk):
        reg.add(np.arange(start, start + len(masks)), masks, v(masks))
        start += len(masks)
    f_x, base = float(v(np.ones((1, m), bool))[0]), float(v(np.zeros((1, m), bool))[0])
    phi = reg.solve(f_x, base)
    return phi, reg.standard_errors(f_x, base, phi), stream, f_x - base


@pytest.mark.parametrize("m, nsamples", [(9, 60), (10, 300), (13, 104), (13, 400), (8, 254)])
def test_design_pairs_without_repeats_and_kernel_mass_per_size(m, nsamples):
    stream = LeverageCoalitions(m, nsamples, np.random.default_rng(1))
    rows = np.concatenate(list(stream.chunks(64)))
    assert len(rows) == stream.total >= nsamples - 1 and stream.total <= nsamples
    keys = {bytes(np.packbits(r)) for r in rows}
    assert len(keys) == len(rows)  # without replacement
    assert rows.any(axis=1).all() and not rows.all(axis=1).any()  # proper, non-empty
    sampled = rows[stream.fixed:]
    np.testing.assert_array_equal(sampled[0::2], ~sampled[1::2])  # each unit: z then its complement
    weights = stream.weights(np.arange(len(rows)))
    mass = kernel_mass(m)
    sizes = rows.sum(axis=1)
    for s in range(1, m):  # Horvitz-Thompson: every size's weights add up to its kernel mass
        assert weights[sizes == s].sum() == pytest.approx(mass[s], rel=1e-12)
    for k in stream.enumerated:  # an enumerated stratum holds all of its coalitions
        s = stream.strata[k][0]
        assert (sizes == s).sum() == math.comb(m, s)


def test_allocation_enumerates_the_smallest_sizes_first_and_equal_shares_elsewhere():
    stream = LeverageCoalitions(13, 400, np.random.default_rng(0))
    assert [stream.strata[k][0] for k in stream.enumerated] == [1]  # 26 coalitions: covered by its share
    sampled = [int(stream.units[k]) for k in stream.sampled_strata]
    assert sum(sampled) == (400 - 26) // 2 and max(sampled) - min(sampled) <= 1  # one share per size
    assert leverage_nsamples(13) == 104 and leverage_nsamples(5) == 30  # 8M, capped at 2^M - 2


@pytest.mark.parametrize("m", [2, 3, 6, 7])
def test_every_coalition_is_exact_with_zero_standard_error(m):
    v = game(m, seed=m)
    phi, errors, stream, diff = estimate(v, m, 2**m - 2, seed=0)
    assert stream.sampled_units == 0 and stream.fixed == 2**m - 2
    np.testing.assert_allclose(phi, exact_shapley(v, m), atol=1e-12)
    np.testing.assert_array_equal(errors, np.zeros(m))
    assert phi.sum() == pytest.approx(diff, abs=1e-12)


def test_sampled_estimate_is_close_to_exact_and_its_standard_errors_are_calibrated():
    """Over 60 seeds on a 10-player game: efficiency exact, the error shrinks with nsamples, and the
    reported standard error matches the spread of the estimates (ratio within 0.75..1.35)."""
    m = 10
    v = game(m, seed=3)
    exact = exact_shapley(v, m)
    errors_at: dict[int, float] = {}
    for nsamples in (60, 240):
        estimates, reported = [], []
        for seed in range(60):
            phi, se, _, diff = estimate(v, m, nsamples, seed)
            assert phi.sum() == pytest.approx(diff, abs=1e-10)
            estimates.append(phi)
            reported.append(se)
        estimates, reported = np.array(estimates), np.array(reported)
        errors_at[nsamples] = float(np.sqrt(((estimates - exact) ** 2).mean()))
        spread = np.sqrt(((estimates - exact) ** 2).mean(axis=0))
        ratio = np.sqrt((reported ** 2).mean(axis=0)) / spread
        assert 0.75 <= np.median(ratio) <= 1.35, ratio
    assert errors_at[240] < 0.6 * errors_at[60]


def test_partial_prefix_scales_the_sampled_pairs_to_the_plan():
    """A prefix of interleaved pairs, scaled up to the pairs planned, is close to the whole estimate."""
    m = 10
    v = game(m, seed=4)
    stream = LeverageCoalitions(m, 400, np.random.default_rng(2))
    reg = LeverageKernelShap(stream)
    rows = np.concatenate(list(stream.chunks(1000)))
    used = stream.fixed + 2 * (stream.sampled_units * 3 // 4)
    reg.add(np.arange(used), rows[:used], v(rows[:used]))
    f_x, base = float(v(np.ones((1, m), bool))[0]), float(v(np.zeros((1, m), bool))[0])
    part = reg.solve(f_x, base)
    reg.add(np.arange(used, len(rows)), rows[used:], v(rows[used:]))
    whole = reg.solve(f_x, base)
    assert np.abs(part - whole).max() < 0.25 * np.abs(whole).max()
    assert np.abs(part - exact_shapley(v, m)).max() < 0.25 * np.abs(whole).max()



def test_normal_equations_singular_to_working_precision_get_the_minimum_norm_answer():
    """A coalition design that leaves the normal equations singular up to rounding (two features never
    separated, with Gram sums rounded differently) made the plain solve answer ~1e14 on the tabular demo
    at 26 coalitions; the fallback gives the minimum-norm solution, and regular systems are unchanged."""
    from explaind.methods.kernel_shap_core import solve_or_least_squares

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a = q @ np.diag([3.0, 2.0, 1.0, 0.5, 1e-17]) @ q.T  # one direction singular to rounding
    b = a @ np.arange(1.0, 6.0) + 1e-3 * q[:, 4]  # with a component along it, as rounding leaves one
    assert np.abs(np.linalg.solve(a, b)).max() > 1e10  # what the plain solve gives
    got = solve_or_least_squares(a, b)
    expected = np.linalg.pinv(a, rcond=1e-10) @ b
    np.testing.assert_allclose(got, expected, atol=1e-8)
    assert np.abs(got).max() < 10
    regular = q @ np.diag([3.0, 2.0, 1.0, 0.5, 0.1]) @ q.T
    np.testing.assert_allclose(solve_or_least_squares(regular, b), np.linalg.solve(regular, b), rtol=1e-12)
