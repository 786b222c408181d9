"""What a model looks like from outside, checked against its model.yaml: the signature inspection.

From the (shape-inferred) graph and model.yaml this works out the one input explaind feeds and the
one output it scores, their dtypes and shapes, whether the model is an image model (rank-4 input in
the configured layout, the preprocessing resolved against the graph's size and channels) or a
tabular one ([N, F] input, F feature names, an optional [K, F] background), the classes and their
labels, and that model.yaml's named layers exist. Kept apart from the file and safety checks: it
only ever sees a model that is already known to be safe to read.

Not to be confused with ``explaind.onnxgraph.signature.ModelSignature``, the part of this that the
graph builders need (derived from a loaded model by the explainer).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.shape_inference

from explaind.errors import ModelConfigError
from explaind.models.config import ModelConfig, Preprocess
from explaind.models.files import read_background_array, read_labels_file
from explaind.models.text import fmt_shape, quoted_names


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of a graph input or output; -1 marks a dynamic dimension.

    Non-tensor values (sequences, maps) get dtype ``object`` and shape ``()``.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Signature:
    """Everything the service needs to know about a model's input and output side.

    ``preprocess`` is set for image models only (resolved: size, scale, mean and std all filled in);
    ``feature_names`` is empty for image models; ``background`` is None unless model.yaml names one.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    input_spec: TensorSpec
    output_spec: TensorSpec
    example_shape: tuple[int, ...]
    num_classes: int
    labels: tuple[str, ...]
    feature_names: tuple[str, ...] = ()
    preprocess: Preprocess | None = None
    background: np.ndarray | None = field(default=None, repr=False)


