"""The TypeScript client's own suite (clients/typescript/test, Node's test runner): `npm ci && npm test`
builds it, checks src/gen against proto/ and runs it against real servers it starts with this Python
(`python -m explaind.cli serve`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from _node import TYPESCRIPT, npm_ci

pytestmark = pytest.mark.slow


def test_npm_test():
    npm_ci()
    env = {**os.environ, "EXPLAIND_PYTHON": sys.executable}
    result = subprocess.run(["npm", "test"], cwd=TYPESCRIPT, capture_output=True, text=True, env=env, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    summary = dict(line.split()[1:3] for line in output.splitlines() if line.startswith("# ") and len(line.split()) == 3)
    assert int(summary["fail"]) == 0 and int(summary["pass"]) >= 30, summary
