/**
 * Drives the controller's pure core (`src/domain/controller/step.ts`) by hand, for table tests:
 * inputs in, effects out, no store, no clock, no promises. {@link Driver.leading} brings a core to
 * "elected and synced with this snapshot" through the same inputs the runner would feed it.
 */
import type { ClusterEvent } from '../../src/domain/cluster-event.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { coreConfig, initialState, step, type CoreOptions } from '../../src/domain/controller/step.js';
import type { CallError, ControllerState, Effect, Input, Now, Reply } from '../../src/domain/controller/types.js';
import { DEFAULT_TIMINGS } from '../../src/domain/gc-timing.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import type { VmEntry } from '../../src/domain/cluster-change.js';
import type { HostEntry, HostWatchEvent, VmWatchBatch } from '../../src/ports/controller-store.js';
import { bareSpec } from './host-harness.js';

/** The timings every record here publishes (ttl 6 s, fenceWindow 10 s). */
export const T = DEFAULT_TIMINGS;

/** Wall time is mono + this (one clock, no drift). */
export const WALL0 = 1_700_000_000_000;

/** A store-call effect. */
export type CallEffect = Extract<Effect, { kind: 'call' }>;

/** A host record (attached, epoch 1, default timings). */
export const rec = (hostId: string, over: Partial<HostRecord> = {}): HostRecord => ({
  hostId,
  state: 'attached',
  epoch: 1,
  timings: T,
  hold: false,
  capacity: { vcpu: 4, memoryMb: 1024 },
  labels: {},
  agentVersion: 't',
  updatedAt: 0,
  ...over,
});

/** A host as listed: record at revision `rev`, alive unless `alive: false`. */
export const entry = (hostId: string, over: Partial<HostRecord> = {}, opts: { alive?: boolean; rev?: string } = {}): HostEntry => ({
  hostId,
  record: rec(hostId, over),
  recordRevision: opts.rev ?? '10',
  ...(opts.alive === false ? {} : { alive: { epoch: over.epoch ?? 1, agentVersion: 't', lease: `lease-${hostId}` } }),
});

/** A VM entry on `hostId` at epoch 1. */
export const vm = (name: string, over: Partial<ClusterVmRecord> = {}, revision = '20') => ({
  key: `ns/${name}`,
  record: { uid: `u-${name}`, spec: bareSpec(name, 1, 128), hostId: 'a', hostEpoch: 1, phase: 'running', generation: 1, ...over } as ClusterVmRecord,
  revision,
});

/** A core and its time. Every `input` returns the effects of that one step. */
export class Driver {
  s: ControllerState;
  mono = 0;
  /** Every effect so far. */
  readonly all: Effect[] = [];
  watch = 0;

  constructor(opts: Partial<CoreOptions> = {}) {
    this.s = initialState(coreConfig({ controllerId: 'c1', leaderTtl: 3000, ...opts }));
  }

  get now(): Now {
    return { wall: WALL0 + this.mono, mono: this.mono };
  }

  input(i: Input): Effect[] {
    const r = step(this.s, i, this.now);
    this.s = r.state;
    this.all.push(...r.effects);
    return [...r.effects];
  }

  at(mono: number): this {
    this.mono = mono;
    return this;
  }

  reply(req: number, reply: Reply, raftTerm?: number): Effect[] {
    return this.input({ kind: 'reply', req, reply, ...(raftTerm !== undefined ? { raftTerm } : {}) });
  }

  fail(req: number, error: CallError): Effect[] {
    return this.input({ kind: 'failed', req, error });
  }

  /** Fires timer `key` (its current id). */
  fire(key: string): Effect[] {
    const id = this.s.timers.get(key);
    if (id === undefined) throw new Error(`timer ${key} is not set`);
    return this.input({ kind: 'timer', key, id });
  }

  hostEvent(event: HostWatchEvent): Effect[] {
    return this.input({ kind: 'host-event', watch: this.watch, event, at: this.now });
  }

