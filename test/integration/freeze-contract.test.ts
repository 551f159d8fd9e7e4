/**
 * Issue 11, controller contract, against a REAL etcd (LocalEtcdCluster, one member, plaintext, tag
 * `test`): the leader publishes `controller/freeze-contract` once synced; a host reads it through its
 * own store and acknowledges it in its record (`freezeContractSeen`); the host-view barrier (C2) comes
 * back through the host watch after every change made before it, and the pre-fence read reports its
 * revision.
 *
 * afterAll stops etcd and asserts that no process carries its mark and its data dir is gone.
 */
import { mkdtempSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { EtcdClusterStore } from '../../src/adapters/etcd/etcd-cluster-store.js';
import { EtcdControllerStore } from '../../src/adapters/etcd/etcd-controller-store.js';
import { Controller } from '../../src/controller/controller.js';
import { findEtcdBinary, LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import { DEFAULT_TIMINGS as T } from '../../src/domain/gc-timing.js';
import type { Subscription } from '../../src/ports/controller-store.js';
import { silentLogger } from '../support/fake-ports.js';
import { stopTestEtcd } from '../support/etcd-teardown.js';

const PREFIX = '/contract/';
const DL = 5000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let cluster: LocalEtcdCluster | undefined;
let dataDir: string;
const closers: (() => Promise<unknown>)[] = [];

async function until(what: string, ok: () => Promise<boolean> | boolean, maxMs = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!(await ok())) {
    if (Date.now() - t0 > maxMs) throw new Error(`${what}: not within ${maxMs} ms`);
    await sleep(100);
  }
}

describe('freeze contract on real etcd', () => {
  beforeAll(async () => {
    findEtcdBinary();
    dataDir = mkdtempSync('/tmp/tether-test-freeze-contract-');
    cluster = new LocalEtcdCluster({ dataDir, tag: 'test', size: 1, tls: false });
    await cluster.start();
  });

  afterAll(async () => {
    for (const c of closers.reverse()) await c().catch(() => undefined);
    await stopTestEtcd(cluster, dataDir);
  });

  it('published once synced; a host reads it and acknowledges it in its record', async () => {
    const host = new EtcdClusterStore({ endpoints: cluster!.endpoints(), prefix: PREFIX });
    closers.push(() => host.close());
    const lease = await host.grantLease(T.ttl, DL);
    const reg = await host.register(
      {
        hostId: 'h1',
        mode: 'reattach',
        epoch: 0,
        agentId: 'agent-h1',
        holder: 'test host h1',
        holdApplied: false,
        record: { hostId: 'h1', timings: T, capacity: { vcpu: 2, memoryMb: 1024 }, labels: {}, agentVersion: 'test' },
        lease,
      },
      DL,
    );
    expect(reg.ok).toBe(true);
    const keep = setInterval(() => void host.keepalive('h1', lease, T.heartbeatInterval).catch(() => undefined), T.heartbeatInterval);
    closers.push(async () => clearInterval(keep));

    const store = new EtcdControllerStore({ endpoints: cluster!.endpoints(), prefix: PREFIX });
    closers.push(() => store.close());
    const c = new Controller(store, new SystemClock(), silentLogger([]), { controllerId: 'fc-1', leaderTtl: 5000, resumeDelay: 30_000 });
    closers.push(() => c.stop());
    c.start();

    await until('contract published', async () => (await host.getFreezeContract(DL)) !== undefined);
    const published = (await host.getFreezeContract(DL))!;
    expect(published).toEqual({ version: 1, share: 0.55, resumeDelay: 30_000, poolSize: 1 });
    expect(await store.getFreezeContract(DL)).toMatchObject({ version: 1, floor: { share: 0.55, resumeDelay: 30_000 } });

    expect(await host.ackFreezeContract('h1', 1, lease, published.version, DL)).toEqual({ ok: true });
    expect((await host.getHost('h1', DL))?.freezeContractSeen).toBe(1);
    // refused on another lease (a host that lost its lease writes nothing)
    expect((await host.ackFreezeContract('h1', 1, '12345', 2, DL)).ok).toBe(false);
  });

  it('the host-view barrier arrives on the host watch after every earlier change; the pre-fence read reports its revision', async () => {
    const store = new EtcdControllerStore({ endpoints: cluster!.endpoints(), prefix: '/barrier/' });
    closers.push(() => store.close());
    const leadership = (await store.campaign('barrier-test', 5000, DL))!;
    expect(leadership).toBeDefined();
    const seen: string[] = [];
    const progress: string[] = [];
    const start = (await store.listHosts(DL)).revision;
    const sub: Subscription = await store.watchHosts(
      String(BigInt(start) + 1n),
      { onEvent: (e) => seen.push(`${e.kind}@${e.revision}`), onProgress: (r) => progress.push(`progress@${r}`), onError: () => undefined },
      DL,
    );
    closers.push(() => sub.close());
    const other = new EtcdClusterStore({ endpoints: cluster!.endpoints(), prefix: '/barrier/' });
    closers.push(() => other.close());
    const lease = await other.grantLease(T.ttl, DL);
    await other.register(
      { hostId: 'h2', mode: 'reattach', epoch: 0, agentId: 'agent-h2', holder: 'test host h2', holdApplied: false, record: { hostId: 'h2', timings: T, capacity: { vcpu: 1, memoryMb: 512 }, labels: {}, agentVersion: 'test' }, lease },
      DL,
    );
    const read = await store.getHost('h2', DL);
    const barrier = await store.syncHosts(leadership, DL);
    expect(BigInt(barrier)).toBeGreaterThan(BigInt(read.readRevision));
    expect(BigInt(read.readRevision)).toBeGreaterThanOrEqual(BigInt(read.recordRevision!));
    await until('barrier delivered', () => progress.length > 0, 10_000);
    expect(progress).toEqual([`progress@${barrier}`]);
    // the registration's two changes were delivered before it; the barrier is no host event
    expect(seen.map((s) => s.split('@')[0]).sort()).toEqual(['alive', 'record']);
    expect(seen.every((s) => BigInt(s.split('@')[1]!) < BigInt(barrier))).toBe(true);
    expect((await store.listHosts(DL)).hosts.map((h) => h.hostId)).toEqual(['h2']);
  });
});
