/**
 * The peer check, pure (issue 11; the argument is docs/peer-check.md): may a detached host hold its
 * fence back, from its peers' answers? Only when the answers prove the controller is frozen when it
 * could first fence this host, and stays frozen or resuming until this host notices otherwise.
 *
 * Times are the asking host's MONOTONIC ms, except the answerer's own ages (its monotonic clock),
 * which are placed on ours pessimistically (as late as they can be).
 */
import type { FreezeContract } from './freeze-contract.js';
import type { GcTimings } from './gc-timing.js';
import type { HostPhase } from './host-lifecycle.js';

/** One peer's answer to `POST /v1/peer/status` (wire JSON; parsed by the peer channel). */
export interface PeerAnswer {
  readonly hostId: string;
  /** The nonce of the question it answers. */
  readonly nonce: string;
  readonly epoch: number;
  readonly phase: HostPhase;
  /** True when it reaches etcd now (attached: its last keepalive was acknowledged in time). */
  readonly reachesEtcd: boolean;
  /**
   * True when, since it last RECEIVED an acknowledgement, it sent nothing that can renew its lease
   * or register it again beyond `unanswered` keepalives, and it commits to send nothing on that lease
   * again (a witness; docs/peer-check.md "The witness").
   */
  readonly silent: boolean;
  /** ms since it received its last acknowledgement (its clock); absent: never acknowledged. */
  readonly ackAgeMs?: number;
  /** Keepalives or registrations it sent since that acknowledgement and never got an answer to. */
  readonly unanswered: number;
  /** Its lease TTL (ms). */
  readonly ttl: number;
  /**
   * While `silent`: for how long from this answer it promises not to register again (ms, its clock):
   * the question's `stayAwayMs`. 0 when not silent.
   */
  readonly promisedMs: number;
}

/** What a host asks its peers: the nonce to echo, and how long a witness must promise to stay away (ms). */
export interface PeerAsk {
  readonly nonce: string;
  readonly stayAwayMs: number;
}

/** An answer as received: when (our clock). */
export interface ReceivedAnswer {
  readonly answer: PeerAnswer;
  readonly receivedAt: number;
}

/** One round of questions: its nonce and asked stay-away, when it was sent, what came back. */
export interface PeerRound {
  readonly nonce: string;
  readonly stayAwayMs: number;
  readonly sentAt: number;
  readonly answers: ReadonlyMap<string, ReceivedAnswer>;
}

/** Settings of the peer check. */
export interface PeerCheckSettings {
  /** Time between rounds while detached (ms). */
  readonly interval: number;
  /** An answer later than this after its question does not count (ms). */
  readonly timeout: number;
}

/** Everything {@link checkPeers} decides from. */
export interface PeerCheckInput {
  readonly now: number;
  readonly hostId: string;
  /** Send time of this host's last acknowledged keepalive (its deadlines' origin). */
  readonly lastAck: number;
  readonly timings: GcTimings;
  /** The freeze contract this host acknowledged; none: never hold back. */
  readonly contract: FreezeContract | undefined;
  /** Pool hosts this host knows, itself excluded. */
  readonly peers: readonly string[];
  readonly settings: PeerCheckSettings;
  /** The latest completed round, if any. */
  readonly round: PeerRound | undefined;
}

/** Why one answer did not count as a witness. */
export interface Rejection {
  readonly hostId: string;
  readonly why: string;
}

/** The verdict. */
export interface PeerCheckVerdict {
  readonly holdBack: boolean;
  /** Peers whose answers count (this host excluded). */
  readonly witnesses: readonly string[];
  /** Detached hosts needed, this host included: the smallest count above share × pool. */
  readonly needed: number;
  /** Pool size used: the larger of the known pool and the contract's. */
  readonly pool: number;
  readonly rejected: readonly Rejection[];
  /** One line for status: "fence held back: 7 of 10 hosts ..." or why not. */
  readonly detail: string;
  /** While holding back: until when this verdict holds the fence back ({@link heldBackUntil}). */
  readonly until?: number;
  /** While holding back: the guardian's deadline (see {@link heldBackGuardianDeadline}). */
  readonly guardianDeadline?: number;
}

/**
 * When a detached host's peer-check window opens (monotonic ms): one round before its watchdog
 * (`lastAck + watchdogTimeout - interval - timeout`). It asks nothing before (a blip shorter than
 * that never involves peers), and it vouches as a witness only from then on: a witness's promise
 * (no renewal, stay away) would otherwise turn a peer's short blip into its own re-registration.
 */
