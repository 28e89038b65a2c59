import assert from "node:assert/strict";
import { test } from "node:test";
import { Tracker } from "../../dist/tracker.js";

const at = (epoch, lastSeq) => ({ epoch, lastSeq });
const deliver = { deliver: true, gap: null };
const repeat = { deliver: false, gap: null };

test("a fresh client starts at its first event and resumes from it", () => {
  const t = new Tracker();
  assert.equal(t.position, null, "nothing moves before the first event");
  assert.deepEqual(t.onEvent("e1", 5), deliver, "a trimmed start is not a loss");
  assert.deepEqual(t.position, at("e1", 5));
  assert.deepEqual(t.onEvent("e1", 6), deliver);
  assert.deepEqual(t.position, at("e1", 6));
  // Told of a loss before its first event: not its own.
  const fresh = new Tracker(null);
  assert.equal(fresh.onResumed(false, { from: 1, to: 4 }, "expired"), null);
  assert.equal(fresh.position, null);
});

test("repeats are dropped and a skipped number is reported before the event", () => {
  const t = new Tracker(at("e1", 3));
  assert.deepEqual(t.onEvent("e1", 2), repeat);
  assert.deepEqual(t.onEvent("e1", 3), repeat);
  assert.deepEqual(t.onEvent("e1", 4), deliver);
  assert.deepEqual(t.onEvent("e1", 7), { deliver: true, gap: { from: 5, to: 6, reason: "unexplained" } });
  assert.deepEqual(t.position, at("e1", 7));
  assert.deepEqual(t.onEvent("e1", 7), repeat);
});

test("resumed ok:false names the range and moves past it", () => {
  const t = new Tracker(at("e1", 2));
  assert.equal(t.onResumed(true), null, "ok:true reports nothing");
  assert.deepEqual(t.onResumed(false, { from: 3, to: 7 }, "buffer_overflow"), {
    from: 3,
    to: 7,
    reason: "buffer_overflow",
  });
  assert.deepEqual(t.position, at("e1", 7));
  assert.deepEqual(t.onEvent("e1", 8), deliver, "no second report of the same loss");
  // A notice for one unsendable event mid-stream.
  assert.deepEqual(t.onResumed(false, { from: 9, to: 9 }, "too_large"), { from: 9, to: 9, reason: "too_large" });
  assert.deepEqual(t.onEvent("e1", 10), deliver);
  // A range that ends below the position never moves it back.
  t.onResumed(false, { from: 4, to: 5 }, "expired");
  assert.deepEqual(t.position, at("e1", 10));
});

test("an epoch change is one open gap and numbering restarts in the new epoch", () => {
  const t = new Tracker(at("e1", 40));
  assert.deepEqual(t.onResumed(false, { from: 41, to: null }, "epoch_changed", "e2"), {
    from: 41,
    to: null,
    reason: "epoch_changed",
  });
  assert.deepEqual(t.position, at("e2", 0));
  assert.deepEqual(t.onEvent("e2", 1), deliver, "seq 1 of the new epoch is new");
  assert.deepEqual(t.position, at("e2", 1));
  // Without a range, nothing to report.
  assert.equal(t.onResumed(false, null, "expired"), null);
  assert.equal(t.onResumed(false, { from: 2, to: 2 }).reason, "unexplained");
  // An open range without a new epoch keeps the position.
  t.onResumed(false, { from: 3, to: null }, "expired");
  assert.deepEqual(t.position, at("e2", 2));
});

test("the position handed out is a copy", () => {
  const saved = at("e1", 1);
  const t = new Tracker(saved);
  saved.lastSeq = 99;
  t.position.lastSeq = 42;
  assert.deepEqual(t.position, at("e1", 1));
});
