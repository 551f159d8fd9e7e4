/**
 * The agent's cluster sync over its per-host VM index (src/agent/cluster-sync.ts) against a REAL
 * etcd 3.4 started with `--auto-compaction-mode periodic --auto-compaction-retention 1s` (history
 * compacted every second), TLS. The agent reaches etcd through a TCP fault proxy (src/dev/tcp-proxy.ts)
 * that can refuse and reset its connections. What is shown:
 *  - records placed on the host are followed by one list and one watch, while etcd keeps compacting
 *    (an open watch is not cancelled by compaction): no new list, no read in a steady state;
 *  - the agent's connections are cut, records change meanwhile and etcd compacts past the agent's last
 *    revision; back, the agent's resume fails COMPACTED, it lists ONCE and its view is right again;
 *  - every record placed on the host runs locally with its uid, nothing else runs there, and the
 *    per-host index holds exactly the records placed on each host, byte for byte.
 * The local VMs are instant (inventory rows in a real SQLite): QEMU is not what this test is about.
 *
 * afterAll stops etcd, the proxies and the sync, and checks no etcd process is left and its data dir
 * is gone.
 */
import { mkdtempSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { EtcdControllerStore } from '../../src/adapters/etcd/etcd-controller-store.js';
import { ClusterVmSync } from '../../src/agent/cluster-sync.js';
import type { HostContext } from '../../src/agent/host-context.js';
import type { AgentVmService } from '../../src/agent/vm-service.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { TetherError } from '../../src/domain/errors.js';
import { DEFAULT_TIMINGS } from '../../src/domain/gc-timing.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import { findEtcdBinary, LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import { InstantVmService } from '../../src/dev/instant-vm-service.js';
import { FaultProxyGroup } from '../../src/dev/tcp-proxy.js';
import { bareSpec, fakeHost } from '../support/host-harness.js';
import { stopTestEtcd } from '../support/etcd-teardown.js';

const PREFIX = '/agent-index/';
const DL = 5000;
const INTERVAL = 500;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let cluster: LocalEtcdCluster | undefined;
let dataDir = '';
const closers: (() => Promise<void> | void)[] = [];

async function until(what: string, fn: () => Promise<boolean> | boolean, timeoutMs: number): Promise<void> {
  const end = performance.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      if (await fn()) return;
    } catch (err) {
      last = err;
    }
    if (performance.now() > end) throw new Error(`${what}: not within ${timeoutMs}ms${last ? ` (last error: ${String(last)})` : ''}`);
    await sleep(100);
  }
}

