import assert from "node:assert/strict";
import { test } from "node:test";
import { expiryMs, singleFlight, tokenExpiryMs, tokenInfo } from "../../dist/token.js";

const b64url = (s) => Buffer.from(s).toString("base64url");
const token = (payload) => `v1.k1.${b64url(JSON.stringify(payload))}.c2ln`;

test("the expiry is decoded from a v1 token's payload", () => {
  assert.equal(tokenExpiryMs(token({ sid: "s1", exp: 1_800_000_000 })), 1_800_000_000_000);
  // Padding-sensitive lengths decode too.
  for (const sid of ["a", "ab", "abc", "abcd"]) assert.equal(tokenExpiryMs(token({ sid, exp: 5 })), 5000, sid);
  // Characters that base64url spells differently from base64.
  const odd = token({ sid: "\u00ff\u00fe??>>", exp: 7 });
  assert.match(odd.split(".")[2], /[-_]/);
  assert.equal(tokenExpiryMs(odd), 7000);
  for (const other of [
    "opaque",
    "v2.k1." + b64url('{"exp":1}') + ".s",
    "v1.k1.!!!.s",
    "v1.k1." + b64url("not json") + ".s",
    token({ sid: "s1" }),
    token({ exp: "1" }),
    "v1.k1." + b64url('{"exp":1}'),
  ]) {
    assert.equal(tokenExpiryMs(other), null, other);
  }
});

test("an expiry given by getToken wins over the token's own", () => {
  const t = token({ sid: "s", exp: 100 });
  assert.deepEqual(tokenInfo(t), { token: t, expiresAtMs: 100_000 });
  assert.deepEqual(tokenInfo({ token: t }), { token: t, expiresAtMs: 100_000 });
  assert.deepEqual(tokenInfo({ token: t, expiresAt: "2026-11-23T20:00:00Z" }), {
    token: t,
    expiresAtMs: Date.parse("2026-11-23T20:00:00Z"),
  });
  assert.equal(tokenInfo({ token: "x", expiresAt: 200 }).expiresAtMs, 200_000, "a number is unix seconds");
  assert.equal(tokenInfo({ token: "x", expiresAt: 1_800_000_000_000 }).expiresAtMs, 1_800_000_000_000, "or ms");
  assert.equal(tokenInfo({ token: "x", expiresAt: new Date(5000) }).expiresAtMs, 5000);
  assert.equal(tokenInfo({ token: "x", expiresAt: "garbage" }).expiresAtMs, null);
  assert.equal(tokenInfo("opaque").expiresAtMs, null, "no expiry: no scheduled refresh");
  assert.equal(expiryMs(null), null);
  assert.throws(() => tokenInfo({}), TypeError);
});

test("getToken runs once at a time: callers meanwhile share its promise", async () => {
  let calls = 0;
  let release;
  const get = singleFlight(() => {
    calls++;
    return new Promise((resolve) => (release = resolve));
  });
  const a = get();
  const b = get();
  assert.equal(a, b);
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(get(), a, "still in flight");
  release(`t${calls}`);
  assert.deepEqual(await Promise.all([a, b]), ["t1", "t1"]);
  assert.equal(calls, 1);
  // Once settled, the next call runs again; a failure is shared and does not stick.
  const failing = singleFlight(async () => {
    calls++;
    throw new Error("down");
  });
  const [x, y] = [failing(), failing()];
  await assert.rejects(x, /down/);
  await assert.rejects(y, /down/);
  assert.equal(calls, 2);
  const c = get();
  assert.notEqual(c, a);
  await Promise.resolve();
  await Promise.resolve();
  release("t2");
  assert.equal(await c, "t2");
  // A synchronous throw becomes a rejection.
  await assert.rejects(
    singleFlight(() => {
      throw new Error("sync");
    })(),
    /sync/,
  );
});
