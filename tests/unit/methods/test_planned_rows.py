"""Every method declares its rows in advance (planned_rows: admission, progress and the evaluation
row budget read it), and runs exactly that many, plus the prediction, on the demo models: so a
re-explaining metric over the row budget is refused before any work whatever the method."""

from __future__ import annotations

import asyncio

import numpy as np

from explaind.config import Settings
from explaind.engine.engine import Engine
from explaind.explainer import ExplainQuery, Explainer
from explaind.methods.base import MethodContext
from explaind.models.repository import ModelRepository

SMALL = {"rise": {"num_masks": 40}, "smooth_grad": {"num_samples": 7}, "integrated_gradients": {"n_steps": 9},
         "extremal_perturbation": {"iterations": 3, "areas": [0.1]}, "lime": {"num_samples": 40},
         "kernel_shap": {"nsamples": 40}, "occlusion": {"window": [16], "stride": [16]}}
# Kernel SHAP with shap's auto nsamples (settled by the image's superpixel count), slic's ~100 superpixels.
IMAGE_EXTRA = [("kernel_shap", {"segmentation": "slic"}), ("kernel_shap", {}), ("occlusion", {}),
               ("lime", {"num_samples": 33, "segmentation": "felzenszwalb"})]
TABULAR = {"occlusion": {}, "lime": {"num_samples": 50}, "kernel_shap": {"nsamples": 30},
           "kernel_shap_kmeans": {"nsamples": 30, "background_kmeans": 3}}


def planned_and_run(queries: list[ExplainQuery]) -> list[tuple[int | None, int]]:
    async def main() -> list[tuple[int | None, int]]:
        repo = ModelRepository(Settings().repository_path)
        repo.scan()
        engine = Engine(Settings(intra_op_threads=2))
        explainer = Explainer(engine.settings, repo, engine)
        try:
            out = []
            for query in queries:
                p = explainer.prepare(query)
                # A context of its own (a fresh memo): the plan does not depend on the run's context.
                ctx = MethodContext(engine, p.served, p.view, p.x, p.score, np.random.default_rng(0), engine.settings)
                planned = p.method.planned_rows(dict(p.params), ctx)
                result = await explainer.explain(query, prepared=p)
                out.append((planned, result.stats.model_evaluations))
            return out
        finally:
            await engine.close()

    return asyncio.run(main())


def test_every_image_method_plans_the_rows_it_runs():
    from explaind.methods.registry import all_methods

    methods = all_methods()
    x = np.random.default_rng(0).normal(size=(3, 64, 64)).astype(np.float32)
    cases = [(n, SMALL.get(n, {})) for n, m in methods.items() if "image" in m.kinds] + IMAGE_EXTRA
    queries = [ExplainQuery(model="shapes", method=n, tensor=x, seed=3, params=dict(p)) for n, p in cases]
    results = planned_and_run(queries)
    for (name, params), (planned, evaluations) in zip(cases, results):
        assert planned is not None, name
        if name == "lime" and params.get("segmentation", "quickshift") == "quickshift":
            # quickshift's few superpixels: one row per distinct image drawn (seed-dependent), at most
            # min(num_samples, 2^S), the plan.
            assert evaluations <= planned + 1 <= params["num_samples"] + 1, (params, evaluations, planned)
            assert evaluations < params["num_samples"], "the demo's quickshift superpixels repeat images"
        else:
            assert evaluations == planned + 1, (name, params, evaluations, planned)
    assert len(results) == len(cases) >= 19


def test_every_tabular_method_plans_the_rows_it_runs():
    from explaind.methods.registry import all_methods

    methods = all_methods()
    x = np.load(Settings().repository_path / "tabular" / "background.npy")[4].astype(np.float32)
    cases = [(n, TABULAR.get(n, {})) for n, m in methods.items() if "tabular" in m.kinds and n in TABULAR]
    cases.append(("kernel_shap", TABULAR["kernel_shap_kmeans"]))
    queries = [ExplainQuery(model="tabular", method=n, tensor=x, seed=3, params=dict(p)) for n, p in cases]
    results = planned_and_run(queries)
    for (name, params), (planned, evaluations) in zip(cases, results):
        assert planned is not None and evaluations == planned + 1, (name, params, evaluations, planned)
    assert {n for n, _ in cases} == {"occlusion", "lime", "kernel_shap"}


def test_tabular_kernel_shap_is_priced_by_its_coalition_rows_not_its_evaluations():
    """Admission multiplies rows by the variant's seconds per engine row: a coalition row expands over
    the background inside the graph, so pricing evaluations would overstate the cost ~background-fold
    (a 300-coalition request was refused as needing 275 s)."""
    from explaind.methods.registry import all_methods

    repo = ModelRepository(Settings().repository_path)
    repo.scan()
    engine = Engine(Settings(intra_op_threads=1))
    explainer = Explainer(engine.settings, repo, engine)
    x = np.load(Settings().repository_path / "tabular" / "background.npy")[4].astype(np.float32)
    p = explainer.prepare(ExplainQuery(model="tabular", method="kernel_shap", tensor=x, params={"nsamples": 30}))
    ctx = MethodContext(engine, p.served, p.view, p.x, p.score, np.random.default_rng(0), engine.settings)
    method = all_methods()["kernel_shap"]
    evaluations, rows = method.planned_rows(dict(p.params), ctx), method.planned_engine_rows(dict(p.params), ctx)
    background = len(p.view.background)
    assert background > 1 and evaluations == rows * background
    asyncio.run(engine.close())
