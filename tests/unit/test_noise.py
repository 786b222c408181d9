"""In-graph Gaussian noise (explaind.onnxgraph.noise) against its numpy reference (tests/oracles/noise.py),
run with onnxruntime.

A tiny graph takes the row seeds and returns the two integer streams and the noise; it is checked at
opsets 11, 13, 17 and 21 for exact integers, batch independence and the statistics of the normals.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from explaind.onnxgraph import noise
from explaind.onnxgraph.builder import NAMESPACE, GraphBuilder
from oracles.noise import box_muller_reference, gaussian_noise_reference, uniform_states_reference

OPSETS = (11, 13, 17, 21)
P = noise.MODULUS
EXTREME_SEEDS = np.array([0, 1, 2, P // 2, P - 3, P - 2], np.int64)


def _session(b: GraphBuilder, opset: int) -> ort.InferenceSession:
    opsets = [helper.make_opsetid("", opset)]
    graph = helper.make_graph(b.nodes, "noise", b.inputs, b.outputs, initializer=b.initializers)
    model = helper.make_model(graph, opset_imports=opsets, producer_name="explaind-tests")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


_SESSIONS: dict[tuple[int, int], ort.InferenceSession] = {}


def noise_session(opset: int, num_elements: int) -> ort.InferenceSession:
    """seed [R] -> state_1, state_2 [R, ceil(n / 2)] int64 and z [R, n] float32."""
    key = (opset, num_elements)
    if key not in _SESSIONS:
        b = GraphBuilder(opset, "noise")
        seeds = b.input("seed", TensorProto.INT64, ["rows"])
        pairs = (num_elements + 1) // 2
        state_1, state_2 = noise.uniform_states(b, seeds, pairs)
        b.output(state_1, "state_1", TensorProto.INT64, ["rows", pairs])
        b.output(state_2, "state_2", TensorProto.INT64, ["rows", pairs])
        b.output(noise.gaussian_noise(b, seeds, num_elements), "z", TensorProto.FLOAT, ["rows", num_elements])
        _SESSIONS[key] = _session(b, opset)
    return _SESSIONS[key]


def run_noise(opset: int, num_elements: int, seeds: np.ndarray) -> dict[str, np.ndarray]:
    session = noise_session(opset, num_elements)
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {NAMESPACE + "seed": np.asarray(seeds, np.int64)})
    return {name[len(NAMESPACE):]: value for name, value in zip(names, values)}


# (1) The graph computes the reference ------------------------------------------------------------


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("num_elements", [1, 2, 37, 300])
def test_graph_matches_reference(opset: int, num_elements: int) -> None:
    seeds = np.concatenate([EXTREME_SEEDS, np.random.default_rng(opset).integers(0, P, 10)])
    got = run_noise(opset, num_elements, seeds)
    state_1, state_2 = uniform_states_reference(seeds, (num_elements + 1) // 2)
    np.testing.assert_array_equal(got["state_1"], state_1)
    np.testing.assert_array_equal(got["state_2"], state_2)
    assert got["state_1"].min() >= 0 and got["state_1"].max() < P
    assert got["z"].dtype == np.float32 and got["z"].shape == (len(seeds), num_elements)
    np.testing.assert_allclose(got["z"], gaussian_noise_reference(seeds, num_elements), rtol=0, atol=1e-5)


def test_every_opset_gives_the_same_noise() -> None:
    seeds = np.arange(5, dtype=np.int64)
    first = run_noise(OPSETS[0], 300, seeds)["z"]
    for opset in OPSETS[1:]:
        np.testing.assert_allclose(run_noise(opset, 300, seeds)["z"], first, rtol=0, atol=1e-6)


def test_integer_steps_stay_below_int64_overflow() -> None:
    """Each product is of two factors below P (< 2**31), plus an addend below P: below 2**63."""
    bound = (P - 1) * (P - 1) + (P - 1)
    assert bound < 2**63 - 1
    assert max(noise.PAIR_MULTIPLIERS + (noise.SEED_MULTIPLIER, noise.SEED_OFFSET) + noise.KEY_OFFSETS) < P
    assert noise.MAX_ELEMENTS // 2 < P  # pair indices, the other factor of k * A, are below P too
    assert math.gcd(5, P - 1) == 1      # x -> x**5 permutes Z_P
    assert all(a % P for a in noise.PAIR_MULTIPLIERS + (noise.SEED_MULTIPLIER,))  # injective maps


def test_reference_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        gaussian_noise_reference(np.array([P]), 4)
    with pytest.raises(ValueError):
        gaussian_noise_reference(np.array([-1]), 4)
    with pytest.raises(ValueError):
        gaussian_noise_reference(np.array([1]), 0)
    with pytest.raises(ValueError):
        noise.gaussian_noise(GraphBuilder(13, "noise"), "seeds", 0)


# (2) A row depends on its seed alone -------------------------------------------------------------


@pytest.mark.parametrize("opset", [11, 21])
def test_row_depends_on_its_seed_alone(opset: int) -> None:
    n = 301
    alone = {int(s): run_noise(opset, n, np.array([s])) for s in (7, 123456789, P - 2)}
    batch = np.array([5, P - 2, 7, 0, 123456789, 7, 99], np.int64)
    got = run_noise(opset, n, batch)
    for row, seed in enumerate(batch):
        if int(seed) in alone:
            np.testing.assert_array_equal(got["state_1"][row], alone[int(seed)]["state_1"][0])
            np.testing.assert_array_equal(got["state_2"][row], alone[int(seed)]["state_2"][0])
            np.testing.assert_allclose(got["z"][row], alone[int(seed)]["z"][0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got["z"][2], got["z"][5])  # the same seed twice in one batch
    # No batch at all.
    empty = run_noise(opset, n, np.zeros(0, np.int64))["z"]
    assert empty.shape == (0, n)


def test_element_value_does_not_depend_on_the_element_count() -> None:
    seeds = np.array([3, 4, 5], np.int64)
    long = run_noise(13, 300, seeds)["z"]
    for n in (1, 2, 37):
        np.testing.assert_allclose(run_noise(13, n, seeds)["z"], long[:, :n], rtol=0, atol=1e-6)


def test_different_seeds_give_different_rows() -> None:
    seeds = np.concatenate([np.arange(32), P - 1 - np.arange(1, 33)])
    z = run_noise(17, 512, seeds)["z"]
    equal = (z[:, None, :] == z[None, :, :]).mean(axis=2)   # fraction of equal elements, each pair of rows
    np.fill_diagonal(equal, 0.0)
    assert equal.max() < 0.01, equal.max()


# (3) Statistics of the normals -------------------------------------------------------------------


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("first_seed", [0, 1_000_000_000])
def test_statistics_are_standard_normal(first_seed: int) -> None:
    rows, n = 64, 4096
    z = run_noise(17, n, first_seed + np.arange(rows))["z"].astype(np.float64)
    flat = z.ravel()
    mean, std = flat.mean(), flat.std()
    standard = (flat - mean) / std
    skewness, excess_kurtosis = (standard**3).mean(), (standard**4).mean() - 3.0
    assert abs(mean) < 0.01, mean
    assert abs(std - 1.0) < 0.01, std
    assert abs(skewness) < 0.05, skewness
    assert abs(excess_kurtosis) < 0.05, excess_kurtosis
    # Neighbouring elements (the cos/sin pair at even offsets, separate pairs at odd ones), lag 2,
    # and the squares of neighbours (the pair shares its radius).
    assert abs(_correlation(z[:, :-1], z[:, 1:])) < 0.02
    assert abs(_correlation(z[:, 0::2], z[:, 1::2])) < 0.02
    assert abs(_correlation(z[:, :-2], z[:, 2:])) < 0.02
    assert abs(_correlation(z[:, 0::2] ** 2, z[:, 1::2] ** 2)) < 0.02
    # Rows with consecutive seeds, element by element.
    assert abs(_correlation(z[:-1], z[1:])) < 0.02
    # Kolmogorov-Smirnov: the empirical CDF against the normal CDF.
    ordered = np.sort(flat)
    cdf = _normal_cdf(ordered)
    count = len(ordered)
    deviation = max((np.arange(1, count + 1) / count - cdf).max(), (cdf - np.arange(count) / count).max())
    assert deviation < 0.01, deviation
    # The tails are there, and bounded: |z| <= sqrt(2 ln 2**32) ~ 6.66.
    assert (np.abs(flat) > 3).mean() == pytest.approx(0.0027, abs=0.001)
    assert np.abs(flat).max() < 6.7


# (4) Finite everywhere ---------------------------------------------------------------------------


def test_extreme_seeds_are_finite() -> None:
    for opset in OPSETS:
        z = run_noise(opset, 4096, EXTREME_SEEDS)["z"]
        assert np.isfinite(z).all()


@pytest.mark.parametrize("opset", OPSETS)
def test_extreme_states_give_finite_normals(opset: int) -> None:
    """u = (state + 0.5) * 2**-31 lies in (0, 1]: state 0 is the largest radius, P - 1 rounds u to 1."""
    b = GraphBuilder(opset, "box_muller")
    s1 = b.input("s1", TensorProto.INT64, ["rows", "pairs"])
    s2 = b.input("s2", TensorProto.INT64, ["rows", "pairs"])
    b.output(noise.box_muller(b, s1, s2, 8), "z", TensorProto.FLOAT, ["rows", 8])
    session = _session(b, opset)
    states = np.array([[0, 1, P - 2, P - 1], [P - 1, 2**24, 2**24 + 1, P // 2]], np.int64)
    feeds = {NAMESPACE + "s1": states, NAMESPACE + "s2": states[::-1].copy()}
    z = session.run(None, feeds)[0]
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z, box_muller_reference(states, states[::-1], 8), rtol=0, atol=1e-5)
    radius = np.hypot(z[:, 0::2], z[:, 1::2])
    assert radius[0, 0] == pytest.approx(math.sqrt(-2 * math.log(0.5 * 2.0**-31)), rel=1e-5)  # state 0
    assert radius[0, 3] == 0.0 and radius[1, 0] == 0.0  # state P - 1: u rounds to 1, radius 0, no NaN
    reference = box_muller_reference(np.array([[0, P - 1]]), np.array([[0, P - 1]]), 4)
    assert np.isfinite(reference).all()
