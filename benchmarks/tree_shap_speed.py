"""tree_shap against exact Kernel SHAP (2^13 - 2 coalitions) on the tabular demo, same background, through
explaind's Explainer in process; alternating pairs, medians.

    PYTHONPATH=service:clients/python:tests python benchmarks/tree_shap_speed.py [--pairs 3]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from explaind.config import Settings
from explaind.explainer import ExplainQuery
from inprocess import serve_request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    background = np.load(Settings().repository_path / "tabular" / "background.npy")
    x = background[5].astype(np.float32)
    tree, kernel, gap = [], [], 0.0
    for _ in range(args.pairs):
        t = serve_request(ExplainQuery(model="tabular", method="tree_shap", tensor=x, target_index=1))
        tree.append(t.stats.total_seconds)
        k = serve_request(ExplainQuery(model="tabular", method="kernel_shap", tensor=x, target_index=1,
                                       params={"nsamples": 8190, "l1_reg": "none"}))
        kernel.append(k.stats.total_seconds)
        gap = max(gap, float(np.abs(t.attribution - k.attribution).max()))
    # The request's own time (Stats.total_seconds, arrival to result), not serve_request's Explainer start-up.
    print(f"tree_shap {statistics.median(tree) * 1e3:.1f} ms, exact kernel_shap {statistics.median(kernel) * 1e3:.1f} ms, "
          f"ratio {statistics.median(kernel) / statistics.median(tree):.1f}x, max |diff| {gap:.2e}")


if __name__ == "__main__":
    main()
