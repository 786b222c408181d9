#!/usr/bin/env python3
"""The survey's comparison, reproduced: every explanation method on held-out `shapes` images whose
object boxes are known, judged by explaind's own metrics through a real server.

    python benchmarks/evaluation.py                 # 20 held-out images; a table, JSON and a PNG plot
    python benchmarks/evaluation.py --images 5 --methods saliency,grad_cam   # a shorter run

For each image method of the `shapes` demo (ListMethods) and each of `--images` images drawn from
make_dataset(seed=3) (the model was trained on seed 1 and validated on seed 2), one Evaluate call
explains the image for its true class and asks for the pointing game and energy pointing game (the
box), deletion and insertion AUC, MPRT (rank correlation at full randomisation), max-sensitivity and
infidelity, whichever of these the server offers (MPRT: the Spearman correlation at full
randomisation and its mean over the cascade, top layer first, and "MPRT const" the mean number of
steps whose map was constant, where the correlation is defined as 0, or 1 for equal maps)
(ListMetrics; the rest print "-"). Printed per method:
the mean of each metric over the images, and the cost (model evaluations and seconds of the
explanation alone, a plain Explain call with the same seed before the Evaluate, and of the whole
Evaluate call, at the client). Written beside: the JSON of every figure and a PNG
of the mean deletion and insertion curves per method. The server runs in its own process; the machine's
other load is reported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from _server import DEMO, start_server, stop_server  # noqa: E402  (the test suite's server launcher)

from explaind.demo.shapes_data import make_dataset  # noqa: E402
from explaind_client import ExplaindClient  # noqa: E402

HELD_OUT_SEED = 3
# What each metric is asked with: light enough for every method on every image (defaults otherwise).
METRICS: dict[str, dict] = {
    "pointing_game": {},
    "energy_pointing_game": {},
    "deletion": {"steps": 64},
    "insertion": {"steps": 64},
    "mprt": {},
    "max_sensitivity": {"nr_samples": 5},
    "infidelity": {},
}
COLUMNS = [("pointing_game", "pointing", "higher"), ("energy_pointing_game", "energy", "higher"),
           ("deletion", "deletion", "lower"), ("insertion", "insertion", "higher"),
           ("mprt", "MPRT rho", "lower"), ("mprt_mean", "MPRT mean rho", "lower"),
           ("max_sensitivity", "max-sens", "lower"),
           ("infidelity", "infidelity", "lower")]


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def cpu_busy() -> tuple[float, float]:
    fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run(args: argparse.Namespace, address: str) -> dict:
    images, labels, boxes = make_dataset(args.images, seed=HELD_OUT_SEED)
    with ExplaindClient(address, timeout=args.timeout) as client:
        offered = {m.name: m for m in client.list_metrics("shapes")}
        metrics = [(name, params) for name, params in METRICS.items() if name in offered]
        for name, params in metrics:  # parameters the server's metric does not declare fall back to defaults
            declared = {p.name for p in offered[name].parameters}
            for key in [k for k in params if k not in declared]:
                params.pop(key)
        methods = args.methods or [m.name for m in client.list_methods("shapes")]
        report: dict = {"metrics": [n for n, _ in metrics], "methods": {}}
        for method in methods:
            rows = []
            for i in range(args.images):
                # The explanation alone first (same seed: the same map), for its own cost.
                started = time.monotonic()
                alone = client.explain("shapes", method=method, image=png(images[i]), target=int(labels[i]),
                                       seed=1000 + i)
                explain_seconds = time.monotonic() - started
                started = time.monotonic()
                result = client.evaluate("shapes", method=method, image=png(images[i]), target=int(labels[i]),
                                         box=[int(v) for v in boxes[i]], seed=1000 + i,
                                         metrics=[(n, dict(p)) for n, p in metrics])
                e = result.explanation
                rows.append({
                    "seconds": time.monotonic() - started,
                    "explain_seconds": explain_seconds,
                    "explain_evaluations": int(alone.stats.get("model_evaluations", 0)),
                    "evaluations": int(e.stats.get("model_evaluations", 0)) + sum(
                        int(r.stats.get("model_evaluations", 0)) for r in result.results),
                    "values": {**{r.metric: r.value for r in result.results},
                               **{"mprt_mean": float(np.mean(r.curves["spearman"])) for r in result.results
                                  if r.metric == "mprt" and "spearman" in r.curves}},
                    "curves": {r.metric: r.curves["scores"].tolist() for r in result.results
                               if r.metric in ("deletion", "insertion")},
                    "mprt_spearman": [r.curves["spearman"].tolist() for r in result.results if r.metric == "mprt"],
                    "mprt_constant_steps": [r.figures.get("constant_steps") for r in result.results
                                            if r.metric == "mprt"],
                })
            report["methods"][method] = rows
            print(f"  {method}: {len(rows)} images, {np.mean([r['seconds'] for r in rows]):.2f} s each", flush=True)
    return report


def summary(report: dict) -> list[dict]:
    table = []
    for method, rows in report["methods"].items():
        line = {"method": method,
                "explain_evaluations": float(np.mean([r["explain_evaluations"] for r in rows])),
                "evaluations": float(np.mean([r["evaluations"] for r in rows])),
                "mprt_constant_steps": float(np.mean([c for r in rows for c in r.get("mprt_constant_steps", [])] or [0])),
                "explain_seconds": float(np.median([r["explain_seconds"] for r in rows])),
                "evaluate_seconds": float(np.median([r["seconds"] for r in rows]))}
        for metric, _, _ in COLUMNS:
            values = [r["values"][metric] for r in rows if metric in r["values"]]
            line[metric] = float(np.mean(values)) if values else None
        table.append(line)
    return table


def print_table(table: list[dict]) -> str:
    head = ["method"] + [f"{label} ({better[0]})" for _, label, better in COLUMNS] + [
        "MPRT const", "evals", "explain s", "evaluate evals", "evaluate s"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for row in table:
        cells = [row["method"]] + ["-" if row[m] is None else f"{row[m]:.3f}" for m, _, _ in COLUMNS]
        cells += [f"{row['mprt_constant_steps']:.1f}", f"{row['explain_evaluations']:.0f}", f"{row['explain_seconds']:.3f}", f"{row['evaluations']:.0f}",
                  f"{row['evaluate_seconds']:.2f}"]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ("deletion", "insertion")):
        for method, rows in report["methods"].items():
            curves = [r["curves"][metric] for r in rows if metric in r["curves"]]
            if curves:
                mean = np.mean(curves, axis=0)
                ax.plot(np.linspace(0, 1, len(mean)), mean, label=method)
        ax.set_title(f"{metric}: mean target probability")
        ax.set_xlabel("fraction of pixels " + ("removed" if metric == "deletion" else "revealed"))
        ax.set_ylim(0, 1)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m], default=None)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    server = start_server(DEMO / "repository", args.out / "evaluation-server.log", metrics_port=-1)
    busy0, total0 = cpu_busy()
    own0 = os.times()
    try:
        report = run(args, server.address)
    finally:
        stop_server(server)
    busy1, total1 = cpu_busy()
    table = summary(report)
    cores = os.cpu_count() or 1
    report.update(date=time.strftime("%Y-%m-%d"), machine=f"{platform.machine()}, {cores} cores, "
                  f"{platform.python_implementation()} {platform.python_version()}", summary=table,
                  cpu_busy_fraction=(busy1 - busy0) / max(total1 - total0, 1))
    text = print_table(table)
    print(text)
    print(f"machine: {report['machine']}; cores busy during the run: {report['cpu_busy_fraction']:.0%} "
          f"(server and this client; other load included); this client's CPU "
          f"{os.times().user - own0.user:.0f} s")
    json_path = args.out / f"evaluation-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=1))
    plot(report, args.out / f"evaluation-{stamp}.png")
    print(f"written {json_path} and {json_path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
