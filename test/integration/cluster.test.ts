import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdControllerStore } from '../../src/adapters/etcd/etcd-controller-store.js';
import { drainHost, setDraining } from '../../src/cli/host-drain.js';
import type { GcStatus } from '../../src/agent/gc/host-gc.js';
import { adminCall } from '../../src/api/http/admin-server.js';
import { repoRoot } from '../../src/dev/agent-process.js';
import { LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import { processesWith } from '../../src/dev/host-probe.js';
import { FaultProxyGroup } from '../../src/dev/tcp-proxy.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import type { HostPhase } from '../../src/domain/host-lifecycle.js';
import { DoubleRunSampler } from '../support/double-run.js';
import { AgentProcess, killHostLeftovers, qemusOf, removeDir, requireRealParts, tapsOf, testDir, testHostId, until } from '../support/real-host.js';

/**
 * The whole story on three real hosts (agents with their own state dirs, host ids and fault proxies
 * to etcd), two controller replicas, a real 3-member etcd and real QEMU VMs: partition host B; its
 * VMs stop on B; the active controller is killed inside the fence window; only after the fence
 * deadline (fenced once, by the standby) are they created again on A or C — and a sampler
 * reading the process table every 100 ms fails the test if two QEMU processes of the same VM (same
 * namespace/name) ever run at once. B heals, rejoins ready with a new epoch, takes new work, never
 * restarts its old VMs, and its stale writes are refused.
 *
 * Agent timings: ttl 3s, heartbeat 1s, detach 2s, watchdog 9s, grace 3s, kill 2s, fence window 12s
 * (9 + 3 + 2 + 1 <= 3 + 12).
 */
const TIMINGS = ['--ttl', '3s', '--heartbeat-interval', '1s', '--detach-after', '2s', '--watchdog-timeout', '9s', '--stop-grace', '3s', '--kill-timeout', '2s', '--fence-window', '12s'];
const ids = { a: testHostId('ca'), b: testHostId('cb'), c: testHostId('cc') };
type H = keyof typeof ids;
let dir = '';
let etcd: LocalEtcdCluster;
let store: EtcdControllerStore;
const proxies = {} as Record<H, FaultProxyGroup>;
const agents = {} as Record<H, AgentProcess>;
const controllers = new Map<string, ChildProcess>();

const status = (h: H) => adminCall<GcStatus>(agents[h].admin, 'GET', 'gc/status', undefined, 3000);
async function phase(h: H, p: HostPhase, timeoutMs = 60_000): Promise<GcStatus> {
  return until(`${h} ${p}`, async () => {
    const s = await status(h).catch(() => undefined);
    return s?.phase === p ? s : undefined;
  }, timeoutMs, 50);
}
async function vmRecord(key: string): Promise<ClusterVmRecord | undefined> {
  return (await store.listVms(3000)).find((v) => v.key === key)?.record;
}

/** The process-table sampler (every 100 ms) for the whole file: any VM running as two incarnations at once fails it. */
const sampler = new DoubleRunSampler(Object.values(ids));
const doubles = sampler.doubles;
const firstSeen = sampler.firstSeen;

beforeAll(async () => {
  requireRealParts(['root', 'qemu', 'guest', 'etcd', 'build']);
  dir = testDir('cluster');
  etcd = new LocalEtcdCluster({ dataDir: join(dir, 'etcd'), tag: 'test' });
  await etcd.start();
  store = new EtcdControllerStore({ endpoints: etcd.endpoints(), security: etcd.clientTls() });
  for (const h of ['a', 'b', 'c'] as H[]) {
    proxies[h] = await FaultProxyGroup.start(etcd.endpoints());
    agents[h] = new AgentProcess(ids[h], join(dir, h), [...etcd.agentArgs(proxies[h].endpoints()), ...TIMINGS]);
  }
  await Promise.all((['a', 'b', 'c'] as H[]).map((h) => agents[h].start()));
  // Two controller replicas: one active through etcd election, the other standing by.
  const log = openSync(join(dir, 'controller.log'), 'a');
  for (const n of ['1', '2']) {
    const id = `ctl${n}-${ids.a}`;
    controllers.set(id, spawn(process.execPath, [join(repoRoot(), 'bin/tether.js'), 'controller', ...etcd.agentArgs(), '--controller-id', id, '--leader-ttl', '3s', '--log-level', 'debug'], { stdio: ['ignore', log, log] }));
  }
  for (const h of ['a', 'b', 'c'] as H[]) await phase(h, 'attached', 30_000);
}, 180_000);

afterAll(async () => {
  await sampler.stop();
  for (const c of controllers.values()) c.kill('SIGKILL');
  for (const h of ['a', 'b', 'c'] as H[]) {
    await agents[h]?.kill();
    killHostLeftovers(ids[h]);
    await proxies[h]?.close();
  }
  await store?.close();
  await etcd?.stop();
  if (dir) removeDir(dir);
  for (const id of Object.values(ids)) {
    expect(qemusOf(id).size).toBe(0);
    expect(tapsOf(id)).toEqual([]);
  }
  for (const c of controllers.values()) expect(c.pid !== undefined && processesWith(ids.a).has(c.pid)).toBe(false);
});

describe('cluster: partition, fence window, reschedule, rejoin (real hosts, controller, etcd, QEMU)', () => {
  let oldUid = '';
  let bRevisionBefore = '';

  it('VMs created through an agent API become cluster records placed on that host, and run there', async () => {
    await agents.b.waitTakesVms();
    const vm = await agents.b.api().create({ id: 'web', namespace: 'cl', vcpu: 1, memory_in_mb: 96, kernel: { image: '', cmdline: {} }, interfaces: [{ device_id: 'eth0', type: 'TAP' }] });
    oldUid = vm.spec.uid;
    const rec = await until('web running on b', async () => {
      const r = await vmRecord('cl/web');
      return r?.phase === 'running' ? r : undefined;
    }, 60_000, 200);
    expect(rec).toMatchObject({ uid: oldUid, hostId: ids.b, hostEpoch: 1 });
    expect(qemusOf(ids.b).has(oldUid)).toBe(true);
    bRevisionBefore = (await store.getHost(ids.b, 3000)).recordRevision!;
  }, 90_000);

  it('partition B, active controller killed inside the window: the standby fences once, at the deadline; the VM runs again on A or C, never twice at once', async () => {
    const t0 = Date.now();
    await proxies.b.blackhole();
    // Cluster side: detached with a deadline, then fenced and the VM lost, then rescheduled.
    const detached = await until('B detached in the cluster', async () => {
      const h = await store.getHost(ids.b, 3000);
      return h.record?.state === 'detached' ? h.record : undefined;
    }, 30_000, 100);
    expect(detached.fenceDeadline).toBeGreaterThan(detached.detachedAt!);
    // Kill the active controller inside the fence window: the standby takes over and fences once, not earlier.
    const leader = await store.getLeader(3000);
    expect(leader && controllers.has(leader.candidateId)).toBe(true);
    controllers.get(leader!.candidateId)!.kill('SIGKILL');
    expect(Date.now()).toBeLessThan(detached.fenceDeadline!);
    const moved = await until('web running elsewhere', async () => {
      const r = await vmRecord('cl/web');
      return r && r.uid !== oldUid && r.phase === 'running' ? r : undefined;
    }, 90_000, 200);
    expect([ids.a, ids.c]).toContain(moved.hostId);
    const fenced = (await store.getHost(ids.b, 3000)).record!;
    expect(fenced.state).toBe('fenced');
    // The old incarnation was gone from B before the new one started (sampler checks the overlap).
    expect(qemusOf(ids.b).has(oldUid)).toBe(false);
    // The new incarnation's process appeared only after the controller's fence deadline.
    expect(firstSeen.get(moved.uid)).toBeGreaterThanOrEqual(detached.fenceDeadline!);
    const host = moved.hostId === ids.a ? ids.a : ids.c;
    expect(qemusOf(host).has(moved.uid)).toBe(true);
    expect(doubles).toEqual([]);
    expect(Date.now() - t0).toBeGreaterThan(12_000);
    const fences = (await store.listEvents(1000, 3000)).events.filter((e) => e.event.kind === 'host-fenced' && e.event.hostId === ids.b);
    expect(fences).toHaveLength(1);
    const newLeader = await store.getLeader(3000);
    expect(newLeader?.candidateId).not.toBe(leader!.candidateId);
  }, 150_000);

  it('B heals: rejoins ready at a new epoch, never restarts its old VM, takes new work; its stale writes are refused', async () => {
    await proxies.b.heal();
    const s = await until('B attached at epoch 2', async () => {
      const st = await status('b').catch(() => undefined);
      return st?.phase === 'attached' && st.epoch >= 2 ? st : undefined;
    }, 60_000, 100);
    expect((await store.getHost(ids.b, 3000)).record).toMatchObject({ epoch: s.epoch });
    expect(qemusOf(ids.b).has(oldUid)).toBe(false);
    // A write guarded by B's record as it was before the fence (what a zombie B would send) is refused.
    const stale = await store.commit(
      { guards: [{ hostId: ids.b, expectRevision: bRevisionBefore }], vms: [{ key: 'cl/zombie', expectRevision: null, prevHostId: null, next: { uid: 'f'.repeat(32), spec: { ...(await vmRecord('cl/web'))!.spec, id: { namespace: 'cl', name: 'zombie' } }, hostId: ids.b, hostEpoch: 1, phase: 'running', generation: 1 } }] },
      3000,
    );
    expect(stale.ok).toBe(false);
    expect(await vmRecord('cl/zombie')).toBeUndefined();
    await agents.b.waitTakesVms();
    const fresh = await agents.b.api().create({ id: 'after', namespace: 'cl', vcpu: 1, memory_in_mb: 96, kernel: { image: '', cmdline: {} } });
    const rec = await until('after running on b', async () => {
      const r = await vmRecord('cl/after');
      return r?.phase === 'running' ? r : undefined;
    }, 60_000, 200);
    expect(rec).toMatchObject({ uid: fresh.spec.uid, hostId: ids.b, hostEpoch: s.epoch });
    await new Promise((r) => setTimeout(r, 2000));
    expect(qemusOf(ids.b).has(oldUid)).toBe(false);
    expect(doubles).toEqual([]);
    expect(readFileSync(join(dir, 'controller.log'), 'utf8')).toContain('VM rescheduled');
  }, 120_000);

  it('hold on C: acknowledged by C before it applies; cut off past its watchdog and the fence window, and released while cut off: C does not self-fence, nothing is fenced or rescheduled', async () => {
    await agents.c.waitTakesVms();
    const vm = await agents.c.api().create({ id: 'held', namespace: 'cl', vcpu: 1, memory_in_mb: 96, kernel: { image: '', cmdline: {} } });
    await until('held running on c', async () => (await vmRecord('cl/held'))?.phase === 'running', 60_000, 200);
    const pid = qemusOf(ids.c).get(vm.spec.uid);
    await store.setHold(ids.c, true, Date.now(), 3000);
    await until('c applies the hold', async () => (await status('c')).held, 20_000, 200);
    // The hold protocol: C wrote holdSeen before it applied the hold.
    expect((await store.getHost(ids.c, 3000)).record).toMatchObject({ hold: true, holdSeen: true });
    const list = JSON.parse(execFileSync(process.execPath, [join(repoRoot(), 'bin/tether.js'), 'host', 'list', '--json', ...etcd.agentArgs()], { encoding: 'utf8' })) as { hosts: { hostId: string; holdSeen?: boolean; hold?: boolean }[] };
    expect(list.hosts.find((h) => h.hostId === ids.c)).toMatchObject({ hold: true, holdSeen: true });
    await proxies.c.blackhole();
    await until('C detached in the cluster', async () => (await store.getHost(ids.c, 3000)).record?.state === 'detached', 30_000, 100);
    // A release sent while C is cut off: C cannot learn of it and keeps applying the hold, so the
    // controller (which honours only what C acknowledged) must not fence it.
    await store.setHold(ids.c, false, Date.now(), 3000);
    // Past watchdog (9 s) + grace + kill and past ttl + fence window (15 s).
    await new Promise((r) => setTimeout(r, 20_000));
    const st = await status('c');
    expect(st.phase).toBe('detached');
    expect(st.heldAtDetach).toBe(true);
    expect(qemusOf(ids.c).get(vm.spec.uid)).toBe(pid);
    expect((await store.getHost(ids.c, 3000)).record).toMatchObject({ state: 'detached', hold: false, holdSeen: true });
    expect(await vmRecord('cl/held')).toMatchObject({ uid: vm.spec.uid, hostId: ids.c, phase: 'running' });
    await proxies.c.heal();
    await phase('c', 'attached', 30_000);
    expect((await status('c')).epoch).toBe(1);
    expect(qemusOf(ids.c).get(vm.spec.uid)).toBe(pid);
    // Back in contact, C applies the release first, then acknowledges it.
    await until('c acknowledged the release', async () => (await store.getHost(ids.c, 3000)).record?.holdSeen === false && !(await status('c')).held, 20_000, 200);
    expect(doubles).toEqual([]);
  }, 150_000);

  it('mass disruption: with 2 of 3 hosts cut off the controller freezes (fences and reschedules nothing); after healing nothing stays lost', async () => {
    const before = new Map((await store.listVms(3000)).map((v) => [v.key, v.record]));
    await Promise.all([proxies.a.blackhole(), proxies.c.blackhole()]);
    await until('controller frozen', async () => (await store.getStatus(3000))?.freeze.mode === 'frozen', 30_000, 200);
    // Longer than ttl + fence window: without the freeze both hosts would be fenced by now.
    await new Promise((r) => setTimeout(r, 18_000));
    for (const h of [ids.a, ids.c]) expect((await store.getHost(h, 3000)).record?.state).not.toBe('fenced');
    for (const v of await store.listVms(3000)) {
      expect(v.record.phase).not.toBe('lost');
      expect(v.record.hostId).toBe(before.get(v.key)?.hostId);
    }
    expect(doubles).toEqual([]);
    await Promise.all([proxies.a.heal(), proxies.c.heal()]);
    await phase('a', 'attached', 60_000);
    await phase('c', 'attached', 60_000);
    // The hosts self-fenced during the cut (their watchdog does not know of the freeze) and rejoined
    // at a new epoch; once the freeze lifts, their VMs are placed again: nothing stays lost.
    await until('every VM running again', async () => {
      const vms = await store.listVms(3000);
      return vms.length === before.size && vms.every((v) => v.record.phase === 'running');
    }, 120_000, 500);
    expect(doubles).toEqual([]);
  }, 240_000);

  it('drain A: its VMs stop on A first, then run on B or C; A takes no new VMs until undrained', async () => {
    const onA = (await store.listVms(3000)).filter((v) => v.record.hostId === ids.a && v.record.phase === 'running');
    expect(onA.length).toBeGreaterThan(0);
    const res = await drainHost(store, ids.a, 100_000, () => undefined);
    expect(res.moved.map((m) => m.key).sort()).toEqual(onA.map((v) => v.key).sort());
    await until('drained VMs running elsewhere', async () => {
      const vms = await store.listVms(3000);
      return onA.every((o) => {
        const v = vms.find((x) => x.key === o.key)?.record;
        return v && v.phase === 'running' && v.hostId !== ids.a && v.uid !== o.record.uid;
      });
    }, 60_000, 300);
    expect(qemusOf(ids.a).size).toBe(0);
    expect(doubles).toEqual([]);
    expect((await store.getHost(ids.a, 3000)).record?.draining).toBe(true);
    await setDraining(store, ids.a, false);
    expect((await store.getHost(ids.a, 3000)).record?.draining).toBeUndefined();
  }, 180_000);
});
