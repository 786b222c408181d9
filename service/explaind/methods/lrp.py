"""Layer-wise relevance propagation (Bach et al. 2015) with Zennit's composites (Anders et al. 2021).

The target's logit z_t is the relevance at the output; each layer redistributes the relevance of its
outputs to its inputs by its rule (onnxgraph/autodiff/rules/lrp_*.py; the composite picks a rule per
linear layer, `layer_rules` override it, see onnxgraph/autodiff/lrp.py), down to the input. Defaults
as Zennit: composite epsilon_plus_flat, epsilon 1e-6, gamma 0.25, stabiliser 1e-6; z-box's bounds
are the pixel range [0, 255 / scale] mapped through the model's preprocessing ((p - mean) / std per
channel; [0, 1] for the default scale 255). `deep_taylor` is deep Taylor decomposition (Montavon et
al. 2017) as the LRP composite it equals (z-box at the input, z+ above).

Contrastive variants, from a second (dual) row of relevance R_d:
- clrp (Gu et al. 2018): max(0, R_t - R_d), R_d the relevance of a dual concept: every other class
  seeded with z_t / (K - 1);
- sglrp (Iwana et al. 2019): R_t - R_d with the softmax gradient as seeds: y_t (1 - y_t) on the
  target, y_t y_n on each other class n (so, by linearity, the LRP of d y_t / d z).
Figures: relevance_sum (of the input relevance of the target row), target_relevance (the relevance
that entered it: z_t for LRP), conservation_error = |relevance_sum - target_relevance| / |target_relevance|
(0 for a conserving rule stack, biases and stabilisers aside). One or two model rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Settings
from ..engine.job import RowChunk
from ..errors import InvalidArgument, echo
from ..onnxgraph.autodiff.lrp import COMPOSITES, DEFAULT_COMPOSITE, DEFAULT_EPSILON, DEFAULT_GAMMA, unknown_layers
from ..onnxgraph.autodiff.rules.lrp_linear import LINEAR_RULES
from ..onnxgraph.variants.relevance import RELEVANCE_OUTPUT, Relevance
from .base import INPUT_GRADIENTS, LOGIT, Method, MethodContext, ModelView, Reducer, Result, Stage, Stages, row_chunks
from .gradient_base import channel_reduction, reduce_channels
from .params import Choice, Float, Text

CONTRASTS = ("none", "clrp", "sglrp")
MAX_LAYER_RULES = 4096


class RelevanceReducer(Reducer):
    """The input relevance of each row (one or two rows)."""

    def __init__(self, rows: int, shape: tuple[int, ...]) -> None:
        self.relevance = np.zeros((rows, *shape), np.float64)

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        self.relevance[codes["row"]] = rows[RELEVANCE_OUTPUT].astype(np.float64)


def parse_layer_rules(text: str) -> tuple[tuple[str, str], ...]:
    """'layer=rule,layer=rule' -> ((layer, rule), ...); refused with the field named."""
    where = "lrp.layer_rules"
    pairs = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        layer, sep, rule = item.rpartition("=")
        layer, rule = layer.strip(), rule.strip().lower()
        if not sep or not layer:
            raise InvalidArgument(where, "comma-separated layer=rule pairs", echo(item))
        if rule not in LINEAR_RULES:
            raise InvalidArgument(where, f"a rule for {layer!r} among {', '.join(LINEAR_RULES)}", echo(rule))
        pairs.append((layer, rule))
    if len(pairs) > MAX_LAYER_RULES:
        raise InvalidArgument(where, f"at most {MAX_LAYER_RULES} layer=rule pairs", f"{len(pairs)} pairs")
    if len({layer for layer, _ in pairs}) != len(pairs):
        raise InvalidArgument(where, "each layer named once", echo(text))
    return tuple(sorted(pairs))


def input_bounds(model: ModelView) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (low, high) of the model input: pixels [0, 255] through the preprocessing."""
    pre = model.preprocess
    if model.kind != "image" or pre is None or pre.mean is None or pre.std is None:
        return (), ()
    mean, std = np.asarray(pre.mean, np.float64), np.asarray(pre.std, np.float64)
    low = (0.0 - mean) / std
    high = (255.0 / float(pre.scale) - mean) / std
    return tuple(float(v) for v in low), tuple(float(v) for v in high)


