// The session position and the one invariant: every `seq` is handed to the app once, in order, or named in
// exactly one gap (docs/clients.md, "The position, and the one invariant").

/** Where the app stands: the epoch and the highest `seq` it was given, always taken together. */
export interface Position {
  epoch: string;
  lastSeq: number;
}

/** Events that will never come. `to` is inclusive; `null` when open-ended (the epoch changed). */
export interface Gap {
  from: number;
  to: number | null;
  /** The server's reason (`buffer_overflow`, `expired`, `epoch_changed`, `too_large`), or `unexplained`. */
  reason: string;
}

/** The range a `resumed ok:false` frame names. */
export interface Lost {
  from: number;
  to: number | null;
}

/** What to do with an event: deliver it (after reporting `gap` if there is one), or drop it as a repeat. */
export type Verdict = { deliver: true; gap: Gap | null } | { deliver: false; gap: null };

/**
 * A session's position, moved by events and `resumed` frames alone. It stays `null` until the app got its first
 * event, so a fresh client starts wherever the buffer starts and is not told about events trimmed before it
 * ever connected.
 */
export class Tracker {
  #position: Position | null;

  constructor(saved: Position | null = null) {
    this.#position = saved ? { epoch: saved.epoch, lastSeq: saved.lastSeq } : null;
  }

  /** What a (re)connection resumes from. */
  get position(): Position | null {
    return this.#position ? { ...this.#position } : null;
  }

  /**
   * A `resumed` frame: with `ok:false`, the gap it names (its range exactly). A new `epoch` moves the position to
   * that epoch's start, where its replayed events begin; otherwise the position moves past the range.
   */
  onResumed(ok: boolean, lost?: Lost | null, reason?: string | null, epoch?: string | null): Gap | null {
    if (ok || !lost) return null;
    const p = this.#position;
    // A fresh client was never given anything: the loss is not its own.
    if (!p) return null;
    if (epoch != null) {
      this.#position = { epoch, lastSeq: 0 };
    } else if (lost.to != null) {
      p.lastSeq = Math.max(p.lastSeq, lost.to);
    }
    return { from: lost.from, to: lost.to ?? null, reason: reason ?? "unexplained" };
  }

  /** An event of `epoch` numbered `seq`. */
  onEvent(epoch: string, seq: number): Verdict {
    const p = this.#position;
    if (!p) {
      this.#position = { epoch, lastSeq: seq };
      return { deliver: true, gap: null };
    }
    if (seq <= p.lastSeq) return { deliver: false, gap: null };
    const gap: Gap | null =
      seq === p.lastSeq + 1 ? null : { from: p.lastSeq + 1, to: seq - 1, reason: "unexplained" };
    p.epoch = epoch;
    p.lastSeq = seq;
    return { deliver: true, gap };
  }
}