export function peerWindowOpensAt(t: Pick<GcTimings, 'watchdogTimeout'>, s: PeerCheckSettings, lastAck: number): number {
  return lastAck + t.watchdogTimeout - s.interval - s.timeout;
}

/** etcd's lessor revokes expired leases on 500 ms ticks, at most 1,000 per second: 1 s + pool / 1000 s. */
export function revokeSlack(pool: number): number {
  return 1000 + Math.max(0, pool);
}

/** The earliest time (our clock) the controller may fence this host: lastAck + ttl + fenceWindow. */
export function earliestClusterFence(t: Pick<GcTimings, 'ttl' | 'fenceWindow'>, lastAck: number): number {
  return lastAck + t.ttl + t.fenceWindow;
}

/**
 * Latest time (our clock) by which the answerer's lease is revoked: its last acknowledgement as late
 * as it can be on our clock (`receivedAt − ackAgeMs`), plus one TTL per unanswered request and one for
 * the acknowledged renewal, plus the revoke slack. Undefined when it never got an acknowledgement.
 */
export function witnessLeaseGoneBy(a: ReceivedAnswer, pool: number): number | undefined {
  if (a.answer.ackAgeMs === undefined) return undefined;
  return a.receivedAt - a.answer.ackAgeMs + (a.answer.unanswered + 1) * a.answer.ttl + revokeSlack(pool);
}

/**
 * How long a witness must promise to stay away when asked at `sentAt`: until this host's earliest
 * cluster fence, plus the drift margin (docs/peer-check.md "The witness": without it a witness could
 * return before the controller ever counted it, and the controller would fence this host unfrozen).
 */
export function stayAwayFor(t: Pick<GcTimings, 'ttl' | 'fenceWindow' | 'clockDriftMargin'>, lastAck: number, sentAt: number): number {
  return Math.max(0, Math.ceil(earliestClusterFence(t, lastAck) + t.clockDriftMargin - sentAt));
}

/**
 * How long after a positive round (sent at `sentAt`) the controller cannot fence this host:
 * `min(resumeDelay, fenceWindow)` (docs/peer-check.md "Why a VM still cannot run twice": the
 * detached count falls only through a witness's return, after its answer, and then fencing resumes
 * only `resumeDelay` later; or the host's own loss is observed after the witnesses' promise ended,
 * and the controller waits a fence window from there).
 */
export function protectedFor(t: Pick<GcTimings, 'fenceWindow'>, contract: Pick<FreezeContract, 'resumeDelay'>): number {
  return Math.min(contract.resumeDelay, t.fenceWindow);
}

/**
 * Until when a positive verdict on a round sent at `roundSentAt` holds the fence back: the host must
 * have stopped every VM by `roundSentAt + protectedFor - clockDriftMargin`, so it starts its fence
 * `stopGrace + killTimeout` before that.
 */
export function heldBackUntil(t: Pick<GcTimings, 'fenceWindow' | 'stopGrace' | 'killTimeout' | 'clockDriftMargin'>, contract: Pick<FreezeContract, 'resumeDelay'>, roundSentAt: number): number {
  return roundSentAt + protectedFor(t, contract) - t.clockDriftMargin - t.stopGrace - t.killTimeout;
}

/**
 * The guardian's deadline while holding back on a round sent at `roundSentAt`: half a `killTimeout`
 * before the end of the protection (minus the drift margin), so its SIGKILL lands in time even when
 * the agent is dead.
 */
export function heldBackGuardianDeadline(t: Pick<GcTimings, 'fenceWindow' | 'killTimeout' | 'clockDriftMargin'>, contract: Pick<FreezeContract, 'resumeDelay'>, roundSentAt: number): number {
  return roundSentAt + protectedFor(t, contract) - t.clockDriftMargin - t.killTimeout / 2;
}

/**
 * The start-time rule of the peer check, violated (a message with the inequality and the numbers)
 * or undefined: the next round must come in before a positive verdict stops protecting:
 * `interval + timeout + stopGrace + killTimeout + clockDriftMargin <= min(resumeDelay, fenceWindow)`.
 */
export function peerCheckBudgetProblem(t: GcTimings, s: PeerCheckSettings, resumeDelay: number): string | undefined {
  const lhs = s.interval + s.timeout + t.stopGrace + t.killTimeout + t.clockDriftMargin;
  const rhs = protectedFor(t, { resumeDelay });
  if (lhs <= rhs) return undefined;
  return `peerCheckInterval + peerTimeout + stopGrace + killTimeout + clockDriftMargin <= min(resumeDelay, fenceWindow) is violated (${s.interval} + ${s.timeout} + ${t.stopGrace} + ${t.killTimeout} + ${t.clockDriftMargin} = ${lhs} > ${rhs})`;
}

