/** Tensors <-> typed arrays and request building, without a server. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { buildEvaluateRequest, buildRequest, fromHalf, fromTensor, pb, toHalf, toTensor } from "../src";

describe("tensors", () => {
  it("float32 goes on the wire little-endian in C order", () => {
    const tensor = toTensor(new Float32Array([1, -2, 0.5, 0]), [2, 2]);
    assert.equal(tensor.dtype, pb.DataType.FLOAT32);
    assert.deepEqual(tensor.shape, [2n, 2n]);
    assert.deepEqual([...tensor.data], [0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0, 0, 0, 0, 0x3f, 0, 0, 0, 0]);
  });

  it("every dtype round-trips through the wire format", () => {
    const cases = [
      [new Float32Array([1.5, -3.25, 1e-30]), pb.DataType.FLOAT32],
      [new Float64Array([Math.PI, -1e300]), pb.DataType.FLOAT64],
      [new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n, 7n]), pb.DataType.INT64],
      [new Int32Array([-(2 ** 31), 2 ** 31 - 1]), pb.DataType.INT32],
      [new Int16Array([-32768, 32767]), pb.DataType.INT16],
      [new Int8Array([-128, 127]), pb.DataType.INT8],
      [new Uint8Array([0, 255]), pb.DataType.UINT8],
    ] as const;
    for (const [data, dtype] of cases) {
      const tensor = toTensor(data);
      assert.equal(tensor.dtype, dtype);
      const back = fromTensor(pb.Tensor.decode(pb.Tensor.encode(tensor).finish()));
      assert.deepEqual(back.data, data);
      assert.deepEqual(back.shape, [data.length]);
    }
    const int64 = toTensor(new BigInt64Array([-2n]));
    assert.deepEqual([...int64.data], [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  });

  it("bool is sent as 0 / 1 bytes", () => {
    const tensor = toTensor(new Uint8Array([0, 3, 1]), [3], pb.DataType.BOOL);
    assert.deepEqual([...tensor.data], [0, 1, 1]);
    assert.equal(fromTensor(tensor).dtype, pb.DataType.BOOL);
  });

  it("float16: IEEE half bits, rounded to nearest even (numpy's values)", () => {
    // np.array([1, -2, 65504, 65520, 0.1, 2**-24, 2**-25, 3*2**-25, 1 + 2**-11, 1 + 3*2**-11], np.float16).view(np.uint16)
    const values = [1, -2, 65504, 65520, 0.1, 2 ** -24, 2 ** -25, 3 * 2 ** -25, 1 + 2 ** -11, 1 + 3 * 2 ** -11];
    const bits = [0x3c00, 0xc000, 0x7bff, 0x7c00, 0x2e66, 0x0001, 0x0000, 0x0002, 0x3c00, 0x3c02];
    assert.deepEqual(values.map(toHalf), bits);
    assert.equal(fromHalf(0x2e66), 0.0999755859375);
    assert.equal(fromHalf(0x0001), 2 ** -24);
    assert.equal(fromHalf(0xfc00), -Infinity);
    assert.ok(Number.isNaN(fromHalf(toHalf(NaN))));
    const tensor = toTensor(new Float32Array([1, 0.1]), [2], pb.DataType.FLOAT16);
    assert.deepEqual([...tensor.data], [0x00, 0x3c, 0x66, 0x2e]);
    assert.deepEqual(fromTensor(tensor).data, new Float32Array([1, 0.0999755859375]));
  });

  it("decoding names the field, the expected and the received", () => {
    const data = Buffer.alloc(12);
    assert.throws(() => fromTensor({ dtype: pb.DataType.FLOAT32, shape: [2n, 2n], data }),
      { message: "tensor.data: expected 16 bytes for shape [2, 2] of FLOAT32, got 12 bytes" });
    assert.throws(() => fromTensor({ dtype: 42 as pb.DataType, shape: [], data }),
      /tensor.dtype: expected one of BOOL, FLOAT16, FLOAT32, FLOAT64, INT16, INT32, INT64, INT8, UINT8, got unknown dtype 42/);
    assert.throws(() => fromTensor({ dtype: pb.DataType.UINT8, shape: [3n, -1n], data }),
      { message: "tensor.shape: expected non-negative dimensions, got [3, -1] (dimension 1 is -1)" });
    assert.throws(() => fromTensor({ dtype: pb.DataType.UINT8, shape: Array(33).fill(1n), data }),
      /at most 32 dimensions, got 33/);
    assert.throws(() => fromTensor({ dtype: pb.DataType.UINT8, shape: [2n ** 32n, 2n ** 32n], data }),
      /element count fits in int64/);
  });

  it("encoding checks the shape against the data", () => {
    assert.throws(() => toTensor(new Float32Array(5), [2, 2]), { message: "data: expected 4 elements for shape [2, 2], got 5" });
    assert.throws(() => toTensor(new Float32Array(2), [2], pb.DataType.INT32), /Float32Array cannot be sent as INT32/);
  });
});

describe("requests", () => {
  it("snake_case and camelCase build the same message, with its parameters", () => {
    const a = buildRequest("shapes", { method: "kernel_shap", params: { nsamples: 100, fill: "mean" }, image: new Uint8Array([1, 2]) });
    const b = buildRequest("shapes", { method: "kernelShap", params: { nsamples: 100, fill: "mean" }, image: new Uint8Array([1, 2]) });
    assert.deepEqual(pb.ExplainRequest.encode(a).finish(), pb.ExplainRequest.encode(b).finish());
    assert.equal(a.method?.$case, "kernelShap");
    const decoded = pb.ExplainRequest.decode(pb.ExplainRequest.encode(a).finish());
    assert.deepEqual(decoded.method, { $case: "kernelShap", value: pb.KernelShap.fromPartial({ nsamples: 100, fill: "mean" }) });
    assert.deepEqual(decoded.input, { $case: "image", value: Buffer.from([1, 2]) });
  });

  it("target, score, seed, render and region go where the proto says", () => {
    const request = buildRequest("shapes", {
      method: "occlusion", tensor: { data: new Float32Array(12), shape: [3, 2, 2] }, target: "circle", score: "logit",
      seed: 2n ** 64n - 1n, render: { colormap: "coolwarm", polarity: "BOTH", alpha: 0.3 }, evaluate: [["pointing_game", { tolerance: 2 }]],
      box: [0, 0, 2, 2],
    });
    const wire = pb.ExplainRequest.decode(pb.ExplainRequest.encode(request).finish());
    assert.deepEqual(wire.target, { kind: { $case: "label", value: "circle" } });
    assert.equal(wire.score, pb.Score.LOGIT);
    assert.equal(wire.seed, 2n ** 64n - 1n);
    assert.equal(wire.render?.colormap, pb.Colormap.COOLWARM);
    assert.equal(wire.render?.polarity, pb.Polarity.BOTH);
    assert.ok(Math.abs((wire.render?.alpha ?? 0) - 0.3) < 1e-7);
    assert.deepEqual(wire.evaluate[0].metric, { $case: "pointingGame", value: { tolerance: 2 } });
    assert.deepEqual(wire.region?.box, [0, 0, 2, 2]);
    assert.deepEqual(wire.input?.$case === "tensor" && wire.input.value.shape, [3n, 2n, 2n]);
    assert.throws(() => buildRequest("m", { method: "rise", seed: -1 }), /seed: expected 0 <= seed < 2\^64, got -1/);
    assert.throws(() => buildRequest("m", { method: "rise", render: { colormap: "rainbow" as "jet" } }), /render.colormap: expected one of VIRIDIS/);
    assert.throws(() => buildRequest("m", { method: "rise", image: new Uint8Array(1), tensor: { data: new Float32Array(1), shape: [1] } }),
      /expected one input, got both/);
  });

  it("an evaluation of a given attribution needs no method", () => {
    const request = buildEvaluateRequest("tabular", {
      tensor: { data: new Float32Array(13), shape: [13] }, attribution: { data: new Float32Array(13).fill(1), shape: [13] },
      metrics: ["deletion", ["insertion", { steps: 5, substrate: "mean" }]],
    });
    assert.equal(request.explain?.method, undefined);
    assert.equal(request.metrics.length, 2);
    assert.deepEqual(request.metrics[1].metric, { $case: "insertion", value: { steps: 5, substrate: "mean", order: undefined } });
    assert.deepEqual(request.attribution?.shape, [13n]);
  });
});
