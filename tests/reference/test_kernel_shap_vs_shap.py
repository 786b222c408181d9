"""explaind's Kernel SHAP through the real engine against shap.KernelExplainer on the tabular demo."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import shap

from explaind.config import Settings
from explaind.errors import FailedPrecondition, InvalidArgument
from explaind.explainer import ExplainQuery
from inprocess import serve_request

TABULAR = Settings().repository_path / "tabular"


@pytest.fixture(scope="module")
def background() -> np.ndarray:
    return np.load(TABULAR / "background.npy")


@pytest.fixture(scope="module")
def model_probability():
    session = ort.InferenceSession(str(TABULAR / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda target: (lambda a: session.run(["probabilities"], {"input": a.astype(np.float32)})[0][:, target])


def explain(model: str = "tabular", **query) -> object:
    return serve_request(ExplainQuery(model=model, method="kernel_shap", **query))


def test_exact_kernel_shap_equals_shap_on_the_tabular_demo(background, model_probability):
    x = background[5].copy()
    x[0] += 0.7  # off the background, so every feature can matter
    result = explain(tensor=x.astype(np.float32), target_index=1, params={"nsamples": 8190, "l1_reg": "none"})
    explainer = shap.KernelExplainer(model_probability(1), background)
    expected = explainer.shap_values(x, nsamples=8190, l1_reg=False)
    scores = model_probability(1)(np.vstack([background, x[None]]))
    score_range = scores.max() - scores.min()
    assert np.abs(result.attribution - expected).max() <= 1e-4 * score_range
    assert result.figures["base_value"] == pytest.approx(explainer.expected_value, abs=1e-6)
    assert result.figures["f_x"] == pytest.approx(float(model_probability(1)(x[None])[0]), abs=1e-6)
    assert result.attribution.sum() == pytest.approx(result.figures["f_x"] - result.figures["base_value"], abs=1e-6)
    assert result.stats.model_evaluations == (8190 + 2) * len(background) + 1


def test_sampled_kernel_shap_is_seeded_and_close_to_shap(background, model_probability):
    x = background[11].astype(np.float32)
    params = {"nsamples": 600, "background_kmeans": 20, "estimator": "shap"}  # shap's own coalition scheme
    first = explain(tensor=x, seed=3, params=params)
    again = explain(tensor=x, seed=3, params=params)
    np.testing.assert_array_equal(first.attribution, again.attribution)
    assert first.stats.parameters["l1_reg"] == "num_features(10)"  # M = 13 > 10: shap's default
    assert int(np.sum(first.attribution != 0)) <= 10
    target = first.target_class
    summary = shap.kmeans(background, 20)
    expected = shap.KernelExplainer(model_probability(target), summary).shap_values(x, nsamples=8190, l1_reg=False)
    assert np.corrcoef(first.attribution, expected)[0, 1] > 0.9


@pytest.mark.parametrize("params, field", [
    ({"nsamples": 0}, "kernel_shap.nsamples"),
    ({"l1_reg": "sometimes"}, "kernel_shap.l1_reg"),
    ({"link": "probit"}, "kernel_shap.link"),
    ({"background_kmeans": 1000}, "kernel_shap.background_kmeans"),
])
def test_kernel_shap_parameters_are_validated(background, params, field):
    with pytest.raises(InvalidArgument) as err:
        explain(tensor=background[0].astype(np.float32), params=params)
    assert err.value.field == field


def test_kernel_shap_needs_background():
    from explaind.methods.base import ModelView
    from explaind.methods.kernel_shap import KernelShap
    from explaind.onnxgraph.signature import ModelSignature

    view = ModelView("tabular", ModelSignature("input", "probabilities", (13,), "tabular", "probabilities"), None)
    with pytest.raises(FailedPrecondition, match="background"):
        KernelShap().parameters({}, view, Settings(), "probability")


def test_image_kernel_shap_equals_shap_over_the_same_superpixels():
    """shap's usual recipe for images: players are superpixels, f(z) = model(image with absent ones filled)."""
    import io

    from PIL import Image

    from explaind.methods.lime_core import segment

    png = (Settings().repository_path.parent / "examples" / "star_0.png").read_bytes()
    result = explain("shapes", image=png, params={"fill": "mean"})
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    x = ((pixels.astype(np.float32) / 255 - 0.5) / 0.25).transpose(2, 0, 1)
    labels = segment(pixels, "quickshift")
    players = labels.max() + 1
    means = np.stack([x[:, labels == j].mean(axis=1) for j in range(players)])  # [M, C]
    fill = means[labels].transpose(2, 0, 1)
    session = ort.InferenceSession(str(Settings().repository_path / "shapes" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])

    def f(z):
        keep = z[:, labels].astype(bool)[:, None]
        images = np.where(keep, x[None], fill[None]).astype(np.float32)
        logits = session.run(None, {"input": images})[0].astype(np.float64)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (p / p.sum(axis=1, keepdims=True))[:, result.target_class]

    expected = shap.KernelExplainer(f, np.zeros((1, players))).shap_values(np.ones(players), nsamples=2 ** players,
                                                                          l1_reg=False)
    np.testing.assert_allclose(result.arrays["segment_weights"], expected, atol=1e-5)
    np.testing.assert_array_equal(result.arrays["segments"], labels)


