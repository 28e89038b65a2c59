// What a connection's end leads to (docs/clients.md, "Close codes and HTTP answers").

/** How a connection ended. */
export type Ending =
  /** The socket closed with this code (1006 when it dropped without a close frame, 1005 for a frame without one). */
  | { kind: "closed"; code: number; reason?: string }
  /** The upgrade was answered with this HTTP status, and `Retry-After` in seconds if it came with one. */
  | { kind: "refused"; status: number; retryAfter: number | null }
  /** Nothing arrived for too long, or the socket never opened (a browser sees a refused upgrade only as that). */
  | { kind: "silent"; reason?: string };

/** What to do next. */
export type Next =
  /** Reconnect after a short random delay (an edge draining or gone: its clients must not all come back at once). */
  | { kind: "soon" }
  /** Reconnect after the next backoff delay. */
  | { kind: "backoff" }
  /** Reconnect after exactly this long (the server said when). */
  | { kind: "after"; ms: number }
  /** Get a fresh token first, then reconnect. */
  | { kind: "refresh" }
  /** Stop: the app is told why and no reconnect follows. */
  | { kind: "stop"; why: string };

const SOON: Next = { kind: "soon" };
const BACKOFF: Next = { kind: "backoff" };
const REFRESH: Next = { kind: "refresh" };
const stop = (why: string): Next => ({ kind: "stop", why });

/**
 * The next step after `ending`; `refreshedLast` is whether the connection that ended was the first one after a
 * token refresh (a second expiry or 401 in a row backs off or stops instead of refreshing in a loop).
 */
export function after(ending: Ending, refreshedLast: boolean): Next {
  if (ending.kind === "silent") return BACKOFF;
  if (ending.kind === "refused") {
    const { status, retryAfter } = ending;
    if (status === 401) return refreshedLast ? stop("unauthorized") : REFRESH;
    if (status === 429 || status === 503) return retryAfter == null ? BACKOFF : { kind: "after", ms: retryAfter * 1000 };
    if (status >= 400 && status <= 499) return stop("refused");
    return BACKOFF;
  }
  const code = ending.code;
  switch (code) {
    case 1012: // the edge is shutting down
    case 1006: // the edge or the network is gone
      return SOON;
    case 4001:
      return refreshedLast ? BACKOFF : REFRESH;
    case 4003:
      return stop("session closed");
    case 4009:
      return stop("taken over");
    case 1002:
    case 1003:
    case 1007:
    case 1008:
    case 1009:
      return stop("protocol error");
    case 1011: // Redis unavailable
    case 4000: // ping timeout
    case 4008: // slow consumer
    case 4029: // too many messages
      return BACKOFF;
  }
  // Codes a later server may add: 4000-4499 retry, 4500-4999 final.
  if (code >= 4500 && code <= 4999) return stop("closed by the server");
  return BACKOFF;
}
