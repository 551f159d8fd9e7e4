/**
 * The etcd model's multi-version key store (etcd's `mvcc` package, in memory): every key keeps its
 * versions back to the compaction point, so a range at an old revision and a watch from an old
 * revision are answered from history, and anything older than the compaction is refused.
 *
 * Invariants:
 *  - `revision` is the store's current revision; it only grows, by one per write batch that changed
 *    something ({@link MvccStore.commit}); a batch that changes nothing does not bump it;
 *  - each key's versions are in (revision, sub) order; a deletion is a tombstone version;
 *  - after `compact(c)`, a read at any revision >= c sees what it saw before the compaction, and a
 *    read or watch below c is refused (`compactRevision` tells where the history starts). As in etcd,
 *    a tombstone at or below c is dropped, so a watch from exactly c does not replay a delete at c.
 *  - key order is JavaScript string order (equal to etcd's byte order for the ASCII keys Tether uses).
 */
import type { KvEntry, KvLeaseId, KvWatchEvent } from '../../ports/kv.js';

/** One version of a key: an entry, or a tombstone (`entry` undefined) at the deletion's revision. */
interface Version {
  readonly rev: number;
  /** Position of the change inside its revision (etcd's sub-revision). */
  readonly sub: number;
  readonly entry?: KvEntry;
}

/** One change inside a write batch, applied in order. */
export type MvccWrite =
  | { readonly kind: 'put'; readonly key: string; readonly value: string; readonly lease?: KvLeaseId }
  | { readonly kind: 'delete'; readonly key: string };

/** The key range of a request: one key, or every key starting with `key` when `prefix`. */
export interface KeyRange {
  readonly key: string;
  readonly prefix?: boolean;
}

/** True when `key` is inside `r`. A prefix range with an empty key holds every key. */
export function inRange(r: KeyRange, key: string): boolean {
  return r.prefix ? key.startsWith(r.key) : key === r.key;
}

/** See the module doc. */
export class MvccStore {
  private rev = 1;
  private compacted = 0;
  /** Latest live entry of every existing key (the state at {@link revision}). */
  private readonly live = new Map<string, KvEntry>();
  /** Every key's versions since the compaction, oldest first. */
  private readonly versions = new Map<string, Version[]>();

  /** The current revision (1 for an empty store, as in etcd). */
  get revision(): number {
    return this.rev;
  }

  /** The revision of the last compaction (0 when never compacted). Reads below it are refused. */
  get compactRevision(): number {
    return this.compacted;
  }

  /** Number of live keys. */
  get size(): number {
    return this.live.size;
  }

  /** The live entry at `key`, or undefined. */
  get(key: string): KvEntry | undefined {
    return this.live.get(key);
  }

  /** Every live key, unsorted (insertion order). */
  liveKeys(): IterableIterator<string> {
    return this.live.keys();
  }

  /**
   * The entries of `r` as of revision `at` (default: current), in key order. The caller checked
   * that `at` is within [compactRevision, revision].
   */
  rangeAt(r: KeyRange, at = this.rev): KvEntry[] {
    const out: KvEntry[] = [];
    if (at >= this.rev) {
      if (!r.prefix) {
        const e = this.live.get(r.key);
        return e ? [e] : [];
      }
      for (const [k, e] of this.live) if (k.startsWith(r.key)) out.push(e);
    } else {
      for (const [k, vs] of this.versions) {
        if (!inRange(r, k)) continue;
        let found: Version | undefined;
        for (const v of vs) {
          if (v.rev > at) break;
          found = v;
        }
        if (found?.entry) out.push(found.entry);
      }
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /**
   * Applies `writes` as ONE revision (a txn, or a lease revocation): returns the new revision and the
   * events in order, or `undefined` (and no new revision) when nothing changed (only deletes of
   * missing keys). Deleting a missing key is not an event.
   */
  commit(writes: readonly MvccWrite[]): { revision: number; events: KvWatchEvent[] } | undefined {
    const rev = this.rev + 1;
    const events: KvWatchEvent[] = [];
    for (const w of writes) {
      const cur = this.live.get(w.key);
      if (w.kind === 'delete') {
        if (!cur) continue;
        this.live.delete(w.key);
        this.push(w.key, { rev, sub: events.length });
        events.push({ type: 'delete', kv: { key: w.key, value: '', createRevision: 0, modRevision: rev, version: 0 } });
        continue;
      }
      const entry: KvEntry = {
        key: w.key,
        value: w.value,
        createRevision: cur?.createRevision ?? rev,
        modRevision: rev,
        version: (cur?.version ?? 0) + 1,
        ...(w.lease !== undefined && w.lease !== '0' ? { lease: w.lease } : {}),
      };
      this.live.set(w.key, entry);
      this.push(w.key, { rev, sub: events.length, entry });
      events.push({ type: 'put', kv: entry });
    }
    if (events.length === 0) return undefined;
    this.rev = rev;
    return { revision: rev, events };
  }

  /**
   * Every change with revision >= `from` to keys in `r`, one array per revision, in revision order
   * (each revision's events in their order inside the txn). The caller checked `from >= compactRevision`.
   */
  historyFrom(r: KeyRange, from: number): { revision: number; events: KvWatchEvent[] }[] {
    const picked: { key: string; v: Version }[] = [];
    for (const [k, vs] of this.versions) {
      if (!inRange(r, k)) continue;
      for (const v of vs) if (v.rev >= from) picked.push({ key: k, v });
    }
    picked.sort((a, b) => a.v.rev - b.v.rev || a.v.sub - b.v.sub);
    const out: { revision: number; events: KvWatchEvent[] }[] = [];
    for (const { key, v } of picked) {
      const ev: KvWatchEvent = v.entry
        ? { type: 'put', kv: v.entry }
        : { type: 'delete', kv: { key, value: '', createRevision: 0, modRevision: v.rev, version: 0 } };
      const last = out[out.length - 1];
      if (last && last.revision === v.rev) last.events.push(ev);
      else out.push({ revision: v.rev, events: [ev] });
    }
    return out;
  }

  /**
   * Drops history older than revision `c` (etcd's Compact): each key keeps its newest version at or
   * below `c` unless that is a tombstone. The caller checked `compactRevision < c <= revision`.
   */
  compact(c: number): void {
    for (const [k, vs] of this.versions) {
      let keepFrom = 0;
      for (let i = 0; i < vs.length; i++) if (vs[i]!.rev <= c) keepFrom = i;
      let kept = vs.slice(keepFrom);
      if (kept[0] && kept[0].rev <= c && !kept[0].entry) kept = kept.slice(1);
      if (kept.length === 0) this.versions.delete(k);
      else this.versions.set(k, kept);
    }
    this.compacted = c;
  }

  private push(key: string, v: Version): void {
    const vs = this.versions.get(key);
    if (vs) vs.push(v);
    else this.versions.set(key, [v]);
  }
}
