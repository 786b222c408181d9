"""A server flooded with distinct parameter values keeps its memory and its metric series bounded.

Every numeric parameter of every method takes a value no earlier request used (window sizes and
strides, mask counts and grid sizes, RISE's keep probability, extremal perturbation's step, sigma,
pyramid levels and areas, sample counts, baselines...). Those that shape a graph (RISE's grid size,
extremal perturbation's step, sigma and levels, Kernel SHAP's background size) each build a new
session; the engine's cache (max_sessions, here 6) closes the least recently used idle ones, so the
server's RSS stays within a bound, and metric labels name variant kinds, never values, so the number
of metric series does not move. With an unbounded cache the same flood grows the server by hundreds
of MB (measured: see the note in docs/operations.md).
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any, Callable

import numpy as np
import pytest

from _server import DEMO, memory_bytes, start_server, stop_server

MAX_SESSIONS = 6
REQUESTS = 200
RSS_GROWTH_BOUND_MB = 120  # after a warm-up that built every kind of session once

Params = Callable[[int], dict[str, Any]]


# (model, method, params of the i-th request): every numeric value is distinct for each i.
IMAGE: list[tuple[str, Params]] = [
    ("occlusion", lambda i: {"window": [4 + i % 20, 5 + i // 20], "stride": [3 + i % 17, 4 + i // 17],
                             "baseline": -1.0 + 0.013 * i}),
    ("rise", lambda i: {"num_masks": 40 + i, "grid_size": 2 + i % 30, "keep_probability": 0.2 + 0.003 * i,
                        "baseline": 0.001 * i}),
    ("lime", lambda i: {"num_samples": 30 + i, "hide_value": 0.01 * i, "kernel_width": 0.2 + 0.011 * i,
                        "segmentation": "slic"}),
    ("kernel_shap", lambda i: {"nsamples": 60 + i, "fill": "blur", "blur_sigma": 1.0 + 0.07 * i,
                               "segmentation": "slic"}),
    ("kernel_shap", lambda i: {"nsamples": 61 + i, "fill": "value", "fill_value": -0.5 + 0.01 * i,
                               "segmentation": "slic"}),
    ("extremal_perturbation", lambda i: {"areas": [0.05 + 0.002 * i], "iterations": 3 + i % 5,
                                         "step": 3 + i % 9, "sigma": round(2.0 + 0.37 * i, 2),
                                         "num_levels": 2 + i % 9,
                                         "max_blur": 4.0 + 0.1 * i, "smooth": 0.02 + 0.001 * i,
                                         "gradient": "estimated", "gradient_samples": 1 + i % 4,
                                         "gradient_sigma": 0.05 + 0.002 * i}),
    ("smooth_grad", lambda i: {"num_samples": 2 + i % 25, "noise_level": 0.05 + 0.004 * i}),
    ("smooth_grad", lambda i: {"num_samples": 3 + i % 25, "stdev": 0.01 + 0.003 * i}),
    ("integrated_gradients", lambda i: {"n_steps": 2 + i, "baseline": -0.2 + 0.01 * i}),
    ("saliency", lambda i: {}),
    ("grad_cam", lambda i: {}),
    ("score_cam", lambda i: {}),
    ("cam", lambda i: {}),
    ("ablation_cam", lambda i: {"aug_smooth": i % 2 == 0}),
    ("smooth_grad_cam_plus_plus", lambda i: {"num_samples": 2 + i % 9, "noise_level": 0.05 + 0.004 * i}),
    ("feature_maps", lambda i: {"top_k": 1 + i % 40}),
    ("activation_maximization", lambda i: {"steps": 2 + i % 7, "learning_rate": 0.01 + 0.001 * i, "jitter": i % 4,
                                           "rotation": 0.1 * i, "l2": 0.0001 * i}),
]
TABULAR: list[tuple[str, Params]] = [
    ("occlusion", lambda i: {"baseline": -2.0 + 0.021 * i}),
    ("lime", lambda i: {"num_samples": 50 + i, "kernel_width": 0.5 + 0.013 * i}),
    ("kernel_shap", lambda i: {"nsamples": 40 + i, "background_kmeans": 2 + i % 20}),
]
CASES = [("shapes", m, p) for m, p in IMAGE] + [("tabular", m, p) for m, p in TABULAR]


def metric_series(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    series = {}
    for line in text.splitlines():
        if line.startswith("explaind_"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    return series


def request_input(model: str, i: int) -> dict[str, Any]:
    if model == "tabular":
        background = np.load(DEMO / "repository" / "tabular" / "background.npy")
        return {"tensor": background[i % len(background)].astype(np.float32)}
    return {"tensor": np.random.default_rng(i).normal(size=(3, 64, 64)).astype(np.float32)}


@pytest.fixture(scope="module")
def flooded(repository, tmp_path_factory):
    server = start_server(repository, tmp_path_factory.mktemp("flood") / "server.log", max_sessions=MAX_SESSIONS)
    try:
        with server.client(timeout=120) as client:
            def send(model: str, method: str, params: dict[str, Any], i: int) -> None:
                client.explain(model, method=method, params=params, target=1, seed=i, **request_input(model, i))

            for model, method, params in CASES:  # warm-up: every kind of session and every label once
                send(model, method, params(0), 0)
            time.sleep(0.5)
            before = (memory_bytes(server.process.pid) / 2**20, metric_series(server.metrics_url))
            started = time.monotonic()
            for n in range(REQUESTS):
                model, method, params = CASES[n % len(CASES)]
                i = 1 + n // len(CASES)
                send(model, method, params(i), i)
            elapsed = time.monotonic() - started
            time.sleep(0.5)
            after = (memory_bytes(server.process.pid) / 2**20, metric_series(server.metrics_url))
        yield before, after, elapsed, server
    finally:
        assert stop_server(server) == 0, server.log()


def test_distinct_parameter_values_keep_rss_bounded(flooded):
    (rss_before, _), (rss_after, series), elapsed, server = flooded
    print(json.dumps({"rss_before_mb": round(rss_before, 1), "rss_after_mb": round(rss_after, 1),
                      "flood_seconds": round(elapsed, 1), "sessions": series["explaind_sessions"],
                      "evictions": series.get("explaind_session_evictions_total")}))
    assert series["explaind_sessions"] <= MAX_SESSIONS
    assert series["explaind_session_evictions_total"] >= 20  # the flood did build new sessions
    assert rss_after - rss_before < RSS_GROWTH_BOUND_MB, (rss_before, rss_after)


def test_distinct_parameter_values_add_no_metric_series(flooded):
    (_, before), (_, after), _, _ = flooded
    assert set(after) == set(before), sorted(set(after) ^ set(before))
    ok = {k: v for k, v in after.items() if k.startswith("explaind_requests_total")}
    assert all('code="OK"' in k for k in ok), ok  # every flood request succeeded
    assert sum(ok.values()) == len(CASES) + REQUESTS
