"""The model catalogue: one folder per model under a root, each holding model.onnx and model.yaml.

:class:`ModelRepository` scans the root, loads every model folder and looks models up by name. A
model is either a :class:`LoadedModel`, ready to serve with everything resolved, or a
:class:`FailedModel` that says why it is not: a bad model never stops the others, and its reason
says what to fix. A model name from a request is only ever a dictionary key, never part of a path.

Loading one folder runs the other modules in order: ``files`` (safe, size-limited reads inside the
folder), ``onnx_checks`` (standard domains and opset, external data, the ONNX checker, an
onnxruntime session) and ``signature`` (the input and output against model.yaml).

A loaded model keeps its weights once, in its ModelProto: the engine composes each variant's graph
from that proto and serializes the composed graph for its session. The serialized bytes that the
checks need while loading are not kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeAlias

import numpy as np
import onnx

from explaind.errors import ModelConfigError, NotFound, echo
from explaind.models.config import ModelConfig, Preprocess
from explaind.models.files import MODEL_FILE, load_external_data, read_config, read_model_file
from explaind.models.onnx_checks import (
    check_domains,
    check_external_data_loaded,
    check_opset,
    check_session,
    check_with_onnx_checker,
    external_data_bytes,
    parse_model,
    uses_external_data,
)
from explaind.models.signature import TensorSpec, infer_shapes, inspect_signature
from explaind.models.text import clip, first_line, human_bytes

log = logging.getLogger(__name__)

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)

READY = "READY"
FAILED = "FAILED"

_MAX_REASON_CHARS = 600


def is_valid_model_name(name: object) -> bool:
    """True for names usable as a model folder name and in requests.

    ``fullmatch`` rather than ``match``: ``$`` would also accept a trailing newline.
    """
    return isinstance(name, str) and _MODEL_NAME_RE.fullmatch(name) is not None


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
class LoadedModel:
    """A model that passed every check, with everything resolved: ready to serve.

    ``model`` holds the weights (external data already read in); it is the only copy this entry
    keeps. ``preprocess`` is set for image models only, ``feature_names`` is empty for image models,
    and ``background`` is None unless model.yaml names one.
    """

    ready: ClassVar[bool] = True
    status: ClassVar[str] = READY
    reason: ClassVar[str] = ""

    name: str
    folder: Path
    config: ModelConfig
    model: onnx.ModelProto = field(repr=False)
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    input_spec: TensorSpec
    output_spec: TensorSpec
    example_shape: tuple[int, ...]
    num_classes: int
    labels: tuple[str, ...]
    feature_names: tuple[str, ...]
    preprocess: Preprocess | None
    background: np.ndarray | None = field(repr=False)

    @property
    def kind(self) -> str:
        """The model's kind from model.yaml: "image" or "tabular"."""
        return self.config.kind

    def label_index(self, label: str) -> int:
        """Class index of ``label``; with duplicate labels the first one wins."""
        for i, known in enumerate(self.labels):
            if known == label:
                return i
        shown = ", ".join(self.labels[:20])
        if len(self.labels) > 20:
            shown += f", ... ({len(self.labels) - 20} more)"
        raise NotFound(f"model '{self.name}' has no label {echo(label)}; valid labels: {shown}")


@dataclass(frozen=True)
class FailedModel:
    """A model folder that cannot be served, and why.

    ``sha256`` (of model.onnx) and ``kind`` (from model.yaml) are what was learned before the
    failure: empty when the file was never read or model.yaml never parsed.
    """

    ready: ClassVar[bool] = False
    status: ClassVar[str] = FAILED

    name: str
    folder: Path
    reason: str
    sha256: str = ""
    kind: str = ""


ModelEntry: TypeAlias = LoadedModel | FailedModel


class ModelRepository:
    """All models under one root folder, loaded by :meth:`scan` and looked up by name."""

    def __init__(self, root: Path, limits: RepositoryLimits = RepositoryLimits()) -> None:
        self._root = Path(root)
        self._limits = limits
        self._entries: dict[str, ModelEntry] = {}

    @property
    def root(self) -> Path:
        return self._root

    @property
    def limits(self) -> RepositoryLimits:
        return self._limits

    def scan(self) -> None:
        """(Re)load every model folder; the new set replaces the old one in one step.

        Raises NotADirectoryError only when the root itself is missing: that is a server
        misconfiguration, not a bad model.
        """
        if not self._root.is_dir():
            raise NotADirectoryError(f"model repository {self._root} is not a directory")
        entries: dict[str, ModelEntry] = {}
        for child in sorted(self._root.iterdir()):
            name = child.name
            if name.startswith(".") or not child.is_dir():
                continue
            if not os.path.lexists(child / MODEL_FILE):
                continue
            if not is_valid_model_name(name):
                entry = invalid_name_entry(name, child)
                log.warning("model %s FAILED: %s", entry.name, entry.reason)
                entries[entry.name] = entry
                continue
            entry = load_model_folder(name, child, self._limits)
            if isinstance(entry, FailedModel):
                log.warning("model %s FAILED: %s", name, entry.reason)
            entries[name] = entry
        self._entries = entries

    def list(self) -> list[ModelEntry]:
        return [self._entries[name] for name in sorted(self._entries)]

    def get(self, name: str) -> ModelEntry:
        """The entry named ``name`` (loaded or failed); NotFound for anything else."""
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is not None:  # a folder listed FAILED for its name is found under that name too
            return entry
        if not is_valid_model_name(name):
            raise NotFound(f"model {echo(str(name))} not found: not a valid model name")
        entry = self._entries.get(name)
        if entry is None:
            names = sorted(self._entries)
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise NotFound(f"model {echo(name)} not found; available models: {shown or '(none)'}")
        return entry


