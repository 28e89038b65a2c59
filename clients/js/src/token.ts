// Session tokens: what `getToken` may return, the expiry read from a token, and one call in flight at a time.

/** What `getToken` resolves to: the token, or the token with its expiry. */
export type TokenResult = string | { token: string; expiresAt?: string | number | Date | null };

/** A token with its expiry in epoch milliseconds (`null`: unknown, no scheduled refresh). */
export interface TokenInfo {
  token: string;
  expiresAtMs: number | null;
}

/**
 * An expiry as epoch milliseconds: a `Date`, an ISO 8601 string, or a number of unix seconds (a number above
 * 1e11 is taken as milliseconds already). `null` when absent or unreadable.
 */
export function expiryMs(value: string | number | Date | null | undefined): number | null {
  if (value == null || value === "") return null;
  const ms =
    value instanceof Date ? value.getTime() : typeof value === "number" ? (value > 1e11 ? value : value * 1000) : Date.parse(value);
  return Number.isFinite(ms) ? ms : null;
}

/**
 * The `exp` (unix seconds) of a CES token `v1.<kid>.<payload>.<signature>`, whose payload is base64url JSON, in
 * epoch milliseconds; `null` for any other shape. Clients treat the token as opaque otherwise.
 */
export function tokenExpiryMs(token: string): number | null {
  const parts = token.split(".");
  if (parts.length !== 4 || parts[0] !== "v1") return null;
  try {
    const b64 = parts[2]!.replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4))) as { exp?: unknown };
    return typeof json.exp === "number" && Number.isFinite(json.exp) ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** `getToken`'s answer with its expiry: the one given, else the token's own `exp`. */
export function tokenInfo(result: TokenResult): TokenInfo {
  if (typeof result === "string") return { token: result, expiresAtMs: tokenExpiryMs(result) };
  if (!result || typeof result.token !== "string") throw new TypeError("getToken must give a token string");
  return { token: result.token, expiresAtMs: expiryMs(result.expiresAt) ?? tokenExpiryMs(result.token) };
}

/** `fn` with one call in flight at a time: a call made while one runs gets the same promise. */
export function singleFlight<T>(fn: () => Promise<T>): () => Promise<T> {
  let running: Promise<T> | null = null;
  return () =>
    (running ??= Promise.resolve()
      .then(fn)
      .finally(() => {
        running = null;
      }));
}
