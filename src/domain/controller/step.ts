/**
 * The controller's transition function: `step(state, input, now) -> { state, effects }`. Pure and
 * deterministic: no awaits, no clock, no randomness; the same inputs at the same times give the same
 * effects. Each input is routed to the handler of its concern (leadership, host view, fence path,
 * freeze, sweep, record GC, status); see the module docs of those files for the rules.
 */
import { DEFAULT_FREEZE_SHARE, NOT_FROZEN } from '../mass-freeze.js';
import { DEFAULT_HOST_RECORD_TTL } from '../host-record-gc.js';
import { DEFAULT_TXN_LIMITS } from '../cluster-change.js';
import { TetherError } from '../errors.js';
import { CapacityIndex } from '../placement-index.js';
import { log } from './effects.js';
import { contractListed, contractWritten, publishContract } from './contract.js';
import { barrierDue, barrierWritten, detachOutcome, drainFenceQueue, fenceCommitted, fenceDue, fenceRead, hostsProgress, markLostBatchDone, resumeFences } from './fence.js';
import { evaluateFreeze } from './freeze.js';
import { hostEvent, hostsListed, reconcile, reconcileChunk, resync, watchBroke, watchFailed } from './host-view.js';
import { campaign, campaignOutcome, keepaliveDue, keepaliveOutcome, leaderExpiryTimer, serverStatusOutcome } from './leadership.js';
import { stepDown } from './leadership.js';
import { observeTerm } from './raft-term.js';
import { gcTick, gcWritten, pruned } from './record-gc.js';
import { publishStatus, scheduleStatus, statusPublished } from './status.js';
import { requestSweep, sweepChunk, sweepUids, sweepWritten } from './sweep.js';
import { vmBatch, vmsListed, vmsLoad, vmWatchBroke, vmWatchFailed, resyncVms } from './vm-view.js';
import { writeOutcome } from './writes.js';
import type { CallError, ControllerState, CoreConfig, Ctx, Effect, Input, Now, Pending, Reply } from './types.js';

/** Options of {@link coreConfig}: the controller's options, durations in ms. */
export interface CoreOptions {
  /** This replica's name in `controller/leader` and in logs. */
  readonly controllerId: string;
  /** Share of detached hosts above which nothing is fenced (default 0.55). */
  readonly freezeShare?: number;
  /** Fenced and absent this long: the record is retired (default 24 h). */
  readonly hostRecordTtl?: number;
  /** Retired and absent this long: the record is removed (default 60 s). */
  readonly retiredRemoveAfter?: number;
  /** Lengthens (never shortens) every host's published fence window. */
  readonly fenceWindowOverride?: number;
  /** Leader lease TTL, whole seconds (default 5 s). Keepalives every third of it. */
  readonly leaderTtl?: number;
  /** How often a standby tries to take over (default min(1 s, leaderTtl / 3)). */
  readonly campaignInterval?: number;
  /** Deadline of each store call (default 2 s). */
  readonly callDeadline?: number;
  /** Events kept (default 1000). */
  readonly eventRetention?: number;
  /** Period of host-record GC, event pruning and the retry of pending VMs (default 60 s). */
  readonly gcInterval?: number;
  /** Delay before retrying a failed or conflicting write (default 1 s); doubles per consecutive failure of a host. */
  readonly retryDelay?: number;
  /** Longest delay between retries of one host (default 30 s). */
  readonly maxRetryDelay?: number;
  /** The store's txn limits (default etcd 3.4's). */
  readonly txnLimits?: CoreConfig['txnLimits'];
  /** Fences in flight at once (default 32). */
  readonly maxFencesInFlight?: number;
  /** Lost-marking runs in flight at once (default 32). */
  readonly maxMarkingsInFlight?: number;
  /** Hosts fenced per second at most (default: no limit). */
  readonly evictionRate?: number;
  /** Hosts fenced per second while more than `slowEvictionShare` of at least `slowEvictionMinHosts` hosts are detached (default: no limit). */
  readonly slowEvictionRate?: number;
  /** Detached share above which the slower rate applies (default 0.3; the freeze stops everything above `freezeShare`). */
  readonly slowEvictionShare?: number;
  /** Smallest pool of hosts the slower rate applies to (default 50: a small cluster is not slowed down). */
  readonly slowEvictionMinHosts?: number;
  /** Fences the rate limit lets through at once (default 1). */
  readonly evictionBurst?: number;
  /** Items one step handles before yielding (default 500). */
  readonly chunkSize?: number;
  /** The freeze's resume delay, when longer than the pool's longest fence window (default: that window). */
  readonly resumeDelay?: number;
  /** A change of the published contract's pool size alone is written at most this often (default 5 s). */
  readonly contractPoolInterval?: number;
}

/** Default of {@link CoreOptions.maxFencesInFlight}. */
export const DEFAULT_MAX_FENCES_IN_FLIGHT = 32;

