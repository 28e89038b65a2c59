import type { Position } from "./tracker.js";

/**
 * The WebSocket URL for the edge (or load balancer) at `base` (`http(s)://host[:port][/prefix]`, or already
 * `ws(s)://`) with `token`, resuming from `position` if there is one: the epoch and `lastSeq` of the same position,
 * never one without the other.
 */
export function wsUrl(base: string, token: string, position: Position | null): string {
  const root = base.replace(/^http(s?):/i, (_, s: string) => `ws${s.toLowerCase()}:`).replace(/\/+$/, "");
  const url = `${root}/v1/ws?token=${encodeURIComponent(token)}`;
  return position ? `${url}&last_seq=${position.lastSeq}&epoch=${encodeURIComponent(position.epoch)}` : url;
}

/** A `Retry-After` header in whole seconds (`null` when absent or an HTTP date). */
export function retryAfterSecs(value: string | string[] | null | undefined): number | null {
  const v = Array.isArray(value) ? value[0] : value;
  if (v == null || !/^\s*\d+\s*$/.test(v)) return null;
  return Number(v);
}
