"""The per-session memory cap (max_session_memory_bytes) measured: a model that allocates N floats at
run time, through a real server, with and without the cap; prints the answer and the server's peak
RSS growth (VmHWM, reset before each request). About 20 s.

    PYTHONPATH=service:clients/python:tests/integration python benchmarks/memory_cap.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import grpc
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from _server import make_repository, memory_bytes, start_server, stop_server  # noqa: E402
from test_bad_input_hardening import HUNGRY_YAML, hungry_model, tabular_request  # noqa: E402

from explaind_client.v1 import explaind_pb2_grpc as pb_grpc  # noqa: E402

SIZES = {"1 GiB": 1 << 28, "4 TiB": 1 << 40}  # floats allocated by ConstantOfShape
CAPS = {"256 MiB": 256 << 20, "auto (half the RAM)": 0, "none (-1)": -1}


def main() -> None:
    root = Path(tempfile.mkdtemp())
    repo = make_repository(root)
    for label, floats in SIZES.items():
        name = "m" + str(floats.bit_length() - 1)
        (repo / name).mkdir()
        onnx.save(hungry_model(floats), str(repo / name / "model.onnx"))
        (repo / name / "model.yaml").write_text(HUNGRY_YAML)
    print("| cap | allocation | answer | peak RSS growth |\n|---|---|---|---|")
    for cap_label, cap in CAPS.items():
        server = start_server(repo, root / f"log-{cap}.txt", max_session_memory_bytes=cap)
        try:
            stub = pb_grpc.ExplainerStub(grpc.insecure_channel(server.address))
            for label, floats in SIZES.items():
                pid = server.process.pid
                Path(f"/proc/{pid}/clear_refs").write_text("5")
                before = memory_bytes(pid, "VmRSS")
                try:
                    stub.Explain(tabular_request("m" + str(floats.bit_length() - 1), 2000.0), timeout=120)
                    answer = "OK"
                except grpc.RpcError as err:
                    answer = err.code().name
                grown = (memory_bytes(pid, "VmHWM") - before) / 2**20
                print(f"| {cap_label} | {label} | {answer} | {grown:.0f} MiB |", flush=True)
        finally:
            stop_server(server)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
