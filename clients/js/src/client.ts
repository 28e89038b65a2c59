// The connection loop: connects, hands every frame to the tracker, reconnects as the policy says with the position
// to resume from, refreshes the token in band, acknowledges, watches for silence, and tells the app (docs/clients.md).

import { Backoff } from "./backoff.js";
import { type PersistOption, loadPosition, positionStore, savePosition, type StorageLike } from "./persist.js";
import { type Ending, after } from "./policy.js";
import { type TokenInfo, type TokenResult, singleFlight, tokenInfo } from "./token.js";
import { type Gap, type Position, Tracker } from "./tracker.js";
import { retryAfterSecs, wsUrl } from "./url.js";

/** An event as the app gets it. */
export interface CesEvent {
  /** Its number in the session's epoch: each at most once, in order. */
  seq: number;
  /** The event id (the same for every delivery of one business event). */
  id: string;
  /** The event type. */
  event: string;
  /** The producer's data. */
  data: unknown;
}

/** The client's connection state. */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** A change of state. */
export interface StateChange {
  state: ConnectionState;
  /** How the last connection ended: its close code, or the HTTP status that refused it; `null` otherwise. */
  code: number | null;
  /** Why, in words: the server's close reason, or for `closed` the final verdict (`session closed`, ...). */
  reason: string | null;
  /** Whether another attempt follows (`reconnecting`). */
  willReconnect: boolean;
  /** The wait before that attempt (`reconnecting`), in ms. */
  retryInMs: number | null;
  /** The edge serving the session (`open`). */
  node?: string;
}

/** What each kind of listener gets. */
export interface CesClientEvents {
  event: CesEvent;
  gap: Gap;
  state: StateChange;
}

/** The part of the WebSocket API the client uses; the browser's `WebSocket` and the `ws` package both fit. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (event: any) => void): void;
}

/** A WebSocket class. */
export type WebSocketClass = new (url: string) => WebSocketLike;

/** What the client needs. */
export interface CesClientOptions {
  /** The edge (or load balancer) base URL: `http(s)://host:port`. */
  url: string;
  /** Gives the session's current token (the app's backend registers sessions and hands out tokens). */
  getToken: () => Promise<TokenResult>;
  /** The WebSocket class (default: the global one; on Node 20 pass the `ws` package's). */
  WebSocket?: WebSocketClass;
  /** A position saved by an earlier run, to resume from. */
  resumeFrom?: Position | null;
  /** Keep the position under this key (in `sessionStorage` unless a storage is given), so a reload resumes. */
  persist?: PersistOption;
  /** The edge's ping interval (default 30000); nothing received for 2.5 of them means the connection is dead. */
  pingIntervalMs?: number;
  /** Acknowledge the highest delivered seq at most this often (default 500), when it moved. */
  ackIntervalMs?: number;
  /** Randomness in [0, 1) for delays (tests). */
  random?: () => number;
  /** Wall-clock time in ms (tests). */
  now?: () => number;
}

/** One socket of the session. */
interface Conn {
  ws: WebSocketLike;
  /** The epoch of this connection's events (from `welcome`, or a `resumed` that changed it). */
  epoch: string;
  opened: boolean;
  welcomedAt: number | null;
  lastFrame: number;
  acked: Position | null;
  refused: Ending | null;
  end: (ending: Ending) => void;
}

type Listeners = { [K in keyof CesClientEvents]: Set<(value: CesClientEvents[K]) => void> };

const OPEN = 1;
const MAX_TIMER = 2 ** 31 - 1;

/** A CES stream for one session: every `seq` is delivered once, in order, or named in exactly one gap. */
export class CesClient {
  readonly #url: string;
  readonly #WebSocket: WebSocketClass;
  readonly #getToken: () => Promise<TokenInfo>;
  readonly #store: { key: string; storage: StorageLike } | null;
  readonly #pingMs: number;
  readonly #ackMs: number;
  readonly #random: () => number;
  readonly #now: () => number;
  readonly #tracker: Tracker;
  readonly #backoff = new Backoff();
  readonly #refreshBackoff = new Backoff();
  readonly #listeners: Listeners = { event: new Set(), gap: new Set(), state: new Set() };

  #state: ConnectionState = "idle";
  #stopped = false;
  #token: string | null = null;
  #tokenExpiresAt: number | null = null;
  #conn: Conn | null = null;
  #connected: Promise<void> | null = null;
  #settle: ((error?: Error) => void) | null = null;
  #wake: (() => void) | null = null;
  #waitingForServer = false;
  #timers: ReturnType<typeof setInterval>[] = [];
  #refreshTimer: ReturnType<typeof setTimeout> | undefined;
  #unhook: (() => void) | null = null;

