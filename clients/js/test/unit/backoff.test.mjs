import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff } from "../../dist/backoff.js";

test("the ceiling doubles to the cap and every delay stays random under it", () => {
  const b = new Backoff();
  const ceilings = Array.from({ length: 9 }, () => b.nextDelay(1));
  assert.deepEqual(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  // At the cap the delay is still spread over [0, cap).
  assert.equal(b.nextDelay(0.25), 7500);
  assert.equal(b.nextDelay(0), 0);
  assert.equal(b.nextDelay(0.999), 29970);
  // Far past any shift width: no overflow, still the cap.
  const long = new Backoff();
  for (let i = 0; i < 2000; i++) long.nextDelay(0.5);
  assert.equal(long.nextDelay(1), 30000);
  // Out-of-range randomness is clamped.
  assert.equal(new Backoff().nextDelay(7), 500);
  assert.equal(new Backoff().nextDelay(-1), 0);
});

test("only a connection that stayed up 30 s resets the count", () => {
  const b = new Backoff();
  for (let i = 0; i < 4; i++) b.nextDelay(0.5);
  b.connectionEnded(29_999);
  assert.equal(b.nextDelay(1), 8000, "a short connection counts as a failure");
  b.connectionEnded(Backoff.STABLE_MS);
  assert.equal(Backoff.STABLE_MS, 30_000);
  assert.equal(b.nextDelay(1), 500);
});
