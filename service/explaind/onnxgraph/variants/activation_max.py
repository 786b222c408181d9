"""Activation maximisation's variant: the objective at a point and its gradient, from the model's graph.

A job's constant x0 is the current point of the ascent: an input of the model (pixel and Fourier
parameterisations: the host turns its parameters into that input) or, with a learned `prior`, the
code of a generator composed in front of the model (`compose.chain`: G's output feeds the model's
input, so the graph runs model(G(code))). One row per job. Outputs per row:
- `score`: the objective: the target class's score (the request's score, the logit by default), or
  with `layer`, sum(weights * layer) with the job's `weights` constant shaped like the layer's
  activation (a channel's mean: 1 / (h w) on that channel; a neuron: one-hot);
- `probabilities`: the model's class probabilities (the score curve's companion);
- `input_grad`: d objective / d x0, by `onnxgraph.autodiff` (through G with a prior);
- `image`: with a prior, G(code), the model input the code stands for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from ..autodiff import differentiate
from ..builder import NAMESPACE, GraphBuilder
from ..compose import chain, model_opset, splice
from ..score import class_scores, declare_common_inputs, declare_target, target_score
from ..signature import ModelSignature
from . import gradient as gradients
from .base import PROBABILITIES_OUTPUT, SCORE_OUTPUT, VariantInterface, VariantSpec, register

INPUT_GRAD_OUTPUT = gradients.INPUT_GRAD_OUTPUT
IMAGE_OUTPUT = "image"
PRIOR_SCOPE = NAMESPACE + "prior"
_SEED = NAMESPACE + "objective_seed"


@dataclass(frozen=True)
class Prior:
    """A generator (code [N, latent_size] -> the model's input) composed in front of the model; a
    variant key by its sha256 (the graph itself is neither hashed nor compared)."""

    sha256: str
    latent_size: int
    graph: onnx.ModelProto = field(compare=False, hash=False, repr=False)


def point_signature(sig: ModelSignature, prior: Prior | None, input_name: str) -> ModelSignature:
    """The signature the ascent sees: the model's, or the prior's code in place of its input."""
    if prior is None:
        return sig
    return dataclasses.replace(sig, input_name=input_name, example_shape=(prior.latent_size,), layout="tabular")


def build_model(model: onnx.ModelProto, sig: ModelSignature, *, score: str, layer: str, prior: Prior | None,
                describe: str) -> onnx.ModelProto:
    """The variant's graph (see the module's docstring)."""
    input_name = sig.input_name
    if prior is not None:
        model, input_name = chain(prior.graph, model, sig.input_name, PRIOR_SCOPE)
    point = point_signature(sig, prior, input_name)
    b = GraphBuilder(model_opset(model), describe)
    x0, job_index = declare_common_inputs(b, point.example_shape)
    target = declare_target(b)
    b.op("Identity", [b.op("Gather", [x0, job_index], axis=0)], out=input_name)
    b.mark_model()
    scores = class_scores(b, sig.output_name, score, sig.scores)
    probabilities = scores if score == "probability" else class_scores(b, sig.output_name, "probability", sig.scores)
    b.output(probabilities, PROBABILITIES_OUTPUT, TensorProto.FLOAT, ["rows", None])
    if prior is not None:
        b.output(sig.input_name, IMAGE_OUTPUT, TensorProto.FLOAT, ["rows", *sig.example_shape])
    if not layer:
        b.output(target_score(b, scores, target, job_index), SCORE_OUTPUT, TensorProto.FLOAT, ["rows"])
        composed = splice(model, input_name, b)
        return gradients.with_gradients(composed, b, point, scores, target, job_index, score=score, rule="plain",
                                        layer="", exported=None)
    weights = b.op("Gather", [b.input("weights", TensorProto.FLOAT, ["jobs", None, None, None]), job_index], axis=0)
    b.output(b.reduce("ReduceSum", b.op("Mul", [layer, weights]), [1, 2, 3], 0), SCORE_OUTPUT, TensorProto.FLOAT,
             ["rows"])
    composed = splice(model, input_name, b)
    first_node, first_init = len(b.nodes), len(b.initializers)
    derived = differentiate(composed, layer, [input_name], rule="plain", seed_name=_SEED,
                            grad_prefix=gradients._GRAD_PREFIX)
    b.op("Identity", [weights], out=_SEED)  # d sum(weights * layer) / d layer = weights
    return gradients._finish(derived, b.nodes[first_node:], b.initializers[first_init:], input_name, "", _SEED)


@register
@dataclass(frozen=True)
class ActivationMax(VariantSpec):
    """One row per job at the point x0 (see the module's docstring); `layer`: a layer objective with
    the per-job `weights`; `prior`: a generator composed in front, x0 its code."""

    kind = "activation_max"
    score: str = "logit"
    layer: str = ""
    prior: Prior | None = None

    def interface(self) -> VariantInterface:
        constants = ("x0", "target") + (("weights",) if self.layer else ())
        outputs = (SCORE_OUTPUT, PROBABILITIES_OUTPUT, INPUT_GRAD_OUTPUT) + ((IMAGE_OUTPUT,) if self.prior else ())
        return VariantInterface(constants, (), outputs)

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        return build_model(model, sig, score=self.score, layer=self.layer, prior=self.prior, describe=self.describe())
