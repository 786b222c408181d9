"""explaind's LIME through the real engine against the lime package: on the demo models, and on a
224x224 photo (scikit-image's chelsea) with a small torch CNN, where lime's default quickshift
segmentation gives a few dozen superpixels (on the 64x64 demo it gives only 3-5)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

import zoo
from explaind.config import Settings
from explaind.explainer import ExplainQuery
from explaind.methods.lime_core import segment
from inprocess import serve_request
from oracles.lime import fill_images, hide_image, sample_image_coalitions

REPOSITORY = Settings().repository_path
EXAMPLES = REPOSITORY.parent / "examples"


def explain(repository_path: Path = REPOSITORY, **query):
    return serve_request(ExplainQuery(method="lime", **query), repository=repository_path)


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
    np.testing.assert_array_equal(result.arrays["segments"], labels)  # the same segmentation
    explanation = lime_image.LimeImageExplainer(random_state=0).explain_instance(
        pixels, classifier, labels=(result.target_class,), top_labels=None, hide_color=None, num_samples=5000,
        segmentation_fn=lambda image: segment(image, algorithm), batch_size=500)
    theirs = np.zeros(labels.max() + 1)
    for index, weight in explanation.local_exp[result.target_class]:
        theirs[index] = weight
    ours = result.arrays["segment_weights"]
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
    assert result.stats.model_evaluations == 5001


def test_lime_is_seeded():
    png = (EXAMPLES / "circle_0.png").read_bytes()
    first = explain(model="shapes", image=png, seed=5, params={"num_samples": 300})
    again = explain(model="shapes", image=png, seed=5, params={"num_samples": 300})
    np.testing.assert_array_equal(first.attribution, again.attribution)


# A photo with many superpixels ----------------------------------------------------------------

PHOTO_SIZE = 224
PHOTO_MEAN = [0.485, 0.456, 0.406]
PHOTO_STD = [0.229, 0.224, 0.225]
PHOTO_LABELS = ["north", "east", "south", "west"]
LOGIT_GAIN = 3.0  # the head's logits move by about this much (one std) as superpixels are hidden


class PhotoNet(nn.Module):
    """A small CNN on 3x224x224 (zoo conventions: one nn.ReLU per activation, eval mode): a 4x4
    stride-4 patch convolution, two stride-2 convolutions, 2x2 average pooling, then BatchNorm1d and
    a linear head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 4, stride=4)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.norm = nn.BatchNorm1d(128)
        self.fc = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.features(x)))


def photo_pixels() -> np.ndarray:
    """scikit-image's bundled chelsea photo (no download), resized to uint8 [224, 224, 3]."""
    from skimage import data
    from skimage.transform import resize

    resized = resize(data.chelsea(), (PHOTO_SIZE, PHOTO_SIZE), preserve_range=True, anti_aliasing=True)
    return resized.round().astype(np.uint8)


