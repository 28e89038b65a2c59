#!/usr/bin/env node
// Runs CES clients against real servers for the system tests: `node clients/js/test/app.mjs '<json config>'`.
//
// Config: {"url": "http://127.0.0.1:PORT", "pingIntervalMs"?: n,
//          "clients": [{"name": "c1", "tokenUrl": "http://…/token/c1", "resumeFrom"?: {"epoch": "…", "lastSeq": n}}]}
// A client's token comes from GET tokenUrl, a JSON body {"token": "…", "expires_at"?: "…"}.
//
// Prints one JSON line per observation: {"client","kind":"event"|"gap"|"state"|"token"|"connect_failed",…}.
// Stdin: {"cmd":"close","client":"c1"} closes one client; the end of stdin closes them all and exits.
import { resolve } from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import WebSocket from "ws";
import { CesClient } from "../dist/index.js";

export function parseConfig(text) {
  const config = JSON.parse(text);
  if (!config || typeof config.url !== "string") throw new Error("config: url (a string) is required");
  if (!Array.isArray(config.clients) || config.clients.length === 0) throw new Error("config: clients is required");
  const names = new Set();
  for (const c of config.clients) {
    if (typeof c?.name !== "string" || typeof c.tokenUrl !== "string") {
      throw new Error("config: each client needs a name and a tokenUrl");
    }
    if (names.has(c.name)) throw new Error(`config: client ${c.name} twice`);
    names.add(c.name);
  }
  if (config.pingIntervalMs != null && !(config.pingIntervalMs > 0)) throw new Error("config: pingIntervalMs > 0");
  return config;
}

// The reader went away: nothing left to tell.
process.stdout.on("error", () => process.exit(0));

function print(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function start(config) {
  const clients = new Map();
  for (const spec of config.clients) {
    const name = spec.name;
    const client = new CesClient({
      url: config.url,
      WebSocket,
      pingIntervalMs: config.pingIntervalMs,
      resumeFrom: spec.resumeFrom ?? null,
      getToken: async () => {
        print({ client: name, kind: "token" });
        const res = await fetch(spec.tokenUrl);
        if (!res.ok) throw new Error(`token: HTTP ${res.status}`);
        const body = await res.json();
        return { token: body.token, expiresAt: body.expires_at ?? null };
      },
    });
    client.on("event", (e) => print({ client: name, kind: "event", seq: e.seq, id: e.id, event: e.event }));
    client.on("gap", (g) => print({ client: name, kind: "gap", from: g.from, to: g.to, reason: g.reason }));
    client.on("state", (s) => print({ client: name, kind: "state", ...s, node: s.node ?? null }));
    clients.set(name, client);
  }
  for (const [name, client] of clients) {
    client.connect().catch((error) => print({ client: name, kind: "connect_failed", message: error.message }));
  }
  const input = createInterface({ input: process.stdin });
  input.on("line", (line) => {
    if (!line.trim()) return;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch {
      print({ kind: "error", message: `not JSON: ${line}` });
      return;
    }
    const client = clients.get(cmd?.client);
    if (cmd?.cmd === "close" && client) client.close();
    else print({ kind: "error", message: `unknown command: ${line}` });
  });
  input.on("close", () => {
    for (const client of clients.values()) client.close();
    // Let the close frames go out before leaving.
    setTimeout(() => process.exit(0), 100);
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  let config;
  try {
    config = parseConfig(process.argv[2] ?? "");
  } catch (error) {
    console.error(`app.mjs: ${error.message}`);
    process.exit(64);
  }
  start(config);
}
