"""deep_lift, deep_lift_shap, rect_grad and excitation_backprop through the real server, on models built
here and never bundled:

- an image CNN (Conv-ReLU-Conv-MaxPool-Conv-BN-ReLU, global average pooling, linear): DeepLIFT against
  Captum's DeepLift, streamed (progress then the result) and in one call; excitation backprop and
  RectGrad answered, with the parameters as used;
- a tabular MLP with a background: DeepLIFT SHAP against Captum's DeepLiftShap over that background;
- an image net whose head multiplies two activations (a Gram matrix, MatMul of two activations):
  excitation backprop is refused with FAILED_PRECONDITION naming the operator and node while saliency
  and DeepLIFT (which takes the gradient there, as Captum) still answer;
- parameter validation: INVALID_ARGUMENT naming the field, the expected values and what came.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import yaml

torch = pytest.importorskip("torch")
captum = pytest.importorskip("captum.attr")
nn = torch.nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
from _methods import rel_err  # noqa: E402

from _server import start_server, stop_server  # noqa: E402

SHAPE = (3, 16, 20)
FEATURES = 6

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.c2, self.p2 = nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2)
        self.c3, self.bn3, self.r3 = nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.r3(self.bn3(self.c3(self.p2(self.c2(self.r1(self.c1(x)))))))
        return self.fc(torch.flatten(self.pool(x), 1))


class GramNet(nn.Module):
    """Features, then their Gram matrix (a product of two activations), then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.flatten(self.r1(self.c1(x)), 2)
        return self.fc(torch.flatten(torch.matmul(f, f.transpose(1, 2)) / f.shape[2], 1))


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 10), nn.ReLU(), nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def export(net: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, *shape), buffer, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def add_model(repo: Path, name: str, net: nn.Module, shape: tuple[int, ...], classes: int,
              background: np.ndarray | None = None) -> onnx.ModelProto:
    model = export(net, shape)
    folder = repo / name
    folder.mkdir(parents=True)
    onnx.save_model(model, str(folder / "model.onnx"))
    if len(shape) == 3:
        yaml_config = {"kind": "image", "input": {"name": "input", "layout": "NCHW"},
                       "preprocess": {"size": [shape[1], shape[2]]}}
    else:
        yaml_config = {"kind": "tabular", "input": {"name": "input"},
                       "feature_names": [f"f{i}" for i in range(shape[0])]}
    yaml_config.update({"output": {"name": "logits", "scores": "logits"}, "labels": [f"c{i}" for i in range(classes)]})
    if background is not None:
        np.save(folder / "background.npy", background)
        yaml_config["background"] = "background.npy"
    (folder / "model.yaml").write_text(yaml.safe_dump(yaml_config))
    return model


BACKGROUND = np.random.default_rng(3).standard_normal((10, FEATURES)).astype(np.float32)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(21)
    conv, gram, mlp = ConvNet().eval(), GramNet().eval(), Mlp().eval()
    with torch.no_grad():
        conv.bn3.running_mean.uniform_(-0.2, 0.2)
        conv.bn3.running_var.uniform_(0.5, 1.5)
    return {"conv": conv, "gram": gram, "mlp": mlp}


@pytest.fixture(scope="module")
def client(nets, tmp_path_factory):
    repo = tmp_path_factory.mktemp("relevance-repo")
    add_model(repo, "conv", nets["conv"], SHAPE, 4)
    add_model(repo, "gram", nets["gram"], SHAPE, 3)
    add_model(repo, "mlp", nets["mlp"], (FEATURES,), 3, background=BACKGROUND)
    server = start_server(repo, tmp_path_factory.mktemp("relevance-logs") / "server.log")
    with server.client() as c:
        yield c
    assert stop_server(server) == 0, server.log()


