/**
 * A host that registers at a newer epoch (it fenced itself — watchdog or guardian — cleaned, and
 * rejoined `ready`) no longer runs its VMs of older epochs: the controller's pure core must mark them
 * lost and place them again at once, not at the next GC tick (up to `gcInterval`, 60 s, later).
 * Found by the simulator (seed 89: agent crash + quorum loss; the host came back at the same epoch,
 * the guardian killed its VMs, it rejoined at epoch 2 while the sweeps had run before the bump).
 */
import { describe, expect, it } from 'vitest';
import { calls, Driver, entry, eventKinds, rec, vm } from '../support/controller-step.js';

describe('controller core: a host registered at a newer epoch', () => {
  // [what, record before (state, epoch), record after, expect a sweep]
  const rows: [string, { state: 'attached' | 'ready' | 'detached'; epoch: number }, { state: 'attached' | 'ready'; epoch: number }, boolean][] = [
    ['attached at 1 -> ready at 2 (rejoined after its own fence): sweep now', { state: 'attached', epoch: 1 }, { state: 'ready', epoch: 2 }, true],
    ['detached at 1 -> ready at 2: sweep now', { state: 'detached', epoch: 1 }, { state: 'ready', epoch: 2 }, true],
    ['ready at 2 -> attached at 2 (same epoch): no sweep of its own', { state: 'ready', epoch: 2 }, { state: 'attached', epoch: 2 }, false],
    ['attached at 1 -> attached at 1 (heartbeat-era rewrite): no sweep', { state: 'attached', epoch: 1 }, { state: 'attached', epoch: 1 }, false],
  ];
  for (const [what, before, after, sweep] of rows) {
    it(what, () => {
      const d = new Driver();
      d.leading([entry('a', before), entry('b')], undefined, [vm('v1', { hostEpoch: 1 })]);
      const fx = d.hostEvent({ kind: 'record', hostId: 'a', record: rec('a', after), revision: '120' });
      expect(eventKinds(fx).includes('vm-lost')).toBe(sweep);
    });
  }

  it('the sweep it starts marks the older-epoch VM lost (from the VM cache), then places it', () => {
    const d = new Driver();
    d.leading([entry('a', { state: 'attached', epoch: 1 }), entry('b')], undefined, [vm('v1', { hostEpoch: 1 })]);
    const fx = d.hostEvent({ kind: 'record', hostId: 'a', record: rec('a', { state: 'ready', epoch: 2 }), revision: '120' });
    const swept = fx;
    expect(eventKinds(swept)).toEqual(['vm-lost']);
    const commit = calls(swept, 'commit')[0]!.call;
    if (commit.op !== 'commit') throw new Error('not a commit');
    // guarded by the host record at the new epoch: a host that moved on again makes it conflict
    expect(commit.change.guards).toEqual([{ hostId: 'a', expectRevision: '120' }]);
    expect(commit.change.vms![0]!.next).toMatchObject({ uid: 'u-v1', phase: 'lost', hostId: 'a', hostEpoch: 1 });
  });
});
