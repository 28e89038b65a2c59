// The connection loop against a fake server, for what a real edge cannot be made to send. Everything else the
// loop does is shown against real edges by the system tests.
import assert from "node:assert/strict";
import { test } from "node:test";
import { CesClient } from "../../dist/index.js";
import { fakeSockets, until } from "../fake-socket.mjs";

function client(options = {}) {
  const fake = fakeSockets(options.fake);
  const seen = [];
  let tokens = 0;
  const c = new CesClient({
    url: "http://edge:8080",
    WebSocket: fake.WebSocket,
    getToken: async () => `t${++tokens}`,
    random: () => 0.1,
    now: () => 1_000_000,
    ackIntervalMs: 5,
    ...options.client,
  });
  c.on("event", (e) => seen.push(["event", e.seq]));
  c.on("gap", (g) => seen.push(["gap", g.from, g.to, g.reason]));
  c.on("state", (s) => seen.push(["state", s.state, s.code, s.reason, s.willReconnect, s.retryInMs]));
  return { c, seen, sockets: fake.sockets, tokens: () => tokens };
}

const states = (seen) => seen.filter((s) => s[0] === "state");

test("a skipped seq is one unexplained gap before the event; repeats are dropped; acks coalesce", async (t) => {
  const { c, seen, sockets } = client();
  t.after(() => c.close());
  const connected = c.connect();
  await until(() => sockets.length === 1);
  assert.equal(sockets[0].url, "ws://edge:8080/v1/ws?token=t1", "a fresh client resumes from nothing");
  sockets[0].welcome("e1");
  await connected;
  for (const seq of [1, 2, 2, 5, 3, 6]) sockets[0].event(seq);
  assert.deepEqual(
    seen.filter((s) => s[0] !== "state"),
    [["event", 1], ["event", 2], ["gap", 3, 4, "unexplained"], ["event", 5], ["event", 6]],
  );
  assert.deepEqual(c.position, { epoch: "e1", lastSeq: 6 });
  await until(() => sockets[0].sent.some((f) => f.type === "ack"));
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.deepEqual(
    sockets[0].sent.filter((f) => f.type === "ack"),
    [{ type: "ack", seq: 6 }],
    "one ack of the highest seq, none while it does not move",
  );
  // The edge is gone: reconnect soon, from the position.
  sockets[0].serverClose(1006);
  await until(() => sockets.length === 2);
  assert.equal(sockets[1].url, "ws://edge:8080/v1/ws?token=t1&last_seq=6&epoch=e1");
  assert.deepEqual(states(seen).at(-2), ["state", "reconnecting", 1006, "connection lost", true, 100]);
});

test("a second 4001 in a row backs off instead of refreshing again", async (t) => {
  const { c, seen, sockets, tokens } = client();
  t.after(() => c.close());
  c.connect();
  await until(() => sockets.length === 1);
  sockets[0].welcome();
  sockets[0].serverClose(4001, "token expired");
  await until(() => sockets.length === 2);
  assert.equal(tokens(), 2, "one refresh");
  assert.match(sockets[1].url, /token=t2$/);
  sockets[1].welcome();
  sockets[1].serverClose(4001, "token expired");
  await until(() => states(seen).length === 6);
  assert.deepEqual(states(seen).slice(2), [
    ["state", "reconnecting", 4001, "token expired", true, 0],
    ["state", "connecting", null, null, false, null],
    ["state", "open", null, null, false, null],
    ["state", "reconnecting", 4001, "token expired", true, 50],
  ]);
  await until(() => sockets.length === 3);
  assert.equal(tokens(), 2, "no second refresh");
  assert.match(sockets[2].url, /token=t2$/);
  // The count of 4001s in a row starts again after a connection that did not end with one.
  sockets[2].welcome();
  sockets[2].serverClose(4001);
  await until(() => sockets.length === 4);
  assert.equal(tokens(), 3);
});

