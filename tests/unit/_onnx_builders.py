"""Tiny hand-built ONNX classifiers for unit tests: fast to build, no torch needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 9  # what every supported onnxruntime accepts
OPSET = 17


def _model(graph: onnx.GraphProto, extra_opsets: tuple[tuple[str, int], ...] = ()) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="explaind-tests")
    model.ir_version = IR_VERSION
    return model


def image_model(
    channels: int = 3, size: int = 4, classes: int = 3, dynamic_hw: bool = False, nhwc: bool = False
) -> onnx.ModelProto:
    """input [N,C,H,W] -> GlobalAveragePool ("pooled") -> Flatten ("flat") -> Gemm -> logits [N,K].

    With ``nhwc`` the input is [N,H,W,C] and a Transpose comes first.
    """
    rng = np.random.default_rng(0)
    h = "H" if dynamic_hw else size
    w = "W" if dynamic_hw else size
    weight = numpy_helper.from_array(rng.standard_normal((classes, channels)).astype(np.float32), "fc.weight")
    bias = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "fc.bias")
    first = "input"
    nodes = []
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["input"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        first = "nchw"
    nodes += [
        helper.make_node("GlobalAveragePool", [first], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_image",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["N", h, w, channels] if nhwc else ["N", channels, h, w]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=[weight, bias],
    )
    return _model(graph)


def tabular_model(features: int = 4, classes: int = 2) -> onnx.ModelProto:
    """x [N,F] @ W [F,K] -> scores [N,K]."""
    weight = np.arange(features * classes, dtype=np.float32).reshape(features, classes) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["scores"], name="matmul")],
        "tiny_tabular",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    return _model(graph)


def custom_domain_model() -> onnx.ModelProto:
    """A tabular model with one node from a custom domain, as if it needed a custom-op library."""
    weight = np.ones((4, 2), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["mm"], name="matmul"),
            helper.make_node("MyOp", ["mm"], ["scores"], name="Foo", domain="custom.x"),
        ],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    return _model(graph, extra_opsets=(("custom.x", 1),))


def ort_rejects_model() -> onnx.ModelProto:
    """Passes the ONNX checker (no full check) but onnxruntime refuses it: Mul on strings."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["s"], name="to_str", to=TensorProto.STRING),
            helper.make_node("Mul", ["s", "s"], ["s2"], name="mul_str"),
            helper.make_node("Cast", ["s2"], ["f"], name="to_float", to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["f", "W"], ["scores"], name="matmul"),
        ],
        "ort_rejects",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), "W")],
    )
    return _model(graph)


def subgraph_constant_model() -> onnx.ModelProto:
    """A tabular model whose weights come from a Constant node inside an If branch."""
    weight = numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), "branch_weight")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["Wc"], name="const_w", value=weight)],
        "branch",
        [],
        [helper.make_tensor_value_info("Wc", TensorProto.FLOAT, [4, 2])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["cond"], name="cond", value=numpy_helper.from_array(np.array(True))),
            helper.make_node("If", ["cond"], ["W"], name="pick", then_branch=branch, else_branch=branch),
            helper.make_node("MatMul", ["x", "W"], ["scores"], name="matmul"),
        ],
        "subgraph_constant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
    )
    return _model(graph)


def write_model_folder(
    root: Path,
    name: str,
    model: onnx.ModelProto | None,
    config: dict | str | None,
    *,
    external_data: bool = False,
    convert_attribute: bool = False,
) -> Path:
    """Create ``root/name`` with model.onnx (optionally with external data) and model.yaml."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    if model is not None:
        if external_data:
            onnx.save_model(
                model,
                str(folder / "model.onnx"),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location="weights.bin",
                size_threshold=0,
                convert_attribute=convert_attribute,
            )
        else:
            onnx.save_model(model, str(folder / "model.onnx"))
    if config is not None:
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        (folder / "model.yaml").write_text(text)
    return folder


def _tensors_everywhere(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    found = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                found.append(attr.t)
            if attr.HasField("g"):
                found += _tensors_everywhere(attr.g)
    return found


def set_external_location(folder: Path, location: str) -> int:
    """Point every external tensor of folder/model.onnx (subgraphs too) at ``location``.

    Returns how many tensors were redirected, so a test can tell it changed something.
    """
    path = folder / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    changed = 0
    for tensor in _tensors_everywhere(model.graph):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
                changed += 1
    path.write_bytes(model.SerializeToString())
    return changed


def dynamic_view_model(classes: int = 2) -> onnx.ModelProto:
    """input [N,3,H,W] (symbolic N, H, W) -> Conv 3x3 (4 channels) -> Relu -> "layer", the Relu viewed as
    [N, -1, H, W] with the shape read from the graph (Shape, Slice, Concat, Reshape: how torch exports
    ``x.view(n, -1, h, w)`` with dynamic axes), so shape inference leaves its channel count symbolic
    unless the input's dims are fixed -> Concat with itself ("layer2", 8 channels) -> GlobalAveragePool
    -> Flatten -> Gemm -> logits [N, classes]."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "conv_w"),
             numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "conv_b"),
             numpy_helper.from_array(np.array([0], np.int64), "at0"),
             numpy_helper.from_array(np.array([1], np.int64), "at1"),
             numpy_helper.from_array(np.array([2], np.int64), "at2"),
             numpy_helper.from_array(np.array([4], np.int64), "at4"),
             numpy_helper.from_array(np.array([-1], np.int64), "any"),
             numpy_helper.from_array(rng.normal(size=(classes, 8)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.normal(size=classes).astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("Shape", ["relu"], ["relu_shape"]),
             helper.make_node("Slice", ["relu_shape", "at0", "at1"], ["batch"]),
             helper.make_node("Slice", ["relu_shape", "at2", "at4"], ["spatial"]),
             helper.make_node("Concat", ["batch", "any", "spatial"], ["view_shape"], axis=0),
             helper.make_node("Reshape", ["relu", "view_shape"], ["layer"]),
             helper.make_node("Concat", ["layer", "layer"], ["layer2"], axis=1),
             helper.make_node("GlobalAveragePool", ["layer2"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "dynamic_view",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    return _model(graph)
