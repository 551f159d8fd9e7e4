import { describe, expect, it } from 'vitest';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { holdsCapacity, lostWithHost, markLost, restartPolicyOf, staleOnRejoinedHost } from '../../src/domain/cluster-vm.js';
import { DEFAULT_TIMINGS } from '../../src/domain/gc-timing.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import { aboveLimit, countPool, evaluateFreeze, fencingAllowed, NOT_FROZEN, type FreezeState } from '../../src/domain/mass-freeze.js';
import { isSchedulable, placeVms } from '../../src/domain/placement.js';
import type { VmSpec } from '../../src/domain/vm.js';
import { bareSpec } from '../support/host-harness.js';

describe('mass-disruption freeze (pure)', () => {
  const opts = { limit: 0.55, window: 10_000 };

  it('counts the pool: attached, ready and detached; fenced and retired are out', () => {
    const states = { a: 'attached', r: 'ready', d: 'detached', f: 'fenced', x: 'retired' } as const;
    expect(countPool((id) => ({ state: states[id as keyof typeof states], alive: true }), Object.keys(states))).toEqual({ detached: 1, total: 3 });
  });

  it('is strictly above the limit: 1/2 and 0/0 are not, 2/3 and 1/1 are', () => {
    expect(aboveLimit({ detached: 1, total: 2 }, 0.55)).toBe(false);
    expect(aboveLimit({ detached: 0, total: 0 }, 0.55)).toBe(false);
    expect(aboveLimit({ detached: 2, total: 3 }, 0.55)).toBe(true);
    expect(aboveLimit({ detached: 1, total: 1 }, 0.55)).toBe(true);
    expect(aboveLimit({ detached: 11, total: 20 }, 0.55)).toBe(false); // exactly 55 %
    expect(aboveLimit({ detached: 12, total: 20 }, 0.55)).toBe(true);
  });

  it('enters, falls back, waits a full window, resumes', () => {
    let s: FreezeState = NOT_FROZEN;
    const step = (detached: number, total: number, now: number) => {
      const r = evaluateFreeze(s, { detached, total }, now, opts);
      s = r.state;
      return r.transition;
    };
    expect(step(1, 3, 0)).toBeUndefined();
    expect(fencingAllowed(s)).toBe(true);
    expect(step(2, 3, 100)).toBe('entered');
    expect(fencingAllowed(s)).toBe(false);
    expect(step(3, 3, 200)).toBeUndefined();
    expect(step(1, 3, 5_000)).toBe('fell-back');
    expect(s).toMatchObject({ mode: 'resuming', resumeAt: 15_000 });
    expect(fencingAllowed(s)).toBe(false);
    expect(step(1, 3, 14_999)).toBeUndefined();
    expect(fencingAllowed(s)).toBe(false);
    expect(step(1, 3, 15_000)).toBe('resumed');
    expect(fencingAllowed(s)).toBe(true);
  });

  it('going above the limit again while resuming freezes again, and the window restarts after the next fall-back', () => {
    let s: FreezeState = evaluateFreeze(NOT_FROZEN, { detached: 3, total: 4 }, 0, opts).state;
    s = evaluateFreeze(s, { detached: 1, total: 4 }, 1000, opts).state;
    const again = evaluateFreeze(s, { detached: 3, total: 4 }, 5000, opts);
    expect(again.transition).toBe('entered');
    s = evaluateFreeze(again.state, { detached: 1, total: 4 }, 8000, opts).state;
    expect(s).toMatchObject({ mode: 'resuming', resumeAt: 18_000 });
  });

  it('never: while frozen or resuming, fencing is not allowed at any time before resumeAt', () => {
    let s: FreezeState = evaluateFreeze(NOT_FROZEN, { detached: 2, total: 3 }, 0, opts).state;
    for (let t = 0; t < 100_000; t += 1000) {
      s = evaluateFreeze(s, { detached: 2, total: 3 }, t, opts).state;
      expect(fencingAllowed(s)).toBe(false);
    }
    s = evaluateFreeze(s, { detached: 0, total: 3 }, 100_000, opts).state;
    for (let t = 100_000; t < 110_000; t += 500) {
      s = evaluateFreeze(s, { detached: 0, total: 3 }, t, opts).state;
      expect(fencingAllowed(s)).toBe(false);
    }
  });
});

const spec = (vcpu: number, memoryMb: number, name = 'x'): VmSpec => bareSpec(name, vcpu, memoryMb);
const vm = (over: Partial<ClusterVmRecord>): ClusterVmRecord => ({ uid: 'u', spec: spec(1, 128), phase: 'running', generation: 1, ...over });
const host = (hostId: string, vcpu: number, memoryMb: number, epoch = 1) => ({ hostId, epoch, capacity: { vcpu, memoryMb } });

