"""Extremal perturbation in the graph: TorchRay's smooth-max mask, its perturbation pyramid, and the
gradient of the energy with respect to the mask parameters, all as ONNX nodes around the model.

A row is one point of the optimisation: the mask parameters p [h, w] (h = ceil(H / step),
w = ceil(W / step), values in [0, 1]) and a few per-row codes. The graph makes, as TorchRay's
`MaskGenerator` and `Perturbation` do (Fong, Patrick & Vedaldi 2019):

- the mask: each output pixel u (on a canvas with a margin of sigma pixels on every side) takes
  the candidates c_k(u) = K(|u - q_k| / sigma) p_k of the (2r + 1)^2 nearest control points q_k
  (on a grid of pitch `step`), K(z) = exp(-2 max(z - 1/2, 0)^2), and pools them by a smooth max,
  m(u) = sum_k c_k softmax_k(20 c), clamped to [0, 1]; the image's mask is the canvas without its
  margin. Unfold is a convolution with one-hot kernels, the nearest upsampling a reshape-expand;
- the perturbed input: the mask indexes a pyramid of L increasingly blurred (or faded) copies of
  the input, level l(u) = m(u) (L - 1), linearly interpolated between the two nearest levels
  (m = 1: the input itself, m = 0: the most perturbed copy); the deletion game uses 1 - m;
- horizontal-flip jitter of the perturbed input, per row.

Its suffix gives the gradient with respect to p of the energy `reward_sign * score + regulariser`
(the score's part only when the variant is exact, from the model's own input gradient), written
by hand as the adjoint of each step above: the model's input gradient, unflipped, times the
pyramid's slope; through the smooth max and the clamp; through the upsampling (a block sum) and the
unfold (a transposed convolution). The area regulariser is TorchRay's
-w mean((sort(m) - ref)^2), ref = 0 for the lowest (1 - a) of the values and 1 for the rest; its
gradient -2w/N (m_i - ref(rank i)) needs only the threshold, the keep_count-th largest value.
It is taken over the image (default; a is then the fraction of the image the mask keeps) or over
the canvas with its margin (TorchRay's own choice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import gradient as gradients
from ..builder import NAMESPACE, GraphBuilder
from ..compose import model_opset, splice
from ..score import class_scores, declare_common_inputs, declare_target, target_score
from ..signature import ModelSignature
from .base import VariantInterface, VariantSpec, register

COLDNESS = 20.0          # TorchRay's softmax pooling temperature
SCORE_OUTPUT = "score"  # the same name as every scoring variant's
MASK_OUTPUT = "mask"
PARAM_GRAD_OUTPUT = "param_grad"
# The widest tensors are [rows, (2r + 1)^2, canvas]; rows per batch are capped to keep each below this.
TENSOR_BUDGET_BYTES = 64 * 2**20


@dataclass(frozen=True)
class MaskGeometry:
    """TorchRay's MaskGenerator sizes for an H x W image (margin = sigma), its canvas extended where
    TorchRay's falls short of the image.

    TorchRay's canvas (shape_out) is not always large enough to hold the image after the margin it
    crops: with step 2 and sigma 1.0 on 64 px it is 63 px, cropped from pixel 1 (whenever 2 sigma /
    step is a whole number the padding is one cell less than with a slightly larger sigma). The
    crop then gave a 62 px mask, the model input lost its shape, and the exact gradient was refused
    ("the rank of ... is unknown"). Here such a canvas gets `extra_cells` more cells at its far end
    (bottom, right; zero parameters, as TorchRay's own padding): the control points stay where
    TorchRay puts them, and wherever TorchRay's canvas does cover the image nothing changes.
    """

    height: int
    width: int
    step: int
    sigma: float

    @property
    def padding(self) -> int:
        return 1 + math.ceil(2 * self.sigma / self.step)

    @property
    def radius(self) -> int:
        return 1 + math.ceil(self.sigma / self.step)

    @property
    def kernel_size(self) -> int:
        return 2 * self.radius + 1

    @property
    def candidates(self) -> int:
        return self.kernel_size ** 2

    @property
    def margin(self) -> int:
        return round(self.sigma)

    @property
    def shape_in(self) -> tuple[int, int]:
        return math.ceil(self.height / self.step), math.ceil(self.width / self.step)

    @property
    def extra_cells(self) -> tuple[int, int]:
        """Cells appended on each axis so that the canvas holds margin + size pixels (0 where TorchRay's does)."""
        extra = []
        for cells, size in zip(self.shape_in, (self.height, self.width)):
            torchray_out = self.step * (cells + 2 * self.padding - self.kernel_size + 1) - self.step + 1
            extra.append(max(0, math.ceil((self.margin + size - torchray_out) / self.step)))
        return extra[0], extra[1]

    @property
    def conv_pads(self) -> list[int]:
        """The unfold's pads, ONNX order [top, left, bottom, right]: TorchRay's, plus the extra cells."""
        eh, ew = self.extra_cells
        return [self.padding, self.padding, self.padding + eh, self.padding + ew]

    @property
    def shape_mid(self) -> tuple[int, int]:
        return tuple(z + 2 * self.padding - self.kernel_size + 1 + e  # type: ignore[return-value]
                     for z, e in zip(self.shape_in, self.extra_cells))

    @property
    def shape_up(self) -> tuple[int, int]:
        return tuple(self.step * z for z in self.shape_mid)  # type: ignore[return-value]

    @property
    def shape_out(self) -> tuple[int, int]:
        return tuple(z - self.step + 1 for z in self.shape_up)  # type: ignore[return-value]

    def weights(self) -> np.ndarray:
        """[K, step, step]: K(|u - q_k| / sigma) of candidate k at offset (u mod step) within a cell.

        Canvas pixel u lies in parameter cell floor(u / step) (nearest upsampling), and its k-th
        candidate is the control point k - padding cells away, at sigma + step (cell + k - padding):
        the distance depends on u only through u mod step, so one cell's weights serve every cell."""
        s, offsets = self.kernel_size, np.arange(self.step, dtype=np.float64)
        shift = self.sigma + self.step * (np.arange(s, dtype=np.float64) - self.padding)
        d = offsets[None, :] - shift[:, None]                                            # [s, step]
        distance = np.sqrt(d[:, None, :, None] ** 2 + d[None, :, None, :] ** 2) / self.sigma  # [s, s, step, step]
        kernel = np.exp(-2.0 * np.maximum(distance - 0.5, 0.0) ** 2)
        return kernel.reshape(s * s, self.step, self.step).astype(np.float32)

    def canvas_weights(self) -> np.ndarray:
        """[K, Ho, Wo]: the weights of every canvas pixel (the periodic ones tiled and cropped)."""
        (ho, wo), (mh, mw) = self.shape_out, self.shape_mid
        return np.tile(self.weights(), (1, mh, mw))[:, :ho, :wo]

    def masks(self, params: np.ndarray, canvas: bool = False) -> np.ndarray:
        """[A, H, W] the image masks of parameters [A, h, w] (`canvas`: [A, Ho, Wo] with the margin), in
        numpy: the graph's forward, for the area projection (methods/extremal_perturbation.py)."""
        s, step, margin = self.kernel_size, self.step, self.margin
        (ho, wo), (mh, mw) = self.shape_out, self.shape_mid
        top, left, bottom, right = self.conv_pads
        padded = np.pad(params.astype(np.float32), ((0, 0), (top, bottom), (left, right)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (s, s), axis=(1, 2))  # [A, mh, mw, s, s]
        candidates = windows.reshape(len(params), mh, mw, s * s).transpose(0, 3, 1, 2)
        upsampled = np.repeat(np.repeat(candidates, step, axis=2), step, axis=3)[:, :, :ho, :wo]
        scaled = COLDNESS * upsampled * self.canvas_weights()[None]            # [A, K, Ho, Wo]
        exp = np.exp(scaled)
        whole = np.clip((scaled * exp).sum(axis=1) / (COLDNESS * exp.sum(axis=1)), 0.0, 1.0)
        return whole if canvas else whole[:, margin : margin + self.height, margin : margin + self.width]

    def max_rows(self) -> int:
        return max(1, TENSOR_BUDGET_BYTES // (4 * self.candidates * self.shape_out[0] * self.shape_out[1]))


@dataclass
class Forward:
    """Tensors of the forward prefix the hand-written backward reads."""

    model_input: str
    mask: str          # [R, 1, H, W] the image's mask (before the deletion game's 1 - m)
    canvas: str        # [R, 1, Ho, Wo] the clamped mask with its margin
    pooled: str        # [R, 1, Ho, Wo] before the clamp
    pooled_cells: str  # [R, 1, mh * mw, step^2] the same, uncropped, by cell
    scaled: str        # [R, K, mh * mw, step^2] 20 x the candidates
    exp: str           # exp(scaled)
    total: str         # [R, 1, mh * mw, step^2] sum over K of exp
    slope: str         # [R, ...] d perturbed / d level-fraction: pyramid[k + 1] - pyramid[k]
    flip: str          # [R] bool
    invert: str        # [R, 1, 1, 1] float, 1 for the deletion game


def code_names(exact: bool) -> tuple[str, ...]:
    return ("mask_params", "flip", "invert", "regul_weight", "keep_count") + (("reward_sign",) if exact else ())


def _reduce(b: GraphBuilder, op: str, x: str, axes: list[int], keepdims: int) -> str:
    return b.reduce(op, x, axes, keepdims)


def _reverse_width(b: GraphBuilder, x: str, axis: int) -> str:
    big = np.iinfo(np.int64)
    return b.op("Slice", [x, b.const(np.array([-1], np.int64)), b.const(np.array([big.min], np.int64)),
                          b.const(np.array([axis], np.int64)), b.const(np.array([-1], np.int64))])


def _cells_to_image(b: GraphBuilder, x: str, geometry: MaskGeometry) -> str:
    """[R, 1, mh * mw, step^2] by cell -> [R, 1, uh, uw] image layout."""
    (mh, mw), (uh, uw), step = geometry.shape_mid, geometry.shape_up, geometry.step
    blocks = b.op("Reshape", [x, b.const(np.array([-1, 1, mh, mw, step, step], np.int64))])
    return b.op("Reshape", [b.op("Transpose", [blocks], perm=[0, 1, 2, 4, 3, 5]),
                            b.const(np.array([-1, 1, uh, uw], np.int64))])


def _image_to_cells(b: GraphBuilder, x: str, geometry: MaskGeometry) -> str:
    """[R, 1, uh, uw] image layout -> [R, 1, mh * mw, step^2] by cell."""
    (mh, mw), step = geometry.shape_mid, geometry.step
    blocks = b.op("Reshape", [x, b.const(np.array([-1, 1, mh, step, mw, step], np.int64))])
    return b.op("Reshape", [b.op("Transpose", [blocks], perm=[0, 1, 2, 4, 3, 5]),
                            b.const(np.array([-1, 1, mh * mw, step * step], np.int64))])


def _one_hot_kernels(geometry: MaskGeometry) -> np.ndarray:
    """[K, 1, s, s]: convolving with these unfolds each (2r + 1)^2 neighbourhood into K channels."""
    k = geometry.candidates
    return np.eye(k, dtype=np.float32).reshape(k, 1, geometry.kernel_size, geometry.kernel_size)


def forward(b: GraphBuilder, sig: ModelSignature, geometry: MaskGeometry, levels: int, job_index: str) -> Forward:
    """Declare the pyramid and the row codes; return the perturbed, jittered model input and handles."""
    hi, wi = geometry.shape_in
    ho, wo = geometry.shape_out
    mh, mw = geometry.shape_mid
    k, step, m = geometry.candidates, geometry.step, geometry.margin
    height, width = sig.spatial_shape
    nchw = sig.layout == "NCHW"
    pyramid = b.input("pyramid", TensorProto.FLOAT, ["jobs", levels, *sig.example_shape])
    params = b.input("mask_params", TensorProto.FLOAT, ["rows", hi, wi])
    flip = b.op("Cast", [b.input("flip", TensorProto.FLOAT, ["rows"])], to=TensorProto.BOOL)
    per_row = b.const(np.array([-1, 1, 1, 1], np.int64))
    invert = b.op("Reshape", [b.input("invert", TensorProto.FLOAT, ["rows"]), per_row])

    # The mask: unfold (a convolution with one-hot kernels) gives each cell's K candidate parameters;
    # their outer product with the periodic weights of the cell's step x step pixels (a MatMul with
    # inner size 1) does the nearest upsampling and the weighting at once: [R, K, cells, step^2].
    # Then the smooth max over K, back to image layout, clamp, crop to canvas and image.
    unfolded = b.op("Conv", [b.unsqueeze(params, [1]), b.const(_one_hot_kernels(geometry), "unfold")],
                    pads=geometry.conv_pads)                                              # [R, K, mh, mw]
    cells = b.op("Reshape", [unfolded, b.const(np.array([-1, k, mh * mw, 1], np.int64))])
    periodic = b.const(COLDNESS * geometry.weights().reshape(k, 1, step * step), "kernel")
    scaled = b.op("MatMul", [cells, periodic])                                  # 20 c: [R, K, cells, step^2]
    # Candidates lie in [0, 1], so exp(20 c) needs no max subtraction; the normalisation is applied
    # after the sums over K (on tensors K times smaller).
    exp = b.op("Exp", [scaled])
    total = _reduce(b, "ReduceSum", exp, [1], 1)                                         # [R, 1, cells, step^2]
    weighted = _reduce(b, "ReduceSum", b.op("Mul", [scaled, exp]), [1], 1)
    pooled_cells = b.op("Div", [weighted, b.op("Mul", [total, b.const(np.array(COLDNESS, np.float32))])])
    pooled = _cells_to_image(b, pooled_cells, geometry)                                  # [R, 1, uh, uw]
    pooled = b.op("Slice", [pooled, b.const(np.array([0, 0], np.int64)), b.const(np.array([ho, wo], np.int64)),
                            b.const(np.array([2, 3], np.int64))])                          # [R, 1, Ho, Wo]
    canvas = b.op("Clip", [pooled, b.const(np.array(0.0, np.float32)), b.const(np.array(1.0, np.float32))])
    mask = b.op("Slice", [canvas, b.const(np.array([m, m], np.int64)), b.const(np.array([m + height, m + width], np.int64)),
                          b.const(np.array([2, 3], np.int64))])                           # [R, 1, H, W]

    # The perturbation: interpolate the pyramid at level (L - 1) * m (or of 1 - m, deletion game).
    shown = b.op("Add", [mask, b.op("Mul", [invert, b.op("Sub", [b.const(np.array(1.0, np.float32)),
                                                                b.op("Mul", [mask, b.const(np.array(2.0, np.float32))])])])])
    if not nchw:
        shown = b.op("Transpose", [shown], perm=[0, 2, 3, 1])                           # [R, H, W, 1]
    level = b.op("Mul", [shown, b.const(np.array(levels - 1, np.float32))])
    low = b.op("Floor", [level])
    fraction = b.op("Sub", [level, low])
    high = b.op("Min", [b.op("Add", [low, b.const(np.array(1.0, np.float32))]), b.const(np.array(levels - 1, np.float32))])
    size = int(np.prod(sig.example_shape))
    position = b.const(np.arange(size, dtype=np.int64).reshape(sig.example_shape), "position")
    slot = b.op("Reshape", [b.op("Mul", [job_index, b.const(np.array(levels, np.int64))]), per_row])
    flat = b.op("Reshape", [pyramid, b.const(np.array([-1], np.int64))])

    def take(level_index: str) -> str:
        index = b.op("Add", [b.op("Mul", [b.op("Add", [slot, b.cast(level_index, TensorProto.INT64)]),
                                          b.const(np.array(size, np.int64))]), position])
        return b.op("Gather", [flat, index], axis=0)

    below, above = take(low), take(high)
    slope = b.op("Sub", [above, below])
    perturbed = b.op("Add", [below, b.op("Mul", [fraction, slope])])
    jittered = b.op("Where", [b.op("Reshape", [flip, per_row]),
                              _reverse_width(b, perturbed, 3 if nchw else 2), perturbed])
    return Forward(jittered, mask, canvas, pooled, pooled_cells, scaled, exp, total, slope, flip, invert)


def backward(b: GraphBuilder, sig: ModelSignature, geometry: MaskGeometry, levels: int, fwd: Forward,
             input_grad: str | None, padded_area: bool) -> str:
    """d energy / d p [R, h, w]: the score's part from `input_grad` (None: black-box), the regulariser's."""
    hi, wi = geometry.shape_in
    ho, wo = geometry.shape_out
    (mh, mw), (uh, uw) = geometry.shape_mid, geometry.shape_up
    k, step, m = geometry.candidates, geometry.step, geometry.margin
    height, width = sig.spatial_shape
    nchw = sig.layout == "NCHW"
    grad_canvas_parts: list[str] = []
    grad_mask_parts: list[str] = []

    if input_grad is not None:
        per_row = b.const(np.array([-1, 1, 1, 1], np.int64))
        sign = b.op("Reshape", [b.input("reward_sign", TensorProto.FLOAT, ["rows"]), per_row])
        g = b.op("Mul", [input_grad, sign])
        g = b.op("Where", [b.op("Reshape", [fwd.flip, per_row]), _reverse_width(b, g, 3 if nchw else 2), g])
        channel = 1 if nchw else 3
        g_shown = _reduce(b, "ReduceSum", b.op("Mul", [g, fwd.slope]), [channel], 1)
        g_shown = b.op("Mul", [g_shown, b.const(np.array(levels - 1, np.float32))])
        if not nchw:
            g_shown = b.op("Transpose", [g_shown], perm=[0, 3, 1, 2])                     # [R, 1, H, W]
        # shown = m + invert (1 - 2 m): d shown / d m = 1 - 2 invert.
        factor = b.op("Sub", [b.const(np.array(1.0, np.float32)), b.op("Mul", [fwd.invert, b.const(np.array(2.0, np.float32))])])
        grad_mask_parts.append(b.op("Mul", [g_shown, factor]))

    # Area regulariser: -w/N sum_i (v_i - ref_i)^2 over the sorted values; its gradient -2w/N (v - [v >= t]).
    values = fwd.canvas if padded_area else fwd.mask
    count = ho * wo if padded_area else height * width
    flat = b.op("Reshape", [values, b.const(np.array([-1, count], np.int64))])
    top = b.name("topk_values")
    b.nodes.append(_topk_node(b, flat, count, top))
    keep = b.unsqueeze(b.op("Sub", [b.input("keep_count", TensorProto.INT64, ["rows"]), b.const(np.array(1, np.int64))]), [1])
    threshold = b.op("GatherElements", [top, keep], axis=1)                                 # [R, 1]
    reference = b.cast(b.op("Not", [b.op("Less", [flat, threshold])]), TensorProto.FLOAT)
    weight = b.unsqueeze(b.op("Mul", [b.input("regul_weight", TensorProto.FLOAT, ["rows"]),
                                      b.const(np.array(-2.0 / count, np.float32))]), [1])
    g_regul = b.op("Mul", [weight, b.op("Sub", [flat, reference])])
    if padded_area:
        grad_canvas_parts.append(b.op("Reshape", [g_regul, b.const(np.array([-1, 1, ho, wo], np.int64))]))
    else:
        grad_mask_parts.append(b.op("Reshape", [g_regul, b.const(np.array([-1, 1, height, width], np.int64))]))

    if grad_mask_parts:
        pads = np.array([0, 0, m, m, 0, 0, ho - m - height, wo - m - width], np.int64)
        grad_canvas_parts.append(b.op("Pad", [_sum(b, grad_mask_parts), b.const(pads, "pads")]))
    g_canvas = _sum(b, grad_canvas_parts)
    # Clamp: the gradient passes where 0 <= pooled <= 1 (torch's clamp convention).
    inside = b.op("And", [b.op("Not", [b.op("Less", [fwd.pooled, b.const(np.array(0.0, np.float32))])]),
                          b.op("Not", [b.op("Greater", [fwd.pooled, b.const(np.array(1.0, np.float32))])])])
    g_pooled = b.op("Mul", [g_canvas, b.cast(inside, TensorProto.FLOAT)])
    # Smooth max: d pooled / d c_k = s_k (1 + 20 c_k - 20 pooled), s_k = exp_k / total; the factors
    # that do not depend on k are formed on the reduced tensors first.
    g_pooled = b.op("Pad", [g_pooled, b.const(np.array([0, 0, 0, 0, 0, 0, uh - ho, uw - wo], np.int64), "pads")])
    g_cell = b.op("Div", [_image_to_cells(b, g_pooled, geometry), fwd.total])
    offset = b.op("Sub", [b.const(np.array(1.0, np.float32)),
                          b.op("Mul", [fwd.pooled_cells, b.const(np.array(COLDNESS, np.float32))])])
    g_candidates = b.op("Mul", [b.op("Mul", [fwd.exp, b.op("Add", [fwd.scaled, offset])]), g_cell])
    # Weighting and upsampling: the transposed outer product, a sum over each cell's pixels.
    periodic = b.const(geometry.weights().reshape(k, step * step, 1), "kernel_t")
    g_blocks = b.op("Reshape", [b.op("MatMul", [g_candidates, periodic]),
                                b.const(np.array([-1, k, mh, mw], np.int64))])            # [R, K, mh, mw]
    g_params = b.op("ConvTranspose", [g_blocks, b.const(_one_hot_kernels(geometry), "unfold")], pads=geometry.conv_pads)
    return b.op("Reshape", [g_params, b.const(np.array([-1, hi, wi], np.int64))])


def _sum(b: GraphBuilder, parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else b.op("Sum", parts)


def _topk_node(b: GraphBuilder, x: str, count: int, out: str) -> onnx.NodeProto:
    """TopK (largest first) of all `count` values per row; the indices output is unused."""
    return helper.make_node("TopK", [x, b.const(np.array([count], np.int64), "k")], [out, b.name("topk_indices")],
                            name=b.name("TopK"), axis=1, largest=1, sorted=1)


def build_model(model: onnx.ModelProto, sig: ModelSignature, *, geometry: MaskGeometry, levels: int,
                padded_area: bool, exact: bool, score: str, exported: tuple[str, str] | None,
                describe: str) -> onnx.ModelProto:
    """The extremal-perturbation variant: rows of mask parameters in; score, mask, d energy / d p out."""
    b = GraphBuilder(model_opset(model), describe)
    x0, job_index = declare_common_inputs(b, sig.example_shape)
    target = declare_target(b)
    fwd = forward(b, sig, geometry, levels, job_index)
    b.op("Identity", [fwd.model_input], out=sig.input_name)
    b.mark_model()
    scores = class_scores(b, sig.output_name, score, sig.scores)
    b.output(target_score(b, scores, target, job_index), SCORE_OUTPUT, TensorProto.FLOAT, ["rows"])
    b.output(b.squeeze(fwd.mask, [1]), MASK_OUTPUT, TensorProto.FLOAT, ["rows", *sig.spatial_shape])
    if not exact:
        grad = backward(b, sig, geometry, levels, fwd, None, padded_area)
        b.output(grad, PARAM_GRAD_OUTPUT, TensorProto.FLOAT, ["rows", *geometry.shape_in])
        return splice(model, sig.input_name, b)
    composed = splice(model, sig.input_name, b)
    derived = gradients.with_gradients(composed, b, sig, scores, target, job_index, score=score, rule="plain",
                                       layer="", exported=exported)
    suffix = GraphBuilder(b.opset, describe + "/backward")
    input_grad = NAMESPACE + gradients.INPUT_GRAD_OUTPUT
    grad = backward(suffix, sig, geometry, levels, fwd, input_grad, padded_area)
    suffix.output(grad, PARAM_GRAD_OUTPUT, TensorProto.FLOAT, ["rows", *geometry.shape_in])
    return gradients.consume_input_gradient(derived, suffix)


@register
@dataclass(frozen=True)
class Extremal(VariantSpec):
    """Rows: mask parameters and the per-row codes of `code_names`; constants x0, target, pyramid.
    Outputs the score, the mask and d energy / d p. `exact`: the score's gradient from the model's graph."""

    kind = "extremal"
    score: str = "logit"
    step: int = 7
    sigma: float = 21.0
    levels: int = 8
    padded_area: bool = False
    exact: bool = False
    exported: tuple[str, str] | None = None

    def geometry(self, sig: ModelSignature) -> MaskGeometry:
        return MaskGeometry(*sig.spatial_shape, self.step, self.sigma)

    def interface(self) -> VariantInterface:
        return VariantInterface(("x0", "target", "pyramid"), code_names(self.exact),
                                (SCORE_OUTPUT, MASK_OUTPUT, PARAM_GRAD_OUTPUT))

    def max_batch_rows(self, sig: ModelSignature, configured: int) -> int:
        return min(configured, self.geometry(sig).max_rows())

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        return build_model(model, sig, geometry=self.geometry(sig), levels=self.levels, padded_area=self.padded_area,
                           exact=self.exact, score=self.score, exported=self.exported, describe=self.describe())
