import { describe, expect, it } from 'vitest';
import { clusterCreate, clusterDelete } from '../../src/cli/cluster-vms.js';
import { holdColumn } from '../../src/cli/commands/host.js';
import { DEFAULT_TIMINGS } from '../../src/domain/gc-timing.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import { specFromFlintlock } from '../../src/api/grpc/spec-mapping.js';
import { expectCode } from '../support/expect-code.js';
import { FakeClock } from '../support/fake-clock.js';
import { sampleSpec } from '../support/host-harness.js';
import { ModelControllerStore } from '../support/model-cluster.js';

function host(store: ModelControllerStore, hostId: string, extra: Partial<HostRecord> = {}, alive = true): void {
  const rec: HostRecord = { hostId, state: 'attached', epoch: 2, timings: DEFAULT_TIMINGS, hold: false, capacity: { vcpu: 4, memoryMb: 1024 }, labels: {}, agentVersion: 't', updatedAt: 0, ...extra };
  store.putRaw(`hosts/${hostId}/record`, rec);
  if (alive) store.putRaw(`hosts/${hostId}/alive`, { epoch: rec.epoch, agentVersion: 't' }, store.grantLease(6000));
}


describe('cluster VM operations (tether vm ... --etcd-endpoints)', () => {
  it('places by capacity on a schedulable host at its epoch, or on --host; never on a held, detached or dead host', async () => {
    const store = new ModelControllerStore(new FakeClock());
    host(store, 'a', { capacity: { vcpu: 4, memoryMb: 512 } });
    host(store, 'b', { capacity: { vcpu: 4, memoryMb: 2048 } });
    host(store, 'held', { hold: true, capacity: { vcpu: 64, memoryMb: 65536 } });
    host(store, 'releasing', { hold: false, holdSeen: true, capacity: { vcpu: 64, memoryMb: 65536 } }); // release not acknowledged yet
    host(store, 'gone', { state: 'detached', capacity: { vcpu: 64, memoryMb: 65536 } });
    host(store, 'dead', { capacity: { vcpu: 64, memoryMb: 65536 } }, false);
    const c = await clusterCreate(store, sampleSpec('one', 'ns'));
    expect(c.record).toMatchObject({ hostId: 'b', hostEpoch: 2, phase: 'pending', generation: 1 });
    expect((await clusterCreate(store, sampleSpec('two', 'ns'), 'a')).record.hostId).toBe('a');
    await expectCode(clusterCreate(store, sampleSpec('one', 'ns')), 'ALREADY_EXISTS');
    await expectCode(clusterCreate(store, sampleSpec('x', 'ns'), 'nope'), 'NOT_FOUND');
    await expectCode(clusterCreate(store, sampleSpec('x', 'ns'), 'held'), 'FAILED_PRECONDITION');
    await expectCode(clusterCreate(store, sampleSpec('x', 'ns'), 'releasing'), 'FAILED_PRECONDITION');
    await expectCode(clusterCreate(store, sampleSpec('x', 'ns'), 'gone'), 'FAILED_PRECONDITION');
    expect((await store.listVms(1000)).map((v) => v.key).sort()).toEqual(['ns/one', 'ns/two']);
  });

  it('without capacity the VM waits pending with the reason; bad specs are refused before anything is written', async () => {
    const store = new ModelControllerStore(new FakeClock());
    host(store, 'small', { capacity: { vcpu: 1, memoryMb: 64 } });
    const c = await clusterCreate(store, sampleSpec('big', 'ns'));
    expect(c.record.hostId).toBeUndefined();
    expect(c.record.reason).toMatch(/no host has/);
    expect(() => specFromFlintlock({ id: 'Bad_Name', namespace: 'ns', vcpu: 0, memory_in_mb: 96 })).toThrow(/microvm\.(id|vcpu)/);
    expect((await store.listVms(1000)).map((v) => v.key)).toEqual(['ns/big']);
  });

  it('delete marks a placed VM deleting (its host removes it) and removes an unplaced one at once', async () => {
    const store = new ModelControllerStore(new FakeClock());
    host(store, 'a');
    await clusterCreate(store, sampleSpec('placed', 'ns'));
    expect(await clusterDelete(store, 'ns/placed')).toBe('deleting');
    expect((await store.listVms(1000)).find((v) => v.key === 'ns/placed')?.record.phase).toBe('deleting');
    host(store, 'a', { hold: true });
    await clusterCreate(store, sampleSpec('waiting', 'ns'));
    expect(await clusterDelete(store, 'ns/waiting')).toBe('removed');
    await expectCode(clusterDelete(store, 'ns/none'), 'NOT_FOUND');
  });

  it('an unreadable record is neither overwritten by a create nor invisible to a delete; it is reported once per revision', async () => {
    const store = new ModelControllerStore(new FakeClock());
    host(store, 'a');
    const reports: string[] = [];
    store.invalidRecords.subscribe((r) => reports.push(`${r.key} ${r.error.field}@${r.revision}`));
    const rev = store.putRaw('vms/ns/bad', { uid: 'inventory.db', spec: sampleSpec('bad', 'ns'), phase: 'running', generation: 1 });
    const err = await expectCode(clusterCreate(store, sampleSpec('bad', 'ns')), 'ALREADY_EXISTS');
    expect(err.message).toMatch(/vms\/ns\/bad: uid: /);
    await clusterCreate(store, sampleSpec('other', 'ns'));
    expect(reports).toEqual([`vms/ns/bad uid@${rev}`]);
    expect(await clusterDelete(store, 'ns/bad')).toBe('removed');
    expect((await store.scanVms(1000)).invalid).toEqual([]);
  });
});

describe('tether host list: the HOLD column shows the hold requested AND acknowledged', () => {
  // [hold, holdSeen, heldAtDetach, state, shown]
  const rows: [boolean, boolean | undefined, boolean, HostRecord['state'], string][] = [
    [false, undefined, false, 'attached', 'no'],
    [true, undefined, false, 'attached', 'held (not acked)'],
    [true, false, false, 'attached', 'held (not acked)'],
    [true, true, false, 'attached', 'held (ack)'],
    [false, true, false, 'attached', 'release pending ack'],
    [false, false, true, 'detached', 'at detach'],
    [true, true, true, 'detached', 'held (ack)'],
    [false, false, true, 'fenced', 'no'],
  ];
  it.each(rows)('hold=%s holdSeen=%s heldAtDetach=%s %s -> %s', (hold, holdSeen, heldAtDetach, state, shown) => {
    expect(holdColumn({ hold, ...(holdSeen === undefined ? {} : { holdSeen }), heldAtDetach, state })).toBe(shown);
  });
});