describe('agent index sync on real etcd 3.4 with auto-compaction every second', () => {
  beforeAll(async () => {
    findEtcdBinary();
    dataDir = mkdtempSync('/tmp/tether-test-agent-index-');
    cluster = new LocalEtcdCluster({ dataDir, tag: 'test', size: 1, extraArgs: ['--auto-compaction-mode', 'periodic', '--auto-compaction-retention', '1s'] });
    await cluster.start();
  }, 60_000);

  afterAll(async () => {
    for (const c of closers.reverse()) await c();
    await stopTestEtcd(cluster, dataDir);
  });

  it("the agent's view stays right across compactions, while watching and after its connections were cut", async () => {
    const c = cluster!;
    const ops = new EtcdControllerStore({ endpoints: c.endpoints(), security: c.clientTls(), prefix: PREFIX });
    closers.push(() => ops.close());
    const proxy = await FaultProxyGroup.start(c.endpoints());
    closers.push(() => proxy.close());
    const agentStore = new EtcdControllerStore({ endpoints: proxy.endpoints(), security: c.clientTls(), prefix: PREFIX });
    closers.push(() => agentStore.close());

    const host: HostRecord = { hostId: 'host-a', state: 'attached', epoch: 1, hold: false, updatedAt: 1, agentVersion: 't', capacity: { vcpu: 64, memoryMb: 65536 }, labels: {}, timings: DEFAULT_TIMINGS };
    await ops.client.put(`${PREFIX}hosts/host-a/record`).value(JSON.stringify(host));
    const h = fakeHost('host-a');
    const ctx: HostContext = { ...h.ctx, clock: new SystemClock() };
    const sync = new ClusterVmSync(ctx, agentStore, new InstantVmService(ctx) as unknown as AgentVmService, () => ({ attached: true, epoch: 1 }), INTERVAL);
    closers.push(() => sync.stop());

    let n = 0;
    const record = async (key: string) => (await ops.getVm(key, DL)).kind === 'found' ? ((await ops.getVm(key, DL)) as { entry: { record: ClusterVmRecord; revision: string } }).entry : undefined;
    const place = async (name: string, on: string) => {
      const rec: ClusterVmRecord = { uid: (++n).toString(16).padStart(8, '0') + 'e'.repeat(24), spec: bareSpec(name), hostId: on, hostEpoch: 1, phase: 'pending', generation: 1 };
      expect((await ops.commit({ vms: [{ key: `ns/${name}`, expectRevision: null, prevHostId: null, next: rec }] }, DL)).ok).toBe(true);
    };
    const move = async (name: string, to: string | undefined) => {
      for (;;) {
        const cur = (await record(`ns/${name}`))!;
        const { hostId: _h, hostEpoch: _e, ...rest } = cur.record;
        const next: ClusterVmRecord = to === undefined ? { ...rest, phase: 'pending', generation: cur.record.generation + 1 } : { ...rest, uid: (++n).toString(16).padStart(8, '0') + 'f'.repeat(24), hostId: to, hostEpoch: 1, phase: 'pending', generation: cur.record.generation + 1 };
        if ((await ops.commit({ vms: [{ key: `ns/${name}`, expectRevision: cur.revision, prevHostId: cur.record.hostId ?? null, next }] }, DL)).ok) return;
      }
    };
    const remove = async (name: string) => {
      for (;;) {
        const cur = (await record(`ns/${name}`))!;
        if ((await ops.commit({ vms: [{ key: `ns/${name}`, expectRevision: cur.revision, prevHostId: cur.record.hostId ?? null, next: null }] }, DL)).ok) return;
      }
    };
    /** What is wrong with the agent's view and the index (empty: right). */
    const problems = async (): Promise<string[]> => {
      const out: string[] = [];
      const all = await ops.scanVms(DL);
      const index = await ops.client.getAll().prefix(`${PREFIX}hostvms/`).exec();
      const copies = new Map(index.kvs.map((kv) => [kv.key.toString().slice(`${PREFIX}hostvms/`.length), kv]));
      const raw = await ops.client.getAll().prefix(`${PREFIX}vms/`).exec();
      for (const kv of raw.kvs) {
        const key = kv.key.toString().slice(`${PREFIX}vms/`.length);
        const r = JSON.parse(kv.value.toString()) as ClusterVmRecord;
        if (r.hostId === undefined) continue;
        const copy = copies.get(`${r.hostId}/${key}`);
        if (!copy || copy.value.toString() !== kv.value.toString() || copy.mod_revision !== kv.mod_revision) out.push(`index copy of ${key} on ${r.hostId} wrong or missing`);
        copies.delete(`${r.hostId}/${key}`);
      }
      for (const k of copies.keys()) out.push(`orphan index entry ${k}`);
      const mine = all.entries.filter((e) => e.record.hostId === 'host-a');
      const local = h.inventory.listVms();
      for (const e of mine) {
        if (!local.some((l) => l.uid === e.record.uid)) out.push(`${e.key} placed here, not running`);
        if (e.record.phase !== 'running') out.push(`${e.key} record says ${e.record.phase}`);
      }
      for (const l of local) if (!mine.some((e) => e.record.uid === l.uid)) out.push(`local ${l.spec.id.name} has no record here`);
      return out;
    };
    const compactedPast = async (rev: number): Promise<boolean> => {
      try {
        await ops.kv.range({ key: `${PREFIX}vms/`, prefix: true, revision: rev }, DL);
        return false;
      } catch (err) {
        return err instanceof TetherError && err.code === 'COMPACTED';
      }
    };

    for (let i = 0; i < 6; i++) await place(`a${i}`, 'host-a');
    for (let i = 0; i < 4; i++) await place(`b${i}`, 'host-b');
    sync.start();
    await until('the agent runs its 6 VMs', async () => (await problems()).length === 0, 20_000);

    // Watching while etcd compacts every second: more changes, still one list
    const watchedFrom = Number((await ops.kv.range({ key: 'x' }, DL)).header.revision);
    await move('a0', 'host-b');
    await place('a6', 'host-a');
    await remove('a1');
    await until('etcd compacted past the watch start', () => compactedPast(watchedFrom), 10_000);
    await move('b0', 'host-a');
    await until('the agent followed while compacting', async () => (await problems()).length === 0, 20_000);
    expect(sync.feedStats()).toMatchObject({ lists: 1, watchErrors: 0 });

    // Steady state: no request from the agent (its watch aside) over 10 intervals
    const before = proxy.stats().bytesForwardedUp;
    const statsBefore = sync.feedStats();
    await sleep(10 * INTERVAL);
    expect(sync.feedStats()).toEqual(statsBefore);
    // (gRPC keepalive pings of the open connection may cross the proxy; a request would be far larger)
    expect(proxy.stats().bytesForwardedUp - before).toBeLessThan(200);

    // Cut the agent off; change its records; let etcd compact past what it saw; reconnect
    const seenBefore = Number((await ops.kv.range({ key: 'x' }, DL)).header.revision);
    await proxy.refuse();
    await move('a2', undefined);
    await remove('a3');
    await place('a7', 'host-a');
    await move('b1', 'host-a');
    await until('etcd compacted past the agent\'s last revision', () => compactedPast(seenBefore), 10_000);
    await sleep(3 * INTERVAL); // the agent fails to resume while cut off (retryable: no list)
    expect(sync.feedStats().lists).toBe(1);
    await proxy.heal();
    await until('the agent is right again after the cut and the compaction', async () => (await problems()).length === 0, 30_000);
    const s = sync.feedStats();
    expect(s.lists).toBe(2); // the resume failed COMPACTED: exactly one new list
    expect(s.watchErrors).toBeGreaterThanOrEqual(1);
    expect(h.inventory.listVms().map((v) => v.spec.id.name).sort()).toEqual(['a4', 'a5', 'a6', 'a7', 'b0', 'b1']);
  }, 120_000);
});
