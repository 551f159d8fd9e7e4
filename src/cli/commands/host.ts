import type { Command } from 'commander';
import { SystemClock } from '../../adapters/clock/system-clock.js';
import { EtcdControllerStore } from '../../adapters/etcd/etcd-controller-store.js';
import { operatorFence, setHostHold } from '../../controller/operator.js';
import type { ClusterEvent } from '../../domain/cluster-event.js';
import { holdsCapacity } from '../../domain/cluster-vm.js';
import { formatDuration } from '../../domain/duration.js';
import { TetherError, messageOf } from '../../domain/errors.js';
import { describeFence, timingProblems } from '../../domain/fence-window.js';
import { describeHold } from '../../domain/hold.js';
import type { HostRecord, HostRecordState } from '../../domain/host-record.js';
import type { ControllerStatus, HostWatchEvent, StoredEvent } from '../../ports/controller-store.js';
import type { KvControllerStore } from '../../adapters/kv/kv-controller-store.js';
import { rangePaged } from '../../adapters/kv/range-paged.js';
import { decodeClusterVm } from '../../domain/codec.js';
import { resolveConfig, type ConfigKey } from '../config-schema.js';
import { addEtcdSecurityOptions, reportEtcdSecurityOnce, resolveEtcdSecurity } from '../etcd-options.js';
import { printJson, printTable } from '../output.js';
import { drainHost, setDraining } from '../host-drain.js';
import { parseDuration } from '../../domain/duration.js';

const CALL_DEADLINE = 5000;

const STORE_SCHEMA: readonly ConfigKey[] = [
  { key: 'etcdEndpoints', type: 'list', default: [], description: 'etcd client URLs, comma-separated (or TETHER_ETCD_ENDPOINTS)' },
  { key: 'etcdPrefix', type: 'string', default: '/tether/', description: 'key prefix in etcd (or TETHER_ETCD_PREFIX)' },
];

export interface StoreFlags {
  etcdEndpoints?: string;
  etcdPrefix?: string;
  json?: boolean;
  /** `--etcd-ca`, `--etcd-cert`, `--etcd-key`, `--etcd-user`, `--etcd-password-file` (see etcd-options.ts). */
  [etcdSecurityFlag: string]: unknown;
}

export function openStore(o: StoreFlags): EtcdControllerStore {
  const v = resolveConfig(STORE_SCHEMA, { etcdEndpoints: o.etcdEndpoints, etcdPrefix: o.etcdPrefix }, process.env);
  const endpoints = v.etcdEndpoints as string[];
  if (endpoints.length === 0) throw new TetherError('INVALID_ARGUMENT', 'no etcd endpoints: pass --etcd-endpoints or set TETHER_ETCD_ENDPOINTS');
  const security = resolveEtcdSecurity(o, process.env);
  reportEtcdSecurityOnce(endpoints, security, (level, m) => {
    if (level === 'warn') process.stderr.write(`warning: ${m}\n`);
  });
  return new EtcdControllerStore({ endpoints, prefix: String(v.etcdPrefix), security });
}

