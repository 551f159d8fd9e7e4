/**
 * Controller scale (issue 4): one real `tether controller` (a child process) watching N hosts that
 * are simulated in the bench process as lightweight lease holders — no VMs, no agent processes. Each
 * simulated host does what an agent's registration does (EtcdClusterStore.grantLease + register, with
 * safe published timings) and then one EtcdClusterStore.keepalive every heartbeatInterval (= ttl / 3),
 * spread over several etcd3 clients and bounded in concurrency.
 *
 * Per N, on a fresh 3-member etcd cluster (tag `bench`) and a key prefix of its own:
 *  1. register the N hosts (keepalives start as each host registers);
 *  2. start the controller; it is synced once it publishes `controller/status`;
 *  3. steady state: CPU and RSS of the controller and etcd members with N hosts heartbeating;
 *  4. natural expiry: a few hosts stop their keepalives; the time from lastAck + ttl to `detached`
 *     shows etcd's own expiry granularity (its lessor looks for expired leases every 500 ms);
 *  5. revoke bursts: 50 hosts (where 5 % is more), then 5 % of the hosts stop their keepalives and
 *     their leases are revoked at once at a known time T; revocation deletes their `alive` keys
 *     immediately, so latency = the bench sees the controller's `detached` record − T (the target:
 *     p99 <= 1 s at N = 5,000);
 *  6. the fence: every detached host is fenced at its recorded fenceDeadline; lateness = fenced seen −
 *     fenceDeadline.
 *
 * The bench sees records through its own etcd watch on the prefix (a separate client), on its
 * monotonic clock; its event loop also drives the keepalives, so its loop delay during the window is
 * measured and reported as the error of the observation.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, copyFileSync, mkdirSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { noop } from 'cockatiel';
import { Etcd3, type IKeyValue, type ILeaseKeepAliveRequest, type ILeaseKeepAliveResponse, type IDuplexStream, type Watcher } from 'etcd3';
import { EtcdClusterStore } from '../../src/adapters/etcd/etcd-cluster-store.js';
import { etcd3Security, type EtcdSecurity } from '../../src/adapters/etcd/etcd-client.js';
import { repoRoot } from '../../src/dev/agent-process.js';
import { forgetOnExit, killOnExit } from '../../src/dev/child-guard.js';
import { LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import { checkTimings, DEFAULT_TIMINGS, describeViolations, type GcTimings } from '../../src/domain/gc-timing.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import type { BenchContext, ScenarioResult } from '../lib/context.js';
import { progress, sleep, throttle } from '../lib/progress.js';
import { EtcdDiskWindow, fmtDisk } from '../lib/etcd-metrics.js';
import { pcts, ProcWindow, type ProcUsage } from '../lib/proc.js';
import type { Table } from '../lib/table.js';

/**
 * What every simulated host publishes: ttl 10 s, a keepalive every ttl / 3. Safe by checkTimings:
 * 3333 * 3 <= 10000; watchdog 8000 >= tolerance 4000 + 3333; 8000 + 4000 + 2000 + 1000 <= 10000 + 10000.
 */
export const SIM_TIMINGS: GcTimings = { ...DEFAULT_TIMINGS, ttl: 10_000, heartbeatInterval: 3333, detachAfter: 6000 };

const TTL = SIM_TIMINGS.ttl;
const HB = SIM_TIMINGS.heartbeatInterval;
/** The target from the brief: p99 of revoke -> `detached` at N = 5,000. */
const TARGET_N = 5000;
const TARGET_P99_MS = 1000;
/** Hosts per etcd3 client (each client holds one gRPC channel per member). */
const HOSTS_PER_CLIENT = 500;
const MAX_CLIENTS = 10;
const REGISTER_CONCURRENCY = 64;
const KEEPALIVE_CONCURRENCY = 128;
/** Share of the hosts revoked in the burst. */
const BURST_SHARE = 0.05;
/** Size of a first, smaller burst where 5 % is more than this (separates burst size from N). */
const SMALL_BURST = 50;
/** Hosts left to expire on their own. */
const NATURAL_EXPIRIES = 5;
/**
 * How the simulated hosts send keepalives. `stream` (default): one long-lived LeaseKeepAlive stream
 * per etcd3 client carrying the keepalives of all its hosts (as etcd's Go client multiplexes leases).
 * `once`: EtcdClusterStore.keepalive, i.e. a new gRPC stream per keepalive exactly as the agent does —
 * on 2 cores the bench process cannot drive 5,000 of those on time (see docs/bench.md).
 */
export type KeepaliveMode = 'stream' | 'once';
function keepaliveMode(): KeepaliveMode {
  const v = process.env.TETHER_BENCH_KEEPALIVE ?? 'stream';
  if (v !== 'stream' && v !== 'once') throw new Error(`TETHER_BENCH_KEEPALIVE must be stream or once, got ${v}`);
  return v;
}

// ---- a bounded-concurrency gate ------------------------------------------------------------------

class Limiter {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(private readonly max: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.max) await new Promise<void>((r) => this.waiting.push(r));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

/**
 * One LeaseKeepAlive stream carrying the keepalives of many leases. etcd answers the requests of a
 * stream in order; answers are matched to requests by lease id. A stream error fails every pending
 * keepalive and the next one opens a new stream.
 */
class KeepaliveStream {
  private stream: IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse> | undefined;
  private opening: Promise<IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse>> | undefined;
  private readonly pending = new Map<string, ((ttl: number) => void)[]>();
  private closed = false;

  constructor(private readonly client: Etcd3) {}

  private open(): Promise<IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse>> {
    if (this.stream) return Promise.resolve(this.stream);
    this.opening ??= this.client.leaseClient.leaseKeepAlive().then(
      (s) => {
        const fail = () => {
          if (this.stream !== s) return;
          this.stream = undefined;
          const all = [...this.pending.values()].flat();
          this.pending.clear();
          for (const r of all) r(NaN);
        };
        s.on('data', (res: ILeaseKeepAliveResponse) => {
          const q = this.pending.get(String(res.ID));
          const r = q?.shift();
          if (q && q.length === 0) this.pending.delete(String(res.ID));
          r?.(Number(res.TTL));
        });
        s.on('error', fail);
        s.on('end', fail);
        this.stream = s;
        this.opening = undefined;
        if (this.closed) s.end();
        return s;
      },
      (err: unknown) => {
        this.opening = undefined;
        throw err;
      },
    );
    return this.opening;
  }

