/**
 * One explanation from the command line: an image (or a tabular row) in, the server's heatmap PNG out.
 *
 *   node dist/examples/explain.js --model shapes --image circle_0.png --out heat.png \
 *       [--method rise] [--param num_masks=2000]... [--target circle] [--seed 7] \
 *       [--server localhost:50051] [--timeout 60] [--token TOKEN] [--tls-ca ca.pem]
 *
 * Progress goes to stderr, the target, top classes and cost to stdout. The token defaults to the
 * environment variable EXPLAIND_TOKEN. Exit 1 when the server refuses (one line: "CODE: details").
 */

import { readFileSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { ExplaindClient, ExplaindError, MethodId } from "../src";

/** "8,8" -> [8, 8]; "2000" -> 2000; "true" -> true; anything else stays text. */
function paramValue(text: string): unknown {
  if (text === "true" || text === "false") return text === "true";
  if (text.includes(",")) return text.split(",").map(Number);
  return text.trim() !== "" && !Number.isNaN(Number(text)) ? Number(text) : text;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      server: { type: "string", default: "localhost:50051" },
      model: { type: "string" },
      image: { type: "string" },
      out: { type: "string" },
      method: { type: "string", default: "rise" },
      param: { type: "string", multiple: true, default: [] },
      target: { type: "string" },
      seed: { type: "string", default: "0" },
      timeout: { type: "string" },
      token: { type: "string", default: process.env.EXPLAIND_TOKEN },
      "tls-ca": { type: "string" },
    },
  });
  if (!values.model || !values.image || !values.out) {
    console.error("usage: explain.js --model NAME --image FILE --out FILE [--method NAME] [--param NAME=VALUE]...");
    return 2;
  }
  const params: Record<string, unknown> = {};
  for (const item of values.param ?? []) {
    const [name, ...rest] = item.split("=");
    if (!name || rest.length === 0) {
      console.error(`--param: expected NAME=VALUE, got ${JSON.stringify(item)}`);
      return 2;
    }
    params[name] = paramValue(rest.join("="));
  }
  const client = new ExplaindClient(values.server, {
    token: values.token,
    rootCertificates: values["tls-ca"] ? readFileSync(values["tls-ca"]) : undefined,
    timeoutMs: values.timeout ? Number(values.timeout) * 1000 : undefined,
  });
  let last = "";
  try {
    const target = values.target === undefined ? undefined : /^\d+$/.test(values.target) ? Number(values.target) : values.target;
    const result = await client.explainStream(values.model, {
      method: values.method as MethodId,
      params,
      image: values.image,
      target,
      seed: BigInt(values.seed ?? "0"),
      render: true,
    }, {
      // a terminal gets a progress line redrawn in place; a pipe or file only the last one, at the end
      onProgress: (p) => {
        last = `${p.stage || "explaining"} ${Math.round(p.fraction * 100)}% (${p.rowsDone}/${p.rowsTotal} rows)`;
        if (process.stderr.isTTY) process.stderr.write(`\r${last}`);
      },
    });
    if (last) process.stderr.write(process.stderr.isTTY ? "\n" : `${last}\n`);
    writeFileSync(values.out, result.heatmapPng);
    console.log(`target: ${result.targetLabel} (class ${result.targetClass})`);
    for (const c of result.topClasses) console.log(`  ${c.label.padEnd(12)}${c.probability.toFixed(4)}`);
    console.log(`attribution: [${result.attribution.shape.join(", ")}] float32`);
    console.log(`method: ${result.stats.method}, seed ${result.stats.seed}, ${result.stats.modelEvaluations} model ` +
      `evaluations in ${result.stats.batches} batches, ${result.stats.totalSeconds.toFixed(3)} s`);
    console.log(`heatmap: ${values.out} (${result.heatmapPng.length} bytes)`);
    return 0;
  } catch (error) {
    console.error(error instanceof ExplaindError ? `${error.codeName}: ${error.details}` : String(error));
    return error instanceof ExplaindError ? 1 : 2;
  } finally {
    client.close();
  }
}

main().then((code) => { process.exitCode = code; });
