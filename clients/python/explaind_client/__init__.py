"""explaind-client: call an explaind server from Python (grpcio, protobuf and numpy only)."""

from .client import (ClassScore, Evaluation, ExplaindClient, Explanation, MetricScore, Progress, RenderSpec,
                     build_evaluate_request, build_metrics, build_region, build_request)
from .tensors import from_proto, to_proto

__all__ = ["ClassScore", "Evaluation", "ExplaindClient", "Explanation", "MetricScore", "Progress", "RenderSpec",
           "build_evaluate_request", "build_metrics", "build_region", "build_request", "from_proto", "to_proto"]
__version__ = "0.1.0"
