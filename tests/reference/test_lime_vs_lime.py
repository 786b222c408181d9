"""explaind's LIME through the real engine against the lime package on the demo models."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from explaind.config import Settings
from explaind.engine.engine import Engine
from explaind.explainer import Explainer, ExplainQuery
from explaind.methods.lime_core import segment
from explaind.models.repository import ModelRepository

REPOSITORY = Settings().repository_path
EXAMPLES = REPOSITORY.parent / "examples"


def explain(**query):
    async def main():
        repository = ModelRepository(REPOSITORY)
        repository.scan()
        engine = Engine(Settings(intra_op_threads=2))
        try:
            return await Explainer(engine.settings, repository, engine).explain(ExplainQuery(method="lime", **query))
        finally:
            await engine.close()

    return asyncio.run(main())


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("algorithm", ["quickshift", "slic"])  # quickshift's defaults give few segments at 64 px
def test_lime_image_weights_agree_with_lime(algorithm):
    from lime import lime_image

    png = (EXAMPLES / "star_0.png").read_bytes()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    result = explain(model="shapes", image=png, seed=1, params={"num_samples": 5000, "segmentation": algorithm})
    session = ort.InferenceSession(str(REPOSITORY / "shapes" / "model.onnx"), providers=["CPUExecutionProvider"])

    def classifier(images):
        x = ((images.astype(np.float32) / 255.0 - 0.5) / 0.25).transpose(0, 3, 1, 2)
        return softmax(session.run(None, {"input": np.ascontiguousarray(x, np.float32)})[0])

    labels = segment(pixels, algorithm)
    np.testing.assert_array_equal(result.outputs["segments"], labels)  # the same segmentation
    explanation = lime_image.LimeImageExplainer(random_state=0).explain_instance(
        pixels, classifier, labels=(result.target_class,), top_labels=None, hide_color=None, num_samples=5000,
        segmentation_fn=lambda image: segment(image, algorithm), batch_size=500)
    theirs = np.zeros(labels.max() + 1)
    for index, weight in explanation.local_exp[result.target_class]:
        theirs[index] = weight
    ours = result.outputs["segment_weights"]
    correlation = np.corrcoef(ours, theirs)[0, 1]
    print(f"lime image: Pearson {correlation:.4f} over {len(ours)} superpixels")
    assert correlation >= 0.9
    np.testing.assert_allclose(result.attribution, ours[labels], rtol=1e-6)
    assert 0 < result.figures["weighted_r2"] <= 1


def test_lime_tabular_weights_agree_with_lime():
    from lime.lime_tabular import LimeTabularExplainer

    background = np.load(REPOSITORY / "tabular" / "background.npy")
    x = background[17].astype(np.float32)
    result = explain(model="tabular", tensor=x, seed=2)
    session = ort.InferenceSession(str(REPOSITORY / "tabular" / "model.onnx"), providers=["CPUExecutionProvider"])
    predict = lambda rows: session.run(["probabilities"], {"input": rows.astype(np.float32)})[0]  # noqa: E731
    explainer = LimeTabularExplainer(background, discretize_continuous=True, discretizer="quartile", random_state=0)
    explanation = explainer.explain_instance(x, predict, labels=(result.target_class,), num_features=13,
                                             num_samples=5000)
    theirs = np.zeros(13)
    for index, weight in explanation.local_exp[result.target_class]:
        theirs[index] = weight
    correlation = np.corrcoef(result.attribution, theirs)[0, 1]
    print(f"lime tabular: Pearson {correlation:.4f}")
    assert correlation >= 0.9
    assert result.stats["model_evaluations"] == 5001


def test_lime_is_seeded():
    png = (EXAMPLES / "circle_0.png").read_bytes()
    first = explain(model="shapes", image=png, seed=5, params={"num_samples": 300})
    again = explain(model="shapes", image=png, seed=5, params={"num_samples": 300})
    np.testing.assert_array_equal(first.attribution, again.attribution)