test("4500-4999 is final; codes below 4500 retry with backoff", async () => {
  const { c, seen, sockets } = client();
  const connected = c.connect();
  await until(() => sockets.length === 1);
  sockets[0].welcome();
  await connected;
  sockets[0].serverClose(4321);
  await until(() => sockets.length === 2);
  assert.deepEqual(states(seen).at(-2), ["state", "reconnecting", 4321, null, true, 50]);
  sockets[1].welcome();
  sockets[1].serverClose(4500, "later code");
  await until(() => c.state === "closed");
  assert.deepEqual(states(seen).at(-1), ["state", "closed", 4500, "closed by the server", false, null]);
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(sockets.length, 2, "no reconnect");
});

test("1002 before the first welcome is final and connect() rejects", async () => {
  const { c, seen, sockets } = client();
  const connected = c.connect();
  await until(() => sockets.length === 1);
  sockets[0].open();
  sockets[0].serverClose(1002);
  await assert.rejects(connected, (error) => error.code === 1002 && /protocol error/.test(error.message));
  assert.deepEqual(states(seen).at(-1), ["state", "closed", 1002, "protocol error", false, null]);
  c.close();
  assert.equal(states(seen).length, 2, "closing a closed client says nothing");
});

test("a second 401 in a row on the upgrade is final; 503 waits Retry-After", async () => {
  const { c, seen, sockets, tokens } = client({ fake: { nodeStyle: true } });
  const connected = c.connect();
  await until(() => sockets.length === 1);
  sockets[0].refuse(503, 2);
  await until(() => states(seen).length === 2);
  assert.deepEqual(states(seen)[1], ["state", "reconnecting", 503, "http 503", true, 2000]);
  c.close();
  await assert.rejects(connected, /closed by the app/);

  const second = client({ fake: { nodeStyle: true } });
  const connecting = second.c.connect();
  await until(() => second.sockets.length === 1);
  second.sockets[0].refuse(401);
  await until(() => second.sockets.length === 2);
  assert.equal(second.tokens(), 2, "one new token");
  second.sockets[1].refuse(401);
  await assert.rejects(connecting, /unauthorized/);
  assert.deepEqual(states(second.seen).at(-1), ["state", "closed", 401, "unauthorized", false, null]);
  assert.equal(tokens(), 1);
});

test("a close before the socket opened backs off (a browser's view of a refused upgrade)", async (t) => {
  const { c, seen, sockets } = client();
  t.after(() => c.close());
  c.connect();
  await until(() => sockets.length === 1);
  sockets[0].serverClose(1006);
  await until(() => states(seen).length === 2);
  assert.deepEqual(states(seen)[1], ["state", "reconnecting", null, "connect failed", true, 50]);
});

test("a stored position is resumed from and kept after every event", async (t) => {
  const map = new Map([["pos", JSON.stringify({ epoch: "e7", lastSeq: 4 })]]);
  const storage = { getItem: (k) => map.get(k) ?? null, setItem: (k, v) => map.set(k, v) };
  const { c, sockets } = client({ client: { persist: { key: "pos", storage }, resumeFrom: { epoch: "x", lastSeq: 1 } } });
  t.after(() => c.close());
  assert.deepEqual(c.position, { epoch: "e7", lastSeq: 4 }, "the stored position wins");
  c.connect();
  await until(() => sockets.length === 1);
  assert.equal(sockets[0].url, "ws://edge:8080/v1/ws?token=t1&last_seq=4&epoch=e7");
  sockets[0].welcome("e7");
  sockets[0].frame({ type: "resumed", ok: false, replayed: 0, reason: "epoch_changed", lost: { from: 5, to: null }, epoch: "e8" });
  assert.deepEqual(JSON.parse(map.get("pos")), { epoch: "e8", lastSeq: 0 });
  sockets[0].event(1);
  assert.deepEqual(JSON.parse(map.get("pos")), { epoch: "e8", lastSeq: 1 });
});

test("a listener can be removed", async (t) => {
  const { c, sockets } = client();
  t.after(() => c.close());
  const got = [];
  const off = c.on("event", (e) => got.push(e));
  c.connect();
  await until(() => sockets.length === 1);
  sockets[0].welcome();
  sockets[0].event(1);
  off();
  sockets[0].event(2);
  assert.deepEqual(got, [{ seq: 1, id: "ev1", event: "order.updated", data: { seq: 1 } }]);
});

test("without a WebSocket class the client says so", () => {
  assert.throws(() => new CesClient({ url: "http://x", getToken: async () => "t" }), /WebSocket/);
});
