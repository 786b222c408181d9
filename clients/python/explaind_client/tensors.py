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


def from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Decode a Tensor; raises ValueError naming what is wrong (dtype, shape or byte length)."""
    if tensor.dtype not in DTYPES:
        raise ValueError(f"tensor.dtype: expected one of {sorted(pb.DataType.Name(c) for c in DTYPES)}, "
                         f"got {dtype_name(tensor.dtype)}")
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"tensor.shape: expected non-negative dimensions, got {list(shape)}")
    dtype = DTYPES[tensor.dtype]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(tensor.data) != expected:
        raise ValueError(f"tensor.data: expected {expected} bytes for shape {list(shape)} of "
                         f"{pb.DataType.Name(tensor.dtype)}, got {len(tensor.data)} bytes")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
