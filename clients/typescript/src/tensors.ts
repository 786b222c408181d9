/**
 * Typed arrays <-> explaind.v1.Tensor: little-endian values in C (row-major) order, the dtype named by
 * the DataType enum. The same rules as the Python client's explaind_client/tensors.py.
 */

import { DataType, Tensor } from "./gen/explaind/v1/explaind";

/** The typed array each DataType decodes to. FLOAT16 decodes to Float32Array (Node has no
 * Float16Array before 22), BOOL to Uint8Array of 0 and 1. */
export interface DTypeArrays {
  [DataType.FLOAT32]: Float32Array;
  [DataType.FLOAT64]: Float64Array;
  [DataType.FLOAT16]: Float32Array;
  [DataType.INT64]: BigInt64Array;
  [DataType.INT32]: Int32Array;
  [DataType.INT16]: Int16Array;
  [DataType.INT8]: Int8Array;
  [DataType.UINT8]: Uint8Array;
  [DataType.BOOL]: Uint8Array;
}

export type TensorDType = keyof DTypeArrays;
export type TypedArray = DTypeArrays[TensorDType];

/** A dense array: `data` in C order, `shape` its dimensions, `dtype` its element type on the wire. */
export interface NdArray<T extends TypedArray = TypedArray> {
  data: T;
  shape: number[];
  dtype: TensorDType;
}

/** Bytes per element of each DataType on the wire. */
export const ITEM_SIZE: Record<TensorDType, number> = {
  [DataType.FLOAT32]: 4,
  [DataType.FLOAT64]: 8,
  [DataType.FLOAT16]: 2,
  [DataType.INT64]: 8,
  [DataType.INT32]: 4,
  [DataType.INT16]: 2,
  [DataType.INT8]: 1,
  [DataType.UINT8]: 1,
  [DataType.BOOL]: 1,
};

/** At most this many dimensions (the Python client's and the server's limit). */
export const MAX_DIMENSIONS = 32;
const MAX_ELEMENTS = (1n << 63n) - 1n; // the shape's element count must fit in int64 on the wire
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function dtypeName(code: number): string {
  return code in ITEM_SIZE ? DataType[code] : `unknown dtype ${code}`;
}

function shapeText(shape: readonly (number | bigint)[]): string {
  const shown = shape.slice(0, 8).join(", ");
  return shape.length > 8 ? `[${shown}, ...] (${shape.length} dimensions)` : `[${shown}]`;
}

/** The DataType a typed array is sent as when none is given. */
function defaultDType(data: TypedArray): TensorDType {
  if (data instanceof Float32Array) return DataType.FLOAT32;
  if (data instanceof Float64Array) return DataType.FLOAT64;
  if (data instanceof BigInt64Array) return DataType.INT64;
  if (data instanceof Int32Array) return DataType.INT32;
  if (data instanceof Int16Array) return DataType.INT16;
  if (data instanceof Int8Array) return DataType.INT8;
  if (data instanceof Uint8Array) return DataType.UINT8;
  throw new TypeError(`data: expected a Float32Array, Float64Array, BigInt64Array, Int32Array, Int16Array, ` +
    `Int8Array or Uint8Array, got ${Object.prototype.toString.call(data)}`);
}

