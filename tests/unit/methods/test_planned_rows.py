"""Every method declares its rows in advance (planned_rows: admission, progress and the evaluation
row budget read it), and runs exactly that many, plus the prediction, on the demo models: so a
re-explaining metric over the row budget is refused before any work whatever the method."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from explaind.config import Settings
from explaind.engine.engine import Engine
from explaind.explainer import ExplainQuery, Explainer
from explaind.methods.base import MethodContext
from explaind.models.repository import ModelRepository

SMALL = {"rise": {"num_masks": 40}, "smooth_grad": {"num_samples": 7}, "integrated_gradients": {"n_steps": 9},
         "extremal_perturbation": {"iterations": 3, "areas": [0.1]}, "lime": {"num_samples": 40},
         "kernel_shap": {"nsamples": 40}, "occlusion": {"window": [16], "stride": [16]},
         "smooth_grad_cam_plus_plus": {"num_samples": 5},
         "activation_maximization": {"steps": 5}}
SMALL.update({"xrai": {"steps": 4}, "guided_ig": {"steps": 5}, "blur_ig": {"steps": 5},
              "meaningful_perturbation": {"iterations": 3}, "aggregated": {"methods": "cam,saliency,smooth_grad"}})
# Kernel SHAP with shap's auto nsamples (settled by the image's superpixel count), slic's ~100 superpixels.
IMAGE_EXTRA = [("kernel_shap", {"segmentation": "slic"}), ("kernel_shap", {}), ("occlusion", {}),
               ("lime", {"num_samples": 33, "segmentation": "felzenszwalb"}),
               # aug_smooth: six maps; the forward CAMs read five augmented inputs' layers with rows of their own
               ("ablation_cam", {"aug_smooth": True}), ("eigen_cam", {"aug_smooth": True}),
               ("layer_cam", {"aug_smooth": True}), ("feature_maps", {"rank_by": "grad_cam"}),
               ("occlusion", {"fill": "gaussian", "window": [16], "stride": [16]})]
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


def submitted_rows(engine: Engine) -> list[int]:
    """Every job's rows as the engine is asked to run them (a refusal before any work leaves it empty)."""
    rows: list[int] = []
    submit = engine.submit

    def counting(served, spec, job):
        rows.append(job.total_rows)
        return submit(served, spec, job)

    engine.submit = counting  # type: ignore[method-assign]
    return rows


