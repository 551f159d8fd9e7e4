/**
 * A host's side of the freeze contract (issue 11, docs/peer-check.md): which contract it relies on,
 * and the acknowledgement it writes (`freezeContractSeen` in its record) before relying on a new
 * version. Pure: the agent (src/agent/gc/hold-sync.ts) reads, calls these and sends the txn.
 *
 * The controller applies tightest(published, what every pool host acknowledged) — the version's own
 * parameters for a host that acknowledged the published version, else the tightest it ever
 * published (src/domain/controller/contract.ts). Hence the host's rule: it relies on a version only
 * once its record shows it, and while changing from `held` to `next` it relies on the LOOSER of the
 * two for itself ({@link blendForHost}: the larger share, the shorter resume delay, the larger pool),
 * which is no tighter than what the controller applies whichever of the two its record shows.
 *
 * Invariant: the contract returned to rely on is never tighter (lower share, longer resume delay,
 * smaller pool) than the one the controller applies for this host at any moment of the change.
 */
import type { FreezeContract } from './freeze-contract.js';
import type { Keyspace } from './keyspace.js';
import type { KvLeaseId } from './kv-txn.js';
import { hostAckTxn, type HoldAckPlan, type ReadAlive, type ReadRecord } from './registration-txn.js';

/** The contract that is safe to rely on while changing from `held` to `next`: the looser one for this host, field by field. */
export function blendForHost(held: FreezeContract, next: FreezeContract): FreezeContract {
  return {
    version: held.version,
    share: Math.max(held.share, next.share),
    resumeDelay: Math.min(held.resumeDelay, next.resumeDelay),
    poolSize: Math.max(held.poolSize, next.poolSize),
  };
}

/** What to do after reading the record (`seen`: its `freezeContractSeen`) and the published contract. */
export type ContractStep =
  /** Nothing changes. */
  | { readonly kind: 'none' }
  /** The record already shows `contract`'s version: rely on it now (a new pool size, or a version acknowledged earlier). */
  | { readonly kind: 'adopt'; readonly contract: FreezeContract }
  /** Rely on `interim` (undefined: nothing), write the acknowledgement of `next`, and rely on `next` once it landed. */
  | { readonly kind: 'ack'; readonly interim: FreezeContract | undefined; readonly next: FreezeContract };

/** The next step (see {@link ContractStep}). `held`: the contract relied on now. */
export function nextContractStep(held: FreezeContract | undefined, seen: number | undefined, published: FreezeContract | undefined): ContractStep {
  if (published === undefined) return { kind: 'none' };
  if (seen === published.version) {
    if (held !== undefined && held.version === published.version && held.share === published.share && held.resumeDelay === published.resumeDelay && held.poolSize === published.poolSize) return { kind: 'none' };
    return { kind: 'adopt', contract: published };
  }
  return { kind: 'ack', interim: held === undefined ? undefined : blendForHost(held, published), next: published };
}

/**
 * The acknowledgement of contract `version` by `hostId` at `epoch` on `lease`: writes
 * `freezeContractSeen` when it differs, comparing the record's and the `alive` key's `mod_revision`.
 * Refused (nothing written) unless the record is at `epoch`, `attached` or `ready`, and `alive` is on
 * `lease` (the same guard as the hold acknowledgement).
 */
export function contractAckTxn(
  keys: Keyspace,
  ack: { readonly hostId: string; readonly epoch: number; readonly lease: KvLeaseId; readonly version: number },
  cur: ReadRecord | undefined,
  alive: ReadAlive | undefined,
  now: number,
): HoldAckPlan {
  const { version } = ack;
  return hostAckTxn(keys, ack, cur, alive, (r) => r.freezeContractSeen === version, (r) => ({ ...r, freezeContractSeen: version, updatedAt: now }));
}
