/**
 * A small typed wrapper over the generated grpc-js stubs, mirroring the Python client
 * (clients/python/explaind_client): build requests from plain values, get typed arrays back.
 */

import * as grpc from "@grpc/grpc-js";
import { readFileSync } from "node:fs";

import * as pb from "./gen/explaind/v1/explaind";
import { fromTensor, NdArray, toTensor, TypedArray } from "./tensors";

/** 64 MiB, as the Python client: a 224 x 224 attribution with its arrays fits many times over. */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 << 20;

// ---------------------------------------------------------------------------------------------
// Names: the proto's snake_case field names (what ListMethods and GetModel return) or the
// camelCase names of the generated types, both typed from the generated oneofs.

/** "kernel_shap" -> "kernelShap" (protobuf's JSON name rule). */
export type CamelCase<S extends string> = S extends `${infer H}_${infer T}` ? `${H}${Capitalize<CamelCase<T>>}` : S;
/** "kernelShap" -> "kernel_shap". */
export type SnakeCase<S extends string> = S extends `${infer C}${infer R}`
  ? `${C extends Lowercase<C> ? C : `_${Lowercase<C>}`}${SnakeCase<R>}`
  : S;

type MethodOneof = NonNullable<pb.ExplainRequest["method"]>;
type MetricOneof = NonNullable<pb.Metric["metric"]>;
/** A method as the generated types name it ("kernelShap"). */
export type MethodName = MethodOneof["$case"];
/** A method by either name: "kernel_shap" (the proto's, ListMethods') or "kernelShap". */
export type MethodId = MethodName | SnakeCase<MethodName>;
/** A message's fields, all optional, repeated ones also as readonly arrays. */
export type Params<T> = { [K in keyof T]?: T[K] extends (infer U)[] ? readonly U[] : T[K] };
/** The parameters of method `M`: the fields of its message (camelCase), all optional. */
export type MethodParams<M extends MethodId> = Params<Extract<MethodOneof, { $case: CamelCase<M> }>["value"]>;
export type MetricName = MetricOneof["$case"];
export type MetricId = MetricName | SnakeCase<MetricName>;
export type MetricParams<M extends MetricId> = Params<Extract<MetricOneof, { $case: CamelCase<M> }>["value"]>;
/** A metric by name, or [name, parameters]: "deletion" or ["deletion", { steps: 50 }]. */
export type MetricSpec = {
  [K in MetricName]: K | SnakeCase<K> | readonly [K | SnakeCase<K>, MetricParams<K>];
}[MetricName];

