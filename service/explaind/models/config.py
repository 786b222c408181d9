"""model.yaml: the strict schema of a model folder's configuration.

The operator writes model.yaml by hand, so every mistake should come back as one precise
sentence naming the key path, what was expected and what was found, instead of surfacing later as
a confusing inference failure. Parsing only checks what can be known from the file itself; what
depends on the graph (channel count, class count, feature count) is checked by the repository.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import yaml

from explaind.errors import ModelConfigError

KINDS = ("image", "tabular")
LAYOUTS = ("NCHW", "NHWC")
SCORES = ("logits", "probabilities")
GRADIENTS = ("auto", "exported", "none")

_TOP_KEYS = (
    "kind",
    "input",
    "output",
    "labels",
    "labels_file",
    "feature_names",
    "preprocess",
    "background",
    "generator",
    "layers",
    "gradients",
    "exported_gradients",
    "batching",
)
_INPUT_KEYS = ("name", "layout")
_OUTPUT_KEYS = ("name", "scores")
_PREPROCESS_KEYS = ("size", "scale", "mean", "std")
_BATCHING_KEYS = ("max_batch_rows", "max_delay_ms", "spin")
_EXPORTED_GRADIENTS_KEYS = ("seed", "input_gradient")


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing: resize to ``size`` (height, width), divide by ``scale``, then
    ``(x - mean) / std`` per channel.

    As parsed from model.yaml, ``size``, ``mean`` and ``std`` are None where the file leaves them
    to the graph (static H,W; zeros and ones per channel). The repository resolves them, so a
    ready model's entry always carries a complete Preprocess.
    """

    size: tuple[int, int] | None
    scale: float
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


@dataclass(frozen=True)
class ModelConfig:
    """The validated content of one model.yaml. File references are relative to the folder."""

    kind: str
    input_name: str | None
    layout: str
    output_name: str | None
    scores: str
    labels: tuple[str, ...] | None
    labels_file: str | None
    feature_names: tuple[str, ...] | None
    preprocess: Preprocess | None
    background: str | None
    layers: dict[str, str] = field(default_factory=dict)
    gradients: str = "auto"
    # gradients: exported: (the graph's seed input, its output d sum(seed * output) / d input)
    exported_gradients: tuple[str, str] | None = None
    max_batch_rows: int | None = None
    max_delay_ms: float | None = None
    generator: str | None = None  # image models: an ONNX generator, activation_maximization's learned prior
    spin: str | None = None  # onnxruntime threads spin: off | run | always (None: the server's --spin)


MAX_YAML_NODES = 10_000  # scalars, sequences and mappings; a model.yaml has a few dozen (long label lists
                         # belong in labels_file)
