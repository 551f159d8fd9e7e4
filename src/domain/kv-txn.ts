/**
 * The request side of an etcd v3 txn, as plain data: compares and operations. Pure builders in the
 * domain (registration, hold acknowledgement, cluster changes) produce these; the `Kv` port
 * (src/ports/kv.ts, which re-exports every name here) sends them to real etcd or to the etcd model.
 *
 * Invariants (etcd 3.4 semantics, kept by every `Kv`): a txn is all-or-nothing; its compares see the
 * state before the txn; on a missing key, create/mod/version compare as 0, `lease` as `'0'`, and a
 * `value` compare never matches.
 */

/** An etcd lease id, as a decimal string (`'0'` means no lease). */
export type KvLeaseId = string;

/** A txn compare (etcd's `Compare`): on a missing key, create/mod/version compare as 0 and `value` never matches. */
export type KvCompare =
  | { readonly key: string; readonly target: 'create' | 'mod' | 'version'; readonly op: '=' | '!=' | '<' | '>'; readonly value: number }
  | { readonly key: string; readonly target: 'value'; readonly op: '=' | '!='; readonly value: string }
  /** `'0'` means "no lease" (etcd compares a missing key's lease as 0 too). */
  | { readonly key: string; readonly target: 'lease'; readonly op: '=' | '!='; readonly value: KvLeaseId };

/** An operation inside a txn branch. */
export type KvOp =
  | { readonly op: 'put'; readonly key: string; readonly value: string; readonly lease?: KvLeaseId }
  | { readonly op: 'delete'; readonly key: string; readonly prefix?: boolean }
  | { readonly op: 'range'; readonly key: string; readonly prefix?: boolean; readonly limit?: number };

/** A txn: if every compare holds, `success` runs, else `failure`. */
export interface KvTxnRequest {
  readonly compare: readonly KvCompare[];
  readonly success: readonly KvOp[];
  readonly failure?: readonly KvOp[];
}

/** `mod_revision == rev` on `key` (a revision as etcd's decimal string or a number; 0 means "the key does not exist"). */
export function modIs(key: string, rev: string | number): KvCompare {
  return { key, target: 'mod', op: '=', value: Number(rev) };
}

/** `create_revision == rev` on `key` (0: the key does not exist). */
export function createIs(key: string, rev: string | number): KvCompare {
  return { key, target: 'create', op: '=', value: Number(rev) };
}

/** A put of `value` at `key`, on `lease` when given. */
export function put(key: string, value: string, lease?: KvLeaseId): KvOp {
  return lease === undefined ? { op: 'put', key, value } : { op: 'put', key, value, lease };
}

/** A delete of `key`. */
export function del(key: string): KvOp {
  return { op: 'delete', key };
}
