import { retryAfterSecs } from "./url.js";

/** A session registered by `POST /v1/sessions`. */
export interface Session {
  session_id: string;
  token: string;
  expires_at: string;
}

/** An HTTP error answer from CES: the status, its stable `error` code and `Retry-After` in seconds. */
export class CesHttpError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string | null,
    readonly retryAfter: number | null,
  ) {
    super(message);
    this.name = "CesHttpError";
  }
}

/** Options of {@link register}. */
export interface RegisterOptions {
  /** An API key or JWT, sent as `Authorization: Bearer …` when registration is protected. */
  credential?: string;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
}

/**
 * Registers a session at the edge (or load balancer) `url` with optional client metadata `body` (a JSON object).
 * Usually done by the app's backend, which holds the credential, and handed to the browser through `getToken`.
 */
export async function register(url: string, body?: object, options: RegisterOptions = {}): Promise<Session> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (options.credential) headers.authorization = `Bearer ${options.credential}`;
  const res = await (options.fetch ?? fetch)(`${url.replace(/\/+$/, "")}/v1/sessions`, {
    method: "POST",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json: Record<string, unknown> | null = null;
  try {
    json = JSON.parse(text);
  } catch {
    // Plain-text answers (transport-level rejections).
  }
  if (!res.ok) {
    const code = typeof json?.error === "string" ? json.error : null;
    const message = typeof json?.message === "string" ? json.message : text || res.statusText;
    throw new CesHttpError(
      `register: HTTP ${res.status}${code ? ` ${code}` : ""}: ${message}`,
      res.status,
      code,
      retryAfterSecs(res.headers.get("retry-after")),
    );
  }
  return json as unknown as Session;
}
