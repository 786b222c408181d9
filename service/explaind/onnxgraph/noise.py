"""Gaussian noise made in the graph from one integer seed per row (SmoothGrad's x + sigma * N(0, 1)).

Why: a row's code stays one int64 instead of a full noise tensor, and the noise must be a pure
function of (row seed, element index): the same whatever batch the row lands in or whatever rows sit
beside it, at every opset from 11 to 21 and on every execution provider. So no RandomNormal (its
stream depends on the provider and the batch), no BitwiseXor (opset 18+), no BitShift (unsigned
only): only int64 Mul/Add/Mod, Range, Cast and float Log/Abs/Sqrt/Cos/Sin/Mul, whose results are
exact (integers) or IEEE-rounded up to an ulp (log, cos, sin).

Construction, all integers int64 in [0, P), P = 2**31 - 1 (prime), every product below 2**62:

* row keys: r = (seed * B + C) mod P, then twelve times r = (r**5 + D_j) mod P, each value a key.
  x -> x**5 is a permutation of Z_P because gcd(5, P - 1) = 1, so distinct seeds get distinct keys,
  and the keys are far from affine in the seed (consecutive seeds give unrelated rows).
* element pair k = 0 .. ceil(n / 2) - 1, for two streams t = 1, 2 with their own six keys:
  x = (k * A_t + key_0) mod P                 (distinct k, distinct x)
  x = (x**5 + key_1) mod P                    (a permutation: still no collisions within a row)
  4 times: x = (x * x + key_j) mod P          (non-linear mixing; the degree in k becomes 80)
  A purely affine map of k (an LCG / Weyl sequence) puts consecutive outputs on a few hyperplanes,
  and a polynomial of degree d ties d + 2 consecutive outputs by binomial coefficients, so the
  degree is raised until those coefficients are large. The quintic round comes first because x**2
  of an affine function of k is symmetric about a point: for about one seed in P / n, a row of n
  elements would be largely its own mirror image; after x**5 + key the collisions of x * x (x and
  P - x) lie on a curve, as rare as chance (about n**2 / 8P pairs a round), not on a line.
* u_t = (x_t + 0.5) * 2**-31 in float32, in (0, 1]: never 0, so the log is finite; Box-Muller gives
  rho = sqrt(2 |ln u_1|), theta = 2 pi u_2 and two independent normals, element 2k = rho cos theta
  and element 2k + 1 = rho sin theta (|.| only guards the sign of ln(1) = 0 against rounding).

Element i's value depends on the seed and i alone (not on the element count). The tests' numpy
reference (tests/oracles/noise.py) computes the same numbers: the integers exactly, the floats with
the same float32 operations (log, cos and sin may differ from onnxruntime's in the last ulp).
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from .builder import GraphBuilder

MODULUS = 2**31 - 1                   # P, prime; seeds must lie in [0, P)
SEED_MULTIPLIER = 1439107465          # B
SEED_OFFSET = 879587973               # C
KEY_OFFSETS = (1881942712, 1029477767, 117482959, 1833514841, 1357129039, 1383124916,
               1304598192, 240766958, 187993479, 1132470577, 1845513231, 646006799)  # D_j
PAIR_MULTIPLIERS = (1363220288, 288189697)  # A_1, A_2, one per stream
SQUARING_ROUNDS = 4
KEYS_PER_STREAM = 2 + SQUARING_ROUNDS
MAX_ELEMENTS = 2**31                  # pair indices stay below P, so every pair is distinct
_SCALE = np.float32(2.0**-31)         # (x + 0.5) * 2**-31 in (0, 1]; float32(P) is 2**31 anyway
_TWO_PI = np.float32(2 * math.pi)

assert len(KEY_OFFSETS) == 2 * KEYS_PER_STREAM


def _pairs(num_elements: int) -> int:
    if not 1 <= num_elements <= MAX_ELEMENTS:
        raise ValueError(f"num_elements must be in [1, {MAX_ELEMENTS}], got {num_elements}")
    return (num_elements + 1) // 2


# In the graph ------------------------------------------------------------------------------------


def _i64(b: GraphBuilder, value: int, hint: str) -> str:
    return b.const(np.array(value, np.int64), hint)


class _ModP:
    """Integer steps mod P in the graph, sharing one modulus initializer."""

    def __init__(self, b: GraphBuilder) -> None:
        self.b = b
        self.modulus = _i64(b, MODULUS, "modulus")

    def mod(self, x: str) -> str:
        return self.b.op("Mod", [x, self.modulus], fmod=0)

    def mul_add(self, x: str, y: str, z: str) -> str:
        """(x * y + z) mod P; x * y + z must stay below 2**63."""
        return self.mod(self.b.op("Add", [self.b.op("Mul", [x, y]), z]))

    def fifth_plus(self, x: str, key: str) -> str:
        """(x**5 + key) mod P for x, key in [0, P)."""
        x2 = self.mod(self.b.op("Mul", [x, x]))
        x4 = self.mod(self.b.op("Mul", [x2, x2]))
        return self.mul_add(x4, x, key)


def row_keys(b: GraphBuilder, row_seeds: str) -> list[str]:
    """[R] int64 seeds -> 2 * KEYS_PER_STREAM tensors [R, 1] int64 in [0, P)."""
    p = _ModP(b)
    r = p.mul_add(b.unsqueeze(row_seeds, [1]), _i64(b, SEED_MULTIPLIER, "seed_mul"), _i64(b, SEED_OFFSET, "seed_add"))
    keys = []
    for offset in KEY_OFFSETS:
        r = p.fifth_plus(r, _i64(b, offset, "key_add"))
        keys.append(r)
    return keys


def uniform_states(b: GraphBuilder, row_seeds: str, num_pairs: int) -> tuple[str, str]:
    """[R] int64 seeds -> the two streams' final states, [R, num_pairs] int64 in [0, P)."""
    p = _ModP(b)
    keys = row_keys(b, row_seeds)
    pair = b.op("Range", [_i64(b, 0, "start"), _i64(b, num_pairs, "limit"), _i64(b, 1, "delta")])  # [M]
    states = []
    for t, multiplier in enumerate(PAIR_MULTIPLIERS):
        k = keys[t * KEYS_PER_STREAM:(t + 1) * KEYS_PER_STREAM]
        x = p.mul_add(pair, _i64(b, multiplier, "pair_mul"), k[0])  # [M] with [R, 1] -> [R, M]
        x = p.fifth_plus(x, k[1])
        for key in k[2:]:
            x = p.mul_add(x, x, key)
        states.append(x)
    return states[0], states[1]


