"""Stats report time as it was spent: a request's compute is the device time of its own rows.

compute_seconds once timed each batch from its submission, so a batch queued behind the previous one
counted its wait again as compute (a solo RISE request reported 1.6 s of compute in 0.8 s total).
It is now measured where the batch runs and split between the jobs that shared it, so it can never
exceed the request's total time, nor can concurrent requests' compute sum beyond the wall time.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def x(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(3, 64, 64)).astype(np.float32)


def test_a_solo_request_computes_no_longer_than_it_took(client):
    result = client.explain("shapes", method="rise", params={"num_masks": 4000}, tensor=x(1), seed=3)
    stats = result.stats
    assert int(stats["model_evaluations"]) == 4001  # the masks and the prediction
    assert int(stats["batches"]) >= 4000 // 64
    assert 0 < stats["compute_seconds"] <= stats["total_seconds"], stats
    assert stats["queue_seconds"] <= stats["total_seconds"], stats


def test_concurrent_requests_share_the_device_time_they_used(client):
    def explain(i: int):
        return client.explain("shapes", method="rise", params={"num_masks": 2000}, tensor=x(10 + i), seed=i + 1).stats

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        stats = list(pool.map(explain, range(4)))
    wall = time.perf_counter() - started
    for s in stats:
        assert 0 < s["compute_seconds"] <= s["total_seconds"], s
    # One device thread runs the batches one after another: their shares cannot sum beyond the wall time.
    assert sum(s["compute_seconds"] for s in stats) <= wall, (wall, [s["compute_seconds"] for s in stats])
