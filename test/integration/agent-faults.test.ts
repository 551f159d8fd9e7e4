import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdControllerStore } from '../../src/adapters/etcd/etcd-controller-store.js';
import type { GcReport } from '../../src/agent/gc/gc-report.js';
import type { GcStatus } from '../../src/agent/gc/host-gc.js';
import { adminCall } from '../../src/api/http/admin-server.js';
import { repoRoot } from '../../src/dev/agent-process.js';
import { LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import type { HostPhase } from '../../src/domain/host-lifecycle.js';
import { DoubleRunSampler } from '../support/double-run.js';
import { AgentProcess, killHostLeftovers, processesWith, qemusOf, removeDir, requireRealParts, tapsOf, testDir, testHostId, until } from '../support/real-host.js';

/**
 * The fence outlives the agent: real agents (A runs the VM, B takes it over), a real controller, a real
 * 3-member etcd, real QEMU, and a process-table sampler every 100 ms that fails the file if any VM ever
 * runs as two incarnations at once. The agent of A is killed, frozen, restarted, duplicated; its
 * guardian is killed. No fault proxy here: the faults are the agent's own.
 *
 * Timings: ttl 3s, heartbeat 1s, detach 2s, watchdog 6s, grace 2s, kill 2s, fence window 8s:
 * 6 + 2 + 2 + 1 <= 3 + 8. So every VM of a host whose agent died is gone by lastAck + 10 s (the
 * guardian's deadline lastAck + 8 s, plus the kill), and the controller reschedules at the earliest at
 * lastAck + 11 s.
 */
const T = { ttl: 3000, watchdog: 6000, grace: 2000, kill: 2000, fenceWindow: 8000 };
const TIMINGS = ['--ttl', '3s', '--heartbeat-interval', '1s', '--detach-after', '2s', '--watchdog-timeout', '6s', '--stop-grace', '2s', '--kill-timeout', '2s', '--fence-window', '8s'];
/** The bound every VM of a host must be gone by, after its last acknowledged heartbeat. */
const GONE_BOUND_MS = T.watchdog + T.grace + T.kill;
const ids = { a: testHostId('fa'), b: testHostId('fb') };
let dir = '';
let lockDir = '';
let etcd: LocalEtcdCluster;
let store: EtcdControllerStore;
let controller: ChildProcess;
const agents = {} as Record<'a' | 'b', AgentProcess>;
const extra: AgentProcess[] = [];
const sampler = new DoubleRunSampler(Object.values(ids));
/** What the closing note reports: measured times per scenario. */
const measured: Record<string, unknown> = {};

const status = (h: 'a' | 'b') => adminCall<GcStatus>(agents[h].admin, 'GET', 'gc/status', undefined, 3000);
async function phase(h: 'a' | 'b', p: HostPhase, timeoutMs = 60_000, minEpoch = 0): Promise<GcStatus> {
  return until(`${h} ${p}`, async () => {
    const s = await status(h).catch(() => undefined);
    return s?.phase === p && s.epoch >= minEpoch ? s : undefined;
  }, timeoutMs, 50);
}
async function vmRecord(key: string): Promise<ClusterVmRecord | undefined> {
  return (await store.listVms(3000)).find((v) => v.key === key)?.record;
}
async function createOnA(name: string): Promise<{ uid: string; pid: number }> {
  await agents.a.waitTakesVms();
  const vm = await agents.a.api().create({ id: name, namespace: 'af', vcpu: 1, memory_in_mb: 96, kernel: { image: '', cmdline: {} }, interfaces: [{ device_id: 'eth0', type: 'TAP' }] });
  await until(`${name} running on a`, async () => (await vmRecord(`af/${name}`))?.phase === 'running', 60_000, 200);
  return { uid: vm.spec.uid, pid: qemusOf(ids.a).get(vm.spec.uid)! };
}
/** Waits until the VM runs as a new incarnation on another host; returns that record. */
async function movedAway(name: string, oldUid: string): Promise<ClusterVmRecord> {
  return until(`${name} running elsewhere`, async () => {
    const r = await vmRecord(`af/${name}`);
    return r && r.uid !== oldUid && r.phase === 'running' ? r : undefined;
  }, 90_000, 100);
}
function guardianPid(stateDir: string): number | undefined {
  const f = join(stateDir, 'guardian', 'guardian.pid');
  if (!existsSync(f)) return undefined;
  const pid = Number(readFileSync(f, 'utf8').split('\n')[0]);
  return processesWith('guardian').has(pid) ? pid : undefined;
}
const agentArgs = () => [...etcd.agentArgs(), '--lock-dir', lockDir, ...TIMINGS];

/**
 * One story on host A, checked from outside: the VM's last sighting on A, the fence deadline, the new
 * incarnation's first sighting elsewhere. `faultAt`: wall ms when the agent stopped acknowledging.
 */
async function expectFencedAndMoved(name: string, old: { uid: string }, faultAt: number): Promise<Record<string, number>> {
  const moved = await movedAway(name, old.uid);
  expect(moved.hostId).toBe(ids.b);
  const rec = (await store.getHost(ids.a, 3000)).record!;
  const goneAt = sampler.lastSeen.get(old.uid)!;
  const newAt = sampler.firstSeen.get(moved.uid)!;
  // The old incarnation is gone from A (the guardian killed it) before the new one appears on B ...
  expect(goneAt).toBeLessThan(newAt);
  expect(qemusOf(ids.a).has(old.uid)).toBe(false);
  // ... and by the bound the controller relies on: lastAck <= faultAt, and the sampler's 100 ms period.
  expect(goneAt - faultAt).toBeLessThanOrEqual(GONE_BOUND_MS + 100);
  // The new incarnation started only after the controller's fence deadline.
  expect(rec.fenceDeadline).toBeDefined();
  expect(newAt).toBeGreaterThanOrEqual(rec.fenceDeadline!);
  expect(sampler.doubles).toEqual([]);
  return { goneAfterFaultMs: goneAt - faultAt, runningElsewhereAfterFaultMs: newAt - faultAt, fenceDeadlineAfterFaultMs: rec.fenceDeadline! - faultAt, safetyMarginMs: newAt - goneAt };
}

beforeAll(async () => {
  requireRealParts(['root', 'qemu', 'guest', 'etcd', 'build']);
  dir = testDir('faults');
  lockDir = join(dir, 'locks');
  etcd = new LocalEtcdCluster({ dataDir: join(dir, 'etcd'), tag: 'test' });
  await etcd.start();
  store = new EtcdControllerStore({ endpoints: etcd.endpoints(), security: etcd.clientTls() });
  for (const h of ['a', 'b'] as const) agents[h] = new AgentProcess(ids[h], join(dir, h), agentArgs());
  await Promise.all([agents.a.start(), agents.b.start()]);
  const log = openSync(join(dir, 'controller.log'), 'a');
  controller = spawn(process.execPath, [join(repoRoot(), 'bin/tether.js'), 'controller', ...etcd.agentArgs(), '--controller-id', `ctl-${ids.a}`, '--leader-ttl', '3s', '--log-level', 'debug'], { stdio: ['ignore', log, log] });
  await phase('a', 'attached', 30_000);
  await phase('b', 'attached', 30_000);
}, 180_000);

afterAll(async () => {
  await sampler.stop();
  controller?.kill('SIGKILL');
  for (const a of [...extra, agents.a, agents.b]) {
    if (!a) continue;
    if (a.running) process.kill(a.proc!.pid!, 'SIGCONT');
    await a.kill();
  }
  for (const id of Object.values(ids)) killHostLeftovers(id);
  await store?.close();
  await etcd?.stop();
  if (dir) removeDir(dir);
  // The guardians exit once their state dir is gone.
  await until('guardians gone', () => [...processesWith('guardian')].every(([, argv]) => !argv.some((a) => a.startsWith(dir))), 10_000, 100);
  for (const id of Object.values(ids)) {
    expect(qemusOf(id).size).toBe(0);
    expect(tapsOf(id)).toEqual([]);
  }
  console.log(`agent-faults measurements: ${JSON.stringify(measured)}`);
});

describe('the fence outlives the agent (real agents, guardian, controller, etcd, QEMU)', () => {
  it('an agent restarted within the watchdog keeps its VMs: same pids, same placement', async () => {
    const vm = await createOnA('restart');
    expect(guardianPid(agents.a.stateDir)).toBeDefined();
    await agents.a.kill();
    await agents.a.start();
    await phase('a', 'attached', 20_000, 1);
    await new Promise((r) => setTimeout(r, GONE_BOUND_MS));
    expect(qemusOf(ids.a).get(vm.uid)).toBe(vm.pid);
    expect(await vmRecord('af/restart')).toMatchObject({ uid: vm.uid, hostId: ids.a, phase: 'running' });
    expect((await status('a')).epoch).toBe(1);
    expect(sampler.doubles).toEqual([]);
  }, 90_000);

  it('a killed guardian is restarted by the agent, and protects again', async () => {
    const before = guardianPid(agents.a.stateDir)!;
    const t0 = Date.now();
    process.kill(before, 'SIGKILL');
    const after = await until('a new guardian', () => {
      const p = guardianPid(agents.a.stateDir);
      return p !== undefined && p !== before ? p : undefined;
    }, 10_000, 20);
    measured.guardianRestartGapMs = Date.now() - t0;
    expect(after).not.toBe(before);
    // The new guardian takes its lock before the agent's start call returns and records the restart.
    await until('guardian-restarted event', async () => (await adminCall<{ kind: string }[]>(agents.a.admin, 'GET', 'events', undefined, 3000)).some((e) => e.kind === 'guardian-restarted'), 5000, 50);
  }, 30_000);

  it('agent SIGKILLed and not restarted: the guardian kills the VM on A before the controller reschedules it on B; never twice; the returning agent cleans and rejoins ready', async () => {
    const vm = (await vmRecord('af/restart'))!;
    const faultAt = Date.now();
    await agents.a.kill('SIGKILL');
    measured.agentSigkill = await expectFencedAndMoved('restart', vm, faultAt);
    await agents.a.start();
    const s = await phase('a', 'attached', 60_000, 2);
    expect(s.epoch).toBe(2);
    const report = (await adminCall<GcReport | null>(agents.a.admin, 'GET', 'gc/report', undefined, 3000))!;
    expect(report.reason).toBe('guardian');
    expect(report.audit?.clean).toBe(true);
    expect(report.rejoinedEpoch).toBe(2);
    expect(sampler.doubles).toEqual([]);
  }, 150_000);

  it('agent SIGSTOPped for longer than the fence window: same outcome; on SIGCONT it cleans and rejoins ready', async () => {
    const vm = await createOnA('frozen');
    const faultAt = Date.now();
    process.kill(agents.a.proc!.pid!, 'SIGSTOP');
    try {
      measured.agentSigstop = await expectFencedAndMoved('frozen', vm, faultAt);
    } finally {
      process.kill(agents.a.proc!.pid!, 'SIGCONT');
    }
    const s = await phase('a', 'attached', 60_000, 3);
    expect(s.epoch).toBe(3);
    expect(qemusOf(ids.a).has(vm.uid)).toBe(false);
    expect(sampler.doubles).toEqual([]);
  }, 150_000);

  it('a second agent with the same host id: refused at start on the same machine, naming the holder; elsewhere refused registration without touching the first agent’s VMs', async () => {
    const vm = await createOnA('dup');
    // Same machine (same lock dir), another state dir: refused at once with the holder named.
    const same = new AgentProcess(ids.a, join(dir, 'dup-same'), agentArgs());
    extra.push(same);
    await expect(same.start()).rejects.toThrow(/already serves host id .* \(one agent per host id\)|held by pid/);
    expect(readFileSync(same.log, 'utf8')).toMatch(new RegExp(`state dir ${agents.a.stateDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    // Another machine (its own lock dir): it starts, but the cluster refuses it as a duplicate.
    const other = new AgentProcess(ids.a, join(dir, 'dup-other'), [...etcd.agentArgs(), '--lock-dir', join(dir, 'locks-other'), ...TIMINGS]);
    extra.push(other);
    await other.start();
    const st = await until('duplicate refused', async () => {
      const s = await adminCall<GcStatus>(other.admin, 'GET', 'gc/status', undefined, 3000).catch(() => undefined);
      return s?.duplicateOf ? s : undefined;
    }, 20_000, 100);
    expect(st.phase).toBe('starting');
    expect(st.duplicateOf).toMatch(/another agent heartbeats for this host id: tether agent pid \d+/);
    // Longer than its TTL and its watchdog: the first agent's VM keeps its pid, A stays attached.
    await new Promise((r) => setTimeout(r, GONE_BOUND_MS));
    expect(qemusOf(ids.a).get(vm.uid)).toBe(vm.pid);
    expect((await status('a')).phase).toBe('attached');
    expect(await vmRecord('af/dup')).toMatchObject({ uid: vm.uid, hostId: ids.a, phase: 'running' });
    await other.kill('SIGTERM');
    expect(sampler.doubles).toEqual([]);
  }, 120_000);
});
