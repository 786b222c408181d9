#!/usr/bin/env python3
"""Raw onnxruntime speed of explaind's LRP relevance graph against its plain gradient graph.

    python benchmarks/lrp_graph.py                         # shapes + the reference zoo (not senet: no LRP rule)
    python benchmarks/lrp_graph.py --models resnet --composites epsilon_gamma_box

For each model and composite: rows/s of the relevance variant (`Relevance`, as the server builds it)
and of the plain gradient variant (`Gradient`, path "input") at one batch (--rows; default 32 for
images, 1024 for the MLP), measured in alternation (--repeats pairs, medians) with the server's
session options (gradient_graph.session), and their ratio. The load average is printed beside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gradient_graph import gradient_feed, models, rate, session  # noqa: E402

from explaind.onnxgraph.builder import NAMESPACE  # noqa: E402
from explaind.onnxgraph.variants.gradient import Gradient  # noqa: E402
from explaind.onnxgraph.variants.relevance import Relevance  # noqa: E402

BOUNDS = ((-2.0, -2.0, -2.0), (2.0, 2.0, 2.0))


def relevance_feed(x: np.ndarray, rows: int, classes: int) -> dict[str, np.ndarray]:
    seed = np.zeros((rows, classes), np.float32)
    seed[:, 0] = 1.0
    f = {"x0": x[None], "job_index": np.zeros(rows, np.int64), "epsilon": np.array([1e-6], np.float32),
         "gamma": np.array([0.25], np.float32), "seed": seed}
    return {NAMESPACE + k: v for k, v in f.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["shapes", "resnet", "vgg", "mobilenetv2", "densenet", "mlp"])
    parser.add_argument("--composites", nargs="+", default=["epsilon_plus_flat", "epsilon_gamma_box"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=0.4, help="per timed loop")
    parser.add_argument("--repeats", type=int, default=3, help="alternating gradient/relevance pairs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "onnxruntime": ort.__version__,
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores", "threads": args.threads,
                    "load_average_before": os.getloadavg()[0], "models": {}}
    print(f"{'model':12s} {'composite':26s} {'rows':>5s} {'gradient rows/s':>16s} {'lrp rows/s':>11s} {'ratio':>6s}")
    for name, (model, sig) in models(args.models).items():
        x = np.random.default_rng(0).standard_normal(sig.example_shape).astype(np.float32)
        rows = args.rows or (1024 if sig.layout == "tabular" else 32)
        grad = session(Gradient(score="logit", rule="plain", path="input").build(model, sig), args.threads)
        g_feed = gradient_feed(x, rows)
        out = {}
        for composite in args.composites:
            low, high = BOUNDS if sig.layout != "tabular" else ((), ())
            relevance_model = Relevance(composite=composite, low=low, high=high).build(model, sig)
            lrp = session(relevance_model, args.threads)
            classes = next(o for o in model.graph.output).type.tensor_type.shape.dim[1].dim_value
            r_feed = relevance_feed(x, rows, classes)
            pairs = [(rate(grad, g_feed, rows, args.seconds), rate(lrp, r_feed, rows, args.seconds))
                     for _ in range(args.repeats)]
            g, r = statistics.median(p for p, _ in pairs), statistics.median(q for _, q in pairs)
            out[composite] = {"rows": rows, "gradient_rows_per_s": g, "lrp_rows_per_s": r, "ratio": r / g,
                              "nodes": {"model": len(model.graph.node), "lrp": len(relevance_model.graph.node)}}
            print(f"{name:12s} {composite:26s} {rows:5d} {g:16.0f} {r:11.0f} {r / g:6.3f}", flush=True)
        report["models"][name] = out
    report["load_average_after"] = os.getloadavg()[0]
    print(f"(load average {report['load_average_before']:.1f} before, {report['load_average_after']:.1f} after, "
          f"on {os.cpu_count()} cores; {args.threads} onnxruntime threads)")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"lrp-graph-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"written {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