def example(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_the_models_offer_the_methods_their_operators_allow(client):
    conv = set(client.get_model("conv").methods)
    assert {"deep_lift", "rect_grad", "excitation_backprop"} <= conv and "deep_lift_shap" not in conv
    gram = set(client.get_model("gram").methods)
    assert {"saliency", "deep_lift", "rect_grad"} <= gram and "excitation_backprop" not in gram
    assert {"deep_lift", "deep_lift_shap", "rect_grad", "excitation_backprop"} <= set(client.get_model("mlp").methods)


def test_deep_lift_agrees_with_captum_streamed_and_in_one_call(client, nets):
    x = example(1)
    ref = captum.DeepLift(nets["conv"]).attribute(torch.from_numpy(x[None].copy()), baselines=0.1,
                                                  target=2)[0].detach().numpy()
    once = client.explain("conv", method="deep_lift", tensor=x, target=2, params={"baseline": 0.1})
    assert rel_err(once.attribution, ref) < 1e-3
    assert abs(float(once.figures["convergence_delta"])) < 1e-4
    assert float(once.stats["parameters"]["baseline"]) == pytest.approx(0.1)
    updates = list(client.explain_stream("conv", method="deep_lift", tensor=x, target=2, params={"baseline": 0.1}))
    final = updates[-1]
    assert any(type(u).__name__ == "Progress" for u in updates[:-1])
    np.testing.assert_allclose(final.attribution, once.attribution, rtol=1e-6, atol=1e-7)
    summed = client.explain("conv", method="deep_lift", tensor=x, target=2,
                            params={"baseline": 0.1, "channel_reduction": "sum"})
    np.testing.assert_allclose(summed.attribution, once.attribution.sum(axis=0), rtol=1e-5, atol=1e-6)


def test_deep_lift_shap_agrees_with_captum_over_the_background(client, nets):
    x = example(2, (FEATURES,))
    ref = captum.DeepLiftShap(nets["mlp"]).attribute(torch.from_numpy(x[None].copy()),
                                                     baselines=torch.from_numpy(BACKGROUND), target=1)
    got = client.explain("mlp", method="deep_lift_shap", tensor=x, target=1)
    assert rel_err(got.attribution, ref[0].detach().numpy()) < 1e-3
    assert got.stats["model_evaluations"] == str(1 + len(BACKGROUND))


def test_excitation_backprop_and_rect_grad_answer_with_their_parameters(client, nets):
    x = np.abs(example(3))
    layers = client.get_model("conv").layers
    ebp = client.explain("conv", method="excitation_backprop", tensor=x, target=1,
                         params={"contrastive": True, "layer": layers[-1]})
    assert ebp.attribution.shape == SHAPE[1:] and ebp.attribution.min() >= 0 and ebp.attribution.max() > 0
    assert ebp.stats["parameters"]["layer"] == layers[-1]
    plain = client.explain("conv", method="excitation_backprop", tensor=x, target=1)
    assert plain.attribution.shape == SHAPE[1:]
    assert plain.attribution.sum() == pytest.approx(1.0, rel=0.2)  # winning probabilities: about 1 in all
    rect = client.explain("conv", method="rect_grad", tensor=x, target=1, params={"q": 90})
    grad = client.explain("conv", method="saliency", tensor=x, target=1,
                          params={"postprocess": "raw", "channel_reduction": "none"})
    assert rect.attribution.shape == SHAPE and 0 < np.count_nonzero(rect.attribution) < np.count_nonzero(grad.attribution)


def test_an_operator_without_an_excitation_rule_refuses_it_and_gradients_still_work(client):
    with pytest.raises(grpc.RpcError) as err:
        client.explain("gram", method="excitation_backprop", tensor=example(4))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details()
    assert "MatMul" in details and "excitation" in details and "node" in details
    assert client.explain("gram", method="saliency", tensor=example(4)).attribution.shape == SHAPE[1:]
    assert client.explain("gram", method="deep_lift", tensor=example(4)).attribution.shape == SHAPE


@pytest.mark.parametrize("method, params, field, shown", [
    ("rect_grad", {"q": 101.0}, "rect_grad.q", "101"),
    ("rect_grad", {"channel_reduction": "median"}, "rect_grad.channel_reduction", "median"),
    ("deep_lift", {"baseline": float("nan")}, "deep_lift.baseline", "nan"),
    ("excitation_backprop", {"layer": "nope"}, "excitation_backprop.layer", "nope"),
    ("excitation_backprop", {"upsample": "bicubic"}, "excitation_backprop.upsample", "bicubic"),
])
def test_bad_parameters_name_the_field(client, method, params, field, shown):
    with pytest.raises(grpc.RpcError) as err:
        client.explain("conv", method=method, tensor=example(5), params=params)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details() and shown in err.value.details().lower()


def test_deep_lift_shap_is_refused_for_a_model_without_a_background(client):
    with pytest.raises(grpc.RpcError) as err:
        client.explain("conv", method="deep_lift_shap", tensor=example(6))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "deep_lift_shap" in err.value.details()
