/**
 * Reports of records that failed the codec, once per record revision: the reader that meets a bad
 * record on every poll or re-list (the agent's sync each second, a controller re-list) logs and
 * counts it the first time only, and again only when the record changes (a new revision) — no log
 * flood, and no silent skip either.
 */
import type { InvalidRecordError } from '../codec.js';
import { quoteForLog } from './names.js';

/** One bad record, as reported. */
export interface InvalidRecordReport {
  /** The key relative to the prefix (quoted for logs). */
  readonly key: string;
  /** The etcd `mod_revision` of the bad value. */
  readonly revision: string;
  readonly error: InvalidRecordError;
}

/** Listener of {@link InvalidRecordLog}. */
export type InvalidRecordListener = (r: InvalidRecordReport) => void;

/**
 * Deduplicates {@link InvalidRecordReport}s by key and revision and hands each new one to the
 * listeners.
 *
 * Invariants: a (key, revision) pair reaches the listeners at most once while it stays remembered;
 * at most `capacity` keys are remembered (the oldest is forgotten first, so memory stays bounded
 * even under a flood of distinct bad keys); `total` counts every report that reached the listeners.
 * A listener that throws does not stop the others.
 */
export class InvalidRecordLog {
  private readonly seen = new Map<string, string>();
  private readonly listeners = new Set<InvalidRecordListener>();
  /** Distinct bad (key, revision) pairs reported so far (a metric). */
  total = 0;

  constructor(private readonly capacity = 10_000) {}

  /**
   * Reports `error` for the value at `revision`. Returns true when it is new (listeners were
   * called), false when this revision of this key was already reported.
   */
  report(error: InvalidRecordError, revision: string): boolean {
    const key = error.key;
    if (this.seen.get(key) === revision) return false;
    this.seen.delete(key);
    this.seen.set(key, revision);
    if (this.seen.size > this.capacity) this.seen.delete(this.seen.keys().next().value!);
    this.total++;
    const r: InvalidRecordReport = { key, revision, error };
    for (const l of this.listeners) {
      try {
        l(r);
      } catch {
        // a broken listener must not hide the report from the others
      }
    }
    return true;
  }

  /** The key (relative to the prefix) was read fine, or deleted: a later bad revision of it is reported again. */
  clear(key: string): void {
    if (this.seen.size > 0) this.seen.delete(quoteForLog(key));
  }

  /** True while `key` has a reported bad revision that was not cleared. */
  isBad(key: string): boolean {
    return this.seen.has(quoteForLog(key));
  }

  /** Number of keys currently known bad. */
  get badKeys(): number {
    return this.seen.size;
  }

  /** Adds a listener; returns a function that removes it. */
  subscribe(fn: InvalidRecordListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
}