  /** One keepalive of `lease`: 'alive', 'lease-lost' (TTL 0), or a rejection (no answer by the deadline, stream failed). */
  async keepalive(lease: string, deadlineMs: number): Promise<'alive' | 'lease-lost'> {
    const t0 = performance.now();
    const s = await this.open();
    return new Promise((resolve, reject) => {
      const q = this.pending.get(lease) ?? [];
      this.pending.set(lease, q);
      const timer = setTimeout(() => {
        const i = q.indexOf(answer);
        if (i >= 0) q.splice(i, 1);
        reject(new Error(`keepalive of ${lease}: no answer within ${deadlineMs} ms`));
      }, Math.max(1, deadlineMs - (performance.now() - t0)));
      function answer(ttl: number): void {
        clearTimeout(timer);
        if (Number.isNaN(ttl)) reject(new Error(`keepalive of ${lease}: stream failed`));
        else resolve(ttl > 0 ? 'alive' : 'lease-lost');
      }
      q.push(answer);
      s.write({ ID: lease });
    });
  }

  close(): void {
    this.closed = true;
    this.stream?.end();
  }
}

// ---- the simulated hosts -------------------------------------------------------------------------

interface SimHost {
  readonly id: string;
  readonly store: EtcdClusterStore;
  /** Its client's shared keepalive stream (mode `stream`). */
  readonly ka: KeepaliveStream;
  lease?: string;
  timer?: NodeJS.Timeout;
  /** A keepalive of this host is queued or in flight. */
  busy?: Promise<void>;
  /** No more keepalives (sampled for expiry, or the fleet is closing). */
  stopped: boolean;
  revoked: boolean;
  /** performance.now() send time of the last acknowledged keepalive (the grant, before the first). */
  lastAckSent: number;
  lastAckRttMs: number;
  leaseLost: boolean;
}

/** Keepalive counters of one measurement window. */
class KaWindow {
  readonly t0 = performance.now();
  sent = 0;
  acked = 0;
  errors = 0;
  lost = 0;
  overlaps = 0;
  readonly rtts: number[] = [];
  /** Send time − due time (queueing behind the concurrency bound, timer lateness). */
  readonly lags: number[] = [];
  maxAckAgeMs = 0;
}

/** N lease holders behaving like agents towards etcd: register once, keepalive every HB. */
class Fleet {
  readonly hosts: SimHost[];
  private readonly stores: EtcdClusterStore[];
  private readonly streams: KeepaliveStream[];
  private readonly limiter = new Limiter(KEEPALIVE_CONCURRENCY);
  private closed = false;
  private closing: Promise<void> | undefined;
  private ageTimer: NodeJS.Timeout | undefined;
  win = new KaWindow();

  constructor(
    endpoints: readonly string[],
    private readonly prefix: string,
    ids: readonly string[],
    readonly mode: KeepaliveMode,
    security: EtcdSecurity = {},
  ) {
    const clients = Math.min(MAX_CLIENTS, Math.max(2, Math.ceil(ids.length / HOSTS_PER_CLIENT)));
    this.stores = Array.from({ length: clients }, () => new EtcdClusterStore({ endpoints, prefix, security }));
    this.streams = this.stores.map((s) => new KeepaliveStream(s.client));
    this.hosts = ids.map((id, i) => ({ id, store: this.stores[i % clients]!, ka: this.streams[i % clients]!, stopped: false, revoked: false, lastAckSent: 0, lastAckRttMs: 0, leaseLost: false }));
    // The oldest acknowledgement of a heartbeating host: must stay well below ttl, or the simulation
    // (not the controller) is what expires leases.
    this.ageTimer = setInterval(() => (this.win.maxAckAgeMs = Math.max(this.win.maxAckAgeMs, this.maxAckAge())), 500).unref();
  }

  get clientCount(): number {
    return this.stores.length;
  }

  /** Starts a new measurement window of the keepalive counters; returns the one that ended. */
  newWindow(): KaWindow {
    const w = this.win;
    w.maxAckAgeMs = Math.max(w.maxAckAgeMs, this.maxAckAge());
    this.win = new KaWindow();
    return w;
  }

  maxAckAge(): number {
    const now = performance.now();
    let max = 0;
    for (const h of this.hosts) if (h.lease && !h.stopped && !h.leaseLost) max = Math.max(max, now - h.lastAckSent);
    return max;
  }

  /** Registers every host like an agent's first registration (mode reattach at epoch 0); keepalives start per host. */
  async registerAll(onProgress: (done: number) => void): Promise<{ retries: number }> {
    let next = 0;
    let done = 0;
    let retries = 0;
    const worker = async () => {
      while (next < this.hosts.length && !this.closed) {
        const h = this.hosts[next++]!;
        retries += await this.register(h);
        onProgress(++done);
      }
    };
    await Promise.all(Array.from({ length: REGISTER_CONCURRENCY }, worker));
    if (this.closed) throw new Error('simulated hosts closed during registration');
    return { retries };
  }

  private async register(h: SimHost): Promise<number> {
    let lastErr: unknown;
    for (let attempt = 0; attempt < 5; attempt++) {
      if (this.closed) throw new Error('closed');
      let lease: string | undefined;
      try {
        // A retry after a txn whose answer was lost: the record may exist already (then at epoch 1).
        const epoch = attempt === 0 ? 0 : ((await h.store.getHost(h.id, 2 * HB))?.epoch ?? 0);
        const sent = performance.now();
        lease = await h.store.grantLease(TTL, 2 * HB);
        const res = await h.store.register(
          {
            hostId: h.id,
            mode: 'reattach',
            epoch,
            lease,
            agentId: `bench-${h.id}`,
            holder: `bench simulated host ${h.id}`,
            holdApplied: false,
            record: { hostId: h.id, timings: SIM_TIMINGS, capacity: { vcpu: 8, memoryMb: 16_384 }, labels: { bench: 'controller-scale' }, agentVersion: 'bench-sim' },
          },
          2 * HB,
        );
        if (!res.ok) throw new Error(`registration of ${h.id} refused: ${res.reason} (${res.detail})`);
        h.lease = lease;
        h.lastAckSent = sent;
        // First keepalive at a random phase within one interval: the fleet's keepalives spread evenly.
        this.schedule(h, performance.now() + HB * Math.random());
        return attempt;
      } catch (err) {
        lastErr = err;
        if (lease) void h.store.revokeLease(lease, HB).catch(() => undefined);
        await sleep(250 * 2 ** attempt);
      }
    }
    throw new Error(`registration of ${h.id} failed 5 times: ${(lastErr as Error).message}`);
  }

  private schedule(h: SimHost, due: number): void {
    h.timer = setTimeout(() => this.due(h, due), Math.max(0, due - performance.now()));
  }