def test_exact_kernel_shap_equals_tree_shap_interventional(background, model_probability):
    """On a tree model, interventional TreeSHAP with the same background gives the same Shapley values."""
    from sklearn.datasets import load_wine
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    data = load_wine()  # the demo's training, as service/explaind/demo/train_tabular.py does it (seed 0)
    x_all = data.data.astype(np.float32)
    x_train, _, y_train, _ = train_test_split(x_all, data.target, test_size=0.3, random_state=0, stratify=data.target)
    forest = RandomForestClassifier(n_estimators=100, max_depth=6, random_state=0).fit(x_train, y_train)
    np.testing.assert_allclose(forest.predict_proba(background)[:, 1], model_probability(1)(background), atol=1e-6)

    x = background[40].copy()
    x[6] += 0.5
    result = explain(tensor=x.astype(np.float32), target_index=1, params={"nsamples": 8190, "l1_reg": "none"})
    tree = shap.TreeExplainer(forest, data=background, feature_perturbation="interventional")
    expected = np.asarray(tree.shap_values(x[None]))[..., 1].reshape(-1)
    # Within 1e-4 of the score range, as the issue asks: onnxruntime's TreeEnsemble compares in float32 and
    # sklearn/TreeSHAP in float64, so a few background values near a split differ (measured: 8e-5).
    scores = model_probability(1)(np.vstack([background, x[None]]))
    tolerance = 1e-4 * float(scores.max() - scores.min())
    np.testing.assert_allclose(result.attribution, expected, atol=tolerance)
    assert result.figures["base_value"] == pytest.approx(float(np.asarray(tree.expected_value)[1]), abs=tolerance)


def test_default_nsamples_is_shaps_auto_on_images_and_capped_on_tabular():
    """shap's nsamples="auto": 2M + 2048 coalitions, capped at 2^M - 2; the reported parameter is the one used."""
    png = (Settings().repository_path.parent / "examples" / "star_0.png").read_bytes()
    image = explain("shapes", image=png, seed=1, params={"segmentation": "slic"})
    players = len(image.arrays["segment_weights"])
    assert players > 12  # 2M + 2048 < 2^M - 2: not capped
    assert image.stats.parameters["nsamples"] == 2 * players + 2048
    assert image.stats.model_evaluations == 2 * players + 2048 + 2 + 1  # + f(x), base, prediction row
    tabular = explain(tensor=np.load(TABULAR / "background.npy")[0].astype(np.float32), seed=1,
                      params={"nsamples": 100_000})
    assert tabular.stats.parameters["nsamples"] == 2**13 - 2  # 13 features: every coalition, as used


def test_default_leverage_estimator_is_within_1_percent_of_exact_shapley_values(background, model_probability):
    """The default estimator (leverage, 8M = 104 coalitions) against exact interventional Shapley values
    (TreeSHAP on the demo's forest, equal to enumerating every coalition: test above) on held-out rows:
    within 1% of the score range, efficiency exact, and the reported standard errors of the right size."""
    from sklearn.datasets import load_wine
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    data = load_wine()
    x_all = data.data.astype(np.float32)
    x_train, x_test, y_train, _ = train_test_split(x_all, data.target, test_size=0.3, random_state=0,
                                                   stratify=data.target)
    forest = RandomForestClassifier(n_estimators=100, max_depth=6, random_state=0).fit(x_train, y_train)
    tree = shap.TreeExplainer(forest, data=background, feature_perturbation="interventional")
    exact = np.asarray(tree.shap_values(x_test[:6]))  # [rows, features, classes]
    z = []
    for i, x in enumerate(x_test[:6]):
        result = explain(tensor=x, seed=i)
        assert result.stats.parameters["estimator"] == "leverage" and result.stats.parameters["nsamples"] == 104
        assert result.stats.model_evaluations == (104 + 2) * len(background) + 1
        error = result.attribution - exact[i, :, result.target_class]
        assert np.abs(error).max() <= 0.01  # probabilities: the score range is 1
        assert result.attribution.sum() == pytest.approx(result.figures["f_x"] - result.figures["base_value"], abs=1e-6)
        se = result.arrays["standard_errors"]
        assert se.shape == (13,) and result.figures["standard_error_max"] == pytest.approx(float(se.max()), rel=1e-6)
        z.append(error / se)
    assert 0.4 <= float(np.sqrt(np.mean(np.square(z)))) <= 2.5  # errors of the size the estimate says


def test_shap_estimator_reports_no_standard_errors(background):
    result = explain(tensor=background[3].astype(np.float32), params={"estimator": "shap", "nsamples": 200,
                                                                         "l1_reg": "none"})
    assert "standard_errors" not in result.arrays and "standard_error_max" not in result.figures
    with pytest.raises(InvalidArgument, match="at least 26"):
        explain(tensor=background[3].astype(np.float32), params={"nsamples": 20})

