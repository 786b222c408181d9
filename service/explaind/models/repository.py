"""The model repository: one folder per model, each holding model.onnx and model.yaml.

Loading treats the folder as untrusted input. Sizes are checked before bytes are read, every file
reference (model.onnx, external data, labels, background) must stay inside the model folder after
symlinks are resolved, only standard operator domains are accepted so no custom-op library is ever
needed, and a model name from a request is only ever a dictionary key, never part of a path.

A bad model never stops the others: it becomes a FAILED entry whose reason says what to fix.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.external_data_helper
import onnx.shape_inference
import yaml

from explaind.errors import ModelConfigError, NotFound
from explaind.onnxgraph.builder import MIN_OPSET
from explaind.models.config import (
    ModelConfig,
    Preprocess,
    UnsafePath,
    parse_model_config,
    resolve_in_folder,
)

log = logging.getLogger(__name__)

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)

READY = "READY"
FAILED = "FAILED"

_MODEL_FILE = "model.onnx"
_CONFIG_FILE = "model.yaml"
_MAX_YAML_BYTES = 1 << 20
_MAX_LABELS_BYTES = 16 << 20
_MAX_REASON_CHARS = 600


def is_valid_model_name(name: object) -> bool:
    """True for names usable as a model folder name and in requests.

    ``fullmatch`` rather than ``match``: ``$`` would also accept a trailing newline.
    """
    return isinstance(name, str) and _MODEL_NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of a graph input or output; -1 marks a dynamic dimension.

    Non-tensor values (sequences, maps) get dtype ``object`` and shape ``()``.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class RepositoryLimits:
    """What the repository is willing to load; the defaults suit a typical deployment."""

    max_model_bytes: int = 1 << 30
    allowed_domains: frozenset[str] = frozenset({"", "ai.onnx", "ai.onnx.ml"})
    check_with_session: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_model_bytes, int) or self.max_model_bytes <= 0:
            raise ValueError(f"max_model_bytes: expected a positive integer, got {self.max_model_bytes!r}")


@dataclass(frozen=True, eq=False)
class ModelEntry:
    """One model folder as the service sees it: READY with everything resolved, or FAILED.

    For a FAILED entry only name, folder, status, reason and whatever was learned before the
    failure (sha256, config) are filled in; the rest keep their empty defaults.
    """

    name: str
    folder: Path
    status: str
    reason: str = ""
    config: ModelConfig | None = None
    model: onnx.ModelProto | None = field(default=None, repr=False)
    model_bytes: bytes | None = field(default=None, repr=False)
    sha256: str = ""
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    input_spec: TensorSpec | None = None
    output_spec: TensorSpec | None = None
    example_shape: tuple[int, ...] = ()
    num_classes: int = 0
    labels: tuple[str, ...] = ()
    feature_names: tuple[str, ...] | None = None
    preprocess: Preprocess | None = None
    background: np.ndarray | None = field(default=None, repr=False)

    @property
    def ready(self) -> bool:
        return self.status == READY

    def label_index(self, label: str) -> int:
        """Class index of ``label``; with duplicate labels the first one wins."""
        for i, known in enumerate(self.labels):
            if known == label:
                return i
        shown = ", ".join(self.labels[:20])
        if len(self.labels) > 20:
            shown += f", ... ({len(self.labels) - 20} more)"
        raise NotFound(f"model '{self.name}' has no label {_clip(label)!r}; valid labels: {shown}")


class ModelRepository:
    """All models under one root folder, loaded by :meth:`scan` and looked up by name."""

    def __init__(self, root: Path, limits: RepositoryLimits = RepositoryLimits()) -> None:
        self._root = Path(root)
        self._limits = limits
        self._entries: dict[str, ModelEntry] = {}
        self._ignored: list[str] = []

    @property
    def root(self) -> Path:
        return self._root

    @property
    def limits(self) -> RepositoryLimits:
        return self._limits

    @property
    def ignored(self) -> list[str]:
        """Why folders holding a model.onnx were skipped (invalid names), for the logs."""
        return list(self._ignored)

    def scan(self) -> None:
        """(Re)load every model folder; the new set replaces the old one in one step.

        Raises NotADirectoryError only when the root itself is missing: that is a server
        misconfiguration, not a bad model.
        """
        if not self._root.is_dir():
            raise NotADirectoryError(f"model repository {self._root} is not a directory")
        entries: dict[str, ModelEntry] = {}
        ignored: list[str] = []
        for child in sorted(self._root.iterdir()):
            name = child.name
            if name.startswith(".") or not child.is_dir():
                continue
            if not os.path.lexists(child / _MODEL_FILE):
                continue
            if not is_valid_model_name(name):
                why = f"folder {ascii(name)} ignored: a model name must match {MODEL_NAME_PATTERN}"
                log.warning("%s", why)
                ignored.append(why)
                continue
            entry = load_model_folder(name, child, self._limits)
            if not entry.ready:
                log.warning("model %s FAILED: %s", name, entry.reason)
            entries[name] = entry
        self._entries = entries
        self._ignored = ignored

    def list(self) -> list[ModelEntry]:
        return [self._entries[name] for name in sorted(self._entries)]

    def get(self, name: str) -> ModelEntry:
        """The entry named ``name`` (READY or FAILED); NotFound for anything else."""
        if not is_valid_model_name(name):
            raise NotFound(f"model {_clip(str(name))!r} not found: not a valid model name")
        entry = self._entries.get(name)
        if entry is None:
            names = sorted(self._entries)
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise NotFound(f"model {name!r} not found; available models: {shown or '(none)'}")
        return entry


def load_model_folder(name: str, folder: Path, limits: RepositoryLimits) -> ModelEntry:
    """Load and validate one model folder; never raises, a problem becomes a FAILED entry."""
    known: dict[str, Any] = {}
    try:
        return _load(name, folder, limits, known)
    except ModelConfigError as exc:
        reason = str(exc)
    except Exception as exc:  # a bad model must not take the repository down
        reason = f"unexpected error while loading: {type(exc).__name__}: {_first_line(str(exc))}"
    return ModelEntry(
        name=name,
        folder=folder,
        status=FAILED,
        reason=_clip(reason, _MAX_REASON_CHARS),
        sha256=known.get("sha256", ""),
        config=known.get("config"),
    )


def _load(name: str, folder: Path, limits: RepositoryLimits, known: dict[str, Any]) -> ModelEntry:
    raw = _read_model_file(folder, limits.max_model_bytes)
    known["sha256"] = hashlib.sha256(raw).hexdigest()
    config = _read_config(folder)
    known["config"] = config

    try:
        model = onnx.load(io.BytesIO(raw), load_external_data=False)
    except Exception as exc:
        raise ModelConfigError(f"model.onnx is not a valid ONNX model: {_first_line(str(exc))}") from None

    _check_domains(model, limits.allowed_domains)  # before reading any external data
    _check_opset(model)
    external_bytes = _check_external_data(model, folder)
    total = len(raw) + external_bytes
    if external_bytes and total > limits.max_model_bytes:
        raise ModelConfigError(
            f"model.onnx with its external data is {_human_bytes(total)}, "
            f"over the limit of {_human_bytes(limits.max_model_bytes)}"
        )
    if external_bytes or _uses_external_data(model):
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(folder.resolve()))
        except Exception as exc:
            raise ModelConfigError(f"cannot load external data: {_first_line(str(exc))}") from None
        for tensor in _all_tensors(model):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raise ModelConfigError(
                    f"{_tensor_label(tensor)} still refers to external data after loading "
                    "(external data in sparse tensors is not supported)"
                )
        model_bytes = model.SerializeToString()
    else:
        model_bytes = raw

    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelConfigError(f"model.onnx fails the ONNX checker: {_first_line(str(exc))}") from None

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model  # fall back to the shapes the exporter declared
    entry_fields = _inspect(inferred.graph, config, folder, limits)

    if limits.check_with_session:
        _check_session(model_bytes)

    return ModelEntry(
        name=name,
        folder=folder,
        status=READY,
        reason="",
        config=config,
        model=model,
        model_bytes=model_bytes,
        sha256=known["sha256"],
        **entry_fields,
    )


# --- files -------------------------------------------------------------------------------------


def _read_model_file(folder: Path, limit: int) -> bytes:
    path = folder / _MODEL_FILE
    try:
        resolved = resolve_in_folder(folder, _MODEL_FILE)
    except UnsafePath as exc:
        if path.is_symlink() and "outside" in str(exc):
            raise ModelConfigError("model.onnx is a symlink that resolves outside the model folder") from None
        raise ModelConfigError(f"model.onnx {exc}") from None
    size = resolved.stat().st_size
    if size > limit:
        raise ModelConfigError(
            f"model.onnx is {_human_bytes(size)}, over the limit of {_human_bytes(limit)}"
        )
    with open(resolved, "rb") as f:
        data = f.read(limit + 1)  # the file may have grown since stat()
    if len(data) > limit:
        raise ModelConfigError(f"model.onnx is over the limit of {_human_bytes(limit)}")
    return data


def _read_config(folder: Path) -> ModelConfig:
    path = folder / _CONFIG_FILE
    if not os.path.lexists(path):
        raise ModelConfigError("model.yaml is missing: every model folder needs one next to model.onnx")
    try:
        resolved = resolve_in_folder(folder, _CONFIG_FILE)
    except UnsafePath as exc:
        raise ModelConfigError(f"model.yaml {exc}") from None
    if resolved.stat().st_size > _MAX_YAML_BYTES:
        raise ModelConfigError(f"model.yaml is over {_human_bytes(_MAX_YAML_BYTES)}")
    try:
        text = resolved.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelConfigError("model.yaml is not valid UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelConfigError(f"model.yaml is not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_model_config(data, folder)


def _read_labels_file(folder: Path, rel: str) -> tuple[str, ...]:
    try:
        path = resolve_in_folder(folder, rel)
    except UnsafePath as exc:
        raise ModelConfigError(f"model.yaml: labels_file: {rel!r} {exc}") from None
    if path.stat().st_size > _MAX_LABELS_BYTES:
        raise ModelConfigError(f"model.yaml: labels_file: {rel!r} is over {_human_bytes(_MAX_LABELS_BYTES)}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ModelConfigError(f"model.yaml: labels_file: {rel!r} is not valid UTF-8") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ModelConfigError(f"model.yaml: labels_file: {rel!r} is empty")
    labels = tuple(line.strip() for line in lines)
    for number, label in enumerate(labels, start=1):
        if not label:
            # Skipping it would silently shift every later label onto the wrong class.
            raise ModelConfigError(f"model.yaml: labels_file: {rel!r} line {number} is empty")
    return labels


def _read_background(folder: Path, rel: str, num_features: int, limit: int) -> np.ndarray:
    where = f"model.yaml: background: {rel!r}"
    try:
        path = resolve_in_folder(folder, rel)
    except UnsafePath as exc:
        raise ModelConfigError(f"{where} {exc}") from None
    size = path.stat().st_size
    if size > limit:
        raise ModelConfigError(f"{where} is {_human_bytes(size)}, over the limit of {_human_bytes(limit)}")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ModelConfigError(f"{where} is not a readable .npy array: {_first_line(str(exc))}") from None
    if not isinstance(array, np.ndarray):
        raise ModelConfigError(f"{where} must hold a single array (.npy), not an archive")
    if array.dtype.kind not in "biuf":
        raise ModelConfigError(f"{where} has dtype {array.dtype}; expected real numbers")
    if array.ndim != 2 or array.shape[1] != num_features or array.shape[0] < 1:
        raise ModelConfigError(
            f"{where} has shape {_fmt_shape(array.shape)}; expected [K, {num_features}] "
            f"(K >= 1 reference rows of the model's {num_features} features)"
        )
    background = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(background)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise ModelConfigError(f"{where} contains non-finite values (NaN or inf), first in row {row}")
    background.setflags(write=False)
    return background


# --- graph safety ------------------------------------------------------------------------------


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


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model))


def _check_external_data(model: onnx.ModelProto, folder: Path) -> int:
    """Validate every external data reference and return how many bytes they will read."""
    total = 0
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        try:
            path = resolve_in_folder(folder, location)
        except UnsafePath as exc:
            raise ModelConfigError(f"external data {_clip(location)!r} {exc} ({_tensor_label(tensor)})") from None
        file_size = path.stat().st_size
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


def _tensor_label(tensor: onnx.TensorProto) -> str:
    return f"tensor {tensor.name!r}" if tensor.name else "an unnamed attribute tensor"


def _check_opset(model: onnx.ModelProto) -> None:
    """explaind's graph prefixes and suffixes are written for opset 11 and later."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version < MIN_OPSET:
            raise ModelConfigError(f"model.onnx uses opset {entry.version}; explaind needs opset {MIN_OPSET} or "
                                   "later (re-export the model, or convert it with onnx.version_converter)")