class Lrp(Method):
    name = "lrp"
    title = "Layer-wise relevance propagation"
    reference = ("Bach et al. 2015, On Pixel-Wise Explanations by Layer-Wise Relevance Propagation; Montavon et al. "
                 "2017 (deep Taylor), 2019 (LRP overview); composites as Zennit (Anders et al. 2021); CLRP Gu et al. "
                 "2018; SGLRP Iwana et al. 2019")
    description = "Relevance of the target's logit redistributed layer by layer down to the input."
    needs = INPUT_GRADIENTS
    kinds = frozenset({"image", "tabular"})
    default_score = LOGIT
    rules_needed = ("lrp",)
    figures = ("relevance_sum", "target_relevance", "conservation_error")
    params = (
        Choice("composite", DEFAULT_COMPOSITE, COMPOSITES, "the rule of each linear layer by type and position "
               "(Zennit's composites, deep_taylor: docs/lrp.md)"),
        Float("epsilon", DEFAULT_EPSILON, "the epsilon rule's stabiliser (dense layers); 0 gives LRP-0", low=0.0),
        Float("gamma", DEFAULT_GAMMA, "the gamma rule's boost of positive weights", low=0.0),
        Text("layer_rules", "", "comma-separated layer=rule pairs overriding the composite (layer: a Conv/Gemm/MatMul "
             "node name or its output; rule: " + " | ".join(LINEAR_RULES) + ")", shown="none"),
        Choice("contrast", "none", CONTRASTS, "none | clrp (Gu et al. 2018) | sglrp (Iwana et al. 2019)"),
        channel_reduction("none"),
    )

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        if score != LOGIT:
            raise InvalidArgument("score", "logit (LRP redistributes the target's logit)", echo(score))
        pairs = parse_layer_rules(params.get("layer_rules", "") or "")
        if pairs and model.graph is not None:
            missing = unknown_layers(model.graph, model.signature.input_name, [layer for layer, _ in pairs])
            if missing:
                raise InvalidArgument("lrp.layer_rules", "names of Conv, Gemm or MatMul nodes (or their outputs) the "
                                      "input reaches", echo(", ".join(missing)))
        return {**params, "layer_rules": pairs}

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return 1 if params.get("contrast", "none") == "none" else 2

    def seeds(self, params: dict[str, Any], ctx: MethodContext) -> np.ndarray:
        """[rows, K] relevance seeds: the target row, then the dual row of a contrastive variant."""
        assert ctx.prediction is not None and ctx.prediction.logits is not None  # LOGIT score: logits exist
        logits = np.asarray(ctx.prediction.logits, np.float64)
        k, t = len(logits), ctx.target
        contrast = params.get("contrast", "none")
        one_hot = np.eye(k)[t]
        if contrast == "sglrp":
            y = np.asarray(ctx.prediction.probabilities, np.float64)
            return np.stack([y[t] * (1 - y[t]) * one_hot, y[t] * y * (1 - one_hot)]).astype(np.float32)
        target = logits[t] * one_hot
        if contrast == "clrp":
            dual = logits[t] / max(k - 1, 1) * (1 - one_hot)
            return np.stack([target, dual]).astype(np.float32)
        return target[None].astype(np.float32)

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        seeds = self.seeds(params, ctx)
        low, high = input_bounds(ctx.model)
        variant = Relevance(composite=params.get("composite", DEFAULT_COMPOSITE), low=low, high=high,
                            layer_rules=tuple(params.get("layer_rules", ())))
        constants = {"x0": ctx.x, "epsilon": np.array(params.get("epsilon", DEFAULT_EPSILON), np.float32),
                     "gamma": np.array(params.get("gamma", DEFAULT_GAMMA), np.float32)}
        n = len(seeds)
        rows = row_chunks({"seed": seeds}, 256)
        reducer: RelevanceReducer = yield Stage(variant, constants, rows, n, RelevanceReducer(n, ctx.x.shape))
        target = reducer.relevance[0]
        contrast = params.get("contrast", "none")
        if contrast == "clrp":
            attribution = np.maximum(target - reducer.relevance[1], 0.0)
        elif contrast == "sglrp":
            attribution = target - reducer.relevance[1]
        else:
            attribution = target
        total, entered = float(target.sum()), float(seeds[0].astype(np.float64).sum())
        figures = {"relevance_sum": total, "target_relevance": entered,
                   "conservation_error": abs(total - entered) / max(abs(entered), 1e-12)}
        return Result(reduce_channels(attribution, params.get("channel_reduction"), ctx.model), figures)
