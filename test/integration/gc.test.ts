import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { noop } from 'cockatiel';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditResult, GcReport } from '../../src/agent/gc/gc-report.js';
import type { GcStatus } from '../../src/agent/gc/host-gc.js';
import { adminCall, adminText } from '../../src/api/http/admin-server.js';
import type { FlintlockMicroVM, MicroVmSpecIn } from '../../src/api/grpc/wire-types.js';
import { LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import { etcd3Security } from '../../src/adapters/etcd/etcd-client.js';
import { FaultProxyGroup } from '../../src/dev/tcp-proxy.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import type { HostPhase } from '../../src/domain/host-lifecycle.js';
import { AgentProcess, killHostLeftovers, qemusOf, removeDir, requireRealParts, tapsOf, testDir, testHostId, until } from '../support/real-host.js';

/**
 * Detached-host GC end to end: a real 3-member etcd, a fault proxy between the agent and etcd
 * (blackhole = a cut cable: connections stay open, bytes vanish), a real agent process, real QEMU
 * VMs and taps. Outcomes are checked on the system (/proc, `ip link`, files) and in etcd directly.
 *
 * Timings (checked safe at agent start): ttl 3s, heartbeat 1s, detach 2s, watchdog 12s, grace 3s,
 * kill 2s, fence window 15s: 12 + 3 + 2 + 1 <= 3 + 15. The watchdog leaves room for the etcd
 * restarts of the quorum scenario on a loaded 2-core machine.
 */
const WATCHDOG_MS = 12_000;
const TIMINGS = ['--ttl', '3s', '--heartbeat-interval', '1s', '--detach-after', '2s', '--watchdog-timeout', '12s', '--stop-grace', '3s', '--kill-timeout', '2s', '--fence-window', '15s'];
const hostId = testHostId('gc');
let dir = '';
let etcd: LocalEtcdCluster;
let proxies: FaultProxyGroup;
let agent: AgentProcess;
let client: Etcd3;

const status = () => adminCall<GcStatus>(agent.admin, 'GET', 'gc/status', undefined, 3000);
const report = () => adminCall<GcReport | null>(agent.admin, 'GET', 'gc/report', undefined, 3000);

async function record(): Promise<HostRecord> {
  const raw = await client.get(`/tether/hosts/${hostId}/record`).string();
  if (!raw) throw new Error('no host record in etcd');
  return JSON.parse(raw) as HostRecord;
}

async function phase(p: HostPhase | HostPhase[], timeoutMs = 60_000): Promise<GcStatus> {
  const want = Array.isArray(p) ? p : [p];
  return until(`host phase ${want.join('|')}`, async () => {
    const s = await status().catch(() => undefined);
    return s && want.includes(s.phase) ? s : undefined;
  }, timeoutMs, 20);
}

/** Samples the host phase and the QEMU pids every 100 ms until stopped. */
function sampler() {
  const phases = new Set<HostPhase>();
  const pids: Map<string, number>[] = [];
  let on = true;
  const loop = (async () => {
    while (on) {
      const s = await status().catch(() => undefined);
      if (s) phases.add(s.phase);
      pids.push(qemusOf(hostId));
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  return {
    phases,
    pids,
    stop: async () => {
      on = false;
      await loop;
    },
  };
}

async function createVm(name: string, cmdline: Record<string, string> = {}): Promise<FlintlockMicroVM> {
  const s: MicroVmSpecIn = { id: name, namespace: 'gc', vcpu: 1, memory_in_mb: 96, kernel: { image: '', cmdline }, interfaces: [{ device_id: 'eth0', type: 'TAP' }] };
  await agent.waitTakesVms();
  const vm = await agent.api().create(s);
  return until(`vm ${name} running`, async () => {
    const v = await agent.api().get(vm.spec.uid);
    if (v.status.state === 'FAILED') throw new Error(`vm ${name} failed`);
    return v.status.state === 'CREATED' ? v : undefined;
  }, 60_000, 200);
}

/** Everything the host owned is gone from the system and from its inventory. */
async function assertHostClean(): Promise<void> {
  expect(qemusOf(hostId).size).toBe(0);
  expect(tapsOf(hostId)).toEqual([]);
  expect(existsSync(join(dir, 'state', 'vm', 'gc'))).toBe(false);
  const audit = await adminCall<AuditResult>(agent.admin, 'GET', 'gc/audit');
  expect(audit).toMatchObject({ clean: true, leaks: [], missing: [] });
  expect(await agent.api().list()).toEqual([]);
}

beforeAll(async () => {
  requireRealParts(['root', 'qemu', 'guest', 'etcd', 'build']);
  dir = testDir('gc');
  etcd = new LocalEtcdCluster({ dataDir: join(dir, 'etcd'), tag: 'test' });
  await etcd.start();
  proxies = await FaultProxyGroup.start(etcd.endpoints());
  client = new Etcd3({ hosts: etcd.endpoints(), ...etcd3Security(etcd.endpoints(), etcd.clientTls()), faultHandling: { host: () => noop, global: noop } });
  agent = new AgentProcess(hostId, join(dir, 'state'), [...etcd.agentArgs(proxies.endpoints()), ...TIMINGS]);
  await agent.start();
  await agent.waitTakesVms();
}, 120_000);

afterAll(async () => {
  await agent?.kill();
  killHostLeftovers(hostId);
  client?.close();
  await proxies?.close();
  await etcd?.stop();
  if (dir) removeDir(dir);
  expect(qemusOf(hostId).size).toBe(0);
  expect(tapsOf(hostId)).toEqual([]);
});

describe('detached-host GC on real etcd, QEMU and taps', () => {
  let vm1: FlintlockMicroVM;
  let pid1 = 0;

  it('registers in etcd: record attached at epoch 1 with the published timings, alive key on the lease', async () => {
    const rec = await record();
    expect(rec).toMatchObject({ hostId, state: 'attached', epoch: 1, hold: false });
    expect(rec.timings.watchdogTimeout).toBe(WATCHDOG_MS);
    const alive = await client.get(`/tether/hosts/${hostId}/alive`).exec();
    expect(alive.kvs[0]?.lease).not.toBe('0');
    const metrics = await adminText(agent.admin, '/metrics');
    expect(metrics).toContain('tether_host_lifecycle_state{phase="attached"} 1');
    expect(metrics).toMatch(/tether_last_ack_age_seconds 0\.\d+/);
    vm1 = await createVm('steady');
    pid1 = qemusOf(hostId).get(vm1.spec.uid)!;
    expect(pid1).toBeGreaterThan(0);
  });

  it('a partition shorter than the watchdog touches nothing', async () => {
    const s = sampler();
    await proxies.blackhole();
    await phase('detached', 10_000);
    await new Promise((r) => setTimeout(r, 3000)); // detached for a while, well inside the watchdog
    await proxies.heal();
    await phase('attached', 10_000);
    await new Promise((r) => setTimeout(r, 1500));
    await s.stop();
    expect(s.phases.has('detached')).toBe(true);
    expect(s.phases.has('fencing')).toBe(false);
    for (const p of s.pids) expect(p.get(vm1.spec.uid)).toBe(pid1);
    expect((await status()).epoch).toBe(1);
    expect((await record()).state).toBe('attached');
    expect(await report()).toBeNull();
  });

  it('etcd leader killed three times: nothing touched', async () => {
    const s = sampler();
    for (let i = 0; i < 3; i++) {
      const leader = await etcd.waitForLeader(10_000);
      await etcd.kill(leader);
      const next = await etcd.waitForLeader(10_000);
      expect(next).not.toBe(leader);
      await etcd.restart(leader);
      await new Promise((r) => setTimeout(r, 1000));
    }
    await new Promise((r) => setTimeout(r, 2000));
    await s.stop();
    expect(s.phases.has('fencing')).toBe(false);
    for (const p of s.pids) expect(p.get(vm1.spec.uid)).toBe(pid1);
    expect((await status()).phase).toBe('attached');
    expect(await report()).toBeNull();
  });

  it('quorum lost for longer than the TTL, then the lease revoked on resume: the host re-registers in time and keeps its VMs', async () => {
    const s = sampler();
    const leaseBefore = (await client.get(`/tether/hosts/${hostId}/alive`).exec()).kvs[0]!.lease;
    await etcd.stopMember(1);
    await etcd.stopMember(2);
    const cut = Date.now();
    await new Promise((r) => setTimeout(r, 4000)); // > ttl 3s
    await Promise.all([etcd.restart(1), etcd.restart(2)]);
    await etcd.waitForLeader(10_000);
    // The scenario only means something if quorum came back before the watchdog.
    expect(Date.now() - cut).toBeLessThan(WATCHDOG_MS - 2000);
    // What an old leader does on resume (MACHINE-NOTES: false expiry): the lease is revoked.
    await client.leaseClient.leaseRevoke({ ID: leaseBefore }).catch(() => undefined);
    await until('re-registered on a new lease', async () => {
      const kv = (await client.get(`/tether/hosts/${hostId}/alive`).exec()).kvs[0];
      return kv && kv.lease !== leaseBefore;
    }, 8000, 100);
    await phase('attached', 5000);
    await new Promise((r) => setTimeout(r, 1000));
    await s.stop();
    expect(s.phases.has('fencing')).toBe(false);
    for (const p of s.pids) expect(p.get(vm1.spec.uid)).toBe(pid1);
    expect(await record()).toMatchObject({ state: 'attached', epoch: 1 });
    expect(readFileSync(agent.log, 'utf8')).toContain('lease lost: the cluster no longer has this host on its lease');
  }, 60_000);

  it('a partition longer than the watchdog: graceful stop, forced for a guest that ignores the button, an agent SIGKILLed mid-fence resumes; clean; rejoins ready at epoch 2', async () => {
    const stubborn = await createVm('stubborn', { 'tether.ignore_powerdown': '1' });
    const pidStubborn = qemusOf(hostId).get(stubborn.spec.uid)!;
    const t0 = Date.now();
    await proxies.blackhole();
    await phase('fencing', 20_000);
    const fenceAt = Date.now() - t0;
    // Not attached: new VMs are refused with the reason; reads keep working.
    const refused = (await agent.api().create({ id: 'late', namespace: 'gc', vcpu: 1, memory_in_mb: 96 }).catch((e: unknown) => e)) as { code: string; message: string };
    expect(refused.code).toBe('UNAVAILABLE');
    expect(refused.message).toMatch(/host is (fencing|cleaning|clean)/);
    expect((await agent.api().list()).length).toBeGreaterThan(0);
    expect(fenceAt).toBeGreaterThanOrEqual(WATCHDOG_MS - 1000 - 200); // lastAck precedes the cut by < 1 heartbeat
    // The stubborn guest holds the fence for the 3 s grace: crash the agent inside it.
    await until('steady VM stopped and recorded', async () => !qemusOf(hostId).has(vm1.spec.uid) && (await report())?.stops.some((x) => x.uid === vm1.spec.uid), 5000, 20);
    expect(qemusOf(hostId).get(stubborn.spec.uid)).toBe(pidStubborn);
    await agent.kill('SIGKILL');
    await agent.start();
    await phase('clean', 30_000);
    await assertHostClean();
    const rep = (await report())!;
    expect(rep.reason).toBe('watchdog');
    const methods = Object.fromEntries(rep.stops.map((x) => [x.uid, x.method]));
    expect(methods[vm1.spec.uid]).toBe('graceful');
    // Forced: by the resumed agent, or by the guardian if the agent's restart came after its deadline.
    expect(methods[stubborn.spec.uid]).toMatch(/^forced-/);
    expect(rep.audit?.clean).toBe(true);
    // While cut off, the record in etcd is untouched by this host (no controller runs here).
    expect((await record()).epoch).toBe(1);
    await proxies.heal();
    await phase('attached', 20_000);
    expect(await record()).toMatchObject({ state: 'ready', epoch: 2 });
    expect((await report())!.rejoinedEpoch).toBe(2);
    // VMs from before the fence are never restarted.
    expect(qemusOf(hostId).size).toBe(0);
  }, 150_000);

  it('an agent SIGKILLed mid-cleanup resumes after restart and finishes with nothing leaked', async () => {
    await proxies.heal(); // independent of the previous test's outcome
    await phase('attached', 30_000);
    for (const n of ['c1', 'c2', 'c3']) await createVm(n);
    expect(qemusOf(hostId).size).toBe(3);
    await proxies.blackhole();
    await phase('cleaning', 30_000);
    await agent.kill('SIGKILL');
    await agent.start();
    await phase('clean', 30_000);
    await assertHostClean();
    await proxies.heal();
    await phase('attached', 20_000);
    const rec = await record();
    expect(rec.state).toBe('ready');
    expect(rec.epoch).toBeGreaterThanOrEqual(3);
  }, 150_000);
});