  constructor(options: CesClientOptions) {
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketClass }).WebSocket;
    if (!WS) throw new TypeError("no WebSocket: pass one as the WebSocket option (e.g. the ws package on Node)");
    if (typeof options.getToken !== "function") throw new TypeError("getToken is required");
    this.#url = options.url;
    this.#WebSocket = WS;
    const getToken = options.getToken;
    this.#getToken = singleFlight(async () => tokenInfo(await getToken()));
    this.#store = positionStore(options.persist);
    this.#pingMs = options.pingIntervalMs ?? 30_000;
    this.#ackMs = options.ackIntervalMs ?? 500;
    this.#random = options.random ?? Math.random;
    this.#now = options.now ?? Date.now;
    const saved = this.#store && loadPosition(this.#store.storage, this.#store.key);
    this.#tracker = new Tracker(saved ?? options.resumeFrom ?? null);
  }

  /** The position `(epoch, lastSeq)` of the last event handed to the app, or `null` before the first. */
  get position(): Position | null {
    return this.#tracker.position;
  }

  /** The current state. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** Listens to `type`; returns the function that stops listening. */
  on<K extends keyof CesClientEvents>(type: K, listener: (value: CesClientEvents[K]) => void): () => void {
    const set = this.#listeners[type] as Set<(value: CesClientEvents[K]) => void>;
    set.add(listener);
    return () => void set.delete(listener);
  }

  /** Starts the stream; resolves at the first `welcome`, rejects if the client stops before it. */
  connect(): Promise<void> {
    if (this.#connected) return this.#connected;
    this.#connected = new Promise<void>((resolve, reject) => {
      this.#settle = (error) => {
        this.#settle = null;
        if (error) reject(error);
        else resolve();
      };
    });
    // The app hears of a final end through `state` too: a connect() nobody awaits must not fail the process.
    this.#connected.catch(() => {});
    if (this.#stopped) {
      this.#settle?.(new Error("the client is closed"));
      return this.#connected;
    }
    this.#timers.push(
      setInterval(() => this.#tick(), this.#ackMs),
      setInterval(() => this.#send(this.#conn, { type: "ping" }, true), this.#pingMs),
    );
    this.#hookBrowser();
    void this.#run();
    return this.#connected;
  }

  /** Stops for good: closes the socket (1000) and tells the app `closed`. */
  close(): void {
    if (this.#stopped) return;
    const conn = this.#conn;
    if (conn) {
      this.#ack(conn);
      try {
        conn.ws.close(1000);
      } catch {
        // Already gone.
      }
    }
    this.#finish(1000, "closed by the app");
  }

  async #run(): Promise<void> {
    let refreshedLast = false;
    while (!this.#stopped) {
      if (this.#token == null) {
        try {
          const info = await this.#getToken();
          this.#useToken(info);
        } catch {
          // The app's backend may be down for a moment: try again after the next backoff delay, for as long as
          // the app keeps the client (it stops it with close()).
          const wait = Math.round(this.#backoff.nextDelay(this.#random()));
          this.#setState({ state: "reconnecting", code: null, reason: "no token", willReconnect: true, retryInMs: wait });
          this.#waitingForServer = false;
          await this.#sleep(wait);
          continue;
        }
        if (this.#stopped) return;
      }
      this.#setState({ state: "connecting" });
      const conn = this.#open(wsUrl(this.#url, this.#token!, this.#tracker.position));
      const ending = await conn.ended;
      if (this.#stopped) return;
      const upMs = conn.welcomedAt == null ? 0 : this.#now() - conn.welcomedAt;
      this.#backoff.connectionEnded(upMs);
      const next = after(ending, refreshedLast);
      refreshedLast = false;
      const code = ending.kind === "closed" ? ending.code : ending.kind === "refused" ? ending.status : null;
      if (next.kind === "stop") {
        this.#finish(code, next.why);
        return;
      }
      let wait = 0;
      if (next.kind === "soon") wait = this.#random() * 1000;
      else if (next.kind === "backoff") wait = this.#backoff.nextDelay(this.#random());
      else if (next.kind === "after") wait = next.ms;
      else {
        this.#token = null;
        refreshedLast = true;
      }
      wait = Math.round(wait);
      const reason =
        ending.kind === "refused" ? `http ${ending.status}` : ending.reason || (code === 1006 ? "connection lost" : null);
      this.#setState({ state: "reconnecting", code, reason, willReconnect: true, retryInMs: wait });
      this.#waitingForServer = next.kind === "after";
      await this.#sleep(wait);
    }
  }

  /** Waits `ms`, or less when `#wake` is called (the browser came back online). */
  #sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => this.#wake?.(), Math.min(ms, MAX_TIMER));
      this.#wake = () => {
        clearTimeout(timer);
        this.#wake = null;
        resolve();
      };
    });
  }

  /** Opens one socket; `ended` settles when it ends, however it ends. */
  #open(url: string): Conn & { ended: Promise<Ending> } {
    let end!: (ending: Ending) => void;
    const ended = new Promise<Ending>((resolve) => (end = resolve));
    const conn = {
      epoch: "",
      opened: false,
      welcomedAt: null,
      lastFrame: this.#now(),
      acked: this.#tracker.position,
      refused: null,
      ended,
      end: (ending: Ending) => {
        if (this.#conn !== conn) return;
        this.#conn = null;
        end(ending);
      },
    } as unknown as Conn & { ended: Promise<Ending> };
    let ws: WebSocketLike;
    try {
      ws = new this.#WebSocket(url);
    } catch {
      end({ kind: "silent", reason: "connect failed" });
      return conn;
    }
    conn.ws = ws;
    this.#conn = conn;
    const alive = () => {
      if (this.#conn === conn) conn.lastFrame = this.#now();
    };
    ws.addEventListener("open", () => {
      conn.opened = true;
      alive();
    });
    ws.addEventListener("error", () => {});
    ws.addEventListener("message", (message: { data: unknown }) => {
      if (this.#conn !== conn) return;
      alive();
      if (typeof message.data === "string") this.#frame(conn, message.data);
    });
    ws.addEventListener("close", (close: { code: number; reason?: string }) =>
      conn.end(
        conn.refused ??
          (conn.opened
            ? { kind: "closed", code: close.code, reason: close.reason }
            : { kind: "silent", reason: "connect failed" }),
      ),
    );
    // The `ws` package (Node) surfaces WebSocket pings and the HTTP answer that refused an upgrade; browsers show
    // neither (a refused upgrade is a close before open there).
    const node = ws as unknown as {
      on?: (type: string, listener: (...args: any[]) => void) => void;
      terminate?: () => void;
    };
    if (typeof node.on === "function") {
      node.on("ping", alive);
      node.on("unexpected-response", (_request: unknown, response: any) => {
        conn.refused = {
          kind: "refused",
          status: response.statusCode,
          retryAfter: retryAfterSecs(response.headers?.["retry-after"]),
        };
        response.resume?.();
        node.terminate?.();
      });
    }
    return conn;
  }

  #frame(conn: Conn, text: string): void {
    let frame: any;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    switch (frame.type) {
      case "welcome":
        conn.epoch = String(frame.epoch ?? "");
        conn.welcomedAt = this.#now();
        this.#setState({ state: "open", node: frame.node });
        this.#settle?.();
        return;
      case "resumed": {
        if (typeof frame.epoch === "string") conn.epoch = frame.epoch;
        const gap = this.#tracker.onResumed(!!frame.ok, frame.lost, frame.reason, frame.epoch);
        if (gap) {
          this.#persist();
          this.#emit("gap", gap);
        }
        return;
      }
      case "event": {
        const seq = frame.seq;
        if (!Number.isSafeInteger(seq)) return;
        const verdict = this.#tracker.onEvent(conn.epoch, seq);
        if (!verdict.deliver) return;
        this.#persist();
        if (verdict.gap) this.#emit("gap", verdict.gap);
        this.#emit("event", { seq, id: frame.id, event: frame.event, data: frame.data });
        return;
      }
      case "refreshed":
        this.#refreshBackoff.reset();
        this.#scheduleRefresh(typeof frame.expires_at === "number" ? frame.expires_at * 1000 : this.#tokenExpiresAt);
        return;
      case "error":
        if (frame.code === "invalid_token") this.#retryRefresh();
        return;
    }
  }

  /** The timer: acknowledge what moved, and give up on a connection that has been silent too long. */
  #tick(): void {
    const conn = this.#conn;
    if (!conn) return;
    if (this.#now() - conn.lastFrame >= this.#pingMs * 2.5) {
      conn.end({ kind: "silent", reason: "no frames" });
      const node = conn.ws as { terminate?: () => void };
      try {
        if (node.terminate) node.terminate();
        else conn.ws.close(4000, "silent");
      } catch {
        // Already gone.
      }
      return;
    }
    this.#ack(conn);
  }

  #ack(conn: Conn): void {
    const p = this.#tracker.position;
    if (conn.welcomedAt == null || !p || p.lastSeq === 0) return;
    if (conn.acked && conn.acked.epoch === p.epoch && conn.acked.lastSeq === p.lastSeq) return;
    if (this.#send(conn, { type: "ack", seq: p.lastSeq })) conn.acked = p;
  }

  #send(conn: Conn | null, frame: object, welcomedOnly = false): boolean {
    if (!conn || conn.ws.readyState !== OPEN || (welcomedOnly && conn.welcomedAt == null)) return false;
    try {
      conn.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  #useToken(info: TokenInfo): void {
    this.#token = info.token;
    this.#scheduleRefresh(info.expiresAtMs);
  }

  /** Plans the in-band refresh at 80 % of the token's remaining life. */
  #scheduleRefresh(expiresAt: number | null): void {
    clearTimeout(this.#refreshTimer);
    this.#tokenExpiresAt = expiresAt;
    if (expiresAt == null || this.#stopped) return;
    const left = expiresAt - this.#now();
    if (left <= 0) return;
    this.#refreshTimer = setTimeout(() => void this.#refresh(), Math.min(left * 0.8, MAX_TIMER));
  }

  /** Fails to refresh: retry with backoff while the token is still valid (after it, the server closes 4001). */
  #retryRefresh(): void {
    clearTimeout(this.#refreshTimer);
    const expiresAt = this.#tokenExpiresAt;
    if (this.#stopped || expiresAt == null || this.#now() >= expiresAt) return;
    const wait = this.#refreshBackoff.nextDelay(this.#random());
    this.#refreshTimer = setTimeout(() => void this.#refresh(), Math.min(wait, MAX_TIMER));
  }

  async #refresh(): Promise<void> {
    let info: TokenInfo;
    try {
      info = await this.#getToken();
    } catch {
      this.#retryRefresh();
      return;
    }
    if (this.#stopped) return;
    this.#token = info.token;
    // On a live socket the server confirms with `refreshed` (its expiry plans the next); otherwise the next
    // connection uses the new token.
    if (!this.#send(this.#conn, { type: "refresh", token: info.token }, true)) this.#scheduleRefresh(info.expiresAtMs);
    else this.#tokenExpiresAt = info.expiresAtMs ?? this.#tokenExpiresAt;
  }

  /** Stops everything and tells the app `closed`. */
  #finish(code: number | null, reason: string, cause?: unknown): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#conn = null;
    for (const timer of this.#timers) clearInterval(timer);
    this.#timers = [];
    clearTimeout(this.#refreshTimer);
    this.#unhook?.();
    this.#wake?.();
    this.#setState({ state: "closed", code, reason });
    const error = new Error(`CES client closed: ${reason}${code == null ? "" : ` (${code})`}`, { cause });
    this.#settle?.(Object.assign(error, { code }));
  }

  #persist(): void {
    const p = this.#tracker.position;
    if (this.#store && p) savePosition(this.#store.storage, this.#store.key, p);
  }

  /** Checks the connection now (the page woke up or came back online), and ends a wait for a reconnect. */
  #nudge(reconnect: boolean): void {
    if (this.#stopped) return;
    this.#tick();
    if (this.#conn) this.#send(this.#conn, { type: "ping" }, true);
    else if (reconnect && !this.#waitingForServer) this.#wake?.();
  }

  #hookBrowser(): void {
    const w = typeof window !== "undefined" ? window : null;
    if (!w || typeof w.addEventListener !== "function") return;
    const d = typeof document !== "undefined" ? document : null;
    const online = () => this.#nudge(true);
    const pageshow = (e: PageTransitionEvent) => e.persisted && this.#nudge(true);
    const visible = () => d?.visibilityState === "visible" && this.#nudge(false);
    w.addEventListener("online", online);
    w.addEventListener("pageshow", pageshow);
    d?.addEventListener("visibilitychange", visible);
    this.#unhook = () => {
      w.removeEventListener("online", online);
      w.removeEventListener("pageshow", pageshow);
      d?.removeEventListener("visibilitychange", visible);
    };
  }

  #setState(change: Partial<StateChange> & { state: ConnectionState }): void {
    this.#state = change.state;
    const full: StateChange = { code: null, reason: null, willReconnect: false, retryInMs: null, ...change };
    if (full.node === undefined) delete full.node;
    this.#emit("state", full);
  }

  #emit<K extends keyof CesClientEvents>(type: K, value: CesClientEvents[K]): void {
    for (const listener of [...this.#listeners[type]]) {
      try {
        (listener as (value: CesClientEvents[K]) => void)(value);
      } catch (error) {
        // A listener's failure is the app's: report it without breaking the stream.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}
