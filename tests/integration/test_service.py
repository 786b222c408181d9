"""The real server on loopback, called with the real Python client: values, not just shapes."""

from __future__ import annotations

import hashlib
import io
import math
import urllib.request

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from explaind.methods.extremal_perturbation import gaussian_smooth
from explaind_client import RenderSpec, build_request
from explaind_client.v1 import explaind_pb2 as pb

from _server import DEMO

SHAPES = DEMO / "repository" / "shapes"
TABULAR = DEMO / "repository" / "tabular"


def preprocess(png: bytes) -> np.ndarray:
    """The shapes model's preprocessing, written independently of the service."""
    img = Image.open(io.BytesIO(png)).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    x = np.asarray(img, np.float32) / 255.0
    return ((x - 0.5) / 0.25).transpose(2, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def shapes_session() -> ort.InferenceSession:
    return ort.InferenceSession(str(SHAPES / "model.onnx"), providers=["CPUExecutionProvider"])


def probabilities(session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    logits = session.run(None, {"input": batch})[0].astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# Models and methods ------------------------------------------------------------------------------

def test_models_are_listed_with_a_failed_one_beside_them(client):
    models = {m.name: m for m in client.list_models()}
    assert set(models) == {"shapes", "tabular", "broken"}
    assert models["shapes"].status == pb.READY and models["tabular"].status == pb.READY
    assert models["broken"].status == pb.FAILED
    assert "not a valid ONNX model" in models["broken"].reason


def test_get_model_reports_the_contract(client):
    info = client.get_model("shapes")
    assert info.kind == pb.IMAGE
    assert info.sha256 == hashlib.sha256((SHAPES / "model.onnx").read_bytes()).hexdigest()
    assert [(i.name, i.dtype, list(i.shape)) for i in info.inputs] == [("input", pb.FLOAT32, [-1, 3, 64, 64])]
    assert [o.name for o in info.outputs] == ["logits"]
    assert list(info.labels) == ["circle", "square", "triangle", "cross", "star"]
    assert list(info.methods) == ["occlusion", "rise", "lime", "kernel_shap", "extremal_perturbation", "saliency", "input_x_gradient", "smooth_grad",
                                  "integrated_gradients", "guided_backprop", "deconvnet", "grad_cam",
                                  "grad_cam_plus_plus", "guided_grad_cam", "score_cam", "cam", "lrp", "deep_lift",
                                  "rect_grad", "excitation_backprop", "xgrad_cam", "layer_cam",
                                  "hires_cam", "grad_cam_element_wise", "eigen_cam", "eigen_grad_cam", "ablation_cam",
                                  "smooth_grad_cam_plus_plus", "feature_maps",
                                  "xrai", "guided_ig", "blur_ig", "meaningful_perturbation", "aggregated",
                                  "activation_maximization"]
    assert info.white_box and info.default_layer == "/features/features.14/Relu_output_0"
    assert info.default_layer in info.layers and "/features/features.2/Relu_output_0" in info.layers
    assert info.scores == "logits" and info.num_classes == 5 and info.generator == "generator.onnx"
    assert list(info.preprocess.size) == [64, 64] and list(info.preprocess.mean) == [0.5, 0.5, 0.5]
    tabular = client.get_model("tabular")
    assert tabular.kind == pb.TABULAR and list(tabular.methods) == ["occlusion", "lime", "kernel_shap", "tree_shap"]
    assert tabular.num_features == 13 and tabular.generator == ""
    assert not tabular.white_box and "TreeEnsembleClassifier" in tabular.white_box_reason


def test_list_methods_shows_parameters_and_defaults(client):
    methods = {m.name: m for m in client.list_methods()}
    rise = {p.name: p.default_value for p in methods["rise"].parameters}
    assert rise == {"num_masks": "4000", "grid_size": "7", "keep_probability": "0.5", "baseline": "0"}
    assert methods["occlusion"].needs == pb.FORWARD
    assert methods["grad_cam"].needs == pb.LAYER_GRADIENTS and methods["saliency"].needs == pb.INPUT_GRADIENTS
    assert methods["integrated_gradients"].default_score == pb.LOGIT
    ig = {p.name: p.default_value for p in methods["integrated_gradients"].parameters}
    assert ig["n_steps"] == "50" and ig["method"] == "gausslegendre"
    assert [m.name for m in client.list_methods(model="tabular")] == ["occlusion", "lime", "kernel_shap", "tree_shap"]


# Occlusion and RISE against independent computations ---------------------------------------------

def test_occlusion_equals_an_independent_computation(client, shapes_session, example_image):
    png, _ = example_image
    x = preprocess(png)
    result = client.explain("shapes", method="occlusion", tensor=x, params={"window": [16, 16], "stride": [8, 8],
                                                                           "baseline": -1.0}, target=2)
    assert result.target_class == 2 and result.target_label == "triangle"
    base = probabilities(shapes_session, x[None])[0, 2]
    total, count = np.zeros((64, 64)), np.zeros((64, 64))
    windows = [(y, xx) for y in range(0, 49, 8) for xx in range(0, 49, 8)]
    batch = np.repeat(x[None], len(windows), axis=0)
    for i, (y, xx) in enumerate(windows):
        batch[i, :, y:y + 16, xx:xx + 16] = -1.0
    scores = probabilities(shapes_session, batch)[:, 2]
    for (y, xx), s in zip(windows, scores):
        total[y:y + 16, xx:xx + 16] += base - s
        count[y:y + 16, xx:xx + 16] += 1
    np.testing.assert_allclose(result.attribution, total / count, atol=2e-5)
    assert result.stats["model_evaluations"] == str(len(windows) + 2)  # + unoccluded row + prediction


def test_image_input_is_preprocessed_like_the_model_expects(client, example_image):
    png, _ = example_image
    from_image = client.explain("shapes", method="occlusion", image=png, params={"window": [16], "stride": [16]})
    from_tensor = client.explain("shapes", method="occlusion", tensor=preprocess(png),
                                 params={"window": [16], "stride": [16]})
    np.testing.assert_allclose(from_image.attribution, from_tensor.attribution, atol=1e-5)
    assert [c.probability for c in from_image.top_classes] == pytest.approx(
        [c.probability for c in from_tensor.top_classes], abs=1e-5)


def independent_rise(session, x, target, n, seed, s=7, p=0.5):
    """RISE as eclique/RISE describes it, with its own random numbers and torch-free upsampling."""
    rng = np.random.default_rng(seed)
    cell = math.ceil(64 / s)
    up = (s + 1) * cell
    coords = np.clip((np.arange(up) + 0.5) * s / up - 0.5, 0, s - 1)
    lo = np.floor(coords).astype(int)
    hi = np.minimum(lo + 1, s - 1)
    frac = coords - lo
    saliency = np.zeros((64, 64))
    for start in range(0, n, 500):
        count = min(500, n - start)
        grids = (rng.random((count, s, s)) < p).astype(np.float32)
        rows = grids[:, lo, :] * (1 - frac)[None, :, None] + grids[:, hi, :] * frac[None, :, None]
        full = rows[:, :, lo] * (1 - frac)[None, None, :] + rows[:, :, hi] * frac[None, None, :]
        shifts = rng.integers(0, cell, size=(count, 2))
        masks = np.stack([m[dy:dy + 64, dx:dx + 64] for m, (dy, dx) in zip(full, shifts)]).astype(np.float32)
        scores = probabilities(session, (x[None] * masks[:, None]).astype(np.float32))[:, target]
        saliency += np.tensordot(scores, masks, axes=1)
    return saliency / (n * p)


def test_rise_agrees_statistically_with_an_independent_rise(client, shapes_session, example_image):
    png, box = example_image
    x = preprocess(png)
    result = client.explain("shapes", method="rise", tensor=x, seed=11, params={"num_masks": 4000})
    reference = independent_rise(shapes_session, x, result.target_class, 4000, seed=99)
    another = independent_rise(shapes_session, x, result.target_class, 4000, seed=98)
    correlation = np.corrcoef(result.attribution.ravel(), reference.ravel())[0, 1]
    # Monte Carlo noise sets the bar: two independent runs of the reference agree this well.
    noise_floor = np.corrcoef(another.ravel(), reference.ravel())[0, 1]
    assert correlation > 0.8 and correlation > noise_floor - 0.05, (correlation, noise_floor)
    # Same expected value: the means agree to within the Monte Carlo error.
    assert abs(result.attribution.mean() - reference.mean()) < 0.05 * abs(reference.mean())
    assert result.stats["parameters"] == {"num_masks": 4000.0, "grid_size": 7.0, "keep_probability": 0.5,
                                          "baseline": 0.0}
    assert result.target_label == box["label"]


def test_same_seed_gives_the_same_map_and_seed_zero_is_reported(client, example_image):
    png, _ = example_image
    first = client.explain("shapes", method="rise", image=png, seed=5, params={"num_masks": 500})
    second = client.explain("shapes", method="rise", image=png, seed=5, params={"num_masks": 500})
    other = client.explain("shapes", method="rise", image=png, seed=6, params={"num_masks": 500})
    np.testing.assert_array_equal(first.attribution, second.attribution)
    assert not np.allclose(first.attribution, other.attribution)
    picked = client.explain("shapes", method="rise", image=png, params={"num_masks": 500})
    seed = int(picked.stats["seed"])
    assert seed != 0
    again = client.explain("shapes", method="rise", image=png, seed=seed, params={"num_masks": 500})
    np.testing.assert_array_equal(picked.attribution, again.attribution)


def test_tabular_occlusion_equals_an_independent_computation(client):
    session = ort.InferenceSession(str(TABULAR / "model.onnx"), providers=["CPUExecutionProvider"])
    background = np.load(TABULAR / "background.npy")
    x = background[7].astype(np.float32)
    result = client.explain("tabular", method="occlusion", tensor=x)
    target = result.target_class
    batch = np.repeat(x[None], 14, axis=0)
    for i in range(13):
        batch[i + 1, i] = background.astype(np.float64).mean(axis=0)[i]
    probs = session.run(["probabilities"], {"input": batch})[0][:, target]
    np.testing.assert_allclose(result.attribution, probs[0] - probs[1:], atol=1e-6)


# Streaming and rendering -------------------------------------------------------------------------

def test_stream_sends_progress_partials_every_tenth_and_the_same_result(client, example_image):
    png, _ = example_image
    updates = list(client.explain_stream("shapes", method="rise", image=png, seed=3, params={"num_masks": 2000}))
    progress = [u for u in updates if type(u).__name__ == "Progress"]
    partials = [u for u in updates if getattr(u, "partial", False)]
    final = updates[-1]
    assert not getattr(final, "partial", True) and hasattr(final, "attribution")
    assert progress[-1].rows_done == progress[-1].rows_total == 2000
    assert [p.rows_done for p in progress] == sorted(p.rows_done for p in progress)
    # A partial map at least every 10% of the masks: 9 of them before the end.
    assert len(partials) >= 9
    unary = client.explain("shapes", method="rise", image=png, seed=3, params={"num_masks": 2000})
    np.testing.assert_array_equal(final.attribution, unary.attribution)
    assert np.corrcoef(partials[-1].attribution.ravel(), final.attribution.ravel())[0, 1] > 0.95


def test_render_returns_a_png_at_the_input_images_size(client, example_image):
    png, _ = example_image
    big = Image.open(io.BytesIO(png)).convert("RGB").resize((160, 120))
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    result = client.explain("shapes", method="occlusion", image=buffer.getvalue(),
                            render=RenderSpec(colormap="inferno", polarity="both", overlay="heatmap_only"))
    heat = Image.open(io.BytesIO(result.heatmap_png))
    assert heat.format == "PNG" and heat.size == (160, 120)
    overlay = client.explain("shapes", method="occlusion", image=buffer.getvalue(), render=RenderSpec(alpha=0.0))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(overlay.heatmap_png)).convert("RGB")),
                                  np.asarray(big))


