/**
 * The mass-disruption freeze as the controller runs it ({@link evaluateFreeze} of `mass-freeze.ts`):
 * host changes mark the freeze dirty and one evaluation follows {@link FREEZE_DEBOUNCE_MS} later (it
 * scans every host); fence and sweep decisions evaluate first when it is dirty, so they never act on a
 * stale share. While frozen, and for the freeze contract's resume delay (at least the pool's longest
 * fence window) after the share falls back, nothing is fenced or rescheduled; on resumption every
 * fence whose deadline passed meanwhile is taken up. The count follows C1 and C3 of
 * docs/peer-check.md, the share and delay the contract rule (`contract.ts`).
 */
import { DEFAULT_TIMINGS } from '../gc-timing.js';
import { effectiveFenceWindow } from '../fence-window.js';
import { countPool, describeFreeze, evaluateFreeze as evaluate, inPool, type PoolMember } from '../mass-freeze.js';
import { freezeRule, maybePublishContract, wantedContract } from './contract.js';
import { clearTimer, emitEvent, fenceTimerKey, iso, log, setTimer, timerSet } from './effects.js';
import { fenceDue } from './fence.js';
import { requestSweep } from './sweep.js';
import type { ControllerState, Ctx } from './types.js';

/** A burst of host changes is folded into one freeze evaluation this long after its first change. */
export const FREEZE_DEBOUNCE_MS = 100;

/** Host states changed: one evaluation {@link FREEZE_DEBOUNCE_MS} later (not one per change). */
export function markFreezeDirty(c: Ctx): void {
  c.s.freezeDirty = true;
  if (timerSet(c, 'freeze-check')) return;
  setTimer(c, 'freeze-check', FREEZE_DEBOUNCE_MS);
}

/** Forgets the freeze's and the contract's per-leadership state (at step-down). */
export function resetFreezeExtras(s: ControllerState): void {
  s.freezePool = undefined;
  s.freezeRule = undefined;
  s.poolTimings = undefined;
  s.freezeRev = 0n;
  s.contract = undefined;
  s.contractKnown = false;
  s.contractWriting = false;
  s.contractWanted = undefined;
  s.contractWrittenMono = undefined;
  s.hostsRev = 0n;
  s.fenceParked.clear();
  s.barrierInFlight = false;
}

/**
 * Evaluates the freeze now on the current view; announces transitions (log and event). The count
 * follows C1 and C3 ({@link countPool}); the share and resume delay are the contract rule
 * ({@link freezeRule}: never looser than what a pool host acknowledged); the pool's timings for C4
 * are noted; the contract is published when it changed.
 */
