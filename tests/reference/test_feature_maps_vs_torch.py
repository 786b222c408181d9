"""feature_maps against torch hooks on the zoo's squeeze-excitation network: the layer's activation
and top-k channels (by spatial mean, and by Grad-CAM weight from torch.autograd), and every SE gate
(the Sigmoid module's output, found by explaind in the ONNX graph and read back to its module by the
node's scoped name) as gate:<tensor> [C]."""

from __future__ import annotations

import numpy as np
import torch

import zoo
from _methods import check
from explaind.methods.feature_maps import FeatureMaps


def test_feature_maps_and_se_gates(exported, xp, summary):
    ex = exported("senet")
    x = np.random.default_rng(800).standard_normal(ex.torch_model.input_shape).astype(np.float32)
    target = 1
    outputs: dict[str, torch.Tensor] = {}
    gates = {name: m for name, m in ex.torch_model.named_modules() if isinstance(m, torch.nn.Sigmoid)}
    layer_module = ex.torch_model.get_submodule(ex.entry.layer_module)
    hooks = [m.register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out))
             for name, m in [*gates.items(), ("layer", layer_module)]]
    try:
        logits = ex.torch_model(torch.from_numpy(x[None].copy()))
        grad = torch.autograd.grad(logits[0, target], outputs["layer"])[0][0].double().numpy()
    finally:
        for h in hooks:
            h.remove()
    activation = outputs["layer"][0].detach().double().numpy()

    got, params = xp.explain(FeatureMaps(), {"layer": ex.layer, "top_k": 5}, ex.in_process, x, target)
    means = activation.mean(axis=(1, 2))
    chosen = np.argsort(-means, kind="stable")[:5]
    np.testing.assert_array_equal(got.arrays["channels"], chosen)
    check(summary, "feature_maps (activations)", "senet", got.arrays["feature_maps"], activation[chosen])
    found = [k.removeprefix("gate:") for k in got.arrays if k.startswith("gate:")]
    assert len(found) == len(gates) >= 1
    for tensor in found:
        module = zoo.module_of_node(zoo.producer_of(ex.onnx_model, tensor))
        check(summary, "feature_maps (SE gates)", "senet", got.arrays[f"gate:{tensor}"],
              outputs[module][0].detach().double().numpy())
    assert got.model_evaluations == 1 + len(gates)

    got, _ = xp.explain(FeatureMaps(), {"layer": ex.layer, "top_k": 5, "rank_by": "grad_cam"}, ex.in_process, x, target)
    weights = grad.mean(axis=(1, 2))
    np.testing.assert_array_equal(got.arrays["channels"], np.argsort(-weights, kind="stable")[:5])
    check(summary, "feature_maps (Grad-CAM weights)", "senet", got.arrays["channel_scores"], np.sort(weights)[::-1][:5])