def _check_domains(model: onnx.ModelProto, allowed: frozenset[str]) -> None:
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


def _check_session(model_bytes: bytes) -> None:
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
    return _ORT_SOURCE.sub("", _ORT_PREFIX.sub("", _first_line(str(exc))))


# --- inspection against model.yaml -------------------------------------------------------------


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


def _fmt_shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names) or "none"


def _inspect(graph: onnx.GraphProto, config: ModelConfig, folder: Path, limits: RepositoryLimits) -> dict[str, Any]:
    """Check the graph against model.yaml and work out everything the engine needs."""
    initializers = {init.name for init in graph.initializer}
    graph_inputs = [v for v in graph.input if v.name not in initializers]
    inputs = [_spec(v) for v in graph_inputs]
    outputs = [_spec(v) for v in graph.output]

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

    fields: dict[str, Any] = {
        "inputs": inputs,
        "outputs": outputs,
        "input_spec": input_spec,
        "output_spec": output_spec,
        "num_classes": num_classes,
        "labels": labels,
    }
    if config.kind == "image":
        example_shape, preprocess = _image_shape(input_value.name, input_shape, config)
        fields.update(example_shape=example_shape, preprocess=preprocess)
    else:
        num_features = _tabular_features(input_value.name, input_shape)
        feature_names = config.feature_names or tuple(f"f{i}" for i in range(num_features))
        if len(feature_names) != num_features:
            raise ModelConfigError(
                f"model.yaml: feature_names: {len(feature_names)} names but the input has {num_features} features"
            )
        fields.update(example_shape=(num_features,), feature_names=feature_names)
        if config.background is not None:
            fields["background"] = _read_background(folder, config.background, num_features, limits.max_model_bytes)

    _check_layers(graph, config)
    return fields


