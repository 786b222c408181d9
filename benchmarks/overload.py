#!/usr/bin/env python3
"""Goodput under overload: many clients looping a request the server cannot all finish in time.

    python benchmarks/overload.py                      # about 2.5 minutes; prints a table, writes JSON
    python benchmarks/overload.py --clients 32 --seconds 20 --masks 5000   # a shorter run

1. Solo capacity: one client looping RISE (`--masks`, 20,000) on the `shapes` demo with a `--deadline`
   (30 s) for `--solo-seconds`, before the overload run and again after it (the machine's speed drifts:
   the mean of the two): OK requests per second and the median latency.
2. Overload: `--clients` (128) clients, starting one by one over `--ramp` (1 s), looping the same
   request with the same deadline for `--seconds` (60): goodput (OK requests completed in the window
   per second) as a fraction of solo capacity (target >= 0.8), the latency of refusals at admission
   (RESOURCE_EXHAUSTED) p50/p99 (target p99 < 50 ms), apart from admitted requests shed later because
   the measured speed fell (RESOURCE_EXHAUSTED "can no longer finish"), every outcome counted, and the
   server's RSS before and after. A refused client waits the `retry-after-ms` the server sends (times
   a random 1-1.2 against herding) before it loops, as a well-behaved client does;
   `--ignore-retry-after` loops at once instead.
3. Recovery: at the end of the window every client goes away (its call cancelled); one normal request
   starts 1 s later: its latency against the solo median.
The server runs in its own process (as tests/integration starts one); clients are coroutines on
grpc.aio channels in this process. Other load on the machine is measured from /proc/stat during the
overload run and reported: clients and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from _server import memory_bytes, start_server, stop_server  # noqa: E402  (the test suite's server launcher)

from explaind_client import build_request  # noqa: E402
from explaind_client.v1 import explaind_pb2_grpc as pb_grpc  # noqa: E402

MODEL_DIR = ROOT / "service" / "explaind" / "demo" / "repository"
CHANNELS = 8


@dataclass
class Outcomes:
    started: float = 0.0
    ok: list[float] = field(default_factory=list)            # completion times (monotonic)
    ok_latency: list[float] = field(default_factory=list)
    refused_latency: list[float] = field(default_factory=list)   # refused at admission
    shed_latency: list[float] = field(default_factory=list)      # admitted, then refused before it started
    retry_after_ms: list[int] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)

    def count(self, code: str) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1


def cpu_ticks(pid: int | None = None) -> float:
    """CPU seconds of a process (user + system), or of the whole machine (busy: user, nice, system, irq,
    softirq) when pid is None."""
    ticks = os.sysconf("SC_CLK_TCK")
    if pid is None:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / ticks
    stat = Path(f"/proc/{pid}/stat").read_text()
    values = stat[stat.rindex(")") + 2:].split()
    return (int(values[11]) + int(values[12])) / ticks


async def one(stub: pb_grpc.ExplainerStub, request, deadline: float, out: Outcomes | None,
              details: list[str] | None = None) -> tuple[str, int | None]:
    """One call; returns its code name and the retry hint (ms) of a refusal."""
    started = time.monotonic()
    call = stub.Explain(request, timeout=deadline)
    try:
        await call
        code, retry = "OK", None
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        retry = None
        if details is not None:
            details.append(exc.details() or "")
        if code == "RESOURCE_EXHAUSTED" and "can no longer finish" in (exc.details() or ""):
            code = "RESOURCE_EXHAUSTED (shed)"
        for key, value in (exc.trailing_metadata() or ()):
            if key == "retry-after-ms":
                retry = int(value)
    elapsed = time.monotonic() - started
    if out is not None:
        out.count(code)
        if code == "OK":
            out.ok.append(time.monotonic())
            out.ok_latency.append(elapsed)
        elif code.startswith("RESOURCE_EXHAUSTED"):
            (out.shed_latency if code.endswith("(shed)") else out.refused_latency).append(elapsed)
            if retry is not None:
                out.retry_after_ms.append(retry)
    return code, retry


async def loop_client(stub, request, deadline: float, end: float, out: Outcomes, honour_retry: bool,
                      delay: float) -> None:
    await asyncio.sleep(delay)
    while time.monotonic() < end:
        code, retry = await one(stub, request, deadline, out)
        if code.startswith("RESOURCE_EXHAUSTED") and honour_retry and retry is not None:
            await asyncio.sleep(min(retry / 1000 * random.uniform(1.0, 1.2), max(0.0, end - time.monotonic())))


async def run_clients(address: str, request, clients: int, seconds: float, deadline: float,
                      honour_retry: bool, ramp: float = 0.0) -> Outcomes:
    """`clients` loops for `seconds`, starting one by one over `ramp` seconds; then every call still
    running is cancelled (the clients leave)."""
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
                for _ in range(min(CHANNELS, clients))]
    stubs = [pb_grpc.ExplainerStub(c) for c in channels]
    out = Outcomes(started=time.monotonic())
    end = out.started + seconds
    tasks = [asyncio.ensure_future(loop_client(stubs[i % len(stubs)], request, deadline, end, out, honour_retry,
                                               ramp * i / clients)) for i in range(clients)]
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return out


async def timed(address: str, request, deadline: float) -> tuple[str, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        started = time.monotonic()
        details: list[str] = []
        code, _ = await one(pb_grpc.ExplainerStub(channel), request, deadline, None, details)
        if details:
            print(f"  ({code}: {details[0]})")
        return code, time.monotonic() - started


def steal_seconds() -> float:
    """CPU time the host took from this virtual machine (/proc/stat steal), summed over its cores."""
    return int(Path("/proc/stat").read_text().splitlines()[0].split()[8]) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def measure(args: argparse.Namespace, address: str, pid: int) -> dict:
    x = np.random.default_rng(1).normal(size=(3, 64, 64)).astype(np.float32)
    request = build_request("shapes", method="rise", tensor=x, seed=7, params={"num_masks": args.masks})
    warm = build_request("shapes", method="rise", tensor=x, seed=7, params={"num_masks": 512})
    for _ in range(2):
        await timed(address, warm, args.deadline)  # sessions built, costs measured

    async def solo_run() -> tuple[Outcomes, float]:
        out = await run_clients(address, request, 1, args.solo_seconds, args.deadline, True)
        window = (out.ok[-1] - out.started) if out.ok else args.solo_seconds
        return out, (len(out.ok) / window if out.ok else float("nan"))

    solo, capacity_before = await solo_run()

    rss_before = memory_bytes(pid) / 2**20
    machine0, server0, me0, wall0 = cpu_ticks(), cpu_ticks(pid), cpu_ticks(os.getpid()), time.monotonic()
    steal0 = steal_seconds()
    load = await run_clients(address, request, args.clients, args.seconds, args.deadline, not args.ignore_retry_after,
                             args.ramp)
    machine1, server1, me1, wall1 = cpu_ticks(), cpu_ticks(pid), cpu_ticks(os.getpid()), time.monotonic()
    steal1 = steal_seconds()
    span = wall1 - wall0
    ended = time.monotonic()
    await asyncio.sleep(max(0.0, ended + 1.0 - time.monotonic()))
    machine2, server2, wall2 = cpu_ticks(), cpu_ticks(pid), time.monotonic()
    code_1, latency_1 = await timed(address, request, args.deadline)
    span_after = max(time.monotonic() - wall2, 1.0)  # the CPU counters tick at 100 Hz
    other_after = max(0.0, (cpu_ticks() - machine2 - (cpu_ticks(pid) - server2)) / span_after)
    rss_after = memory_bytes(pid) / 2**20
    solo_after, capacity_after = await solo_run()  # the machine's speed drifts: solo before and after
    capacity = (capacity_before + capacity_after) / 2
    solo_p50 = percentile(solo.ok_latency + solo_after.ok_latency, 50)

    in_window = [t for t in load.ok if t <= load.started + args.seconds]
    goodput = len(in_window) / args.seconds
    cores = os.cpu_count() or 1
    return {
        "masks": args.masks, "deadline_s": args.deadline, "clients": args.clients, "seconds": args.seconds,
        "honour_retry_after": not args.ignore_retry_after, "ramp_s": args.ramp,
        "solo": {"ok": len(solo.ok) + len(solo_after.ok), "capacity_rps": capacity, "p50_s": solo_p50,
                 "capacity_before_rps": capacity_before, "capacity_after_rps": capacity_after,
                 "codes": {k: solo.codes.get(k, 0) + solo_after.codes.get(k, 0)
                           for k in {*solo.codes, *solo_after.codes}}},
        "overload": {
            "codes": load.codes, "ok_in_window": len(in_window), "goodput_rps": goodput,
            "goodput_fraction": goodput / capacity, "ok_p50_s": percentile(load.ok_latency, 50),
            "ok_max_s": max(load.ok_latency, default=float("nan")),
            "refused_p50_ms": 1000 * percentile(load.refused_latency, 50),
            "refused_p99_ms": 1000 * percentile(load.refused_latency, 99),
            "shed": len(load.shed_latency), "shed_p50_s": percentile(load.shed_latency, 50),
            "retry_after_ms_p50": percentile([float(v) for v in load.retry_after_ms], 50),
            "requests": sum(load.codes.values()),
            "cpu_cores_server": (server1 - server0) / span, "cpu_cores_clients": (me1 - me0) / span,
            "cpu_cores_other": max(0.0, (machine1 - machine0 - (server1 - server0) - (me1 - me0)) / span),
            "cpu_cores_stolen_by_host": (steal1 - steal0) / span,
            "cores": cores,
        },
        "rss_mib": {"before": rss_before, "after": rss_after, "peak": memory_bytes(pid, "VmHWM") / 2**20},
        "recovery": {"after_1_s": {"code": code_1, "latency_s": latency_1, "ratio": latency_1 / solo_p50,
                                   "cpu_cores_other": other_after}},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=20_000)
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds, every request")
    parser.add_argument("--clients", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=60.0, help="the overload window")
    parser.add_argument("--solo-seconds", type=float, default=30.0)
    parser.add_argument("--ignore-retry-after", action="store_true", help="refused clients loop at once")
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds over which the clients start")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    server = start_server(MODEL_DIR, args.out / "overload-server.log", metrics_port=-1,
                          intra_op_threads=args.threads, max_num_masks=max(100_000, args.masks))
    try:
        result = asyncio.run(measure(args, server.address, server.process.pid))
    finally:
        stop_server(server)
    result.update({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} "
                   f"cores", "threads": args.threads})
    solo, load, rss, rec = result["solo"], result["overload"], result["rss_mib"], result["recovery"]
    rows = [
        ("solo capacity (before, after)", f"{solo['capacity_rps']:.3f} requests/s ({solo['capacity_before_rps']:.3f}, "
         f"{solo['capacity_after_rps']:.3f}; {solo['ok']} OK, p50 {solo['p50_s']:.2f} s)", ""),
        ("overload goodput", f"{load['goodput_rps']:.3f} requests/s ({load['ok_in_window']} OK in "
         f"{args.seconds:.0f} s)", ""),
        ("goodput / solo capacity", f"{load['goodput_fraction']:.2f}", ">= 0.8"),
        ("refusal latency p50 / p99", f"{load['refused_p50_ms']:.1f} / {load['refused_p99_ms']:.1f} ms", "p99 < 50 ms"),
        ("admitted, then shed", f"{load['shed']} (after p50 {load['shed_p50_s']:.2f} s)", ""),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(load["codes"].items())), ""),
        ("OK latency p50 / max", f"{load['ok_p50_s']:.2f} / {load['ok_max_s']:.2f} s", f"< {args.deadline:.0f} s"),
        ("server RSS before / after / peak", f"{rss['before']:.0f} / {rss['after']:.0f} / {rss['peak']:.0f} MiB", ""),
        ("normal request 1 s after the load", f"{rec['after_1_s']['code']} {rec['after_1_s']['latency_s']:.2f} s "
         f"(x{rec['after_1_s']['ratio']:.2f} solo; other load {rec['after_1_s']['cpu_cores_other']:.2f} cores)", "~x1"),
        ("CPU cores: server / clients / other / host steal", f"{load['cpu_cores_server']:.2f} / "
         f"{load['cpu_cores_clients']:.2f} / {load['cpu_cores_other']:.2f} / {load['cpu_cores_stolen_by_host']:.2f} "
         f"of {load['cores']}", ""),
    ]
    print(f"overload: {args.clients} clients, RISE {args.masks} masks, {args.deadline:.0f} s deadlines, "
          f"{args.seconds:.0f} s, {'honouring' if not args.ignore_retry_after else 'ignoring'} retry-after")
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"  {name:<{width}}  {value}" + (f"   (target {target})" if target else ""))
    path = args.out / f"overload-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
