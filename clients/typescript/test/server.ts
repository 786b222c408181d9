/**
 * A real explaind server in a subprocess on a free loopback port (as tests/integration/_server.py
 * does for the Python tests): `python -m explaind.cli serve` with the demo repository.
 *
 * The Python interpreter is $EXPLAIND_PYTHON, else the repository's .venv/bin/python, else python3;
 * it must be able to import explaind (pip install -e . in that environment, or PYTHONPATH).
 */

import { ChildProcess, spawn, execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync, openSync, closeSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

import { ClientOptions, ExplaindClient } from "../src";

/** The repository root: the first folder above this file that holds proto/explaind. */
export const ROOT = (() => {
  let dir = __dirname;
  while (!existsSync(join(dir, "proto", "explaind"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error(`no proto/explaind above ${__dirname}`);
    dir = up;
  }
  return dir;
})();
export const DEMO = join(ROOT, "service", "explaind", "demo");

export function python(): string {
  if (process.env.EXPLAIND_PYTHON) return process.env.EXPLAIND_PYTHON;
  const venv = join(ROOT, ".venv", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

export interface Server {
  address: string;
  folder: string;
  process: ChildProcess;
  log(): string;
  stop(): Promise<number | null>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Start a server with `args` (more `serve` flags) and wait until `clientOptions` can list its models
 * with `shapes` READY (60 s at most: a loaded CI machine is slow to import onnxruntime).
 */
export async function startServer(args: string[] = [], clientOptions: ClientOptions = {}, host = "127.0.0.1"): Promise<Server> {
  const port = await freePort();
  const folder = mkdtempSync(join(tmpdir(), "explaind-ts-test-"));
  const logPath = join(folder, "server.log");
  const logFd = openSync(logPath, "w");
  const child = spawn(python(), ["-m", "explaind.cli", "serve", "--host", "127.0.0.1", "--port", String(port),
    "--metrics-port", "-1", "--repository", join(DEMO, "repository"), ...args], {
    stdio: ["ignore", logFd, logFd],
    env: { ...process.env, EXPLAIND_INTRA_OP_THREADS: "2" },
  });
  closeSync(logFd);
  const log = () => readFileSync(logPath, "utf8");
  let exited: number | null | undefined;
  const exit = new Promise<number | null>((resolve) => child.once("exit", (code) => { exited = code; resolve(code); }));
  const server: Server = {
    address: `${host}:${port}`,
    folder,
    process: child,
    log,
    async stop() {
      if (exited === undefined) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
        await exit;
        clearTimeout(timer);
      }
      return exited ?? null;
    },
  };
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (exited !== undefined) throw new Error(`server exited with ${exited}:\n${log()}`);
    const client = new ExplaindClient(server.address, { ...clientOptions, timeoutMs: 2_000 });
    try {
      const models = await client.listModels();
      if (models.some((m) => m.name === "shapes" && m.status === 1)) return server;
    } catch {
      // not up yet
    } finally {
      client.close();
    }
    await sleep(250);
  }
  await server.stop();
  throw new Error(`server did not answer ListModels within 60 s:\n${log()}`);
}

/** A CA and a server certificate for localhost / 127.0.0.1 (the openssl CLI), in `folder`. */
export function makeCertificates(folder: string): { ca: string; cert: string; key: string } {
  const openssl = (...args: string[]) => execFileSync("openssl", args, { cwd: folder, stdio: "pipe" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=explaind ts test ca",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  openssl("req", ...ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=server");
  writeFileSync(join(folder, "server.ext"), "subjectAltName=DNS:localhost,DNS:explaind.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "1", "-days", "2",
    "-out", "server.pem", "-extfile", "server.ext");
  return { ca: join(folder, "ca.pem"), cert: join(folder, "server.pem"), key: join(folder, "server.key") };
}

/** Rows of a float32 .npy file of shape [N, F] (numpy's format 1.0 / 2.0 header, C order). */
export function readNpyRows(path: string): Float32Array[] {
  const bytes = readFileSync(path);
  if (bytes.subarray(1, 6).toString("latin1") !== "NUMPY") throw new Error(`${path}: not a .npy file`);
  const major = bytes[6];
  const headerLength = major === 1 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = bytes.subarray(start, start + headerLength).toString("latin1");
  if (!header.includes("'descr': '<f4'") || header.includes("'fortran_order': True")) {
    throw new Error(`${path}: expected little-endian float32 in C order, got ${header}`);
  }
  const shape = header.match(/'shape': \((\d+), (\d+)\)/);
  if (!shape) throw new Error(`${path}: expected a 2-D array, got ${header}`);
  const [n, f] = [Number(shape[1]), Number(shape[2])];
  const data = new Float32Array(bytes.buffer.slice(bytes.byteOffset + start + headerLength, bytes.byteOffset + start + headerLength + n * f * 4));
  return Array.from({ length: n }, (_, i) => data.slice(i * f, (i + 1) * f));
}
