#!/usr/bin/env python3
"""Idle RSS of `explaind serve` on the demo repository, 5 s after it is healthy, for two copies of the
service code, alternating (each start a fresh process):

    git archive <commit> service | tar -x -C /tmp/before
    python benchmarks/idle_rss.py /tmp/before/service service 3
"""
import os
import statistics
import sys
import time
from pathlib import Path

WT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(WT / "tests" / "integration"))
from _server import DEMO, memory_bytes, start_server, stop_server  # noqa: E402


def one(service: str) -> float:
    """MiB resident of a server running the code under `service`, idle 5 s after start."""
    os.environ["PYTHONPATH"] = f"{service}:{WT}/clients/python"
    srv = start_server(DEMO / "repository", Path("/tmp/explaind-idle-rss.log"))
    try:
        time.sleep(5)
        return memory_bytes(srv.process.pid) / 2**20
    finally:
        stop_server(srv)


rows: dict[str, list[float]] = {"before": [], "after": []}
before, after = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
for i in range(int(sys.argv[3]) if len(sys.argv) > 3 else 3):
    for name, service in (("before", before), ("after", after)):
        rows[name].append(one(str(service)))
print({k: [round(v, 1) for v in vs] for k, vs in rows.items()})
print("median before %.1f MiB, after %.1f MiB, saved %.1f MiB" % (statistics.median(rows["before"]), statistics.median(rows["after"]), statistics.median(rows["before"]) - statistics.median(rows["after"])))
