// Full-jitter exponential backoff (docs/clients.md, "Backoff").

/**
 * The n-th failed attempt in a row waits a random time in `[0, min(cap, base × 2^n))`, still random at the cap so
 * a crowd never falls back into step; the count resets only after a connection stayed up {@link Backoff.STABLE_MS}.
 */
export class Backoff {
  /** How long a connection must stay up for the next failure to count as the first again. */
  static readonly STABLE_MS = 30_000;
  #failures = 0;

  constructor(
    readonly baseMs = 500,
    readonly capMs = 30_000,
  ) {}

  /** The delay before the next attempt, for `unit` drawn uniformly from `[0, 1)`; counts one more failure. */
  nextDelay(unit: number): number {
    const ceiling = Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.#failures, 40));
    this.#failures++;
    return ceiling * Math.min(1, Math.max(0, unit));
  }

  /** A connection that ended after being up `upMs`: a stable one resets the count. */
  connectionEnded(upMs: number): void {
    if (upMs >= Backoff.STABLE_MS) this.#failures = 0;
  }

  /** Forget the failures (a retried action that finally worked). */
  reset(): void {
    this.#failures = 0;
  }
}
