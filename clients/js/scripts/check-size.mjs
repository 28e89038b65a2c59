// Fails when the browser bundle, gzipped, is larger than its budget.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const LIMIT = 6144;
const file = join(dirname(fileURLToPath(import.meta.url)), "../dist/ces-client.browser.js");
const raw = readFileSync(file);
const gzipped = gzipSync(raw, { level: 9 }).length;
console.log(`dist/ces-client.browser.js: ${raw.length} bytes, ${gzipped} bytes gzipped (limit ${LIMIT})`);
if (gzipped > LIMIT) {
  console.error(`too large by ${gzipped - LIMIT} bytes`);
  process.exit(1);
}
