/**
 * Fleet (issue 9, item 7): a simulated fleet of hosts that do against etcd exactly what real agents
 * do — each host is the production agent-side cluster code (`HostGc` over `KvClusterStore`:
 * registration, heartbeat, hold polling; `ClusterVmSync` over `KvControllerStore`: the VM sync with
 * its reads, watches and status txns) on a fake substrate (bench/lib/fleet-host.ts) — spread over
 * worker threads, one real `tether controller` child (plus a standby for the takeover), on a fresh
 * 3-member etcd cluster.
 *
 * Phases: register the hosts; write V VM records placed on each host (as an agent's API create
 * does: `pending`, at the host's epoch, through `KvControllerStore.commit`, index included) and wait
 * until every host reported them `running`; start the controller (synced = it published its
 * status); steady state (etcd requests per second by type from etcd's own counters, CPU, RSS);
 * natural expiry of a few hosts (lastAck + ttl → `detached`, fenceDeadline → `fenced`, → their VMs
 * placed and running elsewhere); 300 hosts dying at once (same measures, all of them); controller
 * takeover (leader SIGTERMed → the standby published its status).
 *
 * Observation: the bench's main thread watches `hosts/`, `vms/` and `controller/` through its own
 * etcd client and stamps deliveries on the wall clock (`performance.timeOrigin + now()`, shared by
 * the threads of this process); the simulated hosts live in worker threads, whose event-loop delay
 * is the error of everything they report (a host's lastAck) and is reported with the numbers.
 */
