// An in-process stand-in for a WebSocket class, for the few server behaviours a real edge cannot be made to show
// (a skipped seq, a second 4001 in a row, codes it never sends). The test plays the server.

export function fakeSockets({ nodeStyle = false } = {}) {
  const sockets = [];
  class FakeSocket {
    readyState = 0;
    sent = [];
    closedWith = null;
    #listeners = new Map();
    handlers = new Map();

    constructor(url) {
      this.url = url;
      sockets.push(this);
    }

    addEventListener(type, listener) {
      if (!this.#listeners.has(type)) this.#listeners.set(type, []);
      this.#listeners.get(type).push(listener);
    }

    #fire(type, event) {
      for (const listener of this.#listeners.get(type) ?? []) listener(event);
    }

    send(data) {
      this.sent.push(JSON.parse(data));
    }

    close(code) {
      this.closedWith = code;
      this.readyState = 3;
    }

    // The server's side.
    open() {
      this.readyState = 1;
      this.#fire("open", {});
    }
    frame(frame) {
      this.#fire("message", { data: JSON.stringify(frame) });
    }
    welcome(epoch = "e1", node = "edge-a") {
      this.open();
      this.frame({ type: "welcome", session_id: "s1", node, epoch, seq: 0 });
    }
    event(seq) {
      this.frame({ type: "event", seq, id: `ev${seq}`, event: "order.updated", data: { seq } });
    }
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.#fire("close", { code, reason });
    }
    // What the `ws` package adds: the HTTP answer to a refused upgrade.
    refuse(status, retryAfter) {
      const headers = retryAfter == null ? {} : { "retry-after": String(retryAfter) };
      for (const listener of this.handlers.get("unexpected-response") ?? []) listener({}, { statusCode: status, headers });
    }
    terminate() {
      this.closedWith = "terminated";
      this.serverClose(1006);
    }
  }
  class NodeStyleSocket extends FakeSocket {
    on(type, listener) {
      if (!this.handlers.has(type)) this.handlers.set(type, []);
      this.handlers.get(type).push(listener);
    }
  }
  return { WebSocket: nodeStyle ? NodeStyleSocket : FakeSocket, sockets };
}

/** Resolves when `predicate()` holds, polling; fails after `ms`. */
export async function until(predicate, ms = 500) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${predicate}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}
