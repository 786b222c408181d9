"""Score-CAM and CAM through the real server on models built here and never bundled: a CNN whose
head is a spatial mean then a linear layer (exported as ReduceMean + Gemm, on a non-square input),
and one whose head flattens the activation (no CAM possible). Score-CAM is compared with
pytorch-grad-cam's ScoreCAM, CAM with its closed form from the torch model.
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
nn = torch.nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
from _methods import import_pytorch_grad_cam, rel_err  # noqa: E402

from _server import start_server, stop_server  # noqa: E402

SHAPE = (3, 24, 32)


class MeanHeadNet(nn.Module):
    """Conv-ReLU-pool-Conv-BN-ReLU, then mean over H and W and a linear layer: CAM's architecture."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(12, 20, 3, padding=1), nn.BatchNorm2d(20), nn.ReLU())
        self.fc = nn.Linear(20, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class FlatHeadNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(8 * 12 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def export(net: nn.Module) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, *SHAPE), buffer, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def last_relu_output(model: onnx.ModelProto) -> str:
    return [n for n in model.graph.node if n.op_type == "Relu"][-1].output[0]


def add_model(repo: Path, name: str, net: nn.Module, classes: int) -> onnx.ModelProto:
    model = export(net)
    folder = repo / name
    folder.mkdir(parents=True)
    onnx.save_model(model, str(folder / "model.onnx"))
    (folder / "model.yaml").write_text(yaml.safe_dump({
        "kind": "image", "input": {"name": "input", "layout": "NCHW"}, "output": {"name": "logits", "scores": "logits"},
        "labels": [f"c{i}" for i in range(classes)], "preprocess": {"size": [SHAPE[1], SHAPE[2]]}}))
    return model


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(11)
    mean_net, flat_net = MeanHeadNet().eval(), FlatHeadNet().eval()
    with torch.no_grad():  # a BatchNorm that does something
        bn = mean_net.features[4]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
    return mean_net, flat_net


@pytest.fixture(scope="module")
def served(nets, tmp_path_factory):
    repo = tmp_path_factory.mktemp("cam-repo")
    mean_model = add_model(repo, "mean_head", nets[0], 6)
    flat_model = add_model(repo, "flat_head", nets[1], 4)
    server = start_server(repo, tmp_path_factory.mktemp("cam-logs") / "server.log")
    with server.client() as client:
        yield client, mean_model, flat_model
    assert stop_server(server) == 0, server.log()


def example(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def library_score_cam(net: nn.Module, layer: nn.Module, x: np.ndarray, target: int):
    gc = import_pytorch_grad_cam()
    xt = torch.from_numpy(x[None].copy())
    targets = [gc.ClassifierOutputTarget(target)]
    with gc.ScoreCAM(model=net, target_layers=[layer]) as cam:
        cam(input_tensor=xt, targets=targets)
        activations = cam.activations_and_grads.activations[0].numpy()
        weights = cam.get_cam_weights(xt, layer, targets, activations, None)
        unscaled = np.maximum(cam.get_cam_image(xt, layer, targets, activations, None), 0)
    return weights[0], unscaled[0]


@pytest.mark.parametrize("which", ["mean_head", "flat_head"])
def test_score_cam_agrees_with_pytorch_grad_cam_through_the_server(served, nets, which):
    client, mean_model, flat_model = served
    net = nets[0] if which == "mean_head" else nets[1]
    model = mean_model if which == "mean_head" else flat_model
    layer_name = last_relu_output(model)
    layer_module = net.features[5] if which == "mean_head" else net.features[1]
    x = example(3)
    for target in (0, 2):
        weights, unscaled = library_score_cam(net, layer_module, x, target)
        # The mean-head model's default layer is the activation feeding its pooling; the flat one has none.
        params = {"upsample": "none"} if which == "mean_head" else {"layer": layer_name, "upsample": "none"}
        got = client.explain(which, method="score_cam", tensor=x, target=target, params=params)
        assert got.target_class == target
        assert rel_err(got.arrays["channel_weights"], weights) < 1e-3
        assert rel_err(got.attribution, unscaled) < 1e-3
        assert got.stats["model_evaluations"] == str(1 + len(weights))  # the prediction reads the layer
        assert got.stats["parameters"]["layer"] == layer_name
    full = client.explain(which, method="score_cam", tensor=x, target=2, params={"layer": layer_name})
    assert full.attribution.shape == SHAPE[1:]


def test_cam_equals_its_closed_form_through_the_server(served, nets):
    client, mean_model, _ = served
    net = nets[0]
    x = example(5)
    seen = []
    handle = net.features[5].register_forward_hook(lambda m, i, out: seen.append(out.detach().numpy()[0]))
    with torch.no_grad():
        logits = net(torch.from_numpy(x[None].copy())).numpy()[0].astype(np.float64)
    handle.remove()
    activation = seen[-1].astype(np.float64)
    weight, bias = net.fc.weight.detach().numpy().astype(np.float64), net.fc.bias.detach().numpy().astype(np.float64)
    for target in range(6):
        got = client.explain("mean_head", method="cam", tensor=x, target=target, params={"upsample": "none"})
        expected = np.tensordot(weight[target], activation, axes=1)
        assert rel_err(got.attribution, expected) < 1e-5
        assert got.attribution.mean() + bias[target] == pytest.approx(logits[target], rel=1e-4, abs=1e-4)
        assert got.stats["model_evaluations"] == "1"
    methods = {m.name for m in client.list_methods("mean_head")}
    assert {"cam", "score_cam"} <= methods


def test_cam_is_refused_for_a_model_without_a_pooling_head(served):
    client, _, flat_model = served
    with pytest.raises(grpc.RpcError) as err:
        client.explain("flat_head", method="cam", tensor=example(1))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "global average pooling" in err.value.details() and "Gemm" in err.value.details()
    assert "cam" not in {m.name for m in client.list_methods("flat_head")}
    assert "score_cam" in {m.name for m in client.list_methods("flat_head")}


def test_cam_and_score_cam_bad_layers_name_the_field(served):
    client, mean_model, _ = served
    pooled = last_relu_output(mean_model)
    earlier = [n for n in mean_model.graph.node if n.op_type == "Relu"][0].output[0]
    for method in ("cam", "score_cam"):
        with pytest.raises(grpc.RpcError) as err:
            client.explain("mean_head", method=method, tensor=example(1), params={"layer": "nope"})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{method}.layer" in err.value.details() and "'nope'" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        client.explain("mean_head", method="cam", tensor=example(1), params={"layer": earlier})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cam.layer" in err.value.details() and pooled in err.value.details() and earlier in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        client.explain("mean_head", method="score_cam", tensor=example(1), params={"upsample": "bicubic"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "score_cam.upsample" in err.value.details() and "bicubic" in err.value.details()
