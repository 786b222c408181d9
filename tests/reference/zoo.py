"""A zoo of small torch classifiers, exported to ONNX, for reference tests against torch itself.

Every model is built deterministically (``torch.manual_seed`` plus randomised BatchNorm statistics
and affine parameters, so that inference-time BatchNormalization is not the identity), is in eval
mode, and uses one distinct ``nn.Module`` per activation call (no functional relus, no inplace
ops): hooks on a module then see exactly one ONNX node, and guided-backprop hooks on ``nn.ReLU``
modules cover every ONNX ``Relu``.

Each :class:`ZooEntry` names
- ``layer_module``: the qualified name of the torch module whose forward output is the "layer"
  (for Grad-CAM: the last 4-D activation before global pooling; for the MLP, its last hidden
  activation), and
- ``find_layer(onnx_model)``: the same tensor found in the exported graph, structurally (the input
  of the last GlobalAveragePool / spatial ReduceMean / GlobalMaxPool; failing that, the activation
  before the last spatial pooling that feeds the Flatten, as in VGG; for 2-D models, the input of
  the last Gemm/MatMul). :func:`module_of_node` reads the torch module back off the scoped name
  of the ONNX node that produces a tensor, to check that both name the same tensor.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

OPSET = 17


# Export ---------------------------------------------------------------------------------------


def export(model: nn.Module, path_or_none: str | Path | None = None, opset: int = OPSET) -> onnx.ModelProto:
    """Export `model` (eval mode) with the legacy TorchScript exporter: input "input" [N, ...],
    output "logits" [N, classes], dynamic batch, no constant folding (BatchNormalization stays)."""
    shape = model.input_shape  # type: ignore[attr-defined]  (set by every zoo builder)
    dummy = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1234))
    target: str | io.BytesIO = str(path_or_none) if path_or_none is not None else io.BytesIO()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            model,
            (dummy,),
            target,
            dynamo=False,
            do_constant_folding=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
    if isinstance(target, io.BytesIO):
        return onnx.load_from_string(target.getvalue())
    return onnx.load(target)


# Finding the layer in the exported graph ------------------------------------------------------


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    return ranks


def _is_spatial_reduce_mean(node: onnx.NodeProto) -> bool:
    if node.op_type != "ReduceMean":
        return False
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    return axes is not None and sorted(a % 4 for a in axes) == [2, 3]


def last_activation_before_global_pool(model: onnx.ModelProto) -> str:
    """The ONNX name of the last 4-D activation before global pooling (the Grad-CAM layer).

    1. the input of the last GlobalAveragePool / GlobalMaxPool / ReduceMean over axes (2, 3);
    2. otherwise (VGG-style: MaxPool then Flatten) the input of the spatial pooling node that feeds
       the last Flatten/Reshape of a 4-D tensor, or that tensor itself if no pooling produces it.
    """
    nodes = list(model.graph.node)
    ranks = _ranks(model)
    pools = [
        n for n in nodes
        if (n.op_type in ("GlobalAveragePool", "GlobalMaxPool") or _is_spatial_reduce_mean(n))
        and ranks.get(n.input[0]) == 4
    ]
    if pools:
        return pools[-1].input[0]
    producer = {o: n for n in nodes for o in n.output}
    flattens = [n for n in nodes if n.op_type in ("Flatten", "Reshape") and ranks.get(n.input[0]) == 4]
    if not flattens:
        raise LookupError("no global pooling and no flattening of a 4-D tensor in the graph")
    t = flattens[-1].input[0]
    p = producer.get(t)
    if p is not None and p.op_type in ("MaxPool", "AveragePool"):
        return p.input[0]
    return t


def last_hidden_activation(model: onnx.ModelProto) -> str:
    """For flat (2-D) models: the input of the last Gemm/MatMul (the last hidden activation)."""
    dense = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    if len(dense) < 2:
        raise LookupError("fewer than two dense layers: no hidden activation")
    return dense[-1].input[0]


def module_of_node(node: onnx.NodeProto) -> str:
    """The qualified name of the torch module inside which the legacy exporter emitted `node`,
    read off its scoped name: "/block2/relu2/Relu" -> "block2.relu2", "/features/features.8/Relu"
    -> "features.8" (children of a Sequential are scoped by their qualified name)."""
    scopes = node.name.split("/")[1:-1]
    return ".".join(scope.rsplit(".", 1)[-1] for scope in scopes)


def producer_of(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if tensor in n.output)


# Helpers --------------------------------------------------------------------------------------


def _randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial inference statistics and affine parameters for every BatchNorm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.75 + 0.5 * torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))


def _finish(model: nn.Module, input_shape: tuple[int, ...], seed: int) -> nn.Module:
    _randomize_batchnorm(model, seed + 1)
    model.input_shape = input_shape  # type: ignore[attr-defined]
    return model.eval()


# (a) ResNet-style -----------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:  # 1x1 projection
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.block1 = BasicBlock(16, 16, stride=1)
        self.block2 = BasicBlock(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))
        x = self.block2(self.block1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _finish(TinyResNet(10), (3, 32, 32), seed)


# (b) VGG-style --------------------------------------------------------------------------------


class TinyVGG(nn.Module):
    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),  # features.8: the Grad-CAM layer
            nn.MaxPool2d(2),  # 8x8
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _finish(TinyVGG(7), (3, 32, 32), seed)


# (c) MobileNetV2-style ------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))  # linear bottleneck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class TinyMobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 6) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())  # 16x16
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 4),  # residual
            InvertedResidual(16, 24, 2, 4),  # 8x8, no residual
            InvertedResidual(24, 24, 1, 4),  # residual
        )
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())  # head.2: the layer
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def mobilenetv2(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _finish(TinyMobileNetV2(6), (3, 32, 32), seed)


# (d) Squeeze-and-excitation -------------------------------------------------------------------


class SqueezeExcite(nn.Module):
    """s = sigmoid(W2 relu(W1 mean_hw(x))); y = x * s[:, :, None, None] (linears, a Reshape)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(channels // reduction, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.relu(self.fc1(x.mean((2, 3))))))  # ReduceMean over (2, 3)
        return x * s.view(x.size(0), -1, 1, 1)


class SEBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = SqueezeExcite(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(x + self.se(out))


class TinySENet(nn.Module):
    def __init__(self, num_classes: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())  # 16x16
        self.block = SEBlock(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def senet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _finish(TinySENet(8), (3, 32, 32), seed)


# (e) DenseNet-style ---------------------------------------------------------------------------


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], dim=1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class TinyDenseNet(nn.Module):
    def __init__(self, num_classes: int = 5, growth: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)  # 16x16
        self.dense1 = nn.Sequential(DenseLayer(16, growth), DenseLayer(16 + growth, growth), DenseLayer(16 + 2 * growth, growth))
        self.transition = Transition(16 + 3 * growth, 20)  # 8x8
        self.dense2 = nn.Sequential(DenseLayer(20, growth), DenseLayer(20 + growth, growth))
        self.bn = nn.BatchNorm2d(20 + 2 * growth)
        self.relu = nn.ReLU()  # the layer
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(20 + 2 * growth, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dense2(self.transition(self.dense1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(self.relu(self.bn(x))), 1))


def densenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _finish(TinyDenseNet(5), (3, 32, 32), seed)


# (f) MLP on tabular input ---------------------------------------------------------------------


class TabularMLP(nn.Module):
    def __init__(self, features: int = 16, hidden: int = 32, num_classes: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.tanh = nn.Tanh()  # the layer (2-D)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.tanh(self.fc2(self.relu(self.fc1(x)))))


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _finish(TabularMLP(), (16,), seed)


# The zoo --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]
    num_classes: int
    layer_module: str  # qualified name of the torch module whose output is the layer tensor
    find_layer: Callable[[onnx.ModelProto], str]
    has_relu6: bool = False


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("resnet", resnet, 10, "block2.relu2", last_activation_before_global_pool),
        ZooEntry("vgg", vgg, 7, "features.8", last_activation_before_global_pool),
        ZooEntry("mobilenetv2", mobilenetv2, 6, "head.2", last_activation_before_global_pool, has_relu6=True),
        ZooEntry("senet", senet, 8, "block.relu2", last_activation_before_global_pool),
        ZooEntry("densenet", densenet, 5, "relu", last_activation_before_global_pool),
        ZooEntry("mlp", mlp, 5, "tanh", last_hidden_activation),
    ]
}