def test_score_cam_on_a_layer_whose_channels_the_graph_leaves_symbolic_is_planned_before_any_work(tmp_path):
    """A `view(n, -1, h, w)` exported with dynamic axes: plain shape inference cannot say the layer's
    channels, inference on the input's concrete shape can (4, and 8 after the concatenation). So
    Score-CAM plans its 4 rows, runs them, and a re-explaining metric over the budget with it is
    refused before one row runs (it was refused only after the explanation had run: 11 rows planned)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _onnx_builders import dynamic_view_model, write_model_folder

    from explaind.errors import ResourceExhausted
    from explaind.evaluation.run import MetricQuery
    from explaind.models.white_box import activations_with_channels, inspect_white_box

    model = dynamic_view_model()
    assert dict(activations_with_channels(model))["layer"] is None  # what the graph alone says
    write_model_folder(tmp_path, "dynamic", model, {
        "kind": "image", "input": {"name": "input", "layout": "NCHW"}, "output": {"name": "logits", "scores": "logits"},
        "preprocess": {"size": [8, 8]}, "gradients": "auto"})
    repo = ModelRepository(tmp_path)
    repo.scan()
    white_box = inspect_white_box(repo.get("dynamic"))
    assert (white_box.channels_of("layer"), white_box.channels_of("layer2"), white_box.channels_of("relu")) == (4, 8, 4)

    x = np.random.default_rng(2).normal(size=(3, 8, 8)).astype(np.float32)
    explained = ExplainQuery(model="dynamic", method="score_cam", tensor=x, seed=3, params={"layer": "layer"})
    # 5 rows (the prediction, 4 channels) and 10 re-explanations of 5 each: 55, over a budget of 50.
    heavy = dict(explained.__dict__, metrics=[MetricQuery("max_sensitivity", {"nr_samples": 10})])

    async def main() -> None:
        engine = Engine(Settings(intra_op_threads=1, max_rows_per_request=50))
        explainer = Explainer(engine.settings, repo, engine)
        rows = submitted_rows(engine)
        try:
            p = explainer.prepare(explained)
            ctx = MethodContext(engine, p.served, p.view, p.x, p.score, np.random.default_rng(0), engine.settings)
            assert p.method.planned_rows(dict(p.params), ctx) == 4
            result = await explainer.explain(explained, prepared=p)
            assert result.stats.model_evaluations == 5 == sum(rows) and len(result.arrays["channel_weights"]) == 4
            rows.clear()
            with pytest.raises(ResourceExhausted) as refused:
                await explainer.explain(ExplainQuery(**heavy))
            message = refused.value.message
            assert "need 55 model evaluations" in message and "max_sensitivity 50" in message, message
            assert rows == [], "rows ran before the refusal"
        finally:
            await engine.close()

    asyncio.run(main())


def test_a_tabular_kernel_shap_request_with_metrics_is_admitted_by_its_engine_rows():
    """Admission weighs engine rows: a Kernel SHAP coalition is one row the graph expands over the 100
    background rows, and a re-explaining metric's Kernel SHAP runs are too. A request of 1 + E + 10 (E + 1)
    engine rows (E the explanation's) fits a queue bound of 600 rows though its model evaluations are
    ~100 times more (it was refused, priced in evaluations); 20 re-explanations, 1 + E + 20 (E + 1), do not:
    refused before any row runs. The stats agree with both plans."""
    from explaind.errors import ResourceExhausted
    from explaind.evaluation.run import MetricQuery
    from explaind.methods.registry import all_methods

    x = np.load(Settings().repository_path / "tabular" / "background.npy")[4].astype(np.float32)
    params = {"nsamples": 30}

    def query(samples: int) -> ExplainQuery:
        return ExplainQuery(model="tabular", method="kernel_shap", tensor=x, seed=3, params=dict(params),
                            metrics=[MetricQuery("max_sensitivity", {"nr_samples": samples})])

    async def main() -> None:
        repo = ModelRepository(Settings().repository_path)
        repo.scan()
        engine = Engine(Settings(intra_op_threads=1, max_queued_rows=600))
        explainer = Explainer(engine.settings, repo, engine)
        rows = submitted_rows(engine)
        try:
            p = explainer.prepare(query(10))
            ctx = MethodContext(engine, p.served, p.view, p.x, p.score, np.random.default_rng(0), engine.settings)
            method = all_methods()["kernel_shap"]
            engine_rows, evaluations = method.planned_engine_rows(p.params, ctx), method.planned_rows(p.params, ctx)
            background = len(p.view.background)
            assert background == 100 and evaluations == engine_rows * background and engine_rows > 10
            assert p.engine_rows == 1 + engine_rows + 10 * (engine_rows + 1) <= 600 < p.planned_rows
            assert p.planned_rows == 1 + evaluations + 10 * (evaluations + 1)
            result = await explainer.explain(query(10), prepared=p)
            assert sum(rows) == p.engine_rows  # every engine row planned ran, no more
            (metric,) = result.evaluation
            assert result.stats.model_evaluations == 1 + evaluations
            assert metric.stats.model_evaluations == p.metrics[0].rows == 10 * (evaluations + 1)
            assert result.stats.model_evaluations + metric.stats.model_evaluations == p.planned_rows
            rows.clear()
            over = explainer.prepare(query(20))
            assert over.engine_rows == 1 + engine_rows + 20 * (engine_rows + 1) > 600
            with pytest.raises(ResourceExhausted):
                await explainer.explain(query(20), prepared=over)
            assert rows == [], "rows ran before the refusal"
        finally:
            await engine.close()

    asyncio.run(main())
