"""RectGrad against a torch implementation of the paper's rule written here (Kim et al. 2019, eq. 3:
R_i = 1[a_i R_i > tau] R_i at every ReLU, tau the q-th percentile of the a R of its layer).

The rule is applied by full backward hooks on every nn.ReLU of the zoo's torch models (one module per
ONNX Relu, zoo.py): grad_in = grad_out * [out * grad_out > torch.quantile(out * grad_out, q / 100)],
per example, the quantile's default linear interpolation. resnet, vgg, densenet, senet, mlp; q = 98
(the paper's), 90 and 50. mobilenetv2 has no ReLU (ReLU6 keeps its gradient in both) and is left out.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from _methods import check
from explaind.methods.rect_grad import RectGrad

MODELS = ["resnet", "vgg", "densenet", "senet", "mlp"]
TARGETS = {"resnet": 3, "vgg": 2, "densenet": 1, "senet": 5, "mlp": 1}


def torch_rect_grad(model: nn.Module, x: np.ndarray, target: int, q: float) -> np.ndarray:
    """The paper's rule with hooks on nn.ReLU: d logit_target / d x with rectified ReLU backward passes."""
    outputs: dict[nn.Module, torch.Tensor] = {}

    def keep_output(module, args, out):
        outputs[module] = out.detach()

    def rectify(module, grad_input, grad_output):
        g = grad_output[0]
        importance = (outputs[module] * g).flatten(1)
        tau = torch.quantile(importance, q / 100.0, dim=1, keepdim=True)
        keep = (importance > tau).reshape(g.shape).to(g.dtype)
        return (g * keep,)

    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    handles = [m.register_forward_hook(keep_output) for m in relus]
    handles += [m.register_full_backward_hook(rectify) for m in relus]
    try:
        xt = torch.from_numpy(x[None].copy()).requires_grad_()
        model(xt)[0, target].backward()
        return xt.grad[0].numpy()
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("q", [98.0, 90.0, 50.0])
@pytest.mark.parametrize("name", MODELS)
def test_rect_grad_agrees_with_the_papers_rule_in_torch(exported, xp, summary, name, q):
    ex = exported(name)
    assert any(isinstance(m, nn.ReLU) for m in ex.torch_model.modules())
    x = np.random.default_rng(60 + MODELS.index(name)).standard_normal(ex.torch_model.input_shape).astype(np.float32)
    target = TARGETS[name]
    ref = torch_rect_grad(ex.torch_model, x, target, q)
    got, params = xp.explain(RectGrad(), {"q": q}, ex.in_process, x, target)
    assert params["q"] == q
    check(summary, f"RectGrad(q={q:g})", name, got.attribution, ref)
    # A real check: the rectification changes the gradient.
    with torch.enable_grad():
        xt = torch.from_numpy(x[None].copy()).requires_grad_()
        ex.torch_model(xt)[0, target].backward()
    assert np.abs(xt.grad[0].numpy() - ref).max() > 0.1 * np.abs(ref).max()
