#!/usr/bin/env python3
"""Every speed claim of explaind in one run: issue 14's targets, each measured by its own benchmark.

    python benchmarks/speed.py                 # all of them, ~10 minutes on 2 quiet cores; table + JSON
    python benchmarks/speed.py --only rise tree_shap --quick

Runs, one after the other and each in its own process (so one benchmark's threads and caches do not
colour the next): gradient_graph.py (the backward graph against the forward model, every zoo model),
bench_white_box.py (Integrated Gradients and SmoothGrad against Captum and against the gradient
graph's raw limit), tree_shap_speed.py (tree SHAP against exact Kernel SHAP), estimators.py (Kernel
SHAP's time to 1% error against shap's KernelExplainer), bench_black_box.py (LIME images against
lime) and bench.py (RISE against raw onnxruntime, 1 and 8 clients, 5 alternating pairs). Each writes
its own JSON into one run folder; this script reads them back and prints one table of measured figure
against target, with the machine, the library versions and the load the machine carried (medians and
ratios inside each benchmark; the machine's other load is what makes a figure unreliable, so it is in
the table).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

Check = tuple[str, float | None, str, bool | None]  # (figure, value, target, met)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script: how to run it (full and --quick) and how to read its figures."""
    script: str
    prefix: str                        # its JSON file name starts with this
    args: list[str]
    quick_args: list[str]
    checks: Callable[[dict[str, Any]], list[Check]]


def at_least(figure: str, value: float | None, target: float) -> Check:
    return figure, value, f">= {target:g}", None if value is None else value >= target


def gradient_checks(r: dict[str, Any]) -> list[Check]:
    return [at_least(f"gradient graph / forward rows/s, {name}", m["ratio"], 0.4) for name, m in r["models"].items()]


def white_box_checks(r: dict[str, Any]) -> list[Check]:
    speed, limit = r.get("explaind_vs_captum", {}), r.get("explaind_vs_limit", {})
    out = []
    for key, title in (("ig", "Integrated Gradients 50"), ("sg", "SmoothGrad 50")):
        out.append(at_least(f"{title}, 1 client, explanations/s vs Captum", speed.get(key, {}).get("speedup"), 3))
        out.append(at_least(f"{title}, 8 clients / gradient-graph limit", limit.get(f"{key}_clients_8", {}).get("ratio"), 0.9))
    return out


def tree_checks(r: dict[str, Any]) -> list[Check]:
    return [at_least("tree_shap vs exact kernel_shap, speed-up", r.get("speedup"), 100)]


def estimator_checks(r: dict[str, Any]) -> list[Check]:
    tte = r.get("time_to_error_s", {})
    shap_s, ours = tte.get("shap KernelExplainer"), tte.get("explaind leverage")
    return [at_least("kernel_shap time to 1% error, shap / explaind", shap_s / ours if shap_s and ours else None, 10)]


def black_box_checks(r: dict[str, Any]) -> list[Check]:
    out = []
    for name, title in (("lime_image", "quickshift"), ("lime_image_slic", "slic")):
        c = r.get("comparisons", {}).get(name, {})
        out.append(at_least(f"lime image ({title}) vs lime, speed-up", c.get("speedup"), 5))
        out.append(at_least(f"lime image ({title}), Pearson vs lime", c.get("pearson_vs_peer"), 0.98))
    return out


def rise_checks(r: dict[str, Any]) -> list[Check]:
    rise = r.get("rise_4000", {})
    return [at_least(f"RISE 4000 masks, {n} client{'s' if n > 1 else ''} / raw limit", rise.get(f"clients_{n}_ratio"), 0.9)
            for n in (1, 8)]


BENCHMARKS: dict[str, Benchmark] = {
    "gradient_graph": Benchmark("gradient_graph.py", "gradient-graph", [], ["--repeats", "1", "--seconds", "0.2"],
                                gradient_checks),
    "white_box": Benchmark("bench_white_box.py", "white-box-", [],
                           ["--repeats", "1", "--captum-repeats", "1", "--requests", "4"], white_box_checks),
    "tree_shap": Benchmark("tree_shap_speed.py", "tree-shap-", [], ["--pairs", "1"], tree_checks),
    "estimators": Benchmark("estimators.py", "estimators-", [], ["--rows", "5", "--seeds", "1", "--repeats", "1"],
                            estimator_checks),
    "lime_image": Benchmark("bench_black_box.py", "black-box-", ["--only", "lime_image", "lime_image_slic"],
                            ["--only", "lime_image", "lime_image_slic", "--repeats", "1"], black_box_checks),
    "rise": Benchmark("bench.py", "bench-", [], ["--repeats", "1", "--big-masks", "8000"], rise_checks),
}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("onnxruntime", "numpy", "grpcio", "torch", "captum", "shap", "lime", "scikit-learn"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def newest(folder: Path, prefix: str) -> Path | None:
    found = sorted(folder.glob(f"{prefix}*.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run: figures less reliable)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    run_dir = args.out / f"speed-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "service"), str(ROOT / "clients" / "python"), str(ROOT / "tests"), str(HERE),
         os.environ.get("PYTHONPATH", "")])}
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{cpu_model()}, "
                              f"{os.cpu_count()} cores, {platform.machine()}", "versions": versions(),
                              "quick": args.quick, "benchmarks": {}}
    rows: list[tuple[str, Check, str]] = []
    for name in args.only or list(BENCHMARKS):
        bench = BENCHMARKS[name]
        command = [sys.executable, str(HERE / bench.script), *(bench.quick_args if args.quick else bench.args),
                   "--out", str(run_dir)]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        load_before, began = os.getloadavg()[0], time.perf_counter()
        done = subprocess.run(command, env=env, cwd=ROOT)
        entry: dict[str, Any] = {"command": command[1:], "returncode": done.returncode,
                                 "seconds": time.perf_counter() - began, "load_average_before": load_before,
                                 "load_average_after": os.getloadavg()[0]}
        path = newest(run_dir, bench.prefix)
        result = json.loads(path.read_text()) if done.returncode == 0 and path else None
        if result is None:
            checks: list[Check] = [(f"{name}: the benchmark failed (exit {done.returncode})", None, "", False)]
        else:
            checks = bench.checks(result)
            entry["report"] = str(path)
            other = result.get("other_load", {}).get("other_processes")
            entry["other_load"] = other
        entry["checks"] = [{"figure": f, "value": v, "target": t, "met": m} for f, v, t, m in checks]
        report["benchmarks"][name] = entry
        load = entry.get("other_load")
        note = (f"other load {100 * load:.0f}%" if load is not None
                else f"load avg {entry['load_average_before']:.1f}-{entry['load_average_after']:.1f}")
        rows.extend((name, check, note) for check in checks)
    path = run_dir / "speed.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print()
    print(f"{report['date']}, {report['machine']}; " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    print(f"{'figure':62s} {'measured':>9s} {'target':>8s}  met   load")
    for _, (figure, value, target, met), note in rows:
        shown = "-" if value is None else f"{value:.3g}"
        print(f"{figure:62s} {shown:>9s} {target:>8s}  {'yes' if met else 'NO' if met is False else '?':4s}  {note}")
    print(f"written {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0 if all(entry["returncode"] == 0 for entry in report["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
