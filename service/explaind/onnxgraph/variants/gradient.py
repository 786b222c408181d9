"""Gradient variants: prefix (the input, a point on a straight path, or a noisy copy), the model, the
target score, and the gradients of that score derived from the graph by `onnxgraph.autodiff`.

Rows are compact codes like every other variant's: nothing for a plain gradient, the path position
alpha for Integrated Gradients, one integer noise seed for SmoothGrad (the noise itself is made in
the graph by `onnxgraph.noise`). The seed of the backward pass, one-hot of each row's target class,
is built in the graph from the per-job target, so the host sends no [R, K] tensor.
Outputs: `score` [R] (the target score of each row's input), `input_grad` [R, ...], and when a layer
is asked for, `layer` and `layer_grad` (its activation and the gradient there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..autodiff import differentiate
from ..autodiff.rules import rect_grad as rect_grad_rules
from ..builder import NAMESPACE, GraphBuilder
from ..compose import model_opset, splice, topological_sort
from ..noise import gaussian_noise
from ..score import class_scores, declare_common_inputs, declare_target, target_score
from ..signature import ModelSignature
from .base import SCORE_OUTPUT, VariantInterface, VariantSpec, register

PATH_INPUT = "input"   # the example itself
PATH_LINE = "line"     # reference + alpha * (x - reference): Integrated Gradients
PATH_NOISE = "noise"   # x + sigma * N(0, 1): SmoothGrad
PATH_PAIR = "pair"     # the input and a reference per row, one doubled batch: DeepLIFT (rule deep_lift)

INPUT_GRAD_OUTPUT = "input_grad"
LAYER_OUTPUT = "layer"
LAYER_GRAD_OUTPUT = "layer_grad"
REFERENCE_SCORE_OUTPUT = "reference_score"  # PATH_PAIR: the target score of each row's reference
RECT_GRAD_Q = "rect_grad_q"  # rule rect_grad: each job's percentile q (a per-job constant)

_AUTODIFF_SEED = NAMESPACE + "autodiff_seed"
_GRAD_PREFIX = NAMESPACE + "grad::"


def gradient_inputs(path: str, rule: str = "plain") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(per-job constants, per-row codes) of a gradient variant with this path and rule."""
    extra = (RECT_GRAD_Q,) if rule == rect_grad_rules.VARIANT else ()
    if path == PATH_LINE:
        return ("x0", "target", "reference", *extra), ("alpha",)
    if path == PATH_NOISE:
        return ("x0", "target", "sigma", *extra), ("noise_seed",)
    if path == PATH_PAIR:
        return ("x0", "target", *extra), ("reference",)
    return ("x0", "target", *extra), ()


def build_gradient_model(model: onnx.ModelProto, sig: ModelSignature, *, score: str, rule: str, path: str,
                         layer: str, describe: str, exported: tuple[str, str] | None = None) -> onnx.ModelProto:
    """The gradient variant; `exported` = (seed input, gradient output) of a model that already
    computes its own input gradient (model.yaml `gradients: exported`), used as it is."""
    b = GraphBuilder(model_opset(model), describe)
    x0, job_index = declare_common_inputs(b, sig.example_shape)
    target = declare_target(b)
    rows = b.op("Gather", [x0, job_index], axis=0)
    per_row = b.const(np.array([-1] + [1] * len(sig.example_shape), np.int64))
    if path == PATH_LINE:
        reference = b.op("Gather", [b.input("reference", TensorProto.FLOAT, ["jobs", *sig.example_shape]), job_index],
                         axis=0)
        alpha = b.op("Reshape", [b.input("alpha", TensorProto.FLOAT, ["rows"]), per_row])
        rows = b.op("Add", [reference, b.op("Mul", [alpha, b.op("Sub", [rows, reference])])])
    elif path == PATH_NOISE:
        size = int(np.prod(sig.example_shape))
        noise = gaussian_noise(b, b.input("noise_seed", TensorProto.INT64, ["rows"]), size)
        shape = b.const(np.array([-1, *sig.example_shape], np.int64))
        sigma = b.op("Reshape", [b.op("Gather", [b.input("sigma", TensorProto.FLOAT, ["jobs"]), job_index], axis=0),
                                 per_row])
        rows = b.op("Add", [rows, b.op("Mul", [sigma, b.op("Reshape", [noise, shape])])])
    elif path == PATH_PAIR:  # rows [0, R): the inputs; [R, 2R): their references (Captum's layout)
        if layer:
            raise ValueError("the pair path reads the input gradient only")
        reference = b.input("reference", TensorProto.FLOAT, ["rows", *sig.example_shape])
        rows = b.op("Concat", [rows, reference], axis=0)
    elif path != PATH_INPUT:
        raise ValueError(f"unknown gradient path {path!r}")
    if rule == rect_grad_rules.VARIANT:
        q = b.input(RECT_GRAD_Q, TensorProto.FLOAT, ["jobs"])
        b.op("Gather", [q, job_index], out=rect_grad_rules.Q_TENSOR, axis=0)
    b.op("Identity", [rows], out=sig.input_name)
    b.mark_model()
    scores = class_scores(b, sig.output_name, score, sig.scores)
    seed_index = b.op("Concat", [job_index, job_index], axis=0) if path == PATH_PAIR else job_index
    picked = target_score(b, scores, target, seed_index)
    if path == PATH_PAIR:
        count = b.op("Shape", [job_index])
        b.output(b.op("Slice", [picked, count, b.const(np.array([2 ** 62], np.int64))]), REFERENCE_SCORE_OUTPUT,
                 TensorProto.FLOAT, ["rows"])
        picked = b.op("Slice", [picked, b.const(np.array([0], np.int64)), count])
    b.output(picked, "score", TensorProto.FLOAT, ["rows"])
    if layer:
        b.output(layer, LAYER_OUTPUT, TensorProto.FLOAT, None)  # type: ignore[arg-type]
    keep = (exported[1],) if exported else ()
    keep += (rect_grad_rules.Q_TENSOR,) if rule == rect_grad_rules.VARIANT else ()  # read by the backward only
    composed = splice(model, sig.input_name, b, keep=keep)
    return with_gradients(composed, b, sig, scores, target, seed_index, score=score, rule=rule, layer=layer,
                          exported=exported, first_rows=job_index if path == PATH_PAIR else "",
                          classes=_class_count(model, sig.output_name))


