"""npm for the tests that need locked npm packages: clients/typescript's (the TypeScript client's tests,
and the buf CLI that guards the proto contract) and tests/e2e's (playwright-core for the web page):
`npm ci` in each folder at most once per test session."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TYPESCRIPT = ROOT / "clients" / "typescript"
BUF = TYPESCRIPT / "node_modules" / ".bin" / "buf"
E2E = ROOT / "tests" / "e2e"
_installed: set[Path] = set()


def npm_ci(folder: Path = TYPESCRIPT) -> None:
    """Install `folder`'s locked packages (package-lock.json) once; skip the calling test with the
    reason when node or npm is not on PATH."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("needs node and npm on PATH (Node.js 18+; .ci/run's machine has them)")
    if folder in _installed:
        return
    result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=folder, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"npm ci in {folder} failed:\n{result.stdout}\n{result.stderr}"
    _installed.add(folder)
