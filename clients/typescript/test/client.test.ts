/**
 * The typed client against real servers started here: one plaintext with bearer tokens (the token
 * goes through the interceptor over plaintext), one with TLS.
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import { ExplaindClient, ExplaindError, Explanation, pb, Progress } from "../src";
import { DEMO, makeCertificates, readNpyRows, Server, startServer } from "./server";

const TOKEN = "s3cret-token-for-alice";
const CIRCLE = join(DEMO, "examples", "circle_0.png");
const SHAPES_LABELS = ["circle", "square", "triangle", "cross", "star"];

let plain: Server;
let tls: Server;
let certs: { ca: string; cert: string; key: string };
let client: ExplaindClient;

before(async () => {
  const folder = mkdtempSync(join(tmpdir(), "explaind-ts-pki-"));
  certs = makeCertificates(folder);
  const tokens = join(folder, "tokens");
  writeFileSync(tokens, `# tenant token\nalice ${TOKEN}\n`);
  [plain, tls] = await Promise.all([
    startServer(["--auth-tokens", tokens], { token: TOKEN }),
    startServer(["--tls-cert", certs.cert, "--tls-key", certs.key], { rootCertificates: readFileSync(certs.ca) }, "localhost"),
  ]);
  client = new ExplaindClient(plain.address, { token: TOKEN, timeoutMs: 120_000 });
});

after(async () => {
  client?.close();
  await Promise.all([plain?.stop(), tls?.stop()]);
});

/** The code of the ExplaindError a promise rejects with. */
async function rejection(promise: Promise<unknown>): Promise<ExplaindError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ExplaindError, `expected an ExplaindError, got ${error}`);
    return error;
  }
  assert.fail("expected the call to fail");
}

function pngSize(png: Buffer): [number, number] {
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "PNG signature");
  assert.equal(png.subarray(12, 16).toString("latin1"), "IHDR");
  return [png.readUInt32BE(16), png.readUInt32BE(20)];
}

describe("models and methods", () => {
  it("lists the demo models with what model.yaml says", async () => {
    const models = await client.listModels();
    const byName = Object.fromEntries(models.map((m) => [m.name, m]));
    assert.equal(byName.shapes.status, pb.ModelStatus.READY);
    assert.equal(byName.shapes.kind, pb.ModelKind.IMAGE);
    assert.deepEqual(byName.shapes.labels, SHAPES_LABELS);
    assert.equal(byName.tabular.kind, pb.ModelKind.TABULAR);
    assert.equal(byName.tabular.numFeatures, 13);
    assert.equal(byName.tabular.featureNames[0], "alcohol");
    assert.match(byName.shapes.sha256, /^[0-9a-f]{64}$/);
  });

  it("gets one model: tensors, preprocessing, layers, load time", async () => {
    const shapes = await client.getModel("shapes");
    assert.deepEqual(shapes.preprocess?.size, [64, 64]);
    assert.equal(shapes.preprocess?.scale, 255);
    assert.deepEqual(shapes.preprocess?.mean, [0.5, 0.5, 0.5]);
    assert.equal(shapes.inputs[0].dtype, pb.DataType.FLOAT32);
    assert.deepEqual(shapes.inputs[0].shape.slice(1), [3n, 64n, 64n]);
    assert.equal(shapes.scores, "logits");
    assert.equal(shapes.defaultLayer, "/features/features.14/Relu_output_0");
    assert.ok(shapes.loadedAt instanceof Date && Math.abs(shapes.loadedAt.getTime() - Date.now()) < 3_600_000);
    assert.ok(shapes.methods.includes("grad_cam") && shapes.methods.includes("rise"));
  });

  it("lists methods with their parameters, per model", async () => {
    const all = await client.listMethods();
    const rise = all.find((m) => m.name === "rise");
    assert.ok(rise);
    const numMasks = rise.parameters.find((p) => p.name === "num_masks");
    assert.equal(numMasks?.defaultValue, "4000");
    assert.equal(numMasks?.type, "int32");
    assert.equal(rise.needs, pb.Needs.FORWARD);
    const tabular = (await client.listMethods("tabular")).map((m) => m.name);
    assert.ok(tabular.includes("kernel_shap") && tabular.includes("occlusion"));
    assert.ok(!tabular.includes("saliency"), "the tree model has no gradients");
    assert.ok(!tabular.includes("rise"), "RISE explains images only");
  });

  it("lists metrics", async () => {
    const metrics = await client.listMetrics();
    const deletion = metrics.find((m) => m.name === "deletion");
    assert.equal(deletion?.category, "faithfulness");
    assert.equal(deletion?.parameters.find((p) => p.name === "steps")?.defaultValue, "100");
  });
});

