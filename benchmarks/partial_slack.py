#!/usr/bin/env python3
"""How early partial answers (allow_partial) arrive before their deadline, through a real server.

    python benchmarks/partial_slack.py                 # 10 requests per method, 1 s deadlines
    python benchmarks/partial_slack.py --requests 30 --deadline 2

For RISE (60,000 masks), LIME (50,000 samples) and occlusion (1x1 windows, 4,097 rows) on the `shapes`
demo CNN, after a warm-up that builds the sessions: each request with allow_partial and a deadline
far too short to finish; prints how many came back OK and partial, the slack (deadline minus the
client's arrival time: min and median, ms) and the model evaluations used. The slack is what is left
of the server's stop margin (`--partial-margin-ms`, 50 by default, plus the slowest batch fold) after
finishing the answer and sending it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from _server import start_server, stop_server  # noqa: E402  (the test suite's server launcher)

from explaind_client import build_request  # noqa: E402
from explaind_client.v1 import explaind_pb2_grpc as pb_grpc  # noqa: E402

DEMO = ROOT / "service" / "explaind" / "demo"
CASES = [("rise", {"num_masks": 60_000}, {"num_masks": 50}),
         ("lime", {"num_samples": 50_000}, {"num_samples": 50}),
         ("occlusion", {"window": [1], "stride": [1]}, {"window": [1], "stride": [32]})]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--deadline", type=float, default=1.0, help="seconds")
    args = parser.parse_args()
    boxes = json.loads((DEMO / "examples" / "boxes.json").read_text())
    image = (DEMO / "examples" / sorted(boxes)[0]).read_bytes()
    logs = Path(tempfile.mkdtemp())
    server = start_server(DEMO / "repository", logs / "server.log", max_num_masks=60_000, metrics_port=-1)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.ExplainerStub(channel)
            for method, params, warm in CASES:
                stub.Explain(build_request("shapes", method=method, image=image, params=warm), timeout=120)
                slack, used, failed = [], [], 0
                for i in range(args.requests):
                    message = build_request("shapes", method=method, image=image, params=params, seed=i + 1)
                    message.allow_partial = True
                    started = time.monotonic()
                    try:
                        response = stub.Explain(message, timeout=args.deadline)
                    except grpc.RpcError as err:
                        failed += 1
                        print(f"{method}: {err.code().name} {err.details()}")
                        time.sleep(args.deadline)  # the batches on the device at the stop still run
                        continue
                    slack.append((started + args.deadline - time.monotonic()) * 1000)
                    used.append(response.stats.model_evaluations)
                    assert not response.complete
                line = f"{method:10} partial OK {len(slack)}/{args.requests}"
                if slack:
                    line += (f", slack ms min {min(slack):.1f} median {statistics.median(slack):.1f}, "
                             f"model evaluations median {statistics.median(used):.0f}")
                print(line)
    finally:
        stop_server(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
