import { describe, expect, it } from 'vitest';
import { clusterPhaseOf, planSync, type ClusterVmView } from '../../src/domain/cluster-vm-sync.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { sampleSpec } from '../support/host-harness.js';

const rec = (key: string, uid: string, extra: Partial<ClusterVmRecord>): ClusterVmView => ({
  key,
  record: { uid, spec: sampleSpec(key.split('/')[1]!, key.split('/')[0]!), phase: 'pending', generation: 1, ...extra },
});

describe('planSync (what a host does with the cluster records)', () => {
  it('creates only records placed on this host at its current epoch', () => {
    const p = planSync(
      'a',
      3,
      [
        rec('ns/mine', 'u1', { hostId: 'a', hostEpoch: 3 }),
        rec('ns/old', 'u2', { hostId: 'a', hostEpoch: 2 }),
        rec('ns/other', 'u3', { hostId: 'b', hostEpoch: 3 }),
        rec('ns/unplaced', 'u4', {}),
        rec('ns/failed-here', 'u5', { hostId: 'a', hostEpoch: 3, phase: 'failed', reason: 'unknown image' }),
      ],
      [],
    );
    expect(p.create.map((v) => v.key)).toEqual(['ns/mine']);
    expect(p.deleteLocal).toEqual([]);
  });

  it('deletes local VMs whose record is gone, moved, lost or being deleted; removes the record once the VM is gone', () => {
    const records = [
      rec('ns/moved', 'u1', { hostId: 'b', hostEpoch: 1 }),
      rec('ns/lost', 'u2', { hostId: 'a', hostEpoch: 3, phase: 'lost' }),
      rec('ns/del', 'u3', { hostId: 'a', hostEpoch: 3, phase: 'deleting' }),
      rec('ns/done', 'u5', { hostId: 'a', hostEpoch: 3, phase: 'deleting' }),
    ];
    const local = ['u1', 'u2', 'u3', 'u4'].map((uid) => ({ uid, phase: 'running' as const, desired: 'present' as const }));
    const p = planSync('a', 3, records, local);
    expect([...p.deleteLocal].sort()).toEqual(['u1', 'u2', 'u3', 'u4']);
    expect(p.removeRecord.map((v) => v.key)).toEqual(['ns/done']);
    expect(p.create).toEqual([]);
  });

  it('a drained record whose VM is gone locally is released (marked lost to be placed elsewhere), not removed', () => {
    const p = planSync('a', 1, [rec('ns/d', 'u1', { hostId: 'a', hostEpoch: 1, phase: 'deleting', drain: true })], []);
    expect(p.release.map((v) => v.key)).toEqual(['ns/d']);
    expect(p.removeRecord).toEqual([]);
    const running = planSync('a', 1, [rec('ns/d', 'u1', { hostId: 'a', hostEpoch: 1, phase: 'deleting', drain: true })], [{ uid: 'u1', phase: 'running', desired: 'present' }]);
    expect(running.deleteLocal).toEqual(['u1']);
    expect(running.release).toEqual([]);
  });

  it('never deletes or stops a VM whose record exists but cannot be read (kept as it is, no status written)', () => {
    const local = [
      { uid: 'u1', phase: 'running' as const, desired: 'present' as const, key: 'ns/unreadable' },
      { uid: 'u2', phase: 'running' as const, desired: 'present' as const, key: 'ns/gone' },
    ];
    const p = planSync('a', 3, [], local, ['ns/unreadable']);
    expect(p.deleteLocal).toEqual(['u2']);
    expect(p.kept).toEqual(['u1']);
    expect(p.status).toEqual([]);
    // Without the unreadable key the same VM would be deleted: the guard is what keeps it.
    expect(planSync('a', 3, [], local).deleteLocal).toEqual(['u1', 'u2']);
    // A readable record that asks for deletion still wins over nothing.
    const del = planSync('a', 3, [rec('ns/unreadable', 'u1', { hostId: 'a', hostEpoch: 3, phase: 'deleting' })], local, []);
    expect(del.deleteLocal).toContain('u1');
  });

  it('reports the local phase back, and nothing when it already matches', () => {
    const records = [rec('ns/a', 'u1', { hostId: 'a', hostEpoch: 1, phase: 'pending' }), rec('ns/b', 'u2', { hostId: 'a', hostEpoch: 1, phase: 'running' })];
    const p = planSync('a', 1, records, [
      { uid: 'u1', phase: 'running', desired: 'present' },
      { uid: 'u2', phase: 'running', desired: 'present' },
    ]);
    expect(p.status.map((s) => [s.view.key, s.phase])).toEqual([['ns/a', 'running']]);
    expect(clusterPhaseOf('creating')).toBe('creating');
    expect(clusterPhaseOf('deleted')).toBe('deleting');
  });
});
