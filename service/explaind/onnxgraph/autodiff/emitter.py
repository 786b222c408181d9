"""Writes the backward nodes: fresh names, typed constants, and the opset-dependent operator forms.

Every node is written for the model's own default-domain opset (11 to 21). The operators whose
signature changed in that range are written through methods here: Squeeze/Unsqueeze/ReduceSum take
`axes` as an input from 13 on, ReduceMean/ReduceMax from 18 on.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .info import GraphInfo, same_dim

SCOPE = "explaind::ad"
INT64_MAX = int(np.iinfo(np.int64).max)
INT64_MIN = int(np.iinfo(np.int64).min)


class Emitter:
    """Accumulates the nodes and initializers of the backward graph."""

    def __init__(self, opset: int, info: GraphInfo, taken: set[str]) -> None:
        self.opset = opset
        self.info = info
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = taken
        self._counter = itertools.count()
        self._consts: dict[tuple, str] = {}
        self._shapes: dict[str, str] = {}

    # Names, constants, nodes -------------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        while True:
            name = f"{SCOPE}/{hint}_{next(self._counter)}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        """An initializer holding `value` with its own dtype (deduplicated)."""
        array = np.ascontiguousarray(value)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh(hint)
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def discard_if_unused(self, name: str) -> None:
        """Drop the initializer `name` (from const) when no emitted node reads it."""
        if any(name in n.input for n in self.nodes):
            return
        self.initializers[:] = [t for t in self.initializers if t.name != name]
        for key in [k for k, v in self._consts.items() if v == name]:
            del self._consts[key]

    def ints(self, values: list[int] | tuple[int, ...] | int) -> str:
        """An int64 constant: 1-D for a list, 0-D for an int."""
        return self.const(np.array(values, np.int64), "ints")

    def scalar(self, value: float, elem_type: int) -> str:
        """A 0-D constant of the given ONNX element type (the gradient's dtype)."""
        return self.const(np.array(value, helper.tensor_dtype_to_np_dtype(elem_type or TensorProto.FLOAT)), "scalar")

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs: object) -> str:
        """Append a node; return its (first) output. `outputs` is a count or explicit names."""
        names = [self.fresh(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.fresh(op_type), **attrs))
        return names[0]

    # Shapes ------------------------------------------------------------------------------------

    def shape(self, x: str) -> str:
        """Shape(x) read at run time (one Shape node per tensor).

        Always at run time: inference can be wrong (pooling with ceil_mode) and the batch is dynamic.
        """
        if x not in self._shapes:
            self._shapes[x] = self.op("Shape", [x])
        return self._shapes[x]

    def dims_slice(self, shape: str, start: int, end: int) -> str:
        """shape[start:end] of a 1-D int64 tensor."""
        return self.op("Slice", [shape, self.ints([start]), self.ints([end]), self.ints([0])])

    def zeros_like(self, x: str, elem_type: int) -> str:
        return self.op(
            "ConstantOfShape",
            [self.shape(x)],
            value=helper.make_tensor("value", elem_type or TensorProto.FLOAT, [1], [0]),
        )

    def reshape_like(self, g: str, x: str) -> str:
        return self.op("Reshape", [g, self.shape(x)])

    def flatten(self, x: str) -> str:
        return self.op("Reshape", [x, self.ints([-1])])

    # Opset-dependent forms ---------------------------------------------------------------------

    def unsqueeze(self, x: str, axes: list[int] | str) -> str:
        """Unsqueeze; `axes` may be a runtime tensor from opset 13 on."""
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, axes if isinstance(axes, str) else self.ints(list(axes))])
        if isinstance(axes, str):
            raise ValueError("runtime axes need opset 13")
        return self.op("Unsqueeze", [x], axes=list(axes))

    def squeeze(self, x: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", [x, self.ints(list(axes))])
        return self.op("Squeeze", [x], axes=list(axes))

    def reduce(self, op_type: str, x: str, axes: list[int] | str, keepdims: bool = True) -> str:
        """ReduceSum/ReduceMean/ReduceMax over `axes` (a non-empty list, or a tensor at new opsets)."""
        switch = 13 if op_type == "ReduceSum" else 18
        if self.opset >= switch:
            axes_input = axes if isinstance(axes, str) else self.ints(list(axes))
            return self.op(op_type, [x, axes_input], keepdims=int(keepdims))
        if isinstance(axes, str):
            raise ValueError(f"runtime axes need opset {switch} for {op_type}")
        return self.op(op_type, [x], axes=list(axes), keepdims=int(keepdims))

    def reduce_sum(self, x: str, axes: list[int] | str, keepdims: bool = True) -> str:
        return self.reduce("ReduceSum", x, axes, keepdims)

    def slice(
        self, x: str, starts: list[int] | str, ends: list[int] | str, axes: list[int], steps: list[int] | None = None
    ) -> str:
        """Slice with starts/ends given as int lists or as run-time int64 tensors."""
        inputs = [
            starts if isinstance(starts, str) else self.ints(starts),
            ends if isinstance(ends, str) else self.ints(ends),
            self.ints(axes),
        ]
        if steps is not None:
            inputs.append(self.ints(steps))
        return self.op("Slice", [x, *inputs])

    def add_all(self, terms: list[str]) -> str:
        """The sum of gradient contributions (one Sum node for several)."""
        return terms[0] if len(terms) == 1 else self.op("Sum", terms)

    # Broadcasting ------------------------------------------------------------------------------

    def unbroadcast(self, g: str, g_dims: list | None, target: str) -> str:
        """Sum `g` (shaped like a broadcast result with dims `g_dims`) back to the shape of `target`.

        d/dA sum(seed * f(broadcast(A))) sums the incoming gradient over the axes broadcasting added
        (the leading ones) or stretched (A's size 1). Axes decided statically are reduced with one
        ReduceSum; an axis inference cannot decide is handled at run time: Where(dim(A) == 1,
        sum over the axis, g) sliced to dim(A).
        """
        t_dims = self.info.dims(target)
        if t_dims is None or g_dims is None:
            return self._unbroadcast_at_run_time(g, target)
        lead = len(g_dims) - len(t_dims)
        if lead < 0:
            raise ShapeUnknown(f"{target!r} has a higher rank than the broadcast result")
        if lead == 0 and all(same_dim(a, b) for a, b in zip(t_dims, g_dims)):
            return g
        static_axes = list(range(lead))
        runtime_axes = []
        for i, a in enumerate(t_dims):
            b = g_dims[i + lead]
            if a == 1:
                if b != 1:
                    static_axes.append(i + lead)
            elif isinstance(a, int) or same_dim(a, b):
                continue
            else:
                runtime_axes.append(i)
        result = self.reduce_sum(g, static_axes, keepdims=True) if static_axes else g
        for i in runtime_axes:
            axis = i + lead
            summed = self.reduce_sum(result, [axis], keepdims=True)
            dim = self.dims_slice(self.shape(target), i, i + 1)
            is_one = self.op("Equal", [dim, self.ints([1])])
            result = self.op("Where", [is_one, summed, result])
            result = self.slice(result, [0], dim, [axis])
        if lead:
            result = self.op("Reshape", [result, self.shape(target)])
        return result

    def _unbroadcast_at_run_time(self, g: str, target: str) -> str:
        """Ranks unknown: reduce over the axes where Shape(target), left-padded with ones to g's
        rank, differs from Shape(g) (broadcast never changes a size otherwise). Opset 13+."""
        if self.opset < 13:
            raise ShapeUnknown(f"the rank of {target!r} or of its broadcast result is unknown (needs opset 13)")
        g_shape, t_shape = self.shape(g), self.shape(target)
        missing = self.op("Sub", [self.op("Size", [g_shape]), self.op("Size", [t_shape])])
        ones = self.op(
            "ConstantOfShape", [self.op("Reshape", [missing, self.ints([1])])],
            value=helper.make_tensor("value", TensorProto.INT64, [1], [1]),
        )
        padded = self.op("Concat", [ones, t_shape], axis=0)
        differs = self.op("Not", [self.op("Equal", [padded, g_shape])])
        axes = self.op("Reshape", [self.op("NonZero", [differs]), self.ints([-1])])
        summed = self.op("ReduceSum", [g, axes], keepdims=1, noop_with_empty_axes=1)
        return self.op("Reshape", [summed, t_shape])


class ShapeUnknown(Exception):
    """A rule needs a rank or size that neither inference nor the graph provides."""
