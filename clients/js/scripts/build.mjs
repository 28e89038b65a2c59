// Builds dist/: tsc (ES modules and declarations for Node and bundlers), then esbuild (one minified ES module and
// one IIFE with a global `Ces`, for browsers).
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
rmSync(join(root, "dist"), { recursive: true, force: true });
execFileSync(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", join(root, "tsconfig.json")], {
  stdio: "inherit",
});
const common = {
  entryPoints: [join(root, "dist/index.js")],
  bundle: true,
  minify: true,
  platform: "browser",
  target: "es2022",
  legalComments: "none",
  logLevel: "warning",
};
await build({ ...common, format: "esm", outfile: join(root, "dist/ces-client.browser.js") });
await build({ ...common, format: "iife", globalName: "Ces", outfile: join(root, "dist/ces-client.iife.js") });
console.log("built dist/");
