import { describe, expect, it } from 'vitest';
import { DEFAULT_TIMINGS as T } from '../../src/domain/gc-timing.js';
import {
  evaluate,
  guardianDeadline,
  initialHostState,
  nextDeadline,
  resumeEffects,
  watchdogRemaining,
  type HostEvent,
  type HostPhase,
  type HostState,
} from '../../src/domain/host-lifecycle.js';

const base = (phase: HostPhase, extra: Partial<HostState> = {}): HostState => ({ phase, epoch: 3, lastAck: 1000, held: false, heldAtDetach: false, ...extra });
const kinds = (effects: readonly { kind: string }[]) => effects.map((e) => e.kind).filter((k) => k !== 'transition');

describe('host lifecycle: state x event table', () => {
  const wd = 1000 + T.watchdogTimeout;
  const det = 1000 + T.detachAfter;
  // [from, event, now, expected phase, expected non-transition effects]
  const rows: [HostPhase, HostEvent, number, HostPhase, string[], Partial<HostState>?][] = [
    ['starting', { kind: 'registered', epoch: 1, sentAt: 900 }, 950, 'attached', []],
    ['starting', { kind: 'heartbeat-acked', sentAt: 2000 }, 2000, 'starting', []],
    ['starting', { kind: 'tick' }, 10 ** 9, 'starting', [], { lastAck: undefined }],
    ['starting', { kind: 'lease-lost' }, 2000, 'starting', ['register']],
    ['attached', { kind: 'heartbeat-acked', sentAt: 2000 }, 2010, 'attached', []],
    ['attached', { kind: 'heartbeat-missed', sentAt: 2000 }, 3000, 'suspect', []],
    ['attached', { kind: 'tick' }, det - 1, 'attached', []],
    ['attached', { kind: 'tick' }, det, 'detached', []],
    ['attached', { kind: 'tick' }, wd, 'fencing', ['stop-vms']],
    ['attached', { kind: 'lease-lost' }, 2000, 'detached', ['register']],
    ['attached', { kind: 'vms-stopped' }, 2000, 'attached', []],
    ['attached', { kind: 'cleanup-finished', clean: true }, 2000, 'attached', []],
    ['attached', { kind: 'register-refused', reason: 'fenced' }, 2000, 'fencing', ['stop-vms']],
    ['suspect', { kind: 'heartbeat-acked', sentAt: 2500 }, 2600, 'attached', []],
    ['suspect', { kind: 'heartbeat-missed', sentAt: 2500 }, det - 1, 'suspect', []],
    ['suspect', { kind: 'heartbeat-missed', sentAt: 2500 }, det, 'detached', []],
    ['suspect', { kind: 'tick' }, det, 'detached', []],
    ['detached', { kind: 'heartbeat-acked', sentAt: wd - 100 }, wd - 50, 'attached', []],
    ['detached', { kind: 'heartbeat-acked', sentAt: wd - 100 }, wd + 5, 'fencing', ['stop-vms']],
    ['detached', { kind: 'registered', epoch: 3, sentAt: wd - 10 }, wd - 5, 'attached', []],
    ['detached', { kind: 'tick' }, wd - 1, 'detached', []],
    ['detached', { kind: 'tick' }, wd, 'fencing', ['stop-vms']],
    ['detached', { kind: 'tick' }, wd * 100, 'detached', [], { heldAtDetach: true, held: true }],
    ['detached', { kind: 'hold-changed', held: false }, wd * 100, 'detached', [], { heldAtDetach: true, held: true }],
    ['detached', { kind: 'register-refused', reason: 'fenced' }, 2000, 'fencing', ['stop-vms']],
    ['detached', { kind: 'register-refused', reason: 'epoch-mismatch' }, 2000, 'fencing', ['stop-vms']],
    ['starting', { kind: 'register-refused', reason: 'fenced' }, 2000, 'fencing', ['stop-vms']],
    ['clean', { kind: 'register-refused', reason: 'fenced' }, 2000, 'clean', []],
    ['fencing', { kind: 'heartbeat-acked', sentAt: wd + 10 }, wd + 20, 'fencing', []],
    ['fencing', { kind: 'registered', epoch: 3, sentAt: wd + 10 }, wd + 20, 'fencing', []],
    ['fencing', { kind: 'tick' }, wd * 10, 'fencing', []],
    ['fencing', { kind: 'vms-stopped' }, wd + 10, 'cleaning', ['run-cleanup']],
    ['fencing', { kind: 'register-refused', reason: 'fenced' }, wd + 10, 'fencing', []],
    ['cleaning', { kind: 'cleanup-finished', clean: false }, wd + 10, 'cleaning', ['run-cleanup']],
    ['cleaning', { kind: 'cleanup-finished', clean: true }, wd + 10, 'clean', ['register']],
    ['cleaning', { kind: 'heartbeat-acked', sentAt: wd }, wd + 10, 'cleaning', []],
    ['clean', { kind: 'cluster-reachable' }, wd + 10, 'rejoining', []],
    ['clean', { kind: 'lease-lost' }, wd + 10, 'clean', []],
    ['rejoining', { kind: 'registered', epoch: 4, sentAt: wd + 100 }, wd + 110, 'attached', []],
    ['rejoining', { kind: 'cluster-reachable' }, wd + 10, 'rejoining', []],
    // Another agent holds this host id: never a fence for its sake, in any phase.
    ['starting', { kind: 'register-refused', reason: 'duplicate' }, 2000, 'starting', []],
    ['detached', { kind: 'register-refused', reason: 'duplicate' }, 2000, 'detached', []],
    ['clean', { kind: 'register-refused', reason: 'duplicate' }, wd + 10, 'clean', []],
    // Taken over: stop acting on the cluster (no register), the own watchdog still runs.
    ['attached', { kind: 'taken-over' }, 2000, 'detached', []],
    ['suspect', { kind: 'taken-over' }, 2000, 'detached', []],
    ['detached', { kind: 'taken-over' }, 2000, 'detached', []],
    ['cleaning', { kind: 'taken-over' }, wd + 10, 'cleaning', []],
    // The guardian killed the VMs: the agent finishes the GC from there.
    ['attached', { kind: 'guardian-fired' }, 2000, 'fencing', ['stop-vms']],
    ['detached', { kind: 'guardian-fired' }, wd - 1, 'fencing', ['stop-vms']],
    ['detached', { kind: 'guardian-fired' }, wd * 100, 'fencing', ['stop-vms'], { heldAtDetach: true, held: true }],
    ['fencing', { kind: 'guardian-fired' }, wd + 10, 'fencing', []],
    ['clean', { kind: 'guardian-fired' }, wd + 10, 'clean', []],
    // A forced local hold (risk accepted) suspends a pending watchdog; its local release resumes it.
    ['detached', { kind: 'hold-changed', held: true, forceWhileDetached: true }, 2000, 'detached', []],
    ['detached', { kind: 'hold-changed', held: false, forceWhileDetached: true }, 2000, 'detached', [], { heldAtDetach: true, held: true }],
    ['detached', { kind: 'hold-changed', held: false, forceWhileDetached: true }, wd, 'fencing', ['stop-vms'], { heldAtDetach: true, held: true }],
    ['detached', { kind: 'hold-changed', held: false }, wd, 'detached', [], { heldAtDetach: true, held: true }],
  ];
  it.each(rows)('%s + %j at %i -> %s %j', (from, event, now, phase, effects, extra) => {
    const r = evaluate(T, base(from, extra), event, now);
    expect(r.state.phase).toBe(phase);
    expect(kinds(r.effects)).toEqual(effects);
    if (from !== phase) {
      const tr = r.effects.filter((x) => x.kind === 'transition');
      expect(tr[0]).toMatchObject({ kind: 'transition', from });
      expect(tr.at(-1)).toMatchObject({ kind: 'transition', to: phase });
    }
  });

  it('rejoining sets the new epoch and forgets the previous fence', () => {
    const r = evaluate(T, base('rejoining', { fenceStartedAt: 5, fenceReason: 'watchdog' }), { kind: 'registered', epoch: 4, sentAt: 50_000 }, 50_010);
    expect(r.state).toMatchObject({ phase: 'attached', epoch: 4, lastAck: 50_000 });
    expect(r.state.fenceStartedAt).toBeUndefined();
  });

  it('a hold captured at detachment survives a later release; a hold while attached does not fence', () => {
    let s = base('attached', { held: true });
    s = evaluate(T, s, { kind: 'tick' }, 1000 + T.detachAfter).state;
    expect(s).toMatchObject({ phase: 'detached', heldAtDetach: true });
    s = evaluate(T, s, { kind: 'hold-changed', held: false }, 1000 + T.detachAfter + 1).state;
    expect(evaluate(T, s, { kind: 'tick' }, 10 ** 7).state.phase).toBe('detached');
    expect(nextDeadline(T, s)).toBeUndefined();
    expect(watchdogRemaining(T, s, 10 ** 7)).toBeUndefined();
    // Acked again: the next detachment is not held.
    s = evaluate(T, s, { kind: 'heartbeat-acked', sentAt: 10 ** 7 }, 10 ** 7).state;
    s = evaluate(T, s, { kind: 'tick' }, 10 ** 7 + T.watchdogTimeout).state;
    expect(s.phase).toBe('fencing');
  });
});

