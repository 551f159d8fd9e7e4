/**
 * Worker thread of the `fleet` bench: runs a slice of the simulated hosts ({@link FleetHost}), each
 * the production agent-side cluster code on a fake substrate, over a few shared etcd clients.
 *
 * Protocol (parent → worker, each answered once with the same `seq`):
 *  - `start`: start every host, `startRate` per second (registration is the production registrar);
 *  - `stats` `{reset}`: phase counts, local VMs, oldest acknowledgement, loop delay since the last
 *    reset (a new window starts unless `reset` is false);
 *  - `crash` `{ids}`: those hosts die (no more keepalives, nothing revoked); answers each one's
 *    last acknowledged keepalive's send time (wall ms, from the agent's own status);
 *  - `stop`: every host stops, the clients close; the worker then exits.
 * Unexpected transitions (a host not crashed by the bench leaving `attached`) are reported in `stats`.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import type { EtcdSecurity } from '../../src/adapters/etcd/etcd-client.js';
import { EtcdKv } from '../../src/adapters/etcd/etcd-kv.js';
import { raiseOwnPriority } from '../../src/adapters/process-priority.js';
import type { GcTimings } from '../../src/domain/gc-timing.js';
import { FleetHost, LogTally } from './fleet-host.js';

/** What the parent hands each worker. */
export interface FleetWorkerData {
  readonly index: number;
  readonly endpoints: readonly string[];
  readonly security: EtcdSecurity;
  readonly prefix: string;
  readonly hostIds: readonly string[];
  readonly timings: GcTimings;
  readonly capacity: { readonly vcpu: number; readonly memoryMb: number };
  /** Hosts sharing one etcd client. */
  readonly hostsPerClient: number;
  /** Hosts started per second by `start`. */
  readonly startRate: number;
}

/** Answer to `stats`. */
export interface FleetWorkerStats {
  readonly index: number;
  readonly hosts: number;
  readonly phases: Record<string, number>;
  readonly crashed: number;
  readonly localVms: number;
  /** Largest age of the last acknowledged keepalive among hosts not crashed, ms. */
  readonly oldestAckMs: number;
  /** Event-loop delay of this worker since the previous `stats`, ms. */
  readonly loop: { readonly p50: number; readonly p99: number; readonly max: number };
  /** Transitions of hosts the bench did not crash, out of `attached` (the simulation could not keep up, or a bug). */
  readonly unexpected: readonly string[];
  readonly logs: { readonly warn: number; readonly error: number; readonly samples: readonly string[]; readonly debug: Record<string, number> };
  /** Sums of the hosts' VM sync feed counters (lists, watches, watch errors, guard reads), and hosts with no local VM. */
  readonly feed: Record<string, number>;
  readonly rssMiB: number;
  /** This thread runs at the agent's heartbeat-path priority (nice -10). */
  readonly raised: boolean;
}

type Request = { seq: number } & ({ op: 'start' } | { op: 'stats'; reset?: boolean } | { op: 'crash'; ids: string[] } | { op: 'stop' });

const d = workerData as FleetWorkerData;
// The agent runs its heartbeat path at nice -10 (src/cli/commands/agent.ts); so do the simulated
// hosts (Linux: per thread). Best effort: not permitted unless root.
const raised = raiseOwnPriority();
const port = parentPort!;
const clock = new SystemClock();
const logs = new LogTally();
const loop = monitorEventLoopDelay({ resolution: 10 });
loop.enable();
const kvs: EtcdKv[] = [];
const hosts = new Map<string, FleetHost>();
const unexpected: string[] = [];
const crashed = new Set<string>();

d.hostIds.forEach((hostId, i) => {
  if (i % d.hostsPerClient === 0) kvs.push(new EtcdKv({ endpoints: d.endpoints, security: d.security }));
  const h = new FleetHost({
    hostId,
    prefix: d.prefix,
    timings: d.timings,
    capacity: d.capacity,
    clock,
    kv: kvs[kvs.length - 1]!,
    logs,
    onTransition: (from, to, reason) => {
      if (!crashed.has(hostId) && from === 'attached' && unexpected.length < 50) unexpected.push(`${hostId}: ${from} -> ${to} (${reason})`);
    },
  });
  hosts.set(hostId, h);
});

const ms = (ns: number) => Math.round(ns / 1e4) / 100;

function stats(reset: boolean): FleetWorkerStats {
  const phases: Record<string, number> = {};
  let localVms = 0;
  let oldestAckMs = 0;
  const feed: Record<string, number> = { hostsWithoutVms: 0 };
  for (const [id, h] of hosts) {
    const n = h.inventory.listVms().length;
    localVms += n;
    if (n === 0 && !crashed.has(id)) feed.hostsWithoutVms!++;
    const fs = (h.sync as unknown as { feedStats?: () => Record<string, number> }).feedStats?.() ?? {};
    for (const [k, v] of Object.entries(fs)) feed[k] = (feed[k] ?? 0) + v;
    if (crashed.has(id)) continue;
    const s = h.gc.status();
    phases[s.phase] = (phases[s.phase] ?? 0) + 1;
    if (s.lastAckAgeMs !== undefined && s.phase === 'attached') oldestAckMs = Math.max(oldestAckMs, s.lastAckAgeMs);
  }
  const out: FleetWorkerStats = {
    index: d.index,
    hosts: hosts.size,
    phases,
    crashed: crashed.size,
    localVms,
    oldestAckMs: Math.round(oldestAckMs),
    loop: { p50: ms(loop.percentile(50)), p99: ms(loop.percentile(99)), max: ms(loop.max) },
    unexpected: [...unexpected],
    logs: { warn: logs.warn, error: logs.error, samples: [...logs.samples], debug: Object.fromEntries(logs.debug) },
    feed,
    rssMiB: Math.round(process.memoryUsage().rss / 2 ** 20),
    raised,
  };
  if (reset) loop.reset();
  return out;
}

async function start(): Promise<void> {
  const list = [...hosts.values()];
  const t0 = performance.now();
  for (let i = 0; i < list.length; i++) {
    const due = t0 + (i * 1000) / d.startRate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    list[i]!.start();
  }
}

port.on('message', (m: Request) => {
  const reply = (body: unknown) => port.postMessage({ seq: m.seq, body });
  switch (m.op) {
    case 'start':
      void start().then(() => reply({ started: hosts.size }));
      return;
    case 'stats':
      reply(stats(m.reset !== false));
      return;
    case 'crash': {
      const wallNow = Date.now();
      const out: Record<string, { lastAckWall?: number; phase: string; epoch: number }> = {};
      for (const id of m.ids) {
        const h = hosts.get(id);
        if (!h) continue;
        crashed.add(id);
        const s = h.gc.status();
        h.crash();
        out[id] = { ...(s.lastAckAgeMs !== undefined ? { lastAckWall: wallNow - s.lastAckAgeMs } : {}), phase: s.phase, epoch: s.epoch };
      }
      reply(out);
      return;
    }
    case 'stop':
      for (const [id, h] of hosts) {
        crashed.add(id);
        h.crash();
      }
      void Promise.all(kvs.map((k) => k.close().catch(() => undefined))).then(() => {
        reply({ stopped: true });
        loop.disable();
        setTimeout(() => process.exit(0), 50).unref();
      });
      return;
  }
});
