/**
 * The answering side of the peer check, pure (issue 11; the argument is docs/peer-check.md): what a
 * host says when a detached peer asks whether it too has lost etcd, and what it must promise (and
 * persist before it answers) when it answers as a witness.
 *
 * Times are this host's MONOTONIC ms.
 */
import { STAY_AWAY_MAX_MS } from './codec/peer-answer.js';
import type { GcTimings } from './gc-timing.js';
import type { HostPhase } from './host-lifecycle.js';
import { peerWindowOpensAt, type PeerAnswer, type PeerAsk, type PeerCheckSettings } from './peer-check.js';

/** The promise already made: the lease never renewed again, and the stay-away until `until`. */
export interface WitnessPromise {
  readonly lease: string | undefined;
  readonly until: number | undefined;
  /** The longest stay-away promised so far (ms). */
  readonly promisedMs: number;
}

/** What this host knows when a peer asks. */
export interface WitnessInput {
  readonly now: number;
  readonly hostId: string;
  readonly ask: PeerAsk;
  readonly timings: GcTimings;
  readonly settings: PeerCheckSettings;
  readonly phase: HostPhase;
  readonly epoch: number;
  /** The last acknowledged heartbeat of the host lifecycle (undefined: none yet). */
  readonly lastAck: number | undefined;
  /** When the acknowledgement that renewed or granted the lease was received (undefined: none). */
  readonly lastAckReceivedAt: number | undefined;
  /** Keepalives sent since without an answer. */
  readonly unanswered: number;
  /** Registration could not tell whether this host is still a member. */
  readonly membershipUnresolved: boolean;
  /** Another agent serves this host id. */
  readonly duplicate: boolean;
  /** The lease this agent heartbeats on now (undefined: none known). */
  readonly lease: string | undefined;
  readonly promise: WitnessPromise;
}

/** The answer, and the promise to persist before sending it (absent: nothing new promised). */
export interface WitnessDecision {
  readonly answer: PeerAnswer;
  readonly promise?: WitnessPromise & { readonly until: number; readonly first: boolean };
}

/**
 * Answers a peer's question. A witness (`silent`) is `detached` (a host that fenced itself is no
 * witness), inside its own peer-check window (a peer's question during this host's short blip must not
 * commit it), has had an acknowledged heartbeat, knows it is a member and is not a duplicate.
 *
 * Invariants: a `silent` answer comes with a promise covering `now + stay` (stay = the asked
 * `stayAwayMs`, clamped to `[0, STAY_AWAY_MAX_MS]`) and the current lease, which the caller persists
 * before answering; the promise never shrinks (`until` and `promisedMs` are maxima); a host that is
 * not a witness promises nothing.
 */
export function answerAsWitness(i: WitnessInput): WitnessDecision {
  const inWindow = i.lastAck !== undefined && i.now >= peerWindowOpensAt(i.timings, i.settings, i.lastAck);
  const silent = i.phase === 'detached' && inWindow && i.lastAckReceivedAt !== undefined && !i.membershipUnresolved && !i.duplicate;
  const stay = Math.max(0, Math.min(Math.ceil(i.ask.stayAwayMs), STAY_AWAY_MAX_MS));
  const answer: PeerAnswer = {
    hostId: i.hostId,
    nonce: i.ask.nonce,
    epoch: i.epoch,
    phase: i.phase,
    reachesEtcd: i.phase === 'attached',
    silent,
    ...(silent ? { ackAgeMs: Math.max(0, Math.round(i.now - i.lastAckReceivedAt!)) } : {}),
    unanswered: i.unanswered,
    ttl: i.timings.ttl,
    promisedMs: silent ? stay : 0,
  };
  if (!silent) return { answer };
  const p = i.promise;
  const until = Math.max(p.until ?? -Infinity, i.now + stay);
  const lease = i.lease ?? p.lease;
  if (lease === p.lease && until === p.until) return { answer };
  return { answer, promise: { lease, until, promisedMs: Math.max(p.promisedMs, stay), first: p.lease === undefined && p.until === undefined } };
}