def infer_shapes(model_bytes: bytes, model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with ONNX shape inference applied; the exporter's declared shapes if inference fails.

    Takes the serialized model the caller already has, so inference does not serialize it again.
    """
    try:
        return onnx.shape_inference.infer_shapes(model_bytes)
    except Exception:
        return model  # fall back to the shapes the exporter declared


def inspect_signature(graph: onnx.GraphProto, config: ModelConfig, folder: Path, background_limit: int) -> Signature:
    """Check the graph against model.yaml and work out everything the engine needs."""
    initializers = {init.name for init in graph.initializer}
    graph_inputs = [v for v in graph.input if v.name not in initializers]
    inputs = tuple(_spec(v) for v in graph_inputs)
    outputs = tuple(_spec(v) for v in graph.output)

    input_value = _pick_input(graph_inputs, config)
    output_value = _pick_output(list(graph.output), config)

    input_spec = _spec(input_value)
    input_shape = _shape_of(input_value.type)
    if not input_value.type.HasField("tensor_type"):
        raise ModelConfigError(f"input {input_value.name!r} is not a tensor")
    if input_spec.dtype != np.float32:
        raise ModelConfigError(
            f"input {input_value.name!r} has dtype {onnx.TensorProto.DataType.Name(input_value.type.tensor_type.elem_type).lower()}; "
            "explaind needs a float32 input"
        )

    num_classes, labels = _classes(output_value, config, folder)
    output_spec = _spec(output_value)

    if config.kind == "image":
        example_shape, preprocess = _image_shape(input_value.name, input_shape, config)
        signature = Signature(inputs, outputs, input_spec, output_spec, example_shape, num_classes, labels,
                              preprocess=preprocess)
    else:
        num_features = _tabular_features(input_value.name, input_shape)
        feature_names = config.feature_names or tuple(f"f{i}" for i in range(num_features))
        if len(feature_names) != num_features:
            raise ModelConfigError(
                f"model.yaml: feature_names: {len(feature_names)} names but the input has {num_features} features"
            )
        background = None
        if config.background is not None:
            array = read_background_array(folder, config.background, background_limit)
            background = check_background(array, config.background, num_features)
        signature = Signature(inputs, outputs, input_spec, output_spec, (num_features,), num_classes, labels,
                              feature_names=feature_names, background=background)

    _check_layers(graph, config)
    return signature


def check_background(array: np.ndarray, rel: str, num_features: int) -> np.ndarray:
    """model.yaml's background ``rel`` as K >= 1 finite rows of the model's features: read-only float32 [K, F]."""
    where = f"model.yaml: background: {rel!r}"
    if array.dtype.kind not in "biuf":
        raise ModelConfigError(f"{where} has dtype {array.dtype}; expected real numbers")
    if array.ndim != 2 or array.shape[1] != num_features or array.shape[0] < 1:
        raise ModelConfigError(
            f"{where} has shape {fmt_shape(array.shape)}; expected [K, {num_features}] "
            f"(K >= 1 reference rows of the model's {num_features} features)"
        )
    background = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(background)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise ModelConfigError(f"{where} contains non-finite values (NaN or inf), first in row {row}")
    background.setflags(write=False)
    return background


def _np_dtype(elem_type: int) -> np.dtype:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return np.dtype(object)


def _shape_of(type_proto: onnx.TypeProto) -> tuple[int, ...] | None:
    """Static dims as ints, dynamic or symbolic ones as -1; None when the rank is unknown."""
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") else -1 for d in type_proto.tensor_type.shape.dim
    )


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        return TensorSpec(value.name, np.dtype(object), ())
    return TensorSpec(value.name, _np_dtype(value.type.tensor_type.elem_type), _shape_of(value.type) or ())


def _pick_input(graph_inputs: list[onnx.ValueInfoProto], config: ModelConfig) -> onnx.ValueInfoProto:
    names = [v.name for v in graph_inputs]
    if config.input_name is not None:
        if config.input_name not in names:
            raise ModelConfigError(
                f"model.yaml: input.name: the graph has no input {config.input_name!r}; its inputs are {quoted_names(names)}"
            )
        chosen = next(v for v in graph_inputs if v.name == config.input_name)
    elif len(graph_inputs) == 1 or (config.exported_gradients and len(graph_inputs) == 2):
        chosen = next(v for v in graph_inputs if not config.exported_gradients
                      or v.name != config.exported_gradients[0])
    else:
        raise ModelConfigError(
            f"model.onnx has {len(graph_inputs)} inputs ({quoted_names(names)}); set input.name in model.yaml"
        )
    seed = config.exported_gradients[0] if config.exported_gradients else None
    if seed is not None and seed not in names:
        raise ModelConfigError(f"model.yaml: exported_gradients.seed: the graph has no input {seed!r}; "
                               f"its inputs are {quoted_names(names)}")
    others = [n for n in names if n not in (chosen.name, seed)]
    if others:
        # Every non-initializer graph input is required at run time, and explaind feeds one.
        raise ModelConfigError(
            f"model.onnx needs inputs {quoted_names(others)} besides {chosen.name!r}; explaind feeds exactly one input"
        )
    return chosen


def _pick_output(graph_outputs: list[onnx.ValueInfoProto], config: ModelConfig) -> onnx.ValueInfoProto:
    names = [v.name for v in graph_outputs]
    if config.exported_gradients and config.exported_gradients[1] not in names:
        raise ModelConfigError(f"model.yaml: exported_gradients.input_gradient: the graph has no output "
                               f"{config.exported_gradients[1]!r}; its outputs are {quoted_names(names)}")
    if config.output_name is not None:
        for value in graph_outputs:
            if value.name == config.output_name:
                return value
        raise ModelConfigError(
            f"model.yaml: output.name: the graph has no output {config.output_name!r}; its outputs are {quoted_names(names)}"
        )
    if len(graph_outputs) == 1:
        return graph_outputs[0]
    raise ModelConfigError(
        f"model.onnx has {len(graph_outputs)} outputs ({quoted_names(names)}); set output.name in model.yaml"
    )


def _classes(output: onnx.ValueInfoProto, config: ModelConfig, folder: Path) -> tuple[int, tuple[str, ...]]:
    name = output.name
    if not output.type.HasField("tensor_type"):
        raise ModelConfigError(
            f"output {name!r} is not a tensor (a sequence or map, e.g. from ZipMap); "
            "export the classifier with a plain [N, K] score tensor"
        )
    dtype = _np_dtype(output.type.tensor_type.elem_type)
    if dtype.kind != "f":
        raise ModelConfigError(f"output {name!r} has dtype {dtype}; class scores must be floating point")

    if config.labels is not None:
        labels: tuple[str, ...] | None = config.labels
        where = f"model.yaml: labels: {len(config.labels)} labels"
    elif config.labels_file is not None:
        labels = read_labels_file(folder, config.labels_file)
        where = f"model.yaml: labels_file: {config.labels_file!r} has {len(labels)} labels"
    else:
        labels, where = None, ""

    shape = _shape_of(output.type)
    if shape is not None and len(shape) != 2:
        raise ModelConfigError(
            f"output {name!r} has shape {fmt_shape(shape)}; a classifier output must be [N, K] (rank 2)"
        )
    classes = shape[1] if shape is not None else -1
    if classes < 0:
        if labels is None:
            raise ModelConfigError(
                f"output {name!r} has no static class dimension; list the labels in model.yaml to fix K"
            )
        classes = len(labels)
    if classes < 1:
        raise ModelConfigError(f"output {name!r} has {classes} classes")
    if labels is None:
        labels = tuple(str(i) for i in range(classes))
    elif len(labels) != classes:
        raise ModelConfigError(f"{where} but the output has {classes} classes")
    return classes, labels


def _image_shape(
    input_name: str, shape: tuple[int, ...] | None, config: ModelConfig
) -> tuple[tuple[int, ...], Preprocess]:
    layout = config.layout
    if shape is None or len(shape) != 4:
        got = "unknown rank" if shape is None else f"shape {fmt_shape(shape)}"
        raise ModelConfigError(f"input {input_name!r} has {got}; an image model needs a rank-4 {layout} input")
    c_at, h_at, w_at = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
    channels = shape[c_at]
    if channels not in (1, 3):
        got = "a dynamic channel dimension" if channels < 0 else f"{channels} channels"
        raise ModelConfigError(
            f"input {input_name!r} {fmt_shape(shape)} has {got} at index {c_at} ({layout}); "
            "expected 1 or 3 (is input.layout right?)"
        )

    pre = config.preprocess or Preprocess(size=None, scale=255.0, mean=None, std=None)
    graph_hw = (shape[h_at], shape[w_at])
    if pre.size is not None:
        for axis, graph_dim, wanted in zip(("height", "width"), graph_hw, pre.size):
            if graph_dim >= 0 and graph_dim != wanted:
                raise ModelConfigError(
                    f"model.yaml: preprocess.size: {list(pre.size)} does not match the graph's input "
                    f"{axis} {graph_dim} (input {input_name!r} {fmt_shape(shape)})"
                )
        size = pre.size
    elif graph_hw[0] >= 0 and graph_hw[1] >= 0:
        size = (graph_hw[0], graph_hw[1])
    else:
        raise ModelConfigError(
            f"input {input_name!r} {fmt_shape(shape)} has a dynamic height or width; set preprocess.size in model.yaml"
        )

    for key, values in (("mean", pre.mean), ("std", pre.std)):
        if values is not None and len(values) != channels:
            raise ModelConfigError(
                f"model.yaml: preprocess.{key}: {len(values)} values but the input has {channels} channels"
            )
    resolved = Preprocess(
        size=size,
        scale=pre.scale,
        mean=pre.mean if pre.mean is not None else (0.0,) * channels,
        std=pre.std if pre.std is not None else (1.0,) * channels,
    )
    example = (channels, size[0], size[1]) if layout == "NCHW" else (size[0], size[1], channels)
    return example, resolved


def _tabular_features(input_name: str, shape: tuple[int, ...] | None) -> int:
    if shape is None or len(shape) != 2:
        got = "unknown rank" if shape is None else f"shape {fmt_shape(shape)}"
        raise ModelConfigError(f"input {input_name!r} has {got}; a tabular model needs a [N, F] input")
    if shape[1] < 1:
        raise ModelConfigError(
            f"input {input_name!r} {fmt_shape(shape)} has no static feature dimension; export it with F fixed"
        )
    return shape[1]


def _check_layers(graph: onnx.GraphProto, config: ModelConfig) -> None:
    if not config.layers:
        return
    produced = [out for node in graph.node for out in node.output if out]
    known = set(produced)
    for layer, tensor in config.layers.items():
        if tensor in known:
            continue
        close = difflib.get_close_matches(tensor, produced, n=3, cutoff=0.5)
        hint = close or produced[:5]
        label = "close matches" if close else "some valid names"
        raise ModelConfigError(
            f"model.yaml: layers.{layer}: tensor {tensor!r} is not produced by any node in the graph; "
            f"{label}: {quoted_names(hint)}"
        )
