#!/usr/bin/env python3
"""Raw onnxruntime speed of explaind's gradient graph against the forward model it differentiates.

    python benchmarks/gradient_graph.py                  # shapes + the reference zoo; prints a table, writes JSON
    python benchmarks/gradient_graph.py --models vgg --profile   # plus onnxruntime's per-operator times
    python benchmarks/gradient_graph.py --out DIR        # the JSON as DIR/gradient-graph.json

For each model: forward rows/s (the ONNX model alone) and gradient-graph rows/s (explaind's plain
gradient variant, path "input", as the server builds it: one job's example repeated over R rows,
score and input gradient out), each at its best batch of --batch-sizes (the batch is chosen per
model and per graph: the backward graph is mostly memory-bound elementwise work and often runs
best at a smaller batch than the compute-bound forward), with the same session options as the
server (intra-op threads = cores, sequential, spinning on). `ratio` is gradient rows/s at its best
batch over forward rows/s at its best; `ratio_by_batch` the same at each batch. Forward and gradient
are measured in alternation (--repeats pairs per batch, medians), so the machine's drifting speed
and the other load largely cancel in the ratio. --profile runs onnxruntime's profiler
(SessionOptions.enable_profiling) on the gradient graph at the best batch and prints the share of
time per operator type.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "reference"))

from explaind.onnxgraph.builder import NAMESPACE  # noqa: E402
from explaind.onnxgraph.signature import ModelSignature  # noqa: E402
from explaind.onnxgraph.variants.gradient import Gradient  # noqa: E402

SHAPES = ROOT / "service" / "explaind" / "demo" / "repository" / "shapes" / "model.onnx"


def models(names: list[str]) -> dict[str, tuple[onnx.ModelProto, ModelSignature]]:
    """name -> (ONNX model, signature); "shapes" is the demo CNN, the others the reference zoo."""
    out = {}
    for name in names:
        if name == "shapes":
            out[name] = (onnx.load(str(SHAPES)), ModelSignature("input", "logits", (3, 64, 64), "NCHW", "logits"))
            continue
        import zoo  # torch is needed for the zoo only

        entry = zoo.ZOO[name]
        net = entry.build()
        shape = tuple(net.input_shape)
        layout = "tabular" if len(shape) == 1 else "NCHW"
        out[name] = (zoo.export(net), ModelSignature("input", "logits", shape, layout, "logits"))
    return out


def session(model: onnx.ModelProto, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


def forward_feed(sig: ModelSignature, x: np.ndarray, rows: int) -> dict[str, np.ndarray]:
    return {sig.input_name: np.repeat(x[None], rows, axis=0)}


def gradient_feed(x: np.ndarray, rows: int) -> dict[str, np.ndarray]:
    f = {"x0": x[None], "job_index": np.zeros(rows, np.int64), "target": np.array([0], np.int64)}
    return {NAMESPACE + k: v for k, v in f.items()}


def rate(sess: ort.InferenceSession, feed: dict, rows: int, seconds: float) -> float:
    sess.run(None, feed)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sess.run(None, feed)
        runs += 1
    return runs * rows / (time.perf_counter() - start)


def profile(model: onnx.ModelProto, feed: dict, threads: int, runs: int) -> list[tuple[str, float]]:
    """(operator type, share of the summed node time), largest first, from onnxruntime's profiler."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(model, threads, profile_prefix=str(Path(tmp) / "grad"))
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            per_op[ev["args"]["op_name"]] += ev["dur"]
    total = sum(per_op.values()) or 1
    return [(op, t / total) for op, t in per_op.most_common()]


def measure(name: str, model: onnx.ModelProto, sig: ModelSignature, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(sig.example_shape).astype(np.float32)
    grad_model = Gradient(score="logit", rule="plain", path="input").build(model, sig)
    fwd, grad = session(model, args.threads), session(grad_model, args.threads)
    result: dict = {"forward": {}, "gradient": {}}
    sizes = args.batch_sizes or ([64, 256, 1024, 4096] if sig.layout == "tabular" else [4, 8, 16, 32])
    for rows in sizes:
        f_feed, g_feed = forward_feed(sig, x, rows), gradient_feed(x, rows)
        pairs = [(rate(fwd, f_feed, rows, args.seconds), rate(grad, g_feed, rows, args.seconds))
                 for _ in range(args.repeats)]
        result["forward"][rows] = statistics.median(f for f, _ in pairs)
        result["gradient"][rows] = statistics.median(g for _, g in pairs)
    bf = max(result["forward"], key=result["forward"].get)
    bg = max(result["gradient"], key=result["gradient"].get)
    result.update(forward_best_batch=bf, forward_rows_per_s=result["forward"][bf], gradient_best_batch=bg,
                  gradient_rows_per_s=result["gradient"][bg],
                  ratio=result["gradient"][bg] / result["forward"][bf],
                  ratio_by_batch={rows: result["gradient"][rows] / result["forward"][rows] for rows in sizes},
                  nodes={"forward": len(model.graph.node), "gradient": len(grad_model.graph.node)})
    if args.profile:
        result["profile"] = profile(grad_model, gradient_feed(x, bg), args.threads, args.profile_runs)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["shapes", "resnet", "vgg", "mobilenetv2", "senet", "densenet", "mlp"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="rows per run to try (default: 4 8 16 32 for images, 64 256 1024 4096 for the MLP)")
    parser.add_argument("--seconds", type=float, default=0.4, help="per timed loop")
    parser.add_argument("--repeats", type=int, default=3, help="alternating forward/gradient pairs per batch")
    parser.add_argument("--profile", action="store_true", help="per-operator shares of the gradient graph")
    parser.add_argument("--profile-runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder for gradient-graph.json (default: benchmarks/results)")
    args = parser.parse_args()
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "onnxruntime": ort.__version__,
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores", "threads": args.threads,
                    "load_average_before": os.getloadavg()[0], "models": {}}
    print(f"{'model':12s} {'forward rows/s':>16s} {'gradient rows/s':>17s} {'ratio':>6s}  nodes fwd/grad  ratio per batch")
    for name, (model, sig) in models(args.models).items():
        r = measure(name, model, sig, args)
        report["models"][name] = r
        print(f"{name:12s} {r['forward_rows_per_s']:10.0f} ({r['forward_best_batch']:3d}) "
              f"{r['gradient_rows_per_s']:10.0f} ({r['gradient_best_batch']:3d}) {r['ratio']:6.3f}  "
              f"{r['nodes']['forward']}/{r['nodes']['gradient']:<8d} "
              + " ".join(f"{rows}: {q:.3f}" for rows, q in r["ratio_by_batch"].items()), flush=True)
        if args.profile:
            print("    " + ", ".join(f"{op} {100 * share:.0f}%" for op, share in r["profile"][:10]))
    report["load_average_after"] = os.getloadavg()[0]
    print(f"(best batch in parentheses; load average {report['load_average_before']:.1f} before, "
          f"{report['load_average_after']:.1f} after, on {os.cpu_count()} cores)")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gradient-graph.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"written {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