function positive(field: string, v: number | undefined, dflt: number, integer = false): number {
  const x = v ?? dflt;
  if (!(x > 0) || Number.isNaN(x) || (integer && x !== Infinity && !Number.isInteger(x))) {
    throw new TetherError('INVALID_ARGUMENT', `invalid controller ${field} ${String(v)}: must be ${integer ? 'a whole number' : 'a number'} > 0`, { details: { field } });
  }
  return x;
}

/** The configuration with its defaults (leader TTL rounded to whole seconds, at least 1 s). */
export function coreConfig(o: CoreOptions): CoreConfig {
  const leaderTtl = Math.max(1000, Math.round((o.leaderTtl ?? 5000) / 1000) * 1000);
  return {
    controllerId: o.controllerId,
    freezeShare: o.freezeShare ?? DEFAULT_FREEZE_SHARE,
    hostRecordTtl: o.hostRecordTtl ?? DEFAULT_HOST_RECORD_TTL,
    retiredRemoveAfter: o.retiredRemoveAfter ?? 60_000,
    ...(o.fenceWindowOverride !== undefined ? { fenceWindowOverride: o.fenceWindowOverride } : {}),
    leaderTtl,
    campaignInterval: o.campaignInterval ?? Math.min(1000, Math.floor(leaderTtl / 3)),
    callDeadline: o.callDeadline ?? 2000,
    eventRetention: o.eventRetention ?? 1000,
    gcInterval: o.gcInterval ?? 60_000,
    retryDelay: o.retryDelay ?? 1000,
    maxRetryDelay: o.maxRetryDelay ?? 30_000,
    txnLimits: o.txnLimits ?? DEFAULT_TXN_LIMITS,
    maxFencesInFlight: positive('maxFencesInFlight', o.maxFencesInFlight, DEFAULT_MAX_FENCES_IN_FLIGHT, true),
    maxMarkingsInFlight: positive('maxMarkingsInFlight', o.maxMarkingsInFlight, 32, true),
    evictionRate: positive('evictionRate', o.evictionRate, Infinity),
    slowEvictionRate: positive('slowEvictionRate', o.slowEvictionRate, Infinity),
    slowEvictionShare: positive('slowEvictionShare', o.slowEvictionShare, 0.3),
    slowEvictionMinHosts: positive('slowEvictionMinHosts', o.slowEvictionMinHosts, 50, true),
    evictionBurst: positive('evictionBurst', o.evictionBurst, 1, true),
    chunkSize: positive('chunkSize', o.chunkSize, 500, true),
    ...(o.resumeDelay !== undefined ? { resumeDelay: positive('resumeDelay', o.resumeDelay, 0) } : {}),
    contractPoolInterval: positive('contractPoolInterval', o.contractPoolInterval, 5000),
  };
}

/** A standby replica that has not campaigned yet. */
export function initialState(cfg: CoreConfig): ControllerState {
  return {
    cfg,
    seq: 0,
    pending: new Map(),
    timers: new Map(),
    term: 0,
    leader: false,
    leaderTtlMs: cfg.leaderTtl,
    leaderSinceWall: 0,
    lastAckMono: 0,
    synced: false,
    hosts: new Map(),
    vmsSynced: false,
    vms: new Map(),
    vmsByHost: new Map(),
    unplaced: new Set(),
    staleDirty: new Set(),
    vmTombs: new Map(),
    vmsRev: 0n,
    capacity: new CapacityIndex(),
    capSeen: new Map(),
    reserved: new Map(),
    fencesInFlight: 0,
    fenceQueue: new Set(),
    markingsInFlight: 0,
    markQueue: new Set(),
    evictTokens: cfg.evictionBurst,
    evictAtMono: 0,
    freeze: NOT_FROZEN,
    detachedCount: { detached: 0, total: 0 },
    freezeDirty: false,
    freezeRose: false,
    freezeRev: 0n,
    contractKnown: false,
    contractWriting: false,
    hostsRev: 0n,
    fenceParked: new Map(),
    barrierInFlight: false,
    sweepQueued: false,
    detachesInFlight: 0,
    detachQueue: new Set(),
    lastStatus: '',
    failures: [],
    reported: new Set(),
  };
}

/** One transition (see the module doc). `state` is taken over: keep only the returned one. */
export function step(state: ControllerState, input: Input, now: Now): { readonly state: ControllerState; readonly effects: readonly Effect[] } {
  const c: Ctx = { s: state, now, fx: [] };
  if (input.raftTerm !== undefined) state.raftTermHint = input.raftTerm;
  const publishing = input.kind === 'timer' && input.key === 'status' && state.timers.get('status') === input.id;
  dispatch(c, input);
  if (!publishing) scheduleStatus(c);
  return { state, effects: c.fx };
}

