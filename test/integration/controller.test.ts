/**
 * The controller against a REAL 3-member etcd (LocalEtcdCluster, tag `test`, one cluster for the file).
 * Simulated hosts do what the agent does: a real lease, `EtcdClusterStore.register` (record by CAS txn,
 * `alive` key on the lease) and keepalives every heartbeat; a host is cut by stopping its keepalives
 * (the lease expires) or revoking its lease. Short, safe timings: ttl 3 s, fence window 1.5 s
 * (2.5 + 0.5 + 0.5 + 0.5 = 4 <= 3 + 1.5); ttl 3 s rather than 2 s so a starved machine (other sessions'
 * VMs) does not expire the healthy hosts' leases. Each test uses its own key prefix; assertions count
 * only the events of the host under test.
 *
 * afterAll stops the cluster and asserts that no process carries its mark and its data dir is gone.
 */
import { mkdtempSync } from 'node:fs';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { registerHostCommands, showEvents, type HostListRow } from '../../src/cli/commands/host.js';
import { EtcdClusterStore } from '../../src/adapters/etcd/etcd-cluster-store.js';
import { EtcdControllerStore } from '../../src/adapters/etcd/etcd-controller-store.js';
import { Controller, type ControllerOptions } from '../../src/controller/controller.js';
import { setHostHold } from '../../src/controller/operator.js';
import { findEtcdBinary, LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import type { ClusterEvent } from '../../src/domain/cluster-event.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { checkTimings, type GcTimings } from '../../src/domain/gc-timing.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import { silentLogger } from '../support/fake-ports.js';
import { stopTestEtcd } from '../support/etcd-teardown.js';

const T: GcTimings = {
  ttl: 3000,
  heartbeatInterval: 500,
  detachAfter: 1000,
  watchdogTimeout: 2500,
  stopGrace: 500,
  killTimeout: 500,
  fenceWindow: 1500,
  clockDriftMargin: 500,
  electionTolerance: 2000,
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Deadline of the test's own observer calls: generous, the machine may be shared and starved. */
const OBS_DL = 3000;
/** Extra time waits allow before failing (only a failing run waits that long). */
const SLACK = 10_000;

let cluster: LocalEtcdCluster | undefined;
let dataDir: string;
const closers: (() => Promise<void>)[] = [];

/** A host as the agent registers it, with keepalives on its own timer. */
class SimHost {
  readonly store: EtcdClusterStore;
  lease: string | undefined;
  epoch = 0;
  /** Wall-clock send time of the last acknowledged keepalive (or of the grant). */
  lastAckSent = 0;
  /** Acknowledge hold changes as the agent's hold protocol does (write `holdSeen`). */
  ackHolds = true;
  private timer: NodeJS.Timeout | undefined;
  private syncing = false;

  constructor(
    readonly hostId: string,
    prefix: string,
    private readonly timings: GcTimings = T,
  ) {
    this.store = new EtcdClusterStore({ endpoints: cluster!.endpoints(), security: cluster!.clientTls(), prefix });
    closers.push(() => this.close());
  }

  async register(mode: 'reattach' | 'ready' = 'reattach'): Promise<void> {
    this.stopKeepalives();
    const sent = Date.now();
    this.lease = await this.store.grantLease(this.timings.ttl, OBS_DL);
    const res = await this.store.register(
      {
        hostId: this.hostId,
        mode,
        epoch: this.epoch,
        agentId: `sim-${this.hostId}`,
        holder: `simulated host ${this.hostId} (test)`,
        holdApplied: false,
        record: { hostId: this.hostId, timings: this.timings, capacity: { vcpu: 4, memoryMb: 2048 }, labels: {}, agentVersion: 'test' },
        lease: this.lease,
      },
      OBS_DL,
    );
    if (!res.ok) throw new Error(`registration of ${this.hostId} refused: ${res.detail}`);
    this.epoch = res.epoch;
    this.lastAckSent = sent;
    const lease = this.lease;
    this.timer = setInterval(() => {
      const s = Date.now();
      this.store.keepalive(this.hostId, lease, this.timings.heartbeatInterval).then(
        (a) => {
          if (a.kind === 'alive') this.lastAckSent = Math.max(this.lastAckSent, s);
        },
        () => undefined,
      );
      void this.syncHold(lease);
    }, this.timings.heartbeatInterval);
  }

  /** The agent's hold protocol, reduced: `holdSeen` follows `hold` while the host is attached. */
  private async syncHold(lease: string): Promise<void> {
    if (!this.ackHolds || this.syncing) return;
    this.syncing = true;
    try {
      const rec = await this.store.getHost(this.hostId, this.timings.heartbeatInterval);
      if (rec && rec.hold !== (rec.holdSeen ?? false)) await this.store.ackHold(this.hostId, this.epoch, lease, rec.hold, this.timings.heartbeatInterval);
    } catch {
      // the next heartbeat retries
    } finally {
      this.syncing = false;
    }
  }

  /** Cut: no more keepalives; the lease expires a TTL after the last acknowledged one. */
  stopKeepalives(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  async revoke(): Promise<void> {
    this.stopKeepalives();
    if (this.lease) await this.store.revokeLease(this.lease, OBS_DL);
  }

  async close(): Promise<void> {
    this.stopKeepalives();
    await this.store.close();
  }
}

function observer(prefix: string): EtcdControllerStore {
  const s = new EtcdControllerStore({ endpoints: cluster!.endpoints(), security: cluster!.clientTls(), prefix });
  closers.push(() => s.close());
  return s;
}

function controller(prefix: string, id: string, opts: Partial<ControllerOptions> = {}, logs?: string[]): { c: Controller; store: EtcdControllerStore } {
  const store = new EtcdControllerStore({ endpoints: cluster!.endpoints(), security: cluster!.clientTls(), prefix });
  const c = new Controller(store, new SystemClock(), silentLogger(logs), { controllerId: id, leaderTtl: 3000, callDeadline: 1000, ...opts });
  closers.push(async () => {
    await c.stop();
    await store.close();
  });
  c.start();
  return { c, store };
}

async function waitFor(pred: () => Promise<boolean> | boolean, timeoutMs: number, what: string, stepMs = 50): Promise<number> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await pred()) return Date.now();
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(stepMs);
  }
}

