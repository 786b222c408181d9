"""Excitation backprop and contrastive excitation backprop (Zhang, Lin, Brandt, Shen & Sclaroff 2016,
"Top-down Neural Attention by Excitation Backprop"; TorchRay `excitation_backprop` and
`contrastive_excitation_backprop`).

Winning probabilities are passed back from the target class (a one-hot seed on the model's output):
a linear layer (Conv, Gemm, MatMul with constant weights) passes p' = x * W+^T (p / (W+ x + 1e-20)),
W+ = max(W, 0), bias ignored; average pooling likewise with its own weights; batch normalisation
passes p unchanged; a residual sum splits p in proportion to its terms (TorchRay's `eltwise_sum`);
ReLU, max pooling and the rest keep their gradients (rules: onnxgraph/autodiff/rules/excitation.py).
The map is read at `layer` (default: the input, as TorchRay's `saliency_layer=''`; or one of the
model's 4-D activations, as GetModel lists them): the sum over channels of p there (TorchRay's
`gradient_to_excitation_backprop_saliency`), upsampled to the input (`upsample`; TorchRay's
`resize=True`, bilinear). `contrastive`: p minus the pass with the classifier's weights negated
(the classifier: the last Conv/Gemm/MatMul with constant weights, TorchRay's default), clamped at
0 (`gradient_to_contrastive_excitation_backprop_saliency`). The excitation rules are linear in p,
so TorchRay's contrast layer (where the two passes are subtracted) does not change the map, as long
as it lies between the classifier and `layer`: no parameter for it. Score: the logit by default (the
model's output, as TorchRay). One model evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Settings
from .base import MethodContext, ModelView, Result, Stages
from .gradient_base import GradientMethod, finish_map, gradient_stage, resolve_layer, upsample_param
from .params import Bool, Text

RULE, CONTRASTIVE_RULE = "excitation", "excitation_contrastive"


class ExcitationBackprop(GradientMethod):
    name = "excitation_backprop"
    title = "Excitation backprop"
    reference = "Zhang et al. 2016, Top-down Neural Attention by Excitation Backprop; TorchRay excitation_backprop"
    description = "Winning probabilities passed back through positive weights, summed over channels at a layer."
    rules_needed = (RULE, CONTRASTIVE_RULE)
    params = (
        Text("layer", None, "tensor name where the map is read: the input (default) or a 4-D activation "
             "(GetModel lists them)", shown="the input"),
        Bool("contrastive", False, "contrastive excitation backprop: minus the pass with the classifier "
             "negated, clamped at 0"),
        upsample_param(),
    )

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        layer = params.get("layer") or ""
        params["layer"] = "" if layer in ("", model.signature.input_name) else resolve_layer(params, self.name, model)
        return params

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        contrastive = bool(params["contrastive"])
        layer = params["layer"]
        grads = yield gradient_stage(ctx, rule=CONTRASTIVE_RULE if contrastive else RULE, layer=layer)
        if layer:
            saliency = grads.layer_grad.sum(axis=0)
        elif ctx.model.kind == "image":
            saliency = grads.total.sum(axis=ctx.model.signature.channel_axis - 1)
        else:
            saliency = grads.total
        if contrastive:
            saliency = np.maximum(saliency, 0)
        if layer:
            saliency = finish_map(saliency, False, params["upsample"], ctx.model)
        return Result(saliency)
