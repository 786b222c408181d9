"""Reading the files of one model folder: model.onnx, its external data, model.yaml, labels, background.

A model folder is untrusted input. Every file is reached through ``resolve_in_folder`` (model.yaml's
path rules: relative, no ``..``, still inside the folder once symlinks are resolved, a regular file
and so never a FIFO or a device), and its size is checked before any byte is read, so a planted
symlink or an oversized file fails the model with a reason instead of reading outside the folder or
exhausting memory. What the bytes mean is for the ONNX checks and the signature inspection.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper

from explaind.errors import ModelConfigError
from explaind.models.config import ModelConfig, UnsafePath, parse_model_config, resolve_in_folder, safe_yaml_load
from explaind.models.text import first_line, human_bytes

MODEL_FILE = "model.onnx"
CONFIG_FILE = "model.yaml"
MAX_YAML_BYTES = 1 << 20
MAX_LABELS_BYTES = 16 << 20


def read_model_file(folder: Path, limit: int) -> bytes:
    """The bytes of ``folder/model.onnx``, refused over ``limit`` bytes or outside the folder."""
    path = folder / MODEL_FILE
    try:
        resolved = resolve_in_folder(folder, MODEL_FILE)
    except UnsafePath as exc:
        if path.is_symlink() and "outside" in str(exc):
            raise ModelConfigError("model.onnx is a symlink that resolves outside the model folder") from None
        raise ModelConfigError(f"model.onnx {exc}") from None
    size = resolved.stat().st_size
    if size > limit:
        raise ModelConfigError(
            f"model.onnx is {human_bytes(size)}, over the limit of {human_bytes(limit)}"
        )
    with open(resolved, "rb") as f:
        data = f.read(limit + 1)  # the file may have grown since stat()
    if len(data) > limit:
        raise ModelConfigError(f"model.onnx is over the limit of {human_bytes(limit)}")
    return data


def _checked_file(folder: Path, rel: str, where: str, limit: int) -> Path:
    """``folder/rel`` resolved inside the folder and at most ``limit`` bytes; errors start with ``where``."""
    try:
        path = resolve_in_folder(folder, rel)
    except UnsafePath as exc:
        raise ModelConfigError(f"{where} {exc}") from None
    size = path.stat().st_size
    if size > limit:
        raise ModelConfigError(f"{where} is {human_bytes(size)}, over the limit of {human_bytes(limit)}")
    return path


def _read_utf8(path: Path, where: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelConfigError(f"{where} is not valid UTF-8") from None


def read_config(folder: Path) -> ModelConfig:
    """``folder/model.yaml`` parsed and validated (at most MAX_YAML_BYTES, UTF-8, safe YAML)."""
    if not os.path.lexists(folder / CONFIG_FILE):
        raise ModelConfigError("model.yaml is missing: every model folder needs one next to model.onnx")
    path = _checked_file(folder, CONFIG_FILE, CONFIG_FILE, MAX_YAML_BYTES)
    return parse_model_config(safe_yaml_load(_read_utf8(path, CONFIG_FILE), CONFIG_FILE), folder)


def read_labels_file(folder: Path, rel: str) -> tuple[str, ...]:
    """One label per line of model.yaml's ``labels_file``; trailing blank lines are dropped."""
    where = f"model.yaml: labels_file: {rel!r}"
    lines = _read_utf8(_checked_file(folder, rel, where, MAX_LABELS_BYTES), where).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ModelConfigError(f"{where} is empty")
    labels = tuple(line.strip() for line in lines)
    for number, label in enumerate(labels, start=1):
        if not label:
            # Skipping it would silently shift every later label onto the wrong class.
            raise ModelConfigError(f"{where} line {number} is empty")
    return labels


def read_background_array(folder: Path, rel: str, limit: int) -> np.ndarray:
    """The single array of model.yaml's ``background`` .npy file, as stored (no pickles, no archives).

    Whether it fits the model (dtype, [K, F] shape, finite values) is the signature's check.
    """
    where = f"model.yaml: background: {rel!r}"
    path = _checked_file(folder, rel, where, limit)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ModelConfigError(f"{where} is not a readable .npy array: {first_line(str(exc))}") from None
    if not isinstance(array, np.ndarray):
        raise ModelConfigError(f"{where} must hold a single array (.npy), not an archive")
    return array


def external_file_size(folder: Path, location: str) -> int:
    """Size of the external data file ``location``; raises UnsafePath for a reference leaving the folder."""
    return resolve_in_folder(folder, location).stat().st_size


def load_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Read every external tensor of ``model`` into it (its references checked beforehand)."""
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(folder.resolve()))
    except Exception as exc:
        raise ModelConfigError(f"cannot load external data: {first_line(str(exc))}") from None
