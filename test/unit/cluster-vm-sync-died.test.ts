/**
 * A VM that ran on this host and died with it (a reboot shorter than the lease TTL, or the guardian's
 * kill while the host reattached at the same epoch): the reconciler finds its process gone and marks
 * it `failed`; the record still places it here at this epoch, `running`. Before, the host reported it
 * `failed` and nobody ever ran it again (the controller never moves a `failed` VM, the agent never
 * restarted one). Now the host deletes the dead local VM and re-creates it from the record.
 */
import { describe, expect, it } from 'vitest';
import { diedHere, planSync, type ClusterVmView, type LocalVm } from '../../src/domain/cluster-vm-sync.js';
import type { ClusterVmPhase, ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import type { VmPhase } from '../../src/domain/vm.js';
import { sampleSpec } from '../support/host-harness.js';

const rec = (uid: string, extra: Partial<ClusterVmRecord>): ClusterVmView => ({
  key: `ns/${uid}`,
  record: { uid, spec: sampleSpec(uid, 'ns'), hostId: 'a', hostEpoch: 3, phase: 'running', generation: 4, ...extra },
});
const local = (uid: string, phase: VmPhase, desired: 'present' | 'absent' = 'present'): LocalVm => ({ uid, phase, desired, key: `ns/${uid}` });

describe('a VM that ran here and died (diedHere / planSync)', () => {
  // [what, record phase, local phase, local desired, died here]
  const rows: [string, ClusterVmPhase, VmPhase, 'present' | 'absent', boolean][] = [
    ['record running, local failed (process gone after the agent was down): died here', 'running', 'failed', 'present', true],
    ['record creating, local failed (a create that failed here): not', 'creating', 'failed', 'present', false],
    ['record pending, local failed: not', 'pending', 'failed', 'present', false],
    ['record running, local running: not', 'running', 'running', 'present', false],
    ['record running, local failed but being deleted: not (the delete goes on)', 'running', 'failed', 'absent', false],
  ];
  for (const [what, rp, lp, desired, want] of rows) {
    it(what, () => expect(diedHere({ phase: rp }, { phase: lp, desired })).toBe(want));
  }

  it('round 1: the dead VM is deleted locally and `failed` is NOT written to its record', () => {
    const p = planSync('a', 3, [rec('u1', {})], [local('u1', 'failed')]);
    expect(p.deleteLocal).toEqual(['u1']);
    expect(p.status).toEqual([]);
    expect(p.create).toEqual([]);
  });

  it('round 2 (local row gone): re-created from its record, same uid, on this host at this epoch', () => {
    const p = planSync('a', 3, [rec('u1', {})], []);
    expect(p.create.map((v) => v.record.uid)).toEqual(['u1']);
  });

  it('while the local delete runs (desired absent): neither re-created nor reported', () => {
    const p = planSync('a', 3, [rec('u1', {})], [local('u1', 'deleting', 'absent')]);
    expect(p).toMatchObject({ create: [], deleteLocal: [], status: [] });
  });

  it('only at the current epoch: a record of an older epoch is never re-created (the controller marks it lost)', () => {
    const p = planSync('a', 4, [rec('u1', {})], [local('u1', 'failed')]);
    expect(p.create).toEqual([]);
    expect(p.status).toEqual([]);
    expect(p.deleteLocal).toEqual(['u1']); // not this epoch's work: its leftovers go
  });

  it('a create that failed here is still reported failed, and not retried', () => {
    const p = planSync('a', 3, [rec('u1', { phase: 'creating' })], [local('u1', 'failed')]);
    expect(p.status).toEqual([{ view: rec('u1', { phase: 'creating' }), phase: 'failed' }]);
    expect(p.deleteLocal).toEqual([]);
    const next = planSync('a', 3, [rec('u1', { phase: 'failed' })], [local('u1', 'failed')]);
    expect(next).toMatchObject({ create: [], deleteLocal: [], status: [] });
  });
});