  private due(h: SimHost, due: number): void {
    h.timer = undefined;
    if (this.closed || h.stopped || h.leaseLost) return;
    this.schedule(h, due + HB); // fixed rate, like the agent's heartbeat
    if (h.busy) {
      this.win.overlaps++;
      return;
    }
    h.busy = this.limiter.run(() => this.keepalive(h, due)).finally(() => (h.busy = undefined));
  }

  private async keepalive(h: SimHost, due: number): Promise<void> {
    if (this.closed || h.stopped) return;
    const w = this.win;
    const sent = performance.now();
    w.lags.push(sent - due);
    w.sent++;
    try {
      const answer = this.mode === 'stream' ? await h.ka.keepalive(h.lease!, HB) : (await h.store.keepalive(h.id, h.lease!, HB)).kind;
      const rtt = performance.now() - sent;
      if (answer === 'alive') {
        h.lastAckSent = sent;
        h.lastAckRttMs = rtt;
        w.acked++;
        w.rtts.push(rtt);
      } else {
        h.leaseLost = true;
        if (!h.stopped) w.lost++;
      }
    } catch {
      if (!h.stopped) w.errors++;
    }
  }

  /** Stops the keepalives of `hosts` and waits for those in flight to be answered. */
  async stop(hosts: readonly SimHost[]): Promise<void> {
    for (const h of hosts) {
      h.stopped = true;
      if (h.timer) clearTimeout(h.timer);
      h.timer = undefined;
    }
    await Promise.all(hosts.map((h) => h.busy));
  }

  /** Revokes one host's lease (its keepalives must be stopped): send and answer times. */
  async revoke(h: SimHost): Promise<{ sent: number; sentWall: number; rttMs: number }> {
    const sentWall = Date.now();
    const sent = performance.now();
    await h.store.revokeLease(h.lease!, 5000);
    h.revoked = true;
    return { sent, sentWall, rttMs: performance.now() - sent };
  }

  /** Stops every keepalive, revokes every lease still held (bounded), closes the clients. Idempotent; concurrent calls share one close. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.closed = true;
    if (this.ageTimer) clearInterval(this.ageTimer);
    for (const h of this.hosts) {
      h.stopped = true;
      if (h.timer) clearTimeout(h.timer);
    }
    await Promise.all(this.hosts.map((h) => h.busy));
    const held = this.hosts.filter((h) => h.lease && !h.revoked && !h.leaseLost);
    const gate = new Limiter(64);
    let failed = 0;
    await Promise.all(
      held.map((h) =>
        gate.run(async () => {
          try {
            await h.store.revokeLease(h.lease!, 2000);
            h.revoked = true;
          } catch {
            failed++;
          }
        }),
      ),
    );
    progress(`controller-scale: revoked the ${held.length - failed} remaining lease(s) of ${this.prefix}${failed ? ` (${failed} revokes failed; etcd is stopped next)` : ''}`);
    for (const k of this.streams) k.close();
    for (const s of this.stores) await s.close();
  }
}

// ---- the bench's view of the records -------------------------------------------------------------

interface Seen {
  /** performance.now() when the bench's watch delivered it. */
  readonly mono: number;
  readonly wall: number;
  readonly record?: HostRecord;
}

/** Watches `<prefix>hosts/`: first `detached` and `fenced` record and first `alive` delete per host. */
class RecordWatch {
  readonly detached = new Map<string, Seen>();
  readonly fenced = new Map<string, Seen>();
  readonly aliveGone = new Map<string, Seen>();
  errors: string[] = [];
  events = 0;

  private constructor(
    private readonly client: Etcd3,
    private readonly watcher: Watcher,
  ) {}

  static async start(client: Etcd3, prefix: string): Promise<RecordWatch> {
    const hostsPrefix = `${prefix}hosts/`;
    const w = await client.watch().prefix(hostsPrefix).create();
    const rw = new RecordWatch(client, w);
    const parse = (kv: IKeyValue) => {
      const m = /^([^/]+)\/(record|alive)$/.exec(kv.key.toString().slice(hostsPrefix.length));
      return m ? { hostId: m[1]!, part: m[2]! } : undefined;
    };
    w.on('put', (kv) => {
      const mono = performance.now();
      const wall = Date.now();
      rw.events++;
      const k = parse(kv);
      if (k?.part !== 'record') return;
      let record: HostRecord;
      try {
        record = JSON.parse(kv.value.toString()) as HostRecord;
      } catch {
        return;
      }
      const into = record.state === 'detached' ? rw.detached : record.state === 'fenced' ? rw.fenced : undefined;
      if (into && !into.has(k.hostId)) into.set(k.hostId, { mono, wall, record });
    });
    w.on('delete', (kv) => {
      const mono = performance.now();
      rw.events++;
      const k = parse(kv);
      if (k?.part === 'alive' && !rw.aliveGone.has(k.hostId)) rw.aliveGone.set(k.hostId, { mono, wall: Date.now() });
    });
    w.on('error', (err) => rw.errors.push(`error: ${err.message}`));
    w.on('disconnected', (err) => rw.errors.push(`disconnected: ${err.message}`));
    return rw;
  }

  async close(): Promise<void> {
    await this.watcher.cancel().catch(() => undefined);
    this.client.close();
  }
}

// ---- the controller child ------------------------------------------------------------------------

export class ControllerChild {
  private exitInfo: string | undefined;
  private readonly exited: Promise<void>;

  private constructor(
    readonly proc: ChildProcess,
    readonly log: string,
  ) {
    this.exited = new Promise((r) =>
      proc.once('exit', (code, signal) => {
        this.exitInfo = signal ? `signal ${signal}` : `code ${code}`;
        if (proc.pid !== undefined) forgetOnExit(proc.pid);
        r();
      }),
    );
  }

  /** `etcdArgs`: `--etcd-endpoints` and the TLS flags (the cluster's `agentArgs()`). */
  static start(etcdArgs: readonly string[], prefix: string, controllerId: string, log: string, profDir?: string): ControllerChild {
    const fd = openSync(log, 'a');
    const args = [...(profDir ? ['--cpu-prof', '--cpu-prof-dir', profDir] : []), join(repoRoot(), 'bin', 'tether.js'), 'controller', ...etcdArgs, '--etcd-prefix', prefix, '--controller-id', controllerId, '--log-level', 'warn'];
    const proc = spawn(process.execPath, args, { stdio: ['ignore', fd, fd] });
    closeSync(fd);
    if (proc.pid === undefined) throw new Error('the controller did not start');
    killOnExit(proc.pid);
    return new ControllerChild(proc, log);
  }

  get pid(): number {
    return this.proc.pid!;
  }

