#!/usr/bin/env python3
"""Does a reloaded model give its memory back? RSS of a server over repeated LoadModel reloads.

    python benchmarks/reload_memory.py                 # the demo repository, 5 reloads of each model
    python benchmarks/reload_memory.py --big-mb 200    # plus a synthetic tabular model with 200 MB of weights

A real server (its own process, polling off) serves a copy of the demo repository. Each round
explains with several methods on every model (so each version builds several sessions), reloads
every model with LoadModel (a new version, loaded beside the old one), waits until the old
versions' sessions are closed (the server log says so) and reads the server's RSS. With the old
versions' memory released, RSS stays flat from round to round; a leak grows it by at least one
model (and its sessions) per round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from _server import DEMO, memory_bytes, start_server, stop_server  # noqa: E402  (the test suite's server launcher)

from explaind_client.v1 import explaind_pb2 as pb  # noqa: E402

IMAGE = np.zeros((3, 64, 64), np.float32)
WINE = np.load(DEMO / "repository" / "tabular" / "background.npy")[0].astype(np.float32)


def big_model(folder: Path, megabytes: int) -> None:
    """A tabular model whose weights take `megabytes`: x [N, 16] -> MatMul [16, H] -> ReduceMean -> 2 classes."""
    hidden = megabytes * (1 << 20) // (16 * 4)
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, hidden)).astype(np.float32)
    w2 = rng.normal(size=(hidden, 2)).astype(np.float32) / hidden
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["logits"])],
        "big", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir()
    onnx.save_model(model, str(folder / "model.onnx"))
    (folder / "model.yaml").write_text("kind: tabular\noutput: {scores: logits}\nlabels: [a, b]\n")


def closed_versions(log: str) -> set[int]:
    """Versions whose sessions the server closed as retired (from its JSON log)."""
    out = set()
    for line in log.splitlines():
        if line.startswith("{") and "retired model version" in line:
            out.add(json.loads(line)["version"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--big-mb", type=int, default=0, help="also serve a synthetic model this large (0: none)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        shutil.copytree(DEMO / "repository", repo)
        if args.big_mb:
            big_model(repo / "big", args.big_mb)
        server = start_server(repo, Path(tmp) / "server.log", repository_poll_s=0)
        try:
            with server.client(timeout=300) as client:
                names = [m.name for m in client.list_models()]

                def work() -> None:
                    client.explain("shapes", method="occlusion", tensor=IMAGE, params={"window": 16, "stride": 16})
                    client.explain("shapes", method="integrated_gradients", tensor=IMAGE, params={"n_steps": 8})
                    client.explain("shapes", method="grad_cam", tensor=IMAGE)
                    client.explain("tabular", method="kernel_shap", tensor=WINE, params={"nsamples": 200})
                    client.explain("tabular", method="occlusion", tensor=WINE)
                    if args.big_mb:
                        client.explain("big", method="occlusion", tensor=np.ones(16, np.float32), params={"baseline": 0.0})
                        client.explain("big", method="integrated_gradients", tensor=np.ones(16, np.float32),
                                       params={"n_steps": 8})

                work()
                rows = [("start", memory_bytes(server.process.pid) / 2**20)]
                for round_ in range(1, args.reloads + 1):
                    before = closed_versions(server.log())
                    for name in names:
                        client.stub.LoadModel(pb.LoadModelRequest(name=name), timeout=300)
                    end = time.monotonic() + 60
                    while len(closed_versions(server.log()) - before) < len(names) and time.monotonic() < end:
                        time.sleep(0.2)
                    work()  # the new versions build their sessions
                    rows.append((f"reload {round_}", memory_bytes(server.process.pid) / 2**20))
        finally:
            stop_server(server)
    base = rows[0][1]
    print(f"models: {', '.join(names)}; {args.reloads} reloads of each")
    print(f"{'after':<10} {'RSS MB':>8} {'vs start':>9}")
    for label, mb in rows:
        print(f"{label:<10} {mb:8.1f} {mb - base:+9.1f}")


if __name__ == "__main__":
    main()
