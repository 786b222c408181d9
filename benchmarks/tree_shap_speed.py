"""tree_shap against exact Kernel SHAP (2^13 - 2 coalitions) on the tabular demo, same input, target and
background, through gRPC on a real server (loopback), warm: alternating pairs, medians.

    PYTHONPATH=service:clients/python:tests:benchmarks python benchmarks/tree_shap_speed.py [--pairs 5] [--out DIR]

First, one request of each (the server's sessions built, shap imported, tree_shap's explainers
prepared; the first tree_shap request's time is reported as `cold_first_ms`). Then `--pairs` times:
`--tree-requests` tree_shap requests (their median) and one exact kernel_shap request. Times are the
client's wall time per request (serialisation and gRPC included); the server's own total_seconds
are reported beside. speedup = median kernel_shap / median tree_shap. Writes
tree-shap-YYYYmmdd-HHMMSS.json into --out (read by benchmarks/speed.py: key `speedup`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import MODEL_DIR, start_server, stop_server  # noqa: E402  (the test suite's server launcher)
from bench_white_box import cpu_snapshot, other_load  # noqa: E402

from explaind_client import ExplaindClient  # noqa: E402

KERNEL_PARAMS = {"nsamples": 8190, "l1_reg": "none"}  # every coalition of 13 features: exact


def timed(client: ExplaindClient, method: str, x: np.ndarray, params: dict | None = None) -> tuple[float, float, np.ndarray]:
    """(client wall seconds, server total_seconds, attribution) of one request."""
    start = time.perf_counter()
    result = client.explain("tabular", method=method, tensor=x, target=1, params=params, timeout=600)
    return time.perf_counter() - start, float(result.stats["total_seconds"]), result.attribution


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="alternating (tree_shap, kernel_shap) pairs")
    parser.add_argument("--tree-requests", type=int, default=9, help="tree_shap requests per pair (their median)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    x = np.load(MODEL_DIR / "tabular" / "background.npy")[5].astype(np.float32)
    load_start = os.getloadavg()
    server = start_server(MODEL_DIR, args.out / "tree-shap-server.log")
    pid = server.process.pid
    try:
        with ExplaindClient(server.address) as client:
            cold, _, _ = timed(client, "tree_shap", x)
            timed(client, "kernel_shap", x, KERNEL_PARAMS)
            for _ in range(3):
                timed(client, "tree_shap", x)
            cpu_start = cpu_snapshot(pid)
            tree, tree_server, kernel, kernel_server, ratios, gap = [], [], [], [], [], 0.0
            for pair in range(args.pairs):
                runs = [timed(client, "tree_shap", x) for _ in range(args.tree_requests)]
                t = statistics.median(r[0] for r in runs)
                k, k_server, k_phi = timed(client, "kernel_shap", x, KERNEL_PARAMS)
                tree.append(t)
                tree_server.append(statistics.median(r[1] for r in runs))
                kernel.append(k)
                kernel_server.append(k_server)
                ratios.append(k / t)
                gap = max(gap, float(np.abs(runs[0][2] - k_phi).max()))
                print(f"pair {pair + 1}: tree_shap {t * 1e3:.2f} ms, exact kernel_shap {k * 1e3:.0f} ms, {k / t:.0f}x",
                      flush=True)
            load = other_load(cpu_start, os.cpu_count() or 1, pid)
    finally:
        stop_server(server)
    speedup = statistics.median(kernel) / statistics.median(tree)
    report = {
        "benchmark": "tree_shap_speed", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "model": "tabular",
        "pairs": args.pairs, "tree_requests_per_pair": args.tree_requests, "kernel_params": KERNEL_PARAMS,
        "tree_shap_ms": statistics.median(tree) * 1e3, "kernel_shap_ms": statistics.median(kernel) * 1e3,
        "tree_shap_server_ms": statistics.median(tree_server) * 1e3,
        "kernel_shap_server_ms": statistics.median(kernel_server) * 1e3,
        "cold_first_ms": cold * 1e3, "speedup": speedup, "speedups": [round(r, 1) for r in ratios],
        "max_abs_diff": gap, "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "other_load": load,
    }
    path = args.out / f"tree-shap-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"tree_shap {report['tree_shap_ms']:.2f} ms (server {report['tree_shap_server_ms']:.2f}), exact kernel_shap "
          f"{report['kernel_shap_ms']:.0f} ms (server {report['kernel_shap_server_ms']:.0f}): {speedup:.0f}x warm "
          f"(first tree_shap request {cold * 1e3:.0f} ms); max |diff| {gap:.2e}; load avg "
          f"{load_start[0]:.1f} -> {report['load_average_end'][0]:.1f}, other processes {100 * load['other_processes']:.0f}%")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
