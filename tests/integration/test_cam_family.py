"""The CAM family and feature_maps through the real server, on a CNN built here (never bundled, a
non-square input, a squeeze-excitation gate before its last ReLU): each of XGrad-CAM, LayerCAM,
HiResCAM, Grad-CAM element-wise, Eigen-CAM, Eigen-Grad-CAM and Ablation-CAM against pytorch-grad-cam
on the torch model (1e-3 relative at the layer's resolution), aug_smooth against its output; the
streamed progress of Ablation-CAM and Smooth Grad-CAM++ ends at its total; feature_maps returns the
gate by name and renders its grid; bad parameters are INVALID_ARGUMENT naming the field.
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
from PIL import Image

torch = pytest.importorskip("torch")
nn = torch.nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
from _methods import import_pytorch_grad_cam, rel_err  # noqa: E402

from _server import start_server, stop_server  # noqa: E402

SHAPE = (3, 20, 28)
LIBRARY = {"xgrad_cam": "XGradCAM", "layer_cam": "LayerCAM", "hires_cam": "HiResCAM",
           "grad_cam_element_wise": "GradCAMElementWise", "eigen_cam": "EigenCAM", "eigen_grad_cam": "EigenGradCAM",
           "ablation_cam": "AblationCAM"}


class GatedNet(nn.Module):
    """Conv-ReLU-pool-Conv-BN, a squeeze-excitation gate, ReLU, global mean, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1, self.pool = nn.Conv2d(3, 10, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.bn = nn.Conv2d(10, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.fc_gate, self.gate = nn.Linear(12, 12), nn.Sigmoid()
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        y = y * self.gate(self.fc_gate(y.mean((2, 3)))).view(y.size(0), -1, 1, 1)
        return self.fc(self.relu2(y).mean((2, 3)))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    torch.manual_seed(3)
    net = GatedNet().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    buffer = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, *SHAPE), buffer, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    repo = tmp_path_factory.mktemp("cam-family-repo")
    (repo / "gated").mkdir()
    onnx.save_model(model, str(repo / "gated" / "model.onnx"))
    (repo / "gated" / "model.yaml").write_text(yaml.safe_dump({
        "kind": "image", "input": {"name": "input", "layout": "NCHW"}, "output": {"name": "logits", "scores": "logits"},
        "labels": [f"c{i}" for i in range(5)], "preprocess": {"size": [SHAPE[1], SHAPE[2]]}}))
    server = start_server(repo, tmp_path_factory.mktemp("cam-family-logs") / "server.log")
    with server.client() as client:
        yield client, net, model
    assert stop_server(server) == 0, server.log()


def example(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def library(net, name: str, x: np.ndarray, target: int, **call):
    gc = import_pytorch_grad_cam()
    xt = torch.from_numpy(x[None].copy())
    targets = [gc.ClassifierOutputTarget(target)]
    with getattr(gc, LIBRARY[name])(model=net, target_layers=[net.relu2]) as cam:
        final = cam(input_tensor=xt, targets=targets, **call)
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy() if cam.activations_and_grads.gradients else None
        unscaled = np.maximum(cam.get_cam_image(xt, net.relu2, targets, acts, grads, False), 0)[0]
    net.zero_grad(set_to_none=True)
    return unscaled, final[0]


def test_the_cam_family_agrees_with_pytorch_grad_cam_through_the_server(served):
    client, net, model = served
    methods = {m.name for m in client.list_methods("gated")}
    assert set(LIBRARY) | {"smooth_grad_cam_plus_plus", "feature_maps"} <= methods
    x = example(4)
    for name in LIBRARY:
        unscaled, _ = library(net, name, x, 3)
        got = client.explain("gated", method=name, tensor=x, target=3, params={"upsample": "none"})
        assert got.stats["parameters"]["aug_smooth"] is False
        assert np.abs(unscaled).max() > 0 and rel_err(got.attribution, unscaled) < 1e-3, name
    _, final = library(net, "hires_cam", x, 1, aug_smooth=True)
    got = client.explain("gated", method="hires_cam", tensor=x, target=1, params={"aug_smooth": True})
    assert got.attribution.shape == SHAPE[1:] and rel_err(got.attribution, final) < 1e-3


@pytest.mark.parametrize("method, params", [("ablation_cam", {}), ("smooth_grad_cam_plus_plus", {"num_samples": 40}),
                                            ("score_cam", {"aug_smooth": True})])
def test_progress_is_streamed_to_its_total(served, method, params):
    client, _, _ = served
    updates = list(client.explain_stream("gated", method=method, tensor=example(2), target=0, params=params))
    progress = [u for u in updates if hasattr(u, "rows_total")]
    assert progress and progress[-1].rows_done == progress[-1].rows_total
    assert all(p.rows_total == progress[0].rows_total for p in progress)
    final = updates[-1]
    assert int(final.stats["model_evaluations"]) == 1 + progress[-1].rows_total


def test_feature_maps_returns_the_gate_and_a_grid(served):
    client, net, model = served
    gate = next(n.output[0] for n in model.graph.node if n.op_type == "Sigmoid")
    x = example(6)
    got = client.explain("gated", method="feature_maps", tensor=x, target=0, params={"top_k": 5}, render=True)
    with torch.no_grad():
        seen = []
        handle = net.gate.register_forward_hook(lambda m, a, out: seen.append(out[0].numpy()))
        net(torch.from_numpy(x[None].copy()))
        handle.remove()
    assert rel_err(got.arrays[f"gate:{gate}"], seen[0]) < 1e-4
    assert got.arrays["feature_maps"].shape == (5, SHAPE[1] // 2, SHAPE[2] // 2)
    assert Image.open(io.BytesIO(got.heatmap_png)).size == (3 * SHAPE[2], 2 * SHAPE[1])  # 2 x 3 tiles


@pytest.mark.parametrize("method, params, field", [
    ("xgrad_cam", {"layer": "nope"}, "xgrad_cam.layer"),
    ("ablation_cam", {"upsample": "bicubic"}, "ablation_cam.upsample"),
    ("smooth_grad_cam_plus_plus", {"num_samples": 0}, "smooth_grad_cam_plus_plus.num_samples"),
    ("feature_maps", {"rank_by": "loud"}, "feature_maps.rank_by"),
])
def test_bad_parameters_are_invalid_argument_naming_the_field(served, method, params, field):
    client, _, _ = served
    with pytest.raises(grpc.RpcError) as err:
        client.explain("gated", method=method, tensor=example(1), params=params)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
