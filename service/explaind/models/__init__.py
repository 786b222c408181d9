"""The model repository: model folders, their model.yaml, and validated, loaded models."""

from explaind.models.config import ModelConfig, Preprocess, parse_model_config, resolve_in_folder
from explaind.models.repository import (
    FAILED,
    MODEL_NAME_PATTERN,
    READY,
    ModelEntry,
    ModelRepository,
    RepositoryLimits,
    TensorSpec,
    is_valid_model_name,
    load_model_folder,
)

__all__ = [
    "FAILED",
    "MODEL_NAME_PATTERN",
    "READY",
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