  /** Why it exited, or undefined while it runs. */
  get exit(): string | undefined {
    return this.exitInfo;
  }

  /** SIGTERM (the controller resigns), SIGKILL after 5 s. */
  async stop(): Promise<void> {
    if (this.exitInfo !== undefined) return;
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(timer);
  }

  /** Counts of warn / error lines in its log and the first few error messages. */
  logSummary(): { warn: number; error: number; errors: string[] } {
    let text = '';
    try {
      text = readFileSync(this.log, 'utf8');
    } catch {
      /* none */
    }
    let warn = 0;
    let error = 0;
    const errors: string[] = [];
    for (const line of text.split('\n')) {
      if (line.includes('"level":40')) warn++;
      else if (line.includes('"level":50') || line.includes('"level":60')) {
        error++;
        if (errors.length < 5) errors.push(line.slice(0, 300));
      } else if (line.trim() && !line.startsWith('{') && errors.length < 5) errors.push(line.slice(0, 300)); // a crash trace
    }
    return { warn, error, errors };
  }
}

/** Copies the controller's CPU profiles (TETHER_BENCH_CONTROLLER_PROF=1) to bench/results/logs/. */
function keepProfiles(profDir: string, base: string): void {
  const out = join(repoRoot(), 'bench', 'results', 'logs');
  try {
    mkdirSync(out, { recursive: true });
    for (const f of readdirSync(profDir)) {
      const dest = join(out, `${base}-controller-${f}`);
      copyFileSync(join(profDir, f), dest);
      progress(`controller CPU profile kept at ${dest}`);
    }
  } catch (err) {
    progress(`no controller CPU profile: ${(err as Error).message}`);
  }
}

// ---- one N ---------------------------------------------------------------------------------------

/** Loop delay of the bench process over a window, ms. */
function loopDelay(h: IntervalHistogram): { p50: number; p99: number; max: number } {
  const ms = (ns: number) => Math.round(ns / 1e5) / 10;
  return { p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max) };
}

function kaStats(w: KaWindow) {
  const secs = (performance.now() - w.t0) / 1000;
  return {
    sent: w.sent,
    acked: w.acked,
    perSecond: Math.round(w.acked / secs),
    errors: w.errors,
    lostUnexpectedly: w.lost,
    overlaps: w.overlaps,
    rttMs: pcts(w.rtts, 1),
    sendLagMs: pcts(w.lags, 1),
    maxAckAgeMs: Math.round(w.maxAckAgeMs),
  };
}

