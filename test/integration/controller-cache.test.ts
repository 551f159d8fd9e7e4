/**
 * The controller's VM cache (issue 9, Contract 3) against a REAL etcd (LocalEtcdCluster, one
 * member, plaintext, tag `test`): listed at one revision, then watched; it must equal a fresh
 * listing after hundreds of changes, after compactions of the history (etcd's `Compact`, physical),
 * after the member restarts (every watch breaks: the controller lists again instead of resuming from
 * a revision that may be compacted away) and after a takeover by another replica.
 *
 * afterAll stops etcd and asserts that no process carries its mark and its data dir is gone.
 */
import { mkdtempSync } from 'node:fs';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { EtcdControllerStore } from '../../src/adapters/etcd/etcd-controller-store.js';
import { Controller } from '../../src/controller/controller.js';
import { findEtcdBinary, LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import type { ControllerState } from '../../src/domain/controller/types.js';
import { silentLogger } from '../support/fake-ports.js';
import { bareSpec } from '../support/host-harness.js';
import { stopTestEtcd } from '../support/etcd-teardown.js';

const PREFIX = '/cache/';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let cluster: LocalEtcdCluster | undefined;
let dataDir: string;
let raw: Etcd3 | undefined;
const stores: EtcdControllerStore[] = [];
const controllers: Controller[] = [];

const stateOf = (c: Controller): ControllerState => (c as unknown as { state: ControllerState }).state;

function record(name: string, over: Partial<ClusterVmRecord> = {}): ClusterVmRecord {
  return { uid: `u-${name}`, spec: bareSpec(name, 1, 128), hostId: `h${name.length % 3}`, hostEpoch: 1, phase: 'running', generation: 1, updatedAt: 1, ...over };
}

async function put(name: string, over: Partial<ClusterVmRecord> = {}): Promise<void> {
  await raw!.put(`${PREFIX}vms/ns/${name}`).value(JSON.stringify(record(name, over)));
}

function newStore(): EtcdControllerStore {
  const s = new EtcdControllerStore({ endpoints: cluster!.endpoints(), prefix: PREFIX });
  stores.push(s);
  return s;
}

/** The controller's cache and a fresh listing, as `key@revision phase` lines. */
async function compare(c: Controller, observer: EtcdControllerStore): Promise<{ cache: string[]; store: string[] }> {
  const line = (v: { key: string; revision: string; record: ClusterVmRecord }) => `${v.key}@${v.revision} ${v.record.phase}`;
  const store = (await observer.listVms(5000)).map(line).sort();
  const cache = [...stateOf(c).vms.values()].map(line).sort();
  return { cache, store };
}

/** Waits until the cache equals the store (a failing run waits `maxMs`, then shows the difference). */
async function converged(c: Controller, observer: EtcdControllerStore, maxMs = 20_000): Promise<void> {
  const t0 = Date.now();
  let r = await compare(c, observer);
  while (JSON.stringify(r.cache) !== JSON.stringify(r.store) && Date.now() - t0 < maxMs) {
    await sleep(200);
    r = await compare(c, observer);
  }
  expect(r.cache).toEqual(r.store);
}

async function leading(c: Controller, maxMs = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!(c.isLeader && stateOf(c).vmsSynced) && Date.now() - t0 < maxMs) await sleep(100);
  expect(c.isLeader && stateOf(c).vmsSynced).toBe(true);
}

describe('controller VM cache on real etcd', () => {
  beforeAll(async () => {
    findEtcdBinary();
    dataDir = mkdtempSync('/tmp/tether-test-controller-cache-');
    cluster = new LocalEtcdCluster({ dataDir, tag: 'test', size: 1, tls: false });
    await cluster.start();
    raw = new Etcd3({ hosts: cluster.endpoints() });
  });

  afterAll(async () => {
    for (const c of controllers) await c.stop().catch(() => undefined);
    for (const s of stores) await s.close().catch(() => undefined);
    raw?.close();
    await stopTestEtcd(cluster, dataDir);
  });

  it('equals a fresh listing across changes, compactions, a member restart and a takeover', async () => {
    for (let i = 0; i < 300; i++) await put(`v${i}`);
    const observer = newStore();
    const c1 = new Controller(newStore(), new SystemClock(), silentLogger([]), { controllerId: 'cache-1', leaderTtl: 5000 });
    controllers.push(c1);
    c1.start();
    await leading(c1);
    await converged(c1, observer);
    expect(stateOf(c1).vms.size).toBe(300);

    // changes through the watch, with the history compacted under it (physical compaction)
    for (let i = 0; i < 300; i += 3) await put(`v${i}`, { phase: 'failed', generation: 2 });
    for (let i = 1; i < 300; i += 7) await raw!.delete().key(`${PREFIX}vms/ns/v${i}`);
    const { header } = await raw!.kv.range({ key: Buffer.from(`${PREFIX}vms/`) });
    await raw!.kv.compact({ revision: header.revision, physical: true });
    for (let i = 0; i < 50; i++) await put(`new${i}`);
    await converged(c1, observer);

    // the member restarts: every watch breaks; the controller lists again (never resumes from an old, compacted revision)
    await cluster!.stopMember(0);
    await sleep(1000);
    await cluster!.restart(0);
    for (let i = 0; i < 50; i++) await put(`after${i}`, { phase: 'stopped' });
    const now = await raw!.kv.range({ key: Buffer.from(`${PREFIX}vms/`) });
    await raw!.kv.compact({ revision: now.header.revision, physical: true });
    await leading(c1, 30_000);
    await converged(c1, observer, 30_000);

    // takeover: the leader crashes (no resign); another replica lists once and agrees
    await c1.stop();
    const c2 = new Controller(newStore(), new SystemClock(), silentLogger([]), { controllerId: 'cache-2', leaderTtl: 5000 });
    controllers.push(c2);
    c2.start();
    await leading(c2, 30_000);
    await put('late', { phase: 'pending' });
    await converged(c2, observer);
  }, 180_000);
});
