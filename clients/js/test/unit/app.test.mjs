import assert from "node:assert/strict";
import { test } from "node:test";
import { parseConfig } from "../app.mjs";

test("the harness takes its clients from the config and refuses a bad one", () => {
  const config = parseConfig(
    '{"url":"http://127.0.0.1:1","pingIntervalMs":500,"clients":[{"name":"c1","tokenUrl":"http://127.0.0.1:2/token/c1","resumeFrom":{"epoch":"e","lastSeq":3}}]}',
  );
  assert.equal(config.clients[0].resumeFrom.lastSeq, 3);
  for (const bad of [
    "",
    "{}",
    '{"url":"x"}',
    '{"url":"x","clients":[]}',
    '{"url":"x","clients":[{"name":"c1"}]}',
    '{"url":"x","clients":[{"name":"c1","tokenUrl":"t"},{"name":"c1","tokenUrl":"t"}]}',
    '{"url":"x","pingIntervalMs":0,"clients":[{"name":"c1","tokenUrl":"t"}]}',
  ]) {
    assert.throws(() => parseConfig(bad), undefined, bad);
  }
});