export function evaluateFreeze(c: Ctx): void {
  const s = c.s;
  s.freezeDirty = false;
  s.freezeRose = false;
  if (!s.leader || !s.synced) return;
  let window = 0;
  let ttl = 0;
  let electionTolerance = 0;
  let poolSize = 0;
  const acks = new Set<number | undefined>();
  for (const t of s.hosts.values()) {
    const r = t.record;
    if (r === undefined || !inPool(r.state)) continue;
    poolSize++;
    const tm = r.timings ?? DEFAULT_TIMINGS;
    window = Math.max(window, effectiveFenceWindow(tm, s.cfg.fenceWindowOverride));
    ttl = Math.max(ttl, finite(tm.ttl));
    electionTolerance = Math.max(electionTolerance, finite(tm.electionTolerance));
    acks.add(r.freezeContractSeen);
  }
  if (poolSize === 0) window = DEFAULT_TIMINGS.fenceWindow;
  s.poolTimings = { ttl, electionTolerance, pool: Math.max(poolSize, s.freezePool?.size ?? 0) };
  const wanted = wantedContract(c, window);
  const rule = freezeRule(c, wanted, acks);
  s.freezeRule = rule;
  // C7: a host that left the pool within the leave grace still counts, as detached
  const grace = leaveGrace(ttl, window, maxDrift(s));
  let nextExpiry: number | undefined;
  const member = (id: string): PoolMember | undefined => {
    const t = s.hosts.get(id);
    if (t === undefined) return undefined;
    const left = t.leftPoolMono;
    const leftRecently = left !== undefined && c.now.mono < left + grace;
    if (leftRecently) nextExpiry = Math.min(nextExpiry ?? Infinity, left + grace);
    return { state: t.record?.state, alive: t.alive !== undefined, leftRecently };
  };
  const count = countPool(member, s.hosts.keys(), s.freezePool);
  s.detachedCount = count;
  // the count falls when a leave grace ends: evaluate again then
  if (nextExpiry !== undefined && !timerSet(c, 'freeze-check')) setTimer(c, 'freeze-check', Math.max(1, nextExpiry - c.now.mono));
  s.freezeRev = s.hostsRev;
  const nowMono = c.now.mono;
  const prevMode = s.freeze.mode;
  const { state, transition } = evaluate(s.freeze, count, nowMono, { limit: rule.share, window: rule.resumeDelay });
  s.freeze = state;
  // C3: the pool when the freeze began counts until it is over
  if (transition === 'entered' && prevMode === 'normal') s.freezePool = new Set([...s.hosts.values()].filter((t) => inPool(t.record?.state)).map((t) => t.hostId));
  if (state.mode === 'normal') s.freezePool = undefined;
  maybePublishContract(c, wanted, poolSize);
  if (transition === 'entered') {
    clearTimer(c, 'freeze-resume');
    s.freezeResumeAtWall = undefined;
    const why = describeFreeze(state, rule.share, nowMono)!;
    log(c, 'warn', { detached: count.detached, total: count.total }, why);
    emitEvent(c, { kind: 'freeze-entered', detached: count.detached, total: count.total, limit: rule.share, detail: why });
  } else if (transition === 'fell-back' && state.mode === 'resuming') {
    const resumeAt = c.now.wall + (state.resumeAt - nowMono);
    s.freezeResumeAtWall = resumeAt;
    setTimer(c, 'freeze-resume', state.resumeAt - nowMono);
    log(c, 'warn', { detached: count.detached, total: count.total, resumeInMs: state.resumeAt - nowMono }, 'detached share fell back: fencing resumes after the contract\'s resume delay');
    emitEvent(c, {
      kind: 'freeze-lifted',
      detached: count.detached,
      total: count.total,
      resumeAt,
      detail: `${count.detached} of ${count.total} hosts detached: fencing resumes at ${iso(resumeAt)} (the freeze contract's resume delay, ${Math.round(rule.resumeDelay)} ms)`,
    });
  } else if (state.mode === 'resuming' && !timerSet(c, 'freeze-resume')) {
    // the resume timer fired a hair before resumeAt (timers may fire early against the monotonic
    // clock: rounding in Node's timers and in the simulator's clocks): wait for the rest
    setTimer(c, 'freeze-resume', state.resumeAt - nowMono);
  } else if (transition === 'resumed') {
    s.freezeResumeAtWall = undefined;
    log(c, 'info', {}, 'mass-disruption freeze over: fencing and rescheduling resume');
    emitEvent(c, { kind: 'freeze-resumed', detail: 'mass-disruption freeze over: fencing and rescheduling resume' });
    for (const t of [...s.hosts.values()]) {
      if (t.incarnation !== undefined && t.fenceAtMono !== undefined && t.fenceAtMono <= nowMono && !timerSet(c, fenceTimerKey(t.hostId))) fenceDue(c, t);
    }
    requestSweep(c);
  }
}

function finite(x: number | undefined): number {
  return x !== undefined && Number.isFinite(x) && x > 0 ? x : 0;
}

/**
 * C7's leave grace (docs/peer-check.md): how long a host that left the pool still counts as
 * detached: the longest stay-away a peer can have asked of it as a witness (`ttl + fenceWindow +
 * clockDriftMargin`) plus the drift margin again. Invariant: >= the pool's `ttl + fenceWindow`.
 */
export function leaveGrace(ttl: number, fenceWindow: number, drift: number): number {
  return ttl + fenceWindow + 2 * drift;
}

function maxDrift(s: ControllerState): number {
  let d = 0;
  for (const t of s.hosts.values()) d = Math.max(d, finite(t.record?.timings?.clockDriftMargin));
  return d;
}
