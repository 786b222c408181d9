#!/usr/bin/env python3
"""Ablation-CAM's rows run the model's tail after the layer only: its cost against Score-CAM's,
which runs the whole model on each of the same number of rows (one per channel).

    python benchmarks/ablation_cam.py [--repeats 15]

On the `shapes` demo through a real server (its own process): alternating ablation_cam and score_cam
Explain calls on one image for its predicted class (upsample none; both K + 1 model evaluations with
the prediction, ablation_cam one more for the unablated score), then aug_smooth for both (6 maps).
Prints the median client seconds of each, the ratio ablation / score of the medians, and the load
average before and after (the machine is shared: read the ratio, the seconds drift with the load).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from _server import DEMO, start_server, stop_server  # noqa: E402  (the test suite's server launcher)

from explaind.demo.shapes_data import make_dataset  # noqa: E402


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0] if Path("/proc/loadavg").exists() else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    images, _, _ = make_dataset(1, seed=3)
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="PNG")
    image = buffer.getvalue()
    before = load()
    server = start_server(DEMO / "repository", Path("/tmp") / "explaind-ablation-bench.log", metrics_port=-1)
    try:
        with server.client() as client:
            for aug in (False, True):
                seconds: dict[str, list[float]] = {"ablation_cam": [], "score_cam": []}
                evaluations = {}
                for i in range(args.repeats + 1):
                    for method in seconds:
                        began = time.perf_counter()
                        got = client.explain("shapes", method=method, image=image,
                                             params={"upsample": "none", "aug_smooth": aug})
                        if i:  # the first of each builds the sessions
                            seconds[method].append(time.perf_counter() - began)
                        evaluations[method] = got.stats["model_evaluations"]
                medians = {m: statistics.median(s) for m, s in seconds.items()}
                print(f"aug_smooth={aug}: " + "; ".join(f"{m} {medians[m] * 1000:.1f} ms ({evaluations[m]} evaluations)"
                                                         for m in medians)
                      + f"; ratio ablation/score {medians['ablation_cam'] / medians['score_cam']:.2f}")
    finally:
        stop_server(server)
    print(f"load average {before} before, {load()} after; {args.repeats} repeats, medians")
    return 0


if __name__ == "__main__":
    sys.exit(main())
