import { describe, expect, it } from 'vitest';
import { describeHold, nextHoldStep } from '../../src/domain/hold.js';
import { decideRegistration } from '../../src/domain/registration.js';

describe('registration rules', () => {
  const me = { agentId: 'me' };
  it.each([
    // [mode, host epoch, record, alive holder, expected]
    ['reattach', 0, undefined, undefined, 'ok attached 1'],
    ['reattach', 2, undefined, undefined, 'fenced'],
    ['reattach', 2, { state: 'attached', epoch: 2 }, undefined, 'ok attached 2'],
    ['reattach', 2, { state: 'detached', epoch: 2 }, undefined, 'ok attached 2'],
    ['reattach', 2, { state: 'fenced', epoch: 2 }, undefined, 'fenced'],
    ['reattach', 2, { state: 'retired', epoch: 2 }, undefined, 'fenced'],
    ['reattach', 0, { state: 'attached', epoch: 2 }, undefined, 'epoch-mismatch'],
    ['ready', 2, { state: 'fenced', epoch: 2 }, undefined, 'ok ready 3'],
    ['ready', 2, { state: 'detached', epoch: 2 }, undefined, 'ok ready 3'],
    ['ready', 0, undefined, undefined, 'ok ready 1'],
    // An agent from another state dir (epoch 0) must not skip the fence window of another agent's VMs.
    ['ready', 0, { state: 'detached', epoch: 2 }, undefined, 'epoch-mismatch'],
    ['ready', 0, { state: 'attached', epoch: 2 }, undefined, 'epoch-mismatch'],
    ['ready', 0, { state: 'fenced', epoch: 2 }, undefined, 'ok ready 3'],
    // One agent per host id: the alive key of another agent instance refuses every registration.
    ['reattach', 2, { state: 'attached', epoch: 2 }, { agentId: 'other', lease: '7' }, 'duplicate'],
    ['ready', 2, { state: 'fenced', epoch: 2 }, { agentId: 'other', lease: '7' }, 'duplicate'],
    ['reattach', 2, { state: 'attached', epoch: 2 }, { lease: '7' }, 'duplicate'],
    // Our own previous incarnation's alive key (restart within the TTL): allowed.
    ['reattach', 2, { state: 'attached', epoch: 2 }, { agentId: 'me', lease: '7' }, 'ok attached 2'],
  ] as const)('%s at epoch %i, record %j, alive %j -> %s', (mode, epoch, rec, alive, want) => {
    const d = decideRegistration({ mode, epoch, ...me }, rec, alive);
    expect(d.ok ? `ok ${d.state} ${d.epoch}` : d.reason).toBe(want);
  });
  it('names the holder of a duplicate', () => {
    const d = decideRegistration({ mode: 'reattach', epoch: 1, agentId: 'me' }, undefined, { agentId: 'x', holder: 'tether agent pid 12 on m1, state dir /s', lease: '9' });
    expect(d.ok ? '' : d.detail).toMatch(/pid 12 on m1, state dir \/s on lease 9/);
  });
});

describe('hold protocol: applied => seen at every step', () => {
  it.each([
    // [requested, applied, seen, step]
    [false, false, false, 'none'],
    [true, false, false, 'ack-then-apply'],
    [true, false, true, 'apply'],
    [true, true, true, 'none'],
    [false, true, true, 'drop-then-ack'],
    [false, false, true, 'ack-release'],
    [true, true, false, 'drop-then-ack'],
    [false, true, false, 'drop-then-ack'],
  ] as const)('requested %s, applied %s, seen %s -> %s', (r, a, s, step) => {
    expect(nextHoldStep(r, a, s).kind).toBe(step);
  });

  it('no step ever applies a hold while seen is false, whatever the order of ambiguous commits', () => {
    // Explore every sequence of (operator flips, host step, commit lost/applied) up to depth 6.
    type S = { requested: boolean; applied: boolean; seen: boolean };
    const explore = (s: S, depth: number): void => {
      expect(!s.applied || s.seen).toBe(true);
      if (depth === 0) return;
      explore({ ...s, requested: !s.requested }, depth - 1);
      const step = nextHoldStep(s.requested, s.applied, s.seen).kind;
      for (const commitLands of [true, false]) {
        for (const hostLearns of [true, false]) {
          let n = { ...s };
          if (step === 'ack-then-apply') {
            if (commitLands) n.seen = true;
            if (commitLands && hostLearns) n.applied = true;
          } else if (step === 'apply') n.applied = true;
          else if (step === 'drop-then-ack') {
            n.applied = false;
            if (commitLands) n.seen = false;
          } else if (step === 'ack-release' && commitLands) n.seen = false;
          n = { ...n };
          explore(n, depth - 1);
        }
      }
    };
    explore({ requested: false, applied: false, seen: false }, 6);
  });

  it('describes requested and acknowledged holds', () => {
    expect(describeHold(true, true)).toBe('held');
    expect(describeHold(true, false)).toBe('hold not acked');
    expect(describeHold(false, true)).toBe('release not acked');
    expect(describeHold(false, false)).toBe('no');
  });
});
