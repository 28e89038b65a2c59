// Installs the packed package into a scratch project outside this directory, as an app would, and checks that it
// imports on Node, that its types compile against a consumer, and that a browser bundle of a consumer builds.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const scratch = mkdtempSync(join(tmpdir(), "ces-client-smoke-"));
const run = (cmd, args, cwd = scratch) => execFileSync(cmd, args, { cwd, stdio: ["ignore", "pipe", "inherit"] }).toString();
const npm = process.platform === "win32" ? "npm.cmd" : "npm";

try {
  run(npm, ["pack", "--silent", "--pack-destination", scratch], root);
  const tarball = readdirSync(scratch).find((f) => f.endsWith(".tgz"));
  if (!tarball) throw new Error("npm pack made no tarball");
  const packed = run("tar", ["-tzf", tarball]).split("\n").filter(Boolean);
  for (const f of ["package/dist/index.js", "package/dist/index.d.ts", "package/dist/ces-client.browser.js", "package/dist/ces-client.iife.js"]) {
    if (!packed.includes(f)) throw new Error(`the tarball lacks ${f}`);
  }
  if (packed.some((f) => f.startsWith("package/src/") || f.startsWith("package/test/"))) {
    throw new Error("the tarball holds more than dist");
  }

  const app = join(scratch, "app");
  execFileSync("mkdir", [app]);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "smoke-app", private: true, type: "module" }));
  run(npm, ["install", "--silent", "--no-audit", "--no-fund", "--offline", join(scratch, tarball)], app);

  // Node: the ES module and its exports.
  run(
    process.execPath,
    [
      "--input-type=module",
      "-e",
      `import { CesClient, register, CesHttpError } from "@ces/client";
       if (typeof CesClient !== "function" || typeof register !== "function" || typeof CesHttpError !== "function") {
         throw new Error("missing exports");
       }
       const c = new CesClient({ url: "http://127.0.0.1:9", getToken: async () => "t", WebSocket: class {} });
       if (c.state !== "idle" || c.position !== null) throw new Error("a new client is idle");`,
    ],
    app,
  );

  // Types: a consumer compiles against the declarations, strictly.
  writeFileSync(
    join(app, "consumer.ts"),
    `import { CesClient, register, type CesEvent, type Gap, type StateChange, type Position } from "@ces/client";
const client = new CesClient({
  url: "http://127.0.0.1:8080",
  getToken: async () => ({ token: (await register("http://127.0.0.1:8080")).token, expiresAt: new Date() }),
  WebSocket,
  resumeFrom: { epoch: "e", lastSeq: 1 },
  persist: "ces-position",
  pingIntervalMs: 30000,
});
const off: () => void = client.on("event", (e: CesEvent) => console.log(e.seq, e.id, e.event, e.data));
client.on("gap", (g: Gap) => console.log(g.from, g.to ?? "open", g.reason));
client.on("state", (s: StateChange) => console.log(s.state, s.code, s.reason, s.willReconnect, s.retryInMs, s.node));
const p: Position | null = client.position;
export async function main(): Promise<void> {
  await client.connect();
  off();
  client.close();
  console.log(p);
}
`,
  );
  writeFileSync(
    join(app, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: { target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", lib: ["ES2022", "DOM"], strict: true, noEmit: true, types: [] },
      files: ["consumer.ts"],
    }),
  );
  run(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json"], app);

  // Browser: a consumer bundled from the installed package (its `browser` build).
  writeFileSync(join(app, "entry.js"), `import { CesClient } from "@ces/client";\nwindow.client = new CesClient({ url: location.origin, getToken: async () => "t" });\n`);
  await build({
    absWorkingDir: app,
    entryPoints: ["entry.js"],
    bundle: true,
    platform: "browser",
    format: "esm",
    minify: true,
    outfile: "out.js",
    logLevel: "warning",
  });
  const bundle = readFileSync(join(app, "out.js"), "utf8");
  if (!bundle.includes("/v1/ws?token=")) throw new Error("the browser bundle lacks the client");
  console.log(`smoke: ${tarball} installs, imports on Node, type-checks a consumer, bundles for the browser (${bundle.length} bytes)`);
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