/**
 * Decides. Holds back only when: a contract is held and the budget rule holds; the round is fresh
 * (sent within `interval + timeout` of now); and this host plus its witnesses are strictly more than
 * `share × pool`. A witness: a known peer whose answer echoes the nonce, came within `timeout`, says
 * it does not reach etcd, is still `detached` (not fencing or later) and silent, promised to stay away at least {@link stayAwayFor}, and whose
 * lease is revoked by `earliestClusterFence − clockDriftMargin`. A positive verdict holds until
 * {@link heldBackUntil}.
 *
 * Invariants: no contract, no round, a stale round or a budget violation ⇒ `holdBack: false`; an
 * answer from a host not in `peers`, with another nonce, or late ⇒ never a witness; more answers can
 * only turn `false` into `true` through witnesses (monotone in valid evidence).
 */
export function checkPeers(i: PeerCheckInput): PeerCheckVerdict {
  const c = i.contract;
  const pool = Math.max(i.peers.length + 1, c?.poolSize ?? 0);
  const needed = c === undefined ? Infinity : Math.floor(c.share * pool) + 1;
  const no = (detail: string, witnesses: string[] = [], rejected: Rejection[] = []): PeerCheckVerdict => ({ holdBack: false, witnesses, needed, pool, rejected, detail });
  if (c === undefined) return no('no freeze contract acknowledged: the fence is never held back');
  const budget = peerCheckBudgetProblem(i.timings, i.settings, c.resumeDelay);
  if (budget !== undefined) return no(`peer check impossible: ${budget}`);
  const r = i.round;
  if (r === undefined) return no('no peer answers yet');
  if (r.sentAt + i.settings.interval + i.settings.timeout < i.now) return no(`peer answers are stale (asked ${Math.round(i.now - r.sentAt)} ms ago)`);
  const known = new Set(i.peers);
  const limit = earliestClusterFence(i.timings, i.lastAck) - i.timings.clockDriftMargin;
  const witnesses: string[] = [];
  const rejected: Rejection[] = [];
  for (const [id, a] of r.answers) {
    const why = rejectWhy(id, a, r, known, i, limit, pool);
    if (why === undefined) witnesses.push(id);
    else rejected.push({ hostId: id, why });
  }
  witnesses.sort();
  const detached = witnesses.length + 1;
  const pct = `${Math.round(c.share * 100)} %`;
  const summary = `${detached} of ${pool} hosts report etcd unreachable (freeze share ${pct}, ${needed} needed; ${r.answers.size} of ${i.peers.length} peers answered)`;
  if (detached < needed) return no(`fence not held back: only ${summary}`, witnesses, rejected);
  return { holdBack: true, witnesses, needed, pool, rejected, detail: `fence held back: ${summary}`, until: heldBackUntil(i.timings, c, r.sentAt), guardianDeadline: heldBackGuardianDeadline(i.timings, c, r.sentAt) };
}

function rejectWhy(id: string, a: ReceivedAnswer, r: PeerRound, known: ReadonlySet<string>, i: PeerCheckInput, limit: number, pool: number): string | undefined {
  if (id === i.hostId || a.answer.hostId !== id) return 'answer names another host';
  if (!known.has(id)) return 'not a known pool host';
  if (a.answer.nonce !== r.nonce) return 'answers another question (stale)';
  if (a.receivedAt - r.sentAt > i.settings.timeout || a.receivedAt < r.sentAt) return 'answered too late';
  if (a.answer.reachesEtcd) return 'reaches etcd';
  // A host that fenced itself may be fenced by the controller at any time and leave its pool; only
  // one still `detached` (before its watchdog, or held back by its own proof) stays countable long
  // enough (C7's leave grace covers the rest: docs/peer-check.md).
  if (a.answer.phase !== 'detached') return `it fenced itself (${a.answer.phase})`;
  if (!a.answer.silent) return 'not silent (it sent a keepalive or registration since)';
  const stay = stayAwayFor(i.timings, i.lastAck, r.sentAt);
  if (a.answer.promisedMs < stay) return `promised to stay away ${a.answer.promisedMs} ms, ${stay} ms needed`;
  const goneBy = witnessLeaseGoneBy(a, pool);
  if (goneBy === undefined) return 'never acknowledged';
  if (!Number.isFinite(goneBy) || goneBy > limit) return `its lease may outlive this host's fence deadline by ${Math.ceil(goneBy - limit)} ms`;
  return undefined;
}
