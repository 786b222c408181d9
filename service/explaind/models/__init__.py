"""The model repository: model folders, their model.yaml, and validated, loaded models.

Modules, by responsibility: ``repository`` (the catalogue: scanning, lookup, LoadedModel and
FailedModel), ``files`` (safe reads inside a model folder), ``onnx_checks`` (is the model safe and
runnable), ``signature`` (its input and output against model.yaml), ``config`` (model.yaml's
schema), ``inputs`` (a request's input in the model's input space), ``white_box`` (gradients and
layers), ``text`` (how reasons word sizes, shapes and names).
"""

from explaind.models.config import ModelConfig, Preprocess, parse_model_config, resolve_in_folder
from explaind.models.repository import (
    FAILED,
    MODEL_NAME_PATTERN,
    READY,
    FailedModel,
    LoadedModel,
    ModelEntry,
    ModelRepository,
    RepositoryLimits,
    is_valid_model_name,
    load_model_folder,
)
from explaind.models.signature import TensorSpec

__all__ = [
    "FAILED",
    "MODEL_NAME_PATTERN",
    "READY",
    "FailedModel",
    "LoadedModel",
    "ModelConfig",
    "ModelEntry",
    "ModelRepository",
    "Preprocess",
    "RepositoryLimits",
    "TensorSpec",
    "is_valid_model_name",
    "load_model_folder",
    "parse_model_config",
    "resolve_in_folder",
]
