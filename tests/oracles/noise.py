"""explaind.onnxgraph.noise in numpy: the integers exactly, the floats with the graph's float32
operations in the graph's order (log, cos and sin may differ from onnxruntime's in the last ulp).

The constants are the production module's (they are the contract); the arithmetic is written here
again from the construction in its docstring.
"""

from __future__ import annotations

import math

import numpy as np

from explaind.onnxgraph.noise import (KEY_OFFSETS, KEYS_PER_STREAM, MAX_ELEMENTS, MODULUS, PAIR_MULTIPLIERS,
                                      SEED_MULTIPLIER, SEED_OFFSET)

_SCALE = np.float32(2.0**-31)      # u = (x + 0.5) * 2**-31 in (0, 1]
_TWO_PI = np.float32(2 * math.pi)


def _pairs(num_elements: int) -> int:
    if not 1 <= num_elements <= MAX_ELEMENTS:
        raise ValueError(f"num_elements must be in [1, {MAX_ELEMENTS}], got {num_elements}")
    return (num_elements + 1) // 2


def _check_seeds(seeds: np.ndarray) -> np.ndarray:
    seeds = np.asarray(seeds)
    if seeds.ndim != 1 or not np.issubdtype(seeds.dtype, np.integer):
        raise ValueError(f"seeds must be a 1-d integer array, got {seeds.dtype} {seeds.shape}")
    seeds = seeds.astype(np.int64)
    if seeds.size and (seeds.min() < 0 or seeds.max() >= MODULUS):
        raise ValueError(f"seeds must lie in [0, {MODULUS})")
    return seeds


def _fifth_plus_np(x: np.ndarray, key: np.ndarray | int) -> np.ndarray:
    x2 = x * x % MODULUS
    x4 = x2 * x2 % MODULUS
    return (x4 * x + key) % MODULUS


def row_keys_reference(seeds: np.ndarray) -> list[np.ndarray]:
    """`row_keys` in numpy: 2 * KEYS_PER_STREAM arrays [R, 1] int64 in [0, P)."""
    r = (_check_seeds(seeds)[:, None] * SEED_MULTIPLIER + SEED_OFFSET) % MODULUS
    keys = []
    for offset in KEY_OFFSETS:
        r = _fifth_plus_np(r, offset)
        keys.append(r)
    return keys


def uniform_states_reference(seeds: np.ndarray, num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """`uniform_states` in numpy: two [R, num_pairs] int64 arrays, exactly the graph's."""
    keys = row_keys_reference(seeds)
    pair = np.arange(num_pairs, dtype=np.int64)
    states = []
    for t, multiplier in enumerate(PAIR_MULTIPLIERS):
        k = keys[t * KEYS_PER_STREAM:(t + 1) * KEYS_PER_STREAM]
        x = (pair * multiplier + k[0]) % MODULUS
        x = _fifth_plus_np(x, k[1])
        for key in k[2:]:
            x = (x * x + key) % MODULUS
        states.append(x)
    return states[0], states[1]


def box_muller_reference(state_1: np.ndarray, state_2: np.ndarray, num_elements: int) -> np.ndarray:
    """`box_muller` in numpy, with the graph's float32 operations in the graph's order."""

    def uniform(state: np.ndarray) -> np.ndarray:
        return (np.asarray(state, np.int64).astype(np.float32) + np.float32(0.5)) * _SCALE

    rho = np.sqrt(np.abs(np.log(uniform(state_1))) * np.float32(2.0))
    theta = uniform(state_2) * _TWO_PI
    noise = np.stack([rho * np.cos(theta), rho * np.sin(theta)], axis=2).reshape(len(rho), 2 * rho.shape[1])
    return np.ascontiguousarray(noise[:, :num_elements], dtype=np.float32)


def gaussian_noise_reference(seeds: np.ndarray, num_elements: int) -> np.ndarray:
    """`gaussian_noise` in numpy: [R, num_elements] float32 for the [R] int64 seeds."""
    state_1, state_2 = uniform_states_reference(seeds, _pairs(num_elements))
    return box_muller_reference(state_1, state_2, num_elements)
