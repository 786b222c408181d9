"""One error hierarchy for the whole service.

Every failure a caller can cause or observe is an :class:`ExplaindError` carrying the gRPC status
code it maps to. The API edge (``explaind.api.servicer``) translates them once; nothing else in the
service knows about gRPC. Messages name the field, what was expected and what came.
"""

from __future__ import annotations

import collections.abc

import grpc


class ExplaindError(Exception):
    """Base class: a message for the caller and the gRPC status code it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


ECHO_CHARS = 100  # a request's string is echoed in an error up to this many characters
GOT_CHARS = 300  # the longest description of what came (it may quote several echoed values)


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """A request's value as an error shows it: a string quoted and cut to `limit` characters with its
    length said ("'aaaa...' (16384 characters)"), bytes by their count, numbers and sequences plainly
    (numpy scalars as Python numbers, never an object's repr), anything cut to `limit` characters."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit] + '...'!r} ({len(value)} characters)"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(value)} bytes"
    return cut(_plain(value), limit)


def cut(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, its length said when it was cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _plain(value: object) -> str:
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a numpy scalar
        value = value.item()  # type: ignore[union-attr]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return echo(value)
    if hasattr(value, "tolist") and hasattr(value, "ndim"):  # a numpy array: its values, flattened
        value = value.ravel().tolist()  # type: ignore[union-attr]
    if isinstance(value, collections.abc.Sequence):  # lists, tuples, protobuf repeated fields
        items = list(value)
        shown = ", ".join(_plain(v) for v in items[:10])
        return f"[{shown}, ...] ({len(items)} values)" if len(items) > 10 else f"[{shown}]"
    return str(value)


class InvalidArgument(ExplaindError):
    """Bad shape, dtype, non-finite values, undecodable image, parameter out of range.

    `got` is either a description (a str, kept as written and cut to GOT_CHARS) or the request's value
    itself, shown by `echo`; request strings inside a description should be passed through `echo`.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, expected: str, got: object) -> None:
        shown = cut(got, GOT_CHARS) if isinstance(got, str) else echo(got)
        super().__init__(f"{field}: expected {expected}, got {shown}")
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


class ModelRunError(ExplaindError):
    """The model failed in onnxruntime at run time (not for lack of memory): a fault of the model on
    this input, not a bug of explaind; INTERNAL because the caller cannot fix it by changing fields."""

    code = grpc.StatusCode.INTERNAL


class ExplaindBug(ExplaindError):
    """explaind's own work failed: a node explaind added around the user's model (a variant's prefix
    or suffix, a derived gradient), or its feed of that graph, was refused by onnxruntime. INTERNAL,
    said to be a bug of explaind (to be reported), and the model is not blamed (its health stays)."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(ExplaindError):
    """Shutting down, or the model failed to load."""

    code = grpc.StatusCode.UNAVAILABLE


class ModelConfigError(Exception):
    """A model folder that cannot be served; the reason is shown in ListModels/GetModel as FAILED."""
