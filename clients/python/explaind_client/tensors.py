"""numpy <-> explaind.v1.Tensor: little-endian, C order, dtype named by the DataType enum."""

from __future__ import annotations

import numpy as np

from .v1 import explaind_pb2 as pb

DTYPES: dict[int, np.dtype] = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT64: np.dtype("<f8"),
    pb.FLOAT16: np.dtype("<f2"),
    pb.INT64: np.dtype("<i8"),
    pb.INT32: np.dtype("<i4"),
    pb.INT16: np.dtype("<i2"),
    pb.INT8: np.dtype("i1"),
    pb.UINT8: np.dtype("u1"),
    pb.BOOL: np.dtype("?"),
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}


def dtype_name(code: int) -> str:
    return pb.DataType.Name(code) if code in pb.DataType.values() else f"unknown dtype {code}"


def to_proto(array: np.ndarray) -> pb.Tensor:
    """Encode an array (any byte order) as a Tensor."""
    array = np.asarray(array)
    dtype = array.dtype if array.dtype.itemsize == 1 else array.dtype.newbyteorder("<")
    if dtype not in _CODES:
        raise ValueError(f"dtype {array.dtype} has no explaind.v1.DataType")
    data = np.ascontiguousarray(array, dtype=dtype).tobytes()
    return pb.Tensor(dtype=_CODES[dtype], shape=list(array.shape), data=data)


MAX_DIMENSIONS = 32  # numpy's own limit is 64; no model input comes close
_MAX_ELEMENTS = (1 << 63) - 1  # int64, the shape's element count on the wire


def _shape_text(shape: tuple[int, ...] | list[int]) -> str:
    """A shape as "[3, 64, 64]", at most 8 dimensions shown."""
    shown = ", ".join(str(d) for d in list(shape)[:8])
    return f"[{shown}, ...] ({len(shape)} dimensions)" if len(shape) > 8 else f"[{shown}]"


def from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Decode a Tensor; raises ValueError naming what is wrong (dtype, shape or byte length).

    The message reads "field: expected X, got Y" (the server turns it into INVALID_ARGUMENT); the
    shape is checked before anything is computed from it, so a shape of 100,000 dimensions or one
    whose element count overflows int64 is named as such.
    """
    if tensor.dtype not in DTYPES:
        raise ValueError(f"tensor.dtype: expected one of {sorted(pb.DataType.Name(c) for c in DTYPES)}, "
                         f"got {dtype_name(tensor.dtype)}")
    if len(tensor.shape) > MAX_DIMENSIONS:
        raise ValueError(f"tensor.shape: expected at most {MAX_DIMENSIONS} dimensions, "
                         f"got {len(tensor.shape)} dimensions")
    shape = tuple(int(d) for d in tensor.shape)
    negative = [i for i, d in enumerate(shape) if d < 0]
    if negative:
        raise ValueError(f"tensor.shape: expected non-negative dimensions, got {_shape_text(shape)} "
                         f"(dimension {negative[0]} is {shape[negative[0]]})")
    dtype = DTYPES[tensor.dtype]
    elements = 1
    for d in shape:  # Python integers: no silent int64 wrap-around
        elements *= d
    if elements > _MAX_ELEMENTS:
        raise ValueError(f"tensor.shape: expected a shape whose element count fits in int64, "
                         f"got {_shape_text(shape)} ({elements} elements)")
    expected = elements * dtype.itemsize
    if len(tensor.data) != expected:
        raise ValueError(f"tensor.data: expected {expected} bytes for shape {_shape_text(shape)} of "
                         f"{pb.DataType.Name(tensor.dtype)}, got {len(tensor.data)} bytes")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
