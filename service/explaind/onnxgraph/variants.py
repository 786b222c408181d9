"""Graph variants: the user's model wrapped in the prefix and suffix one method needs.

A variant is identified by a hashable :class:`VariantSpec`; the engine keeps one scheduler and one
onnxruntime session per (model, variant). Each variant declares its interface: which inputs are
per-job constants (stacked on axis 0, one slot per job in the batch), which are per-row codes, which
outputs are per row and which per job slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto

from . import coalition, extremal, gradients, occlusion, rise, segments
from .builder import GraphBuilder
from .compose import model_opset, splice
from .score import class_scores, declare_common_inputs, declare_target, target_score
from .signature import ModelSignature

PREDICT = "predict"
OCCLUSION_IMAGE = "occlusion_image"
OCCLUSION_TABULAR = "occlusion_tabular"
RISE = "rise"
GRADIENT = "gradient"
COALITION_TABULAR = "coalition_tabular"
SEGMENTS = "segments"            # image rows as superpixel on/off bits
ROWS_TABULAR = "rows_tabular"    # tabular rows given in full (LIME's sampled neighbourhood)
EXTREMAL = "extremal"            # rows of mask parameters (extremal perturbation)


@dataclass(frozen=True)
class VariantSpec:
    kind: str
    score: str = ""       # "probability" | "logit" (target-score variants)
    grid_size: int = 0    # RISE
    zero_baseline: bool = False  # RISE: baseline 0 everywhere, so no fill input
    rule: str = ""        # gradient: plain | guided | deconvnet
    path: str = ""        # gradient: input | line | noise (see onnxgraph.gradients)
    layer: str = ""       # gradient: a tensor whose activation and gradient are also output
    exported: tuple[str, str] | None = None  # gradient: the model's own (seed input, gradient output)
    background_rows: int = 0  # coalition: background rows per job
    segments: int = 0         # segments: coalition width (segment count, padded)
    step: int = 0             # extremal: mask parameter pitch in pixels
    sigma: float = 0.0        # extremal: mask smoothing in pixels
    levels: int = 0           # extremal: perturbation pyramid levels
    padded_area: bool = False  # extremal: area regulariser over the canvas with its margin (TorchRay)
    exact: bool = False       # extremal: the score's gradient from the graph (else black-box rows)

    def describe(self) -> str:
        parts = [self.kind, self.score, str(self.grid_size) if self.grid_size else "",
                 "zero" if self.zero_baseline else "", self.rule, self.path, self.layer,
                 f"b{self.background_rows}" if self.background_rows else "",
                 f"s{self.segments}" if self.segments else "",
                 f"step{self.step}/sigma{self.sigma:g}/l{self.levels}" if self.kind == EXTREMAL else "",
                 "padded" if self.padded_area else "", "exact" if self.exact else ""]
        return "/".join(p for p in parts if p)


@dataclass(frozen=True)
class VariantInterface:
    constants: tuple[str, ...]
    codes: tuple[str, ...]
    row_outputs: tuple[str, ...]
    slot_outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Variant:
    spec: VariantSpec
    model: onnx.ModelProto
    interface: VariantInterface


SCORE_OUTPUT = "score"
PROBABILITIES_OUTPUT = "probabilities"
RAW_OUTPUT = "output"
MASK_SUM_OUTPUT = "mask_sum"


def variant_interface(spec: VariantSpec) -> VariantInterface:
    """What the engine feeds and reads for `spec`, known without building the graph."""
    if spec.kind == GRADIENT:
        constants, codes = gradients.gradient_inputs(spec.path)
        outputs = (SCORE_OUTPUT, gradients.INPUT_GRAD_OUTPUT)
        if spec.layer:
            outputs += (gradients.LAYER_OUTPUT, gradients.LAYER_GRAD_OUTPUT)
        return VariantInterface(constants, codes, outputs)
    if spec.kind == PREDICT:
        return VariantInterface(("x0",), (), (RAW_OUTPUT, PROBABILITIES_OUTPUT))
    if spec.kind in (OCCLUSION_IMAGE, OCCLUSION_TABULAR):
        code = "window" if spec.kind == OCCLUSION_IMAGE else "feature"
        return VariantInterface(("x0", "target", "fill"), (code,), (SCORE_OUTPUT,))
    if spec.kind == RISE:
        constants = ("x0", "target") if spec.zero_baseline else ("x0", "target", "fill")
        return VariantInterface(constants, ("grid", "shift"), (SCORE_OUTPUT,), (MASK_SUM_OUTPUT,))
    if spec.kind == COALITION_TABULAR:
        return VariantInterface(("x0", "target", "background", "background_weights"), ("mask",), (SCORE_OUTPUT,))
    if spec.kind == SEGMENTS:
        return VariantInterface(("x0", "target", "segments", "fill_image"), ("coalition",), (SCORE_OUTPUT,))
    if spec.kind == ROWS_TABULAR:
        return VariantInterface(("x0", "target"), ("row_input",), (SCORE_OUTPUT,))
    if spec.kind == EXTREMAL:
        return VariantInterface(("x0", "target", "pyramid"), extremal.code_names(spec.exact),
                                (SCORE_OUTPUT, extremal.MASK_OUTPUT, extremal.PARAM_GRAD_OUTPUT))
    raise ValueError(f"unknown variant kind {spec.kind!r}")


def extremal_geometry(sig: ModelSignature, spec: VariantSpec) -> extremal.MaskGeometry:
    return extremal.MaskGeometry(*sig.spatial_shape, spec.step, spec.sigma)


def max_batch_rows(spec: VariantSpec, sig: ModelSignature, configured: int) -> int:
    """The model's batch size, capped where a variant's tensors grow faster than its rows (extremal)."""
    if spec.kind == EXTREMAL:
        return min(configured, extremal_geometry(sig, spec).max_rows())
    return configured


def build_variant(model: onnx.ModelProto, sig: ModelSignature, spec: VariantSpec) -> Variant:
    """Compose the variant graph for `spec` around `model`."""
    interface = variant_interface(spec)
    if spec.kind == GRADIENT:
        graph = gradients.build_gradient_model(model, sig, score=spec.score, rule=spec.rule, path=spec.path,
                                               layer=spec.layer, describe=spec.describe(), exported=spec.exported)
        return Variant(spec, graph, interface)
    if spec.kind == EXTREMAL:
        graph = extremal.build_model(model, sig, geometry=extremal_geometry(sig, spec), levels=spec.levels,
                                     padded_area=spec.padded_area, exact=spec.exact, score=spec.score,
                                     exported=spec.exported, describe=spec.describe())
        return Variant(spec, graph, interface)
    b = GraphBuilder(model_opset(model), spec.describe())
    x0, job_index = declare_common_inputs(b, sig.example_shape)
    target = declare_target(b) if spec.kind != PREDICT else ""
    if spec.kind == PREDICT:
        b.op("Gather", [x0, job_index], out=sig.input_name, axis=0)
        b.mark_model()
        b.output(sig.output_name, RAW_OUTPUT, TensorProto.FLOAT, ["rows", None])
        probabilities = class_scores(b, sig.output_name, "probability", sig.scores)
        b.output(probabilities, PROBABILITIES_OUTPUT, TensorProto.FLOAT, ["rows", None])
    elif spec.kind in (OCCLUSION_IMAGE, OCCLUSION_TABULAR):
        build = occlusion.image_prefix if spec.kind == OCCLUSION_IMAGE else occlusion.tabular_prefix
        b.op("Identity", [build(b, sig, x0, job_index)], out=sig.input_name)
        b.mark_model()
        score = target_score(b, class_scores(b, sig.output_name, spec.score, sig.scores), target, job_index)
        b.output(score, SCORE_OUTPUT, TensorProto.FLOAT, ["rows"])
    elif spec.kind in (SEGMENTS, ROWS_TABULAR):
        if spec.kind == SEGMENTS:
            model_input = segments.prefix(b, sig, x0, job_index, spec.segments)
        else:
            model_input = b.input("row_input", TensorProto.FLOAT, ["rows", *sig.example_shape])
        b.op("Identity", [model_input], out=sig.input_name)
        b.mark_model()
        score = target_score(b, class_scores(b, sig.output_name, spec.score, sig.scores), target, job_index)
        b.output(score, SCORE_OUTPUT, TensorProto.FLOAT, ["rows"])
    elif spec.kind == COALITION_TABULAR:
        model_input, row_weights = coalition.prefix(b, sig, x0, job_index, spec.background_rows)
        b.op("Identity", [model_input], out=sig.input_name)
        b.mark_model()
        scores = class_scores(b, sig.output_name, spec.score, sig.scores)
        value = coalition.coalition_value(b, scores, row_weights, target, job_index, spec.background_rows)
        b.output(value, SCORE_OUTPUT, TensorProto.FLOAT, ["rows"])
    else:  # RISE
        mask = rise.masks(b, sig, spec.grid_size)
        b.op("Identity", [rise.prefix(b, sig, x0, job_index, mask, spec.zero_baseline)], out=sig.input_name)
        b.mark_model()
        score = target_score(b, class_scores(b, sig.output_name, spec.score, sig.scores), target, job_index)
        b.output(score, SCORE_OUTPUT, TensorProto.FLOAT, ["rows"])
        mask_sum = rise.weighted_mask_sum(b, mask, score, job_index, x0)
        b.output(mask_sum, MASK_SUM_OUTPUT, TensorProto.FLOAT, ["jobs", None])
    return Variant(spec, splice(model, sig.input_name, b), interface)
