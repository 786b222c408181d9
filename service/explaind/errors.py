"""One error hierarchy for the whole service.

Every failure a caller can cause or observe is an :class:`ExplaindError` carrying the gRPC status
code it maps to. The API edge (``explaind.api.servicer``) translates them once; nothing else in the
service knows about gRPC. Messages name the field, what was expected and what came.
"""

from __future__ import annotations

import grpc


class ExplaindError(Exception):
    """Base class: a message for the caller and the gRPC status code it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ExplaindError):
    """Bad shape, dtype, non-finite values, undecodable image, parameter out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, expected: str, got: object) -> None:
        super().__init__(f"{field}: expected {expected}, got {got}")
        self.field = field


class NotFound(ExplaindError):
    """Unknown model or label."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ExplaindError):
    """The request is valid but this model cannot serve it (a method it does not support)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ExplaindError):
    """No bearer token, or one the server does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ExplaindError):
    """A known tenant asking for what it may not do (model control without admin rights)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ExplaindError):
    """Queue full or work over the configured budget. `retry_after_s`: when a retry could be admitted
    (sent as trailing metadata `retry-after-ms`); None when retrying the same request cannot help."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ExplaindError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ExplaindError):
    code = grpc.StatusCode.CANCELLED


class Unavailable(ExplaindError):
    """Shutting down, or the model failed to load."""

    code = grpc.StatusCode.UNAVAILABLE


class ModelConfigError(Exception):
    """A model folder that cannot be served; the reason is shown in ListModels/GetModel as FAILED."""