describe("explain", () => {
  it("tabular occlusion: attribution_i = p_c(x) - p_c(x with feature i = 0), each read back from the server", async () => {
    const [x] = readNpyRows(join(DEMO, "repository", "tabular", "background.npy"));
    const first = await client.explain("tabular", { method: "occlusion", tensor: { data: x, shape: [13] }, params: { baseline: 0 } });
    const target = first.targetClass;
    assert.deepEqual(first.attribution.shape, [13]);
    const score = (e: Explanation) => e.topClasses.find((c) => c.index === target)!.probability;
    const p = score(first);
    for (let i = 0; i < 13; i++) {
      const xi = x.slice();
      xi[i] = 0;
      // the top classes are the scores of the unperturbed input, here x with feature i zeroed
      const other = await client.explain("tabular", { method: "occlusion", tensor: { data: xi, shape: [13] }, target, params: { baseline: 0 } });
      assert.ok(Math.abs(first.attribution.data[i] - (p - score(other))) < 1e-5,
        `feature ${i}: attribution ${first.attribution.data[i]}, p - p_i = ${p - score(other)}`);
    }
    assert.ok(first.attribution.data.some((v) => v !== 0), "some feature matters");
    // the prediction, then the occlusion stage: the unoccluded row and one per feature
    assert.equal(first.stats.modelEvaluations, 1n + 1n + 13n);
    assert.equal(first.stats.plannedEvaluations, first.stats.modelEvaluations);
    assert.equal(first.stats.method, "occlusion");
    assert.equal(first.stats.score, pb.Score.PROBABILITY);
    assert.deepEqual(first.stats.parameters?.baseline, 0);
    assert.equal(first.stats.tenant, "alice");
  });

  it("an image by path or by bytes, with a rendered heatmap at the image's size", async () => {
    const options = { method: "occlusion", image: CIRCLE, params: { window: [8, 8], stride: [4, 4] }, render: { polarity: "both" } } as const;
    const byPath = await client.explain("shapes", options);
    const byBytes = await client.explain("shapes", { ...options, image: new Uint8Array(readFileSync(CIRCLE)) });
    assert.deepEqual(byPath.attribution.shape, [64, 64]);
    assert.deepEqual(byPath.attribution.data, byBytes.attribution.data);
    assert.deepEqual(pngSize(byPath.heatmapPng), [64, 64]);
    assert.equal(byPath.targetLabel, "circle");
    assert.equal(byPath.topClasses[0].label, "circle");
    assert.equal(byPath.topClasses.length, 5);
    const probabilities = byPath.topClasses.map((c) => c.probability);
    assert.deepEqual(probabilities, [...probabilities].sort((a, b) => b - a));
    assert.ok(Math.abs(probabilities.reduce((a, b) => a + b) - 1) < 1e-5);
    assert.ok(byPath.topClasses.every((c) => typeof c.logit === "number"), "shapes outputs logits");
    // the prediction, the unoccluded image and 15 x 15 window positions
    assert.equal(byPath.stats.modelEvaluations, 1n + 1n + 15n * 15n);
    assert.deepEqual(byPath.stats.parameters?.window, [8, 8]);
    assert.ok(byPath.complete);
  });

  it("takes the proto's snake_case names as well as camelCase", async () => {
    const a = await client.explain("shapes", { method: "grad_cam_plus_plus", image: CIRCLE, params: { upsample: "nearest" } });
    const b = await client.explain("shapes", { method: "gradCamPlusPlus", image: CIRCLE, params: { upsample: "nearest" } });
    assert.equal(a.stats.method, "grad_cam_plus_plus");
    assert.deepEqual(a.attribution.data, b.attribution.data);
    const snakeParams = await client.explain("shapes", { method: "rise", image: CIRCLE, seed: 3, params: { num_masks: 64 } as object });
    assert.equal(snakeParams.stats.parameters?.num_masks, 64);
  });

  it("method-specific figures and arrays come back typed", async () => {
    const ig = await client.explain("shapes", { method: "integrated_gradients", image: CIRCLE, params: { nSteps: 16 } });
    assert.ok(Math.abs(ig.figures.completeness_gap) < 0.05 * Math.abs(ig.figures.f_input - ig.figures.f_baseline) + 1e-3);
    const sum = ig.attribution.data.reduce((a, b) => a + b, 0);
    assert.ok(Math.abs(sum - ig.figures.attribution_sum) < 1e-3 * Math.max(1, Math.abs(sum)));
    const lime = await client.explain("shapes", { method: "lime", image: CIRCLE, seed: 5, params: { numSamples: 200, segmentation: "slic" } });
    const segments = lime.arrays.segments;
    assert.equal(segments.dtype, pb.DataType.INT32);
    assert.deepEqual(segments.shape, [64, 64]);
    const weights = lime.arrays.segment_weights;
    const count = Math.max(...(segments.data as Int32Array)) + 1;
    assert.deepEqual(weights.shape, [count]);
    // the per-pixel map is each pixel's superpixel weight
    for (const i of [0, 100, 2080, 4095]) {
      assert.equal(lime.attribution.data[i], (weights.data as Float32Array)[(segments.data as Int32Array)[i]]);
    }
  });

  it("the same seed gives the same map; the server's pick is reported as a bigint", async () => {
    const a = await client.explain("shapes", { method: "rise", image: CIRCLE, seed: 11n, params: { numMasks: 256 } });
    const b = await client.explain("shapes", { method: "rise", image: CIRCLE, seed: 11, params: { numMasks: 256 } });
    assert.deepEqual(a.attribution.data, b.attribution.data);
    assert.equal(a.stats.seed, 11n);
    const picked = await client.explain("shapes", { method: "rise", image: CIRCLE, params: { numMasks: 64 } });
    assert.equal(typeof picked.stats.seed, "bigint");
    assert.ok(picked.stats.seed > 0n);
    const again = await client.explain("shapes", { method: "rise", image: CIRCLE, seed: picked.stats.seed, params: { numMasks: 64 } });
    assert.deepEqual(again.attribution.data, picked.attribution.data);
  });
});

