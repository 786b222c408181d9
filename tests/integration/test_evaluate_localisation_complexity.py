"""The localisation, complexity and completeness metrics through the real server: their parameters
cross the proto (bools and floats set, defaults unset), and each value equals its definition computed
here in numpy from the attribution the server returned (completeness: the scores straight from the
ONNX file with onnxruntime)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from _server import DEMO
from test_evaluate import preprocess, softmax

SHAPES = DEMO / "repository" / "shapes"
BOXES = json.loads((DEMO / "examples" / "boxes.json").read_text())
EXAMPLE = "circle_0.png"


def test_localisation_and_complexity_figures_match_their_definitions(client):
    image = (DEMO / "examples" / EXAMPLE).read_bytes()
    box = BOXES[EXAMPLE]["box"]
    metrics = ["energy_pointing_game", ("relevance_mass", {"abs": True}), "relevance_rank",
               ("top_k_intersection", {"k": 200}), ("iou", {"threshold": 0.5}), "sparseness", "complexity",
               ("completeness", {"baseline": -1.0, "normalise": False})]
    result = client.evaluate("shapes", method="saliency", image=image, box=box, metrics=metrics)
    a = result.explanation.attribution.astype(np.float64)
    x0, y0, x1, y1 = box
    region = np.zeros(a.shape, bool)
    region[y0:y1, x0:x1] = True
    flat, inside = a.reshape(-1), region.reshape(-1)
    value = {r.metric: r.value for r in result.results}

    positive = np.maximum(flat, 0)
    assert value["energy_pointing_game"] == pytest.approx(positive[inside].sum() / positive.sum(), rel=1e-9)
    assert value["relevance_mass"] == pytest.approx(np.abs(flat)[inside].sum() / np.abs(flat).sum(), rel=1e-9)
    order = np.argsort(-flat, kind="stable")  # saliency's map has no ties among its top values
    assert value["relevance_rank"] == pytest.approx(inside[order[:inside.sum()]].mean(), rel=1e-9)
    assert value["top_k_intersection"] == pytest.approx(inside[order[:200]].mean(), rel=1e-9)
    selected = flat >= np.float32(0.5) * flat.max()
    assert value["iou"] == pytest.approx((selected & inside).sum() / (selected | inside).sum(), rel=1e-9)
    v = np.sort(np.abs(flat) / np.abs(flat).max() + 1e-7)
    n = len(v)
    assert value["sparseness"] == pytest.approx(((2 * np.arange(1, n + 1) - n - 1) * v).sum() / (n * v.sum()),
                                                rel=1e-9)
    p = np.abs(flat) / np.abs(flat).sum()
    assert value["complexity"] == pytest.approx(-(p * np.log(p + 1e-12)).sum(), rel=1e-9)

    session = ort.InferenceSession(str(SHAPES / "model.onnx"), providers=["CPUExecutionProvider"])
    x = preprocess(image)
    logits = session.run(None, {"input": np.stack([x, np.full_like(x, -1.0)])})[0].astype(np.float64)
    target = result.explanation.target_class
    f_input, f_baseline = softmax(logits)[:, target]
    completeness = result["completeness"]
    assert completeness.figures["f_baseline"] == pytest.approx(f_baseline, rel=1e-4, abs=1e-7)
    assert completeness.value == pytest.approx(abs(flat.sum() - (f_input - f_baseline)), rel=1e-4, abs=1e-7)
    assert int(completeness.stats["model_evaluations"]) == 1
    assert completeness.stats["parameters"]["baseline"] == -1.0