def photo_preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], bit for bit explaind's preprocessing
    (x / float32(255) - mean) / std in float32, through a per-channel lookup table."""
    mean = np.asarray(PHOTO_MEAN, np.float32)[:, None]
    std = np.asarray(PHOTO_STD, np.float32)[:, None]
    table = (np.arange(256, dtype=np.float32)[None] / np.float32(255) - mean) / std  # [3, 256]
    chw = np.ascontiguousarray(np.asarray(images, np.uint8).transpose(0, 3, 1, 2))
    x = np.empty(chw.shape, np.float32)
    for c in range(3):
        x[:, c] = table[c][chw[:, c]]
    return x


def build_photo_net(pixels: np.ndarray) -> nn.Module:
    """Deterministic weights: He-normal convolutions with zero biases (so the input's signal is not
    drowned by biases), randomised BatchNorm2d statistics as in the zoo; the head's BatchNorm1d has
    its statistics estimated on 256 perturbed copies of the photo (superpixels hidden at random, as
    LIME does, with a seed of its own), as if trained on such data, and the linear head has
    N(0, gain^2 / 128) weights: the logits then move by several units as superpixels are hidden."""
    torch.manual_seed(0)
    model = PhotoNet(len(PHOTO_LABELS))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    zoo._randomize_batchnorm(model, 1)
    model.input_shape = (3, PHOTO_SIZE, PHOTO_SIZE)
    model.eval()
    segments = segment(pixels, "quickshift")
    coalitions = sample_image_coalitions(int(segments.max()) + 1, 256, np.random.RandomState(12345))
    images = fill_images(pixels, hide_image(pixels, segments), segments, coalitions)
    with torch.no_grad():
        features = model.features(torch.from_numpy(photo_preprocess(images)))
        model.norm.running_mean.copy_(features.mean(0))
        model.norm.running_var.copy_(features.var(0) + 1e-3)
        model.norm.weight.fill_(1.0)
        model.norm.bias.zero_()
        nn.init.normal_(model.fc.weight, std=LOGIT_GAIN / 128 ** 0.5)
        nn.init.zeros_(model.fc.bias)
    return model


@pytest.fixture(scope="module")
def photo_repository(tmp_path_factory):
    """A model repository with one model, "photonet" (PhotoNet exported with zoo.export), and the photo."""
    torch.set_num_threads(2)
    pixels = photo_pixels()
    root = tmp_path_factory.mktemp("photo_repository")
    (root / "photonet").mkdir()
    zoo.export(build_photo_net(pixels), root / "photonet" / "model.onnx")
    (root / "photonet" / "model.yaml").write_text(
        "kind: image\n"
        "input: {name: input, layout: NCHW}\n"
        "output: {name: logits, scores: logits}\n"
        f"labels: [{', '.join(PHOTO_LABELS)}]\n"
        f"preprocess: {{size: [{PHOTO_SIZE}, {PHOTO_SIZE}], scale: 255, mean: {PHOTO_MEAN}, std: {PHOTO_STD}}}\n")
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    return root, pixels, png.getvalue()


def test_lime_image_weights_agree_with_lime_on_a_photo_at_default_quickshift(photo_repository):
    """Default segmentation (quickshift with lime's defaults) on a 224x224 photo: ~36 superpixels."""
    from lime import lime_image

    root, pixels, png = photo_repository
    result = explain(root, model="photonet", image=png, seed=3, params={"num_samples": 5000})
    labels = segment(pixels, "quickshift")
    count = int(labels.max()) + 1
    assert count >= 20, f"only {count} superpixels: the comparison would say little"
    np.testing.assert_array_equal(result.arrays["segments"], labels)  # the same segmentation

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(root / "photonet" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    seen: list[np.ndarray] = []

    def classifier(images):
        probabilities = softmax(session.run(None, {"input": photo_preprocess(images)})[0])
        seen.append(probabilities[:, result.target_class])
        return probabilities

    def lime_weights(random_state: int) -> np.ndarray:
        explanation = lime_image.LimeImageExplainer(random_state=random_state).explain_instance(
            pixels, classifier, labels=(result.target_class,), top_labels=None, hide_color=None, num_samples=5000,
            segmentation_fn=lambda image: segment(image, "quickshift"), batch_size=500)
        np.testing.assert_array_equal(explanation.segments, labels)
        weights = np.zeros(count)
        for index, weight in explanation.local_exp[result.target_class]:
            weights[index] = weight
        return weights

    theirs = lime_weights(0)
    spread = float(np.concatenate(seen).std())
    again = lime_weights(1)
    ours = result.arrays["segment_weights"].astype(np.float64)
    ours_vs_lime = np.corrcoef(ours, theirs)[0, 1]
    lime_vs_lime = np.corrcoef(again, theirs)[0, 1]
    print(f"lime image, {PHOTO_SIZE}x{PHOTO_SIZE} photo, default quickshift, {count} superpixels, "
          f"target {result.target_label} (p = {result.top_classes[0].probability:.3f} unperturbed, std {spread:.3f} "
          f"over lime's samples): Pearson explaind vs lime {ours_vs_lime:.4f}, lime (seed 1) vs lime (seed 0) "
          f"{lime_vs_lime:.4f}")
    assert spread >= 0.05, "the target probability barely moves: the comparison would say little"
    assert ours_vs_lime >= 0.9
    np.testing.assert_allclose(result.attribution, ours[labels], rtol=1e-6)
    assert 0 < result.figures["weighted_r2"] <= 1


def test_few_superpixels_evaluate_each_distinct_image_once_with_the_same_surrogate():
    """quickshift finds 3-5 superpixels on the demo images: of 1000 samples at most 2^S images differ. Each
    is evaluated once and counted; the surrogate equals the fit over all 1000 samples (the seed's draws,
    every perturbed image evaluated) to float rounding, and its standard errors are reported."""
    from explaind.methods import lime_core as lc
    from oracles.lime import fit_surrogate

    png = (EXAMPLES / "star_0.png").read_bytes()
    result = explain(model="shapes", image=png, seed=5, params={"num_samples": 1000})
    labels = result.arrays["segments"]
    s = int(labels.max()) + 1
    assert s <= 8 and result.stats.model_evaluations <= 2**s + 1  # + the prediction row
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    x = ((pixels.astype(np.float32) / 255 - 0.5) / 0.25)  # [H, W, C] model input space
    z = sample_image_coalitions(s, 1000, np.random.default_rng(5))
    images = fill_images(x, hide_image(x, labels, None), labels, z).transpose(0, 3, 1, 2)
    session = ort.InferenceSession(str(REPOSITORY / "shapes" / "model.onnx"), providers=["CPUExecutionProvider"])
    y = softmax(session.run(None, {"input": np.ascontiguousarray(images, np.float32)})[0])[:, result.target_class]
    coef, intercept, r2 = fit_surrogate(z, y, lc.image_kernel_weights(z))
    np.testing.assert_allclose(result.arrays["segment_weights"], coef, atol=1e-5)
    assert result.figures["intercept"] == pytest.approx(intercept, abs=1e-5)
    assert result.figures["weighted_r2"] == pytest.approx(r2, abs=1e-4)
    assert result.figures["samples"] == 1000
    errors = result.arrays["standard_errors"]
    assert errors.shape == (s,) and np.all(errors > 0) and result.figures["standard_error_max"] == pytest.approx(
        float(errors.max()), rel=1e-6)