describe('host lifecycle: never fires', () => {
  /** Drives the machine through a scripted run, one event at a time, collecting effects. */
  function run(events: [number, HostEvent][]): { phases: Set<HostPhase>; effects: string[] } {
    let s: HostState = initialHostState();
    const phases = new Set<HostPhase>();
    const effects: string[] = [];
    for (const [now, e] of events) {
      const r = evaluate(T, s, e, now);
      s = r.state;
      phases.add(s.phase);
      effects.push(...kinds(r.effects));
      const tick = evaluate(T, s, { kind: 'tick' }, now);
      s = tick.state;
      phases.add(s.phase);
      effects.push(...kinds(tick.effects));
    }
    return { phases, effects };
  }

  it('heartbeats acknowledged for 1,000 TTLs: never detached, never a stop', () => {
    const ev: [number, HostEvent][] = [[0, { kind: 'registered', epoch: 1, sentAt: 0 }]];
    for (let t = T.heartbeatInterval; t < 1000 * T.ttl; t += T.heartbeatInterval) {
      ev.push([t + 30, { kind: 'heartbeat-acked', sentAt: t }]);
    }
    const r = run(ev);
    expect([...r.phases]).toEqual(['attached']);
    expect(r.effects).toEqual([]);
  });

  it('blips and elections shorter than the watchdog, repeated 500 times: detached sometimes, never a stop', () => {
    const ev: [number, HostEvent][] = [[0, { kind: 'registered', epoch: 1, sentAt: 0 }]];
    let t = 0;
    let seed = 7;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let i = 0; i < 500; i++) {
      // outage of up to watchdogTimeout - heartbeatInterval - 1 ms (the ack after it is sent before the deadline)
      const outage = Math.floor(rnd() * (T.watchdogTimeout - T.heartbeatInterval - 1));
      const lastAck = t;
      for (let m = lastAck + T.heartbeatInterval; m < lastAck + outage; m += T.heartbeatInterval) {
        ev.push([m + T.heartbeatInterval, { kind: 'heartbeat-missed', sentAt: m }]);
      }
      const back = lastAck + outage + 1;
      ev.push([back + 20, { kind: 'heartbeat-acked', sentAt: back }]);
      t = back;
      for (let k = 0; k < 5; k++) {
        t += T.heartbeatInterval;
        ev.push([t + 10, { kind: 'heartbeat-acked', sentAt: t }]);
      }
    }
    const r = run(ev);
    expect(r.phases.has('detached')).toBe(true);
    expect(r.effects.filter((e) => e === 'stop-vms')).toEqual([]);
    expect(r.phases.has('fencing')).toBe(false);
  });

  it('fires exactly once, at lastAck + watchdogTimeout, in a long partition', () => {
    let s = evaluate(T, initialHostState(), { kind: 'registered', epoch: 1, sentAt: 0 }, 0).state;
    const stops: number[] = [];
    for (let now = 0; now <= 60_000; now += 10) {
      const r = evaluate(T, s, { kind: 'tick' }, now);
      s = r.state;
      if (kinds(r.effects).includes('stop-vms')) stops.push(now);
    }
    expect(stops).toEqual([T.watchdogTimeout]);
  });
});