# libyaml's parser when PyYAML has it (~25x faster than the pure-Python one), with the safe constructor.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_yaml_load(text: str, what: str, max_nodes: int = MAX_YAML_NODES) -> object:
    """The YAML document in `text` as plain data, refused cheaply when it could be expensive to build.

    Anchors and aliases are refused: they let a few hundred bytes stand for gigabytes once expanded
    (the "billion laughs"), and nothing in a configuration file needs them. So is a document of more
    than `max_nodes` nodes. Both rules are checked on the parser's event stream, which stops at the
    first offending event, before any object is constructed. `what` names the file in the message.
    """
    try:
        nodes = 0
        for event in yaml.parse(text, Loader=_YAML_LOADER):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                mark = event.start_mark
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
                raise ModelConfigError(f"{what} uses YAML anchors or aliases (& and *){where}; they are not "
                                       "allowed: write every value out")
            if isinstance(event, (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                nodes += 1
                if nodes > max_nodes:
                    raise ModelConfigError(f"{what} has more than {max_nodes} YAML nodes (values, lists and "
                                           "mappings), the limit; put long label lists in a labels_file")
        return yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise ModelConfigError(f"{what} is not valid YAML: {' '.join(str(exc).split())[:300]}") from None


class UnsafePath(ValueError):
    """A file reference that would leave its model folder or does not name a plain file."""


def resolve_in_folder(folder: Path, rel: str, *, must_exist: bool = True) -> Path:
    """Resolve ``rel`` against ``folder``, refusing anything that could escape it.

    Checked lexically first (relative, no ``..``) and then after resolving symlinks, so neither a
    crafted path nor a planted symlink can point the service at files outside the model folder.
    """
    if not rel:
        raise UnsafePath("is an empty path")
    if "\x00" in rel:
        raise UnsafePath("contains a NUL character")
    if (
        PurePosixPath(rel).is_absolute()
        or PureWindowsPath(rel).is_absolute()
        or PureWindowsPath(rel).drive
        or rel.startswith(("/", "\\"))
    ):
        raise UnsafePath("is an absolute path; it must be relative to the model folder")
    if ".." in rel.replace("\\", "/").split("/"):
        raise UnsafePath("contains '..'; it must stay inside the model folder")
    base = folder.resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise UnsafePath("resolves outside the model folder")
    if must_exist:
        if not target.exists():
            raise UnsafePath("does not exist in the model folder")
        if not target.is_file():
            raise UnsafePath("is not a regular file")
    return target


def parse_model_config(data: object, folder: Path) -> ModelConfig:
    """Validate the parsed YAML document of ``folder/model.yaml`` into a :class:`ModelConfig`.

    Raises :class:`ModelConfigError` on the first problem, naming its key path.
    """
    top = _mapping(data, "", _TOP_KEYS)
    if "kind" not in top:
        raise _error("kind", f"required key is missing (one of {', '.join(KINDS)})")
    kind = _enum(top["kind"], "kind", KINDS)

    input_name: str | None = None
    layout = "NCHW"
    if "input" in top:
        section = _mapping(top["input"], "input", _INPUT_KEYS)
        if "name" in section:
            input_name = _string(section["name"], "input.name")
        if "layout" in section:
            layout = _enum(section["layout"], "input.layout", LAYOUTS)

    output_name: str | None = None
    scores = "logits"
    if "output" in top:
        section = _mapping(top["output"], "output", _OUTPUT_KEYS)
        if "name" in section:
            output_name = _string(section["name"], "output.name")
        if "scores" in section:
            scores = _enum(section["scores"], "output.scores", SCORES)

    if "labels" in top and "labels_file" in top:
        raise _error("labels", "give either labels or labels_file, not both")
    labels = _string_list(top["labels"], "labels") if "labels" in top else None
    labels_file = _file_ref(top["labels_file"], "labels_file", folder) if "labels_file" in top else None

    feature_names: tuple[str, ...] | None = None
    if "feature_names" in top:
        if kind != "tabular":
            raise _wrong_kind(kind, "tabular", "feature_names")
        feature_names = _string_list(top["feature_names"], "feature_names")
        _no_duplicates(feature_names, "feature_names")

    preprocess: Preprocess | None = None
    if kind == "image":
        preprocess = _preprocess(top.get("preprocess", {}))
    elif "preprocess" in top:
        raise _wrong_kind(kind, "image", "preprocess")

    background: str | None = None
    if "background" in top:
        if kind != "tabular":
            raise _wrong_kind(kind, "tabular", "background")
        background = _file_ref(top["background"], "background", folder)

    generator: str | None = None
    if "generator" in top:
        if kind != "image":
            raise _wrong_kind(kind, "image", "generator")
        generator = _file_ref(top["generator"], "generator", folder)

    layers: dict[str, str] = {}
    if "layers" in top:
        raw = _mapping(top["layers"], "layers", None)
        for key, value in raw.items():
            if not key:
                raise _error("layers", "layer names must be non-empty strings")
            layers[key] = _string(value, f"layers.{key}")

    gradients = _enum(top["gradients"], "gradients", GRADIENTS) if "gradients" in top else "auto"
    exported: tuple[str, str] | None = None
    if gradients == "exported":
        if "exported_gradients" not in top:
            raise _error("exported_gradients", "required with gradients: exported: "
                         "{seed: <seed input name>, input_gradient: <gradient output name>}")
        section = _mapping(top["exported_gradients"], "exported_gradients", _EXPORTED_GRADIENTS_KEYS)
        for key in _EXPORTED_GRADIENTS_KEYS:
            if key not in section:
                raise _error(f"exported_gradients.{key}", "required")
        exported = (_string(section["seed"], "exported_gradients.seed"),
                    _string(section["input_gradient"], "exported_gradients.input_gradient"))
    elif "exported_gradients" in top:
        raise _error("exported_gradients", f"only allowed with gradients: exported (gradients is {gradients})")

    max_batch_rows: int | None = None
    max_delay_ms: float | None = None
    spin: str | None = None
    if "batching" in top:
        section = _mapping(top["batching"], "batching", _BATCHING_KEYS)
        if "max_batch_rows" in section:
            max_batch_rows = _positive_int(section["max_batch_rows"], "batching.max_batch_rows")
        if "max_delay_ms" in section:
            max_delay_ms = _number(section["max_delay_ms"], "batching.max_delay_ms", positive=True)
        if "spin" in section:
            # YAML 1.1 reads an unquoted `off` as false.
            spin = "off" if section["spin"] is False else _string(section["spin"], "batching.spin")
            if spin not in ("off", "run", "always"):
                raise _error("batching.spin", f"off, run or always, got {spin!r}")

    return ModelConfig(
        kind=kind,
        input_name=input_name,
        layout=layout,
        output_name=output_name,
        scores=scores,
        labels=labels,
        labels_file=labels_file,
        feature_names=feature_names,
        preprocess=preprocess,
        background=background,
        layers=layers,
        gradients=gradients,
        exported_gradients=exported,
        max_batch_rows=max_batch_rows,
        max_delay_ms=max_delay_ms,
        spin=spin,
        generator=generator,
    )


def _preprocess(value: object) -> Preprocess:
    section = _mapping(value, "preprocess", _PREPROCESS_KEYS)
    size: tuple[int, int] | None = None
    if "size" in section:
        raw = section["size"]
        if not isinstance(raw, list) or len(raw) != 2:
            raise _error("preprocess.size", f"expected a list of two positive integers [height, width], got {_show(raw)}")
        size = (
            _positive_int(raw[0], "preprocess.size[0]"),
            _positive_int(raw[1], "preprocess.size[1]"),
        )
    scale = _number(section["scale"], "preprocess.scale", positive=True) if "scale" in section else 255.0
    mean = _number_list(section["mean"], "preprocess.mean", positive=False) if "mean" in section else None
    std = _number_list(section["std"], "preprocess.std", positive=True) if "std" in section else None
    if mean is not None and std is not None and len(mean) != len(std):
        raise _error(
            "preprocess",
            f"mean has {len(mean)} values but std has {len(std)}; give one per channel in both",
        )
    return Preprocess(size=size, scale=scale, mean=mean, std=std)


def _error(path: str, message: str) -> ModelConfigError:
    return ModelConfigError(f"model.yaml: {path}: {message}" if path else f"model.yaml: {message}")


def _show(value: object) -> str:
    """Render a YAML value the way the operator wrote it, short enough for a status line."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, dict):
        text = "a mapping " + repr(value)
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _mapping(value: object, path: str, allowed: tuple[str, ...] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        what = f"{path}: expected a mapping" if path else "expected a mapping at the top level"
        raise ModelConfigError(f"model.yaml: {what}, got {_show(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _error(path, f"keys must be strings, got {_show(key)}")
        if allowed is not None and key not in allowed:
            where = f"{path}.{key}" if path else key
            raise _error(where, f"unknown key; allowed keys: {', '.join(allowed)}")
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        hint = " (quote it in YAML)" if isinstance(value, (bool, int, float)) else ""
        raise _error(path, f"expected a non-empty string, got {_show(value)}{hint}")
    return value


def _string_list(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _error(path, f"expected a non-empty list of strings, got {_show(value)}")
    return tuple(_string(item, f"{path}[{i}]") for i, item in enumerate(value))


def _no_duplicates(items: tuple[str, ...], path: str) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item in seen:
            raise _error(f"{path}[{i}]", f"duplicate name {item!r}")
        seen.add(item)


def _enum(value: object, path: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _error(path, f"expected one of {', '.join(choices)}, got {_show(value)}")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: object, path: str, *, positive: bool) -> float:
    what = "a positive number" if positive else "a finite number"
    if not _is_number(value) or not math.isfinite(value) or (positive and value <= 0):
        hint = " (a string; YAML needs a dot in exponents, e.g. 1.0e-3)" if isinstance(value, str) else ""
        raise _error(path, f"expected {what}, got {_show(value)}{hint}")
    return float(value)


def _number_list(value: object, path: str, *, positive: bool) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise _error(path, f"expected a non-empty list of numbers (one per channel), got {_show(value)}")
    return tuple(_number(item, f"{path}[{i}]", positive=positive) for i, item in enumerate(value))


def _positive_int(value: object, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _error(path, f"expected a positive integer, got {_show(value)}")
    return value


def _wrong_kind(kind: str, wanted: str, path: str) -> ModelConfigError:
    return _error(path, f"only allowed for kind {wanted}, this model is kind {kind}")


def _file_ref(value: object, path: str, folder: Path) -> str:
    rel = _string(value, path)
    try:
        resolve_in_folder(folder, rel)
    except UnsafePath as exc:
        raise _error(path, f"{rel!r} {exc}") from None
    return rel
