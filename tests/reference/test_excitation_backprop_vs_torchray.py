"""Excitation backprop and contrastive excitation backprop against TorchRay's `excitation_backprop` and
`contrastive_excitation_backprop` on the same torch models (see _methods.py for the setup).

TorchRay patches the torch functions of linear layers, convolutions, average pooling and batch norm,
and the element-wise sum of its own `eltwise_sum` (for torchvision's ResNets, `update_resnet`). The
zoo's residual blocks add with `+`, so here each block's forward adds with TorchRay's eltwise_sum
(the same ONNX Add; explaind splits every sum of two activations in proportion, as the paper).
Inputs are |N(0, 1)| (TorchRay and the paper assume non-negative inputs to each linear layer; with
signed inputs the first layer's normaliser can come near 0 and the comparison would measure
rounding). Maps: the sum over channels at the input (TorchRay's default saliency layer) and at a
layer (the zoo's layer, and upsampled bilinearly to the input as TorchRay's resize=True); the
contrastive map at an earlier layer, with TorchRay's contrast layer at the zoo's layer.
resnet, vgg, densenet, senet, mobilenetv2.

TorchRay imports torchvision.models.resnet at module level for its ResNet patch; where torchvision's
wheel is broken, conftest's stub (_methods.stub_torchvision_if_broken) stands in for those names
(only update_resnet, unused here, reads them).
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import zoo
from _methods import TOL, check
from explaind.methods.excitation_backprop import ExcitationBackprop

MODELS = ["resnet", "vgg", "densenet", "senet", "mobilenetv2"]
TARGETS = {"resnet": 3, "vgg": 2, "densenet": 1, "senet": 5, "mobilenetv2": 4}
EARLIER = {"resnet": "block1.relu2", "vgg": "features.3", "densenet": "transition.pool", "senet": "stem.2",
           "mobilenetv2": "blocks.1.project.1"}


ebp = pytest.importorskip("torchray.attribution.excitation_backprop")


def _basic_block(self, x):
    out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
    return self.relu2(ebp.eltwise_sum(out, self.shortcut(x)))


def _se_block(self, x):
    out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
    return self.relu2(ebp.eltwise_sum(x, self.se(out)))


def _inverted_residual(self, x):
    out = self.project(self.depthwise(self.expand(x)))
    return ebp.eltwise_sum(x, out) if self.use_residual else out


@contextmanager
def torchray_sums(model: torch.nn.Module):
    """The model's residual additions through TorchRay's eltwise_sum (looked up when called, so that
    TorchRay's patch applies), for the duration; the parameters' requires_grad restored after (TorchRay
    turns it off on the model it is given, and the zoo's twins are shared by the other reference tests)."""
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    patched = []
    for module in model.modules():
        forward = {zoo.BasicBlock: _basic_block, zoo.SEBlock: _se_block, zoo.InvertedResidual: _inverted_residual}.get(type(module))
        if forward is not None:
            module.forward = types.MethodType(forward, module)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
        for parameter, flag in requires_grad:
            parameter.requires_grad_(flag)


def tensor_of(onnx_model, module_name: str) -> str:
    node = next(n for n in onnx_model.graph.node if zoo.module_of_node(n) == module_name and n.op_type != "Constant")
    return node.output[0]


def example(name: str, shape) -> np.ndarray:
    return np.abs(np.random.default_rng(80 + MODELS.index(name)).standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("name", MODELS)
def test_excitation_backprop_agrees_with_torchray(exported, xp, summary, name):
    ex = exported(name)
    x, target = example(name, ex.torch_model.input_shape), TARGETS[name]
    xt = torch.from_numpy(x[None].copy())
    layer_module = ex.entry.layer_module
    with torchray_sums(ex.torch_model):
        at_input = ebp.excitation_backprop(ex.torch_model, xt, target)[0, 0].detach().numpy()
        at_layer = ebp.excitation_backprop(ex.torch_model, xt, target, saliency_layer=layer_module)[0, 0].detach().numpy()
        resized = ebp.excitation_backprop(ex.torch_model, xt, target, saliency_layer=layer_module,
                                          resize=True)[0, 0].detach().numpy()
    got, params = xp.explain(ExcitationBackprop(), {}, ex.in_process, x, target)
    assert params == {"layer": "", "contrastive": False, "upsample": "bilinear"}
    check(summary, "excitation_backprop(input)", name, got.attribution, at_input)
    layer = tensor_of(ex.onnx_model, layer_module)
    assert layer == ex.layer
    got, _ = xp.explain(ExcitationBackprop(), {"layer": layer, "upsample": "none"}, ex.in_process, x, target)
    check(summary, "excitation_backprop(layer)", name, got.attribution, at_layer)
    got, _ = xp.explain(ExcitationBackprop(), {"layer": layer}, ex.in_process, x, target)
    assert got.attribution.shape == x.shape[1:]
    check(summary, "excitation_backprop(layer, resized)", name, got.attribution, resized)


@pytest.mark.parametrize("name", MODELS)
def test_contrastive_excitation_backprop_agrees_with_torchray(exported, xp, summary, name):
    ex = exported(name)
    x, target = example(name, ex.torch_model.input_shape), TARGETS[name]
    xt = torch.from_numpy(x[None].copy())
    earlier = EARLIER[name]
    with torchray_sums(ex.torch_model):
        ref = ebp.contrastive_excitation_backprop(ex.torch_model, xt, target, saliency_layer=earlier,
                                                  contrast_layer=ex.entry.layer_module)[0, 0].detach().numpy()
        plain = ebp.excitation_backprop(ex.torch_model, xt, target, saliency_layer=earlier)[0, 0].detach().numpy()
    layer = tensor_of(ex.onnx_model, earlier)
    got, params = xp.explain(ExcitationBackprop(), {"layer": layer, "contrastive": True, "upsample": "none"},
                             ex.in_process, x, target)
    assert params["contrastive"] is True and params["layer"] == layer
    check(summary, "contrastive_excitation_backprop", name, got.attribution, ref)
    # The contrast does something (beyond the tolerance of the comparison).
    assert np.abs(np.maximum(plain, 0) - ref).max() > 5 * TOL * np.abs(ref).max()