import { readdirSync } from 'node:fs';
import { setPriority } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import { noop } from 'cockatiel';
import { Etcd3, type IKeyValue, type Watcher } from 'etcd3';
import { etcd3Security } from '../../src/adapters/etcd/etcd-client.js';
import { EtcdKv } from '../../src/adapters/etcd/etcd-kv.js';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { KvControllerStore } from '../../src/adapters/kv/kv-controller-store.js';
import { HEARTBEAT_PATH_PRIORITY, raiseOwnPriority } from '../../src/adapters/process-priority.js';
import { LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { scaleTimings } from '../../src/domain/fleet-timings.js';
import { checkTimings, DEFAULT_TIMINGS, describeViolations, type GcTimings } from '../../src/domain/gc-timing.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import type { VmSpec } from '../../src/domain/vm.js';
import type { BenchContext, ScenarioResult } from '../lib/context.js';
import { EtcdRequestWindow, fmtRates, type EtcdRequestRates } from '../lib/etcd-requests.js';
import type { FleetWorkerData, FleetWorkerStats } from '../lib/fleet-worker.js';
import { cpuMsOf, pcts, ProcWindow, type ProcUsage } from '../lib/proc.js';
import { progress, sleep, throttle } from '../lib/progress.js';
import type { Table } from '../lib/table.js';
import { ControllerChild, pick } from './controller-scale.js';

/** Wall-clock ms with sub-ms resolution, comparable across the threads of this process. */
const wall = (): number => performance.timeOrigin + performance.now();

type Pcts = ReturnType<typeof pcts>;
type Usage = { windowMs: number; usage: Record<string, ProcUsage> };

/** The size and knobs of one run. */
export interface FleetOptions {
  readonly hosts: number;
  /** fleetHeartbeatRate the timings were scaled with (unless TETHER_BENCH_FLEET_TIMINGS gave them). */
  readonly heartbeatRate: number | undefined;
  readonly vmsPerHost: number;
  readonly timings: GcTimings;
  readonly workers: number;
  readonly hostsPerClient: number;
  readonly startRate: number;
  /** VM records written per second (TETHER_BENCH_FLEET_SEED_RATE, default 200). */
  readonly seedRate: number;
  /** etcd with TLS (client certificates), as deployed; TETHER_BENCH_FLEET_TLS=0: plaintext. */
  readonly tls: boolean;
  readonly steadyMs: number;
  readonly naturalExpiries: number;
  readonly massExpiry: number;
}

/** Defaults: the issue's 1,000 × 100; quick 200 × 20. */
export function fleetOptions(ctx: BenchContext): FleetOptions {
  const hosts = ctx.fleet?.hosts ?? (ctx.quick ? 200 : 1000);
  const vmsPerHost = ctx.fleet?.vmsPerHost ?? (ctx.quick ? 20 : 100);
  // The agent's own rule (src/domain/fleet-timings.ts, agent settings fleetHeartbeatRate and
  // maxHeartbeatInterval) applied to the default timings for this fleet size; or explicit timings.
  const env = process.env.TETHER_BENCH_FLEET_TIMINGS;
  const heartbeatRate = Number(process.env.TETHER_BENCH_FLEET_HEARTBEAT_RATE ?? 20);
  const timings: GcTimings = env
    ? { ...DEFAULT_TIMINGS, ...(JSON.parse(env) as Partial<GcTimings>) }
    : scaleTimings(DEFAULT_TIMINGS, hosts, { fleetHeartbeatRate: heartbeatRate, maxHeartbeatInterval: 10_000 }).timings;
  const workers = Number(process.env.TETHER_BENCH_FLEET_WORKERS ?? Math.min(8, Math.max(1, Math.ceil(hosts / 500))));
  return {
    hosts,
    heartbeatRate: env ? undefined : heartbeatRate,
    vmsPerHost,
    timings,
    workers,
    // etcd serves the keepalives of one LeaseKeepAlive stream one after the other (a follower forwards
    // each to the leader before reading the next), so many hosts on one stream would queue behind each
    // other as no real agent does: a few hosts per client (each agent has its own) keeps that honest.
    hostsPerClient: Number(process.env.TETHER_BENCH_FLEET_HOSTS_PER_CLIENT ?? 4),
    startRate: Number(process.env.TETHER_BENCH_FLEET_START_RATE ?? 50),
    seedRate: Number(process.env.TETHER_BENCH_FLEET_SEED_RATE ?? 200),
    tls: process.env.TETHER_BENCH_FLEET_TLS !== '0',
    steadyMs: ctx.quick ? 10_000 : 30_000,
    naturalExpiries: ctx.quick ? 5 : 20,
    massExpiry: Math.min(300, Math.floor(hosts * 0.3)),
  };
}

// ---- the workers ---------------------------------------------------------------------------------

class WorkerPool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, (body: unknown) => void>();
  private seq = 0;
  readonly errors: string[] = [];
  private closed = false;

  constructor(datas: readonly FleetWorkerData[]) {
    for (const d of datas) {
      const w = new Worker(new URL('../lib/fleet-worker.js', import.meta.url), { workerData: d });
      w.on('message', (m: { seq: number; body: unknown }) => {
        const r = this.pending.get(m.seq);
        this.pending.delete(m.seq);
        r?.(m.body);
      });
      w.on('error', (err) => this.errors.push(`worker ${d.index}: ${err.message}`));
      w.on('exit', (code) => {
        if (!this.closed && code !== 0) this.errors.push(`worker ${d.index} exited with ${code}`);
      });
      this.workers.push(w);
    }
  }

  private ask<T>(w: Worker, msg: Record<string, unknown>, timeoutMs = 120_000): Promise<T> {
    const seq = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        reject(new Error(`worker did not answer ${String(msg.op)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(seq, (b) => {
        clearTimeout(timer);
        resolve(b as T);
      });
      w.postMessage({ ...msg, seq });
    });
  }

  all<T>(msg: Record<string, unknown>, timeoutMs?: number): Promise<T[]> {
    return Promise.all(this.workers.map((w) => this.ask<T>(w, msg, timeoutMs)));
  }

  /** `reset`: start a new loop-delay window in each worker (false for progress lines). */
  stats(reset = true): Promise<FleetWorkerStats[]> {
    return this.all<FleetWorkerStats>({ op: 'stats', reset }, 30_000);
  }

  /** Crashes hosts (all workers at once); per host its last acknowledged keepalive's send time. */
  async crash(ids: readonly string[]): Promise<Map<string, { lastAckWall?: number; phase: string; epoch: number }>> {
    const answers = await this.all<Record<string, { lastAckWall?: number; phase: string; epoch: number }>>({ op: 'crash', ids: [...ids] }, 30_000);
    return new Map(answers.flatMap((a) => Object.entries(a)));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.race([this.all({ op: 'stop' }, 20_000).catch(() => undefined), sleep(20_000)]);
    await Promise.all(this.workers.map((w) => w.terminate().catch(() => undefined)));
  }
}

// ---- the bench's view of the records -------------------------------------------------------------

interface Seen {
  readonly at: number;
  readonly record?: HostRecord;
}

/** Watches `hosts/`: per host its record's state and epoch, first `detached` / `fenced` record and `alive` delete. */
class HostView {
  readonly state = new Map<string, { state: string; epoch: number }>();
  readonly detached = new Map<string, Seen>();
  readonly fenced = new Map<string, Seen>();
  readonly aliveGone = new Map<string, Seen>();
  readonly errors: string[] = [];
  constructor(readonly watcher: Watcher) {}

  static async start(client: Etcd3, prefix: string): Promise<HostView> {
    const p = `${prefix}hosts/`;
    const w = await client.watch().prefix(p).create();
    const v = new HostView(w);
    const parse = (kv: IKeyValue) => /^([^/]+)\/(record|alive)$/.exec(kv.key.toString().slice(p.length));
    w.on('put', (kv) => {
      const at = wall();
      const m = parse(kv);
      if (m?.[2] !== 'record') return;
      let r: HostRecord;
      try {
        r = JSON.parse(kv.value.toString()) as HostRecord;
      } catch {
        return;
      }
      const id = m[1]!;
      v.state.set(id, { state: r.state, epoch: r.epoch });
      if (r.state === 'detached' && !v.detached.has(id)) v.detached.set(id, { at, record: r });
      if (r.state === 'fenced' && !v.fenced.has(id)) v.fenced.set(id, { at, record: r });
    });
    w.on('delete', (kv) => {
      const at = wall();
      const m = parse(kv);
      if (m?.[2] === 'alive' && !v.aliveGone.has(m[1]!)) v.aliveGone.set(m[1]!, { at });
    });
    w.on('error', (err) => v.errors.push(`hosts watch: ${err.message}`));
    w.on('disconnected', (err) => v.errors.push(`hosts watch disconnected: ${err.message}`));
    return v;
  }

  count(state: string): number {
    let n = 0;
    for (const s of this.state.values()) if (s.state === state) n++;
    return n;
  }
}

/** A VM key of a crashed host: when it was seen placed on another host, and running there. */
interface Moved {
  readonly from: string;
  placedAt?: number;
  runningAt?: number;
  to?: string;
}

/** Watches `vms/`: each record's host and phase; for VMs of crashed hosts, when they moved. */
class VmView {
  readonly vms = new Map<string, { hostId: string | undefined; phase: string }>();
  readonly moved = new Map<string, Moved>();
  running = 0;
  readonly errors: string[] = [];
  constructor(readonly watcher: Watcher) {}

  static async start(client: Etcd3, prefix: string): Promise<VmView> {
    const p = `${prefix}vms/`;
    const w = await client.watch().prefix(p).create();
    const v = new VmView(w);
    w.on('put', (kv) => {
      const at = wall();
      const key = kv.key.toString().slice(p.length);
      let r: ClusterVmRecord;
      try {
        r = JSON.parse(kv.value.toString()) as ClusterVmRecord;
      } catch {
        return;
      }
      const prev = v.vms.get(key);
      if (prev?.phase === 'running') v.running--;
      if (r.phase === 'running') v.running++;
      v.vms.set(key, { hostId: r.hostId, phase: r.phase });
      const m = v.moved.get(key);
      if (m && r.hostId !== undefined && r.hostId !== m.from && r.phase !== 'lost') {
        m.placedAt ??= at;
        m.to = r.hostId;
        if (r.phase === 'running') m.runningAt ??= at;
      }
    });
    w.on('delete', (kv) => {
      const key = kv.key.toString().slice(p.length);
      if (v.vms.get(key)?.phase === 'running') v.running--;
      v.vms.delete(key);
    });
    w.on('error', (err) => v.errors.push(`vms watch: ${err.message}`));
    w.on('disconnected', (err) => v.errors.push(`vms watch disconnected: ${err.message}`));
    return v;
  }

  track(keys: readonly string[], from: string): void {
    for (const k of keys) this.moved.set(k, { from });
  }
}

/** Watches `controller/status`: who published it, first time per controller id. */
class StatusView {
  readonly firstBy = new Map<string, number>();
  constructor(readonly watcher: Watcher) {}
  static async start(client: Etcd3, prefix: string): Promise<StatusView> {
    const w = await client.watch().key(`${prefix}controller/status`).create();
    const v = new StatusView(w);
    w.on('put', (kv) => {
      const at = wall();
      try {
        const s = JSON.parse(kv.value.toString()) as { controllerId?: string };
        if (s.controllerId && !v.firstBy.has(s.controllerId)) v.firstBy.set(s.controllerId, at);
      } catch {
        /* ignore */
      }
    });
    return v;
  }
}

// ---- one run -------------------------------------------------------------------------------------

const vmKey = (hostIdx: number, j: number) => `fleet/h${String(hostIdx).padStart(5, '0')}-v${String(j).padStart(3, '0')}`;

function spec(key: string): VmSpec {
  const [namespace, name] = key.split('/') as [string, string];
  return { id: { namespace, name }, vcpu: 1, memoryMb: 128, kernelImage: '', kernelCmdline: {}, initrdImage: '', volumes: [], interfaces: [], labels: {}, metadata: {} };
}


function loopDelay(h: ReturnType<typeof monitorEventLoopDelay>): { p50: number; p99: number; max: number } {
  const ms = (ns: number) => Math.round(ns / 1e4) / 100;
  return { p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max) };
}

/** Summary of worker stats: worst loop delay, oldest ack, phases, problems. */
function summarizeWorkers(stats: readonly FleetWorkerStats[]) {
  const phases: Record<string, number> = {};
  for (const s of stats) for (const [k, v] of Object.entries(s.phases)) phases[k] = (phases[k] ?? 0) + v;
  return {
    phases,
    localVms: stats.reduce((a, s) => a + s.localVms, 0),
    oldestAckMs: Math.max(0, ...stats.map((s) => s.oldestAckMs)),
    loopP99Ms: Math.max(0, ...stats.map((s) => s.loop.p99)),
    loopMaxMs: Math.max(0, ...stats.map((s) => s.loop.max)),
    unexpected: stats.flatMap((s) => s.unexpected),
    logs: {
      warn: stats.reduce((a, s) => a + s.logs.warn, 0),
      error: stats.reduce((a, s) => a + s.logs.error, 0),
      samples: stats.flatMap((s) => s.logs.samples).slice(0, 8),
      debug: stats.reduce<Record<string, number>>((a, s) => {
        for (const [k, v] of Object.entries(s.logs.debug)) a[k] = (a[k] ?? 0) + v;
        return a;
      }, {}),
    },
    feed: stats.reduce<Record<string, number>>((a, s) => {
      for (const [k, v] of Object.entries(s.feed)) a[k] = (a[k] ?? 0) + v;
      return a;
    }, {}),
    workerRssMiB: stats.map((s) => s.rssMiB),
  };
}
type WorkerSummary = ReturnType<typeof summarizeWorkers>;

/** One group of crashed hosts, measured to the end of the reschedule. */
export interface ExpiryRun {
  readonly hosts: number;
  readonly vms: number;
  readonly detached: number;
  readonly fenced: number;
  readonly placed: number;
  readonly runningElsewhere: number;
  /** alive deleted (seen) − (lastAck + ttl). */
  readonly aliveGoneMs?: Pcts;
  /** detached (seen) − (lastAck + ttl). */
  readonly detachedMs?: Pcts;
  /** fenced (seen) − the record's fenceDeadline. */
  readonly fencedAfterDeadlineMs?: Pcts;
  /** VM placed on another host (seen) − its old host's fenceDeadline. */
  readonly placedAfterDeadlineMs?: Pcts;
  /** VM reported running on its new host (seen) − its old host's fenceDeadline. */
  readonly runningAfterDeadlineMs?: Pcts;
  /** Last VM placed − the latest fenceDeadline of the group. */
  readonly allPlacedAfterLastDeadlineMs?: number;
  readonly allRunningAfterLastDeadlineMs?: number;
  readonly resources: Usage;
  readonly etcd: EtcdRequestRates;
  readonly workers: WorkerSummary;
  readonly benchLoopMs: { p50: number; p99: number; max: number };
}

/** Everything one run measured. */
export interface FleetRun {
  readonly hosts: number;
  readonly vmsPerHost: number;
  readonly prefix: string;
  readonly workers: number;
  readonly etcdClients: number;
  readonly register: { readonly ms: number; readonly perSecond: number; readonly resources: Usage };
  readonly seed: { readonly ms: number; readonly vms: number; readonly runningAfterMs: number; readonly resources: Usage; readonly etcd: EtcdRequestRates };
  readonly controllerSync: { readonly ms: number; readonly resources: Usage };
  readonly steady: {
    readonly resources: Usage;
    readonly etcd: EtcdRequestRates;
    readonly workers: WorkerSummary;
    readonly benchLoopMs: { p50: number; p99: number; max: number };
    readonly perHostPerInterval: Record<string, number>;
    /** Bench CPU (all simulated hosts) per etcd request, ms: the simulation's cost per request. */
    readonly benchCpuPerRequestMs?: number;
  };
  readonly natural?: ExpiryRun;
  readonly mass?: ExpiryRun;
  readonly takeover?: { readonly ms: number; readonly leaderStatusAfterMs?: number; readonly resources: Usage; readonly method: string };
  readonly failures: readonly string[];
  readonly controllerLogs: Record<string, ReturnType<ControllerChild['logSummary']>>;
}

/** CPU shares since the previous call (for progress lines): `bench 80%, etcd 95%, controller 3%`. */
function cpuMeter(pids: () => ReadonlyMap<string, number>): () => string {
  let last = new Map<string, number>();
  let t = performance.now();
  return () => {
    const now = performance.now();
    const cur = new Map<string, number>();
    const parts: string[] = [];
    const groups = new Map<string, number>();
    for (const [name, pid] of pids()) {
      const c = cpuMsOf(pid);
      if (c === undefined) continue;
      cur.set(name, c);
      const prev = last.get(name);
      if (prev === undefined) continue;
      const g = name.startsWith('etcd') ? 'etcd' : name.split(' ')[0]!;
      groups.set(g, (groups.get(g) ?? 0) + (c - prev));
    }
    for (const [g, ms] of groups) parts.push(`${g} ${Math.round((ms / (now - t)) * 100)}%`);
    last = cur;
    t = now;
    return parts.length ? `CPU ${parts.join(', ')}` : '';
  };
}

/**
 * Every thread of this process at the agents' priority: V8's GC helper threads start at nice 0
 * before anything can raise them, and a JS thread waiting for its concurrent marking under the
 * machine's other load paused for seconds. (A real agent's heap is small; 500 hosts' is not.)
 */
function raiseAllThreads(): void {
  try {
    for (const tid of readdirSync('/proc/self/task')) {
      try {
        setPriority(Number(tid), HEARTBEAT_PATH_PRIORITY);
      } catch {
        /* not permitted or gone */
      }
    }
  } catch {
    /* no /proc */
  }
}

async function waitFor(what: string, cond: () => boolean, timeoutMs: number, status: () => string, check?: () => void): Promise<boolean> {
  const t0 = performance.now();
  const tick = throttle(5000, () => progress(`fleet: ${what}: ${status()} (${((performance.now() - t0) / 1000).toFixed(0)} s)`));
  while (!cond()) {
    check?.();
    if (performance.now() - t0 > timeoutMs) {
      progress(`fleet: ${what}: gave up after ${Math.round(timeoutMs / 1000)} s: ${status()}`);
      return false;
    }
    tick();
    await sleep(50);
  }
  return true;
}

async function runFleet(ctx: BenchContext, o: FleetOptions): Promise<FleetRun> {
  const { res } = ctx;
  const label = `fleet ${o.hosts}x${o.vmsPerHost}`;
  const base = res.newHostId('fleet');
  const dir = res.tempDir('fleet');
  const prefix = `/${base}/`;
  const ids = Array.from({ length: o.hosts }, (_, i) => `${base}-h${String(i).padStart(5, '0')}`);
  const failures: string[] = [];
  const T = o.timings;

  // The observer thread at the agents' priority too (nice -10 when root), so its timestamps are prompt.
  raiseOwnPriority();
  const cluster = new LocalEtcdCluster({ tag: 'bench', logLevel: 'warn', tls: o.tls });
  res.watchMark(cluster.mark);
  res.onCleanup(`etcd ${cluster.clusterId}`, () => cluster.stop());
  let pool: WorkerPool | undefined;
  let client: Etcd3 | undefined;
  let seedKv: EtcdKv | undefined;
  const controllers: ControllerChild[] = [];
  const watchers: Watcher[] = [];
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  let statsTimerRef: NodeJS.Timeout | undefined;
  let raiseTimerRef: NodeJS.Timeout | undefined;
  try {
    progress(`${label}: starting a 3-member etcd cluster (${cluster.clusterId})`);
    await cluster.start();
    const endpoints = cluster.endpoints();
    const etcdPids = new Map<string, number>();
    for (let i = 0; i < cluster.size; i++) etcdPids.set(`etcd m${i}`, cluster.pid(i)!);
    const benchPid = new Map([['bench (simulated hosts)', process.pid]]);
    const reqWindow = () => new EtcdRequestWindow(endpoints, cluster.httpTls()).start();
    const meter = cpuMeter(() => new Map([...etcdPids, ...benchPid, ...controllers.filter((c) => c.exit === undefined).map((c, i) => [`controller${i + 1}`, c.pid] as [string, number])]));
    let lastStats = '';
    let lastSamples: string[] = [];
    let lastDebug: string[] = [];
    const statsTimer = setInterval(() => {
      void pool?.stats(false).then((st) => {
        const w = summarizeWorkers(st);
        lastSamples = w.logs.samples.slice(0, 3);
        lastStats = `oldest ack ${w.oldestAckMs} ms, worker loop p99 ${w.loopP99Ms} ms, host logs warn ${w.logs.warn} error ${w.logs.error}, sync feed ${JSON.stringify(w.feed)}, phases ${JSON.stringify(w.phases)}`;
        lastDebug = Object.entries(w.logs.debug).sort((a, b) => b[1] - a[1]).slice(0, 4).map(([k, v]) => `${v}x ${k}`);
      });
    }, 5000).unref();
    statsTimerRef = statsTimer;
    const diag = () => `${meter()}; ${lastStats}`;

    client = new Etcd3({ hosts: endpoints, dialTimeout: 2000, ...etcd3Security(endpoints, cluster.clientTls()), faultHandling: { host: () => noop, global: noop } });
    const hostView = await HostView.start(client, prefix);
    const vmView = await VmView.start(client, prefix);
    const statusView = await StatusView.start(client, prefix);
    watchers.push(hostView.watcher, vmView.watcher, statusView.watcher);

    // 1. the hosts register (the production registrar, started at startRate)
    const per = Math.ceil(o.hosts / o.workers);
    const datas: FleetWorkerData[] = [];
    for (let w = 0; w < o.workers; w++) {
      const slice = ids.slice(w * per, (w + 1) * per);
      if (slice.length === 0) continue;
      datas.push({
        index: w,
        endpoints,
        security: cluster.clientTls(),
        prefix,
        hostIds: slice,
        timings: T,
        capacity: { vcpu: Math.max(1, o.vmsPerHost) * 3, memoryMb: Math.max(1, o.vmsPerHost) * 3 * 128 },
        hostsPerClient: o.hostsPerClient,
        startRate: o.startRate / o.workers,
      });
    }
    const etcdClients = datas.reduce((a, d) => a + Math.ceil(d.hostIds.length / d.hostsPerClient), 0);
    pool = new WorkerPool(datas);
    const p = pool;
    raiseAllThreads();
    const raiseTimer = setInterval(raiseAllThreads, 5000).unref();
    raiseTimerRef = raiseTimer;
    res.onCleanup(`simulated hosts ${base}-h*`, () => p.close());
    const poolCheck = () => {
      if (p.errors.length) throw new Error(`${label}: ${p.errors.join('; ')}`);
    };
    progress(`${label}: ${o.hosts} simulated hosts in ${datas.length} worker threads over ${etcdClients} etcd clients; starting ${o.startRate}/s (ttl ${T.ttl} ms, heartbeat ${T.heartbeatInterval} ms)`);
    const regWin = new ProcWindow(new Map([...etcdPids, ...benchPid])).start();
    const r0 = performance.now();
    void pool.all({ op: 'start' }, 3_600_000).catch(() => undefined);
    const attached = await waitFor('registering', () => hostView.count('attached') >= o.hosts, Math.max(60_000, (o.hosts / o.startRate) * 1000 * 3), () => `${hostView.count('attached')}/${o.hosts} attached; ${diag()}`, poolCheck);
    const regMs = performance.now() - r0;
    const regRes = regWin.stop();
    if (!attached) throw new Error(`${label}: only ${hostView.count('attached')}/${o.hosts} hosts attached`);
    progress(`${label}: ${o.hosts} hosts attached in ${(regMs / 1000).toFixed(1)} s`);

    // 2. the controller (it runs while the VMs are written, as in production: a host that rejoins at a
    //    new epoch meanwhile gets its older-epoch VMs placed again by the controller's sweep), then its standby
    const startController = (id: string) => {
      const c = ControllerChild.start(cluster.agentArgs(), prefix, id, join(dir, `${id.slice(base.length + 1)}.log`));
      controllers.push(c);
      res.onCleanup(`controller ${id}`, () => c.stop());
      return c;
    };
    const c1Id = `${base}-controller-1`;
    const c0 = performance.now();
    const c1 = startController(c1Id);
    const syncWin = new ProcWindow(new Map([['controller', c1.pid]])).start();
    const synced = await waitFor('controller sync', () => statusView.firstBy.has(c1Id), 120_000, () => 'no status yet', () => {
      if (c1.exit !== undefined) throw new Error(`${label}: the controller exited (${c1.exit}); log kept at ${res.keepLog(c1.log, `${base}-controller-1`)}`);
    });
    const syncMs = performance.now() - c0;
    const syncRes = syncWin.stop();
    if (!synced) throw new Error(`${label}: the controller published no status within 120 s`);
    progress(`${label}: controller elected and synced in ${Math.round(syncMs)} ms`);
    const c2Id = `${base}-controller-2`;
    const c2 = startController(c2Id);
    const all = new Map([['controller', c1.pid], ['standby', c2.pid], ...etcdPids, ...benchPid]);

    // 3. the VMs: records placed on each host at its epoch, as the agent's API create writes them
    seedKv = new EtcdKv({ endpoints, security: cluster.clientTls() });
    const seedStore = new KvControllerStore(seedKv, { prefix, clock: new SystemClock(), idSource: () => '00000000' });
    const total = o.hosts * o.vmsPerHost;
    const writes: { key: string; hostId: string; epoch: number }[] = [];
    for (let i = 0; i < o.hosts; i++) {
      const hostId = ids[i]!;
      const epoch = hostView.state.get(hostId)!.epoch;
      for (let j = 0; j < o.vmsPerHost; j++) writes.push({ key: vmKey(i, j), hostId, epoch });
    }
    const CHUNK = 50;
    const seedWin = new ProcWindow(new Map([...etcdPids, ...benchPid])).start();
    const seedReq = await reqWindow();
    const s0 = performance.now();
    let next = 0;
    let written = 0;
    const tick = throttle(5000, () => progress(`${label}: ${written}/${total} VM records written, ${vmView.running} running`));
    const seeder = async () => {
      while (next < writes.length) {
        const chunk = writes.slice(next, next + CHUNK);
        next += CHUNK;
        // At most o.seedRate VM records per second: each becomes a watch event on its host and a
        // status txn from it, on top of the fleet's heartbeats.
        const due = s0 + ((next - CHUNK) / o.seedRate) * 1000;
        if (due > performance.now()) await sleep(due - performance.now());
        const now = Date.now();
        const vms = chunk.map((w) => {
          const record: ClusterVmRecord = { uid: `${w.key.replace('/', '-')}-0`.padEnd(32, '0').slice(0, 32), spec: spec(w.key), hostId: w.hostId, hostEpoch: w.epoch, phase: 'pending', generation: 1, updatedAt: now };
          return { key: w.key, expectRevision: null, prevHostId: null, next: record };
        });
        const r = await seedStore.commit({ vms }, 30_000);
        if (!r.ok) throw new Error(`${label}: seeding VM records: ${r.reason}`);
        written += chunk.length;
        tick();
      }
    };
    await Promise.all(Array.from({ length: 8 }, seeder));
    const seedMs = performance.now() - s0;
    progress(`${label}: ${total} VM records written in ${(seedMs / 1000).toFixed(1)} s; waiting until every host reported its VMs running`);
    // Gives up when no VM turned running for 90 s (e.g. every host's sync round failing).
    let lastCount = -1;
    let lastChange = performance.now();
    const allRunning = await waitFor('VMs running', () => vmView.running >= total, Math.max(300_000, total * 5), () => `${vmView.running}/${total} running; ${diag()}`, () => {
      poolCheck();
      if (vmView.running !== lastCount) {
        lastCount = vmView.running;
        lastChange = performance.now();
      } else if (performance.now() - lastChange > 90_000) throw new Error(`${label}: no VM reported running for 90 s (${vmView.running}/${total}); simulated-host logs: ${lastSamples.join(' | ') || 'none'}; debug: ${lastDebug.join(' | ') || 'none'}`);
    });
    const runningAfterMs = performance.now() - s0;
    const seedRes = seedWin.stop();
    const seedEtcd = await seedReq.stop();
    if (!allRunning) failures.push(`${label}: only ${vmView.running}/${total} VMs reported running by their hosts`);
    progress(`${label}: ${vmView.running}/${total} VMs running after ${(runningAfterMs / 1000).toFixed(1)} s`);

    // 4. steady state
    await sleep(5000);
    await pool.stats();
    loop.reset();
    progress(`${label}: steady state for ${o.steadyMs / 1000} s`);
    const stWin = new ProcWindow(all).start();
    const stReq = await reqWindow();
    await sleep(o.steadyMs);
    const steadyRes = stWin.stop();
    const steadyEtcd = await stReq.stop();
    const steadyWorkers = summarizeWorkers(await pool.stats());
    const steadyLoop = loopDelay(loop);
    const intervalsPerSec = 1000 / T.heartbeatInterval;
    // The simulation's own cost: CPU of the bench process (all worker threads) per etcd request the
    // fleet sends — what bounds the size that fits on this machine (real agents each have their own CPU).
    const benchCpuPerRequestMs =
      steadyEtcd.totalPerSecond > 0 ? Math.round(((steadyRes.usage['bench (simulated hosts)']?.cpuMs ?? 0) / ((steadyEtcd.totalPerSecond * steadyEtcd.windowMs) / 1000)) * 1000) / 1000 : undefined;
    const perHostPerInterval: Record<string, number> = {};
    for (const [m, v] of Object.entries(steadyEtcd.perSecond)) perHostPerInterval[m] = Math.round((v / o.hosts / intervalsPerSec) * 100) / 100;
    progress(`${label}: steady: etcd ${fmtRates(steadyEtcd)}; controller ${steadyRes.usage.controller?.cpuPct}% CPU, ${steadyRes.usage.controller?.rssMiB} MiB; oldest ack ${steadyWorkers.oldestAckMs} ms; worker loop p99 ${steadyWorkers.loopP99Ms} ms`);

    // 5/6. hosts die: a few, then 300 at once
    const alive = new Set(ids);
    const expire = async (hosts: readonly string[], what: string): Promise<ExpiryRun> => {
      await pool!.stats();
      loop.reset();
      const win = new ProcWindow(all, 100).start();
      const req = await reqWindow();
      // The VMs on these hosts now (some may have moved since they were written: hosts that rejoined).
      const on = new Set(hosts);
      const byHost = new Map<string, string[]>();
      for (const [key, v] of vmView.vms) if (v.hostId !== undefined && on.has(v.hostId) && v.phase !== 'lost') byHost.set(v.hostId, [...(byHost.get(v.hostId) ?? []), key]);
      for (const h of hosts) {
        alive.delete(h);
        vmView.track(byHost.get(h) ?? [], h);
        // Only what happens from now on counts (a host that flapped earlier was detached before).
        hostView.detached.delete(h);
        hostView.fenced.delete(h);
        hostView.aliveGone.delete(h);
      }
      progress(`${label}: ${what}: ${hosts.length} hosts die (no more keepalives; their leases expire after ttl ${T.ttl} ms)`);
      const acks = await pool!.crash(hosts);
      const keys = [...vmView.moved.entries()].filter(([, m]) => on.has(m.from));
      const done = () => hosts.every((h) => hostView.fenced.has(h)) && keys.every(([, m]) => m.runningAt !== undefined);
      const lastDeadline = () => Math.max(0, ...hosts.map((h) => hostView.detached.get(h)?.record?.fenceDeadline ?? 0));
      await waitFor(
        what,
        done,
        T.ttl + T.fenceWindow + 180_000,
        () =>
          `${hosts.filter((h) => hostView.detached.has(h)).length} detached, ${hosts.filter((h) => hostView.fenced.has(h)).length} fenced / ${hosts.length}; ` +
          `VMs ${keys.filter(([, m]) => m.placedAt !== undefined).length} placed, ${keys.filter(([, m]) => m.runningAt !== undefined).length} running elsewhere / ${keys.length}; ${diag()}`,
        () => {
          for (const c of [c1]) if (c.exit !== undefined) throw new Error(`${label}: the controller exited (${c.exit})`);
        },
      );
      const resources = win.stop();
      const etcd = await req.stop();
      const workers = summarizeWorkers(await pool!.stats());
      const benchLoopMs = loopDelay(loop);
      const gone: number[] = [];
      const det: number[] = [];
      const fen: number[] = [];
      const deadlineOf = new Map<string, number>();
      for (const h of hosts) {
        const a = acks.get(h)?.lastAckWall;
        const d = hostView.detached.get(h);
        const f = hostView.fenced.get(h);
        const g = hostView.aliveGone.get(h);
        if (a !== undefined && g) gone.push(g.at - (a + T.ttl));
        if (a !== undefined && d) det.push(d.at - (a + T.ttl));
        const dl = d?.record?.fenceDeadline ?? f?.record?.fenceDeadline;
        if (dl !== undefined) deadlineOf.set(h, dl);
        if (f && dl !== undefined) fen.push(f.at - dl);
      }
      const placed: number[] = [];
      const running: number[] = [];
      for (const [, m] of keys) {
        const dl = deadlineOf.get(m.from);
        if (dl === undefined) continue;
        if (m.placedAt !== undefined) placed.push(m.placedAt - dl);
        if (m.runningAt !== undefined) running.push(m.runningAt - dl);
      }
      const last = lastDeadline();
      const lastPlaced = keys.length ? keys.reduce((a, [, m]) => Math.max(a, m.placedAt ?? Infinity), -Infinity) : NaN;
      const lastRunning = keys.length ? keys.reduce((a, [, m]) => Math.max(a, m.runningAt ?? Infinity), -Infinity) : NaN;
      const r: ExpiryRun = {
        hosts: hosts.length,
        vms: keys.length,
        detached: hosts.filter((h) => hostView.detached.has(h)).length,
        fenced: hosts.filter((h) => hostView.fenced.has(h)).length,
        placed: keys.filter(([, m]) => m.placedAt !== undefined).length,
        runningElsewhere: keys.filter(([, m]) => m.runningAt !== undefined).length,
        ...(gone.length ? { aliveGoneMs: pcts(gone) } : {}),
        ...(det.length ? { detachedMs: pcts(det) } : {}),
        ...(fen.length ? { fencedAfterDeadlineMs: pcts(fen) } : {}),
        ...(placed.length ? { placedAfterDeadlineMs: pcts(placed) } : {}),
        ...(running.length ? { runningAfterDeadlineMs: pcts(running) } : {}),
        ...(Number.isFinite(lastPlaced) && last > 0 ? { allPlacedAfterLastDeadlineMs: Math.round(lastPlaced - last) } : {}),
        ...(Number.isFinite(lastRunning) && last > 0 ? { allRunningAfterLastDeadlineMs: Math.round(lastRunning - last) } : {}),
        resources,
        etcd,
        workers,
        benchLoopMs,
      };
      if (r.fenced < r.hosts) failures.push(`${label}: ${what}: only ${r.fenced}/${r.hosts} hosts fenced`);
      if (r.runningElsewhere < r.vms) failures.push(`${label}: ${what}: only ${r.runningElsewhere}/${r.vms} of their VMs running elsewhere`);
      progress(
        `${label}: ${what}: detached p50/p99 ${r.detachedMs?.p50}/${r.detachedMs?.p99} ms after lastAck+ttl; fenced p99 ${r.fencedAfterDeadlineMs?.p99} ms after deadline; ` +
          `all ${r.vms} VMs placed ${r.allPlacedAfterLastDeadlineMs} ms, running ${r.allRunningAfterLastDeadlineMs} ms after the last deadline`,
      );
      return r;
    };
    const sample = pick(ids, o.naturalExpiries + o.massExpiry);
    const natural = await expire(sample.slice(0, o.naturalExpiries), 'natural expiry');
    await sleep(3000);
    const mass = o.massExpiry > 0 ? await expire(sample.slice(o.naturalExpiries), `${o.massExpiry} at once`) : undefined;
    await sleep(3000);

    // 7. takeover: the leader resigns (SIGTERM), the standby takes over and syncs
    progress(`${label}: takeover: SIGTERM to the leader; the standby must publish its status`);
    const tkWin = new ProcWindow(new Map([['standby', c2.pid]])).start();
    const k0 = wall();
    const stopping = c1.stop();
    const took = await waitFor('takeover', () => statusView.firstBy.has(c2Id), 120_000, () => 'standby has published no status yet', () => {
      if (c2.exit !== undefined) throw new Error(`${label}: the standby exited (${c2.exit})`);
    });
    await stopping;
    const tkRes = tkWin.stop();
    const takeover = took ? { ms: Math.round(statusView.firstBy.get(c2Id)! - k0), resources: tkRes, method: 'SIGTERM to the leader (it resigns) → status published by the standby (seen by the bench watch)' } : undefined;
    if (!took) failures.push(`${label}: the standby did not take over within 120 s`);
    else progress(`${label}: takeover: standby synced ${takeover!.ms} ms after the leader's SIGTERM`);

    const finalWorkers = summarizeWorkers(await pool.stats());
    if (finalWorkers.unexpected.length) failures.push(`${label}: ${finalWorkers.unexpected.length} hosts left attached without being crashed: ${finalWorkers.unexpected.slice(0, 3).join('; ')}`);
    for (const e of [...hostView.errors, ...vmView.errors]) failures.push(`${label}: ${e}`);
    const controllerLogs: FleetRun['controllerLogs'] = {};
    for (const c of controllers) {
      await c.stop();
      controllerLogs[c.log] = c.logSummary();
      if (controllerLogs[c.log]!.error) res.keepLog(c.log, `${base}-${c.log.split('/').pop()!.replace('.log', '')}`);
    }
    return {
      hosts: o.hosts,
      vmsPerHost: o.vmsPerHost,
      prefix,
      workers: datas.length,
      etcdClients,
      register: { ms: Math.round(regMs), perSecond: Math.round(o.hosts / (regMs / 1000)), resources: regRes },
      seed: { ms: Math.round(seedMs), vms: total, runningAfterMs: Math.round(runningAfterMs), resources: seedRes, etcd: seedEtcd },
      controllerSync: { ms: Math.round(syncMs), resources: syncRes },
      steady: { resources: steadyRes, etcd: steadyEtcd, workers: steadyWorkers, benchLoopMs: steadyLoop, perHostPerInterval, ...(benchCpuPerRequestMs !== undefined ? { benchCpuPerRequestMs } : {}) },
      natural,
      ...(mass ? { mass } : {}),
      ...(takeover ? { takeover } : {}),
      failures,
      controllerLogs,
    };
  } catch (err) {
    for (const c of controllers) res.keepLog(c.log, `${base}-${c.log.split('/').pop()!.replace('.log', '')}`);
    throw err;
  } finally {
    clearInterval(statsTimerRef);
    clearInterval(raiseTimerRef);
    loop.disable();
    for (const c of controllers) await c.stop();
    await pool?.close();
    for (const w of watchers) await w.cancel().catch(() => undefined);
    client?.close();
    await seedKv?.close();
    await cluster.stop();
  }
}

// ---- the scenario --------------------------------------------------------------------------------

export async function runFleetScenario(ctx: BenchContext): Promise<ScenarioResult> {
  const o = fleetOptions(ctx);
  const v = checkTimings(o.timings);
  if (v.length) throw new Error(`fleet: the simulated hosts' timings are unsafe: ${describeViolations(v)}`);
  const run = await runFleet(ctx, o);
  return { data: { options: o, run }, tables: tables(run, o), failures: run.failures };
}

function tables(r: FleetRun, o: FleetOptions): Table[] {
  const p3 = (p: Pcts | undefined) => (p ? `${p.p50} / ${p.p99} / ${p.max} ms` : '—');
  const cpu = (u: Usage, name: string) => (u.usage[name] ? `${u.usage[name]!.cpuPct}%` : '—');
  const etcdCpu = (u: Usage) => `${Math.round(Object.entries(u.usage).filter(([k]) => k.startsWith('etcd')).reduce((a, [, x]) => a + x.cpuPct, 0))}%`;
  const etcdRss = (u: Usage) => Object.entries(u.usage).filter(([k]) => k.startsWith('etcd')).map(([, x]) => Math.round(x.rssMiB)).join(' / ') + ' MiB';
  const size = `${r.hosts} × ${r.vmsPerHost}`;
  const ex = (name: string, e: ExpiryRun | undefined) =>
    e
      ? [
          name,
          `${e.hosts} (${e.vms} VMs)`,
          p3(e.detachedMs),
          p3(e.aliveGoneMs),
          `${e.fenced}/${e.hosts}`,
          p3(e.fencedAfterDeadlineMs),
          p3(e.placedAfterDeadlineMs),
          e.allPlacedAfterLastDeadlineMs === undefined ? '—' : `${e.allPlacedAfterLastDeadlineMs} ms`,
          e.allRunningAfterLastDeadlineMs === undefined ? '—' : `${e.allRunningAfterLastDeadlineMs} ms`,
          `${e.resources.usage.controller?.cpuMs ?? '—'} ms`,
          `${e.workers.loopP99Ms} / ${e.benchLoopMs.p99} ms`,
        ]
      : [name, '—'];
  return [
    {
      title: `fleet ${size}: steady state (${o.steadyMs / 1000} s window; ttl ${o.timings.ttl} ms, heartbeat ${o.timings.heartbeatInterval} ms)`,
      headers: ['etcd requests/s (all members)', 'per host per heartbeat', 'etcd CPU (3 members)', 'etcd RSS', 'controller CPU / RSS', 'standby CPU', 'bench CPU / RSS', 'bench CPU per request', 'oldest ack', 'worker loop p99 / max'],
      rows: [
        [
          `${r.steady.etcd.totalPerSecond}: ${fmtRates(r.steady.etcd)}`,
          Object.entries(r.steady.perHostPerInterval).slice(0, 4).map(([m, v]) => `${m} ${v}`).join(', ') || '—',
          etcdCpu(r.steady.resources),
          etcdRss(r.steady.resources),
          `${cpu(r.steady.resources, 'controller')} / ${r.steady.resources.usage.controller?.rssMiB ?? '—'} MiB`,
          cpu(r.steady.resources, 'standby'),
          `${cpu(r.steady.resources, 'bench (simulated hosts)')} / ${r.steady.resources.usage['bench (simulated hosts)']?.rssMiB ?? '—'} MiB`,
          r.steady.benchCpuPerRequestMs === undefined ? '—' : `${r.steady.benchCpuPerRequestMs} ms`,
          `${r.steady.workers.oldestAckMs} ms`,
          `${r.steady.workers.loopP99Ms} / ${r.steady.workers.loopMaxMs} ms`,
        ],
      ],
      notes: [
        "Requests = grpc_server_msg_received_total by method from each member's /metrics, summed (one keepalive or one watch request = one message).",
        'Target (issue 9): a steady-state agent costs etcd one keepalive per interval and no reads (per host per heartbeat: LeaseKeepAlive 1, Range 0).',
        'CPU = utime+stime from /proc over the window (100 % = one core; the machine has 2). oldest ack = largest age of a live host\'s last acknowledged',
        `keepalive (ttl ${o.timings.ttl} ms). Hosts: ${r.workers} worker threads, ${r.etcdClients} etcd clients shared by up to ${o.hostsPerClient} hosts each.`,
        'bench CPU per request = the simulated hosts\' CPU (gRPC client, TLS, codec, agent logic) per etcd request: the bound of the simulation here.',
        `Timings: ${o.heartbeatRate !== undefined ? `the agent's scaleTimings for ${r.hosts} hosts at fleetHeartbeatRate ${o.heartbeatRate}/s, maxHeartbeatInterval 10 s` : 'TETHER_BENCH_FLEET_TIMINGS'}: ${JSON.stringify(o.timings)}.`,
      ],
    },
    {
      title: `fleet ${size}: hosts dying → detached, fenced, VMs placed elsewhere`,
      headers: ['case', 'hosts', 'lastAck+ttl → detached p50/p99/max', 'lastAck+ttl → alive gone', 'fenced', 'fenceDeadline → fenced', 'deadline → VM placed', 'all placed after last deadline', 'all running elsewhere', 'controller CPU', 'loop p99 workers / bench'],
      rows: [ex('natural expiry', r.natural), ex(`${o.massExpiry} at once`, r.mass)],
      notes: [
        'A host dies = its HostGc and sync stop (no revoke); lastAck = send time of its last acknowledged keepalive (the agent\'s own status), so',
        "lastAck + ttl is the earliest the lease can expire (etcd's lessor checks every 500 ms: 0-500 ms of each number is etcd's granularity).",
        'Seen = delivered by the bench\'s own watch (separate client). fenceDeadline = the record\'s, set by the controller (detachedAt + fenceWindow).',
        'Targets (issue 9): detached p99 <= 1 s and fenced p99 <= 1 s after the deadline at 10,000 hosts.',
      ],
    },
    {
      title: `fleet ${size}: controller, registration, takeover`,
      headers: ['register', 'VM records written / all running', 'controller synced after', 'sync CPU', 'controller RSS peak', 'takeover → synced', 'etcd DB size (m0)', 'simulated-host warn / error logs'],
      rows: [
        [
          `${(r.register.ms / 1000).toFixed(1)} s (${r.register.perSecond}/s)`,
          `${(r.seed.ms / 1000).toFixed(1)} s / ${(r.seed.runningAfterMs / 1000).toFixed(1)} s`,
          `${r.controllerSync.ms} ms (before the VMs)`,
          `${r.controllerSync.resources.usage.controller?.cpuMs ?? '—'} ms`,
          `${Math.max(r.steady.resources.usage.controller?.hwmMiB ?? 0, r.mass?.resources.usage.controller?.hwmMiB ?? 0)} MiB`,
          r.takeover ? `${r.takeover.ms} ms` : '—',
          `${r.steady.etcd.members[0]?.dbMiB ?? '—'} MiB`,
          `${r.steady.workers.logs.warn} / ${r.steady.workers.logs.error}`,
        ],
      ],
      notes: [
        'synced = spawn → the controller published controller/status (Node start, election, list-watch of the hosts; it starts before the VMs are written).',
        'takeover = SIGTERM to the leader (it resigns) → the standby published controller/status. Target: <= 10 s at 10,000 × 20.',
        'VM records: placed on their host at its epoch, `pending` (as the agent API writes them); all running = every host\'s sync reported them.',
      ],
    },
  ];
}
