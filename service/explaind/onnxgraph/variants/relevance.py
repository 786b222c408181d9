"""LRP variant: the model, and the relevance of its input for a relevance seed at its logits.

Per row, the code `seed` [rows, K] is the relevance put on the output classes (the target's logit
on the target for LRP; the contrastive variants' dual rows another), and the graph returns
`relevance` [rows, ...] (the input relevance, onnxgraph.autodiff.lrp's rules, linear in the seed)
(the relevance that entered a row is its seed's sum, known to the host: conservation's reference).
Per job constants: `x0`, `epsilon` and `gamma` (graph inputs, so requests with other values share
one session). The composite, the input bounds of z-box and the per-layer rules shape the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..autodiff.lrp import DEFAULT_COMPOSITE, Composite, relevance_graph
from ..builder import NAMESPACE, GraphBuilder
from ..compose import model_opset, splice, topological_sort
from ..score import class_scores, declare_common_inputs
from ..signature import ModelSignature
from .base import VariantInterface, VariantSpec, register

RELEVANCE_OUTPUT = "relevance"
SEED_CODE = "seed"

_AUTODIFF_SEED = NAMESPACE + "lrp_seed"
_GRAD_PREFIX = NAMESPACE + "relevance::"


def build_relevance_model(model: onnx.ModelProto, sig: ModelSignature, composite: Composite,
                          describe: str) -> onnx.ModelProto:
    b = GraphBuilder(model_opset(model), describe)
    x0, job_index = declare_common_inputs(b, sig.example_shape)
    rows = b.op("Gather", [x0, job_index], axis=0)
    epsilon = b.op("Gather", [b.input("epsilon", TensorProto.FLOAT, ["jobs"]), job_index], axis=0)
    gamma = b.op("Gather", [b.input("gamma", TensorProto.FLOAT, ["jobs"]), job_index], axis=0)
    b.op("Identity", [rows], out=sig.input_name)
    b.mark_model()
    logits = class_scores(b, sig.output_name, "logit", sig.scores)
    seed = b.input(SEED_CODE, TensorProto.FLOAT, ["rows", None])
    composed = splice(model, sig.input_name, b, keep=(epsilon, gamma, logits))
    with_parameters = Composite(composite.name, epsilon=epsilon, gamma=gamma, low=composite.low,
                                high=composite.high, layer_rules=composite.layer_rules)
    derived = relevance_graph(composed, logits, sig.input_name, with_parameters, seed_name=_AUTODIFF_SEED,
                              grad_prefix=_GRAD_PREFIX)
    graph = derived.graph
    kept = [i for i in graph.input if i.name != _AUTODIFF_SEED]
    del graph.input[:]
    graph.input.extend(kept)
    graph.node.append(helper.make_node("Identity", [seed], [_AUTODIFF_SEED], name=NAMESPACE + "lrp/seed"))
    public = NAMESPACE + RELEVANCE_OUTPUT
    graph.node.append(helper.make_node("Identity", [_GRAD_PREFIX + sig.input_name], [public],
                                       name=NAMESPACE + "expose/" + RELEVANCE_OUTPUT))
    outputs = [o for o in graph.output if not o.name.startswith(_GRAD_PREFIX)]
    outputs.append(helper.make_tensor_value_info(public, TensorProto.FLOAT, None))
    del graph.output[:]
    graph.output.extend(outputs)
    topological_sort(graph)
    return derived


@register
@dataclass(frozen=True)
class Relevance(VariantSpec):
    """LRP with `composite`; `low`/`high`: per-channel input bounds (z-box), empty when unknown;
    `layer_rules`: (layer, rule) overrides. Outputs the input relevance of each row."""

    kind = "relevance"
    composite: str = DEFAULT_COMPOSITE
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    layer_rules: tuple[tuple[str, str], ...] = ()

    def interface(self) -> VariantInterface:
        return VariantInterface(("x0", "epsilon", "gamma"), (SEED_CODE,), (RELEVANCE_OUTPUT,))

    def bounds(self, sig: ModelSignature) -> tuple:
        """low/high shaped [1, C, 1, ...] (channels first) or [1, 1, ..., C] (channels last), or None."""
        if not self.low:
            return None, None
        rank = len(sig.example_shape)
        shape = [1] * (rank + 1)
        shape[sig.channel_axis] = len(self.low)
        return np.array(self.low, np.float32).reshape(shape), np.array(self.high, np.float32).reshape(shape)

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        low, high = self.bounds(sig)
        composite = Composite(self.composite, low=low, high=high, layer_rules=self.layer_rules)
        return build_relevance_model(model, sig, composite, self.describe())