def box_muller(b: GraphBuilder, state_1: str, state_2: str, num_elements: int) -> str:
    """Two [R, M] int64 states in [0, P), M = ceil(num_elements / 2) -> [R, num_elements] float32 normals.

    Element 2k is rho cos theta and element 2k + 1 is rho sin theta of pair k.
    """
    pairs = _pairs(num_elements)
    half = b.const(np.float32(0.5), "half")
    scale = b.const(_SCALE, "scale")

    def uniform(state: str) -> str:
        return b.op("Mul", [b.op("Add", [b.cast(state, TensorProto.FLOAT), half]), scale])

    log_u = b.op("Log", [uniform(state_1)])
    rho = b.op("Sqrt", [b.op("Mul", [b.op("Abs", [log_u]), b.const(np.float32(2.0), "two")])])
    theta = b.op("Mul", [uniform(state_2), b.const(_TWO_PI, "two_pi")])
    even = b.unsqueeze(b.op("Mul", [rho, b.op("Cos", [theta])]), [2])
    odd = b.unsqueeze(b.op("Mul", [rho, b.op("Sin", [theta])]), [2])
    pairs_of_normals = b.op("Concat", [even, odd], axis=2)  # [R, M, 2]
    noise = b.op("Reshape", [pairs_of_normals, b.const(np.array([0, 2 * pairs], np.int64), "flat")])  # [R, 2M]
    if 2 * pairs == num_elements:
        return noise
    return b.op("Slice", [noise, b.const(np.array([0], np.int64), "starts"),
                          b.const(np.array([num_elements], np.int64), "ends"),
                          b.const(np.array([1], np.int64), "axes")])


def gaussian_noise(b: GraphBuilder, row_seeds: str, num_elements: int) -> str:
    """[R] int64 row seeds (0 <= seed < 2**31 - 1) -> [R, num_elements] float32 standard normals.

    Seeds outside that range are not checked in the graph (larger ones overflow int64 products).
    """
    state_1, state_2 = uniform_states(b, row_seeds, _pairs(num_elements))
    return box_muller(b, state_1, state_2, num_elements)


def uniform_noise(b: GraphBuilder, row_seeds: str, num_elements: int) -> str:
    """[R] int64 row seeds -> [R, num_elements] float32 uniforms in (0, 1] (the first stream's states,
    as box_muller's u_1: (state + 0.5) 2^-31)."""
    state, _ = uniform_states(b, row_seeds, num_elements)
    return b.op("Mul", [b.op("Add", [b.cast(state, TensorProto.FLOAT), b.const(np.float32(0.5), "half")]),
                        b.const(_SCALE, "scale")])