export function camelCase(name: string): string {
  return name.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

export function snakeCase(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

// ---------------------------------------------------------------------------------------------
// Results

export interface ClassScore {
  index: number;
  label: string;
  probability: number;
  /** Present when the model outputs logits. */
  logit?: number;
}

export interface Progress {
  rowsDone: number;
  rowsTotal: number;
  fraction: number;
  stage: string;
}

/** One evaluation metric's result (MetricResult). */
export interface MetricScore {
  metric: string;
  value: number;
  curves: Record<string, NdArray>;
  figures: Record<string, number>;
  stats: pb.Stats | undefined;
}

export interface Explanation {
  /** float32; images [H, W], tabular [F]. */
  attribution: NdArray<Float32Array>;
  targetClass: number;
  targetLabel: string;
  /** The model's scores for the unperturbed input, best first. */
  topClasses: ClassScore[];
  /** The rendered heatmap (PNG) when the request had `render`; empty otherwise. */
  heatmapPng: Buffer;
  /** Seed, model evaluations, batches, queue / compute seconds, the parameters as resolved. */
  stats: pb.Stats;
  /** A map streamed before the end (explainStream's onPartial). */
  partial: boolean;
  /** Method-specific numbers (ListMethods' `figures`). */
  figures: Record<string, number>;
  /** Method-specific arrays (ListMethods' `arrays`), e.g. lime's segments. */
  arrays: Record<string, NdArray>;
  /** false: answered at the deadline from the rows so far (allowPartial), or a partial map. */
  complete: boolean;
  /** One per `evaluate` metric of the request, in its order. */
  evaluation: MetricScore[];
}

/** The explanation evaluated and each metric's result, in the order asked. */
export interface Evaluation {
  explanation: Explanation;
  results: MetricScore[];
}

export type ExplainUpdate =
  | { kind: "progress"; progress: Progress }
  | { kind: "partial"; explanation: Explanation }
  | { kind: "result"; explanation: Explanation };

export type EvaluateUpdate = { kind: "progress"; progress: Progress } | { kind: "result"; evaluation: Evaluation };

/** A failed call: the gRPC status code (and its name), the server's message, and `retry-after-ms`. */
export class ExplaindError extends Error {
  readonly code: grpc.status;
  readonly codeName: string;
  readonly details: string;
  /** The server's hint for RESOURCE_EXHAUSTED (trailing metadata `retry-after-ms`), when it sent one. */
  readonly retryAfterMs: number | undefined;
  readonly metadata: grpc.Metadata;

  constructor(error: grpc.ServiceError) {
    const codeName = grpc.status[error.code] ?? `code ${error.code}`;
    super(`${codeName}: ${error.details}`);
    this.name = "ExplaindError";
    this.code = error.code;
    this.codeName = codeName;
    this.details = error.details;
    this.metadata = error.metadata ?? new grpc.Metadata();
    const hint = this.metadata.get("retry-after-ms")[0];
    this.retryAfterMs = hint === undefined ? undefined : Number(hint);
  }
}

// ---------------------------------------------------------------------------------------------
// Requests

/** Ask for a heatmap PNG; names as in the proto enums, case-insensitive ("coolwarm", "BOTH"). */
export interface RenderSpec {
  colormap?: keyof typeof pb.Colormap | Lowercase<keyof typeof pb.Colormap>;
  polarity?: keyof typeof pb.Polarity | Lowercase<keyof typeof pb.Polarity>;
  overlay?: keyof typeof pb.Overlay | Lowercase<keyof typeof pb.Overlay>;
  clipPercentile?: number;
  clipPercentileLow?: number;
  alpha?: number;
}

/** The input, target and options of an explanation (ExplainRequest), from plain values. */
export interface InputOptions {
  /** PNG or JPEG bytes, or the path of such a file. */
  image?: Uint8Array | string;
  /** One example in the model's input space, without the batch dimension. */
  tensor?: NdArray | { data: TypedArray; shape: readonly number[] };
  /** A class index or a label; unset: the model's top prediction. */
  target?: number | string;
  /** "probability" or "logit"; unset: the method's default. */
  score?: "probability" | "logit" | "PROBABILITY" | "LOGIT";
  /** 0 or unset: the server picks one and reports it in `stats.seed`. */
  seed?: bigint | number;
  /** Ask for `heatmapPng` (true: the server's default rendering). */
  render?: RenderSpec | boolean;
  /** A sampling method answers at the deadline from the rows so far (complete: false). */
  allowPartial?: boolean;
  /** Metrics computed beside the explanation (Explanation.evaluation). */
  evaluate?: readonly MetricSpec[];
  /** The object, for localisation metrics: [x0, y0, x1, y1], x1 and y1 exclusive. */
  box?: readonly number[];
  /** Or a mask [H, W], nonzero on the object. */
  mask?: NdArray;
}

export interface ExplainOptions<M extends MethodId = MethodId> extends InputOptions {
  method: M;
  /** The method message's fields: { numMasks: 2000 } (snake_case keys are accepted too). */
  params?: MethodParams<M>;
}

export interface EvaluateOptions<M extends MethodId = MethodId> extends InputOptions {
  metrics: readonly MetricSpec[];
  /** The method whose explanation is evaluated; may be unset when `attribution` is given. */
  method?: M;
  params?: MethodParams<M>;
  /** Evaluate this map ([H, W] images, [F] tabular) instead of computing one. */
  attribution?: NdArray | { data: Float32Array; shape: readonly number[] };
}

export interface CallOptions {
  /** Overrides the client's timeoutMs for this call. */
  timeoutMs?: number;
  /** Cancels the call (the server then stops its work: CANCELLED). */
  signal?: AbortSignal;
}

export interface StreamHandlers extends CallOptions {
  onProgress?: (progress: Progress) => void;
  /** Sampling methods: a map from the rows so far, at least every 10% of them. */
  onPartial?: (explanation: Explanation) => void;
}

function enumValue<E extends Record<string, string | number>>(values: E, field: string, name: string): number {
  const value = values[name.toUpperCase() as keyof E];
  if (typeof value !== "number" || value < 0) {
    const known = Object.keys(values).filter((k) => typeof values[k] === "number" && (values[k] as number) > 0);
    throw new RangeError(`${field}: expected one of ${known.join(", ")}, got ${JSON.stringify(name)}`);
  }
  return value;
}

function renderMessage(spec: RenderSpec): pb.Render {
  return pb.Render.fromPartial({
    colormap: spec.colormap ? enumValue(pb.Colormap, "render.colormap", spec.colormap) : undefined,
    polarity: spec.polarity ? enumValue(pb.Polarity, "render.polarity", spec.polarity) : undefined,
    overlay: spec.overlay ? enumValue(pb.Overlay, "render.overlay", spec.overlay) : undefined,
    clipPercentile: spec.clipPercentile,
    clipPercentileLow: spec.clipPercentileLow,
    alpha: spec.alpha,
  });
}

/** `params` with camelCase keys, every key checked against the fields of the message `built`. */
function camelParams(owner: string, params: object | undefined, fields: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const known = Object.keys(fields);
  for (const [key, value] of Object.entries(params ?? {})) {
    const name = camelCase(key);
    if (!known.includes(name)) {
      throw new RangeError(`${owner} has no parameter ${JSON.stringify(key)}; it has ` +
        `${known.map(snakeCase).join(", ") || "none"}`);
    }
    out[name] = value;
  }
  return out;
}

/** A oneof case with its value built from `params` by `fromPartial`, or undefined for an unknown name. */
function oneofCase(build: (c: { $case: string; value: object }) => { $case: string; value: object } | undefined,
  field: string, name: string, params: object | undefined): { $case: string; value: object } {
  const $case = camelCase(name);
  const empty = build({ $case, value: {} });
  if (empty === undefined) {
    throw new RangeError(`${field}: expected a field of its oneof in proto/explaind/v1/explaind.proto ` +
      `(snake_case or camelCase), got ${JSON.stringify(name)}`);
  }
  const built = build({ $case, value: camelParams(snakeCase($case), params, empty.value) });
  return built!;
}

/** Metric messages from names, or [name, parameters] pairs. */
export function buildMetrics(metrics: readonly MetricSpec[]): pb.Metric[] {
  return metrics.map((spec) => {
    const [name, params] = typeof spec === "string" ? [spec, undefined] : spec;
    const metric = oneofCase((c) => pb.Metric.fromPartial({ metric: c as MetricOneof }).metric, "metric", name, params);
    return { metric: metric as MetricOneof };
  });
}

/** A Region from a box [x0, y0, x1, y1] (x1, y1 exclusive) and / or a mask [H, W]. */
export function buildRegion(box?: readonly number[], mask?: NdArray): pb.Region {
  return {
    box: box ? box.map((v) => { if (!Number.isInteger(v)) throw new RangeError(`box: expected integers, got ${v}`); return v; }) : [],
    mask: mask ? toTensor(Float32Array.from(mask.data as ArrayLike<number>), mask.shape) : undefined,
  };
}

function tensorOf(tensor: InputOptions["tensor"] | EvaluateOptions["attribution"]): pb.Tensor {
  if (!tensor) throw new TypeError("tensor: expected { data, shape }");
  return "dtype" in tensor ? toTensor(tensor) : toTensor(tensor.data, tensor.shape);
}

/** An ExplainRequest from plain values. `method` may be empty for Evaluate with an attribution. */
export function buildRequest(model: string, options: InputOptions & { method?: MethodId | ""; params?: object }): pb.ExplainRequest {
  if (options.image !== undefined && options.tensor !== undefined) {
    throw new TypeError("image and tensor: expected one input, got both");
  }
  let input: pb.ExplainRequest["input"];
  if (options.image !== undefined) {
    const bytes = typeof options.image === "string" ? readFileSync(options.image) : options.image;
    input = { $case: "image", value: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
  } else if (options.tensor !== undefined) {
    input = { $case: "tensor", value: tensorOf(options.tensor) };
  }
  let target: pb.Target | undefined;
  if (typeof options.target === "number") {
    if (!Number.isInteger(options.target)) throw new RangeError(`target: expected a class index or a label, got ${options.target}`);
    target = { kind: { $case: "classIndex", value: options.target } };
  } else if (typeof options.target === "string") {
    target = { kind: { $case: "label", value: options.target } };
  }
  let method: pb.ExplainRequest["method"];
  if (options.method) {
    method = oneofCase((c) => pb.ExplainRequest.fromPartial({ method: c as MethodOneof }).method, "method",
      options.method, options.params) as MethodOneof;
  } else if (options.params && Object.keys(options.params).length) {
    throw new TypeError("params: expected a method to go with them, got none");
  }
  const seed = BigInt(options.seed ?? 0);
  if (seed < 0n || seed >= 1n << 64n) throw new RangeError(`seed: expected 0 <= seed < 2^64, got ${seed}`);
  return pb.ExplainRequest.fromPartial({
    model,
    input,
    target,
    seed,
    score: options.score ? enumValue(pb.Score, "score", options.score) : pb.Score.SCORE_UNSPECIFIED,
    render: options.render ? renderMessage(options.render === true ? {} : options.render) : undefined,
    allowPartial: options.allowPartial ?? false,
    method,
    evaluate: buildMetrics(options.evaluate ?? []),
    region: options.box !== undefined || options.mask !== undefined ? buildRegion(options.box, options.mask) : undefined,
  });
}

/** An EvaluateRequest: the explanation (as buildRequest) and the metrics, region and attribution. */
export function buildEvaluateRequest(model: string, options: EvaluateOptions): pb.EvaluateRequest {
  const { metrics, attribution, box, mask, ...explain } = options;
  return {
    explain: buildRequest(model, explain),
    attribution: attribution ? tensorOf(attribution) : undefined,
    metrics: buildMetrics(metrics),
    region: box !== undefined || mask !== undefined ? buildRegion(box, mask) : undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// Responses

function metricScore(result: pb.MetricResult): MetricScore {
  return {
    metric: result.metric,
    value: result.value,
    curves: Object.fromEntries(Object.entries(result.curves).map(([k, v]) => [k, fromTensor(v)])),
    figures: { ...result.figures },
    stats: result.stats,
  };
}

export function explanationFromProto(response: pb.ExplainResponse, partial = false): Explanation {
  if (!response.attribution) throw new RangeError("attribution: expected a tensor in the response, got none");
  const attribution = fromTensor(response.attribution);
  if (!(attribution.data instanceof Float32Array) || attribution.dtype !== pb.DataType.FLOAT32) {
    throw new RangeError(`attribution.dtype: expected FLOAT32, got ${pb.DataType[attribution.dtype]}`);
  }
  return {
    attribution: attribution as NdArray<Float32Array>,
    targetClass: response.targetClass,
    targetLabel: response.targetLabel,
    topClasses: response.topClasses.map((c) => ({ index: c.classIndex, label: c.label, probability: c.probability,
      ...(c.logit === undefined ? {} : { logit: c.logit }) })),
    heatmapPng: response.heatmapPng,
    stats: response.stats ?? pb.Stats.create(),
    partial,
    figures: { ...response.figures },
    arrays: Object.fromEntries(Object.entries(response.arrays).map(([k, v]) => [k, fromTensor(v)])),
    complete: response.complete && !partial,
    evaluation: response.evaluation.map(metricScore),
  };
}

export function evaluationFromProto(response: pb.EvaluateResponse): Evaluation {
  if (!response.explanation) throw new RangeError("explanation: expected it in the response, got none");
  return { explanation: explanationFromProto(response.explanation), results: response.results.map(metricScore) };
}

function progressFromProto(p: pb.Progress): Progress {
  return { rowsDone: Number(p.rowsDone), rowsTotal: Number(p.rowsTotal), fraction: p.fraction, stage: p.stage };
}

// ---------------------------------------------------------------------------------------------
// The client

export interface ClientOptions {
  /** Default deadline of every call, in milliseconds; unset: none. */
  timeoutMs?: number;
  /** Sent as `authorization: Bearer TOKEN` on every call (over plaintext too: fine on loopback). */
  token?: string;
  /** TLS, verifying the server with the system's CAs (or `rootCertificates`). */
  tls?: boolean;
  /** PEM CAs to trust (implies TLS). */
  rootCertificates?: Buffer;
  /** PEM client key and certificate chain, for mTLS (together; imply TLS). */
  privateKey?: Buffer;
  certificateChain?: Buffer;
  /** The name the server's certificate carries, when it is not the host connected to. */
  serverName?: string;
  maxMessageBytes?: number;
  /** More grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
}

/** Adds `authorization: Bearer TOKEN` to every call's metadata (an interceptor, not call credentials,
 * which grpc-js sends only over TLS: a laptop's plaintext server on loopback takes tokens too). */
function bearerToken(token: string): grpc.Interceptor {
  return (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.set("authorization", `Bearer ${token}`);
      next(metadata, listener);
    },
  });
}

type Callback<T> = (error: grpc.ServiceError | null, response: T) => void;

/**
 * explaind's client. `new ExplaindClient("localhost:50051", { token, rootCertificates })`; call close()
 * when done. Every call returns a Promise and rejects with ExplaindError (the gRPC status and message).
 */
export class ExplaindClient {
  /** The generated grpc-js stub, for calls the wrapper does not cover. */
  readonly stub: pb.ExplainerClient;
  readonly timeoutMs: number | undefined;

  constructor(target = "localhost:50051", options: ClientOptions = {}) {
    if ((options.privateKey === undefined) !== (options.certificateChain === undefined)) {
      throw new TypeError("privateKey and certificateChain go together (the client certificate for mTLS)");
    }
    if (options.token !== undefined && !/^[\x21-\x7e]+$/.test(options.token)) {
      throw new RangeError("token: expected visible ASCII characters without spaces");
    }
    const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    const channelOptions: grpc.ClientOptions = {
      "grpc.max_receive_message_length": maxBytes,
      "grpc.max_send_message_length": maxBytes,
      ...(options.serverName ? { "grpc.ssl_target_name_override": options.serverName, "grpc.default_authority": options.serverName } : {}),
      ...(options.token !== undefined ? { interceptors: [bearerToken(options.token)] } : {}),
      ...options.channelOptions,
    };
    const secure = options.tls || options.rootCertificates || options.privateKey || options.certificateChain;
    const credentials = secure
      ? grpc.credentials.createSsl(options.rootCertificates ?? null, options.privateKey ?? null, options.certificateChain ?? null)
      : grpc.credentials.createInsecure();
    this.stub = new pb.ExplainerClient(target, credentials, channelOptions);
    this.timeoutMs = options.timeoutMs;
  }

  private callOptions(options: CallOptions): Partial<grpc.CallOptions> {
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    return timeoutMs === undefined ? {} : { deadline: new Date(Date.now() + timeoutMs) };
  }

  private unary<T>(options: CallOptions, start: (metadata: grpc.Metadata, call: Partial<grpc.CallOptions>, done: Callback<T>) => grpc.ClientUnaryCall): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (options.signal?.aborted) {
        reject(new ExplaindError({ code: grpc.status.CANCELLED, details: "cancelled before the call", metadata: new grpc.Metadata() } as grpc.ServiceError));
        return;
      }
      const call = start(new grpc.Metadata(), this.callOptions(options), (error, response) => {
        options.signal?.removeEventListener("abort", cancel);
        if (error) reject(new ExplaindError(error));
        else resolve(response);
      });
      const cancel = () => call.cancel();
      options.signal?.addEventListener("abort", cancel, { once: true });
    });
  }

  private async *stream<U>(options: CallOptions, call: grpc.ClientReadableStream<U>): AsyncGenerator<U> {
    const cancel = () => call.cancel();
    options.signal?.addEventListener("abort", cancel, { once: true });
    try {
      for await (const update of call) yield update as U;
    } catch (error) {
      if (error && typeof error === "object" && "code" in error && "details" in error) {
        throw new ExplaindError(error as grpc.ServiceError);
      }
      throw error;
    } finally {
      options.signal?.removeEventListener("abort", cancel);
      call.cancel(); // a consumer that stops early ends the call (no-op once it has ended)
    }
  }

  /** Resolves once the channel is connected, rejects when it is not by `timeoutMs`. */
  waitForReady(timeoutMs = 10_000): Promise<void> {
    return new Promise((resolve, reject) => this.stub.waitForReady(new Date(Date.now() + timeoutMs),
      (error) => (error ? reject(error) : resolve())));
  }

  /** One explanation of `model`'s answer for one input. */
  async explain<M extends MethodId>(model: string, options: ExplainOptions<M>, call: CallOptions = {}): Promise<Explanation> {
    const request = buildRequest(model, options);
    const response = await this.unary<pb.ExplainResponse>(call, (m, o, done) => this.stub.explain(request, m, o, done));
    return explanationFromProto(response);
  }

  /** The stream's updates: progress, partial explanations (sampling methods), then the result. */
  async *explainUpdates<M extends MethodId>(model: string, options: ExplainOptions<M>, call: CallOptions = {}): AsyncGenerator<ExplainUpdate> {
    const request = buildRequest(model, options);
    for await (const update of this.stream(call, this.stub.explainStream(request, new grpc.Metadata(), this.callOptions(call)))) {
      const kind = update.kind;
      if (kind?.$case === "progress") yield { kind: "progress", progress: progressFromProto(kind.value) };
      else if (kind?.$case === "partial") yield { kind: "partial", explanation: explanationFromProto(kind.value, true) };
      else if (kind?.$case === "result") yield { kind: "result", explanation: explanationFromProto(kind.value) };
    }
  }

  /** ExplainStream with callbacks: onProgress and onPartial as updates come; resolves to the result
   * (the same as explain's). */
  async explainStream<M extends MethodId>(model: string, options: ExplainOptions<M>, handlers: StreamHandlers = {}): Promise<Explanation> {
    for await (const update of this.explainUpdates(model, options, handlers)) {
      if (update.kind === "progress") handlers.onProgress?.(update.progress);
      else if (update.kind === "partial") handlers.onPartial?.(update.explanation);
      else return update.explanation;
    }
    throw new Error("ExplainStream ended without a result");
  }

  /** Evaluate an explanation (computed by `method`, or the `attribution` given) with `metrics`. */
  async evaluate<M extends MethodId>(model: string, options: EvaluateOptions<M>, call: CallOptions = {}): Promise<Evaluation> {
    const request = buildEvaluateRequest(model, options);
    const response = await this.unary<pb.EvaluateResponse>(call, (m, o, done) => this.stub.evaluate(request, m, o, done));
    return evaluationFromProto(response);
  }

  /** EvaluateStream with a progress callback (stage "explaining", then "evaluating"); resolves to the result. */
  async evaluateStream<M extends MethodId>(model: string, options: EvaluateOptions<M>,
    handlers: CallOptions & { onProgress?: (progress: Progress) => void } = {}): Promise<Evaluation> {
    const request = buildEvaluateRequest(model, options);
    for await (const update of this.stream(handlers, this.stub.evaluateStream(request, new grpc.Metadata(), this.callOptions(handlers)))) {
      if (update.kind?.$case === "progress") handlers.onProgress?.(progressFromProto(update.kind.value));
      else if (update.kind?.$case === "result") return evaluationFromProto(update.kind.value);
    }
    throw new Error("EvaluateStream ended without a result");
  }

  async listModels(call: CallOptions = {}): Promise<pb.ModelInfo[]> {
    const response = await this.unary<pb.ListModelsResponse>(call, (m, o, done) => this.stub.listModels({}, m, o, done));
    return response.models;
  }

  getModel(name: string, call: CallOptions = {}): Promise<pb.ModelInfo> {
    return this.unary<pb.ModelInfo>(call, (m, o, done) => this.stub.getModel({ name }, m, o, done));
  }

  /** The methods, their parameters and defaults; with `model`, only those it supports. */
  async listMethods(model = "", call: CallOptions = {}): Promise<pb.MethodInfo[]> {
    const response = await this.unary<pb.ListMethodsResponse>(call, (m, o, done) => this.stub.listMethods({ model }, m, o, done));
    return response.methods;
  }

  /** The evaluation metrics, their parameters and defaults; with `model`, only those that apply. */
  async listMetrics(model = "", call: CallOptions = {}): Promise<pb.MetricInfo[]> {
    const response = await this.unary<pb.ListMetricsResponse>(call, (m, o, done) => this.stub.listMetrics({ model }, m, o, done));
    return response.metrics;
  }

  /** (Re)load the repository folder `name` and serve it (LoadModel; the server must allow it). */
  loadModel(name: string, call: CallOptions = {}): Promise<pb.ModelInfo> {
    return this.unary<pb.ModelInfo>(call, (m, o, done) => this.stub.loadModel({ name }, m, o, done));
  }

  /** Take `name` out of service; it stays listed UNLOADED until loadModel (UnloadModel). */
  unloadModel(name: string, call: CallOptions = {}): Promise<pb.ModelInfo> {
    return this.unary<pb.ModelInfo>(call, (m, o, done) => this.stub.unloadModel({ name }, m, o, done));
  }

  close(): void {
    this.stub.close();
  }
}