def _pick_input(graph_inputs: list[onnx.ValueInfoProto], config: ModelConfig) -> onnx.ValueInfoProto:
    names = [v.name for v in graph_inputs]
    if config.input_name is not None:
        if config.input_name not in names:
            raise ModelConfigError(
                f"model.yaml: input.name: the graph has no input {config.input_name!r}; its inputs are {_names(names)}"
            )
        chosen = next(v for v in graph_inputs if v.name == config.input_name)
    elif len(graph_inputs) == 1 or (config.exported_gradients and len(graph_inputs) == 2):
        chosen = next(v for v in graph_inputs if not config.exported_gradients
                      or v.name != config.exported_gradients[0])
    else:
        raise ModelConfigError(
            f"model.onnx has {len(graph_inputs)} inputs ({_names(names)}); set input.name in model.yaml"
        )
    seed = config.exported_gradients[0] if config.exported_gradients else None
    if seed is not None and seed not in names:
        raise ModelConfigError(f"model.yaml: exported_gradients.seed: the graph has no input {seed!r}; "
                               f"its inputs are {_names(names)}")
    others = [n for n in names if n not in (chosen.name, seed)]
    if others:
        # Every non-initializer graph input is required at run time, and explaind feeds one.
        raise ModelConfigError(
            f"model.onnx needs inputs {_names(others)} besides {chosen.name!r}; explaind feeds exactly one input"
        )
    return chosen