describe("explainStream", () => {
  it("calls onProgress and onPartial, then resolves to explain's answer", async () => {
    const progress: Progress[] = [];
    const partials: Explanation[] = [];
    const options = { method: "rise", image: CIRCLE, seed: 7, params: { numMasks: 2000 } } as const;
    const streamed = await client.explainStream("shapes", options, {
      onProgress: (p) => progress.push(p),
      onPartial: (e) => partials.push(e),
    });
    const direct = await client.explain("shapes", options);
    assert.deepEqual(streamed.attribution.data, direct.attribution.data);
    assert.equal(streamed.stats.modelEvaluations, direct.stats.modelEvaluations);
    assert.ok(streamed.complete && !streamed.partial);
    assert.ok(progress.length >= 2, `progress updates: ${progress.length}`);
    for (let i = 1; i < progress.length; i++) {
      if (progress[i].stage === progress[i - 1].stage) assert.ok(progress[i].rowsDone >= progress[i - 1].rowsDone);
    }
    const last = progress[progress.length - 1];
    assert.equal(last.rowsDone, last.rowsTotal);
    assert.ok(Math.abs(last.fraction - 1) < 1e-6);
    assert.ok(partials.length >= 1, "RISE streams partial maps");
    assert.ok(partials.every((p) => p.partial && !p.complete));
    assert.ok(partials.every((p) => p.stats.modelEvaluations < direct.stats.modelEvaluations));
  });

  it("explainUpdates yields the same updates as an async iterator", async () => {
    const kinds: string[] = [];
    for await (const update of client.explainUpdates("shapes", { method: "occlusion", image: CIRCLE })) kinds.push(update.kind);
    assert.equal(kinds[kinds.length - 1], "result");
    assert.ok(kinds.includes("progress"));
  });
});

