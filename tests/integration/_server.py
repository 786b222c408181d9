"""A real explaind server in a subprocess on a loopback port, and helpers to talk to it.

A module of its own (not conftest.py, whose name every test folder shares) so that tests import it by
a name that stays unambiguous when the whole suite runs in one process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from explaind_client import ExplaindClient

DEMO = Path(__file__).resolve().parents[2] / "service" / "explaind" / "demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    address: str
    metrics_url: str
    process: subprocess.Popen
    log_path: Path

    def client(self, **kwargs) -> ExplaindClient:
        return ExplaindClient(self.address, **kwargs)

    def health(self, service: str = "") -> str:
        with grpc.insecure_channel(self.address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                 timeout=5)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def log(self) -> str:
        return self.log_path.read_text()


def make_repository(root: Path) -> Path:
    """The demo models plus one broken model, which must be listed FAILED while the others serve."""
    repo = root / "models"
    shutil.copytree(DEMO / "repository", repo)
    broken = repo / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"this is not an onnx model")
    (broken / "model.yaml").write_text("kind: image\n")
    return repo


def start_server(repository: Path, log_path: Path, *, probe: Callable[[Server], str] | None = None,
                 **settings: object) -> Server:
    """`probe(server)` says when it is up (default: plaintext health on its address; a TLS server needs
    another, e.g. health on its health_port)."""
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "EXPLAIND_LOG_FORMAT": "json", "EXPLAIND_INTRA_OP_THREADS": "2"}
    env.update({f"EXPLAIND_{k.upper()}": str(v) for k, v in settings.items()})
    command = [sys.executable, "-m", "explaind.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--metrics-port", str(metrics_port), "--repository", str(repository)]
    log = log_path.open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if (probe or Server.health)(server) == "SERVING":
                return server
        except grpc.RpcError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not become healthy:\n{server.log()}")


def stop_server(server: Server) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every 50 ms until it holds (True) or ``timeout`` seconds pass (False). The
    bounds callers give are generous for a loaded CI machine and say nothing about speed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def memory_bytes(pid: int, key: str = "VmRSS") -> int:
    """A memory figure of /proc/PID/status in bytes: VmRSS (resident now) or VmHWM (peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no {key}")