def _pick_output(graph_outputs: list[onnx.ValueInfoProto], config: ModelConfig) -> onnx.ValueInfoProto:
    names = [v.name for v in graph_outputs]
    if config.exported_gradients and config.exported_gradients[1] not in names:
        raise ModelConfigError(f"model.yaml: exported_gradients.input_gradient: the graph has no output "
                               f"{config.exported_gradients[1]!r}; its outputs are {_names(names)}")
    if config.output_name is not None:
        for value in graph_outputs:
            if value.name == config.output_name:
                return value
        raise ModelConfigError(
            f"model.yaml: output.name: the graph has no output {config.output_name!r}; its outputs are {_names(names)}"
        )
    if len(graph_outputs) == 1:
        return graph_outputs[0]
    raise ModelConfigError(
        f"model.onnx has {len(graph_outputs)} outputs ({_names(names)}); set output.name in model.yaml"
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
        labels = _read_labels_file(folder, config.labels_file)
        where = f"model.yaml: labels_file: {config.labels_file!r} has {len(labels)} labels"
    else:
        labels, where = None, ""

    shape = _shape_of(output.type)
    if shape is not None and len(shape) != 2:
        raise ModelConfigError(
            f"output {name!r} has shape {_fmt_shape(shape)}; a classifier output must be [N, K] (rank 2)"
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
        got = "unknown rank" if shape is None else f"shape {_fmt_shape(shape)}"
        raise ModelConfigError(f"input {input_name!r} has {got}; an image model needs a rank-4 {layout} input")
    c_at, h_at, w_at = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
    channels = shape[c_at]
    if channels not in (1, 3):
        got = "a dynamic channel dimension" if channels < 0 else f"{channels} channels"
        raise ModelConfigError(
            f"input {input_name!r} {_fmt_shape(shape)} has {got} at index {c_at} ({layout}); "
            "expected 1 or 3 (is input.layout right?)"
        )

    pre = config.preprocess or Preprocess(size=None, scale=255.0, mean=None, std=None)
    graph_hw = (shape[h_at], shape[w_at])
    if pre.size is not None:
        for axis, graph_dim, wanted in zip(("height", "width"), graph_hw, pre.size):
            if graph_dim >= 0 and graph_dim != wanted:
                raise ModelConfigError(
                    f"model.yaml: preprocess.size: {list(pre.size)} does not match the graph's input "
                    f"{axis} {graph_dim} (input {input_name!r} {_fmt_shape(shape)})"
                )
        size = pre.size
    elif graph_hw[0] >= 0 and graph_hw[1] >= 0:
        size = (graph_hw[0], graph_hw[1])
    else:
        raise ModelConfigError(
            f"input {input_name!r} {_fmt_shape(shape)} has a dynamic height or width; set preprocess.size in model.yaml"
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
        got = "unknown rank" if shape is None else f"shape {_fmt_shape(shape)}"
        raise ModelConfigError(f"input {input_name!r} has {got}; a tabular model needs a [N, F] input")
    if shape[1] < 1:
        raise ModelConfigError(
            f"input {input_name!r} {_fmt_shape(shape)} has no static feature dimension; export it with F fixed"
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
            f"{label}: {_names(hint)}"
        )


# --- text --------------------------------------------------------------------------------------


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            return f"{value:.1f} {unit}"
    return f"{n} bytes"  # unreachable; keeps type checkers content


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else "(no message)"


def _clip(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "FAILED",
    "MODEL_NAME_PATTERN",
    "READY",
    "ModelEntry",
    "ModelRepository",
    "RepositoryLimits",
    "TensorSpec",
    "is_valid_model_name",
    "load_model_folder",
]
