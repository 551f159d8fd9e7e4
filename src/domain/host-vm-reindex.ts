/**
 * The backfill of the per-host VM index (`hostvms/<hostId>/<ns>/<name>`, Keyspace.hostVm) for a
 * cluster written before it existed, or repaired after a writer bypassed `changeTxn`: pure planning
 * of the txns from one consistent read of `vms/` and `hostvms/` (both at the same revision).
 *
 * Invariants:
 *  - a record placed on H whose copy is missing, differs, or has another `mod_revision` is rewritten
 *    with its OWN bytes and its copy put in the same txn, guarded by the record's `mod_revision` (so
 *    both get one new, equal `mod_revision`, and a record changed meanwhile is left to its writer,
 *    whose `changeTxn` keeps the index itself);
 *  - an index entry with no record on its host (record gone, unplaced or elsewhere) is deleted, guarded
 *    by its own `mod_revision` and by the record's (or the record's absence);
 *  - a record that fails the codec is never copied nor judged (counted in `unreadable`): only a writer
 *    that can read it may place it;
 *  - every txn fits `limits` (each of compares and success ops, and bytes of keys and values; one
 *    record alone always fits: records are far below the byte limit); the plan is idempotent: planned
 *    on the state it produces, it is empty.
 */
import { utf8Length, type TxnLimits } from './cluster-change.js';
import type { Keyspace } from './keyspace.js';
import { createIs, del, modIs, put, type KvCompare, type KvOp, type KvTxnRequest } from './kv-txn.js';

/** One `vms/` record as read: raw value, `mod_revision`, and its `hostId` when it passes the codec. */
export interface ReindexRecord {
  /** `<ns>/<name>`. */
  readonly key: string;
  readonly value: string;
  readonly modRevision: number;
  /** The host it is placed on (undefined: unplaced); `readable` false: failed the codec (never judged). */
  readonly hostId: string | undefined;
  readonly readable: boolean;
}

/** One `hostvms/` entry as read. */
export interface ReindexEntry {
  readonly hostId: string;
  /** `<ns>/<name>`. */
  readonly key: string;
  readonly value: string;
  readonly modRevision: number;
}

/** What a reindex pass will do. */
export interface ReindexPlan {
  /** The txns, each with how many copies it writes and orphans it deletes. */
  readonly txns: readonly { readonly txn: KvTxnRequest; readonly copies: number; readonly orphans: number }[];
  /** Records whose copy is (re)written. */
  readonly copies: number;
  /** Index entries deleted (no record on their host). */
  readonly orphans: number;
  /** Records that failed the codec (left alone). */
  readonly unreadable: number;
}

/** Plans one reindex pass within `limits` (etcd's `--max-txn-ops`, and request bytes of keys and values). */
export function planReindex(keys: Keyspace, records: readonly ReindexRecord[], index: readonly ReindexEntry[], limits: TxnLimits): ReindexPlan {
  const maxOps = limits.maxOps;
  const byKey = new Map(records.map((r) => [r.key, r]));
  const copyOf = new Map(index.map((e) => [`${e.hostId}/${e.key}`, e]));
  type Item = { compare: KvCompare[]; success: KvOp[]; bytes: number; copies: number; orphans: number };
  const items: Item[] = [];
  let copies = 0;
  let orphans = 0;
  let unreadable = 0;
  for (const r of records) {
    if (!r.readable) {
      unreadable++;
      continue;
    }
    if (r.hostId === undefined) continue;
    const c = copyOf.get(`${r.hostId}/${r.key}`);
    if (c && c.value === r.value && c.modRevision === r.modRevision) continue;
    copies++;
    const bytes = 2 * utf8Length(keys.vm(r.key)) + utf8Length(keys.hostVm(r.hostId, r.key)) + 2 * utf8Length(r.value);
    items.push({ compare: [modIs(keys.vm(r.key), r.modRevision)], success: [put(keys.vm(r.key), r.value), put(keys.hostVm(r.hostId, r.key), r.value)], bytes, copies: 1, orphans: 0 });
  }
  for (const e of index) {
    const r = byKey.get(e.key);
    if (r && !r.readable) continue;
    if (r && r.hostId === e.hostId) continue;
    orphans++;
    const bytes = 2 * utf8Length(keys.hostVm(e.hostId, e.key)) + utf8Length(keys.vm(e.key));
    items.push({ compare: [modIs(keys.hostVm(e.hostId, e.key), e.modRevision), r ? modIs(keys.vm(e.key), r.modRevision) : createIs(keys.vm(e.key), 0)], success: [del(keys.hostVm(e.hostId, e.key))], bytes, copies: 0, orphans: 1 });
  }
  const txns: { txn: KvTxnRequest; copies: number; orphans: number }[] = [];
  let cur: Item = { compare: [], success: [], bytes: 0, copies: 0, orphans: 0 };
  const flush = (): void => {
    if (cur.compare.length > 0) txns.push({ txn: { compare: cur.compare, success: cur.success }, copies: cur.copies, orphans: cur.orphans });
    cur = { compare: [], success: [], bytes: 0, copies: 0, orphans: 0 };
  };
  for (const it of items) {
    if (cur.compare.length + it.compare.length > maxOps || cur.success.length + it.success.length > maxOps || cur.bytes + it.bytes > limits.maxBytes) flush();
    cur.compare.push(...it.compare);
    cur.success.push(...it.success);
    cur.bytes += it.bytes;
    cur.copies += it.copies;
    cur.orphans += it.orphans;
  }
  flush();
  return { txns, copies, orphans, unreadable };
}
