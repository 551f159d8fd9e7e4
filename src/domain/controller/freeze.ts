/**
 * The mass-disruption freeze as the controller runs it ({@link evaluateFreeze} of `mass-freeze.ts`):
 * host changes mark the freeze dirty and one evaluation follows {@link FREEZE_DEBOUNCE_MS} later (it
 * scans every host); fence and sweep decisions evaluate first when it is dirty, so they never act on a
 * stale share. While frozen, and for a full fence window after the share falls back, nothing is
 * fenced or rescheduled; on resumption every fence whose deadline passed meanwhile is taken up.
 */
import { DEFAULT_TIMINGS } from '../gc-timing.js';
import { effectiveFenceWindow } from '../fence-window.js';
import type { HostRecord } from '../host-record.js';
import { countDetached, describeFreeze, evaluateFreeze as evaluate } from '../mass-freeze.js';
import { clearTimer, emitEvent, fenceTimerKey, iso, log, setTimer, timerSet } from './effects.js';
import { fenceDue } from './fence.js';
import { requestSweep } from './sweep.js';
import type { Ctx } from './types.js';

/** A burst of host changes is folded into one freeze evaluation this long after its first change. */
export const FREEZE_DEBOUNCE_MS = 100;

/** Host states changed: one evaluation {@link FREEZE_DEBOUNCE_MS} later (not one per change). */
export function markFreezeDirty(c: Ctx): void {
  c.s.freezeDirty = true;
  if (timerSet(c, 'freeze-check')) return;
  setTimer(c, 'freeze-check', FREEZE_DEBOUNCE_MS);
}

/** Evaluates the freeze now on the current view; announces transitions (log and event). */
export function evaluateFreeze(c: Ctx): void {
  const s = c.s;
  s.freezeDirty = false;
  if (!s.leader || !s.synced) return;
  const records = [...s.hosts.values()].map((t) => t.record).filter((r): r is HostRecord => r !== undefined);
  const count = countDetached(records.map((r) => r.state));
  s.detachedCount = count;
  const pool = records.filter((r) => r.state === 'attached' || r.state === 'ready' || r.state === 'detached');
  const window = pool.length > 0 ? Math.max(...pool.map((r) => effectiveFenceWindow(r.timings ?? DEFAULT_TIMINGS, s.cfg.fenceWindowOverride))) : DEFAULT_TIMINGS.fenceWindow;
  const nowMono = c.now.mono;
  const { state, transition } = evaluate(s.freeze, count, nowMono, { limit: s.cfg.freezeShare, window });
  s.freeze = state;
  if (transition === 'entered') {
    clearTimer(c, 'freeze-resume');
    s.freezeResumeAtWall = undefined;
    const why = describeFreeze(state, s.cfg.freezeShare, nowMono)!;
    log(c, 'warn', { detached: count.detached, total: count.total }, why);
    emitEvent(c, { kind: 'freeze-entered', detached: count.detached, total: count.total, limit: s.cfg.freezeShare, detail: why });
  } else if (transition === 'fell-back' && state.mode === 'resuming') {
    const resumeAt = c.now.wall + (state.resumeAt - nowMono);
    s.freezeResumeAtWall = resumeAt;
    setTimer(c, 'freeze-resume', state.resumeAt - nowMono);
    log(c, 'warn', { detached: count.detached, total: count.total, resumeInMs: state.resumeAt - nowMono }, 'detached share fell back: fencing resumes after a full fence window');
    emitEvent(c, {
      kind: 'freeze-lifted',
      detached: count.detached,
      total: count.total,
      resumeAt,
      detail: `${count.detached} of ${count.total} hosts detached: fencing resumes at ${iso(resumeAt)} (a full fence window)`,
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
