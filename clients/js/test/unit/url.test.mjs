import assert from "node:assert/strict";
import { test } from "node:test";
import { loadPosition, positionStore, savePosition } from "../../dist/persist.js";
import { retryAfterSecs, wsUrl } from "../../dist/url.js";

test("the URL resumes from the position with its epoch", () => {
  assert.equal(wsUrl("http://lb:8080", "t", null), "ws://lb:8080/v1/ws?token=t");
  assert.equal(
    wsUrl("https://lb/", "t", { epoch: "e1", lastSeq: 41 }),
    "wss://lb/v1/ws?token=t&last_seq=41&epoch=e1",
  );
  assert.equal(wsUrl("HTTPS://lb/ces", "t", null), "wss://lb/ces/v1/ws?token=t");
  assert.equal(wsUrl("ws://lb:1", "t", { epoch: "e", lastSeq: 0 }), "ws://lb:1/v1/ws?token=t&last_seq=0&epoch=e");
  assert.equal(
    wsUrl("http://lb", "v1.k+/=.p&q", { epoch: "a b&c", lastSeq: 3 }),
    "ws://lb/v1/ws?token=v1.k%2B%2F%3D.p%26q&last_seq=3&epoch=a%20b%26c",
    "both are URL-encoded",
  );
});

test("Retry-After is whole seconds", () => {
  assert.equal(retryAfterSecs("7"), 7);
  assert.equal(retryAfterSecs(" 0 "), 0);
  assert.equal(retryAfterSecs(["3"]), 3);
  assert.equal(retryAfterSecs(null), null);
  assert.equal(retryAfterSecs(undefined), null);
  assert.equal(retryAfterSecs("Wed, 21 Oct 2015 07:28:00 GMT"), null);
  assert.equal(retryAfterSecs("-1"), null);
});

function fakeStorage() {
  const map = new Map();
  return {
    map,
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem: (k, v) => map.set(k, String(v)),
  };
}

test("the position is stored as one value and read back", () => {
  const storage = fakeStorage();
  assert.equal(loadPosition(storage, "k"), null);
  savePosition(storage, "k", { epoch: "e1", lastSeq: 12 });
  assert.deepEqual(JSON.parse(storage.map.get("k")), { epoch: "e1", lastSeq: 12 }, "one JSON value");
  assert.deepEqual(loadPosition(storage, "k"), { epoch: "e1", lastSeq: 12 });
  for (const bad of ["{", "null", "[]", '{"epoch":"e"}', '{"epoch":1,"lastSeq":1}', '{"epoch":"e","lastSeq":-1}', '{"epoch":"e","lastSeq":1.5}']) {
    storage.map.set("k", bad);
    assert.equal(loadPosition(storage, "k"), null, bad);
  }
  // A storage that refuses writes does not stop the stream.
  savePosition({ getItem: () => null, setItem: () => { throw new Error("quota"); } }, "k", { epoch: "e", lastSeq: 1 });
  assert.equal(positionStore(undefined), null);
  assert.equal(positionStore("k"), null, "no sessionStorage on Node: persistence is off");
  assert.equal(positionStore({ key: "k", storage }).storage, storage);
  globalThis.sessionStorage = storage;
  try {
    assert.deepEqual(positionStore("k2"), { key: "k2", storage }, "the browser default");
  } finally {
    delete globalThis.sessionStorage;
  }
});
