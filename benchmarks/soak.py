#!/usr/bin/env python3
"""Soak: a mixed request load for a long time, the server's RSS sampled; growth after warm-up.

    python benchmarks/soak.py                   # 10 minutes; prints a table and writes JSON
    python benchmarks/soak.py --minutes 3       # a shorter run

`--clients` (6) clients loop requests drawn at random from a mix of methods on both demo models
(RISE, occlusion, LIME and Kernel SHAP on images and on the tabular model, Integrated Gradients,
SmoothGrad, Grad-CAM, saliency, Grad-CAM with evaluation metrics beside it, a streamed RISE with partial maps, now and then a request refused
as invalid), each with a fresh seed and a `--deadline` (30 s). The server's RSS is sampled every
`--sample-s` (1 s: the RSS swings by 20-70 MiB as onnxruntime's arena is released and regrown, so
the window means need many samples). Growth after warm-up: the mean RSS over the last `--window` (20%) of the run
against the mean over the same span right after `--warmup` (20% of the run), in percent (target < 2%).
Every outcome is counted; anything but OK, the invalid requests' INVALID_ARGUMENT and refusals under
load (RESOURCE_EXHAUSTED) is an error.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from _server import memory_bytes, start_server, stop_server  # noqa: E402  (the test suite's server launcher)

from explaind_client import build_request  # noqa: E402
from explaind_client.v1 import explaind_pb2_grpc as pb_grpc  # noqa: E402

MODEL_DIR = ROOT / "service" / "explaind" / "demo" / "repository"


def mix(rng: random.Random) -> tuple[str, object, bool]:
    """(name, request, stream?) drawn from the mix."""
    seed = rng.randrange(1, 1 << 62)
    image = np.random.default_rng(seed % 1000).normal(size=(3, 64, 64)).astype(np.float32)
    row = np.random.default_rng(seed % 1000).normal(size=13).astype(np.float32)
    choices = [
        ("rise", lambda: build_request("shapes", method="rise", tensor=image, seed=seed,
                                       params={"num_masks": rng.choice([1000, 2000, 4000])}), False),
        ("rise_stream", lambda: build_request("shapes", method="rise", tensor=image, seed=seed,
                                              params={"num_masks": 2000}), True),
        ("occlusion", lambda: build_request("shapes", method="occlusion", tensor=image, seed=seed,
                                            params={"window": [rng.choice([8, 16])], "stride": [8]}), False),
        ("lime_image", lambda: build_request("shapes", method="lime", tensor=image, seed=seed,
                                             params={"num_samples": 300}), False),
        ("kernel_shap_image", lambda: build_request("shapes", method="kernel_shap", tensor=image, seed=seed,
                                                    params={"nsamples": 300}), False),
        ("integrated_gradients", lambda: build_request("shapes", method="integrated_gradients", tensor=image,
                                                       seed=seed, params={"n_steps": 32}), False),
        ("smooth_grad", lambda: build_request("shapes", method="smooth_grad", tensor=image, seed=seed,
                                              params={"num_samples": 16}), False),
        ("grad_cam", lambda: build_request("shapes", method="grad_cam", tensor=image, seed=seed), False),
        ("saliency", lambda: build_request("shapes", method="saliency", tensor=image, seed=seed), False),
        ("grad_cam_evaluated", lambda: build_request("shapes", method="grad_cam", tensor=image, seed=seed,
                                                     evaluate=[("deletion", {"steps": rng.choice([16, 32])}),
                                                               "insertion", "pointing_game"],
                                                     box=[8, 8, 40, 40]), False),
        ("lime_tabular", lambda: build_request("tabular", method="lime", tensor=row, seed=seed,
                                               params={"num_samples": 1000}), False),
        ("kernel_shap_tabular", lambda: build_request("tabular", method="kernel_shap", tensor=row, seed=seed,
                                                      params={"nsamples": 500}), False),
        ("invalid", lambda: build_request("shapes", method="rise", tensor=row, seed=seed), False),
    ]
    name, make, stream = rng.choice(choices)
    return name, make(), stream


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: dict[str, dict[str, int]] = {}
        self.latency: dict[str, list[float]] = {}

    def add(self, name: str, code: str, seconds: float) -> None:
        with self.lock:
            self.codes.setdefault(name, {}).setdefault(code, 0)
            self.codes[name][code] += 1
            if code == "OK":
                self.latency.setdefault(name, []).append(seconds)


def client_loop(address: str, end: float, deadline: float, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        while time.monotonic() < end:
            name, request, stream = mix(rng)
            started = time.monotonic()
            try:
                if stream:
                    for _ in stub.ExplainStream(request, timeout=deadline):
                        pass
                else:
                    stub.Explain(request, timeout=deadline)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
                if code == "RESOURCE_EXHAUSTED":
                    hint = dict(exc.trailing_metadata() or ()).get("retry-after-ms")
                    time.sleep(min(float(hint or 100) / 1000, 5.0))
            tally.add(name, code, time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--deadline", type=float, default=30.0)
    parser.add_argument("--sample-s", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction of the run before growth is measured")
    parser.add_argument("--window", type=float, default=0.2, help="fraction of the run each mean is taken over")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60
    server = start_server(MODEL_DIR, args.out / "soak-server.log", metrics_port=-1)
    samples: list[tuple[float, float]] = []
    tally = Tally()
    try:
        pid = server.process.pid
        started = time.monotonic()
        end = started + seconds
        threads = [threading.Thread(target=client_loop, args=(server.address, end, args.deadline, 100 + i, tally))
                   for i in range(args.clients)]
        for thread in threads:
            thread.start()
        while time.monotonic() < end:
            samples.append((time.monotonic() - started, memory_bytes(pid) / 2**20))
            time.sleep(min(args.sample_s, max(0.0, end - time.monotonic())))
        for thread in threads:
            thread.join(args.deadline + 10)
        samples.append((time.monotonic() - started, memory_bytes(pid) / 2**20))
    finally:
        stop_server(server)

    def mean(lo: float, hi: float) -> float:
        values = [rss for t, rss in samples if lo <= t <= hi]
        return sum(values) / len(values) if values else float("nan")

    after_warmup = mean(args.warmup * seconds, (args.warmup + args.window) * seconds)
    last = mean((1 - args.window) * seconds, seconds + args.deadline + 10)
    growth = 100 * (last - after_warmup) / after_warmup
    # The trend after warm-up: a least-squares line through every sample, its slope and standard error.
    times = np.array([t for t, _ in samples if t >= args.warmup * seconds]) / 60
    rss = np.array([r for t, r in samples if t >= args.warmup * seconds])
    (slope, _), cov = np.polyfit(times, rss, 1, cov=True) if len(rss) > 3 else ((float("nan"), 0.0), np.zeros((2, 2)))
    slope_se = float(np.sqrt(cov[0, 0]))
    total = {code: sum(c.get(code, 0) for c in tally.codes.values()) for code in
             sorted({code for c in tally.codes.values() for code in c})}
    errors = {name: {k: v for k, v in codes.items() if k not in ("OK", "RESOURCE_EXHAUSTED") and
                     not (name == "invalid" and k == "INVALID_ARGUMENT")}
              for name, codes in tally.codes.items()}
    errors = {name: codes for name, codes in errors.items() if codes}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "minutes": args.minutes, "clients": args.clients,
        "requests": sum(total.values()), "codes": total, "by_method": tally.codes, "errors": errors,
        "latency_p50_s": {name: float(np.percentile(v, 50)) for name, v in tally.latency.items()},
        "rss_mib": {"first": samples[0][1], "after_warmup_mean": after_warmup, "last_mean": last,
                    "max": max(r for _, r in samples), "growth_percent": growth,
                    "slope_mib_per_min": float(slope), "slope_se_mib_per_min": slope_se},
        "rss_samples": samples,
    }
    print(f"soak: {args.minutes:g} min, {args.clients} clients, {result['requests']} requests")
    print(f"  outcomes            {', '.join(f'{k} {v}' for k, v in total.items())}")
    print(f"  errors              {errors or 'none'}")
    print(f"  RSS                 first {samples[0][1]:.0f} MiB, after warm-up {after_warmup:.1f} MiB, "
          f"last {last:.1f} MiB, max {result['rss_mib']['max']:.0f} MiB")
    print(f"  growth after warm-up {growth:+.2f}%   (target < 2%)")
    print(f"  trend after warm-up {slope:+.2f} ± {slope_se:.2f} MiB/min (least squares over {len(rss)} samples)")
    for name, p50 in sorted(result["latency_p50_s"].items()):
        print(f"  {name:<22} p50 {1000 * p50:8.1f} ms  {tally.codes[name]}")
    path = args.out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written {path}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