describe("evaluate", () => {
  it("a given attribution scores as the method's own explanation does", async () => {
    const explanation = await client.explain("shapes", { method: "grad_cam", image: CIRCLE });
    const computed = await client.evaluate("shapes", { method: "grad_cam", image: CIRCLE, metrics: ["deletion", ["insertion", { steps: 20 }]] });
    const given = await client.evaluate("shapes", { image: CIRCLE, attribution: explanation.attribution, metrics: ["deletion", ["insertion", { steps: 20 }]] });
    assert.deepEqual(computed.results.map((r) => r.metric), ["deletion", "insertion"]);
    assert.deepEqual(computed.explanation.attribution.data, explanation.attribution.data);
    for (const i of [0, 1]) {
      assert.ok(Math.abs(computed.results[i].value - given.results[i].value) < 1e-9,
        `${computed.results[i].metric}: ${computed.results[i].value} vs ${given.results[i].value}`);
      assert.ok(computed.results[i].value >= 0 && computed.results[i].value <= 1);
    }
    const scores = computed.results[1].curves.scores;
    assert.ok(scores.shape[0] >= 20, `insertion curve of ${scores.shape}`);
    // insertion of a good map beats deletion of it on a confident prediction
    assert.ok(computed.results[1].value > computed.results[0].value);
  });

  it("evaluateStream reports progress, and explain can carry metrics", async () => {
    const stages = new Set<string>();
    const streamed = await client.evaluateStream("shapes", { method: "grad_cam", image: CIRCLE, metrics: ["deletion"] },
      { onProgress: (p) => stages.add(p.stage) });
    assert.equal(streamed.results[0].metric, "deletion");
    assert.ok(stages.size >= 1);
    const beside = await client.explain("shapes", { method: "grad_cam", image: CIRCLE, evaluate: ["deletion"] });
    assert.ok(Math.abs(beside.evaluation[0].value - streamed.results[0].value) < 1e-9);
  });
});

describe("errors", () => {
  it("unknown model: NOT_FOUND naming it", async () => {
    const error = await rejection(client.getModel("no-such-model"));
    assert.equal(error.code, 5);
    assert.equal(error.codeName, "NOT_FOUND");
    assert.match(error.details, /no-such-model/);
  });

  it("a tensor of the wrong shape: INVALID_ARGUMENT naming the field, expected and received", async () => {
    const error = await rejection(client.explain("tabular", { method: "occlusion", tensor: { data: new Float32Array(3), shape: [3] } }));
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.match(error.details, /tensor/);
    assert.match(error.details, /13/);
    assert.match(error.details, /\[3\]/);
  });

  it("a parameter out of range: INVALID_ARGUMENT naming it", async () => {
    const error = await rejection(client.explain("shapes", { method: "rise", image: CIRCLE, params: { keepProbability: 1.5 } }));
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.match(error.details, /keep_probability/);
  });

  it("unknown methods, parameters and enum names are refused before any call", async () => {
    await assert.rejects(client.explain("shapes", { method: "nonsense" as "rise", image: CIRCLE }), /method: expected .*"nonsense"/);
    await assert.rejects(client.explain("shapes", { method: "rise", image: CIRCLE, params: { masks: 3 } as object }),
      /rise has no parameter "masks"; it has num_masks, grid_size, keep_probability, baseline/);
    await assert.rejects(client.explain("shapes", { method: "rise", image: CIRCLE, score: "odds" as "logit" }), /score: expected one of PROBABILITY, LOGIT, got "odds"/);
    await assert.rejects(client.evaluate("shapes", { image: CIRCLE, metrics: ["nope" as "deletion"] }), /metric: expected .*"nope"/);
  });

  it("a deadline too short for the work: refused or exceeded, never UNKNOWN", async () => {
    const error = await rejection(client.explain("shapes", { method: "rise", image: CIRCLE, params: { numMasks: 50_000 } }, { timeoutMs: 50 }));
    assert.ok(["DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"].includes(error.codeName), error.message);
  });

  it("model control needs an admin tenant: PERMISSION_DENIED", async () => {
    for (const call of [() => client.unloadModel("shapes"), () => client.loadModel("shapes")]) {
      const error = await rejection(call());
      assert.equal(error.codeName, "PERMISSION_DENIED");
      assert.match(error.details, /alice/);
    }
    assert.equal((await client.getModel("shapes")).status, pb.ModelStatus.READY);
  });

  it("an AbortSignal cancels the call", async () => {
    const controller = new AbortController();
    const call = client.explain("shapes", { method: "rise", image: CIRCLE, params: { numMasks: 50_000 } }, { signal: controller.signal });
    setTimeout(() => controller.abort(), 100);
    const error = await rejection(call);
    assert.equal(error.codeName, "CANCELLED");
  });
});

