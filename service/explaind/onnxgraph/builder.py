"""A small helper for writing ONNX subgraphs that work at every opset from 11 on.

Prefixes and suffixes are spliced into the user's model, so they must use the model's own opset.
The few operators whose signatures changed between opsets 11 and 21 (Unsqueeze, Squeeze take `axes`
as an attribute before 13 and as an input after) are written through methods here; everything else
used by explaind's subgraphs has kept its signature since opset 11.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Every tensor explaind adds lives under this prefix so it cannot collide with the model's names.
NAMESPACE = "explaind::"

MIN_OPSET = 11


class GraphBuilder:
    """Accumulates nodes, initializers, inputs and outputs of a subgraph for one opset."""

    def __init__(self, opset: int, scope: str) -> None:
        if opset < MIN_OPSET:
            raise ValueError(f"opset {opset} is below the supported minimum {MIN_OPSET}")
        self.opset = opset
        self.scope = scope
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._counter = itertools.count()
        self.model_position: int | None = None  # where the model's nodes go (compose.splice)

    def mark_model(self) -> None:
        """Nodes added so far form the prefix; nodes added after this run after the model."""
        self.model_position = len(self.nodes)

    def name(self, hint: str) -> str:
        return f"{NAMESPACE}{self.scope}/{hint}_{next(self._counter)}"

    def input(self, name: str, elem_type: int, shape: list[int | str | None]) -> str:
        """Declare a graph input the engine feeds as `name` (the graph calls it NAMESPACE + name)."""
        self.inputs.append(helper.make_tensor_value_info(NAMESPACE + name, elem_type, shape))
        return NAMESPACE + name

    def output(self, tensor: str, name: str, elem_type: int, shape: list[int | str | None]) -> str:
        """Expose `tensor` as a graph output the engine reads as `name` (NAMESPACE + name)."""
        self.op("Identity", [tensor], out=NAMESPACE + name)
        self.outputs.append(helper.make_tensor_value_info(NAMESPACE + name, elem_type, shape))
        return NAMESPACE + name

    def const(self, value: np.ndarray | float | int | list, hint: str = "const") -> str:
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: object) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    # Operators whose signature depends on the opset -----------------------------------------

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.const(np.array(axes, np.int64), "axes")])
        return self.op("Unsqueeze", [x], axes=axes)

    def squeeze(self, x: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", [x, self.const(np.array(axes, np.int64), "axes")])
        return self.op("Squeeze", [x], axes=axes)

    def reduce(self, op: str, x: str, axes: list[int], keepdims: int = 1) -> str:
        """ReduceSum takes axes as an input from opset 13, the other reductions from opset 18."""
        if self.opset >= (13 if op == "ReduceSum" else 18):
            return self.op(op, [x, self.const(np.array(axes, np.int64), "axes")], keepdims=keepdims)
        return self.op(op, [x], axes=axes, keepdims=keepdims)

    # Conveniences -----------------------------------------------------------------------------

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", [x], to=to)

    def one_hot_rows(self, job_index: str, count: str) -> str:
        """[R] int64 row -> slot, and a scalar-like [1] slot count -> [R, J] float32 one-hot."""
        slots = self.op(
            "Range",
            [self.const(np.array(0, np.int64)), self.squeeze(count, [0]), self.const(np.array(1, np.int64))],
        )
        equal = self.op("Equal", [self.unsqueeze(job_index, [1]), slots])
        return self.cast(equal, TensorProto.FLOAT)

    def job_rows(self, per_job: str, job_index: str, elem_type: int = TensorProto.FLOAT) -> str:
        """[J, ...] per-job tensor -> one that broadcasts against [R, ...] rows: the tensor itself when
        the batch holds one job (no [R, ...] copy: a pass over the batch saved, ~4% of a small CNN's
        time), else its rows gathered by `job_index`. An `If` on J == 1 picks the branch per batch."""
        jobs = self.op("Gather", [self.op("Shape", [per_job]), self.const(np.array(0, np.int64))])
        single = self.op("Equal", [jobs, self.const(np.array(1, np.int64))])
        same, gathered = self.name("single_job"), self.name("gathered")
        then_branch = helper.make_graph([helper.make_node("Identity", [per_job], [same], name=self.name("Identity"))],
                                        self.name("one_job"), [], [helper.make_tensor_value_info(same, elem_type, None)])
        else_branch = helper.make_graph(
            [helper.make_node("Gather", [per_job, job_index], [gathered], axis=0, name=self.name("Gather"))],
            self.name("jobs"), [], [helper.make_tensor_value_info(gathered, elem_type, None)])
        return self.op("If", [single], then_branch=then_branch, else_branch=else_branch)

    def leading_dim(self, x: str) -> str:
        """Shape(x)[0:1] as a [1] int64 tensor."""
        shape = self.op("Shape", [x])
        return self.op(
            "Slice",
            [shape, self.const(np.array([0], np.int64)), self.const(np.array([1], np.int64))],
        )
