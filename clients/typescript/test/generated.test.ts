/** src/gen/ is exactly what `npm run generate` makes from proto/ (as tests/unit/test_stubs.py checks
 * the Python stubs). When this fails: `cd clients/typescript && npm ci && npm run generate`. */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";

const PACKAGE = join(__dirname, "..", "..");
const SCRIPT = join(PACKAGE, "scripts", "generate.mjs");

function check(genDir?: string) {
  return spawnSync(process.execPath, [SCRIPT, "--check"], {
    cwd: PACKAGE, encoding: "utf8", env: { ...process.env, ...(genDir ? { EXPLAIND_TS_GEN_DIR: genDir } : {}) },
  });
}

describe("generated code", () => {
  it("src/gen is up to date with proto/ (else run `npm run generate`)", () => {
    const result = check();
    assert.equal(result.status, 0, result.stdout + result.stderr);
  });

  it("the check fails on an edited, a missing or an extra file", () => {
    const explaind = join("explaind", "v1", "explaind.ts");
    for (const change of ["edit", "remove", "add"]) {
      const copy = mkdtempSync(join(tmpdir(), "explaind-ts-gen-copy-"));
      cpSync(join(PACKAGE, "src", "gen"), copy, { recursive: true });
      if (change === "edit") writeFileSync(join(copy, explaind), readFileSync(join(copy, explaind), "utf8") + "\n// edited by hand\n");
      if (change === "remove") writeFileSync(join(copy, "google", "protobuf", "struct.ts"), "");
      if (change === "add") writeFileSync(join(copy, "extra.ts"), "export {};\n");
      const result = check(copy);
      assert.equal(result.status, 1, `${change}: ${result.stdout}${result.stderr}`);
      assert.match(result.stderr, /run `npm run generate`/);
    }
  });
});
