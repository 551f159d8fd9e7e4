/**
 * The per-host VM index (`hostvms/<hostId>/<ns>/<name>`, Keyspace.hostVm): `changeTxn` keeps it in
 * the record's own txn, and the op counts the batching formulas use count its ops. Checked on the
 * txn built and, committed through the real store on the etcd model, on the invariant itself.
 */
import { describe, expect, it } from 'vitest';
import { changeTxn } from '../../src/domain/change-txn.js';
import { DEFAULT_TXN_LIMITS, estimateTxnBytes, txnOpCounts, vmWriteOps, type ClusterChange, type VmWrite } from '../../src/domain/cluster-change.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { markLost } from '../../src/domain/cluster-vm.js';
import { vmsLostChanges } from '../../src/domain/fence-changes.js';
import { DEFAULT_TIMINGS } from '../../src/domain/gc-timing.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import { Keyspace } from '../../src/domain/keyspace.js';
import type { KvOp } from '../../src/domain/kv-txn.js';
import { FakeClock } from '../support/fake-clock.js';
import { counterIds, ModelControllerStore } from '../support/model-cluster.js';

const keys = new Keyspace('/t/', counterIds());
const spec = (name: string) => ({ id: { namespace: 'ns', name }, vcpu: 1, memoryMb: 96, kernelImage: '', kernelCmdline: {}, initrdImage: '', volumes: [], interfaces: [], labels: {}, metadata: {} });
const vm = (name: string, hostId?: string, over: Partial<ClusterVmRecord> = {}): ClusterVmRecord => ({
  uid: `u-${name}`,
  spec: spec(name),
  ...(hostId !== undefined ? { hostId, hostEpoch: 1 } : {}),
  phase: 'pending',
  generation: 1,
  ...over,
});
const opsOf = (change: ClusterChange): string[] =>
  changeTxn(keys, change, DEFAULT_TXN_LIMITS).txn.success.map((o: KvOp) => `${o.op} ${o.key}`);

describe('changeTxn keeps the per-host index', () => {
  it('keys: hostvms/<host>/<ns>/<name>, parsed back; a host prefix never matches a longer id', () => {
    expect(keys.hostVm('h1', 'ns/a')).toBe('/t/hostvms/h1/ns/a');
    expect(keys.hostVms('h1')).toBe('/t/hostvms/h1/');
    expect(keys.hostVm('h10', 'ns/a').startsWith(keys.hostVms('h1'))).toBe(false);
    expect(keys.parseHostVmKey('/t/hostvms/h1/ns/a')).toEqual({ hostId: 'h1', key: 'ns/a' });
    expect(keys.parseHostVmKey('/t/hostvms/h1/ns')).toBeUndefined();
    expect(keys.parseHostVmKey('/t/vms/ns/a')).toBeUndefined();
  });

  it('create placed: record + copy with the same bytes; create unplaced: record only', () => {
    const placed = changeTxn(keys, { vms: [{ key: 'ns/a', expectRevision: null, prevHostId: null, next: vm('a', 'h1') }] }, DEFAULT_TXN_LIMITS).txn;
    expect(placed.success.map((o) => `${o.op} ${o.key}`)).toEqual(['put /t/vms/ns/a', 'put /t/hostvms/h1/ns/a']);
    const [rec, copy] = placed.success as Extract<KvOp, { op: 'put' }>[];
    expect(copy!.value).toBe(rec!.value);
    expect(opsOf({ vms: [{ key: 'ns/a', expectRevision: null, prevHostId: null, next: vm('a') }] })).toEqual(['put /t/vms/ns/a']);
  });

  it('same host (status, lost): copy rewritten, nothing deleted', () => {
    expect(opsOf({ vms: [{ key: 'ns/a', expectRevision: '5', prevHostId: 'h1', next: markLost(vm('a', 'h1'), 'x', 1) }] })).toEqual(['put /t/vms/ns/a', 'put /t/hostvms/h1/ns/a']);
  });

  it('move host -> host: copy under the new host, the old one deleted', () => {
    expect(opsOf({ vms: [{ key: 'ns/a', expectRevision: '5', prevHostId: 'h1', next: vm('a', 'h2') }] })).toEqual([
      'put /t/vms/ns/a',
      'put /t/hostvms/h2/ns/a',
      'delete /t/hostvms/h1/ns/a',
    ]);
  });

  it('unplace (pending without a host) and delete: the old copy deleted', () => {
    expect(opsOf({ vms: [{ key: 'ns/a', expectRevision: '5', prevHostId: 'h1', next: vm('a') }] })).toEqual(['put /t/vms/ns/a', 'delete /t/hostvms/h1/ns/a']);
    expect(opsOf({ vms: [{ key: 'ns/a', expectRevision: '5', prevHostId: 'h1', next: null }] })).toEqual(['delete /t/vms/ns/a', 'delete /t/hostvms/h1/ns/a']);
    expect(opsOf({ vms: [{ key: 'ns/a', expectRevision: '5', prevHostId: null, next: null }] })).toEqual(['delete /t/vms/ns/a']);
  });

  it('txnOpCounts counts the index ops; compares stay one per VM', () => {
    const writes: VmWrite[] = [
      { key: 'ns/a', expectRevision: null, prevHostId: null, next: vm('a', 'h1') },
      { key: 'ns/b', expectRevision: '3', prevHostId: 'h1', next: vm('b', 'h2') },
      { key: 'ns/c', expectRevision: '4', prevHostId: 'h1', next: null },
    ];
    expect(writes.map(vmWriteOps)).toEqual([2, 3, 2]);
    expect(txnOpCounts({ vms: writes }, true)).toEqual({ compares: 4, success: 7, failure: 0 });
    // the estimate counts a placed value twice
    const one = estimateTxnBytes({ vms: [{ key: 'ns/a', expectRevision: null, prevHostId: null, next: vm('a') }] }, false);
    const two = estimateTxnBytes({ vms: [{ key: 'ns/a', expectRevision: null, prevHostId: null, next: vm('a', 'h1') }] }, false);
    expect(two - one).toBeGreaterThan(JSON.stringify(vm('a')).length);
  });

  it('a change over --max-txn-ops counting the index ops is refused before it is sent', () => {
    const n = 65; // 65 compares fit, 130 success ops do not
    const change: ClusterChange = { vms: Array.from({ length: n }, (_, i) => ({ key: `ns/v${i}`, expectRevision: null, prevHostId: null, next: vm(`v${i}`, 'h1') })) };
    expect(() => changeTxn(keys, change, DEFAULT_TXN_LIMITS)).toThrow(/130 success ops/);
  });
});

