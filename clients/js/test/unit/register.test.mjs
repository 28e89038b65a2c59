import assert from "node:assert/strict";
import { test } from "node:test";
import { CesHttpError, register } from "../../dist/index.js";

function fakeFetch(status, body, headers = {}) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init });
    return new Response(typeof body === "string" ? body : JSON.stringify(body), { status, headers });
  };
  return { fetch, calls };
}

test("register posts the metadata with the credential and returns the session", async () => {
  const session = { session_id: "s1", token: "v1.k.p.s", expires_at: "2026-11-23T20:00:00Z" };
  const { fetch, calls } = fakeFetch(201, session);
  assert.deepEqual(await register("http://edge:8080/", { user: "u1" }, { credential: "key1", fetch }), session);
  assert.equal(calls[0].url, "http://edge:8080/v1/sessions");
  assert.equal(calls[0].init.method, "POST");
  assert.equal(calls[0].init.body, '{"user":"u1"}');
  assert.deepEqual(calls[0].init.headers, { "content-type": "application/json", authorization: "Bearer key1" });
  const bare = fakeFetch(201, session);
  await register("http://edge", undefined, { fetch: bare.fetch });
  assert.deepEqual(bare.calls[0].init.headers, {});
  assert.equal(bare.calls[0].init.body, undefined);
});

test("register surfaces the error code, status and Retry-After", async () => {
  const { fetch } = fakeFetch(429, { error: "rate_limited", message: "slow down" }, { "retry-after": "7" });
  await assert.rejects(register("http://edge", {}, { fetch }), (error) => {
    assert.ok(error instanceof CesHttpError);
    assert.equal(error.status, 429);
    assert.equal(error.code, "rate_limited");
    assert.equal(error.retryAfter, 7);
    assert.match(error.message, /slow down/);
    return true;
  });
  const plain = fakeFetch(413, "payload too large");
  await assert.rejects(register("http://edge", {}, { fetch: plain.fetch }), (error) => {
    assert.equal(error.status, 413);
    assert.equal(error.code, null);
    assert.equal(error.retryAfter, null);
    assert.match(error.message, /payload too large/);
    return true;
  });
});
