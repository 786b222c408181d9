"""The C++ client (clients/cpp): configured with CMake on the system's gRPC and protobuf, built, and its
ctest run against real servers (tests/server_fixture.py there starts them with this Python). The build
folder is clients/cpp/build (ignored by git), so a second run rebuilds only what changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CPP = ROOT / "clients" / "cpp"
BUILD = CPP / "build"
NEEDS = ["cmake", "ctest", "protoc", "grpc_cpp_plugin", "c++", "openssl"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(shutil.which(tool) is None for tool in NEEDS),
                       reason=f"needs {', '.join(t for t in NEEDS if shutil.which(t) is None)} on PATH (Debian: "
                              "cmake g++ libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler; "
                              ".ci/run installs them)"),
]


def _run(*command: str, timeout: float) -> str:
    result = subprocess.run(command, cwd=CPP, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output[-20000:]}"
    return output


def test_configure_build_and_ctest():
    _run("cmake", "-S", ".", "-B", str(BUILD), f"-DEXPLAIND_PYTHON={sys.executable}", timeout=300)
    _run("cmake", "--build", str(BUILD), "-j", str(min(2, os.cpu_count() or 1)), timeout=1200)
    output = _run("ctest", "--test-dir", str(BUILD), "--output-on-failure", "-V", timeout=600)
    assert "8 passed, 0 failed" in output, output[-5000:]      # tests/client_test.cc
    assert "13 passed, 0 failed" in output, output[-5000:]     # tests/check_example.py
    assert "100% tests passed, 0 tests failed out of 4" in output
