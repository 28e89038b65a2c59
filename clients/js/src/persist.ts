import type { Position } from "./tracker.js";

/** The part of the Web Storage API the client uses (`sessionStorage`, `localStorage`, or a test double). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** Where a position is kept: a key, and the storage (the browser's `sessionStorage` when not given). */
export type PersistOption = string | { key: string; storage?: StorageLike };

/** A key and storage to keep the position in, or `null` when persistence is off or no storage exists. */
export function positionStore(option: PersistOption | undefined): { key: string; storage: StorageLike } | null {
  if (option == null) return null;
  const key = typeof option === "string" ? option : option.key;
  let storage = typeof option === "string" ? undefined : option.storage;
  if (!storage) {
    try {
      storage = (globalThis as { sessionStorage?: StorageLike }).sessionStorage;
    } catch {
      // Access refused (storage disabled for this page).
    }
  }
  return storage ? { key, storage } : null;
}

/** The position stored under `key`, if it holds a valid one. */
export function loadPosition(storage: StorageLike, key: string): Position | null {
  try {
    const v = JSON.parse(storage.getItem(key) ?? "null") as Partial<Position> | null;
    if (v && typeof v.epoch === "string" && Number.isSafeInteger(v.lastSeq) && (v.lastSeq as number) >= 0) {
      return { epoch: v.epoch, lastSeq: v.lastSeq as number };
    }
  } catch {
    // Unreadable: start without it.
  }
  return null;
}

/** Stores `position` as one value, so the epoch and `lastSeq` can never come from different writes. */
export function savePosition(storage: StorageLike, key: string, position: Position): void {
  try {
    storage.setItem(key, JSON.stringify({ epoch: position.epoch, lastSeq: position.lastSeq }));
  } catch {
    // Quota or access errors: the stream goes on; only a reload loses its place.
  }
}
