/**
 * Lists larger than 4 MiB on a REAL etcd 3.4 (LocalEtcdCluster, one member, TLS): with grpc-js's
 * default 4 MiB receive limit (the measured failure: "Received message larger than max
 * (4889527 vs 4194304)") one range of the prefix fails RESOURCE_EXHAUSTED (reason reply-too-large),
 * and every path that lists still returns everything: the controller store's listHosts, getHost,
 * listVms, scanVms, listEvents and pruneEvents, the CLI's vm list (all, --host, --phase) and host
 * list. Tether's own client (64 MiB receive limit) reads the same 5 MB in one reply.
 *
 * afterAll stops the cluster and checks that no process carries its mark and its data dir is gone.
 */
import { mkdtempSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdKv } from '../../src/adapters/etcd/etcd-kv.js';
import { KvControllerStore } from '../../src/adapters/kv/kv-controller-store.js';
import { rangePaged } from '../../src/adapters/kv/range-paged.js';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { listClusterVms } from '../../src/cli/cluster-vm-list.js';
import { hostList } from '../../src/cli/commands/host.js';
import { findEtcdBinary, LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { ETCD_CLIENT_MAX_RECV_BYTES } from '../../src/domain/kv-read-limits.js';
import type { KvOp } from '../../src/ports/kv.js';
import { rec } from '../support/controller-step.js';
import { expectCode } from '../support/expect-code.js';
import { bareSpec } from '../support/host-harness.js';
import { counterIds } from '../support/model-cluster.js';
import { stopTestEtcd } from '../support/etcd-teardown.js';

const DL = 30_000;
const GRPC_DEFAULT = 4 * 1024 * 1024;
const P = '/tether/';
const N = 700;
const PAD = 7000;

let cluster: LocalEtcdCluster | undefined;
let dataDir = '';
const kvs: EtcdKv[] = [];

function newKv(maxRecvBytes?: number): EtcdKv {
  const kv = new EtcdKv({ endpoints: cluster!.endpoints(), security: cluster!.clientTls(), ...(maxRecvBytes ? { maxRecvBytes } : {}) });
  kvs.push(kv);
  return kv;
}

const name = (i: number): string => `vm${String(i).padStart(4, '0')}`;
const hostOf = (i: number): string => `h${String(i % 10).padStart(2, '0')}`;

describe('lists over 4 MiB on real etcd', () => {
  beforeAll(async () => {
    findEtcdBinary();
    dataDir = mkdtempSync('/tmp/tether-test-large-');
    cluster = new LocalEtcdCluster({ dataDir, tag: 'test', size: 1 });
    await cluster.start();
    // 700 hosts (7 KB of labels each), 700 VMs (7 KB of metadata, with their hostvms/ copies), 700
    // events (7 KB of detail): about 4.9 MB per prefix.
    const w = newKv();
    for (let i = 0; i < N; i += 35) {
      const ops: KvOp[] = [];
      for (let j = i; j < i + 35; j++) {
        const h = `host${String(j).padStart(4, '0')}`;
        ops.push({ op: 'put', key: `${P}hosts/${h}/record`, value: JSON.stringify(rec(h, { labels: { pad: 'l'.repeat(PAD) } })) });
        const vm: ClusterVmRecord = {
          uid: `u${j}`,
          spec: { ...bareSpec(name(j)), metadata: { pad: 'm'.repeat(PAD) } },
          hostId: hostOf(j),
          hostEpoch: 1,
          phase: j % 7 === 0 ? 'lost' : 'running',
          generation: 1,
        } as ClusterVmRecord;
        ops.push({ op: 'put', key: `${P}vms/ns/${name(j)}`, value: JSON.stringify(vm) });
        ops.push({ op: 'put', key: `${P}hostvms/${hostOf(j)}/ns/${name(j)}`, value: JSON.stringify(vm) });
      }
      await w.txn({ compare: [], success: ops }, DL);
      const events: KvOp[] = [];
      for (let j = i; j < i + 35; j++) {
        const at = 1_700_000_000_000 + j;
        events.push({ op: 'put', key: `${P}events/${String(at).padStart(15, '0')}-${j.toString(16).padStart(8, '0')}`, value: JSON.stringify({ kind: 'host-hold-changed', hostId: 'h1', hold: true, at, detail: 'd'.repeat(PAD) }) });
      }
      await w.txn({ compare: [], success: events }, DL);
    }
  }, 120_000);

  afterAll(async () => {
    for (const kv of kvs) await kv.close().catch(() => undefined);
    await stopTestEtcd(cluster, dataDir);
  });

  it('one range of vms/ fails at the 4 MiB default exactly like the issue measured; Tether\'s 64 MiB client reads it', async () => {
    const err = await expectCode(newKv(GRPC_DEFAULT).range({ key: `${P}vms/`, prefix: true }, DL), 'RESOURCE_EXHAUSTED');
    expect(err.details).toMatchObject({ reason: 'reply-too-large', limit: GRPC_DEFAULT });
    expect(err.details.bytes as number).toBeGreaterThan(GRPC_DEFAULT);
    expect(err.message).toMatch(/reply larger than the client's receive limit \(\d+ bytes, limit 4194304\)/);
    expect(ETCD_CLIENT_MAX_RECV_BYTES).toBe(64 * 1024 * 1024);
    expect((await newKv().range({ key: `${P}vms/`, prefix: true }, DL)).kvs).toHaveLength(N);
    // The pager at the 4 MiB limit, with a page size too large for it: halves, returns all.
    const paged = await rangePaged(newKv(GRPC_DEFAULT), { key: `${P}vms/`, prefix: true }, { pageSize: 1000 }, DL);
    expect(paged.kvs).toHaveLength(N);
    expect(paged.pages).toBeGreaterThan(2);
  }, 60_000);

  it('every store and CLI list returns everything through a 4 MiB client', async () => {
    const store = new KvControllerStore(newKv(GRPC_DEFAULT), { clock: new SystemClock(), prefix: P, idSource: counterIds() });
    expect((await store.listHosts(DL)).hosts).toHaveLength(N);
    expect((await store.getHost('host0042', DL)).record?.labels['pad']).toHaveLength(PAD);
    expect(await store.listVms(DL)).toHaveLength(N);
    const scan = await store.scanVms(DL);
    expect(scan.entries).toHaveLength(N);
    expect(scan.invalid).toEqual([]);
    const events = await store.listEvents(N, DL);
    expect(events.events).toHaveLength(N);
    expect((await store.listEvents(10, DL)).events).toHaveLength(10);

    expect((await listClusterVms(store, {}, { deadlineMs: DL })).vms).toHaveLength(N);
    const onH3 = await listClusterVms(store, { host: 'h03' }, { deadlineMs: DL });
    expect(onH3.vms).toHaveLength(N / 10);
    const lost = await listClusterVms(store, { phases: ['lost'] }, { deadlineMs: DL });
    expect(lost.vms).toHaveLength(Math.ceil(N / 7));

    const hosts = await hostList(store, Date.now());
    expect(hosts.hosts).toHaveLength(N);
    const one = await hostList(store, Date.now(), { host: 'h03' });
    expect(one.hosts).toEqual([]); // h03 holds VMs but has no record: not a registered host
    expect((await hostList(store, Date.now(), { host: 'host0003' })).hosts.map((h) => h.hostId)).toEqual(['host0003']);

    expect(await store.pruneEvents(100, DL)).toBe(N - 100);
    expect((await store.listEvents(N, DL)).events).toHaveLength(100);
  }, 120_000);
});
