/**
 * `tether vm list` / `tether host list` at size, on the etcd model with grpc-js's default 4 MiB
 * receive limit: lists bigger than one reply can carry come back whole (paged), filters narrow the
 * prefix read (`--host` reads only that host's index), `--watch` reports changes from the list's
 * revision.
 */
import { describe, expect, it } from 'vitest';
import { KvControllerStore } from '../../src/adapters/kv/kv-controller-store.js';
import { getClusterVm, listClusterVms, parsePhases, watchClusterVms, type ClusterVmChange } from '../../src/cli/cluster-vm-list.js';
import { hostChangeLine, hostList, parseHostStates } from '../../src/cli/commands/host.js';
import { EtcdModel } from '../../src/dev/etcd-model/index.js';
import type { ClusterVmPhase, ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import type { Kv, KvRangeRequest } from '../../src/ports/kv.js';
import { rec } from '../support/controller-step.js';
import { expectCode } from '../support/expect-code.js';
import { FakeClock } from '../support/fake-clock.js';
import { bareSpec } from '../support/host-harness.js';
import { counterIds } from '../support/model-cluster.js';

const DL = 10_000;
const GRPC_DEFAULT = 4 * 1024 * 1024;
const P = '/tether/';

/** A Kv that records every range it is asked for. */
function recording(kv: Kv): { kv: Kv; ranges: KvRangeRequest[] } {
  const ranges: KvRangeRequest[] = [];
  const proxy = new Proxy(kv, {
    get(target, prop, recv) {
      if (prop === 'range') return (req: KvRangeRequest, d: number) => (ranges.push(req), target.range(req, d));
      const v = Reflect.get(target, prop, recv) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { kv: proxy, ranges };
}

function vmRecord(name: string, hostId: string, phase: ClusterVmPhase, pad: number): ClusterVmRecord {
  return { uid: `u-${name}`, spec: { ...bareSpec(name), metadata: pad > 0 ? { pad: 'm'.repeat(pad) } : {} }, hostId, hostEpoch: 1, phase, generation: 1 } as ClusterVmRecord;
}

/** 12 hosts; 720 VMs of ~7 KB (5 MB in all, over 4 MiB), 60 per host, every 10th lost; index copies under hostvms/. */
async function cluster() {
  const clock = new FakeClock();
  const model = new EtcdModel(clock, { clientMaxRecvBytes: GRPC_DEFAULT });
  const { kv, ranges } = recording(model.client('cli'));
  const store = new KvControllerStore(kv, { clock, prefix: P, idSource: counterIds() });
  const w = model.client('writer');
  const hosts = Array.from({ length: 12 }, (_, i) => `h${String(i).padStart(2, '0')}`);
  await w.txn({ compare: [], success: hosts.map((h, i) => ({ op: 'put' as const, key: `${P}hosts/${h}/record`, value: JSON.stringify(rec(h, i === 3 ? { state: 'detached' } : {})) })) }, DL);
  for (let i = 0; i < 720; i += 40) {
    const ops = [];
    for (let j = i; j < i + 40; j++) {
      const h = hosts[j % 12]!;
      const v = JSON.stringify(vmRecord(`vm${String(j).padStart(4, '0')}`, h, j % 10 === 0 ? 'lost' : 'running', 7000));
      ops.push({ op: 'put' as const, key: `${P}vms/ns/vm${String(j).padStart(4, '0')}`, value: v }, { op: 'put' as const, key: `${P}hostvms/${h}/ns/vm${String(j).padStart(4, '0')}`, value: v });
    }
    await w.txn({ compare: [], success: ops }, DL);
  }
  return { clock, model, store, ranges, w, hosts };
}

describe('tether vm list at size (cluster mode)', () => {
  it('lists 720 VMs (5 MB, over the 4 MiB receive limit) in pages at one revision; an unpaged read would fail', async () => {
    const { model, store, ranges } = await cluster();
    await expectCode(model.client('raw').range({ key: `${P}vms/`, prefix: true }, DL), 'RESOURCE_EXHAUSTED');
    const l = await listClusterVms(store, {}, { deadlineMs: DL });
    expect(l.vms).toHaveLength(720);
    expect(l.unreadable).toEqual([]);
    expect(l.pages).toBeGreaterThanOrEqual(2);
    expect(ranges.every((r) => r.limit !== undefined && r.limit > 0)).toBe(true);
    expect(new Set(ranges.slice(1).map((r) => r.revision))).toEqual(new Set([l.revision]));
  });

  it('--host reads only that host index; --phase filters; -n/--name narrow the read', async () => {
    const { store, ranges } = await cluster();
    const h5 = await listClusterVms(store, { host: 'h05' }, { deadlineMs: DL });
    expect(h5.vms).toHaveLength(60);
    expect(h5.vms.every((v) => v.record.hostId === 'h05')).toBe(true);
    expect(ranges.map((r) => r.key).every((k) => k.startsWith(`${P}hostvms/h05/`))).toBe(true);

    const lost = await listClusterVms(store, { phases: parsePhases(['lost'])! }, { deadlineMs: DL });
    expect(lost.vms).toHaveLength(72);
    const both = await listClusterVms(store, { host: 'h00', phases: parsePhases(['running,lost'])! }, { deadlineMs: DL });
    expect(both.vms).toHaveLength(60);
    const lostOnH0 = await listClusterVms(store, { host: 'h00', phases: ['lost'] }, { deadlineMs: DL });
    expect(lostOnH0.vms.map((v) => v.key)).toEqual(lostOnH0.vms.map((v) => v.key).filter((k) => Number(k.slice(-4)) % 10 === 0));
    expect(lostOnH0.vms.length).toBeGreaterThan(0);

    ranges.length = 0;
    const one = await listClusterVms(store, { namespace: 'ns', name: 'vm0007' }, { deadlineMs: DL });
    expect(one.vms.map((v) => v.key)).toEqual(['ns/vm0007']);
    expect(ranges).toEqual([{ key: `${P}vms/ns/vm0007` }]);
    expect((await listClusterVms(store, { namespace: 'other' }, { deadlineMs: DL })).vms).toEqual([]);
    expect((await getClusterVm(store, 'ns/vm0008', DL))?.record.hostId).toBe('h08');
    expect(await getClusterVm(store, 'ns/nope', DL)).toBeUndefined();
    expect(() => parsePhases(['runing'])).toThrow(/--phase "runing": not a phase/);
  });

  it('--watch: changes after the list revision, a VM leaving the filter is reported gone once', async () => {
    const { store, w } = await cluster();
    const l = await listClusterVms(store, { host: 'h01', phases: ['running'] }, { deadlineMs: DL });
    // Between the list and the watch: a change the watch must still see (it starts at list revision + 1).
    await w.txn({ compare: [], success: [{ op: 'put', key: `${P}hostvms/h01/ns/new1`, value: JSON.stringify(vmRecord('new1', 'h01', 'running', 0)) }] }, DL);
    const changes: ClusterVmChange[] = [];
    const errors: Error[] = [];
    const sub = await watchClusterVms(store, { host: 'h01', phases: ['running'] }, l.revision + 1, l.vms, { onChange: (c) => changes.push(c), onError: (e) => errors.push(e) }, DL);
    const first = l.vms[0]!;
    await w.txn({ compare: [], success: [{ op: 'put', key: `${P}hostvms/h01/${first.key}`, value: JSON.stringify({ ...first.record, phase: 'stopped' }) }] }, DL);
    await w.txn({ compare: [], success: [{ op: 'put', key: `${P}hostvms/h01/${first.key}`, value: JSON.stringify({ ...first.record, phase: 'failed' }) }] }, DL);
    await w.txn({ compare: [], success: [{ op: 'delete', key: `${P}hostvms/h01/${l.vms[1]!.key}` }] }, DL);
    await w.txn({ compare: [], success: [{ op: 'put', key: `${P}hostvms/h02/ns/elsewhere`, value: JSON.stringify(vmRecord('elsewhere', 'h02', 'running', 0)) }] }, DL);
    await new Promise((r) => setTimeout(r, 20));
    await sub.close();
    expect(errors).toEqual([]);
    expect(changes.map((c) => (c.type === 'put' ? `put ${c.vm.key}` : `gone ${c.key}`))).toEqual(['put ns/new1', `gone ${first.key}`, `gone ${l.vms[1]!.key}`]);
  });
});

describe('tether host list at size', () => {
  it('lists hosts and counts VMs through paged reads over 4 MiB; --host and --state filter', async () => {
    const { store, ranges } = await cluster();
    const all = await hostList(store, 0);
    expect(all.hosts).toHaveLength(12);
    // 60 VMs per host, 5 or 6 of them lost (not counted).
    for (const h of all.hosts) expect(h.vmCount).toBe(60 - Array.from({ length: 60 }, (_, k) => k * 12 + Number(h.hostId.slice(1))).filter((j) => j % 10 === 0).length);
    expect(ranges.filter((r) => r.prefix).every((r) => r.limit !== undefined)).toBe(true);

    ranges.length = 0;
    const one = await hostList(store, 0, { host: 'h04' });
    expect(one.hosts.map((h) => [h.hostId, h.vmCount])).toEqual([['h04', all.hosts[4]!.vmCount]]);
    expect(ranges.every((r) => !r.key.includes('/vms/') && !r.key.endsWith('/hosts/'))).toBe(true);
    expect((await hostList(store, 0, { host: 'nope' })).hosts).toEqual([]);

    const detached = await hostList(store, 0, { states: parseHostStates(['detached'])! });
    expect(detached.hosts.map((h) => h.hostId)).toEqual(['h03']);
    expect(() => parseHostStates(['gone'])).toThrow(/--state "gone": not a host state/);
  });

  it('--watch lines follow the filter', () => {
    const e = { kind: 'record' as const, hostId: 'h1', record: rec('h1', { state: 'detached', epoch: 4 }), revision: '9' };
    expect(hostChangeLine(e, {})).toMatch(/h1 +detached +epoch 4 +hold no/);
    expect(hostChangeLine(e, { host: 'h2' })).toBeUndefined();
    expect(hostChangeLine(e, { states: ['attached'] })).toBeUndefined();
    expect(hostChangeLine({ kind: 'alive-deleted', hostId: 'h1', revision: '10' }, {})).toMatch(/h1 +lease gone/);
  });
});
