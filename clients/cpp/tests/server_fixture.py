"""ctest's fixture: two real explaind servers on free loopback ports, started before the C++ tests and
stopped after them (`start STATE` / `stop STATE`; STATE is a file of NAME=VALUE lines the tests read).

  plain   127.0.0.1:PORT, plaintext, no authentication (the README's `explaind serve`, on another port)
  secure  localhost:PORT, TLS (a CA made here with the openssl CLI) and bearer tokens

Run with a Python that can import explaind (the one pytest runs, or the repository's .venv)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "service" / "explaind" / "demo"
TOKEN = "cpp-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


def certificates(folder: Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(folder, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj",
            "/CN=explaind cpp test ca", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl(folder, "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=server")
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,DNS:explaind.test,IP:127.0.0.1\n"
                                       "extendedKeyUsage=serverAuth\n")
    openssl(folder, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "1",
            "-days", "2", "-out", "server.pem", "-extfile", "server.ext")


def healthy(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def spawn(folder: Path, name: str, port: int, *flags: str) -> subprocess.Popen:
    log = (folder / f"{name}.log").open("w")
    command = [sys.executable, "-m", "explaind.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--metrics-port", "-1", "--repository", str(DEMO / "repository"), *flags]
    env = {**os.environ, "EXPLAIND_INTRA_OP_THREADS": "2"}
    # a session of its own: the server outlives this script, and `stop` ends it by its pid
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def start(state: Path) -> int:
    folder = state.parent / "test-servers"
    folder.mkdir(parents=True, exist_ok=True)
    certificates(folder)
    (folder / "tokens").write_text(f"cpp {TOKEN}\n")
    plain_port, secure_port, health_port = free_port(), free_port(), free_port()
    servers = {
        "plain": (spawn(folder, "plain", plain_port), plain_port),
        "secure": (spawn(folder, "secure", secure_port, "--tls-cert", str(folder / "server.pem"),
                         "--tls-key", str(folder / "server.key"), "--auth-tokens", str(folder / "tokens"),
                         "--health-port", str(health_port)), health_port),
    }
    state.write_text("".join([
        f"plain=127.0.0.1:{plain_port}\n", f"secure=localhost:{secure_port}\n", f"ca={folder / 'ca.pem'}\n",
        f"token={TOKEN}\n", f"demo={DEMO}\n",
        f"pids={','.join(str(p.pid) for p, _ in servers.values())}\n"]))
    deadline = time.monotonic() + 90
    waiting = dict(servers)
    while waiting and time.monotonic() < deadline:
        for name, (process, port) in list(waiting.items()):
            if process.poll() is not None:
                stop(state)
                print(f"{name} server exited with {process.returncode}:\n{(folder / f'{name}.log').read_text()}")
                return 1
            if healthy(port):
                del waiting[name]
        time.sleep(0.2)
    if waiting:
        stop(state)
        print(f"servers not healthy within 90 s: {sorted(waiting)}")
        return 1
    print(state.read_text())
    return 0


def stop(state: Path) -> int:
    if not state.exists():
        return 0
    values = dict(line.split("=", 1) for line in state.read_text().splitlines() if "=" in line)
    pids = [int(p) for p in values.get("pids", "").split(",") if p]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reaps it when it is our child (a failed start)
            except ChildProcessError:
                pass
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    state.unlink()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: server_fixture.py start|stop STATE")
    sys.exit((start if sys.argv[1] == "start" else stop)(Path(sys.argv[2])))
