/**
 * What etcd 3.4 refuses in a txn before running it, as the etcd model checks it:
 *  - too many operations: `checkTxnRequest` (etcdserver/api/v3rpc/key.go) bounds
 *    `max(#compares, #success ops, #failure ops)` by `--max-txn-ops` (default 128). Compares count
 *    toward that bound like ops do, but the three lists are bounded each, not summed;
 *  - an empty key, in a compare or an op;
 *  - a duplicate key: `checkIntervals` refuses, inside one branch, two puts of one key or a put of a
 *    key that a delete of the same branch covers (deletes may overlap each other; the success and
 *    failure branches are checked separately);
 *  - a request larger than `--max-request-bytes` (default 1.5 MiB): etcd measures the marshalled raft
 *    request, so only txns that write are bounded that way ({@link estimateRequestBytes} approximates
 *    the protobuf size; gRPC's own receive limit, 2 MiB, bounds the others).
 * Every refusal is a non-retryable `FAILED_PRECONDITION` naming the limit (see src/ports/kv.ts).
 */
import { TetherError } from '../../domain/errors.js';
import type { KvOp, KvTxnRequest } from '../../ports/kv.js';

/** etcd 3.4's server limits the model enforces. */
export interface EtcdLimits {
  /** `--max-txn-ops`, default 128. */
  readonly maxTxnOps: number;
  /** `--max-request-bytes`, default 1.5 MiB (1 572 864). */
  readonly maxRequestBytes: number;
  /** gRPC's receive limit: `--max-request-bytes` + 512 KiB. */
  readonly maxRecvBytes: number;
}

/** etcd 3.4's defaults. */
export const ETCD_34_LIMITS: EtcdLimits = { maxTxnOps: 128, maxRequestBytes: 1.5 * 1024 * 1024, maxRecvBytes: 2 * 1024 * 1024 };

function refused(message: string, reason: string, details: Record<string, unknown> = {}): TetherError {
  return new TetherError('FAILED_PRECONDITION', `etcdserver: ${message}`, { retryable: false, details: { reason, ...details } });
}

const utf8 = (s: string): number => Buffer.byteLength(s, 'utf8');

/** Bytes of a protobuf length-delimited field (tag + varint length + data). */
function field(n: number): number {
  let len = 1;
  for (let v = n; v >= 0x80; v = Math.floor(v / 128)) len++;
  return 1 + len + n;
}

/** The protobuf size of one op, approximately (keys and values exact, framing estimated). */
function opBytes(op: KvOp): number {
  if (op.op === 'put') return field(field(utf8(op.key)) + field(utf8(op.value)) + (op.lease !== undefined ? 10 : 0));
  return field(field(utf8(op.key)) + (op.prefix ? field(utf8(op.key)) : 0) + (op.op === 'range' && op.limit ? 6 : 0));
}

/** The approximate size of `req` as etcd's marshalled request (keys and values exact, framing estimated). */
export function estimateRequestBytes(req: KvTxnRequest): number {
  let n = 16; // raft request header (id) and framing
  for (const c of req.compare) n += field(field(utf8(c.key)) + (typeof c.value === 'string' ? field(utf8(c.value)) : 10) + 4);
  for (const op of req.success) n += opBytes(op);
  for (const op of req.failure ?? []) n += opBytes(op);
  return n;
}

/** Refuses a put overlapping another put or a delete of the same branch (etcd's `checkIntervals`). */
function checkBranch(ops: readonly KvOp[]): void {
  const deletes = ops.filter((o): o is Extract<KvOp, { op: 'delete' }> => o.op === 'delete');
  const puts = new Set<string>();
  for (const o of ops) {
    if (o.op !== 'put') continue;
    if (puts.has(o.key) || deletes.some((d) => (d.prefix ? o.key.startsWith(d.key) : d.key === o.key))) {
      throw refused('duplicate key given in txn request', 'duplicate-key', { key: o.key });
    }
    puts.add(o.key);
  }
}

/** True when `req` writes in the branch that may run (a txn without writes is served without raft). */
export function txnWrites(req: KvTxnRequest): boolean {
  return [...req.success, ...(req.failure ?? [])].some((o) => o.op !== 'range');
}

/** Throws the etcd refusal of `req`, if any (see the module doc). */
export function checkTxn(req: KvTxnRequest, limits: EtcdLimits): void {
  const failure = req.failure ?? [];
  const most = Math.max(req.compare.length, req.success.length, failure.length);
  if (most > limits.maxTxnOps) {
    throw refused('too many operations in txn request', 'too-many-ops', {
      compares: req.compare.length,
      success: req.success.length,
      failure: failure.length,
      maxTxnOps: limits.maxTxnOps,
    });
  }
  for (const k of [...req.compare, ...req.success, ...failure]) if (k.key.length === 0) throw refused('key is not provided', 'empty-key');
  checkBranch(req.success);
  checkBranch(failure);
  const bytes = estimateRequestBytes(req);
  if (bytes > limits.maxRecvBytes) throw refused(`request is too large (${bytes} bytes, gRPC limit ${limits.maxRecvBytes})`, 'request-too-large', { bytes });
  if (txnWrites(req) && bytes > limits.maxRequestBytes) {
    throw refused(`request is too large (${bytes} bytes, --max-request-bytes ${limits.maxRequestBytes})`, 'request-too-large', { bytes });
  }
}
