#!/usr/bin/env node
// Generate src/gen/ (TypeScript types and grpc-js stubs) from proto/explaind/v1 with ts-proto, run
// through the buf CLI (buf.gen.yaml). Never edit src/gen/: change the proto and run this.
//
//     npm run generate          # (re)write src/gen/
//     npm run check-generated   # exit 1 when the committed src/gen/ differs from what this makes
//
// The output depends only on the proto and the ts-proto and buf versions pinned in package-lock.json.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, cpSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const PACKAGE = dirname(dirname(fileURLToPath(import.meta.url)));
// EXPLAIND_TS_GEN_DIR: compare another folder (the test that the check can fail uses it)
const GEN = process.env.EXPLAIND_TS_GEN_DIR || join(PACKAGE, "src", "gen");
const BUF = join(PACKAGE, "node_modules", ".bin", "buf");

/** Every file below `root`, as paths relative to it, sorted. */
function files(root) {
  if (!existsSync(root)) return [];
  const found = [];
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else found.push(relative(root, path));
    }
  };
  walk(root);
  return found.sort();
}

/** Run buf generate into a fresh temporary folder and return the folder holding the new src/gen. */
function generate() {
  if (!existsSync(BUF)) {
    throw new Error(`${BUF} is missing: run \`npm ci\` in ${PACKAGE} first`);
  }
  const out = mkdtempSync(join(tmpdir(), "explaind-ts-gen-"));
  execFileSync(BUF, ["generate", "--template", "buf.gen.yaml", "-o", out], { cwd: PACKAGE, stdio: "inherit" });
  return out;
}

function main(argv) {
  const check = argv.includes("--check");
  const out = generate();
  try {
    const fresh = join(out, "src", "gen");
    if (check) {
      const want = files(fresh);
      const have = files(GEN);
      const stale = want.filter((f) => !have.includes(f) || readFileSync(join(fresh, f), "utf8") !== readFileSync(join(GEN, f), "utf8"));
      const extra = have.filter((f) => !want.includes(f));
      if (stale.length || extra.length) {
        console.error(`stale generated code in ${relative(process.cwd(), GEN) || GEN}: ` +
          `${[...stale, ...extra.map((f) => `${f} (not generated)`)].join(", ")}; ` +
          "run `npm run generate` in clients/typescript after `npm ci`");
        return 1;
      }
      console.log("src/gen is up to date with proto/");
      return 0;
    }
    rmSync(GEN, { recursive: true, force: true });
    cpSync(fresh, GEN, { recursive: true });
    console.log(`wrote ${files(GEN).length} files to ${relative(PACKAGE, GEN)}`);
    return 0;
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

process.exitCode = main(process.argv.slice(2));
