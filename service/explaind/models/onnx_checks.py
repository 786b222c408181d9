"""Whether an ONNX model is safe and able to run here, decided before anything executes it.

Only standard operator domains are accepted (anything else would need a custom-op library, which
explaind never loads), the opset must be one explaind's graph prefixes are written for, every
external data reference must stay inside the model folder and be counted against the size limit
before it is read, the ONNX checker must pass, and onnxruntime must be able to build a session.
Nested graphs (If/Loop/Scan bodies, local functions) are walked like the main graph: a custom op or
an escaping reference cannot hide in a subgraph. Each check raises ModelConfigError with the reason.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx
import onnx.checker

from explaind.errors import ModelConfigError
from explaind.models.config import UnsafePath
from explaind.models.files import external_file_size
from explaind.models.text import clip, first_line
from explaind.onnxgraph.builder import MIN_OPSET


def parse_model(raw: bytes) -> onnx.ModelProto:
    """model.onnx's bytes as a ModelProto; external data stays unread."""
    try:
        return onnx.load(io.BytesIO(raw), load_external_data=False)
    except Exception as exc:
        raise ModelConfigError(f"model.onnx is not a valid ONNX model: {first_line(str(exc))}") from None


def check_domains(model: onnx.ModelProto, allowed: frozenset[str]) -> None:
    """Only standard domains: anything else would need a custom-op library, which we never load.

    Calls to functions defined inside the model itself are fine: their bodies are checked too.
    """
    local_functions = {(f.domain, f.name) for f in model.functions}
    for index, node in enumerate(_all_nodes(model)):
        if node.domain in allowed or (node.domain, node.op_type) in local_functions:
            continue
        label = repr(node.name) if node.name else f"#{index}"
        raise ModelConfigError(
            f"node {label} (op {node.op_type}) uses domain {node.domain!r} which is not allowed "
            f"(allowed: {', '.join(repr(d) for d in sorted(allowed))})"
        )


def check_opset(model: onnx.ModelProto) -> None:
    """explaind's graph prefixes and suffixes are written for opset 11 and later."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version < MIN_OPSET:
            raise ModelConfigError(f"model.onnx uses opset {entry.version}; explaind needs opset {MIN_OPSET} or "
                                   "later (re-export the model, or convert it with onnx.version_converter)")


def external_data_bytes(model: onnx.ModelProto, folder: Path) -> int:
    """Validate every external data reference and return how many bytes they will read."""
    total = 0
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        try:
            file_size = external_file_size(folder, location)
        except UnsafePath as exc:
            raise ModelConfigError(f"external data {clip(location)!r} {exc} ({_tensor_label(tensor)})") from None
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else file_size - offset
        except ValueError:
            raise ModelConfigError(
                f"external data {location!r} has a non-integer offset or length ({_tensor_label(tensor)})"
            ) from None
        if offset < 0 or length < 0 or offset + length > file_size:
            raise ModelConfigError(
                f"external data {location!r} is {file_size} bytes but {_tensor_label(tensor)} "
                f"asks for bytes {offset}..{offset + length}"
            )
        total += length
    return total


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model))


def external_locations(model: onnx.ModelProto) -> list[str]:
    """The external data files ``model`` refers to, each once, in order (the repository watches them)."""
    locations: dict[str, None] = {}
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in tensor.external_data}
            locations.setdefault(info.get("location", ""), None)
    return list(locations)


def check_external_data_loaded(model: onnx.ModelProto) -> None:
    """After loading external data, no tensor may still point outside the ModelProto."""
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelConfigError(
                f"{_tensor_label(tensor)} still refers to external data after loading "
                "(external data in sparse tensors is not supported)"
            )


def check_with_onnx_checker(model_bytes: bytes) -> None:
    """The ONNX checker on the serialized model (bytes, so the caller's one serialization is reused)."""
    try:
        onnx.checker.check_model(model_bytes)
    except Exception as exc:
        raise ModelConfigError(f"model.onnx fails the ONNX checker: {first_line(str(exc))}") from None


def check_session(model_bytes: bytes) -> None:
    """onnxruntime builds a CPU session of the model (then drops it): every operator is runnable."""
    import onnxruntime  # deferred: importing it is slow and only needed here

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(
            model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ModelConfigError(f"onnxruntime cannot load the model: {_ort_message(exc)}") from None
    del session


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : ")
_ORT_SOURCE = re.compile(r"/\S+\.(?:h|cc|cpp):\d+ [^(]*\([^)]*\)\s*")


def _ort_message(exc: Exception) -> str:
    """onnxruntime's message without its error number and C++ source location."""
    return _ORT_SOURCE.sub("", _ORT_PREFIX.sub("", first_line(str(exc))))


def _tensor_label(tensor: onnx.TensorProto) -> str:
    return f"tensor {tensor.name!r}" if tensor.name else "an unnamed attribute tensor"


# --- walking every graph, node and tensor ------------------------------------------------------


def _subgraphs_of(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield from _graph_and_subgraphs(attr.g)
        for graph in attr.graphs:
            yield from _graph_and_subgraphs(graph)


def _graph_and_subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        yield from _subgraphs_of(node)


def _all_graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph and every nested graph, including those inside local functions."""
    yield from _graph_and_subgraphs(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _subgraphs_of(node)


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in _all_graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _sparse_parts(sparse: onnx.SparseTensorProto) -> Iterable[onnx.TensorProto]:
    return (sparse.values, sparse.indices)


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto that may carry data: initializers and attribute tensors, everywhere."""
    for graph in _all_graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from _sparse_parts(sparse)
    for node in _all_nodes(model):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield from _sparse_parts(attr.sparse_tensor)
            for sparse in attr.sparse_tensors:
                yield from _sparse_parts(sparse)