/** Samples a host record every 50 ms; remembers the first wall time of each state. */
function sampleStates(obs: EtcdControllerStore, hostId: string): { first: Map<string, number>; last: () => HostRecord | undefined; stop: () => void } {
  const first = new Map<string, number>();
  let last: HostRecord | undefined;
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    obs.getHost(hostId, OBS_DL).then(
      (h) => {
        busy = false;
        last = h.record;
        if (h.record && !first.has(h.record.state)) first.set(h.record.state, Date.now());
      },
      () => (busy = false),
    );
  }, 50);
  closers.push(async () => clearInterval(timer)); // also when a test fails before stop()
  return { first, last: () => last, stop: () => clearInterval(timer) };
}

async function events(obs: EtcdControllerStore, kind?: ClusterEvent['kind'], hostId?: string): Promise<ClusterEvent[]> {
  const { events: es } = await obs.listEvents(1000, OBS_DL);
  return es.map((s) => s.event).filter((e) => (kind === undefined || e.kind === kind) && (hostId === undefined || ('hostId' in e && e.hostId === hostId)));
}

async function healthyHosts(prefix: string, ids: string[]): Promise<SimHost[]> {
  const hosts = ids.map((id) => new SimHost(id, prefix));
  await Promise.all(hosts.map((h) => h.register()));
  return hosts;
}

/**
 * Three healthy hosts and one leading controller under `prefix`; host `a`'s lease is revoked and its
 * record seen `detached`. The revoke comes more than one TTL after the controller's first raft-term
 * observation (which counts as a term change: see `earlyRevokeSuspected`), so the window is the plain one.
 */
async function detachedHostA(prefix: string) {
  const obs = observer(prefix);
  const hosts = await healthyHosts(prefix, ['a', 'b', 'c']);
  const { c } = controller(prefix, 'c1');
  await waitFor(() => c.isLeader, 5000 + SLACK, 'leadership');
  await sleep(T.ttl + 300);
  await hosts[0]!.revoke();
  await waitFor(async () => (await obs.getHost('a', OBS_DL)).record?.state === 'detached', SLACK, 'detached');
  return { obs, a: hosts[0]!, hosts, c };
}

