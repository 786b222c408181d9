"""Single-operator graphs and a finite-difference checker for the autodiff rules.

A :class:`Case` is a tiny graph (usually one node) with its input values. ``check`` derives the
gradient graph, runs it, and compares d sum(seed * y) / d x with central differences of the forward
graph in float64. Where onnxruntime's CPU provider has no float64 kernel for the operator (Conv,
AveragePool, ...), the float64 graphs run on ONNX's reference evaluator and the float32 gradient
graph runs on onnxruntime against the same float64 differences.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from explaind.onnxgraph.autodiff import differentiate

GRAD = "explaind::grad::"
SEED = "explaind::seed"
STEP = 1e-6
TOL64 = 1e-6
TOL32 = 1e-5


class C:
    """Marks an input value as an initializer (a weight, or an axes/pads/shape constant)."""

    def __init__(self, value: np.ndarray | list | float) -> None:
        self.value = np.asarray(value)


@dataclass
class Case:
    id: str
    nodes: list[tuple]  # (op_type, inputs, outputs, attrs[, domain])
    values: dict[str, np.ndarray | C]
    opset: int = 17
    output: str = "y"
    wrt: list[str] | None = None  # default: every float graph input
    ort64: bool = True  # onnxruntime's CPU provider runs the forward op in float64
    shapes: dict[str, list] = field(default_factory=dict)  # declared input shapes (symbolic dims)
    extra_opsets: tuple[tuple[str, int], ...] = ()
    output_rank: int | None = None  # declared when shape inference cannot tell
    ref_grad: bool = True  # the reference evaluator can run the float64 gradient graph
    oracle: Callable[[np.ndarray], np.ndarray] | None = None  # float64 forward for the differences

    def __str__(self) -> str:
        return self.id

    def graph_inputs(self) -> list[str]:
        return [k for k, v in self.values.items() if not isinstance(v, C)]

    def differentiated(self) -> list[str]:
        if self.wrt is not None:
            return self.wrt
        return [k for k in self.graph_inputs() if np.asarray(self.values[k]).dtype.kind == "f"]

    def feeds(self, dtype: type) -> dict[str, np.ndarray]:
        out = {}
        for k in self.graph_inputs():
            v = np.asarray(self.values[k])
            out[k] = v.astype(dtype) if v.dtype.kind == "f" else v
        return out

    def model(self, dtype: type) -> onnx.ModelProto:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        inputs, inits = [], []
        for k, v in self.values.items():
            if isinstance(v, C):
                arr = v.value.astype(dtype) if v.value.dtype.kind == "f" else v.value
                inits.append(numpy_helper.from_array(arr, k))
            else:
                arr = np.asarray(v)
                t = elem if arr.dtype.kind == "f" else helper.np_dtype_to_tensor_dtype(arr.dtype)
                inputs.append(helper.make_tensor_value_info(k, t, self.shapes.get(k, list(arr.shape))))
        nodes = []
        for i, (op, ins, outs, attrs, *domain) in enumerate(self.nodes):
            attrs = {k: _typed(v, elem) for k, v in attrs.items()}
            nodes.append(helper.make_node(op, ins, outs, name=f"{op.lower()}_{i}", domain=domain[0] if domain else "", **attrs))
        graph = helper.make_graph(nodes, self.id, inputs, [helper.make_tensor_value_info(self.output, elem, None)], inits)
        opsets = [helper.make_opsetid("", self.opset), *(helper.make_opsetid(d, v) for d, v in self.extra_opsets)]
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = 10
        # declare the output's rank (not its sizes: inference gets ceil_mode pooling wrong)
        rank = self.output_rank
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in [*inferred.graph.value_info, *inferred.graph.output]:
            if vi.name == self.output and vi.type.tensor_type.HasField("shape"):
                rank = len(vi.type.tensor_type.shape.dim)
        if rank is not None:
            model.graph.output[0].CopyFrom(helper.make_tensor_value_info(self.output, elem, [None] * rank))
        return model


def _typed(value, elem: int):
    """Attribute values that are tensors follow the case's float type (ConstantOfShape, Constant)."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return numpy_helper.from_array(value.astype(helper.tensor_dtype_to_np_dtype(elem)))
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    return value


