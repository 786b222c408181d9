"""Forward-graph rewrites before differentiation that leave every kept tensor's value unchanged and
make the backward graph cheaper.

1. BatchNormalization (inference) folded into the Conv (or the Gemm, alpha = beta = 1: a Linear then a
   BatchNorm1d) before it: W' = W * s, b' = (b - mean) * s + B with s = scale / sqrt(var + eps) per
   output channel (Ioffe & Szegedy 2015; the folding onnxruntime itself does on the forward graph).
   The backward pass then has no per-channel Mul, and LRP's rules see one linear layer (Zennit's
   batch-norm canonizer).
2. Relu before a MaxPool with non-overlapping windows moved after it: max(relu(x)) = relu(max(x))
   exactly (relu is monotone), the Relu and its backward mask then run on the pooled tensor (1/k of
   the elements), and the gradient is the same for the plain and guided rules: each window routes
   to the same (first) argmax and the mask there is [x > 0] = [max > 0].

A rewrite applies only where the tensor it removes is read by that one node and is no graph output
and no tensor asked for (`keep`: the output, the tensors differentiated with respect to).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper


# The rule variants whose Relu backward is 0 wherever x <= 0, for which moving the Relu is exact.
# (Not deconvnet: it passes relu(g) whatever x was, and a window of non-positive values routes it to
# its first element before the move, to its largest after.)
POOL_BEFORE_RELU_VARIANTS = frozenset({"plain", "guided"})
# The variants whose rules differ at BatchNormalization from those of the Conv it would be folded
# into (excitation backprop passes through batch norm and takes max(W, 0) of the unfolded weights).
KEEP_BATCH_NORM_VARIANTS = frozenset({"excitation", "excitation_contrastive"})


def simplify(model: onnx.ModelProto, keep: set[str], variant: str = "plain") -> onnx.ModelProto:
    """Apply the rewrites to `model` in place (a graph with subgraphs is left as it is); returns it."""
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return model
    protected = keep | {o.name for o in graph.output}
    gone = _fold_batch_norms(graph, protected) if variant not in KEEP_BATCH_NORM_VARIANTS else set()
    if variant in POOL_BEFORE_RELU_VARIANTS:
        gone |= _pool_before_relu(graph, protected)
    stale = [vi for vi in graph.value_info if vi.name in gone]
    for vi in stale:
        graph.value_info.remove(vi)
    return model


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _single_readers(graph: onnx.GraphProto, protected: set[str]) -> dict[str, onnx.NodeProto]:
    """tensor -> its one reading node, for tensors read exactly once and not protected."""
    counts: Counter = Counter(i for n in graph.node for i in n.input if i)
    readers = {i: n for n in graph.node for i in n.input if i and counts[i] == 1}
    return {t: n for t, n in readers.items() if t not in protected}


def _fold_batch_norms(graph: onnx.GraphProto, protected: set[str]) -> set[str]:
    """Returns the names of the tensors that are gone."""
    inits = {t.name: t for t in graph.initializer}
    readers = _single_readers(graph, protected)
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    removed, gone = [], set()
    for conv in graph.node:
        if conv.op_type not in ("Conv", "Gemm") or conv.domain not in ("", "ai.onnx") or len(conv.input) < 2:
            continue
        if conv.op_type == "Gemm" and not _plain_gemm(conv):
            continue
        bn = readers.get(conv.output[0])
        if bn is None or bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or bn.input[0] != conv.output[0]:
            continue
        if int(_attrs(bn).get("training_mode", 0)) or len([o for o in bn.output if o]) != 1 or len(bn.input) != 5:
            continue
        params = [inits.get(name) for name in [conv.input[1], *bn.input[1:5]]]
        bias = inits.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if any(p is None for p in params) or (len(conv.input) > 2 and conv.input[2] and bias is None):
            continue
        w, scale, offset, mean, var = (numpy_helper.to_array(p) for p in params)  # type: ignore[arg-type]
        gemm = conv.op_type == "Gemm"
        out_axis = (0 if int(_attrs(conv).get("transB", 0)) else 1) if gemm else 0
        if w.dtype.kind != "f" or (w.ndim != 2 if gemm else w.ndim < 3) or scale.shape != (w.shape[out_axis],):
            continue
        out = w.shape[out_axis]
        b = numpy_helper.to_array(bias).astype(np.float64) if bias is not None else np.zeros(out)
        if b.shape != (out,):
            continue
        eps = float(_attrs(bn).get("epsilon", 1e-5))
        s = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
        per_output = [1] * w.ndim
        per_output[out_axis] = -1
        new_w = (w.astype(np.float64) * s.reshape(per_output)).astype(w.dtype)
        new_b = ((b - mean.astype(np.float64)) * s + offset.astype(np.float64)).astype(w.dtype)
        names = []
        for value, hint in ((new_w, "weight"), (new_b, "bias")):
            name = _fresh(f"{bn.output[0]}::folded_{hint}", taken)
            graph.initializer.append(numpy_helper.from_array(value, name))
            names.append(name)
        del conv.input[1:]
        conv.input.extend(names)
        gone.add(conv.output[0])
        conv.output[0] = bn.output[0]
        removed.append(bn)
    for bn in removed:
        graph.node.remove(bn)
    return gone


def _plain_gemm(gemm: onnx.NodeProto) -> bool:
    """Y = A B' + C (alpha = beta = 1, A not transposed): a Linear layer."""
    a = _attrs(gemm)
    return float(a.get("alpha", 1.0)) == 1.0 and float(a.get("beta", 1.0)) == 1.0 and not int(a.get("transA", 0))


def _non_overlapping(pool: onnx.NodeProto) -> bool:
    a = _attrs(pool)
    kernel = list(a.get("kernel_shape", []))
    nd = len(kernel)
    return (
        bool(kernel)
        and list(a.get("strides", [1] * nd)) == kernel
        and list(a.get("dilations", [1] * nd)) == [1] * nd
        and not any(a.get("pads", []))
        and a.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID", b"")
    )


def _pool_before_relu(graph: onnx.GraphProto, protected: set[str]) -> set[str]:
    """Returns the names of the tensors that are gone."""
    readers = _single_readers(graph, protected)
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    removed: set[str] = set()
    nodes = list(graph.node)
    for i, relu in enumerate(nodes):
        if relu.op_type != "Relu" or relu.domain not in ("", "ai.onnx"):
            continue
        pool = readers.get(relu.output[0])
        if pool is None or pool.op_type != "MaxPool" or pool.domain not in ("", "ai.onnx") or not _non_overlapping(pool):
            continue
        if len(pool.output) > 1 and pool.output[1]:  # its Indices are read: they would change
            continue
        pooled, gone = pool.output[0], relu.output[0]
        moved = _fresh(f"{pooled}::before_relu", taken)
        del pool.output[1:]
        pool.input[0], pool.output[0] = relu.input[0], moved
        relu.input[0], relu.output[0] = moved, pooled
        removed.add(gone)
        j = nodes.index(pool)
        nodes[i], nodes[j] = pool, relu
    del graph.node[:]
    graph.node.extend(nodes)
    return removed


def _fresh(hint: str, taken: set[str]) -> str:
    name, k = hint, 0
    while name in taken:
        k += 1
        name = f"{hint}_{k}"
    taken.add(name)
    return name