describe('host lifecycle: restart', () => {
  it('a persisted lastAck keeps its deadline; an interrupted fence or cleanup resumes', () => {
    const s = initialHostState({ lastAck: 500, epoch: 2 });
    expect(s.phase).toBe('detached');
    expect(nextDeadline(T, s)).toBe(500 + T.watchdogTimeout);
    expect(resumeEffects(initialHostState({ phase: 'fencing', lastAck: 1 }))).toEqual([{ kind: 'stop-vms', reason: 'watchdog' }]);
    expect(resumeEffects(initialHostState({ phase: 'cleaning' }))).toEqual([{ kind: 'run-cleanup' }]);
    expect(resumeEffects(initialHostState())).toEqual([{ kind: 'register', mode: 'reattach' }]);
  });
});

describe('guardian deadline: what the out-of-process fence is fed', () => {
  it('is lastAck + watchdogTimeout + stopGrace + killTimeout / 2 while attached, suspect or detached and not held', () => {
    for (const phase of ['attached', 'suspect', 'detached'] as const) {
      expect(guardianDeadline(T, base(phase))).toBe(1000 + T.watchdogTimeout + T.stopGrace + T.killTimeout / 2);
    }
  });
  it('is suspended (null) only while the host applies a hold', () => {
    expect(guardianDeadline(T, base('attached', { held: true }))).toBeNull();
    expect(guardianDeadline(T, base('detached', { held: false, heldAtDetach: true }))).toBeNull();
    // A hold read after the detachment does not suspend anything.
    expect(guardianDeadline(T, base('detached', { held: true, heldAtDetach: false }))).toBe(1000 + T.watchdogTimeout + T.stopGrace + T.killTimeout / 2);
  });
  it('says nothing before the first acknowledged heartbeat and once the fence started', () => {
    expect(guardianDeadline(T, base('starting', { lastAck: undefined }))).toBeUndefined();
    for (const phase of ['fencing', 'cleaning', 'clean', 'rejoining'] as const) expect(guardianDeadline(T, base(phase))).toBeUndefined();
  });
  it('fires after the agent forced its own stop, and leaves half a killTimeout before the bound the controller relies on', () => {
    const d = guardianDeadline(T, base('attached'))!;
    expect(d).toBeGreaterThan(1000 + T.watchdogTimeout + T.stopGrace);
    expect(d + T.killTimeout / 2).toBe(1000 + T.watchdogTimeout + T.stopGrace + T.killTimeout);
  });
});
