// The browser's own signals: `online` and a page restored from the back/forward cache (`pageshow`, persisted) end a
// reconnect's backoff wait at once; a page shown afresh does not. A window is played by an EventTarget.
import assert from "node:assert/strict";
import { test } from "node:test";
import { CesClient } from "../../dist/index.js";
import { fakeSockets, until } from "../fake-socket.mjs";

async function waitingToReconnect(t) {
  const window = new EventTarget();
  globalThis.window = window;
  t.after(() => delete globalThis.window);
  const fake = fakeSockets();
  const states = [];
  const c = new CesClient({
    url: "http://edge:8080",
    WebSocket: fake.WebSocket,
    getToken: async () => "t1",
    // The longest backoff draw: 0.99 of the ceiling, about a second for the first failure.
    random: () => 0.99,
  });
  t.after(() => c.close());
  c.on("state", (s) => states.push(s));
  c.connect();
  await until(() => fake.sockets.length === 1);
  fake.sockets[0].welcome();
  fake.sockets[0].serverClose(4000);
  // The first wait is about half a second; the attempt after it fails too, and the next wait doubles.
  await until(() => fake.sockets.length === 2, 1000);
  fake.sockets[1].serverClose(1006);
  await until(() => states.filter((s) => s.state === "reconnecting").length === 2);
  const wait = states.filter((s) => s.state === "reconnecting")[1].retryInMs;
  assert.ok(wait >= 900, `a long wait to cut short: ${wait} ms`);
  return { window, sockets: fake.sockets };
}

for (const [name, event] of [
  ["online", () => new Event("online")],
  ["pageshow of a page restored from the back/forward cache", () => Object.assign(new Event("pageshow"), { persisted: true })],
]) {
  test(`${name} reconnects at once instead of waiting out the backoff`, async (t) => {
    const { window, sockets } = await waitingToReconnect(t);
    window.dispatchEvent(event());
    await until(() => sockets.length === 3, 200);
    assert.equal(sockets[2].url, "ws://edge:8080/v1/ws?token=t1");
  });
}

test("a pageshow of a fresh page load does not cut the wait short", async (t) => {
  const { window, sockets } = await waitingToReconnect(t);
  window.dispatchEvent(Object.assign(new Event("pageshow"), { persisted: false }));
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(sockets.length, 2);
});