def invalid_name_entry(name: str, folder: Path) -> FailedModel:
    """A model folder whose name cannot be a model name, listed FAILED with the rule it breaks.

    Listed under its name as-is when that is printable UTF-8 (spaces, accents), else as ascii() spells
    it, so that ListModels can always send it.
    """
    def show(text: str) -> str:
        try:
            text.encode("utf-8")  # undecodable bytes of the file name come as lone surrogates
        except UnicodeEncodeError:
            return ascii(text)[1:-1]
        return text if text.isprintable() else ascii(text)[1:-1]

    bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        why = "it contains " + ", ".join(repr(show(c)) for c in bad[:10]) + (" and more" if len(bad) > 10 else "")
    elif not name[:1].isalnum():
        why = f"it starts with {show(name[:1])!r}"
    else:
        why = f"it is {len(name)} characters long"
    return FailedModel(name=show(name), folder=folder, reason=(
        f"the folder name is not a valid model name ({why}): a model name is 1 to 128 characters of A-Z, "
        "a-z, 0-9, '.', '_' and '-', starting with a letter or a digit; rename the folder to serve it"))


@dataclass
class _Learned:
    """What loading found out before it failed, for the FailedModel."""

    sha256: str = ""
    kind: str = ""


def load_model_folder(name: str, folder: Path, limits: RepositoryLimits) -> ModelEntry:
    """Load and validate one model folder; never raises, a problem becomes a FailedModel."""
    learned = _Learned()
    try:
        return _load(name, folder, limits, learned)
    except ModelConfigError as exc:
        reason = str(exc)
    except Exception as exc:  # a bad model must not take the repository down
        reason = f"unexpected error while loading: {type(exc).__name__}: {first_line(str(exc))}"
    return FailedModel(name=name, folder=folder, reason=clip(reason, _MAX_REASON_CHARS),
                       sha256=learned.sha256, kind=learned.kind)


def _load(name: str, folder: Path, limits: RepositoryLimits, learned: _Learned) -> LoadedModel:
    raw = read_model_file(folder, limits.max_model_bytes)
    learned.sha256 = hashlib.sha256(raw).hexdigest()
    config = read_config(folder)
    learned.kind = config.kind

    model = parse_model(raw)
    check_domains(model, limits.allowed_domains)  # before reading any external data
    check_opset(model)
    external_bytes = external_data_bytes(model, folder)
    total = len(raw) + external_bytes
    if external_bytes and total > limits.max_model_bytes:
        raise ModelConfigError(
            f"model.onnx with its external data is {human_bytes(total)}, "
            f"over the limit of {human_bytes(limits.max_model_bytes)}"
        )
    if external_bytes or uses_external_data(model):
        load_external_data(model, folder)
        check_external_data_loaded(model)
        serialized = model.SerializeToString()
    else:
        serialized = raw
    # `serialized` is the model as bytes for the checks below, serialized at most once; it goes
    # when this function returns, so the loaded model holds its weights once, in `model`.
    del raw

    check_with_onnx_checker(serialized)
    signature = inspect_signature(infer_shapes(serialized, model).graph, config, folder, limits.max_model_bytes)
    if limits.check_with_session:
        check_session(serialized)

    return LoadedModel(
        name=name,
        folder=folder,
        config=config,
        model=model,
        sha256=learned.sha256,
        inputs=signature.inputs,
        outputs=signature.outputs,
        input_spec=signature.input_spec,
        output_spec=signature.output_spec,
        example_shape=signature.example_shape,
        num_classes=signature.num_classes,
        labels=signature.labels,
        feature_names=signature.feature_names,
        preprocess=signature.preprocess,
        background=signature.background,
    )


__all__ = [
    "FAILED",
    "MODEL_NAME_PATTERN",
    "READY",
    "FailedModel",
    "LoadedModel",
    "ModelEntry",
    "ModelRepository",
    "RepositoryLimits",
    "invalid_name_entry",
    "is_valid_model_name",
    "load_model_folder",
]