function dispatch(c: Ctx, i: Input): void {
  const s = c.s;
  switch (i.kind) {
    case 'start':
      return campaign(c);
    case 'timer': {
      if (s.timers.get(i.key) !== i.id) return; // cleared or re-armed since
      s.timers.delete(i.key);
      return timerFired(c, i.key);
    }
    case 'raft-term':
      return observeTerm(c, i.term, i.at.mono);
    case 'host-event':
      return hostEvent(c, i.watch, i.event, i.at);
    case 'vm-batch':
      return vmBatch(c, i.watch, i.batch);
    case 'hosts-progress':
      return hostsProgress(c, i.watch, i.revision);
    case 'watch-error':
      if (vmWatchBroke(c, i.watch, i.message)) return;
      return watchBroke(c, i.watch, i.message);
    case 'reply':
    case 'failed': {
      const p = s.pending.get(i.req);
      if (!p) return; // not awaited (any more)
      s.pending.delete(i.req);
      return outcome(c, p, i.kind === 'reply' ? { reply: i.reply } : { error: i.error }, i.raftTerm);
    }
  }
}

function timerFired(c: Ctx, key: string): void {
  switch (key) {
    case 'campaign':
      return campaign(c);
    case 'keepalive':
      return keepaliveDue(c);
    case 'leader-expiry':
      return leaderExpiryTimer(c);
    case 'gc':
      return gcTick(c);
    case 'resync':
      return resync(c);
    case 'hosts-reconcile':
      return reconcileChunk(c);
    case 'vms-resync':
      return resyncVms(c);
    case 'vms-load':
      return vmsLoad(c, resumeFences);
    case 'evict':
      return drainFenceQueue(c);
    case 'sweep-chunk':
      return sweepChunk(c);
    case 'sweep-retry':
      return requestSweep(c);
    case 'status':
      return publishStatus(c);
    case 'freeze-check':
    case 'freeze-resume':
      return evaluateFreeze(c);
    case 'contract':
      return publishContract(c);
    case 'hosts-barrier':
      return barrierDue(c);
  }
  const sep = key.indexOf(':');
  const t = sep > 0 ? c.s.hosts.get(key.slice(sep + 1)) : undefined;
  if (!t) return;
  if (key.startsWith('fence:')) return fenceDue(c, t);
  if (key.startsWith('retry:')) return reconcile(c, t);
}

type Outcome = { readonly reply: Reply } | { readonly error: CallError };

/** Narrows a reply to the op the request was for (a mismatch is treated as a failure). */
function as<O extends Reply['op']>(o: Outcome, op: O): Extract<Reply, { op: O }> | { readonly error: CallError } {
  if ('error' in o) return o;
  if (o.reply.op === op) return o.reply as Extract<Reply, { op: O }>;
  return { error: { code: 'INTERNAL', message: `expected a ${op} reply, got ${o.reply.op}`, retryable: false } };
}

function outcome(c: Ctx, p: Pending, o: Outcome, raftTerm: number | undefined): void {
  switch (p.for) {
    case 'campaign':
      return campaignOutcome(c, p.startedMono, as(o, 'campaign'));
    case 'keepalive':
      return keepaliveOutcome(c, p.sentMono, as(o, 'keep-leadership'));
    case 'server-status':
      return serverStatusOutcome(c, as(o, 'server-status'));
    case 'list-hosts': {
      const r = as(o, 'list-hosts');
      if (!('error' in r)) contractListed(c, r.contract);
      return hostsListed(c, 'error' in r ? r : { snapshot: r.snapshot });
    }
    case 'put-contract':
      return contractWritten(c, p.contract, 'error' in o ? o.error : undefined);
    case 'sync-hosts':
      return barrierWritten(c, as(o, 'sync-hosts'));
    case 'watch':
      if ('error' in o) return watchFailed(c, o.error);
      return;
    case 'event':
      if ('error' in o) log(c, 'warn', { err: o.error.message, event: p.event }, 'writing an event failed');
      return;
    case 'status':
      return statusPublished(c, p.sig, 'error' in o ? o.error : undefined);
    case 'prune':
      return pruned(c, as(o, 'prune-events'));
    case 'detach':
      return detachOutcome(c, p, as(o, 'commit'));
    case 'fence-read':
      return fenceRead(c, p, raftTerm, as(o, 'get-host'));
    case 'list-vms': {
      const r = as(o, 'list-vms');
      return vmsListed(c, 'error' in r ? r : { vms: r.vms, revision: r.revision }, resumeFences);
    }
    case 'watch-vms':
      if ('error' in o) return vmWatchFailed(c, o.error);
      return;
    case 'sweep-uids': {
      const r = as(o, 'new-uids');
      return sweepUids(c, 'error' in r ? [] : r.uids);
    }
    case 'write': {
      const r = as(o, 'commit');
      const ok = writeOutcome(c, p, 'error' in r ? r : { reply: r }, stepDown);
      if (ok === 'stepped-down') return;
      switch (p.then.k) {
        case 'none':
          return;
        case 'fence':
          return fenceCommitted(c, p.then, ok);
        case 'mark-lost':
          return markLostBatchDone(c, p.then.hostId, ok);
        case 'sweep':
          return sweepWritten(c, ok);
        case 'gc':
          return gcWritten(c, p.then.hostId, p.then.action, ok);
      }
    }
  }
}
