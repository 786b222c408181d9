"""Every method that declares its rows in advance (planned_rows: admission, progress and the
evaluation row budget read it) runs exactly that many, plus the prediction, on the demo models."""

from __future__ import annotations

import numpy as np

from explaind.explainer import ExplainQuery
from explaind.methods.base import MethodContext
from explaind.methods.registry import all_methods

from inprocess import serve_requests

SMALL = {"rise": {"num_masks": 40}, "smooth_grad": {"num_samples": 7}, "integrated_gradients": {"n_steps": 9},
         "extremal_perturbation": {"iterations": 3, "areas": [0.1]}, "lime": {"num_samples": 40},
         "kernel_shap": {"nsamples": 40}, "occlusion": {"window": [16], "stride": [16]}}


def test_planned_rows_are_the_rows_run():
    methods = all_methods()
    x = np.random.default_rng(0).normal(size=(3, 64, 64)).astype(np.float32)
    names = [n for n, m in methods.items() if "image" in m.kinds]
    queries = [ExplainQuery(model="shapes", method=n, tensor=x, seed=3, params=SMALL.get(n, {})) for n in names]
    results = serve_requests(*queries)
    checked = []
    for name, result in zip(names, results):
        method = methods[name]
        params = result.stats.parameters
        planned = method.planned_rows(params, MethodContext(None, None, None, x, "logit", None, None))  # type: ignore[arg-type]
        if planned is None:
            continue
        assert result.stats.model_evaluations == planned + 1, (name, result.stats.model_evaluations, planned)
        checked.append(name)
    assert {"saliency", "smooth_grad", "integrated_gradients", "guided_grad_cam", "cam", "rise",
            "extremal_perturbation", "grad_cam"} <= set(checked)