/** Random distinct picks of `k` elements. */
export function pick<T>(xs: readonly T[], k: number): T[] {
  const a = [...xs];
  for (let i = 0; i < Math.min(k, a.length); i++) {
    const j = i + Math.floor(Math.random() * (a.length - i));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a.slice(0, k);
}

type Usage = { windowMs: number; usage: Record<string, ProcUsage> };

/** One burst of revokes. */
export interface BurstRun {
  readonly hosts: number;
  readonly detached: number;
  /** detached seen by the bench − revoke sent: the headline number. */
  readonly latencyMs?: ReturnType<typeof pcts>;
  /** alive delete seen by the bench − revoke sent (etcd + watch delivery). */
  readonly aliveGoneMs?: ReturnType<typeof pcts>;
  /** detached seen − alive delete seen (the controller: queue, detach txn, watch back). */
  readonly controllerMs?: ReturnType<typeof pcts>;
  /** record.detachedAt (controller wall clock when its watch delivered the delete) − revoke sent (wall). */
  readonly toControllerWatchMs?: ReturnType<typeof pcts>;
  /** detached seen (wall) − record.detachedAt. */
  readonly detachTxnMs?: ReturnType<typeof pcts>;
  readonly revokeRttMs?: ReturnType<typeof pcts>;
  /** First revoke sent → last revoke answered. */
  readonly revokeSpreadMs: number;
  /** Per host, ms from its revoke (revoke: from the first revoke), in order of detached. */
  readonly samplesMs: readonly { revoke: number; aliveGone?: number; controllerWatch?: number; detached?: number }[];
  readonly resources: Usage;
  /** Per member: WAL fsync and backend commit latency in the window (bucket bounds from etcd's /metrics). */
  readonly etcdDisk: Awaited<ReturnType<EtcdDiskWindow['stop']>>;
  readonly loopDelayMs: ReturnType<typeof loopDelay>;
  readonly keepalives: ReturnType<typeof kaStats>;
  readonly targetMs?: number;
  readonly withinTarget?: boolean;
}

/** Everything one N measured. */
export interface ScaleRun {
  readonly n: number;
  readonly prefix: string;
  readonly etcdClients: number;
  readonly register: { readonly ms: number; readonly perSecond: number; readonly retries: number; readonly resources: Usage; readonly keepalives: ReturnType<typeof kaStats> };
  readonly controllerSync: { readonly ms: number; readonly resources: Usage };
  readonly steady: { readonly resources: Usage; readonly etcdDisk: Awaited<ReturnType<EtcdDiskWindow['stop']>>; readonly keepalives: ReturnType<typeof kaStats>; readonly loopDelayMs: ReturnType<typeof loopDelay> };
  readonly natural: {
    readonly hosts: number;
    readonly detached: number;
    /** detached seen − (lastAck sent + ttl): etcd's expiry granularity + controller; error <= the last keepalive's RTT. */
    readonly latencyMs?: ReturnType<typeof pcts>;
    /** alive key deleted (seen) − (lastAck sent + ttl): etcd alone. */
    readonly aliveGoneMs?: ReturnType<typeof pcts>;
    readonly samplesMs: readonly { aliveGone?: number; detached?: number; lastAckRttMs: number }[];
  };
  /** The revoke bursts, smaller first. */
  readonly bursts: readonly BurstRun[];
  readonly fence: {
    readonly hosts: number;
    readonly fenced: number;
    /** fenced seen (wall) − record.fenceDeadline. */
    readonly lateMs?: ReturnType<typeof pcts>;
    /** detached → fenced: fenceDeadline − detachedAt (the published window). */
    readonly windowMs?: number;
    readonly resources: Usage;
  };
  /** Hosts the bench never expired that were detached anyway (the simulation lost a lease, or a bug). */
  readonly unexpectedDetached: readonly string[];
  readonly watchErrors: readonly string[];
  readonly controllerLog: ReturnType<ControllerChild['logSummary']>;
}

async function runSize(ctx: BenchContext, n: number, steadyMs: number, mode: KeepaliveMode): Promise<ScaleRun> {
  const { res } = ctx;
  const label = `controller-scale N=${n}`;
  // One bench host id per N: the controller id and every simulated host id start with it, so the
  // orphan reaper and the leak check cover the controller child.
  const base = res.newHostId(`cs${n}`);
  const dir = res.tempDir(`cs${n}`);
  const prefix = `/${base}/`;
  const ids = Array.from({ length: n }, (_, i) => `${base}-h${String(i).padStart(5, '0')}`);

  const cluster = new LocalEtcdCluster({ tag: 'bench' });
  res.watchMark(cluster.mark);
  res.onCleanup(`etcd ${cluster.clusterId}`, () => cluster.stop());
  let fleet: Fleet | undefined;
  let watch: RecordWatch | undefined;
  let controller: ControllerChild | undefined;
  const loop = monitorEventLoopDelay({ resolution: 10 });
  try {
    progress(`${label}: starting a 3-member etcd cluster (${cluster.clusterId})`);
    await cluster.start();
    const endpoints = cluster.endpoints();
    const etcdPids = new Map<string, number>();
    for (let i = 0; i < cluster.size; i++) etcdPids.set(`etcd m${i}`, cluster.pid(i)!);
    const benchPid = new Map([['bench (simulated hosts)', process.pid]]);

    // 1. register
    fleet = new Fleet(endpoints, prefix, ids, mode, cluster.clientTls());
    const f = fleet;
    res.onCleanup(`simulated hosts ${base}-h*`, () => f.close());
    progress(`${label}: registering ${n} simulated hosts over ${fleet.clientCount} etcd clients (${REGISTER_CONCURRENCY} at a time; ttl ${TTL} ms, keepalive every ${HB} ms, ${mode === 'stream' ? 'shared keepalive streams' : 'a stream per keepalive'})`);
    const regWin = new ProcWindow(new Map([...etcdPids, ...benchPid])).start();
    const t0 = performance.now();
    let lastDone = 0;
    const tick = throttle(5000, () => progress(`${label}: ${lastDone}/${n} registered after ${((performance.now() - t0) / 1000).toFixed(1)} s`));
    const { retries } = await fleet.registerAll((d) => {
      lastDone = d;
      tick();
    });
    const regMs = performance.now() - t0;
    const regRes = regWin.stop();
    const regKa = kaStats(fleet.newWindow());
    progress(`${label}: ${lastDone} hosts registered in ${(regMs / 1000).toFixed(1)} s (${Math.round(n / (regMs / 1000))}/s, ${retries} retries)`);

    // 2. the controller
    const client = new Etcd3({ hosts: endpoints, dialTimeout: 1000, ...etcd3Security(endpoints, cluster.clientTls()), faultHandling: { host: () => noop, global: noop } });
    watch = await RecordWatch.start(client, prefix).catch((err: unknown) => {
      client.close();
      throw err;
    });
    const log = join(dir, 'controller.log');
    const profDir = process.env.TETHER_BENCH_CONTROLLER_PROF ? join(dir, 'prof') : undefined;
    const c = ControllerChild.start(cluster.agentArgs(), prefix, `${base}-controller`, log, profDir);
    controller = c;
    res.onCleanup(`controller ${base}-controller`, () => c.stop());
    const syncWin = new ProcWindow(new Map([['controller', c.pid]])).start();
    const c0 = performance.now();
    for (;;) {
      if (c.exit !== undefined) throw new Error(`${label}: the controller exited (${c.exit}); log kept at ${res.keepLog(log, `${base}-controller`)}`);
      const st = await client.get(`${prefix}controller/status`).exec().catch(() => undefined);
      if (st?.kvs.length) break;
      if (performance.now() - c0 > 60_000) throw new Error(`${label}: the controller published no status within 60 s`);
      await sleep(50);
    }
    const syncMs = performance.now() - c0;
    const syncRes = syncWin.stop();
    progress(`${label}: controller (pid ${c.pid}) elected and synced with ${n} hosts in ${Math.round(syncMs)} ms (status published)`);
    const all = new Map([['controller', c.pid], ...etcdPids, ...benchPid]);

    // 3. steady state
    await sleep(2000);
    fleet.newWindow();
    loop.enable();
    loop.reset();
    progress(`${label}: steady state for ${steadyMs / 1000} s`);
    const steadyDisk = await new EtcdDiskWindow(endpoints, cluster.httpTls()).start();
    const steadyWin = new ProcWindow(all).start();
    await sleep(steadyMs);
    const steadyRes = steadyWin.stop();
    const steadyEtcdDisk = await steadyDisk.stop();
    const steadyKa = kaStats(fleet.newWindow());
    const steadyLoop = loopDelay(loop);
    progress(
      `${label}: steady: controller ${steadyRes.usage.controller?.cpuPct}% CPU ${steadyRes.usage.controller?.rssMiB} MiB; ${steadyKa.perSecond} keepalives/s, RTT p99 ${steadyKa.rttMs?.p99} ms, oldest ack ${steadyKa.maxAckAgeMs} ms`,
    );

    // Samples: natural expiries and the bursts, disjoint.
    const burstN = Math.max(1, Math.round(n * BURST_SHARE));
    const burstSizes = burstN > SMALL_BURST ? [SMALL_BURST, burstN] : [burstN];
    const sample = pick(fleet.hosts, burstSizes.reduce((a, b) => a + b, 0) + NATURAL_EXPIRIES);
    const naturalHosts = sample.slice(0, NATURAL_EXPIRIES);
    const burstHosts = sample.slice(NATURAL_EXPIRIES);

    // 4. natural expiry
    progress(`${label}: ${naturalHosts.length} hosts stop their keepalives (natural expiry after ttl ${TTL} ms)`);
    await fleet.stop(naturalHosts);
    const natDeadline = performance.now() + TTL + 15_000;
    while (naturalHosts.some((h) => !watch!.detached.has(h.id)) && performance.now() < natDeadline) {
      if (c.exit !== undefined) throw new Error(`${label}: the controller exited (${c.exit})`);
      await sleep(100);
    }
    const natSamples = naturalHosts.map((h) => {
      const expiry = h.lastAckSent + TTL;
      const a = watch!.aliveGone.get(h.id);
      const d = watch!.detached.get(h.id);
      return { ...(a ? { aliveGone: Math.round(a.mono - expiry) } : {}), ...(d ? { detached: Math.round(d.mono - expiry) } : {}), lastAckRttMs: Math.round(h.lastAckRttMs) };
    });
    const natDetached = natSamples.filter((s) => s.detached !== undefined);
    const natLat = pcts(natDetached.map((s) => s.detached!));
    progress(`${label}: natural expiry: ${natDetached.length}/${naturalHosts.length} detached, lastAck+ttl → detached ${natSamples.map((s) => s.detached ?? '—').join(', ')} ms`);

    // 5. revoke bursts: a fixed small one (where 5 % is more), then 5 % of the hosts.
    const burstOf = async (hosts: readonly SimHost[]): Promise<BurstRun> => {
      await fleet!.stop(hosts);
      fleet!.newWindow();
      await sleep(500);
      const diskWin = await new EtcdDiskWindow(endpoints, cluster.httpTls()).start();
      loop.reset();
      const win = new ProcWindow(all, 100).start();
      progress(`${label}: revoking ${hosts.length} leases at once`);
      const revokes = new Map<string, { sent: number; sentWall: number; rttMs: number }>();
      const revokeErrors: string[] = [];
      const b0 = performance.now();
      await Promise.all(
        hosts.map((h) =>
          fleet!.revoke(h).then(
            (r) => void revokes.set(h.id, r),
            (err: unknown) => void revokeErrors.push(`${h.id}: ${(err as Error).message}`),
          ),
        ),
      );
      const revokeSpreadMs = performance.now() - b0;
      if (revokeErrors.length) throw new Error(`${label}: ${revokeErrors.length} revokes failed: ${revokeErrors.slice(0, 3).join('; ')}`);
      const until = performance.now() + 30_000;
      while (hosts.some((h) => !watch!.detached.has(h.id)) && performance.now() < until) {
        if (c.exit !== undefined) throw new Error(`${label}: the controller exited (${c.exit})`);
        await sleep(5);
      }
      const resources = win.stop();
      const loopDelayMs = loopDelay(loop);
      const disk = await diskWin.stop();
      const keepalives = kaStats(fleet!.newWindow());
      const lat: number[] = [];
      const gone: number[] = [];
      const ctl: number[] = [];
      const toWatch: number[] = [];
      const txn: number[] = [];
      const samples: BurstRun['samplesMs'][number][] = [];
      for (const h of hosts) {
        const r = revokes.get(h.id)!;
        const d = watch!.detached.get(h.id);
        const a = watch!.aliveGone.get(h.id);
        const rd = (x: number | undefined) => (x === undefined ? undefined : Math.round(x));
        samples.push({
          revoke: Math.round(r.sent - b0),
          aliveGone: rd(a && a.mono - r.sent),
          controllerWatch: rd(d?.record?.detachedAt !== undefined ? d.record.detachedAt - r.sentWall : undefined),
          detached: rd(d && d.mono - r.sent),
        });
        if (d) lat.push(d.mono - r.sent);
        if (a) gone.push(a.mono - r.sent);
        if (a && d) ctl.push(d.mono - a.mono);
        if (d?.record?.detachedAt !== undefined) {
          toWatch.push(d.record.detachedAt - r.sentWall);
          txn.push(d.wall - d.record.detachedAt);
        }
      }
      const latencyMs = pcts(lat);
      progress(
        `${label}: burst of ${hosts.length}: ${lat.length} detached; revoke → detached p50 ${latencyMs?.p50} ms, p99 ${latencyMs?.p99} ms, max ${latencyMs?.max} ms; controller ${resources.usage.controller?.cpuMs} ms CPU`,
      );
      return {
        hosts: hosts.length,
        detached: lat.length,
        ...(latencyMs ? { latencyMs } : {}),
        ...(gone.length ? { aliveGoneMs: pcts(gone) } : {}),
        ...(ctl.length ? { controllerMs: pcts(ctl) } : {}),
        ...(toWatch.length ? { toControllerWatchMs: pcts(toWatch) } : {}),
        ...(txn.length ? { detachTxnMs: pcts(txn) } : {}),
        revokeRttMs: pcts([...revokes.values()].map((r) => r.rttMs)),
        revokeSpreadMs: Math.round(revokeSpreadMs),
        samplesMs: samples.sort((x, y) => (x.detached ?? Infinity) - (y.detached ?? Infinity)),
        resources,
        etcdDisk: disk,
        loopDelayMs,
        keepalives,
        ...(n === TARGET_N ? { targetMs: TARGET_P99_MS, withinTarget: latencyMs !== undefined && latencyMs.p99 <= TARGET_P99_MS && lat.length === hosts.length } : {}),
      };
    };
    const bursts: BurstRun[] = [];
    let offset = 0;
    for (const size of burstSizes) {
      if (bursts.length) await sleep(1000);
      bursts.push(await burstOf(burstHosts.slice(offset, offset + size)));
      offset += size;
    }

    // 6. the fence
    const expired = [...naturalHosts, ...burstHosts].filter((h) => watch!.detached.has(h.id));
    const fenceWin = new ProcWindow(all).start();
    const lastDeadline = Math.max(...expired.map((h) => watch!.detached.get(h.id)!.record?.fenceDeadline ?? Date.now()));
    progress(`${label}: waiting for the fence of ${expired.length} detached hosts (last deadline in ${Math.round((lastDeadline - Date.now()) / 1000)} s)`);
    const fenceUntil = performance.now() + Math.max(0, lastDeadline - Date.now()) + 20_000;
    while (expired.some((h) => !watch!.fenced.has(h.id)) && performance.now() < fenceUntil) {
      if (c.exit !== undefined) throw new Error(`${label}: the controller exited (${c.exit})`);
      await sleep(20);
    }
    const fenceRes = fenceWin.stop();
    const late: number[] = [];
    for (const h of expired) {
      const fz = watch.fenced.get(h.id);
      const dl = watch.detached.get(h.id)?.record?.fenceDeadline;
      if (fz && dl !== undefined) late.push(fz.wall - dl);
    }
    const d0 = watch.detached.get(expired[0]?.id ?? '')?.record;
    const fenceLate = pcts(late);
    progress(`${label}: fence: ${late.length}/${expired.length} fenced; lateness after fenceDeadline p50 ${fenceLate?.p50} ms, max ${fenceLate?.max} ms`);

    const sampled = new Set(sample.map((h) => h.id));
    const unexpected = [...watch.detached.keys()].filter((id) => !sampled.has(id));
    await c.stop();
    if (profDir) keepProfiles(profDir, base);
    const run: ScaleRun = {
      n,
      prefix,
      etcdClients: fleet.clientCount,
      register: { ms: Math.round(regMs), perSecond: Math.round(n / (regMs / 1000)), retries, resources: regRes, keepalives: regKa },
      controllerSync: { ms: Math.round(syncMs), resources: syncRes },
      steady: { resources: steadyRes, etcdDisk: steadyEtcdDisk, keepalives: steadyKa, loopDelayMs: steadyLoop },
      natural: {
        hosts: naturalHosts.length,
        detached: natDetached.length,
        ...(natLat ? { latencyMs: natLat } : {}),
        ...(natSamples.some((s) => s.aliveGone !== undefined) ? { aliveGoneMs: pcts(natSamples.filter((s) => s.aliveGone !== undefined).map((s) => s.aliveGone!)) } : {}),
        samplesMs: natSamples,
      },
      bursts,
      fence: {
        hosts: expired.length,
        fenced: late.length,
        ...(fenceLate ? { lateMs: fenceLate } : {}),
        ...(d0?.fenceDeadline !== undefined && d0.detachedAt !== undefined ? { windowMs: d0.fenceDeadline - d0.detachedAt } : {}),
        resources: fenceRes,
      },
      unexpectedDetached: unexpected,
      watchErrors: watch.errors,
      controllerLog: c.logSummary(),
    };
    if (unexpected.length || steadyKa.lostUnexpectedly || bursts.some((b) => b.keepalives.lostUnexpectedly) || run.controllerLog.error) res.keepLog(log, `${base}-controller`);
    return run;
  } catch (err) {
    if (controller) progress(`${label}: failed; controller log kept at ${res.keepLog(controller.log, `${base}-controller`)}`);
    throw err;
  } finally {
    // The stops are idempotent and shared with the bench's cleanup (which, after Ctrl-C, may be running
    // them already): calling them directly, not through onCleanup's run-once wrappers, leaves the
    // cleanup's tasks pending, so the cleanup still awaits them before its leak check.
    loop.disable();
    await controller?.stop();
    await watch?.close();
    await fleet?.close();
    await cluster.stop();
  }
}

// ---- the scenario --------------------------------------------------------------------------------

export async function runControllerScale(ctx: BenchContext): Promise<ScenarioResult> {
  const violations = checkTimings(SIM_TIMINGS);
  if (violations.length) throw new Error(`controller-scale: the simulated hosts' timings are unsafe: ${describeViolations(violations)}`);
  // TETHER_BENCH_CS_N=5000 (comma-separated) overrides the sizes, e.g. to profile one of them.
  const sizes = process.env.TETHER_BENCH_CS_N ? process.env.TETHER_BENCH_CS_N.split(',').map(Number) : ctx.quick ? [200, 1000] : [1000, 5000];
  if (sizes.some((n) => !Number.isInteger(n) || n < 20 || n > 20_000)) throw new Error(`TETHER_BENCH_CS_N wants integers 20..20000, got ${process.env.TETHER_BENCH_CS_N}`);
  const mode = keepaliveMode();
  const steadyMs = ctx.quick ? 5000 : 10_000;
  const runs: ScaleRun[] = [];
  const failures: string[] = [];
  // After Ctrl-C the bench's cleanup runs while this scenario unwinds: start nothing new then.
  let interrupted = false;
  const onSignal = () => void (interrupted = true);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  for (const n of sizes) {
    if (interrupted) break;
    try {
      const r = await runSize(ctx, n, steadyMs, mode);
      runs.push(r);
      const problems = [
        ...(r.unexpectedDetached.length ? [`${r.unexpectedDetached.length} hosts that kept heartbeating were detached (${r.unexpectedDetached.slice(0, 3).join(', ')})`] : []),
        ...r.bursts.filter((b) => b.detached < b.hosts).map((b) => `only ${b.detached}/${b.hosts} revoked hosts were seen detached`),
        ...(r.natural.detached < r.natural.hosts ? [`only ${r.natural.detached}/${r.natural.hosts} naturally expired hosts were seen detached`] : []),
        ...(r.fence.fenced < r.fence.hosts ? [`only ${r.fence.fenced}/${r.fence.hosts} detached hosts were fenced`] : []),
        ...(r.steady.keepalives.lostUnexpectedly + r.bursts.reduce((a, b) => a + b.keepalives.lostUnexpectedly, 0) ? ['heartbeating hosts lost their leases (the simulation could not keep up)'] : []),
        ...(r.watchErrors.length ? [`the bench's watch failed: ${r.watchErrors.join('; ')}`] : []),
      ];
      for (const p of problems) failures.push(`controller-scale N=${n}: ${p}`);
    } catch (err) {
      failures.push(`controller-scale N=${n}: ${(err as Error).message}`);
      progress(`controller-scale N=${n} FAILED: ${(err as Error).message}`);
    }
  }
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  return {
    data: {
      timings: SIM_TIMINGS,
      keepaliveMode: mode,
      burstShare: BURST_SHARE,
      naturalExpiries: NATURAL_EXPIRIES,
      steadyWindowMs: steadyMs,
      target: { n: TARGET_N, p99Ms: TARGET_P99_MS },
      method:
        "latency = the bench's own etcd watch delivers the controller's `detached` record − the revoke request was sent (bench monotonic clock); " +
        'natural expiry from lastAck sent + ttl (etcd restarts the TTL when the leader receives the keepalive, so this overstates by up to the keepalive RTT)',
      runs,
    },
    tables: tables(runs, mode),
    failures,
  };
}

function tables(runs: readonly ScaleRun[], mode: KeepaliveMode): Table[] {
  const ms = (v: number | undefined) => (v === undefined ? '—' : `${Math.round(v)} ms`);
  const p3 = (p: { p50: number; p99: number; max: number } | undefined) => (p ? `${p.p50} / ${p.p99} / ${p.max} ms` : '—');
  const p2 = (p: { p50: number; p99: number } | undefined) => (p ? `${p.p50} / ${p.p99} ms` : '—');
  const u = (r: Usage, name: string) => r.usage[name];
  const etcdNames = (r: Usage) => Object.keys(r.usage).filter((k) => k.startsWith('etcd'));
  const etcdCpu = (r: Usage) => `${Math.round(etcdNames(r).reduce((s, k) => s + r.usage[k]!.cpuPct, 0))}%`;
  const etcdRss = (r: Usage) => etcdNames(r).map((k) => Math.round(r.usage[k]!.rssMiB)).join(' / ') + ' MiB';
  const target = (b: BurstRun) =>
    b.targetMs === undefined ? (b.latencyMs ? `(${b.latencyMs.p99 <= TARGET_P99_MS ? 'met' : 'missed'})` : '—') : b.withinTarget ? 'met' : 'MISSED';
  const rows = runs.flatMap((r) => r.bursts.map((b) => ({ r, b })));
  const last = (r: ScaleRun) => r.bursts[r.bursts.length - 1];
  return [
    {
      title: 'controller scale: lease revoked → controller writes `detached` (p50 / p99 / max)',
      headers: ['N', 'revoked at once', 'revoke → detached', 'target p99 <= 1 s', 'revoke → alive deleted', 'alive deleted → detached', 'controller watch got it', 'controller CPU / waiting for a CPU', 'etcd WAL fsync p99 / max'],
      rows: rows.map(({ r, b }) => [
        String(r.n),
        `${b.detached}/${b.hosts}`,
        p3(b.latencyMs),
        target(b),
        p3(b.aliveGoneMs),
        p3(b.controllerMs),
        p3(b.toControllerWatchMs),
        `${u(b.resources, 'controller')?.cpuMs ?? '—'} / ${u(b.resources, 'controller')?.runqWaitMs ?? '—'} ms in ${b.resources.windowMs} ms`,
        fmtDisk(b.etcdDisk.walFsync),
      ]),
      notes: [
        'revoke = request sent (bench monotonic clock); detached / alive deleted = delivered by the bench\'s own watch on the prefix (a separate',
        'etcd client). Error: one watch delivery plus the bench\'s loop delay (it also drives the keepalives; p99 in the last table).',
        "controller watch got it = the record's detachedAt (the controller's wall clock when its watch callback ran) − revoke sent (wall clock).",
        'controller CPU = its utime+stime from the revokes to the last detached record (10 ms ticks); waiting for a CPU = its JS thread',
        'runnable but not running (/proc/<pid>/schedstat): latency added by CPU contention on this 2-core machine rather than by the controller.',
        "etcd WAL fsync: the worst member's p99 and slowest fsync in the window, as bucket bounds of etcd's own histogram (every commit waits for one).",
        `Bursts: ${SMALL_BURST} hosts (where 5 % is more), then 5 % of N. p99 of 50-250 samples is about the max.`,
        'The target (p99 <= 1 s) is defined at N = 5,000; for other N it is shown in parentheses.',
      ],
    },
    {
      title: 'controller scale: natural expiry and the fence',
      headers: ['N', 'natural: lastAck+ttl → alive deleted', 'lastAck+ttl → detached', 'fenced', 'fence late (after fenceDeadline) p50 / p99 / max'],
      rows: runs.map((r) => [
        String(r.n),
        `${r.natural.samplesMs.map((s) => s.aliveGone ?? '—').join(', ')} ms`,
        `${r.natural.samplesMs.map((s) => s.detached ?? '—').join(', ')} ms`,
        `${r.fence.fenced}/${r.fence.hosts}`,
        p3(r.fence.lateMs),
      ]),
      notes: [
        `Natural: ${NATURAL_EXPIRIES} hosts just stop heartbeating; times from lastAck (send time of the last acknowledged keepalive) + ttl ${TTL} ms`,
        "(overstated by up to that keepalive's RTT). etcd's lessor revokes expired leases every 500 ms, hence 0-500 ms before the alive key goes.",
        'Fence: every detached host (natural and revoked) is fenced at its fenceDeadline = detachedAt + fenceWindow (10 s); late = fenced record seen − deadline.',
      ],
    },
    {
      title: 'controller scale: controller process (tether controller --log-level warn)',
      headers: ['N', 'synced after', 'sync CPU', 'steady CPU', 'steady RSS', 'burst CPU (largest)', 'fence CPU', 'RSS peak'],
      rows: runs.map((r) => [
        String(r.n),
        ms(r.controllerSync.ms),
        ms(u(r.controllerSync.resources, 'controller')?.cpuMs),
        `${u(r.steady.resources, 'controller')?.cpuPct ?? '—'}%`,
        `${u(r.steady.resources, 'controller')?.rssMiB ?? '—'} MiB`,
        last(r) ? `${u(last(r)!.resources, 'controller')?.cpuMs ?? '—'} ms (${u(last(r)!.resources, 'controller')?.cpuPct ?? '—'}%)` : '—',
        `${u(r.fence.resources, 'controller')?.cpuMs ?? '—'} ms`,
        `${u(r.fence.resources, 'controller')?.hwmMiB ?? '—'} MiB`,
      ]),
      notes: [
        'synced after = controller spawned → it published controller/status (Node start-up, elected, listed the N hosts, reconciled them; +<=250 ms debounce).',
        'CPU from /proc/<pid>/stat utime+stime; steady = % of one core over the steady window (no host changes at all);',
        'fence CPU = from the last burst to the last fence (mostly waiting out the 10 s window). RSS = VmRSS, peak = VmHWM (/proc/<pid>/status).',
      ],
    },
    {
      title: 'controller scale: etcd (3 members) and the simulated hosts',
      headers: ['N', 'register', 'etcd CPU register', 'etcd CPU steady', 'etcd RSS steady (m0/m1/m2)', 'bench CPU steady', 'keepalives/s', 'keepalive RTT p50 / p99', 'oldest ack', 'ka errors', 'etcd WAL fsync p99 / max (steady)', 'bench loop delay p99 steady / bursts'],
      rows: runs.map((r) => [
        String(r.n),
        `${(r.register.ms / 1000).toFixed(1)} s (${r.register.perSecond}/s)`,
        etcdCpu(r.register.resources),
        etcdCpu(r.steady.resources),
        etcdRss(r.steady.resources),
        `${u(r.steady.resources, 'bench (simulated hosts)')?.cpuPct ?? '—'}%`,
        String(r.steady.keepalives.perSecond),
        p2(r.steady.keepalives.rttMs),
        ms(Math.max(r.steady.keepalives.maxAckAgeMs, ...r.bursts.map((b) => b.keepalives.maxAckAgeMs))),
        String(r.steady.keepalives.errors + r.bursts.reduce((a, b) => a + b.keepalives.errors, 0)),
        fmtDisk(r.steady.etcdDisk.walFsync),
        `${r.steady.loopDelayMs.p99} / ${r.bursts.map((b) => b.loopDelayMs.p99).join(', ')} ms`,
      ]),
      notes: [
        `Each simulated host: grant (ttl ${TTL / 1000} s) + registration txn as an agent, then a keepalive every ${HB} ms, at most ${KEEPALIVE_CONCURRENCY} in flight, over`,
        mode === 'stream'
          ? `up to ${MAX_CLIENTS} etcd3 clients, one shared LeaseKeepAlive stream per client (TETHER_BENCH_KEEPALIVE=once: a stream per keepalive, as the agent).`
          : `up to ${MAX_CLIENTS} etcd3 clients, a new gRPC stream per keepalive exactly as the agent (EtcdClusterStore.keepalive; TETHER_BENCH_KEEPALIVE=once).`,
        'etcd CPU = sum over members (100 % = one core). oldest ack = largest age of a heartbeating host\'s last acknowledged keepalive',
        '(must stay well below the ttl, or the simulation rather than the controller expires leases).',
      ],
    },
  ];
}