describe('cluster VM records', () => {
  it('restart policy defaults to reschedule; lost VMs hold no capacity', () => {
    expect(restartPolicyOf({})).toBe('reschedule');
    expect(restartPolicyOf({ restartPolicy: 'none' })).toBe('none');
    expect(holdsCapacity(vm({ hostId: 'a' }))).toBe(true);
    expect(holdsCapacity(vm({ hostId: 'a', phase: 'lost' }))).toBe(false);
    expect(holdsCapacity(vm({ phase: 'pending' }))).toBe(false);
  });
  it('fencing a host at epoch e loses its VMs of epochs <= e, not others', () => {
    expect(lostWithHost(vm({ hostId: 'a', hostEpoch: 2 }), 'a', 2)).toBe(true);
    expect(lostWithHost(vm({ hostId: 'a', hostEpoch: 1 }), 'a', 2)).toBe(true);
    expect(lostWithHost(vm({ hostId: 'a', hostEpoch: 3 }), 'a', 2)).toBe(false);
    expect(lostWithHost(vm({ hostId: 'b', hostEpoch: 2 }), 'a', 2)).toBe(false);
    expect(lostWithHost(vm({ hostId: 'a', hostEpoch: 2, phase: 'lost' }), 'a', 2)).toBe(false);
    expect(staleOnRejoinedHost(vm({ hostId: 'a', hostEpoch: 1 }), { hostId: 'a', epoch: 2, state: 'ready' })).toBe(true);
    expect(staleOnRejoinedHost(vm({ hostId: 'a', hostEpoch: 2 }), { hostId: 'a', epoch: 2, state: 'ready' })).toBe(false);
    expect(staleOnRejoinedHost(vm({ hostId: 'a', hostEpoch: 1 }), { hostId: 'a', epoch: 2, state: 'detached' })).toBe(false);
    expect(staleOnRejoinedHost(vm({ hostId: 'a', hostEpoch: 1, phase: 'lost' }), { hostId: 'a', epoch: 2, state: 'attached' })).toBe(false);
    expect(staleOnRejoinedHost(vm({ hostId: 'b', hostEpoch: 1 }), { hostId: 'a', epoch: 2, state: 'ready' })).toBe(false);
    expect(markLost(vm({ generation: 4 }), 'why', 9)).toMatchObject({ phase: 'lost', generation: 5, reason: 'why', updatedAt: 9 });
  });
});

describe('placement (pure)', () => {
  it('spreads by free memory, then vCPU, then host id', () => {
    const p = placeVms(
      [
        { key: 'ns/1', spec: spec(1, 512) },
        { key: 'ns/2', spec: spec(1, 512) },
        { key: 'ns/3', spec: spec(1, 512) },
      ],
      [host('b', 4, 2048), host('a', 4, 2048), host('c', 4, 1024)],
      [],
    );
    expect(p.map((x) => ('hostId' in x ? x.hostId : x.reason))).toEqual(['a', 'b', 'a']);
  });

  it('counts existing capacity-holding VMs and earlier placements; never overcommits', () => {
    const existing = [vm({ hostId: 'a', spec: spec(3, 1000) }), vm({ hostId: 'a', phase: 'lost', spec: spec(4, 4000) })];
    const p = placeVms(
      [
        { key: 'ns/1', spec: spec(1, 1000) },
        { key: 'ns/2', spec: spec(1, 100) },
      ],
      [host('a', 4, 2048, 7)],
      existing,
    );
    expect(p[0]).toEqual({ key: 'ns/1', hostId: 'a', hostEpoch: 7 });
    expect(p[1]).toMatchObject({ key: 'ns/2' });
    expect('reason' in p[1]! && p[1].reason).toBe('no host has 1 vCPU and 100 MiB free (1 schedulable host)');
  });

  it('no schedulable host: pending with the reason', () => {
    const [p] = placeVms([{ key: 'ns/1', spec: spec(1, 96) }], [], []);
    expect(p).toEqual({ key: 'ns/1', reason: expect.stringMatching(/no schedulable host/) });
  });

  it('random workloads never exceed any host capacity', () => {
    for (let round = 0; round < 50; round++) {
      const hosts = Array.from({ length: 1 + (round % 5) }, (_, i) => host(`h${i}`, 1 + ((round * 7 + i) % 8), 256 * (1 + ((round + i) % 8))));
      const reqs = Array.from({ length: 20 }, (_, i) => ({ key: `ns/${i}`, spec: spec(1 + (i % 3), 64 * (1 + ((i * round) % 6))) }));
      const p = placeVms(reqs, hosts, []);
      for (const h of hosts) {
        const mine = p.filter((x) => 'hostId' in x && x.hostId === h.hostId).map((x) => reqs.find((r) => r.key === x.key)!.spec);
        expect(mine.reduce((s, x) => s + x.vcpu, 0)).toBeLessThanOrEqual(h.capacity.vcpu);
        expect(mine.reduce((s, x) => s + x.memoryMb, 0)).toBeLessThanOrEqual(h.capacity.memoryMb);
      }
    }
  });

  it('schedulable hosts: attached or ready, alive, not held (requested or acknowledged), safe timings', () => {
    const r = (over: Partial<HostRecord>): HostRecord => ({
      hostId: 'a',
      state: 'attached',
      epoch: 1,
      timings: DEFAULT_TIMINGS,
      hold: false,
      capacity: { vcpu: 1, memoryMb: 1 },
      labels: {},
      agentVersion: 't',
      updatedAt: 0,
      ...over,
    });
    expect(isSchedulable(r({}), true)).toBe(true);
    expect(isSchedulable(r({ state: 'ready' }), true)).toBe(true);
    expect(isSchedulable(r({}), false)).toBe(false);
    expect(isSchedulable(r({ hold: true }), true)).toBe(false);
    expect(isSchedulable(r({ hold: true, holdSeen: true }), true)).toBe(false);
    expect(isSchedulable(r({ hold: false, holdSeen: true }), true)).toBe(false); // release not acknowledged: still held
    expect(isSchedulable(r({ hold: false, holdSeen: false }), true)).toBe(true);
    expect(isSchedulable(r({ state: 'detached' }), true)).toBe(false);
    expect(isSchedulable(r({ state: 'fenced' }), true)).toBe(false);
    expect(isSchedulable(r({ timings: { ...DEFAULT_TIMINGS, fenceWindow: 0 } }), true)).toBe(false);
    expect(isSchedulable(undefined, true)).toBe(false);
  });
});
