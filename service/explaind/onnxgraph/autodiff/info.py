"""What the rules may know statically about the forward graph: types, shapes and constant values.

Shapes come from ONNX shape inference and are used only when they decide something for certain (an
int equal to 1, two dims with the same symbolic name); anything else is read at run time with Shape
nodes, so a gradient graph works for every batch size and, where the operator allows, image size.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

Dim = int | str | None  # a known size, a symbolic name, or unknown

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16})


def _dims(type_proto: onnx.TypeProto) -> tuple[int, list[Dim] | None]:
    if not type_proto.HasField("tensor_type"):
        return 0, None
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return tensor.elem_type, None
    dims: list[Dim] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tensor.elem_type, dims


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    for kwargs in ({"data_prop": True}, {}):
        try:
            return onnx.shape_inference.infer_shapes(model, strict_mode=False, **kwargs)
        except Exception:  # inference is a convenience: a model it cannot handle is still served
            continue
    return model


class GraphInfo:
    """Element types, dims and constant values of the tensors of one graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        inferred = _infer(model)
        self.types: dict[str, tuple[int, list[Dim] | None]] = {}
        graph = inferred.graph
        for vi in [*graph.value_info, *graph.output, *graph.input]:
            elem, dims = _dims(vi.type)
            old_elem, old_dims = self.types.get(vi.name, (0, None))
            self.types[vi.name] = (elem or old_elem, _merge(old_dims, dims))
        for name in _untrusted_sizes(model):
            elem, dims = self.types.get(name, (0, None))
            if dims is not None:
                self.types[name] = (elem, [d if isinstance(d, str) else None for d in dims])
        self.constants: dict[str, np.ndarray] = {}
        for init in model.graph.initializer:
            self.constants[init.name] = numpy_helper.to_array(init)
            self.types[init.name] = (init.data_type, [int(d) for d in init.dims])
        for node in model.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                value = _constant_value(node)
                if value is not None:
                    self.constants[node.output[0]] = value
                    self.types.setdefault(
                        node.output[0], (onnx.helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))
                    )

    def elem_type(self, name: str) -> int:
        """The ONNX element type, 0 when unknown."""
        return self.types.get(name, (0, None))[0]

    def is_float(self, name: str) -> bool:
        """True unless the tensor is known to hold integers or booleans (those carry no gradient)."""
        elem = self.elem_type(name)
        return elem == 0 or elem in FLOAT_TYPES

    def dims(self, name: str) -> list[Dim] | None:
        """Per-axis sizes (int, symbolic name or None) or None when even the rank is unknown."""
        dims = self.types.get(name, (0, None))[1]
        return None if dims is None else list(dims)

    def rank(self, name: str) -> int | None:
        dims = self.dims(name)
        return None if dims is None else len(dims)

    def static_shape(self, name: str) -> list[int] | None:
        """The shape when every dim is a known int, else None."""
        dims = self.dims(name)
        if dims is None or not all(isinstance(d, int) for d in dims):
            return None
        return [int(d) for d in dims]  # type: ignore[arg-type]

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output, else None."""
        return self.constants.get(name) if name else None


def _merge(a: list[Dim] | None, b: list[Dim] | None) -> list[Dim] | None:
    """Two views of one shape, per dim the most precise (int, then name, then unknown)."""
    if a is None or b is None or len(a) != len(b):
        return b if b is not None else a
    return [x if isinstance(x, int) else y if isinstance(y, int) else x or y for x, y in zip(a, b)]


def _untrusted_sizes(model: onnx.ModelProto) -> set[str]:
    """Tensors downstream of a ceil_mode pooling with padding.

    ONNX shape inference keeps a last window that starts in the right padding, which onnxruntime
    (like torch) drops, so the inferred sizes there and below may be one too large: the rules read
    those at run time instead.
    """
    tainted: set[str] = set()
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        suspicious = (
            node.op_type in ("MaxPool", "AveragePool", "LpPool")
            and attrs.get("ceil_mode", 0)
            and (any(attrs.get("pads", [])) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"))
        )
        if suspicious or any(i in tainted for i in node.input):
            tainted.update(o for o in node.output if o)
    return tainted


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), np.int64)
    return None


def same_dim(a: Dim, b: Dim) -> bool:
    """True when two dims are certainly equal (same int, or the same symbolic name)."""
    return a is not None and a == b
