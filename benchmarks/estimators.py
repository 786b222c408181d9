#!/usr/bin/env python3
"""Sampling estimators measured by accuracy per second: Kernel SHAP time-to-error against shap.

    python benchmarks/estimators.py            # prints the table, writes JSON to benchmarks/results/

The tabular demo (wine random forest, 13 features, its 100 background rows) and the first 20 rows of its
held-out split (train_tabular.py's split, seed 0). Exact Shapley values: every one of the 2^13
coalitions evaluated over the 100 background rows with onnxruntime (819,200 rows per explanation),
cached in benchmarks/results/ by the model's and background's hash. The score is the predicted class's
probability, so the score range is 1 and the target error is 0.01: error of a method at a setting =
the mean over rows and seeds of max_i |phi_i - exact_i| (the worst feature of each explanation).

Each side at each nsamples of a grid: shap KernelExplainer(predict, background).shap_values(row,
nsamples=n, l1_reg=False) with predict = onnxruntime on the same model (intra-op threads = cores),
explaining the same class; explaind kernel_shap through gRPC (a real server in its own process, as
bench.py) with estimator leverage (the default) and with estimator shap. A side's best setting is the
smallest n of the grid whose error is <= the target; time-to-error is its mean seconds per explanation
there. Timings of the best settings are remeasured in alternating pairs (3 by default, medians).
Then each side at its default nsamples (shap "auto", explaind unset), one seed per row.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import MODEL_DIR, ROOT, start_server, stop_server  # noqa: E402
from bench_white_box import cpu_snapshot, other_load  # noqa: E402

from explaind_client import ExplaindClient  # noqa: E402

TABULAR = MODEL_DIR / "tabular"
TARGET = 0.01
SHAP_GRID = [26, 32, 40, 48, 64, 80, 100, 128]
OURS_GRID = [26, 32, 40, 52, 64, 80, 104, 128]


def session(threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(TABULAR / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"])


def held_out(count: int) -> np.ndarray:
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    data = load_wine()
    x = data.data.astype(np.float32)
    _, x_test, _, _ = train_test_split(x, data.target, test_size=0.3, random_state=0, stratify=data.target)
    return x_test[:count]


def exact_shapley(sess: ort.InferenceSession, rows: np.ndarray, background: np.ndarray, out: Path) -> np.ndarray:
    """[rows, M, classes] by enumerating every coalition over the whole background (cached)."""
    key = hashlib.sha256((TABULAR / "model.onnx").read_bytes() + background.tobytes() + rows.tobytes()).hexdigest()[:16]
    cache = out / f"exact-shapley-tabular-{key}.npy"
    if cache.exists():
        return np.load(cache)
    m = rows.shape[1]
    masks = np.array(list(itertools.product([False, True], repeat=m)))
    index = masks.astype(np.int64) @ (1 << np.arange(m)[::-1])
    assert np.array_equal(index, np.arange(len(masks)))
    sizes = masks.sum(axis=1)
    weight = np.array([math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) for s in range(m)])
    result = []
    for row in rows:
        values = np.empty((len(masks), 3))
        for start in range(0, len(masks), 512):
            z = masks[start:start + 512]
            synth = np.where(z[:, None, :], row[None, None, :], background[None]).reshape(-1, m)
            p = sess.run(["probabilities"], {"input": synth})[0].reshape(len(z), len(background), 3)
            values[start:start + len(z)] = p.astype(np.float64).mean(axis=1)
        phi = np.zeros((m, 3))
        for i in range(m):
            without = np.flatnonzero(~masks[:, i])
            with_i = without + (1 << (m - 1 - i))
            phi[i] = (weight[sizes[without], None] * (values[with_i] - values[without])).sum(axis=0)
        result.append(phi)
        print(f"  exact Shapley values: row {len(result)}/{len(rows)}", flush=True)
    exact = np.array(result)
    np.save(cache, exact)
    return exact


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per row and setting")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timing pairs at the best settings")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("shap").setLevel(logging.ERROR)
    import shap

    cores = os.cpu_count() or 1
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.machine()}, {cores} cores",
                    "onnxruntime": ort.__version__, "shap": shap.__version__, "threads": args.threads,
                    "target_error": TARGET, "rows": args.rows, "seeds": args.seeds}
    began, cpu_start = time.perf_counter(), cpu_snapshot()
    sess = session(args.threads)
    background = np.load(TABULAR / "background.npy").astype(np.float32)
    rows = held_out(args.rows)
    exact = exact_shapley(sess, rows, background, args.out)
    classes = sess.run(["probabilities"], {"input": rows})[0].argmax(axis=1)

    def predict(a: np.ndarray) -> np.ndarray:
        return sess.run(["probabilities"], {"input": np.asarray(a, np.float32)})[0]

    kernel = shap.KernelExplainer(predict, background)

    def shap_one(i: int, n: int, seed: int) -> np.ndarray:
        np.random.seed(seed)
        values = np.asarray(kernel.shap_values(rows[i:i + 1], nsamples=n, l1_reg=False, silent=True))
        return values[0, :, classes[i]]

    server = start_server(MODEL_DIR, args.out / "estimators-server.log", metrics_port=-1, intra_op_threads=args.threads)
    try:
        with ExplaindClient(server.address) as client:
            def ours_one(estimator: str):
                def one(i: int, n: int, seed: int) -> np.ndarray:
                    result = client.explain("tabular", method="kernel_shap", tensor=rows[i], seed=seed,
                                            target=int(classes[i]),
                                            params={"nsamples": n, "estimator": estimator, "l1_reg": "none"})
                    return np.asarray(result.attribution)
                return one

            sides = {"shap KernelExplainer": (shap_one, SHAP_GRID),
                     "explaind leverage": (ours_one("leverage"), OURS_GRID),
                     "explaind shap scheme": (ours_one("shap"), SHAP_GRID)}
            for fn, _ in sides.values():
                fn(0, 64, 0)  # warm-up
            curves: dict = {}
            for name, (fn, grid) in sides.items():
                curves[name] = []
                for n in grid:
                    errors, start = [], time.perf_counter()
                    for seed in range(args.seeds):
                        for i in range(len(rows)):
                            errors.append(float(np.abs(fn(i, n, seed) - exact[i, :, classes[i]]).max()))
                    seconds = (time.perf_counter() - start) / len(errors)
                    point = {"nsamples": n, "error_mean": float(np.mean(errors)), "error_max": float(np.max(errors)),
                             "seconds": seconds}
                    curves[name].append(point)
                    print(f"{name:22s} n={n:4d}  error mean {point['error_mean']:.4f} max {point['error_max']:.4f}  "
                          f"{1e3 * seconds:7.1f} ms/explanation", flush=True)
            report["curves"] = curves
            best = {}
            for name, points in curves.items():
                ok = [p for p in points if p["error_mean"] <= TARGET]
                best[name] = ok[0]["nsamples"] if ok else None
            report["best_nsamples"] = best
            # Time-to-error at the best settings, alternating pairs over the 20 rows.
            timed: dict = {name: [] for name in sides if best[name]}
            for _ in range(args.repeats):
                for name, (fn, _) in sides.items():
                    if not best[name]:
                        continue
                    start = time.perf_counter()
                    for i in range(len(rows)):
                        fn(i, best[name], 1000 + i)
                    timed[name].append((time.perf_counter() - start) / len(rows))
            report["time_to_error_s"] = {name: statistics.median(t) for name, t in timed.items()}
            report["time_to_error_runs_s"] = timed
            # Each side at its default (shap: nsamples "auto" = 2M + 2048; explaind: nothing set), one seed.
            def shap_default(i: int, seed: int) -> np.ndarray:
                np.random.seed(seed)
                values = np.asarray(kernel.shap_values(rows[i:i + 1], l1_reg=False, silent=True))
                return values[0, :, classes[i]]

            def ours_default(i: int, seed: int) -> np.ndarray:
                result = client.explain("tabular", method="kernel_shap", tensor=rows[i], seed=seed,
                                        target=int(classes[i]))
                return np.asarray(result.attribution)

            defaults: dict = {}
            for name, fn in (("shap KernelExplainer", shap_default), ("explaind leverage", ours_default)):
                errors, start = [], time.perf_counter()
                for i in range(len(rows)):
                    errors.append(float(np.abs(fn(i, 2000 + i) - exact[i, :, classes[i]]).max()))
                defaults[name] = {"seconds": (time.perf_counter() - start) / len(rows),
                                  "error_mean": float(np.mean(errors)), "error_max": float(np.max(errors))}
            report["defaults"] = defaults
    finally:
        stop_server(server)
    report["seconds"] = time.perf_counter() - began
    report["other_load"] = other_load(cpu_start, cores)
    tte = report["time_to_error_s"]
    print()
    print(f"time to reach a mean worst-feature error <= {TARGET} (score range 1) over {args.rows} held-out rows:")
    ref = tte.get("shap KernelExplainer")
    for name, seconds in tte.items():
        ratio = f"x{ref / seconds:.2f} vs shap" if ref else ""
        print(f"  {name:22s} nsamples {best[name]:4d}  {1e3 * seconds:7.1f} ms/explanation  {ratio}")
    print("at each side's default nsamples (shap: 2M + 2048 = 2074; explaind: 8M = 104):")
    for name, d in report["defaults"].items():
        print(f"  {name:22s} {1e3 * d['seconds']:7.1f} ms/explanation  error mean {d['error_mean']:.4f} "
              f"max {d['error_max']:.4f}")
    load = report["other_load"]
    print(f"other load during the run: {100 * load['other_processes']:.1f}% of the cores used by other processes, "
          f"{100 * load['steal']:.1f}% stolen")
    path = args.out / f"estimators-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path  # speed.py may write outside the repo
    print(f"written {shown} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