def with_gradients(composed: onnx.ModelProto, b: GraphBuilder, sig: ModelSignature, scores: str, target: str,
                   job_index: str, *, score: str, rule: str, layer: str,
                   exported: tuple[str, str] | None, first_rows: str = "",
                   classes: int | None = None) -> onnx.ModelProto:
    """`composed` (b's prefix, the model, b's suffix computing the class `scores`) plus the gradient of
    each row's target score with respect to the model input (and `layer`), exposed as `input_grad`;
    `first_rows`: a tensor of R elements, when the model ran on 2R rows of which only the first R's
    gradients are answers (the pair path); `classes`: the number of classes when known before run
    time (a cheaper seed)."""
    first_node, first_init = len(b.nodes), len(b.initializers)
    if exported is not None:
        if layer or rule != "plain":
            raise ValueError("exported gradients give the plain input gradient only")
        seed_input, gradient_output = exported
        one_hot = _one_hot_seed(b, scores, target, job_index, b.name("one_hot"), classes)
        if score == "probability" and sig.scores == "logits":
            # The exported gradient is of sum(seed * logits): seed = dp_t/dlogits = p_t (e_t - p).
            p_t = b.op("GatherElements", [scores, b.unsqueeze(b.op("Gather", [target, job_index], axis=0), [1])],
                       axis=1)
            b.op("Mul", [p_t, b.op("Sub", [one_hot, scores])], out=seed_input)
        else:
            b.op("Identity", [one_hot], out=seed_input)
        composed.graph.output.append(helper.make_tensor_value_info(_GRAD_PREFIX + sig.input_name, TensorProto.FLOAT, None))
        composed.graph.node.append(helper.make_node("Identity", [gradient_output], [_GRAD_PREFIX + sig.input_name],
                                                    name=NAMESPACE + "exported_gradient"))
        return _finish(composed, b.nodes[first_node:], b.initializers[first_init:], sig.input_name, "", seed_input)
    wrt = [sig.input_name] + ([layer] if layer else [])
    derived = differentiate(composed, scores, wrt, rule=rule, seed_name=_AUTODIFF_SEED, grad_prefix=_GRAD_PREFIX)
    _one_hot_seed(b, scores, target, job_index, _AUTODIFF_SEED, classes)
    return _finish(derived, b.nodes[first_node:], b.initializers[first_init:], sig.input_name, layer, _AUTODIFF_SEED,
                   first_rows)


def consume_input_gradient(derived: onnx.ModelProto, suffix: GraphBuilder) -> onnx.ModelProto:
    """`derived` (from with_gradients) with `suffix`'s nodes, initializers, inputs and outputs added and
    the input gradient no longer an output: for variants whose outputs are made from the input gradient
    (a mask's or a path parameter's gradient by the chain rule), so the [rows, *input] tensor is not copied out."""
    graph = derived.graph
    graph.node.extend(suffix.nodes)
    graph.initializer.extend(suffix.initializers)
    graph.input.extend(suffix.inputs)
    input_grad = NAMESPACE + INPUT_GRAD_OUTPUT
    kept = [o for o in graph.output if o.name != input_grad] + list(suffix.outputs)
    del graph.output[:]
    graph.output.extend(kept)
    topological_sort(graph)
    return derived