describe('controller against real etcd (3 members)', () => {
  beforeAll(async () => {
    expect(checkTimings(T)).toEqual([]);
    findEtcdBinary();
    dataDir = mkdtempSync('/tmp/tether-test-controller-');
    cluster = new LocalEtcdCluster({ dataDir, tag: 'test' });
    await cluster.start();
  });

  afterAll(async () => {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    await stopTestEtcd(cluster, dataDir);
  });

  it('detaches a host soon after its lease expires and fences it only after the deadline, once; its VM is rescheduled', async () => {
    const prefix = '/t1/';
    const obs = observer(prefix);
    const [a] = await healthyHosts(prefix, ['a', 'b', 'c']);
    const vm: ClusterVmRecord = {
      uid: 'orig',
      spec: { id: { namespace: 'ns', name: 'v1' }, vcpu: 1, memoryMb: 96, kernelImage: '', kernelCmdline: {}, initrdImage: '', volumes: [], interfaces: [], labels: {}, metadata: {} },
      hostId: 'a',
      hostEpoch: 1,
      phase: 'running',
      generation: 1,
    };
    expect((await obs.commit({ vms: [{ key: 'ns/v1', expectRevision: null, prevHostId: null, next: vm }] }, OBS_DL)).ok).toBe(true);
    const { c } = controller(prefix, 'c1');
    await waitFor(() => c.isLeader, 5000 + SLACK, 'leadership');
    await sleep(T.ttl + 300); // past one TTL from the controller's first raft-term observation

    const s = sampleStates(obs, 'a');
    a!.stopKeepalives();
    await sleep(100); // a keepalive in flight may still be acknowledged
    const expiry = a!.lastAckSent + T.ttl;
    await waitFor(() => s.first.has('detached'), T.ttl + SLACK, 'detached');
    const det = (await obs.getHost('a', OBS_DL)).record!;
    await waitFor(() => s.first.has('fenced'), T.fenceWindow + SLACK, 'fenced');
    await sleep(1500);
    s.stop();
    // the deadline the fence obeyed: the recorded one, unless a re-election (starved machine) extended it
    const fin = (await obs.getHost('a', OBS_DL)).record!;
    expect(fin.fenceDeadline!).toBeGreaterThanOrEqual(det.fenceDeadline!);

    const detachLatency = s.first.get('detached')! - expiry;
    const fenceLate = s.first.get('fenced')! - fin.fenceDeadline!;
    console.log(`[controller] detach observed ${detachLatency} ms after lease expiry (lastAck + ttl); fenced ${fenceLate} ms after the deadline`);
    expect(det.fenceDeadline! - det.detachedAt!).toBe(T.fenceWindow);
    expect(det.detachedAt!).toBeGreaterThanOrEqual(expiry - 50);
    expect(detachLatency).toBeLessThan(1500);
    expect(s.first.get('fenced')!).toBeGreaterThanOrEqual(fin.fenceDeadline!);
    expect(fenceLate).toBeLessThan(2000);
    expect(await events(obs, 'host-fenced', 'a')).toHaveLength(1);
    const moved = (await obs.listVms(OBS_DL)).find((v) => v.key === 'ns/v1')!.record;
    expect(moved).toMatchObject({ phase: 'pending', hostEpoch: 1 });
    expect(['b', 'c']).toContain(moved.hostId);
    expect(moved.uid).not.toBe('orig');
  });

  it('a host that re-registers before the deadline wins: back to attached, never fenced', async () => {
    const prefix = '/t2/';
    const { obs, a } = await detachedHostA(prefix);
    const deadline = (await obs.getHost('a', OBS_DL)).record!.fenceDeadline!;
    await sleep(Math.max(0, deadline - Date.now() - 1200));
    await a!.register('reattach');
    const s = sampleStates(obs, 'a');
    await sleep(deadline - Date.now() + T.fenceWindow + 1000);
    s.stop();
    expect((await obs.getHost('a', OBS_DL)).record).toMatchObject({ state: 'attached', epoch: 1 });
    expect(s.first.has('fenced')).toBe(false);
    expect(await events(obs, 'host-fenced', 'a')).toEqual([]);
    expect((await events(obs, 'host-returned', 'a')).length).toBe(1);
  });

  it('never fences a held host nor a host publishing unsafe timings', async () => {
    const prefix = '/t3/';
    const obs = observer(prefix);
    await healthyHosts(prefix, ['b', 'c', 'd']);
    const held = new SimHost('held', prefix);
    await held.register();
    const bad = new SimHost('bad', prefix, { ...T, fenceWindow: 0 });
    await bad.register();
    const { c } = controller(prefix, 'c1');
    await waitFor(() => c.isLeader, 5000 + SLACK, 'leadership');
    const hold = await setHostHold(obs, new SystemClock(), 'held', true, OBS_DL, { wait: true, timeoutMs: 5000 + SLACK });
    expect(hold).toMatchObject({ acknowledged: true, shown: 'held' });
    expect((await obs.getHost('held', OBS_DL)).record).toMatchObject({ hold: true, holdSeen: true });
    await Promise.all([held.revoke(), bad.revoke()]);
    await waitFor(
      async () => (await obs.getHost('held', OBS_DL)).record?.state === 'detached' && (await obs.getHost('bad', OBS_DL)).record?.state === 'detached',
      SLACK,
      'both detached',
    );
    await sleep(2 * T.fenceWindow + 1000);
    expect((await obs.getHost('held', OBS_DL)).record).toMatchObject({ state: 'detached', heldAtDetach: true });
    expect((await obs.getHost('bad', OBS_DL)).record!.state).toBe('detached');
    expect(await events(obs, 'host-fenced', 'held')).toEqual([]);
    expect(await events(obs, 'host-fenced', 'bad')).toEqual([]);
    const blocked = (await events(obs, 'host-fence-blocked')).filter((e) => 'hostId' in e && ['held', 'bad'].includes(e.hostId ?? '')) as Extract<ClusterEvent, { kind: 'host-fence-blocked' }>[];
    expect(blocked.map((e) => [e.hostId, e.blockers.join(',')]).sort()).toEqual([
      ['bad', 'unsafe-timings'],
      ['held', 'held,held-at-detach'],
    ]);
    expect((await events(obs, 'host-unsafe-timings', 'bad')).length).toBe(1);
    const status = await obs.getStatus(OBS_DL);
    expect(status!.hosts.filter((h) => h.blocked !== undefined).map((h) => [h.hostId, h.blocked]).sort()).toEqual([
      ['bad', 'unsafe-timings'],
      ['held', 'held, held-at-detach'],
    ]);
  });

  it('two replicas elect one leader; killing it inside a window makes the other fence at the right time, not earlier, once', async () => {
    const prefix = '/t4/';
    const obs = observer(prefix);
    const [a] = await healthyHosts(prefix, ['a', 'b', 'c']);
    const r1 = controller(prefix, 'c1');
    await waitFor(() => r1.c.isLeader, 5000 + SLACK, 'c1 leadership');
    const r2 = controller(prefix, 'c2');
    await sleep(T.ttl + 500); // past one TTL from both replicas' first raft-term observation
    expect([r1.c.isLeader, r2.c.isLeader]).toEqual([true, false]);
    expect((await obs.getLeader(OBS_DL))?.candidateId).toBe('c1');

    const s = sampleStates(obs, 'a');
    await a!.revoke();
    await waitFor(() => s.first.has('detached'), SLACK, 'detached by c1');
    const recorded = (await obs.getHost('a', OBS_DL)).record!.fenceDeadline!;
    // kill the active controller inside the window: no resign, its client closed; its lease expires
    await r1.c.stop();
    await r1.store.close();
    const killedAt = Date.now();
    await waitFor(() => r2.c.isLeader, 3000 + SLACK, 'c2 takeover');
    await waitFor(() => s.first.has('fenced'), T.fenceWindow + SLACK, 'fenced by c2');
    await sleep(1500);
    s.stop();
    const fencedAt = s.first.get('fenced')!;
    // c2's (last) election before the fence: its takeover time
    const elected = (await events(obs, 'controller-elected')).filter((e) => e.kind === 'controller-elected' && e.controllerId === 'c2' && e.at <= fencedAt);
    expect(elected.length).toBeGreaterThanOrEqual(1);
    const takeover = Math.max(...elected.map((e) => e.at));
    const expected = Math.max(recorded, takeover + T.fenceWindow);
    console.log(
      `[controller] failover: c1 killed ${killedAt - s.first.get('detached')!} ms after detach, c2 elected ${takeover - killedAt} ms later; recorded deadline +${recorded - killedAt} ms, c2 fenced ${fencedAt - expected} ms after max(recorded, takeover + window)`,
    );
    expect(fencedAt).toBeGreaterThanOrEqual(expected);
    expect(fencedAt - expected).toBeLessThan(2000);
    const fenced = await events(obs, 'host-fenced', 'a');
    expect(fenced).toHaveLength(1);
    expect((await obs.getHost('a', OBS_DL)).record!.state).toBe('fenced');
  });

  it('CLI: host list shows state, epoch, lease age and fence countdown; fence needs --confirm; hold and events work', async () => {
    const prefix = '/t5/';
    const { obs, hosts } = await detachedHostA(prefix);
    hosts[2]!.ackHolds = false; // c's agent does not acknowledge
    // follow from now: the hold commands below wait for acknowledgements, longer than a's window
    const followed: string[] = [];
    const stopFollow = new AbortController();
    const following = showEvents(obs, { follow: true, json: true, limit: 1 }, (l) => followed.push(l), stopFollow.signal);
    closers.push(async () => stopFollow.abort());
    await sleep(200);
    const cli = async (...args: string[]): Promise<string> => {
      const program = new Command('tether').exitOverride();
      registerHostCommands(program);
      const out: string[] = [];
      const spy = vi.spyOn(console, 'log').mockImplementation((...m: unknown[]) => void out.push(m.join(' ')));
      try {
        await program.parseAsync(['node', 'tether', ...args, ...cluster!.agentArgs(), '--etcd-prefix', prefix]);
      } finally {
        spy.mockRestore();
      }
      return out.join('\n');
    };
    const list = JSON.parse(await cli('host', 'list', '--json')) as { controller: { controllerId: string }; hosts: HostListRow[] };
    expect(list.controller.controllerId).toBe('c1');
    const byId = new Map(list.hosts.map((h) => [h.hostId, h]));
    expect(byId.get('a')).toMatchObject({ state: 'detached', epoch: 1, leaseAgeMs: null, fence: expect.stringMatching(/^(in \d+s|due)$/), vmCount: 0 });
    expect(byId.get('b')).toMatchObject({ state: 'attached', epoch: 1, fence: '-' });
    expect(byId.get('b')!.leaseAgeMs).toBeLessThan(T.ttl);
    const table = await cli('host', 'list');
    expect(table).toMatch(/controller: c1/);
    expect(table).toMatch(/HOST +STATE +EPOCH +HOLD +LEASE +FENCE +VMS/);

    await expect(cli('host', 'fence', 'b')).rejects.toThrow(/without --confirm.*powered off/);
    expect((await obs.getHost('b', OBS_DL)).record!.state).toBe('attached');
    expect(await cli('host', 'hold', 'b')).toMatch(/hold requested, acknowledged by the host \(hold: held;/);
    expect((await obs.getHost('b', OBS_DL)).record).toMatchObject({ hold: true, holdSeen: true });
    const held = JSON.parse(await cli('host', 'list', '--json')) as { hosts: HostListRow[] };
    expect(held.hosts.find((h) => h.hostId === 'b')).toMatchObject({ hold: true, holdSeen: true, holdShown: 'held (ack)' });
    expect(await cli('host', 'list')).toMatch(/\bb +attached +1 +held \(ack\)/);
    expect(await cli('host', 'release', 'b')).toMatch(/hold released, acknowledged by the host/);
    expect((await obs.getHost('b', OBS_DL)).record).toMatchObject({ hold: false, holdSeen: false });
    // a host that does not acknowledge: said clearly, and what it means
    const notAcked = await cli('host', 'hold', 'c', '--timeout', '2s');
    expect(notAcked).toMatch(/NOT acknowledged by the host/);
    expect(notAcked).toMatch(/NOT honoured yet.*still self-fences/);
    expect(await cli('host', 'list')).toMatch(/\bc +attached +1 +held \(not acked\)/);
    expect(await cli('host', 'release', 'c', '--no-wait')).toMatch(/host c: hold released/);

    await waitFor(async () => (await obs.getHost('a', OBS_DL)).record?.state === 'fenced', T.fenceWindow + SLACK, 'fenced');
    await waitFor(() => followed.some((l) => (JSON.parse(l) as ClusterEvent).kind === 'host-fenced'), SLACK, 'followed host-fenced');
    stopFollow.abort();
    await following;
    const kinds = followed.map((l) => (JSON.parse(l) as ClusterEvent).kind);
    expect(kinds).toContain('host-hold-changed');
    expect(new Set(followed).size).toBe(followed.length); // none printed twice
    const evs = JSON.parse(await cli('events', '--json')) as ClusterEvent[];
    expect(evs.map((e) => e.kind)).toEqual(expect.arrayContaining(['controller-elected', 'host-detached', 'host-hold-changed', 'host-fenced']));
    // --limit shows the newest ones (which two depends on whether a's fence came before c's hold)
    const newest = await cli('events', '--limit', '2');
    for (const e of evs.slice(-2)) expect(newest).toMatch(new RegExp(`${e.kind} +${'hostId' in e && e.hostId ? e.hostId : ''}`));
  });
  it('a host with 500 VM records is fenced on time and every record is marked lost, each txn within etcd limits', async () => {
    const prefix = '/t6/';
    const obs = observer(prefix);
    const [a] = await healthyHosts(prefix, ['a', 'b', 'c']);
    const N = 500;
    const names = Array.from({ length: N }, (_, i) => `vm${String(i).padStart(4, '0')}`);
    const vm = (name: string, namespace = 'big'): ClusterVmRecord => ({
      uid: `u-${name}`,
      spec: { id: { namespace, name }, vcpu: 1, memoryMb: 96, kernelImage: '', kernelCmdline: {}, initrdImage: '', volumes: [], interfaces: [], labels: {}, metadata: {} },
      hostId: 'a',
      hostEpoch: 1,
      phase: 'running',
      generation: 1,
      restartPolicy: 'none', // the test is about the fence: no 500-VM reschedule storm afterwards
    });
    for (let i = 0; i < N; i += 60) {
      const res = await obs.commit({ vms: names.slice(i, i + 60).map((n) => ({ key: `big/${n}`, expectRevision: null, prevHostId: null, next: vm(n) })) }, OBS_DL);
      expect(res.ok).toBe(true);
    }
    // one txn for all of them is refused before it reaches etcd, as non-retryable
    const tooBig = obs.commit({ vms: names.map((n) => ({ key: `big/${n}`, expectRevision: null, prevHostId: null, next: vm(n) })) }, OBS_DL);
    await expect(tooBig).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', retryable: false });
    // and etcd itself counts as we do: with the store's own check lifted, etcd refuses 129 compares
    // (non-retryable) and takes 128 compares with 128 puts (the old compares + writes rule said 256 > 128)
    const lax = new EtcdControllerStore({ endpoints: cluster!.endpoints(), security: cluster!.clientTls(), prefix, txnLimits: { maxOps: 10_000, maxBytes: 8 << 20 } });
    closers.push(() => lax.close());
    // unplaced records: one put each (a placed one also puts its per-host index copy)
    const unplaced = (name: string): ClusterVmRecord => {
      const { hostId: _h, hostEpoch: _e, ...rest } = vm(name, 'spare');
      return rest;
    };
    const extra = (n: number, tag: string) => Array.from({ length: n }, (_, i) => ({ key: `spare/${tag}${i}`, expectRevision: null, prevHostId: null, next: unplaced(`${tag}${i}`) }));
    await expect(lax.commit({ vms: extra(129, 'x') }, OBS_DL)).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', retryable: false, message: expect.stringMatching(/refused by etcd.*too many operations/) });
    expect((await lax.commit({ vms: extra(128, 'y') }, OBS_DL)).ok).toBe(true);

    const logs: string[] = [];
    const { c } = controller(prefix, 'c1', {}, logs);
    await waitFor(() => c.isLeader, 5000 + SLACK, 'leadership');
    await sleep(T.ttl + 300);
    const s = sampleStates(obs, 'a');
    let allLostSeen: number | undefined;
    const lostTimer = setInterval(() => {
      if (allLostSeen !== undefined) return;
      obs.listVms(OBS_DL).then(
        (vms) => {
          if (allLostSeen === undefined && vms.filter((v) => v.key.startsWith('big/') && v.record.phase === 'lost').length === N) allLostSeen = Date.now();
        },
        () => undefined,
      );
    }, 100);
    closers.push(async () => clearInterval(lostTimer));
    await a!.revoke();
    await waitFor(() => s.first.has('fenced'), T.fenceWindow + SLACK, 'fenced');
    await waitFor(() => allLostSeen !== undefined, SLACK, 'every VM lost');
    clearInterval(lostTimer);
    s.stop();
    const rec = (await obs.getHost('a', OBS_DL)).record!;
    const fenced = (await events(obs, 'host-fenced', 'a')) as Extract<ClusterEvent, { kind: 'host-fenced' }>[];
    const batches = (await events(obs, 'host-vms-lost', 'a')) as Extract<ClusterEvent, { kind: 'host-vms-lost' }>[];
    const fencedAt = s.first.get('fenced')!;
    const markLine = logs.find((l) => l.includes('VMs of the fenced host marked lost'));
    const markMs = markLine ? (JSON.parse(markLine.slice(markLine.indexOf('{'))) as { ms: number }).ms : undefined;
    console.log(
      `[controller] 500-VM host: fenced ${fencedAt - rec.fenceDeadline!} ms after its deadline (observer, 50 ms sampling; fence txn prepared +${fenced[0]!.at - rec.fenceDeadline!} ms), ` +
        `all ${N} VM records seen lost ${allLostSeen! - fencedAt} ms after the fence was seen (100 ms sampling); the controller's ${batches.length} lost-marking txns took ${markMs} ms`,
    );
    expect(fencedAt).toBeGreaterThanOrEqual(rec.fenceDeadline!);
    expect(fencedAt - rec.fenceDeadline!).toBeLessThan(2000);
    expect(fenced).toHaveLength(1);
    expect(fenced[0]).toMatchObject({ by: 'controller', lostVmCount: N });
    expect(batches).toHaveLength(Math.ceil(N / 63)); // the event + 2 success ops per VM (record + per-host index copy) <= 128
    const marked = batches.flatMap((b) => b.vms);
    expect(new Set(marked).size).toBe(N);
    expect(marked).toHaveLength(N);
    expect(await events(obs, 'controller-error')).toEqual([]);
  });

  it('a lease lost within one TTL of a raft leader change (etcd 3.4 early revoke) gets ttl + window; the term comes from real response headers', async () => {
    const prefix = '/t7/';
    const obs = observer(prefix);
    // Host a's TTL is long (8 s): the revoke below must land within one TTL of the term change the
    // controller saw, and on a loaded CI the kill, the election and the test's retried revoke took
    // 4.2 s (a 3 s TTL made that a lost race, not a controller fault).
    const TA: GcTimings = { ...T, ttl: 8000 };
    expect(checkTimings(TA)).toEqual([]);
    const a = new SimHost('a', prefix, TA);
    await Promise.all([a.register(), healthyHosts(prefix, ['b', 'c'])]);
    const logs: string[] = [];
    const { c } = controller(prefix, 'c1', {}, logs);
    await waitFor(() => c.isLeader, 5000 + SLACK, 'leadership');
    // past one TTL of the controller's first term observation (which counts as a change)
    await sleep(TA.ttl + 300);
    expect(c.view().status?.store?.version).toMatch(/^3\.4\./);
    // The clients spread calls over the three members and do not fail over within a call: while a
    // member is down, the test's own calls are retried.
    const retrying = async <R>(fn: () => Promise<R>): Promise<R> => {
      for (let i = 0; ; i++) {
        try {
          return await fn();
        } catch (err) {
          if (i >= 30) throw err;
          await sleep(100);
        }
      }
    };
    const before = (await obs.serverStatus(OBS_DL)).raftTerm;
    const leader = await cluster!.waitForLeader(5000);
    await cluster!.kill(leader);
    closers.push(async () => {
      if (!cluster!.isRunning(leader)) await cluster!.restart(leader);
    });
    await cluster!.waitForLeader(10_000);
    // What a deposed leader's lessor does to a live host (etcd #15247): its lease goes at once after
    // the election (the rule covers losses within one TTL of the term change as the controller saw
    // it: waiting here for this test's own client to see the term made the loss late now and then).
    await retrying(() => a.revoke());
    // Liveness under a dead etcd member (watch reconnect, perhaps a leadership change): more slack.
    await waitFor(async () => (await obs.getHost('a', OBS_DL).catch(() => ({ record: undefined }))).record?.state === 'detached', 3 * SLACK, 'detached');
    // The window includes the TTL: either the detach already saw the new term, or the controller
    // lengthens the pending deadline as soon as a response header shows it (before the old deadline).
    // It may be longer still: a controller that lost its leadership in the election takes the pending
    // fence over with a full window from its takeover.
    let rec: HostRecord | undefined;
    await waitFor(async () => {
      rec = (await obs.getHost('a', OBS_DL).catch(() => ({ record: undefined }))).record;
      return rec?.fenceDeadline !== undefined && rec.detachedAt !== undefined && rec.fenceDeadline - rec.detachedAt >= TA.ttl + TA.fenceWindow;
    }, 3 * SLACK, 'the window lengthened by the TTL').catch(async (err: unknown) => {
      // With a member dead the controller may stay without an answer for a while (its calls are not
      // failed over within a call); it must not fence meanwhile. The logs say where it waited.
      const evs = await obs.listEvents(100, OBS_DL).catch(() => ({ events: [] }));
      throw new Error(
        `${String(err)}; record ${JSON.stringify(rec)}; events ${JSON.stringify(evs.events.map((e) => e.event).filter((e) => 'hostId' in e && e.hostId === 'a'))}; controller log:\n${logs.slice(-40).join('\n')}`,
      );
    });
    if (!rec) throw new Error('no record');
    const det = (await retrying(() => events(obs, 'host-detached', 'a'))) as Extract<ClusterEvent, { kind: 'host-detached' }>[];
    const ext = (await retrying(() => events(obs, 'fence-deadline-extended', 'a'))) as Extract<ClusterEvent, { kind: 'fence-deadline-extended' }>[];
    console.log(`[controller] leader ${leader} killed; lease revoked after the new term; window ${rec.fenceDeadline! - rec.detachedAt!} ms (ttl ${TA.ttl} + window ${TA.fenceWindow}), ${det[0]?.termChange ? 'at the detach' : 'extended after it'}`);
    expect(det).toHaveLength(1);
    const takenOver = ext.some((e) => e.why !== 'raft-term-change');
    if (det[0]!.termChange) {
      expect(det[0]!.termChange).toMatchObject({ extendedByMs: TA.ttl });
      expect(det[0]!.termChange.term).toBeGreaterThan(before);
      expect(det[0]!.detail).toMatch(/raft term change/);
    } else if (!takenOver) {
      expect(ext.some((e) => e.why === 'raft-term-change')).toBe(true);
    }
    // Never fenced before the lengthened deadline: past the unlengthened one, it is either not fenced
    // yet or was fenced only after loss + ttl + window (a freeze from the other hosts' own trouble
    // during the election may hold the fence longer: not this test's concern).
    await sleep(Math.max(0, rec.detachedAt! + TA.fenceWindow + 1000 - Date.now()));
    const fenced = (await retrying(() => events(obs, 'host-fenced', 'a'))) as Extract<ClusterEvent, { kind: 'host-fenced' }>[];
    for (const f of fenced) expect(f.at).toBeGreaterThanOrEqual(rec.detachedAt! + TA.ttl + TA.fenceWindow);
    await cluster!.restart(leader);
    await cluster!.waitForHealthy(10_000 + SLACK);
  }, 150_000);
});