def single(id: str, op: str, args: list, attrs: dict | None = None, *, outputs: int = 1, **kw) -> Case:
    """One node `op` on `args`: arrays become graph inputs x0, x1, ... (or initializers wrapped in C),
    None an omitted optional input."""
    names, values = [], {}
    for i, a in enumerate(args):
        if a is None:
            names.append("")
            continue
        name = f"x{i}" if not isinstance(a, C) else f"c{i}"
        if isinstance(a, C) or np.asarray(a).dtype.kind != "f":
            a = a if isinstance(a, C) else C(a)
        names.append(name)
        values[name] = a
    outs = ["y"] if outputs == 1 else [f"y{k}" for k in range(outputs)]
    return Case(id, [(op, names, outs, dict(attrs or {}))], values, **kw)


def rng_for(key: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(key.encode()))


def away(rng: np.random.Generator, *shape: int, margin: float = 0.15) -> np.ndarray:
    """Random values with |x| >= margin: no case sits on a kink of Relu & co."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(margin, 1.0, size=shape)


def distinct(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Values 0.1 apart in random order: every max is strict."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * 0.1).reshape(shape) + 0.01


def positive(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.uniform(0.5, 2.0, size=shape)


# Running -------------------------------------------------------------------------------------------


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class Runner:
    """Runs a model on onnxruntime or the reference evaluator, returning outputs by name."""

    def __init__(self, model: onnx.ModelProto, use_ort: bool) -> None:
        self.names = [o.name for o in model.graph.output]
        if use_ort:
            sess = session(model)
            self._run = lambda feeds: sess.run(None, feeds)
        else:
            ref = ReferenceEvaluator(model)
            self._run = lambda feeds: ref.run(None, feeds)

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self._run(feeds)))


def central_differences(forward: Runner, feeds: dict, name: str, output: str, seed: np.ndarray) -> np.ndarray:
    """d sum(seed * y) / d feeds[name], one element at a time, in float64."""
    base = feeds[name]
    grad = np.zeros_like(base)
    for i in range(base.size):
        values = []
        for sign in (1.0, -1.0):
            moved = base.copy()
            moved.reshape(-1)[i] += sign * STEP
            y = forward({**feeds, name: moved})[output]
            values.append(float(np.sum(seed * y)))
        grad.reshape(-1)[i] = (values[0] - values[1]) / (2 * STEP)
    return grad


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (norm-wise: near-zero entries do not blow it up)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    diff = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    return diff / scale if scale > 0 else diff


def check(case: Case, rule: str = "plain") -> dict[str, float]:
    """Compare the gradient graph with central differences; returns the errors (asserted here)."""
    model = case.model(np.float64)
    wrt = case.differentiated()
    grad_model = differentiate(model, case.output, wrt, rule=rule)
    onnx.checker.check_model(grad_model)
    feeds = case.feeds(np.float64)
    forward = Runner(model, case.ort64)
    if case.oracle is not None:
        forward = lambda f: {case.output: case.oracle(*f.values())}  # noqa: E731
    y = Runner(model, case.ort64)(feeds)[case.output]
    seed = rng_for(case.id + "/seed").standard_normal(y.shape)
    inputs = [name for name in wrt if name in feeds]  # intermediate tensors: see the dedicated tests
    want = {name: central_differences(forward, feeds, name, case.output, seed) for name in inputs}
    errors = {}
    if case.ref_grad:
        got = Runner(grad_model, case.ort64)({**feeds, SEED: seed})
        np.testing.assert_allclose(got[case.output], y, rtol=1e-12, atol=1e-12)
        for name in inputs:
            errors[name] = relative_error(got[GRAD + name], want[name])
            assert errors[name] <= TOL64, f"{case.id}: d/d{name} relative error {errors[name]:.2e}"
    if not case.ort64:  # the float32 gradient graph on onnxruntime against the same differences
        grad32 = differentiate(case.model(np.float32), case.output, wrt, rule=rule)
        got32 = Runner(grad32, True)({**case.feeds(np.float32), SEED: seed.astype(np.float32)})
        for name in inputs:
            err = relative_error(got32[GRAD + name], want[name])
            assert err <= TOL32, f"{case.id} (float32, onnxruntime): d/d{name} relative error {err:.2e}"
    return errors