/** Reverse the bytes of each `size`-byte element in place (big-endian hosts only). */
function swapBytes(bytes: Uint8Array, size: number): void {
  if (size === 1) return;
  for (let i = 0; i < bytes.length; i += size) bytes.subarray(i, i + size).reverse();
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE 754 binary32 -> binary16 bits, rounding to nearest even (as numpy's astype(float16)). */
export function toHalf(value: number): number {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  let mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0); // Inf, NaN
  const e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow: Inf
  if (e <= 0) {
    if (e < -10) return sign; // underflow: signed zero
    mantissa |= 0x800000; // the implicit bit, then a subnormal half
    const shift = 14 - e;
    const half = mantissa >>> shift;
    const rest = mantissa & ((1 << shift) - 1);
    const midpoint = 1 << (shift - 1);
    return sign | (half + (rest > midpoint || (rest === midpoint && half & 1) ? 1 : 0));
  }
  const half = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  // a carry out of the mantissa correctly bumps the exponent (and overflows to Inf at the top)
  return sign | (half + (rest > 0x1000 || (rest === 0x1000 && half & 1) ? 1 : 0));
}

/** IEEE 754 binary16 bits -> number. */
export function fromHalf(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >>> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/**
 * Encode `data` of `shape` as a Tensor. `dtype` defaults to the array's own type; FLOAT16 takes a
 * Float32Array (or Float64Array) and rounds each value to half precision, BOOL a Uint8Array (nonzero is
 * true). Throws RangeError when the element count does not match the shape.
 */
export function toTensor(data: TypedArray | NdArray, shape?: readonly number[], dtype?: TensorDType): Tensor {
  if (!ArrayBuffer.isView(data)) {
    return toTensor(data.data, shape ?? data.shape, dtype ?? data.dtype);
  }
  const dims = shape ?? [data.length];
  const code = dtype ?? defaultDType(data);
  if (!(code in ITEM_SIZE)) throw new RangeError(`dtype: expected a DataType other than ${dtypeName(code)}`);
  if (dims.length > MAX_DIMENSIONS) {
    throw new RangeError(`shape: expected at most ${MAX_DIMENSIONS} dimensions, got ${dims.length} dimensions`);
  }
  if (dims.some((d) => !Number.isSafeInteger(d) || d < 0)) {
    throw new RangeError(`shape: expected non-negative integer dimensions, got ${shapeText(dims)}`);
  }
  const elements = dims.reduce((n, d) => n * d, 1);
  if (elements !== data.length) {
    throw new RangeError(`data: expected ${elements} elements for shape ${shapeText(dims)}, got ${data.length}`);
  }
  let bytes: Uint8Array;
  if (code === DataType.FLOAT16) {
    if (!(data instanceof Float32Array || data instanceof Float64Array)) {
      throw new TypeError("data: FLOAT16 is encoded from a Float32Array or Float64Array");
    }
    const halves = new Uint16Array(data.length);
    for (let i = 0; i < data.length; i++) halves[i] = toHalf(data[i]);
    bytes = new Uint8Array(halves.buffer);
  } else if (code === DataType.BOOL) {
    if (!(data instanceof Uint8Array)) throw new TypeError("data: BOOL is encoded from a Uint8Array");
    bytes = Uint8Array.from(data, (v) => (v ? 1 : 0));
  } else {
    if (defaultDType(data) !== code) {
      throw new TypeError(`data: a ${data.constructor.name} cannot be sent as ${DataType[code]}; ` +
        "convert it to the matching typed array first");
    }
    bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
  }
  if (!LITTLE_ENDIAN) swapBytes(bytes, ITEM_SIZE[code]);
  return { dtype: code, shape: dims.map((d) => BigInt(d)), data: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
}

/**
 * Decode a Tensor into a typed array and its shape. Throws RangeError naming what is wrong ("field:
 * expected X, got Y"): an unknown dtype, too many or negative dimensions, or a byte length that does
 * not match the shape.
 */
export function fromTensor(tensor: Tensor): NdArray {
  const code = tensor.dtype;
  if (!(code in ITEM_SIZE)) {
    const known = Object.keys(ITEM_SIZE).map((c) => DataType[Number(c)]).sort().join(", ");
    throw new RangeError(`tensor.dtype: expected one of ${known}, got ${dtypeName(code)}`);
  }
  const dtype = code as TensorDType;
  if (tensor.shape.length > MAX_DIMENSIONS) {
    throw new RangeError(`tensor.shape: expected at most ${MAX_DIMENSIONS} dimensions, ` +
      `got ${tensor.shape.length} dimensions`);
  }
  const negative = tensor.shape.findIndex((d) => d < 0n);
  if (negative >= 0) {
    throw new RangeError(`tensor.shape: expected non-negative dimensions, got ${shapeText(tensor.shape)} ` +
      `(dimension ${negative} is ${tensor.shape[negative]})`);
  }
  const elements = tensor.shape.reduce((n, d) => n * d, 1n);
  if (elements > MAX_ELEMENTS) {
    throw new RangeError(`tensor.shape: expected a shape whose element count fits in int64, ` +
      `got ${shapeText(tensor.shape)} (${elements} elements)`);
  }
  const expected = elements * BigInt(ITEM_SIZE[dtype]);
  if (BigInt(tensor.data.length) !== expected) {
    throw new RangeError(`tensor.data: expected ${expected} bytes for shape ${shapeText(tensor.shape)} of ` +
      `${DataType[dtype]}, got ${tensor.data.length} bytes`);
  }
  const bytes = new Uint8Array(tensor.data.length); // a copy: aligned, and independent of the message
  bytes.set(tensor.data);
  if (!LITTLE_ENDIAN) swapBytes(bytes, ITEM_SIZE[dtype]);
  const shape = tensor.shape.map(Number);
  const buffer = bytes.buffer;
  switch (dtype) {
    case DataType.FLOAT32: return { data: new Float32Array(buffer), shape, dtype };
    case DataType.FLOAT64: return { data: new Float64Array(buffer), shape, dtype };
    case DataType.FLOAT16: return { data: Float32Array.from(new Uint16Array(buffer), fromHalf), shape, dtype };
    case DataType.INT64: return { data: new BigInt64Array(buffer), shape, dtype };
    case DataType.INT32: return { data: new Int32Array(buffer), shape, dtype };
    case DataType.INT16: return { data: new Int16Array(buffer), shape, dtype };
    case DataType.INT8: return { data: new Int8Array(buffer), shape, dtype };
    case DataType.UINT8: return { data: bytes, shape, dtype };
    case DataType.BOOL: return { data: bytes, shape, dtype };
  }
}
