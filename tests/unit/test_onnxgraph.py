"""Graph variants (explaind.onnxgraph): every prefix and suffix operator against a numpy reference.

Variants are composed around tiny hand-made ONNX models and run with onnxruntime on the CPU. The
references below are written independently of the graph code, straight from each operator's
definition, and the assertions compare values, not shapes.

The perturbed input a prefix produces is read back exactly through the public interface: an "echo"
model returns its flattened input, so with the logit score the score of a row is the input element
its job's target points at. `read_back` gives every (job, element) pair its own job slot whose
target is that element and repeats each row once per element, so one run returns every element of
every perturbed row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from explaind.onnxgraph.builder import NAMESPACE
from explaind.onnxgraph.signature import ModelSignature
from explaind.onnxgraph.variants import VariantInterface, VariantSpec
from explaind.onnxgraph.variants.occlusion import ImageOcclusion, TabularOcclusion
from explaind.onnxgraph.variants.predict import Predict
from explaind.onnxgraph.variants.rise import Rise
from explaind.onnxgraph.variants.rows import ImageRows

OPSETS = (11, 13, 17, 21)
LAYOUTS = ("NCHW", "NHWC")
SCORES = ("probability", "logit")

C, H, W, K = 3, 5, 6, 4  # small image models
F = 5                    # tabular features


@dataclass(frozen=True)
class Variant:
    """A built variant as the engine holds it: the spliced graph and what it feeds and reads."""

    model: onnx.ModelProto
    interface: VariantInterface


def build_variant(model: onnx.ModelProto, sig: ModelSignature, spec: VariantSpec) -> Variant:
    return Variant(spec.build(model, sig), spec.interface())


# Tiny models ----------------------------------------------------------------------------------


def _model(nodes, inputs, outputs, initializers, opset: int, name: str) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset)]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=opsets, producer_name="explaind-tests")
    model.ir_version = helper.find_min_ir_version_for(opsets)  # the oldest IR this opset allows
    onnx.checker.check_model(model, full_check=True)
    return model


def example_shape(layout: str, c: int = C, h: int = H, w: int = W) -> tuple[int, ...]:
    return (c, h, w) if layout == "NCHW" else (h, w, c)


def linear_model(opset: int, shape: tuple[int, ...], weight: np.ndarray, softmax: bool = False,
                 names: dict[str, str] | None = None) -> onnx.ModelProto:
    """input [N, *shape] (-> Flatten, images) -> MatMul weight [D, K] -> logits [N, K] (-> Softmax -> probs)."""
    n = {"input": "input", "flat": "flat", "weight": "W", "logits": "logits", "probs": "probs",
         "flatten": "flatten", "matmul": "matmul", "softmax": "softmax", **(names or {})}
    nodes = []
    flat = n["input"]
    if len(shape) > 1:
        nodes.append(helper.make_node("Flatten", [n["input"]], [n["flat"]], name=n["flatten"], axis=1))
        flat = n["flat"]
    nodes.append(helper.make_node("MatMul", [flat, n["weight"]], [n["logits"]], name=n["matmul"]))
    output = n["logits"]
    if softmax:
        nodes.append(helper.make_node("Softmax", [n["logits"]], [n["probs"]], name=n["softmax"], axis=1))
        output = n["probs"]
    return _model(
        nodes,
        [helper.make_tensor_value_info(n["input"], TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", weight.shape[1]])],
        [numpy_helper.from_array(weight.astype(np.float32), n["weight"])],
        opset,
        "linear",
    )


def echo_model(opset: int, shape: tuple[int, ...]) -> onnx.ModelProto:
    """input [N, *shape] -> Flatten -> echo [N, prod(shape)]: the model's input, read back as logits."""
    return _model(
        [helper.make_node("Flatten", ["input"], ["echo"], name="flatten", axis=1)],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("echo", TensorProto.FLOAT, ["N", math.prod(shape)])],
        [],
        opset,
        "echo",
    )


def image_sig(layout: str, shape: tuple[int, ...], scores: str = "logits", input_name: str = "input",
              output_name: str = "logits") -> ModelSignature:
    return ModelSignature(input_name, output_name, shape, layout, scores)


def tabular_sig(scores: str = "logits", input_name: str = "input", output_name: str = "logits") -> ModelSignature:
    return ModelSignature(input_name, output_name, (F,), "tabular", scores)


# Running a variant ------------------------------------------------------------------------------