describe('vmsLostChanges batches with the index ops', () => {
  const host: HostRecord = { hostId: 'h1', state: 'fenced', epoch: 2, hold: false, updatedAt: 1, agentVersion: 't', capacity: { vcpu: 99, memoryMb: 99_999 }, labels: {}, timings: DEFAULT_TIMINGS };
  for (const maxOps of [16, 128]) {
    it(`every batch fits --max-txn-ops ${maxOps}; every VM in exactly one batch`, () => {
      const vms = Array.from({ length: 300 }, (_, i) => ({ key: `ns/v${String(i).padStart(3, '0')}`, record: vm(`v${String(i).padStart(3, '0')}`, 'h1', { phase: 'running' }), revision: String(10 + i) }));
      const plan = vmsLostChanges({ hostId: 'h1', record: host, revision: '9', vms, nowWall: 5, by: 'controller', leader: true, limits: { maxOps, maxBytes: DEFAULT_TXN_LIMITS.maxBytes } });
      const seen = plan.changes.flatMap((c) => c.vms!.map((v) => v.key));
      expect(seen.sort()).toEqual(vms.map((v) => v.key));
      for (const c of plan.changes) {
        const built = changeTxn(keys, c, { maxOps, maxBytes: DEFAULT_TXN_LIMITS.maxBytes }, '1');
        expect(Math.max(built.counts.compares, built.counts.success)).toBeLessThanOrEqual(maxOps);
      }
      // full batches: (maxOps - 1 event) / 2 ops per VM
      expect(plan.changes[0]!.vms!.length).toBe(Math.floor((maxOps - 1) / 2));
    });
  }
});

describe('the invariant on the etcd model, through the store', () => {
  it('create, status, move, lost, unplace, delete: hostvms/ always mirrors vms/', async () => {
    const clock = new FakeClock();
    const store = new ModelControllerStore(clock);
    const rev = (key: string) => String(store.model.get(`${store.prefix}vms/${key}`)!.modRevision);
    const commit = async (w: VmWrite) => {
      expect((await store.commit({ vms: [w] }, 1000)).ok).toBe(true);
      expect(store.hostIndexProblems()).toEqual([]);
    };
    await commit({ key: 'ns/a', expectRevision: null, prevHostId: null, next: vm('a', 'h1') });
    await commit({ key: 'ns/b', expectRevision: null, prevHostId: null, next: vm('b') });
    await commit({ key: 'ns/a', expectRevision: rev('ns/a'), prevHostId: 'h1', next: vm('a', 'h1', { phase: 'running', generation: 2 }) });
    await commit({ key: 'ns/a', expectRevision: rev('ns/a'), prevHostId: 'h1', next: markLost(vm('a', 'h1', { generation: 2 }), 'fenced', 3) });
    await commit({ key: 'ns/a', expectRevision: rev('ns/a'), prevHostId: 'h1', next: vm('a', 'h2', { generation: 4 }) });
    await commit({ key: 'ns/b', expectRevision: rev('ns/b'), prevHostId: null, next: vm('b', 'h1', { generation: 2 }) });
    expect(store.model.list(`${store.prefix}hostvms/h2/`).map((e) => e.key)).toEqual([`${store.prefix}hostvms/h2/ns/a`]);
    expect(store.model.list(`${store.prefix}hostvms/h1/`).map((e) => e.key)).toEqual([`${store.prefix}hostvms/h1/ns/b`]);
    await commit({ key: 'ns/a', expectRevision: rev('ns/a'), prevHostId: 'h2', next: vm('a', undefined, { generation: 5 }) });
    await commit({ key: 'ns/b', expectRevision: rev('ns/b'), prevHostId: 'h1', next: null });
    expect(store.model.list(`${store.prefix}hostvms/`)).toEqual([]);
    // a lost compare writes nothing, index included
    expect((await store.commit({ vms: [{ key: 'ns/a', expectRevision: '1', prevHostId: null, next: vm('a', 'h3') }] }, 1000)).ok).toBe(false);
    expect(store.model.list(`${store.prefix}hostvms/`)).toEqual([]);
  });
});
