/**
 * The pool of hosts a peer check counts and asks (issue 11, docs/peer-check.md): the hosts whose
 * records are `attached`, `ready` or `detached` (a `fenced` or `retired` host is not in the pool),
 * with the peer address each advertises. Pure: fed with host records (a listing, then watch events)
 * and with what was persisted; the agent's shell is src/agent/peer/peer-list.ts.
 *
 * Invariants: this host itself is never one of the peers, but always counts in {@link PeerPool.poolSize};
 * a member has exactly the state and address of the last record applied for it; a record whose
 * address is absent or malformed keeps the host in the pool (it counts) but not among the endpoints
 * (it cannot be asked).
 */
import * as z from 'zod';
import { isPeerAddress, PEER_ADDRESS_RULE } from './codec/peer-address.js';
import { nameOf } from './codec/schemas.js';
import type { HostRecord, HostRecordState } from './host-record.js';

/** A pool peer and where its peer channel listens (`host:port`, `[v6]:port`). */
export interface PeerEndpoint {
  readonly hostId: string;
  readonly address: string;
}

/** One pool host as the pool keeps it. */
export interface PoolMember {
  readonly hostId: string;
  readonly state: PoolState;
  readonly peerAddress?: string;
}

/** Record states that are in the pool. */
export type PoolState = Extract<HostRecordState, 'attached' | 'ready' | 'detached'>;

/** True for `attached`, `ready`, `detached`. */
export function isPoolState(s: HostRecordState): s is PoolState {
  return s === 'attached' || s === 'ready' || s === 'detached';
}

/** The pool as seen by host `self`. Mutable; one owner (the peer list). */
export class PeerPool {
  private readonly members = new Map<string, PoolMember>();

  constructor(readonly self: string, initial: readonly PoolMember[] = []) {
    for (const m of initial) if (m.hostId !== self) this.members.set(m.hostId, m);
  }

  /** Replaces everything with a listing. True when the pool (states or addresses) changed. */
  reset(records: readonly { readonly hostId: string; readonly record?: HostRecord }[]): boolean {
    const before = this.fingerprint();
    this.members.clear();
    for (const r of records) this.apply(r.hostId, r.record);
    return this.fingerprint() !== before;
  }

  /** Applies one host's record (undefined: deleted or unreadable). True when the pool changed. */
  apply(hostId: string, record: HostRecord | undefined): boolean {
    if (hostId === this.self) return false;
    const before = this.members.get(hostId);
    if (!record || !isPoolState(record.state)) {
      this.members.delete(hostId);
      return before !== undefined;
    }
    const next: PoolMember = { hostId, state: record.state, ...(isPeerAddress(record.peerAddress) ? { peerAddress: record.peerAddress } : {}) };
    this.members.set(hostId, next);
    return before?.state !== next.state || before.peerAddress !== next.peerAddress;
  }

  /** Pool hosts other than self that can be asked (an address known), sorted by host id. */
  endpoints(): PeerEndpoint[] {
    return this.list().flatMap((m) => (m.peerAddress !== undefined ? [{ hostId: m.hostId, address: m.peerAddress }] : []));
  }

  /** Every pool host other than self, sorted (with or without an address): what a peer check counts. */
  peerIds(): string[] {
    return this.list().map((m) => m.hostId);
  }

  /** The known pool, self included. */
  poolSize(): number {
    return this.members.size + 1;
  }

  /** Every member, sorted by host id. */
  list(): PoolMember[] {
    return [...this.members.values()].sort((a, b) => (a.hostId < b.hostId ? -1 : a.hostId > b.hostId ? 1 : 0));
  }

  private fingerprint(): string {
    return JSON.stringify(this.list());
  }
}

// ---- persisted form -----------------------------------------------------------------------------

const persistedSchema = z.strictObject({
  version: z.literal(1),
  hostId: nameOf('host-id'),
  peers: z
    .array(
      z.strictObject({
        hostId: nameOf('host-id'),
        state: z.enum(['attached', 'ready', 'detached']),
        peerAddress: z.string().max(300).refine(isPeerAddress, { message: PEER_ADDRESS_RULE }).optional(),
      }),
    )
    .max(100_000),
});

/** The file's JSON for `pool`. */
export function encodePersistedPool(pool: PeerPool): string {
  return `${JSON.stringify({ version: 1, hostId: pool.self, peers: pool.list() })}\n`;
}

/**
 * The members persisted in `text` for host `self`, or why they cannot be used (malformed, another
 * host's file). Never throws.
 */
export function decodePersistedPool(text: string, self: string): { ok: true; members: PoolMember[] } | { ok: false; why: string } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return { ok: false, why: `not JSON (${err instanceof Error ? err.message : String(err)})` };
  }
  const r = persistedSchema.safeParse(json);
  if (!r.success) {
    const i = r.error.issues[0]!;
    return { ok: false, why: `${i.path.map(String).join('.') || '(value)'}: ${i.message}` };
  }
  if (r.data.hostId !== self) return { ok: false, why: `written for host ${r.data.hostId}, this is ${self}` };
  return { ok: true, members: r.data.peers.map((p) => ({ hostId: p.hostId, state: p.state, ...(p.peerAddress !== undefined ? { peerAddress: p.peerAddress } : {}) })) };
}
