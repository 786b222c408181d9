/** explaind's TypeScript client: the typed wrapper, tensors <-> typed arrays, and the generated types. */
export * from "./client";
export * from "./tensors";
export * as pb from "./gen/explaind/v1/explaind";
