import assert from "node:assert/strict";
import { test } from "node:test";
import { after } from "../../dist/policy.js";

const closed = (code, refreshedLast = false) => after({ kind: "closed", code }, refreshedLast);
const refused = (status, retryAfter = null, refreshedLast = false) =>
  after({ kind: "refused", status, retryAfter }, refreshedLast);
const SOON = { kind: "soon" };
const BACKOFF = { kind: "backoff" };
const REFRESH = { kind: "refresh" };
const stop = (why) => ({ kind: "stop", why });

test("every close code has its step", () => {
  assert.deepEqual(closed(1012), SOON, "draining edge");
  assert.deepEqual(closed(1006), SOON, "edge gone, no close frame");
  for (const code of [1011, 4000, 4008, 4029]) assert.deepEqual(closed(code), BACKOFF, String(code));
  assert.deepEqual(closed(4001), REFRESH);
  assert.deepEqual(closed(4001, true), BACKOFF, "no refresh loop");
  assert.deepEqual(closed(4003), stop("session closed"));
  assert.deepEqual(closed(4009), stop("taken over"));
  for (const code of [1002, 1003, 1007, 1008, 1009]) assert.deepEqual(closed(code), stop("protocol error"), String(code));
  // Codes a later server may add: 4000-4499 retry, 4500-4999 final.
  assert.deepEqual(closed(4321), BACKOFF);
  assert.deepEqual(closed(4499), BACKOFF);
  assert.deepEqual(closed(4500), stop("closed by the server"));
  assert.deepEqual(closed(4999), stop("closed by the server"));
  assert.deepEqual(closed(5000), BACKOFF);
  assert.deepEqual(closed(1000), BACKOFF, "a server's normal close is not the app's");
  assert.deepEqual(closed(1005), BACKOFF, "a close frame without a code");
  assert.deepEqual(after({ kind: "silent" }, false), BACKOFF, "silence, or a socket that never opened");
});

test("http answers follow Retry-After and refresh once", () => {
  assert.deepEqual(refused(429, 7), { kind: "after", ms: 7000 });
  assert.deepEqual(refused(503, 2), { kind: "after", ms: 2000 });
  assert.deepEqual(refused(429), BACKOFF);
  assert.deepEqual(refused(503), BACKOFF);
  assert.deepEqual(refused(401), REFRESH);
  assert.deepEqual(refused(401, null, true), stop("unauthorized"));
  assert.deepEqual(refused(403), stop("refused"));
  assert.deepEqual(refused(400), stop("refused"));
  assert.deepEqual(refused(500), BACKOFF);
  assert.deepEqual(refused(502, 9), BACKOFF);
});