# Service plumbing --------------------------------------------------------------------------------

def test_health_reflection_and_metrics(server, client, example_image):
    assert server.health() == "SERVING"
    assert server.health("explaind.v1.Explainer") == "SERVING"
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = {s.name for r in responses for s in r.list_services_response.service}
    assert {"explaind.v1.Explainer", "grpc.health.v1.Health"} <= services
    png, _ = example_image
    client.explain("shapes", method="rise", image=png, params={"num_masks": 300})
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    assert 'explaind_requests_total{code="OK",method="rise",model="shapes"}' in text
    assert 'explaind_request_seconds_bucket{le="+Inf",method="rise",model="shapes"}' in text
    assert 'explaind_batch_rows_bucket' in text and 'explaind_queue_rows{model="shapes",variant="rise"}' in text
    assert 'explaind_queue_jobs' in text and 'explaind_rows_per_second' in text


def test_a_stub_generated_independently_from_proto_can_call_the_server(server, tmp_path, example_image):
    """What a client in another language does: compile proto/ itself and call the server."""
    import importlib
    import sys

    import grpc_tools
    from grpc_tools import protoc

    root = DEMO.parents[2]
    include = f"-I{__import__('pathlib').Path(grpc_tools.__file__).parent / '_proto'}"
    assert protoc.main(["protoc", f"-I{root / 'proto'}", include, f"--python_out={tmp_path}",
                        f"--grpc_python_out={tmp_path}", str(root / "proto/explaind/v1/explaind.proto")]) == 0
    (tmp_path / "explaind" / "__init__.py").write_text("")
    (tmp_path / "explaind" / "v1" / "__init__.py").write_text("")
    saved = {k: v for k, v in sys.modules.items() if k == "explaind" or k.startswith("explaind.")}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(tmp_path))
    try:
        pb2 = importlib.import_module("explaind.v1.explaind_pb2")
        grpc_mod = importlib.import_module("explaind.v1.explaind_pb2_grpc")
        png, _ = example_image
        with grpc.insecure_channel(server.address) as channel:
            stub = grpc_mod.ExplainerStub(channel)
            reply = stub.Explain(pb2.ExplainRequest(model="shapes", image=png, rise=pb2.Rise(num_masks=200)), timeout=60)
        assert reply.attribution.dtype == pb2.FLOAT32 and list(reply.attribution.shape) == [64, 64]
        assert len(reply.attribution.data) == 64 * 64 * 4
    finally:
        sys.path.remove(str(tmp_path))
        for k in [k for k in sys.modules if k == "explaind" or k.startswith("explaind.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_white_box_methods_over_grpc(client, shapes_session, example_image):
    png, box = example_image
    x = preprocess(png)
    ig = client.explain("shapes", method="integrated_gradients", tensor=x, params={"n_steps": 64})
    assert ig.attribution.shape == (3, 64, 64) and ig.stats["score"] == "LOGIT"
    figures = client.stub.Explain(build_request("shapes", method="integrated_gradients", tensor=x,
                                                params={"n_steps": 64}), timeout=60).figures
    logits = shapes_session.run(None, {"input": x[None]})[0][0]
    assert figures["f_input"] == pytest.approx(float(logits[ig.target_class]), rel=1e-4)
    # Completeness: the attributions add up to f(x) - f(0), up to the quadrature error.
    assert abs(figures["completeness_gap"]) < 0.05 * abs(figures["f_input"] - figures["f_baseline"])
    cam = client.explain("shapes", method="grad_cam", tensor=x)
    assert cam.attribution.shape == (64, 64) and cam.attribution.min() >= 0
    y, xx = np.unravel_index(np.argmax(cam.attribution), cam.attribution.shape)
    x0, y0, x1, y1 = box["box"]
    assert x0 - 8 <= xx < x1 + 8 and y0 - 8 <= y < y1 + 8  # the map's peak is on the object
    smooth = client.explain("shapes", method="smooth_grad", tensor=x, seed=4, params={"num_samples": 10})
    again = client.explain("shapes", method="smooth_grad", tensor=x, seed=4, params={"num_samples": 10})
    np.testing.assert_array_equal(smooth.attribution, again.attribution)
    assert smooth.stats["model_evaluations"] == "11"


def test_lime_and_kernel_shap_over_grpc(client, example_image):
    png, _ = example_image
    reply = client.stub.Explain(build_request("shapes", method="lime", image=png, seed=2,
                                              params={"num_samples": 400, "segmentation": "slic"}), timeout=60)
    from explaind_client import from_proto

    segments = from_proto(reply.arrays["segments"])
    attribution = from_proto(reply.attribution)
    weights = from_proto(reply.arrays["segment_weights"])
    assert segments.shape == (64, 64) and len(weights) == segments.max() + 1
    np.testing.assert_allclose(attribution, weights[segments], rtol=1e-6)
    assert 0 < reply.figures["weighted_r2"] <= 1
    x = np.load(TABULAR / "background.npy")[9].astype(np.float32)
    updates = list(client.explain_stream("tabular", method="kernel_shap", tensor=x, seed=1, params={"nsamples": 2500}))
    partials = [u for u in updates if getattr(u, "partial", False)]
    final = updates[-1]
    assert len(partials) >= 1 and not final.partial  # one per batch at most: 2502 rows in batches of 2048
    assert final.attribution.shape == (13,)
    assert int(final.stats["model_evaluations"]) == (2500 + 2) * 100 + 1


def test_extremal_perturbation_over_grpc(client, example_image):
    """Exact gradients (the demo CNN has them) and the estimator, masks and figures, seeded, streamed."""
    png, box = example_image
    params = {"areas": [0.1, 0.2], "iterations": 40}
    exact = client.explain("shapes", method="extremal_perturbation", image=png, seed=3, params=params)
    assert exact.arrays["masks"].shape == (2, 64, 64) and 0 <= exact.arrays["masks"].min() and exact.arrays["masks"].max() <= 1
    # The attribution: the masks' sum blurred by TorchRay's imsmooth (its copy, checked in tests/reference), 0.09 x 64 px.
    blurred = gaussian_smooth(exact.arrays["masks"].sum(axis=0), 0.09 * 64, (0, 1))
    np.testing.assert_allclose(exact.attribution, blurred, atol=1e-5)
    plain = client.explain("shapes", method="extremal_perturbation", image=png, seed=3, params={**params, "smooth": 0})
    np.testing.assert_allclose(plain.attribution, plain.arrays["masks"].sum(axis=0), atol=1e-6)
    np.testing.assert_array_equal(plain.arrays["masks"], exact.arrays["masks"])  # smooth changes the attribution only
    figures = exact.figures
    assert figures["gradient_exact"] == 1 and figures["evaluations_per_iteration"] == 2
    assert figures["area_1"] == pytest.approx(0.2) and figures["achieved_area_1"] == pytest.approx(exact.arrays["masks"][1].mean())
    # plus the returned masks, unflipped, and the unperturbed input
    assert int(exact.stats["model_evaluations"]) == 40 * 2 + 2 + 1
    assert exact.arrays["masks"].mean(axis=(1, 2)) == pytest.approx(params["areas"], abs=1e-3)  # projected onto the areas
    assert exact.stats["parameters"]["step"] == 2 and exact.stats["parameters"]["sigma"] == 6.0  # scaled to 64 px
    estimated_params = {"areas": [0.1], "iterations": 20, "gradient": "estimated", "gradient_samples": 4}
    updates = list(client.explain_stream("shapes", method="extremal_perturbation", image=png, seed=5,
                                         params=estimated_params))
    final = updates[-1]
    partials = [u for u in updates if getattr(u, "partial", False)]
    assert len(partials) >= 5 and not final.partial and final.arrays["masks"].shape == (1, 64, 64)
    assert final.figures["gradient_exact"] == 0 and final.figures["evaluations_per_iteration"] == 9
    assert int(final.stats["model_evaluations"]) == 20 * 9 + 1 + 1
    again = client.explain("shapes", method="extremal_perturbation", image=png, seed=5, params=estimated_params)
    np.testing.assert_array_equal(again.arrays["masks"], final.arrays["masks"])  # same seed, same directions, same masks
    other = client.explain("shapes", method="extremal_perturbation", image=png, seed=6, params=estimated_params)
    assert not np.array_equal(other.arrays["masks"], final.arrays["masks"])
