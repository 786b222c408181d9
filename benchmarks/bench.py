#!/usr/bin/env python3
"""explaind against the hardware limit, in one run on one machine.

    python benchmarks/bench.py            # the `shapes` demo CNN; prints a table and writes JSON

1. The limit: raw onnxruntime throughput of the model at the best batch size (images/s), with the
   same thread count the server uses.
2. explaind end to end through gRPC: RISE with 4000 masks for 1 client, and for 8 concurrent clients
   (masks/s over the whole run), divided by the limit measured right before each run at the best
   batch size (pairs alternate, so the machine's drifting speed cancels out; medians of the ratios).
3. Latency of a small occlusion request (17 windows) alone, then while a 50,000-mask RISE job runs:
   p50 and p99 divided by the solo p50.
4. Peak RSS of a fresh server after RISE with 4,000 masks and after 50,000 masks.
Medians of repeated runs; the server runs in its own process, as in production.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from _server import memory_bytes, start_server, stop_server  # noqa: E402  (the test suite's server launcher)

from explaind_client import ExplaindClient  # noqa: E402

MODEL_DIR = ROOT / "service" / "explaind" / "demo" / "repository"


def raw_throughput(model: Path, threads: int, batch_sizes: list[int], seconds: float) -> dict[int, float]:
    """Images/s at each batch size: the better of onnxruntime's default (spinning threads) and no spinning."""
    sessions = []
    for spin in ("1", "0"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        sessions.append(ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"]))
    name = sessions[0].get_inputs()[0].name
    results = {}
    for batch in batch_sizes:
        x = np.random.default_rng(0).normal(size=(batch, 3, 64, 64)).astype(np.float32)
        best = 0.0
        for session in sessions:
            session.run(None, {name: x})  # warm up
            rates = []
            for _ in range(3):
                runs, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    session.run(None, {name: x})
                    runs += 1
                rates.append(runs * batch / (time.perf_counter() - start))
            best = max(best, statistics.median(rates))
        results[batch] = best
    return results


def rise_rate(client: ExplaindClient, x: np.ndarray, clients: int, masks: int) -> float:
    """Masks per second for `clients` concurrent RISE requests of `masks` masks each."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda i: client.explain("shapes", method="rise", tensor=x, seed=i + 1,
                                               params={"num_masks": masks}), range(clients)))
    return clients * masks / (time.perf_counter() - start)


def paired_ratios(address: str, model: Path, threads: int, batch: int, repeats: int) -> dict[str, float]:
    """explaind's RISE throughput and the raw limit measured in alternation, so that the machine's
    drifting speed (other tenants, frequency) cancels out of each ratio; medians of the pairs."""
    x = np.random.default_rng(1).normal(size=(3, 64, 64)).astype(np.float32)
    pairs: dict[int, list[tuple[float, float]]] = {1: [], 8: []}
    with ExplaindClient(address) as client:
        rise_rate(client, x, 2, 256)  # sessions built
        for _ in range(repeats):
            for clients in (1, 8):
                limit = raw_throughput(model, threads, [batch], 1.0)[batch]
                pairs[clients].append((rise_rate(client, x, clients, 4000), limit))
    result = {}
    for clients, values in pairs.items():
        result[f"clients_{clients}_masks_per_s"] = statistics.median(v for v, _ in values)
        result[f"clients_{clients}_limit_images_per_s"] = statistics.median(l for _, l in values)
        result[f"clients_{clients}_ratio"] = statistics.median(v / l for v, l in values)
        result[f"clients_{clients}_ratios"] = [round(v / l, 3) for v, l in values]
    return result


def occlusion_latencies(client: ExplaindClient, x: np.ndarray, count: int, stop: threading.Event | None = None) -> list[float]:
    latencies = []
    for _ in range(count):
        if stop is not None and stop.is_set():
            break
        start = time.perf_counter()
        client.explain("shapes", method="occlusion", tensor=x, params={"window": [16], "stride": [16]})
        latencies.append(time.perf_counter() - start)
    return latencies


def latency_under_load(address: str, big_masks: int) -> dict[str, float]:
    x = np.random.default_rng(2).normal(size=(3, 64, 64)).astype(np.float32)
    with ExplaindClient(address) as client:
        occlusion_latencies(client, x, 5)
        solo = occlusion_latencies(client, x, 40)
        done = threading.Event()
        big = threading.Thread(target=lambda: (client.explain("shapes", method="rise", tensor=x,
                                                              params={"num_masks": big_masks}), done.set()))
        big.start()
        time.sleep(0.5)
        loaded = occlusion_latencies(client, x, 200, stop=done)
        big.join()
    solo_p50 = float(np.percentile(solo, 50))
    return {"solo_p50_ms": 1000 * solo_p50, "loaded_p50_ms": 1000 * float(np.percentile(loaded, 50)),
            "loaded_p99_ms": 1000 * float(np.percentile(loaded, 99)), "loaded_requests": len(loaded),
            "p50_ratio": float(np.percentile(loaded, 50)) / solo_p50,
            "p99_ratio": float(np.percentile(loaded, 99)) / solo_p50}


def rss_for(masks: int, log_dir: Path) -> float:
    server = start_server(MODEL_DIR, log_dir / f"rss-{masks}.log", metrics_port=-1)
    try:
        x = np.random.default_rng(3).normal(size=(3, 64, 64)).astype(np.float32)
        with ExplaindClient(server.address) as client:
            client.explain("shapes", method="rise", tensor=x, params={"num_masks": masks})
        return memory_bytes(server.process.pid, "VmHWM") / 2**20
    finally:
        stop_server(server)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=1.5, help="per raw measurement")
    parser.add_argument("--repeats", type=int, default=5, help="alternating raw/explaind pairs")
    parser.add_argument("--big-masks", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                    f"{platform.processor() or platform.platform()}", "onnxruntime": ort.__version__,
                    "threads": args.threads}

    print(f"raw onnxruntime, shapes CNN, {args.threads} threads")
    raw = raw_throughput(MODEL_DIR / "shapes" / "model.onnx", args.threads, [1, 8, 16, 32, 64, 128, 256], args.seconds)
    for batch, rate in raw.items():
        print(f"  batch {batch:4d}: {rate:9.1f} images/s")
    best_batch = max(raw, key=raw.get)
    limit = raw[best_batch]
    report["raw"] = {"by_batch": raw, "best_batch": best_batch, "limit_images_per_s": limit}

    server = start_server(MODEL_DIR, args.out / "bench-server.log", metrics_port=-1,
                          intra_op_threads=args.threads, max_num_masks=max(100_000, args.big_masks))
    try:
        rise = paired_ratios(server.address, MODEL_DIR / "shapes" / "model.onnx", args.threads, best_batch, args.repeats)
        report["rise_4000"] = rise
        for clients in (1, 8):
            print(f"RISE 4000 masks, {clients} client{'s' if clients > 1 else ' '}: "
                  f"{rise[f'clients_{clients}_masks_per_s']:8.1f} masks/s against "
                  f"{rise[f'clients_{clients}_limit_images_per_s']:8.1f} raw: ratio {rise[f'clients_{clients}_ratio']:.3f} "
                  f"(pairs {rise[f'clients_{clients}_ratios']}; target >= 0.85)")
        latency = latency_under_load(server.address, args.big_masks)
        report["occlusion_latency"] = latency
        print(f"small occlusion alone: p50 {latency['solo_p50_ms']:.1f} ms; during a {args.big_masks}-mask RISE: "
              f"p50 {latency['loaded_p50_ms']:.1f} ms (x{latency['p50_ratio']:.2f}), p99 {latency['loaded_p99_ms']:.1f} ms "
              f"(x{latency['p99_ratio']:.2f}) over {latency['loaded_requests']} requests  (target p50 ratio <= 3)")
    finally:
        stop_server(server)

    small, big = rss_for(4000, args.out), rss_for(args.big_masks, args.out)
    report["peak_rss_mib"] = {"rise_4000": small, f"rise_{args.big_masks}": big, "ratio": big / small}
    print(f"peak RSS: RISE 4000 {small:.1f} MiB, RISE {args.big_masks} {big:.1f} MiB, ratio {big / small:.3f} "
          "(target within 10%)")
    path = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
