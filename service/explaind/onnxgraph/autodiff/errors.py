"""The one error autodiff raises for a graph it cannot differentiate."""

from __future__ import annotations

from ...errors import FailedPrecondition


class UnsupportedOperator(FailedPrecondition):
    """An operator on the differentiated path has no gradient rule (or not for this use of it).

    Maps to FAILED_PRECONDITION: the model stays usable for black-box methods, and the message says
    which operator and which node block the white-box ones.
    """

    def __init__(self, op_type: str, node_name: str, domain: str = "", reason: str = "") -> None:
        where = f"{domain}::{op_type}" if domain not in ("", "ai.onnx") else op_type
        message = f"no gradient rule for operator {where} at node {node_name!r}"
        if reason:
            message += f": {reason}"
        super().__init__(message)
        self.op_type = op_type
        self.node_name = node_name
        self.domain = domain
        self.reason = reason