export async function withStore<T>(o: StoreFlags, fn: (s: EtcdControllerStore) => Promise<T>): Promise<T> {
  const store = openStore(o);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

function storeOptions(c: Command): Command {
  return addEtcdSecurityOptions(c.option('--etcd-endpoints <urls>', STORE_SCHEMA[0]!.description).option('--etcd-prefix <prefix>', STORE_SCHEMA[1]!.description));
}

/** One row of `tether host list --json`. */
export interface HostListRow {
  readonly hostId: string;
  readonly state: HostRecordState | 'unregistered';
  readonly epoch: number | null;
  /** The hold an operator requested (`hold`). */
  readonly hold: boolean;
  /** The hold the host acknowledged and applies (`holdSeen`): what the controller honours. */
  readonly holdSeen: boolean;
  /** Both at once, as the HOLD column shows them: `held (ack)`, `held (not acked)`, `release pending ack`, `at detach`, `no`. */
  readonly holdShown: string;
  readonly heldAtDetach: boolean;
  /** Time since the lease was last renewed (granted TTL - remaining TTL; second resolution), null without a lease. */
  readonly leaseAgeMs: number | null;
  readonly leaseRemainingMs: number | null;
  /** The fence deadline the active controller uses (after a failover: its own), else the recorded one. */
  readonly fenceAt: number | null;
  /** Countdown, `due`, `never (...)`, `frozen`, or `-`. */
  readonly fence: string;
  /** VMs placed on the host and not lost. */
  readonly vmCount: number;
  readonly unsafeTimings: string | null;
}

/** Filters of `tether host list`: together they AND. */
export interface HostListFilter {
  /** Only this host (reads its keys and its VM index only). */
  readonly host?: string;
  /** Only hosts in these states. */
  readonly states?: readonly (HostRecordState | 'unregistered')[];
}

/** Host states `--state` accepts. */
export const HOST_STATES: readonly (HostRecordState | 'unregistered')[] = ['attached', 'detached', 'fenced', 'unregistered'];

/** Parses `--state a,b` (repeatable); INVALID_ARGUMENT naming the flag for an unknown state. */
export function parseHostStates(values: readonly string[] | undefined): (HostRecordState | 'unregistered')[] | undefined {
  if (!values || values.length === 0) return undefined;
  return values
    .flatMap((x) => x.split(','))
    .map((x) => x.trim())
    .filter(Boolean)
    .map((v) => {
      if (!(HOST_STATES as readonly string[]).includes(v)) throw new TetherError('INVALID_ARGUMENT', `--state ${JSON.stringify(v)}: not a host state (one of ${HOST_STATES.join(', ')})`);
      return v as HostRecordState | 'unregistered';
    });
}

/** Deadline of a whole (paged) list of `host list`. */
const LIST_DEADLINE = 60_000;
/** Lease TTL reads of `host list` in flight at once. */
const TTL_READS = 16;

/**
 * Builds the host list from the store: records, leases, VMs and the controller's status. Every
 * prefix is read in pages (hosts, then the VMs: `vms/`, or only `hostvms/<host>/` with a host
 * filter); lease TTLs are read {@link TTL_READS} at a time.
 */
export async function hostList(store: KvControllerStore, nowWall: number, filter: HostListFilter = {}): Promise<{ controller: ControllerStatus | null; hosts: HostListRow[] }> {
  const vmPrefix = filter.host !== undefined ? store.keys.hostVms(filter.host) : store.keys.vms();
  const [hosts, vmKvs, status] = await Promise.all([
    filter.host !== undefined ? store.getHost(filter.host, CALL_DEADLINE).then((h) => (h.record || h.alive ? [h] : [])) : store.listHosts(LIST_DEADLINE).then((s) => s.hosts),
    rangePaged(store.kv, { key: vmPrefix, prefix: true }, {}, LIST_DEADLINE),
    store.getStatus(CALL_DEADLINE),
  ]);
  const vmCount = new Map<string, number>();
  for (const kv of vmKvs.kvs) {
    // An index entry (`hostvms/<host>/<key>`) is a byte-identical copy of `vms/<key>`: decoded under that name.
    const key = filter.host !== undefined ? store.keys.parseHostVmKey(kv.key)?.key : store.keys.parseVmKey(kv.key);
    if (key === undefined) continue;
    const d = decodeClusterVm(store.keys.rel(store.keys.vm(key)), kv.value);
    if (d.ok && d.value.hostId !== undefined && holdsCapacity(d.value)) vmCount.set(d.value.hostId, (vmCount.get(d.value.hostId) ?? 0) + 1);
  }
  const picked = [...hosts]
    .filter((h) => !filter.states || filter.states.includes(h.record?.state ?? 'unregistered'))
    .sort((a, b) => (a.hostId < b.hostId ? -1 : 1));
  const ttls = new Map<string, { remainingMs: number; grantedMs: number }>();
  let next = 0;
  const reader = async (): Promise<void> => {
    while (next < picked.length) {
      const h = picked[next++]!;
      if (!h.alive) continue;
      const ttl = await store.leaseTtl(h.alive.lease, CALL_DEADLINE).catch(() => undefined);
      if (ttl) ttls.set(h.hostId, ttl);
    }
  };
  await Promise.all(Array.from({ length: Math.min(TTL_READS, picked.length) }, reader));
  const rows: HostListRow[] = [];
  for (const h of picked) {
    const ttl = ttls.get(h.hostId);
    const r = h.record;
    const cs = status?.hosts.find((x) => x.hostId === h.hostId);
    const fenceAt = cs?.fenceAt ?? (r?.state === 'detached' ? (r.fenceDeadline ?? null) : null);
    let fence = r ? describeFence(r, h.alive !== undefined, nowWall) : '-';
    if (cs?.fenceAt !== undefined) fence = cs.fenceAt > nowWall ? `in ${Math.ceil((cs.fenceAt - nowWall) / 1000)}s` : 'due';
    if (cs?.blocked) fence = cs.blocked === 'mass-disruption freeze' ? `${fence} (frozen)` : `never (${cs.blocked})`;
    rows.push({
      hostId: h.hostId,
      state: r?.state ?? 'unregistered',
      epoch: r?.epoch ?? null,
      hold: r?.hold ?? false,
      holdSeen: r?.holdSeen ?? false,
      holdShown: holdColumn(r),
      heldAtDetach: r?.heldAtDetach ?? false,
      leaseAgeMs: ttl ? Math.max(0, ttl.grantedMs - ttl.remainingMs) : null,
      leaseRemainingMs: ttl ? ttl.remainingMs : null,
      fenceAt,
      fence,
      vmCount: vmCount.get(h.hostId) ?? 0,
      unsafeTimings: r ? (timingProblems(r) ?? null) : null,
    });
  }
  return { controller: status ?? null, hosts: rows };
}

/**
 * The HOLD column: the requested hold and whether the host acknowledged it (only an acknowledged hold
 * is honoured), or `at detach` for a detached host that applied a hold when it detached.
 */
export function holdColumn(r: Pick<HostRecord, 'hold' | 'holdSeen' | 'heldAtDetach' | 'state'> | undefined): string {
  if (!r) return 'no';
  const hold = r.hold;
  const seen = r.holdSeen ?? false;
  if (hold && seen) return 'held (ack)';
  if (hold) return 'held (not acked)';
  if (seen) return 'release pending ack';
  if (r.heldAtDetach && r.state === 'detached') return 'at detach';
  return describeHold(hold, seen);
}

function printHostList(l: { controller: ControllerStatus | null; hosts: HostListRow[] }, now: number): void {
  const c = l.controller;
  if (!c) console.log('controller: none active (no controller/status in etcd): nothing will be fenced until one runs');
  else {
    console.log(`controller: ${c.controllerId}, active for ${formatDuration(Math.max(0, now - c.leaderSince))}`);
    if (c.freeze.mode !== 'normal') console.log(`FREEZE: ${c.freeze.reason ?? c.freeze.mode}`);
    for (const f of c.failures ?? []) {
      console.log(`CONTROLLER ERROR (not retried): ${f.action}${f.hostId ? ` of ${f.hostId}` : ''} at ${new Date(f.at).toISOString()}: ${f.code}: ${f.message}`);
    }
  }
  printTable(
    ['HOST', 'STATE', 'EPOCH', 'HOLD', 'LEASE', 'FENCE', 'VMS'],
    l.hosts.map((h) => [
      h.hostId,
      h.state,
      h.epoch ?? '-',
      h.holdShown,
      h.leaseAgeMs === null ? 'none' : `renewed ${formatDuration(h.leaseAgeMs)} ago`,
      h.fence,
      h.vmCount,
    ]),
  );
  for (const h of l.hosts) if (h.unsafeTimings) console.log(`warning: ${h.hostId} publishes unsafe timings (never fenced automatically): ${h.unsafeTimings}`);
}

function eventLine(e: ClusterEvent): string {
  const who = ('vm' in e ? e.vm : 'hostId' in e ? e.hostId : '') ?? '';
  return `${new Date(e.at).toISOString()}  ${e.kind.padEnd(24)} ${who.padEnd(16)} ${e.detail}`;
}

/**
 * Prints the newest `limit` events; with `follow`, keeps printing new ones (re-listing after a watch
 * error, never printing one twice) until `signal` aborts. `print` receives one line (text or JSON).
 */
export async function showEvents(
  store: EtcdControllerStore,
  o: { follow?: boolean; json?: boolean; limit: number },
  print: (line: string) => void = (l) => console.log(l),
  signal?: AbortSignal,
): Promise<void> {
  let last = '';
  const show = (s: StoredEvent) => {
    if (s.key <= last) return;
    last = s.key;
    print(o.json ? JSON.stringify(s.event) : eventLine(s.event));
  };
  let listed = await store.listEvents(o.limit, CALL_DEADLINE);
  if (o.json && !o.follow) {
    print(JSON.stringify(listed.events.map((s) => s.event), null, 2));
    return;
  }
  for (const s of listed.events) show(s);
  if (!o.follow || signal?.aborted) return;
  const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
  while (!signal?.aborted) {
    let failed: Error | undefined;
    let wake: () => void = () => undefined;
    const ended = new Promise<void>((resolve) => (wake = resolve));
    const onAbort = () => wake();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const sub = await store.watchEvents(String(BigInt(listed.revision) + 1n), {
        onEvent: show,
        onError: (err) => {
          failed = err;
          wake();
        },
      }, CALL_DEADLINE);
      await ended;
      await sub.close();
    } catch (err) {
      failed = err instanceof Error ? err : new Error(messageOf(err));
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    if (signal?.aborted) return;
    process.stderr.write(`events watch interrupted (${messageOf(failed)}); listing again\n`);
    await pause(1000);
    try {
      listed = await store.listEvents(Math.max(o.limit, 100), CALL_DEADLINE);
      for (const s of listed.events) show(s);
    } catch (err) {
      process.stderr.write(`listing events failed (${messageOf(err)}); retrying\n`);
    }
  }
}

/** The store's current revision (a linearizable read of one small key): every later read is at or after it. */
async function revisionNow(store: KvControllerStore): Promise<number> {
  return (await store.kv.range({ key: store.keys.leader(), keysOnly: true }, CALL_DEADLINE)).header.revision;
}

/** The line `host list --watch` prints for one host change (text), or undefined when the filter hides it. */
export function hostChangeLine(e: HostWatchEvent, filter: HostListFilter): string | undefined {
  if (filter.host !== undefined && e.hostId !== filter.host) return undefined;
  if (e.kind === 'record' && filter.states && !filter.states.includes(e.record.state)) return undefined;
  const at = new Date().toISOString();
  switch (e.kind) {
    case 'record':
      return `${at}  ${e.hostId.padEnd(16)} ${e.record.state.padEnd(9)} epoch ${e.record.epoch}  hold ${holdColumn(e.record)}${e.record.draining ? '  draining' : ''}`;
    case 'record-deleted':
      return `${at}  ${e.hostId.padEnd(16)} record deleted`;
    case 'alive':
      return `${at}  ${e.hostId.padEnd(16)} lease ${e.alive.lease} (agent ${e.alive.agentVersion || '?'}, epoch ${e.alive.epoch})`;
    case 'alive-deleted':
      return `${at}  ${e.hostId.padEnd(16)} lease gone (expired or revoked)`;
  }
}

/**
 * `host list --watch`: watches `hosts/` from the list's revision + 1 and prints a line (text) or a
 * JSON object per change; after a watch error it lists again (paged) and watches from there.
 */
async function followHosts(store: KvControllerStore, filter: HostListFilter, json: boolean, fromRevision: number): Promise<void> {
  let from = String(fromRevision);
  for (;;) {
    const failed = await new Promise<Error>((resolve) => {
      store
        .watchHosts(
          String(BigInt(from) + 1n),
          {
            onEvent: (e) => {
              const line = hostChangeLine(e, filter);
              if (line === undefined) return;
              console.log(json ? JSON.stringify({ type: e.kind, ...e }) : line);
            },
            onError: resolve,
          },
          CALL_DEADLINE,
        )
        .catch(resolve);
    });
    process.stderr.write(`host watch interrupted (${messageOf(failed)}); listing again\n`);
    await new Promise((r) => setTimeout(r, 1000));
    try {
      from = String(await revisionNow(store));
      const now = Date.now();
      const l = await hostList(store, now, filter);
      if (json) for (const h of l.hosts) console.log(JSON.stringify({ type: 'host', ...h }));
      else printHostList(l, now);
    } catch (err) {
      process.stderr.write(`listing hosts failed (${messageOf(err)}); retrying\n`);
    }
  }
}

/**
 * Registers `tether host list|hold|release|fence` and `tether events` (cluster-side, straight to etcd).
 * `fence` is refused without `--confirm`: it tells the cluster the host's VMs are gone.
 */
export function registerHostCommands(program: Command): void {
  const host = program.command('host').description('cluster hosts as the controller sees them (via etcd)');

  storeOptions(host.command('list').description('state, epoch, hold, lease age, fence countdown and VM count of every host (read in pages)'))
    .option('--json', 'machine-readable output')
    .option('--host <id>', 'only this host')
    .option('--state <state>', `only hosts in these states (${HOST_STATES.join(', ')}; comma-separated or repeated)`, (v: string, prev: string[] = []) => [...prev, v])
    .option('--watch', 'after the list, print a line per host change (record, lease) until interrupted (JSON: one object per line)')
    .action(async (o: StoreFlags & { host?: string; state?: string[]; watch?: boolean }) => {
      const states = parseHostStates(o.state);
      const filter: HostListFilter = { ...(o.host !== undefined ? { host: o.host } : {}), ...(states ? { states } : {}) };
      await withStore(o, async (store) => {
        // With --watch: a revision at or before every read of the list, so the watch misses nothing.
        const from = o.watch ? await revisionNow(store) : 0;
        const now = Date.now();
        const l = await hostList(store, now, filter);
        if (o.json && !o.watch) printJson(l);
        else if (o.json) for (const h of l.hosts) console.log(JSON.stringify({ type: 'host', ...h }));
        else printHostList(l, now);
        if (o.watch) await followHosts(store, filter, Boolean(o.json), from);
      });
    });

  for (const [name, hold] of [
    ['hold', true],
    ['release', false],
  ] as const) {
    storeOptions(
      host
        .command(`${name} <id>`)
        .description(
          hold
            ? 'operator hold: once the host acknowledges it, its watchdog is suspended and the controller neither fences it nor reschedules its VMs'
            : 'release the hold (effective once the host acknowledges it; a host held when it detached stays held for that detachment)',
        ),
    )
      .option('--no-wait', 'do not wait for the host to acknowledge')
      .option('--timeout <duration>', 'how long to wait for the acknowledgement (default: 10 heartbeats of the host, at least 10s)')
      .option('--json', 'machine-readable output')
      .action(async (id: string, o: StoreFlags & { wait: boolean; timeout?: string }) => {
        await withStore(o, async (store) => {
          const res = await setHostHold(store, new SystemClock(), id, hold, CALL_DEADLINE, {
            wait: o.wait,
            ...(o.timeout !== undefined ? { timeoutMs: parseDuration(o.timeout) } : {}),
            progress: (l) => process.stderr.write(`  ${l}\n`),
          });
          if (o.json) printJson(res);
          else {
            const ack = res.acknowledged ? 'acknowledged by the host' : o.wait ? 'NOT acknowledged by the host' : 'not waited for the acknowledgement';
            console.log(`host ${id}: ${hold ? 'hold requested' : 'hold released'}, ${ack} (hold: ${res.shown}; state ${res.record.state}, epoch ${res.record.epoch})`);
            for (const n of res.notes) console.log(`note: ${n}`);
          }
        });
      });
  }

  storeOptions(host.command('drain <id>').description('stop the host\'s VMs gracefully and place them on other hosts; the host takes no new VMs until undrain'))
    .option('--timeout <duration>', 'how long to wait for the host to confirm the stops', '2m')
    .option('--json', 'machine-readable output')
    .action(async (id: string, o: StoreFlags & { timeout: string }) => {
      await withStore(o, async (store) => {
        const res = await drainHost(store, id, parseDuration(o.timeout), (l) => process.stderr.write(`  ${l}\n`));
        if (o.json) printJson(res);
        else console.log(`host ${id} drained: ${res.moved.length} VM(s) moved; it takes no new VMs until 'tether host undrain ${id}'`);
      });
    });

  storeOptions(host.command('undrain <id>').description('let a drained host take new VMs again'))
    .action(async (id: string, o: StoreFlags) => {
      await withStore(o, (store) => setDraining(store, id, false));
      console.log(`host ${id} takes new VMs again`);
    });

  storeOptions(host.command('fence <id>').description('mark a host fenced and its VMs lost, for an operator who KNOWS the host is powered off'))
    .option('--confirm', 'I know this host is powered off (its VMs cannot be running)')
    .option('--json', 'machine-readable output')
    .action(async (id: string, o: StoreFlags & { confirm?: boolean }) => {
      if (!o.confirm) {
        throw new TetherError(
          'INVALID_ARGUMENT',
          `refusing to fence host ${id} without --confirm: fencing tells the cluster that its VMs are gone and reschedules them elsewhere. Only confirm when you know the host is powered off; if it is still running, its VMs would run twice.`,
        );
      }
      await withStore(o, async (store) => {
        const res = await operatorFence(store, new SystemClock(), id, CALL_DEADLINE);
        if (o.json) printJson(res);
        else if (res.alreadyFenced) console.log(`host ${id} was already fenced (epoch ${res.record.epoch})${res.lostVms.length > 0 ? `; ${res.lostVms.length} VM(s) an earlier fence left were marked lost` : '; nothing changed'}`);
        else console.log(`host ${id} fenced at epoch ${res.record.epoch}; ${res.lostVms.length} VM(s) marked lost${res.lostVms.length ? `: ${res.lostVms.slice(0, 20).join(', ')}${res.lostVms.length > 20 ? ', ...' : ''}` : ''}`);
        if (!o.json && res.pendingVms.length > 0) console.log(`note: ${res.pendingVms.length} VM(s) not marked lost yet (they kept changing or are too large for one txn); the active controller finishes them: ${res.pendingVms.slice(0, 20).join(', ')}`);
      });
    });

  storeOptions(program.command('events').description('cluster events (detach, fence, freeze, reschedule, holds), oldest first'))
    .option('--follow', 'keep printing new events until interrupted')
    .option('--json', 'JSON: an array, or one object per line with --follow')
    .option('--limit <n>', 'how many recent events to show first', '50')
    .action(async (o: StoreFlags & { follow?: boolean; limit: string }) => {
      const limit = Number(o.limit);
      if (!Number.isInteger(limit) || limit < 1) throw new TetherError('INVALID_ARGUMENT', `invalid --limit "${o.limit}": a positive integer`);
      const stop = new AbortController();
      const abort = () => stop.abort();
      process.once('SIGINT', abort);
      process.once('SIGTERM', abort);
      try {
        await withStore(o, (store) => showEvents(store, { follow: o.follow, json: o.json, limit }, undefined, stop.signal));
      } finally {
        process.off('SIGINT', abort);
        process.off('SIGTERM', abort);
      }
    });
}
