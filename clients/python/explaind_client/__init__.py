"""explaind-client: call an explaind server from Python (grpcio, protobuf and numpy only)."""

from .client import ClassScore, ExplaindClient, Explanation, Progress, RenderSpec, build_request
from .tensors import from_proto, to_proto

__all__ = ["ClassScore", "ExplaindClient", "Explanation", "Progress", "RenderSpec", "build_request",
           "from_proto", "to_proto"]
__version__ = "0.1.0"
