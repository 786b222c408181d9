"""What every graph variant is: a small frozen spec that owns its interface and its graph builder.

A variant is the user's model wrapped in the prefix and suffix one kind of work needs (occlusion
windows, RISE masks, gradients...). Its spec is hashable and holds only what changes the graph's
structure (values that do not are graph inputs, fed per job or per row), so the engine can key its
sessions by (model, spec) and a client cannot make it build one session per parameter value.
Each kind lives in its own module and registers itself here with :func:`register`; nothing else
knows the list of kinds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, TypeVar

import onnx
from onnx import TensorProto

from ..builder import GraphBuilder
from ..compose import model_opset, splice
from ..score import class_scores, declare_common_inputs, declare_target, target_score
from ..signature import ModelSignature

SCORE_OUTPUT = "score"
PROBABILITIES_OUTPUT = "probabilities"
RAW_OUTPUT = "output"


@dataclass(frozen=True)
class VariantInterface:
    """What the engine feeds and reads: per-job constants (stacked one slot per job), per-row codes,
    per-row outputs and per-slot outputs (one value per job in the batch)."""

    constants: tuple[str, ...]
    codes: tuple[str, ...]
    row_outputs: tuple[str, ...]
    slot_outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class VariantSpec:
    """Base of every variant kind: subclasses are frozen dataclasses with a class-level `kind`."""

    kind: ClassVar[str] = ""

    def interface(self) -> VariantInterface:
        raise NotImplementedError

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        raise NotImplementedError

    def max_batch_rows(self, sig: ModelSignature, configured: int) -> int:
        """Rows per batch: the model's, unless this variant's tensors grow faster than its rows."""
        return configured

    def describe(self) -> str:
        """kind/field=value... of the fields that differ from their defaults (logs, graph names)."""
        parts = [self.kind]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default and value not in ("", None, False, 0):
                parts.append(f"{f.name}={value}" if not isinstance(value, bool) else f.name)
        return "/".join(parts)


V = TypeVar("V", bound=type[VariantSpec])
REGISTRY: dict[str, type[VariantSpec]] = {}


def register(cls: V) -> V:
    """Class decorator: make a variant kind known by its `kind` name."""
    if not cls.kind or cls.kind in REGISTRY:
        raise ValueError(f"variant kind {cls.kind!r} is empty or registered twice")
    REGISTRY[cls.kind] = cls
    return cls


def create(kind: str, **fields: object) -> VariantSpec:
    """A spec by kind name, constructed with keywords: create("rise", score="probability", grid_size=7)."""
    if kind not in REGISTRY:
        raise ValueError(f"unknown variant kind {kind!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[kind](**fields)  # type: ignore[arg-type]


# The common shape of a scoring variant: prefix -> model -> the target score of every row.

Prefix = Callable[[GraphBuilder, ModelSignature, str, str], str]


def scored_model(model: onnx.ModelProto, sig: ModelSignature, scope: str, score: str, prefix: Prefix,
                 extra: Callable[[GraphBuilder, str, str, str], None] | None = None) -> onnx.ModelProto:
    """prefix(b, sig, x0, job_index) makes the perturbed batch; the suffix outputs each row's target
    score under SCORE_OUTPUT; `extra(b, score, job_index, x0)` may add outputs after it."""
    b = GraphBuilder(model_opset(model), scope)
    x0, job_index = declare_common_inputs(b, sig.example_shape)
    target = declare_target(b)
    b.op("Identity", [prefix(b, sig, x0, job_index)], out=sig.input_name)
    b.mark_model()
    value = target_score(b, class_scores(b, sig.output_name, score, sig.scores), target, job_index)
    b.output(value, SCORE_OUTPUT, TensorProto.FLOAT, ["rows"])
    if extra is not None:
        extra(b, value, job_index, x0)
    return splice(model, sig.input_name, b)