  /**
   * Elected at mono 0 (first raft term seen then), synced with `hosts` at revision 100, then moved to
   * `mono` (default: two TTLs later, so the first term observation is far from any loss). `contract`:
   * the raw `controller/freeze-contract` the listing reads (default: none published).
   */
  leading(hosts: HostEntry[], mono = 2 * T.ttl + 1000, vms: readonly VmEntry[] = [], contract?: unknown): this {
    this.input({ kind: 'raft-term', term: 5, at: this.now });
    const [camp] = calls(this.input({ kind: 'start' }), 'campaign');
    const fx = this.reply(camp!.req, { op: 'campaign', won: true, ttlMs: 3000 });
    this.reply(calls(fx, 'server-status')[0]!.req, { op: 'server-status', version: '3.4.23', raftTerm: 5 });
    this.mono = mono;
    const synced = this.reply(calls(fx, 'list-hosts')[0]!.req, { op: 'list-hosts', snapshot: { revision: '100', hosts }, ...(contract !== undefined ? { contract } : {}) });
    this.watch = calls(synced, 'watch-hosts')[0]!.req;
    this.lastSync = synced;
    // the VM cache is listed at the same revision; the sweep that follows its sync finds `vms` (nothing to do by default)
    const vmsSynced = this.reply(calls(fx, 'list-vms')[0]!.req, { op: 'list-vms', vms, revision: '100' });
    this.vmWatch = calls(vmsSynced, 'watch-vms')[0]!.req;
    // the sweep that follows the cache's sync runs in a step of its own (a zero-delay timer)
    this.lastSweep = this.s.timers.has('sweep-retry') ? this.fire('sweep-retry') : [];
    return this;
  }

  /** A batch of changes under `vms/` from the VM watch (the cache then holds everything up to `revision`). */
  vmBatch(events: VmWatchBatch['events'], revision?: string): Effect[] {
    const top = revision ?? events.map((e) => (e.kind === 'put' ? e.entry.revision : e.revision)).reduce((a, b) => (BigInt(a) > BigInt(b) ? a : b), '0');
    return this.input({ kind: 'vm-batch', watch: this.vmWatch, batch: { revision: top, events } });
  }

  vmWatch = 0;

  /** Effects of the sync step of {@link leading}, and of its sweep's listing. */
  lastSync: Effect[] = [];
  lastSweep: Effect[] = [];
}

/** The store calls among `fx`, optionally of one op. */
export function calls(fx: readonly Effect[], op?: CallEffect['call']['op']): CallEffect[] {
  return fx.filter((e): e is CallEffect => e.kind === 'call' && (op === undefined || e.call.op === op));
}

/** The events committed by `fx`, by kind. */
export function events(fx: readonly Effect[]): ClusterEvent[] {
  return calls(fx, 'commit').flatMap((c) => (c.call.op === 'commit' ? [...(c.call.change.events ?? [])] : []));
}

/** Kinds of the events committed by `fx`. */
export const eventKinds = (fx: readonly Effect[]): string[] => events(fx).map((e) => e.kind);

/** Timers set by `fx`, as `key@delay`. */
export const timersSet = (fx: readonly Effect[]): string[] => fx.flatMap((e) => (e.kind === 'set-timer' ? [`${e.key}@${e.delayMs}`] : []));

/** Store ops of `fx` in order (commits named by their first event kind). */
export const ops = (fx: readonly Effect[]): string[] =>
  calls(fx).map((c) => (c.call.op === 'commit' ? `commit:${c.call.change.events?.[0]?.kind ?? (c.call.change.vms ? 'vms' : 'hosts')}` : c.call.op));

/** Commit result helpers. */
export const ok = (revision = '200'): Reply => ({ op: 'commit', result: { ok: true, revision } });
/** A commit that lost a race. */
export const conflict: Reply = { op: 'commit', result: { ok: false, reason: 'conflict' } };
/** A non-retryable failure (etcd refuses the txn as too large). */
export const tooLarge: CallError = { code: 'FAILED_PRECONDITION', message: 'txn too large: 9000 bytes', retryable: false };
/** A retryable failure. */
export const unavailable: CallError = { code: 'UNAVAILABLE', message: 'etcd unreachable', retryable: true };