describe("authentication and TLS", () => {
  it("without the token: UNAUTHENTICATED; with a wrong one too", async () => {
    for (const options of [{}, { token: "wrong" }]) {
      const other = new ExplaindClient(plain.address, { ...options, timeoutMs: 10_000 });
      try {
        const error = await rejection(other.listModels());
        assert.equal(error.codeName, "UNAUTHENTICATED");
      } finally {
        other.close();
      }
    }
  });

  it("TLS with the server's CA; the name checked, overridable with serverName", async () => {
    const ca = readFileSync(certs.ca);
    const good = new ExplaindClient(tls.address, { rootCertificates: ca, timeoutMs: 10_000 });
    const port = tls.address.split(":")[1];
    const byName = new ExplaindClient(`127.0.0.1:${port}`, { rootCertificates: ca, serverName: "explaind.test", timeoutMs: 10_000 });
    const systemCas = new ExplaindClient(tls.address, { tls: true, timeoutMs: 10_000 });
    const plaintext = new ExplaindClient(tls.address, { timeoutMs: 10_000 });
    try {
      assert.ok((await good.listModels()).some((m) => m.name === "shapes"));
      const explanation = await byName.explain("shapes", { method: "saliency", image: CIRCLE });
      assert.deepEqual(explanation.attribution.shape, [64, 64]);
      assert.equal((await rejection(systemCas.listModels())).codeName, "UNAVAILABLE"); // unknown CA
      assert.equal((await rejection(plaintext.listModels())).codeName, "UNAVAILABLE");
    } finally {
      for (const c of [good, byName, systemCas, plaintext]) c.close();
    }
  });

  it("refuses a token with spaces and a half client certificate", () => {
    assert.throws(() => new ExplaindClient("localhost:1", { token: "a b" }), /token: expected visible ASCII/);
    assert.throws(() => new ExplaindClient("localhost:1", { privateKey: Buffer.from("k") }), /privateKey and certificateChain go together/);
  });
});

describe("the README's example script", () => {
  const script = join(__dirname, "..", "examples", "explain.js");
  const run = (...args: string[]) => spawnSync(process.execPath, [script, ...args], { encoding: "utf8", timeout: 120_000 });

  it("writes the server's heatmap and prints the target and the cost", () => {
    const out = join(mkdtempSync(join(tmpdir(), "explaind-ts-example-")), "heat.png");
    const result = run("--server", plain.address, "--token", TOKEN, "--model", "shapes", "--image", CIRCLE, "--out", out,
      "--method", "occlusion", "--param", "window=8,8", "--param", "stride=4,4");
    assert.equal(result.status, 0, result.stderr);
    assert.ok(existsSync(out));
    assert.deepEqual(pngSize(readFileSync(out)), [64, 64]);
    assert.match(result.stdout, /^target: circle \(class 0\)$/m);
    assert.match(result.stdout, /method: occlusion, seed \d+, 227 model evaluations/);
    assert.match(result.stderr, /100% \(226\/226 rows\)/);
  });

  it("a server error: exit 1 with the code and the message", () => {
    const result = run("--server", plain.address, "--token", TOKEN, "--model", "nope", "--image", CIRCLE, "--out", "/dev/null");
    assert.equal(result.status, 1);
    assert.match(result.stderr, /^NOT_FOUND: .*nope/);
  });
});
