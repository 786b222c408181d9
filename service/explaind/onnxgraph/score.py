"""Suffix: the target class's score per row, as a probability or a logit.

Probability of a logits model is softmax over classes; a probabilities model's output is used as it
is. A logit cannot be recovered from probabilities, so that combination is refused before a graph is
built (see explaind.methods.base).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .builder import GraphBuilder

PROBABILITY = "probability"
LOGIT = "logit"


def class_scores(b: GraphBuilder, output: str, score: str, model_scores: str) -> str:
    """[R, K] scores of the requested kind from the model's [R, K] output."""
    if score == PROBABILITY and model_scores == "logits":
        return b.op("Softmax", [output], axis=1)
    if score == LOGIT and model_scores != "logits":
        raise ValueError("a logit score needs a model that outputs logits")
    return output


def target_score(b: GraphBuilder, scores: str, target: str, job_index: str) -> str:
    """[R] score of each row's target class: scores[r, target[job_index[r]]]."""
    row_target = b.op("Gather", [target, job_index], axis=0)
    picked = b.op("GatherElements", [scores, b.unsqueeze(row_target, [1])], axis=1)
    return b.op("Reshape", [picked, b.const(np.array([-1], np.int64), "flat")])


def declare_common_inputs(b: GraphBuilder, example_shape: tuple[int, ...]) -> tuple[str, str]:
    """The inputs every variant has: x0 [J, ...] (the jobs' original inputs), job_index [R]."""
    x0 = b.input("x0", TensorProto.FLOAT, ["jobs", *example_shape])
    job_index = b.input("job_index", TensorProto.INT64, ["rows"])
    return x0, job_index


def declare_target(b: GraphBuilder) -> str:
    """target [J]: each job's target class."""
    return b.input("target", TensorProto.INT64, ["jobs"])
