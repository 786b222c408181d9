"""The server starts without scipy and scikit-image (about 60 MiB of its idle RSS, measured with
`explaind serve` on the demo repository: 177 -> 115 MiB): they load when a request needs them
(superpixels, ROAD, SSIM, blurs, rendering a resized heatmap...)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import explaind.api.server, explaind.cli, explaind.explainer
from explaind.evaluation.registry import all_metrics
from explaind.methods.registry import all_methods
from explaind.api.convert import metric_queries
methods, metrics = all_methods(), all_metrics()  # what ListMethods and ListMetrics answer from
heavy = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("scipy", "skimage", "sklearn", "shap")})
print(json.dumps({"heavy": heavy, "methods": len(methods), "metrics": len(metrics)}))
"""


def probe(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'service'}{os.pathsep}{ROOT / 'clients' / 'python'}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_server_module_and_the_registries_do_not_import_scipy_or_skimage():
    found = probe(PROBE)
    assert found["heavy"] == [], found
    assert found["methods"] >= 16 and found["metrics"] >= 23  # the registries were really built


def test_the_probe_sees_them_once_a_metric_needs_them():
    """The same probe is not blind: MPRT's SSIM loads skimage and scipy."""
    code = PROBE.replace("heavy = ", "import numpy as np\nfrom explaind.evaluation.mprt import ssim\n"
                         "ssim(np.eye(8), np.ones((8, 8)))\nheavy = ")
    assert probe(code)["heavy"] == ["scipy", "skimage"]