def run(variant: Variant, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(variant.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, {NAMESPACE + k: v for k, v in feeds.items()})
    assert all(name.startswith(NAMESPACE) for name in names)
    return {name[len(NAMESPACE):]: value for name, value in zip(names, outputs)}


def read_back(variant: Variant, shape: tuple[int, ...], job_index: np.ndarray, x0: np.ndarray,
              fill: np.ndarray, **codes: np.ndarray) -> np.ndarray:
    """The perturbed input of every row [R, *shape], through an echo-model variant's logit score.

    Slot j * D + d holds job j's constants with target d; row r is repeated D times, the copy for
    element d going to slot job_index[r] * D + d, so its score is element d of its perturbed input.
    """
    size = math.prod(shape)
    rows, jobs = len(job_index), len(x0)
    feeds = {
        "x0": np.repeat(x0, size, axis=0),
        "fill": np.repeat(fill, size, axis=0),
        "target": np.tile(np.arange(size, dtype=np.int64), jobs),
        "job_index": np.repeat(job_index, size) * size + np.tile(np.arange(size, dtype=np.int64), rows),
        **{name: np.repeat(code, size, axis=0) for name, code in codes.items()},
    }
    return run(variant, **feeds)["score"].reshape(rows, *shape)


# Independent numpy references -------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def ref_occlude_image(x0, fill, windows, job_index, layout):
    out = x0[job_index].copy()
    for r, (top, left, bottom, right) in enumerate(windows):
        region = (slice(None), slice(top, bottom), slice(left, right))
        if layout == "NHWC":
            region = (slice(top, bottom), slice(left, right), slice(None))
        out[r][region] = fill[job_index[r]]
    return out


def ref_occlude_tabular(x0, fill, feature, job_index):
    out = x0[job_index].copy()
    for r, f in enumerate(feature):
        if f >= 0:
            out[r, f] = fill[job_index[r], f]
    return out


def ref_bilinear(grid: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear upsampling, half-pixel centres, edges clamped, evaluated pixel by pixel."""
    s_h, s_w = grid.shape

    def source(i: int, out: int, size: int) -> tuple[int, int, float]:
        coordinate = min(max((i + 0.5) * size / out - 0.5, 0.0), size - 1.0)
        low = math.floor(coordinate)
        return low, min(low + 1, size - 1), coordinate - low

    g = grid.astype(np.float64)
    out = np.empty((out_h, out_w))
    for i in range(out_h):
        y_lo, y_hi, wy = source(i, out_h, s_h)
        for j in range(out_w):
            x_lo, x_hi, wx = source(j, out_w, s_w)
            top = g[y_lo, x_lo] * (1 - wx) + g[y_lo, x_hi] * wx
            bottom = g[y_hi, x_lo] * (1 - wx) + g[y_hi, x_hi] * wx
            out[i, j] = top * (1 - wy) + bottom * wy
    return out


def ref_mask(grid: np.ndarray, shift: np.ndarray, height: int, width: int) -> np.ndarray:
    s = grid.shape[0]
    up = ref_bilinear(grid, (s + 1) * math.ceil(height / s), (s + 1) * math.ceil(width / s))
    dy, dx = (int(v) for v in shift)
    mask = up[dy : dy + height, dx : dx + width]
    assert mask.shape == (height, width)  # every allowed shift keeps a full crop
    return mask


def ref_masks(grids, shifts, height, width):
    return np.stack([ref_mask(g, s, height, width) for g, s in zip(grids, shifts)])


def channel_mask(masks: np.ndarray, layout: str) -> np.ndarray:
    return masks[:, None, :, :] if layout == "NCHW" else masks[:, :, :, None]


def rise_codes(rng, rows: int, s: int, height: int, width: int):
    """Random 0/1 grids (one with fractional cells) and shifts, including both extreme shifts."""
    grids = (rng.random((rows, s, s)) < 0.5).astype(np.float32)
    grids[0] = rng.random((s, s)).astype(np.float32)
    cells = np.array([math.ceil(height / s), math.ceil(width / s)])
    shifts = rng.integers(0, cells, size=(rows, 2)).astype(np.int64)
    shifts[0] = 0
    shifts[1] = cells - 1
    return grids, shifts


def interleaved_jobs(rng, jobs: int, rows: int) -> np.ndarray:
    """Every job used, rows of different jobs interleaved (never sorted)."""
    index = np.concatenate([np.arange(jobs), rng.integers(0, jobs, rows - jobs)]).astype(np.int64)
    rng.shuffle(index)
    if np.all(np.diff(index) >= 0):
        index = index[::-1].copy()
    return index


def test_reference_upsampling_worked_by_hand():
    # s=2 to 6 pixels: source coordinates (i + 0.5) / 3 - 0.5 = -1/3, 0, 1/3, 2/3, 1, 4/3 -> [0, 1].
    up = ref_bilinear(np.array([[0.0, 1.0], [0.0, 1.0]]), 6, 6)
    np.testing.assert_allclose(up[0], [0, 0, 1 / 3, 2 / 3, 1, 1], atol=1e-12)
    np.testing.assert_allclose(up[:, 3], np.full(6, 2 / 3), atol=1e-12)
    # a single cell is constant whatever the size
    np.testing.assert_array_equal(ref_bilinear(np.array([[0.25]]), 5, 7), np.full((5, 7), 0.25))


# 1. Occlusion, image ----------------------------------------------------------------------------


def image_windows(rng, height: int, width: int, random: int = 10) -> np.ndarray:
    fixed = [
        (0, 0, 0, 0),                          # no occlusion
        (0, 0, height, width),                 # everything
        (0, 0, 2, 3),                          # top-left corner
        (height - 2, width - 3, height, width),  # bottom-right corner
        (1, 0, 3, width),                      # full-width band
        (0, 2, height, 3),                     # full-height column
        (2, 1, 3, 2),                          # one pixel
        (2, 1, 2, 4),                          # empty (zero height) away from the origin
    ]
    out = []
    for _ in range(random):
        top = rng.integers(0, height + 1)
        left = rng.integers(0, width + 1)
        out.append((top, left, rng.integers(top, height + 1), rng.integers(left, width + 1)))
    return np.array(fixed + out, np.int64)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("opset", OPSETS)
def test_occlusion_image_prefix_matches_reference(opset, layout):
    rng = np.random.default_rng(opset * 10 + len(layout))
    shape = example_shape(layout)
    variant = build_variant(echo_model(opset, shape), image_sig(layout, shape, output_name="echo"),
                            ImageOcclusion(score="logit"))
    for jobs in (2, 3):
        x0 = rng.standard_normal((jobs, *shape)).astype(np.float32)
        fill = np.array([-7.5, 11.25, 0.5][:jobs], np.float32)
        windows = image_windows(rng, H, W)
        job_index = interleaved_jobs(rng, jobs, len(windows))
        got = read_back(variant, shape, job_index, x0, fill, window=windows)
        expected = ref_occlude_image(x0, fill, windows, job_index, layout)
        np.testing.assert_array_equal(got, expected)
        # the reference itself really occludes: the fill shows up exactly where the window is
        assert np.array_equal(expected[0], x0[job_index[0]])
        assert np.all(expected[1] == fill[job_index[1]])


# 2. Occlusion, tabular --------------------------------------------------------------------------


@pytest.mark.parametrize("opset", OPSETS)
def test_occlusion_tabular_prefix_matches_reference(opset):
    rng = np.random.default_rng(opset)
    variant = build_variant(echo_model(opset, (F,)), tabular_sig(output_name="echo"),
                            TabularOcclusion(score="logit"))
    jobs = 3
    x0 = rng.standard_normal((jobs, F)).astype(np.float32)
    fill = (10 + rng.standard_normal((jobs, F))).astype(np.float32)  # per job, per feature
    feature = np.concatenate([np.arange(-1, F), rng.integers(-1, F, 9)]).astype(np.int64)
    job_index = interleaved_jobs(rng, jobs, len(feature))
    got = read_back(variant, (F,), job_index, x0, fill, feature=feature)
    expected = ref_occlude_tabular(x0, fill, feature, job_index)
    np.testing.assert_array_equal(got, expected)
    none = feature == -1
    np.testing.assert_array_equal(got[none], x0[job_index[none]])


# 3. RISE masks and perturbed inputs --------------------------------------------------------------


def graph_masks(opset: int, layout: str, s: int, height: int, width: int, grids, shifts) -> np.ndarray:
    """The variant's masks [R, H, W]: with x0 = 1 and fill = 0 the perturbed input is the mask."""
    shape = example_shape(layout, 1, height, width)
    variant = build_variant(echo_model(opset, shape), image_sig(layout, shape, output_name="echo"),
                            Rise(score="logit", grid_size=s, zero_baseline=False))
    job_index = np.zeros(len(grids), np.int64)
    x0 = np.ones((1, *shape), np.float32)
    got = read_back(variant, shape, job_index, x0, np.zeros(1, np.float32), grid=grids, shift=shifts)
    return got[:, 0] if layout == "NCHW" else got[..., 0]


@pytest.mark.parametrize("s", (1, 3, 7))
@pytest.mark.parametrize("opset", OPSETS)
def test_rise_masks_match_bilinear_reference(opset, s):
    rng = np.random.default_rng(100 + opset * 10 + s)
    height, width = 20, 28
    grids, shifts = rise_codes(rng, 6, s, height, width)
    for layout in LAYOUTS:
        got = graph_masks(opset, layout, s, height, width, grids, shifts)
        expected = ref_masks(grids, shifts, height, width)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        assert got[1:].min() < 0.5 < got[1:].max() or s == 1  # masks with both kept and dropped parts


@pytest.mark.parametrize("s", (1, 3, 7))
def test_rise_masks_match_torch_interpolate(s):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(200 + s)
    height, width = 20, 28
    grids, shifts = rise_codes(rng, 6, s, height, width)
    got = graph_masks(17, "NCHW", s, height, width, grids, shifts)
    size = ((s + 1) * math.ceil(height / s), (s + 1) * math.ceil(width / s))
    up = torch.nn.functional.interpolate(torch.from_numpy(grids)[:, None], size=size, mode="bilinear",
                                         align_corners=False)[:, 0].numpy()
    expected = np.stack([u[dy : dy + height, dx : dx + width] for u, (dy, dx) in zip(up, shifts)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_rise_mask_worked_by_hand():
    # s=2 over 4 pixels: cell 2, upsampled to 6, shift 1 keeps upsampled pixels 1..4: 0, 1/3, 2/3, 1.
    grid = np.array([[[0.0, 1.0], [0.0, 1.0]]], np.float32)
    got = graph_masks(13, "NCHW", 2, 4, 4, grid, np.array([[0, 1]], np.int64))
    np.testing.assert_allclose(got[0], np.tile([0, 1 / 3, 2 / 3, 1], (4, 1)), atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("opset", OPSETS)
def test_rise_prefix_blends_input_and_fill(opset, layout):
    rng = np.random.default_rng(300 + opset + len(layout))
    s, jobs, rows = 3, 3, 9
    shape = example_shape(layout)
    variant = build_variant(echo_model(opset, shape), image_sig(layout, shape, output_name="echo"),
                            Rise(score="logit", grid_size=s, zero_baseline=False))
    x0 = rng.standard_normal((jobs, *shape)).astype(np.float32)
    fill = np.array([-2.0, 0.75, 3.5], np.float32)
    grids, shifts = rise_codes(rng, rows, s, H, W)
    job_index = interleaved_jobs(rng, jobs, rows)
    got = read_back(variant, shape, job_index, x0, fill, grid=grids, shift=shifts)
    m = channel_mask(ref_masks(grids, shifts, H, W), layout)
    f = fill[job_index].reshape(-1, 1, 1, 1).astype(np.float64)
    expected = x0[job_index] * m + f * (1 - m)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("jobs", [1, 3])
@pytest.mark.parametrize("opset", OPSETS)
def test_job_rows_broadcast_like_gathered_rows(opset, jobs):
    """job_rows gives x0 itself for one job (broadcast) and x0[job_index] for several: either way
    x0[job_index] once combined with a row tensor."""
    from explaind.onnxgraph.builder import GraphBuilder

    b = GraphBuilder(opset, "t")
    x0 = b.input("x0", TensorProto.FLOAT, ["jobs", 2, 3])
    job_index = b.input("job_index", TensorProto.INT64, ["rows"])
    rows = b.input("rows", TensorProto.FLOAT, ["rows", 1, 3])
    b.output(b.op("Mul", [b.job_rows(x0, job_index), rows]), "out", TensorProto.FLOAT, ["rows", 2, 3])
    graph = helper.make_graph(b.nodes, "t", b.inputs, b.outputs, b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(opset + jobs)
    x = rng.standard_normal((jobs, 2, 3)).astype(np.float32)
    index = rng.integers(0, jobs, 7)
    r = rng.standard_normal((7, 1, 3)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {NAMESPACE + "x0": x, NAMESPACE + "job_index": index, NAMESPACE + "rows": r})
    np.testing.assert_array_equal(got, x[index] * r)


# 4. Score suffix ---------------------------------------------------------------------------------


def linear_setup(rng, opset, layout, jobs, softmax_inside=False):
    shape = example_shape(layout)
    weight = (rng.standard_normal((math.prod(shape), K)) / math.sqrt(math.prod(shape))).astype(np.float32)
    model = linear_model(opset, shape, weight, softmax=softmax_inside)
    x0 = rng.standard_normal((jobs, *shape)).astype(np.float32)
    return shape, weight, model, x0


def ref_scores(perturbed, weight, target, job_index, score, model_scores="logits"):
    logits = perturbed.reshape(len(perturbed), -1).astype(np.float64) @ weight.astype(np.float64)
    scores = softmax(logits) if (score == "probability" or model_scores == "probabilities") else logits
    return scores[np.arange(len(perturbed)), target[job_index]]


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("opset", OPSETS)
def test_occlusion_image_score_picks_each_rows_target(opset, layout, score):
    rng = np.random.default_rng(400 + opset + len(layout) + len(score))
    jobs = 3
    shape, weight, model, x0 = linear_setup(rng, opset, layout, jobs)
    variant = build_variant(model, image_sig(layout, shape), ImageOcclusion(score=score))
    fill = np.array([0.0, -1.0, 2.0], np.float32)
    target = np.array([2, 0, 3], np.int64)
    windows = image_windows(rng, H, W)
    job_index = interleaved_jobs(rng, jobs, len(windows))
    got = run(variant, x0=x0, target=target, fill=fill, window=windows, job_index=job_index)["score"]
    perturbed = ref_occlude_image(x0, fill, windows, job_index, layout)
    expected = ref_scores(perturbed, weight, target, job_index, score)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # a different target per job matters: picking one column for all rows would give other values
    wrong = ref_scores(perturbed, weight, np.full(jobs, 1, np.int64), job_index, score)
    assert not np.allclose(got, wrong, atol=1e-3)


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("opset", OPSETS)
def test_occlusion_tabular_score_picks_each_rows_target(opset, score):
    rng = np.random.default_rng(500 + opset + len(score))
    jobs, classes = 3, 3
    weight = rng.standard_normal((F, classes)).astype(np.float32)
    model = linear_model(opset, (F,), weight)
    variant = build_variant(model, tabular_sig(), TabularOcclusion(score=score))
    x0 = rng.standard_normal((jobs, F)).astype(np.float32)
    fill = rng.standard_normal((jobs, F)).astype(np.float32)
    target = np.array([1, 2, 0], np.int64)
    feature = np.arange(-1, F, dtype=np.int64).repeat(2)
    job_index = interleaved_jobs(rng, jobs, len(feature))
    got = run(variant, x0=x0, target=target, fill=fill, feature=feature, job_index=job_index)["score"]
    perturbed = ref_occlude_tabular(x0, fill, feature, job_index)
    np.testing.assert_allclose(got, ref_scores(perturbed, weight, target, job_index, score), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", OPSETS)
def test_probabilities_model_output_is_used_as_it_is(opset):
    rng = np.random.default_rng(600 + opset)
    jobs = 2
    shape, weight, model, x0 = linear_setup(rng, opset, "NCHW", jobs, softmax_inside=True)
    sig = image_sig("NCHW", shape, scores="probabilities", output_name="probs")
    variant = build_variant(model, sig, ImageOcclusion(score="probability"))
    target = np.array([3, 1], np.int64)
    windows = image_windows(rng, H, W, random=2)
    job_index = interleaved_jobs(rng, jobs, len(windows))
    fill = np.array([0.5, -0.5], np.float32)
    got = run(variant, x0=x0, target=target, fill=fill, window=windows, job_index=job_index)["score"]
    perturbed = ref_occlude_image(x0, fill, windows, job_index, "NCHW")
    expected = ref_scores(perturbed, weight, target, job_index, "probability", "probabilities")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # softmax applied a second time would flatten the scores towards 1/K
    assert np.abs(got - 1 / K).max() > 0.05
    with pytest.raises(ValueError):
        build_variant(model, sig, ImageOcclusion(score="logit"))


# 5. RISE score and weighted mask sum -------------------------------------------------------------


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("opset", OPSETS)
def test_rise_score_and_weighted_mask_sum(opset, layout, score):
    rng = np.random.default_rng(700 + opset + len(layout) + len(score))
    jobs, s = 4, 2  # slot 3 gets no rows at all
    shape, weight, model, x0 = linear_setup(rng, opset, layout, jobs)
    variant = build_variant(model, image_sig(layout, shape), Rise(score=score, grid_size=s, zero_baseline=False))
    fill = np.array([0.0, 1.5, -1.0, 9.0], np.float32)
    target = np.array([1, 3, 0, 2], np.int64)
    job_index = np.array([0, 1, 0, 2, 1, 0, 2, 0, 1, 0, 2], np.int64)  # slot 0 interleaved with 1 and 2
    grids, shifts = rise_codes(rng, len(job_index), s, H, W)
    out = run(variant, x0=x0, target=target, fill=fill, grid=grids, shift=shifts, job_index=job_index)
    masks = ref_masks(grids, shifts, H, W)
    m = channel_mask(masks, layout)
    perturbed = x0[job_index] * m + fill[job_index].reshape(-1, 1, 1, 1) * (1 - m)
    scores = ref_scores(perturbed, weight, target, job_index, score)
    np.testing.assert_allclose(out["score"], scores, rtol=1e-5, atol=1e-5)
    expected = np.zeros((jobs, H * W))
    for r, j in enumerate(job_index):
        expected[j] += scores[r] * masks[r].ravel()
    assert out["mask_sum"].shape == (jobs, H * W)
    np.testing.assert_allclose(out["mask_sum"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["mask_sum"][3], 0)
    assert np.all(np.abs(expected[:3]).sum(axis=1) > 1e-3)  # the used slots are not trivially zero


# 6. Predict --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("opset", OPSETS)
def test_predict_gathers_rows_and_adds_probabilities(opset, layout):
    rng = np.random.default_rng(800 + opset + len(layout))
    jobs = 3
    shape, weight, model, x0 = linear_setup(rng, opset, layout, jobs)
    variant = build_variant(model, image_sig(layout, shape), Predict())
    job_index = np.array([2, 0, 2, 1, 0], np.int64)
    out = run(variant, x0=x0, job_index=job_index)
    logits = x0[job_index].reshape(len(job_index), -1).astype(np.float64) @ weight
    np.testing.assert_allclose(out["output"], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"], softmax(logits), rtol=1e-5, atol=1e-6)

    probs_model = linear_model(opset, shape, weight, softmax=True)
    sig = image_sig(layout, shape, scores="probabilities", output_name="probs")
    out = run(build_variant(probs_model, sig, Predict()), x0=x0, job_index=job_index)
    np.testing.assert_allclose(out["output"], softmax(logits), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["probabilities"], out["output"])


@pytest.mark.parametrize("opset", OPSETS)
def test_predict_tabular(opset):
    rng = np.random.default_rng(900 + opset)
    weight = rng.standard_normal((F, 2)).astype(np.float32)
    variant = build_variant(linear_model(opset, (F,), weight), tabular_sig(), Predict())
    x0 = rng.standard_normal((2, F)).astype(np.float32)
    job_index = np.array([1, 1, 0, 1], np.int64)
    out = run(variant, x0=x0, job_index=job_index)
    logits = x0[job_index].astype(np.float64) @ weight
    np.testing.assert_allclose(out["output"], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"], softmax(logits), rtol=1e-5, atol=1e-6)


# 7. Validity and name collisions -----------------------------------------------------------------


def all_specs(tabular: bool) -> list[VariantSpec]:
    if tabular:
        return [Predict(), *(TabularOcclusion(score=sc) for sc in SCORES)]
    return [Predict(), *(ImageOcclusion(score=sc) for sc in SCORES),
            *(Rise(score=sc, grid_size=s, zero_baseline=False) for sc in SCORES for s in (1, 2, 5)),
            *(ImageRows(score=sc) for sc in SCORES)]


@pytest.mark.parametrize("opset", OPSETS)
def test_every_variant_passes_the_full_checker(opset):
    rng = np.random.default_rng(opset)
    cases = [(linear_model(opset, example_shape(layout), rng.standard_normal((C * H * W, K))),
              image_sig(layout, example_shape(layout)), False) for layout in LAYOUTS]
    cases.append((linear_model(opset, (F,), rng.standard_normal((F, K))), tabular_sig(), True))
    for model, sig, tabular in cases:
        for spec in all_specs(tabular):
            variant = build_variant(model, sig, spec)
            onnx.checker.check_model(variant.model, full_check=True)
            assert [o.version for o in variant.model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
            iface = variant.interface
            inputs = {i.name for i in variant.model.graph.input}
            assert inputs == {NAMESPACE + n for n in (*iface.constants, *iface.codes, "job_index")}
            outputs = {o.name for o in variant.model.graph.output}
            assert outputs == {NAMESPACE + n for n in (*iface.row_outputs, *iface.slot_outputs)}


COLLIDING = {
    "input": "x0", "flat": "score", "weight": "probabilities", "logits": "target", "probs": "fill",
    "flatten": "grid", "matmul": "shift", "softmax": "mask_sum",
}


@pytest.mark.parametrize("opset", OPSETS)
def test_colliding_names_compose_and_run(opset):
    rng = np.random.default_rng(1000 + opset)
    layout, jobs = "NHWC", 2
    shape = example_shape(layout)
    weight = (rng.standard_normal((C * H * W, K)) / math.sqrt(C * H * W)).astype(np.float32)
    model = linear_model(opset, shape, weight, names=COLLIDING)
    sig = image_sig(layout, shape, input_name="x0", output_name="target")
    x0 = rng.standard_normal((jobs, *shape)).astype(np.float32)
    target = np.array([3, 0], np.int64)
    fill = np.array([1.0, -1.0], np.float32)
    job_index = np.array([1, 0, 0, 1, 0], np.int64)

    predict = build_variant(model, sig, Predict())
    onnx.checker.check_model(predict.model, full_check=True)
    logits = x0[job_index].reshape(len(job_index), -1).astype(np.float64) @ weight
    np.testing.assert_allclose(run(predict, x0=x0, job_index=job_index)["output"], logits, rtol=1e-5, atol=1e-5)

    occlusion = build_variant(model, sig, ImageOcclusion(score="probability"))
    onnx.checker.check_model(occlusion.model, full_check=True)
    windows = image_windows(rng, H, W, random=0)[: len(job_index)]
    got = run(occlusion, x0=x0, target=target, fill=fill, window=windows, job_index=job_index)["score"]
    perturbed = ref_occlude_image(x0, fill, windows, job_index, layout)
    np.testing.assert_allclose(got, ref_scores(perturbed, weight, target, job_index, "probability"),
                               rtol=1e-5, atol=1e-5)

    rise = build_variant(model, sig, Rise(score="logit", grid_size=2, zero_baseline=False))
    onnx.checker.check_model(rise.model, full_check=True)
    grids, shifts = rise_codes(rng, len(job_index), 2, H, W)
    out = run(rise, x0=x0, target=target, fill=fill, grid=grids, shift=shifts, job_index=job_index)
    masks = ref_masks(grids, shifts, H, W)
    m = channel_mask(masks, layout)
    perturbed = x0[job_index] * m + fill[job_index].reshape(-1, 1, 1, 1) * (1 - m)
    scores = ref_scores(perturbed, weight, target, job_index, "logit")
    np.testing.assert_allclose(out["score"], scores, rtol=1e-5, atol=1e-5)
    expected = np.stack([(scores[job_index == j, None] * masks[job_index == j].reshape(-1, H * W)).sum(0)
                         for j in range(jobs)])
    np.testing.assert_allclose(out["mask_sum"], expected, rtol=1e-5, atol=1e-5)

    tab_names = {"input": "feature", "weight": "fill", "logits": "score", "matmul": "job_index"}
    tab_weight = rng.standard_normal((F, 3)).astype(np.float32)
    tab_model = linear_model(opset, (F,), tab_weight, names=tab_names)
    tab_sig = tabular_sig(input_name="feature", output_name="score")
    tab = build_variant(tab_model, tab_sig, TabularOcclusion(score="logit"))
    onnx.checker.check_model(tab.model, full_check=True)
    tx0 = rng.standard_normal((jobs, F)).astype(np.float32)
    tfill = rng.standard_normal((jobs, F)).astype(np.float32)
    feature = np.array([-1, 0, 4, 2, 3], np.int64)
    got = run(tab, x0=tx0, target=np.array([2, 1], np.int64), fill=tfill, feature=feature, job_index=job_index)
    perturbed = ref_occlude_tabular(tx0, tfill, feature, job_index)
    np.testing.assert_allclose(got["score"], ref_scores(perturbed, tab_weight, np.array([2, 1]), job_index, "logit"),
                               rtol=1e-5, atol=1e-5)