def _class_count(model: onnx.ModelProto, output: str) -> int | None:
    """The model output's number of classes (axis 1) when the graph declares it, else None."""
    for vi in [*model.graph.output, *model.graph.value_info]:
        if vi.name == output and vi.type.HasField("tensor_type"):
            dims = vi.type.tensor_type.shape.dim
            if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
                return int(dims[1].dim_value)
    return None


def _one_hot_seed(b: GraphBuilder, scores: str, target: str, job_index: str, out: str,
                  class_count: int | None = None) -> str:
    """Nodes making the backward seed: one-hot of each row's target over the score's classes.

    With the class count K known, the rows of the K x K identity gathered by target (one Gather;
    the general form, an Equal of the targets against Range(K) broadcast to [R, K] then a Cast,
    was ~15% of the MLP's gradient graph at 1024 rows). An out-of-range target fails here as it
    does in the score's GatherElements."""
    if class_count is not None:
        eye = b.const(np.eye(class_count, dtype=np.float32), "one_hot_rows")
        return b.op("Gather", [eye, b.op("Gather", [target, job_index], axis=0)], out=out, axis=0)
    classes = b.op("Range", [b.const(np.array(0, np.int64)),
                             b.squeeze(b.op("Slice", [b.op("Shape", [scores]), b.const(np.array([1], np.int64)),
                                                      b.const(np.array([2], np.int64))]), [0]),
                             b.const(np.array(1, np.int64))])
    row_target = b.unsqueeze(b.op("Gather", [target, job_index], axis=0), [1])
    return b.op("Cast", [b.op("Equal", [row_target, classes])], out=out, to=TensorProto.FLOAT)


def _finish(model: onnx.ModelProto, seed_nodes: list[onnx.NodeProto], seed_constants: list[onnx.TensorProto],
            input_name: str, layer: str, seed: str, first_rows: str = "") -> onnx.ModelProto:
    """The seed made in the graph instead of fed; gradients exposed under explaind's output names
    (with `first_rows`, only the first Size(first_rows) rows of each)."""
    graph = model.graph
    kept_inputs = [i for i in graph.input if i.name != seed]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    graph.node.extend(seed_nodes)
    graph.initializer.extend(seed_constants)
    outputs = [o for o in graph.output if not o.name.startswith(_GRAD_PREFIX)]
    renames = [(input_name, INPUT_GRAD_OUTPUT)] + ([(layer, LAYER_GRAD_OUTPUT)] if layer else [])
    for tensor, public in renames:
        source = _GRAD_PREFIX + tensor
        if first_rows:
            source = _first_rows(graph, source, first_rows)
        graph.node.append(helper.make_node("Identity", [source], [NAMESPACE + public],
                                           name=NAMESPACE + "expose/" + public))
        outputs.append(helper.make_tensor_value_info(NAMESPACE + public, TensorProto.FLOAT, None))
    del graph.output[:]
    graph.output.extend(outputs)
    topological_sort(graph)  # the seed is made from the scores and feeds the backward nodes
    return model


def _first_rows(graph: onnx.GraphProto, tensor: str, like: str) -> str:
    """tensor[:Size(like)] along axis 0, written into `graph`."""
    count, zero, out = NAMESPACE + "first_rows/count", NAMESPACE + "first_rows/zero", f"{tensor}::first_rows"
    if not any(count in n.output for n in graph.node):
        graph.node.append(helper.make_node("Shape", [like], [count], name=count))
        graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), zero))
    graph.node.append(helper.make_node("Slice", [tensor, zero, count], [out], name=out))
    return out


@register
@dataclass(frozen=True)
class Gradient(VariantSpec):
    """Rows on a path (see the module's docstring); outputs the score, the input gradient and, with
    `layer`, that tensor's activation and gradient. `exported`: the model's own (seed input,
    gradient output) when model.yaml says `gradients: exported`."""

    kind = "gradient"
    score: str = "logit"
    rule: str = "plain"
    path: str = PATH_INPUT
    layer: str = ""
    exported: tuple[str, str] | None = None

    def interface(self) -> VariantInterface:
        constants, codes = gradient_inputs(self.path, self.rule)
        outputs = (SCORE_OUTPUT, INPUT_GRAD_OUTPUT) + ((LAYER_OUTPUT, LAYER_GRAD_OUTPUT) if self.layer else ())
        outputs += (REFERENCE_SCORE_OUTPUT,) if self.path == PATH_PAIR else ()
        return VariantInterface(constants, codes, outputs)

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        return build_gradient_model(model, sig, score=self.score, rule=self.rule, path=self.path, layer=self.layer,
                                    describe=self.describe(), exported=self.exported)
