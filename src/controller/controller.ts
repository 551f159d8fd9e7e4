/**
 * The cluster controller (ARCHITECTURE.md sections 1-3, issue 4): one active replica, elected through
 * the store, watches `hosts/`; a lease gone makes a record `detached` with a fence deadline; at the
 * deadline one constant-size txn fences the host, then further txns (each within the store's
 * {@link TxnLimits}) mark its VMs `lost` — the builders of `domain/fence-changes.ts`, shared with the
 * operator's fence; lost VMs are rescheduled; long-gone host records are retired and removed.
 *
 * etcd 3.4.23 can revoke a lease early after a raft leader change (#15247): the controller tracks the
 * raft term seen in response headers, and a lease lost within one TTL of a term change gets the TTL
 * on top of its window (see `domain/fence-window.ts`).
 *
 * A write that fails with a retryable error is retried with backoff; one that can never succeed
 * (non-retryable: a txn etcd refuses as too large, a record that cannot be encoded) is reported —
 * error log, `controller-error` event, `failures` in the published status — and not retried until the
 * host's record changes.
 *
 * One owner of mutable state: watch callbacks and timers only push inputs onto a queue; a single async
 * loop applies them in order. Every write is one txn guarded by `mod_revision` compares and by this
 * replica's leadership (see {@link Leadership}), so a decision taken on a stale view, or by a replica
 * that lost the election, loses instead of overwriting: "host came back in time" and "cluster fenced the
 * host" cannot both win, and a host is never fenced twice.
 */
import { describeEtcdAssumptions } from '../domain/etcd-assumptions.js';
import { randomBytes } from 'node:crypto';
import type { ClusterEvent, ClusterEventBody } from '../domain/cluster-event.js';
import { markLost, restartPolicyOf, staleOnRejoinedHost, type ClusterVmRecord } from '../domain/cluster-vm.js';
import { isRetryable, messageOf, TetherError } from '../domain/errors.js';
import { detachChange, fenceChange, vmsLostChanges, vmsToMarkLost } from '../domain/fence-changes.js';
import {
  decideHost,
  earlyRevokeSuspected,
  effectiveFenceWindow,
  lossToFenceMs,
  takeoverFenceDeadline,
  timingProblems,
  type TermChange,
} from '../domain/fence-window.js';
import { DEFAULT_TIMINGS } from '../domain/gc-timing.js';
import { DEFAULT_HOST_RECORD_TTL, hostGcAction } from '../domain/host-record-gc.js';
import type { HostRecord } from '../domain/host-record.js';
import {
  countDetached,
  DEFAULT_FREEZE_SHARE,
  describeFreeze,
  evaluateFreeze,
  fencingAllowed,
  NOT_FROZEN,
  type FreezeState,
} from '../domain/mass-freeze.js';
import { isSchedulable, placeVms, type SchedulableHost } from '../domain/placement.js';
import type { Clock, TimerHandle } from '../ports/clock.js';
import type {
  AliveInfo,
  Change,
  CommitResult,
  ControllerFailure,
  ControllerHostStatus,
  ControllerStatus,
  ControllerStore,
  HostWatchEvent,
  Leadership,
  Revision,
  Subscription,
  VmEntry,
} from '../ports/controller-store.js';
import type { Logger } from '../ports/logger.js';

/** Options of {@link Controller}. Durations in ms. */
export interface ControllerOptions {
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
  /** New VM uids (default 32 random hex chars). */
  readonly newUid?: () => string;
}

type Input =
  | { readonly kind: 'campaign' }
  | { readonly kind: 'leader-lost'; readonly term: number; readonly why: string }
  | { readonly kind: 'host'; readonly term: number; readonly e: HostWatchEvent; readonly wall: number; readonly mono: number }
  | { readonly kind: 'watch-error'; readonly term: number; readonly err: Error }
  | { readonly kind: 'resync'; readonly term: number }
  | { readonly kind: 'fence-due'; readonly term: number; readonly hostId: string; readonly incarnation: string }
  | { readonly kind: 'retry-host'; readonly term: number; readonly hostId: string }
  | { readonly kind: 'freeze-check'; readonly term: number }
  | { readonly kind: 'gc'; readonly term: number }
  | { readonly kind: 'sweep'; readonly term: number }
  | { readonly kind: 'status'; readonly term: number }
  /** A response header showed a raft term never seen before (`raftTerm`; `term` is this replica's leadership term). */
  | { readonly kind: 'raft-term'; readonly raftTerm: number; readonly mono: number }
  | {
      readonly kind: 'detach-done';
      readonly term: number;
      readonly hostId: string;
      readonly next: HostRecord;
      readonly obsWall: number;
      readonly obsMono: number;
      readonly res?: CommitResult;
      readonly err?: unknown;
      /** Whether the window was lengthened for a raft term change. */
      readonly termExtended: boolean;
    };

/** What the controller tracks per host (owned by the loop). */
interface Tracked {
  readonly hostId: string;
  record?: HostRecord;
  /** `mod_revision` of `record`: what txns compare. */
  revision?: Revision;
  /** Newest revision applied for the record key and the alive key (older watch events are ignored). */
  recordSeen: bigint;
  aliveSeen: bigint;
  alive?: AliveInfo;
  /** When the `alive` key was seen deleted (the observed lease expiry). */
  goneWall?: number;
  goneMono?: number;
  /** The loss this replica's fence deadline counts from (its own observation, or the recorded `detachedAt` mapped onto its clock). */
  lossWall?: number;
  lossMono?: number;
  /** The window of the current detachment already includes the TTL for a raft term change. */
  termExtended?: boolean;
  /** Consecutive failed or conflicting writes (retry backoff). */
  attempts?: number;
  /** Record revision at which a write failed for good: nothing more is tried until the record changes. */
  stuckAt?: Revision;
  /** Some VMs of this fenced host may still need marking lost. */
  lostPending?: boolean;
  /** VM keys reported as too large to mark lost (reported once). */
  oversizedReported?: Set<string>;
  /** `<epoch>:<detachedAt>` of the detachment the fence deadline belongs to. */
  incarnation?: string;
  fenceAtMono?: number;
  fenceAtWall?: number;
  fenceTimer?: TimerHandle;
  retryTimer?: TimerHandle;
  /** Epoch for which unsafe timings were reported / incarnation for which a blocked fence was. */
  unsafeReported?: number;
  blockedReported?: string;
  /** A detach txn for this host is in flight. */
  detaching?: boolean;
}

/** The replica's role and, when leading, its status document. */
export interface ControllerView {
  readonly controllerId: string;
  readonly role: 'leader' | 'standby' | 'stopped';
  /** Present while leading. */
  readonly status?: ControllerStatus;
}

/** Status is published at most this often (it is for people and `tether host list`). */
const STATUS_DEBOUNCE_MS = 250;
/** A burst of host changes is folded into one freeze evaluation this long after its first change. */
const FREEZE_DEBOUNCE_MS = 100;

/** Concurrent detach txns (a mass expiry must not detach one host per etcd round trip). */
const MAX_DETACHES_IN_FLIGHT = 32;
/** Non-retryable failures kept for the status document. */
const MAX_FAILURES_KEPT = 20;

function incarnationOf(r: HostRecord): string {
  return `${r.epoch}:${r.detachedAt ?? '-'}`;
}

function rev(r: Revision): bigint {
  try {
    return BigInt(r);
  } catch {
    return 0n;
  }
}

function withoutPlacement(vm: ClusterVmRecord): ClusterVmRecord {
  const { hostId: _h, hostEpoch: _e, reason: _r, ...rest } = vm;
  return rest;
}

/**
 * See the module doc. Constructor injection: the store, the clock (all deadlines and timers; wall time
 * only for records and display), the logger.
 *
 * Invariants (each enforced by a test):
 *  - a host is fenced only when its record is still `detached` at the same `mod_revision` and its
 *    `alive` key is absent, and never before its deadline on this replica's monotonic clock;
 *  - a replica that takes over uses the recorded deadline or a full window from its takeover, whichever
 *    is later ({@link takeoverFenceDeadline});
 *  - a host that acknowledged a hold (`holdSeen`) now or when it detached, or publishing unsafe
 *    timings, is never fenced here; a requested hold the host has not acknowledged blocks nothing;
 *  - a lease lost within one TTL of a raft term change this replica saw (its first observation of the
 *    term counts as a change) gets `ttl + window` instead of `window` ({@link earlyRevokeSuspected});
 *  - every txn fits the store's limits; a fenced host whose VMs are not all lost gets them marked
 *    lost (after its fence, on sync and on every sweep);
 *  - while more than `freezeShare` of the hosts are detached, and for a full fence window after the share
 *    falls back, nothing is fenced or rescheduled.
 */
export class Controller {
  private readonly o: Required<Omit<ControllerOptions, 'fenceWindowOverride'>> & { fenceWindowOverride?: number };
  private readonly log: Logger;
  private readonly queue: Input[] = [];
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private stopped = false;
  private started = false;

  private term = 0;
  private leadership: Leadership | undefined;
  private leaderSinceWall = 0;
  private synced = false;
  private sub: Subscription | undefined;
  private readonly hosts = new Map<string, Tracked>();
  private freeze: FreezeState = NOT_FROZEN;
  private freezeResumeAtWall: number | undefined;
  private sweepQueued = false;
  private detachesInFlight = 0;
  private readonly detachQueue = new Set<string>();
  private lastStatus = '';
  /** Highest raft term seen, and when this replica first saw it. */
  private termChange: TermChange | undefined;
  private unsubscribeTerm: (() => void) | undefined;
  /** Non-retryable failures (newest last, bounded). */
  private readonly failures: ControllerFailure[] = [];
  /** Failures already reported (see {@link report}). */
  private readonly reported = new Set<string>();
  private storeInfo: { version: string; assumption: string } | undefined;

  private campaignTimer: TimerHandle | undefined;
  private keepaliveTimer: TimerHandle | undefined;
  private freezeTimer: TimerHandle | undefined;
  /** Host states changed since the freeze was last evaluated. */
  private freezeDirty = false;
  private freezeCheckQueued = false;
  private freezeCheckTimer: TimerHandle | undefined;
  private gcTimer: TimerHandle | undefined;
  private resyncTimer: TimerHandle | undefined;
  private statusTimer: TimerHandle | undefined;

  constructor(
    private readonly store: ControllerStore,
    private readonly clock: Clock,
    logger: Logger,
    options: ControllerOptions,
  ) {
    const leaderTtl = Math.max(1000, Math.round((options.leaderTtl ?? 5000) / 1000) * 1000);
    this.o = {
      controllerId: options.controllerId,
      freezeShare: options.freezeShare ?? DEFAULT_FREEZE_SHARE,
      hostRecordTtl: options.hostRecordTtl ?? DEFAULT_HOST_RECORD_TTL,
      retiredRemoveAfter: options.retiredRemoveAfter ?? 60_000,
      fenceWindowOverride: options.fenceWindowOverride,
      leaderTtl,
      campaignInterval: options.campaignInterval ?? Math.min(1000, Math.floor(leaderTtl / 3)),
      callDeadline: options.callDeadline ?? 2000,
      eventRetention: options.eventRetention ?? 1000,
      gcInterval: options.gcInterval ?? 60_000,
      retryDelay: options.retryDelay ?? 1000,
      maxRetryDelay: options.maxRetryDelay ?? 30_000,
      newUid: options.newUid ?? (() => randomBytes(16).toString('hex')),
    };
    this.log = logger.child({ c: 'controller', controllerId: options.controllerId });
  }

  /** Starts the loop and campaigning. Idempotent. */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.loop = this.run();
    this.unsubscribeTerm = this.store.onRaftTerm((raftTerm) => this.push({ kind: 'raft-term', raftTerm, mono: this.clock.nowMono() }));
    const known = this.store.raftTerm();
    if (known !== undefined) this.push({ kind: 'raft-term', raftTerm: known, mono: this.clock.nowMono() });
    this.push({ kind: 'campaign' });
  }

  /**
   * Stops the loop and every timer. With `resign`, gives leadership up at once (the standby takes over
   * within its campaign interval); without it (a crash, as tests simulate), the leader lease expires on
   * its own after its TTL. The store is the caller's to close.
   */
  async stop(opts: { resign?: boolean } = {}): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.unsubscribeTerm?.();
    this.wake?.();
    await this.loop;
    const l = this.leadership;
    this.clearAll();
    this.leadership = undefined;
    await this.sub?.close().catch(() => undefined);
    this.sub = undefined;
    if (l && opts.resign) await this.store.resign(l, this.o.callDeadline).catch((err) => this.log.warn({ err: messageOf(err) }, 'resign failed; the leader lease will expire'));
  }

  /** True while this replica leads. */
  get isLeader(): boolean {
    return this.leadership !== undefined;
  }

  /** Role and (while leading) the status document, computed now (the published one lags by up to {@link STATUS_DEBOUNCE_MS}). */
  view(): ControllerView {
    const role = this.stopped ? 'stopped' : this.leadership ? 'leader' : 'standby';
    return { controllerId: this.o.controllerId, role, ...(this.leadership && this.synced ? { status: this.computeStatus() } : {}) };
  }

  // ---- the loop ----------------------------------------------------------------------------------

  private push(i: Input): void {
    if (this.stopped) return;
    this.queue.push(i);
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const i = this.queue.shift();
      if (i === undefined) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      if ('term' in i && i.term !== this.term) {
        if (i.kind === 'freeze-check') this.freezeCheckQueued = false;
        continue;
      }
      try {
        await this.handle(i);
        if (i.kind !== 'status' && this.leadership && this.synced && !this.stopped && this.statusTimer === undefined) {
          const term = this.term;
          this.statusTimer = this.clock.setTimer(STATUS_DEBOUNCE_MS, () => this.push({ kind: 'status', term }));
        }
      } catch (err) {
        this.log.error({ err: messageOf(err), input: i.kind }, 'controller step failed (will retry on the next event)');
      }
    }
  }

  private async handle(i: Input): Promise<void> {
    switch (i.kind) {
      case 'campaign':
        return this.campaign();
      case 'leader-lost':
        return this.stepDown(i.why);
      case 'resync':
        return this.resync();
      case 'watch-error':
        this.log.warn({ err: messageOf(i.err) }, 'host watch failed: listing again');
        return this.resync();
      case 'host':
        return this.applyHostEvent(i.e, i.wall, i.mono);
      case 'fence-due':
        return this.fenceDue(i.hostId, i.incarnation);
      case 'retry-host': {
        const t = this.hosts.get(i.hostId);
        if (t) {
          t.retryTimer = undefined;
          await this.reconcile(t);
        }
        return;
      }
      case 'freeze-check':
        this.freezeTimer = undefined;
        this.freezeCheckQueued = false;
        return this.evaluateFreeze();
      case 'gc':
        return this.gc();
      case 'sweep':
        this.sweepQueued = false;
        return this.sweep();
      case 'status':
        this.statusTimer = undefined;
        return this.publishStatus();
      case 'detach-done':
        return this.detachDone(i);
      case 'raft-term':
        return this.observeTerm(i.raftTerm, i.mono);
    }
  }

  // ---- leadership ----------------------------------------------------------------------------

  private async campaign(): Promise<void> {
    this.campaignTimer = undefined;
    if (this.leadership || this.stopped) return;
    const startedMono = this.clock.nowMono();
    let l: Leadership | undefined;
    try {
      l = await this.store.campaign(this.o.controllerId, this.o.leaderTtl, this.o.callDeadline);
    } catch (err) {
      this.log.debug({ err: messageOf(err) }, 'campaign failed');
    }
    if (!l) {
      this.campaignTimer = this.clock.setTimer(this.o.campaignInterval, () => this.push({ kind: 'campaign' }));
      return;
    }
    this.term++;
    this.leadership = l;
    this.leaderSinceWall = this.clock.now();
    this.startKeepalive(l, this.term, startedMono);
    this.log.info({ term: this.term, leaderTtl: l.ttlMs }, 'elected: this replica is the active controller');
    await this.emit({ kind: 'controller-elected', controllerId: this.o.controllerId, detail: `${this.o.controllerId} is the active controller` });
    await this.checkStoreVersion();
    await this.resync();
    this.gcTimer = this.clock.setTimer(this.o.gcInterval, () => this.push({ kind: 'gc', term: this.term }));
  }

  /**
   * Reads the store's server version at election and logs what is assumed about its leases (etcd
   * 3.4.23: early revoke after a leader change possible). The window extension is active whatever the
   * version: it costs one TTL, only for leases lost around a leader change.
   */
  private async checkStoreVersion(): Promise<void> {
    try {
      const st = await this.store.serverStatus(this.o.callDeadline);
      const assumption = describeEtcdAssumptions(st.version);
      this.storeInfo = { version: st.version, assumption };
      this.log.info({ etcdVersion: st.version, raftTerm: st.raftTerm }, assumption);
      await this.observeTerm(st.raftTerm, this.clock.nowMono());
    } catch (err) {
      const assumption = describeEtcdAssumptions(undefined);
      this.storeInfo = { version: 'unknown', assumption };
      this.log.warn({ err: messageOf(err) }, `could not read the etcd version: ${assumption}`);
    }
  }

  /**
   * Keepalives of the leader lease every third of its TTL, outside the loop (a slow store call in the
   * loop must not starve them). The lease is known good until `send time of the last acknowledged
   * keepalive + ttl`; the replica steps down a little before that, or at once when the lease is lost.
   */
  private startKeepalive(l: Leadership, term: number, grantedAfterMono: number): void {
    const interval = Math.max(100, Math.floor(l.ttlMs / 3));
    const margin = Math.min(500, interval / 2);
    let lastAck = grantedAfterMono;
    const tick = async (): Promise<void> => {
      this.keepaliveTimer = undefined;
      if (term !== this.term || this.stopped) return;
      const sent = this.clock.nowMono();
      let answer: 'alive' | 'lost' | 'miss' = 'miss';
      try {
        answer = await this.store.keepLeadership(l, interval);
      } catch (err) {
        this.log.warn({ err: messageOf(err) }, 'leader keepalive missed');
      }
      if (term !== this.term || this.stopped) return;
      if (answer === 'lost') return this.push({ kind: 'leader-lost', term, why: 'the leader lease is gone' });
      if (answer === 'alive') lastAck = sent;
      if (this.clock.nowMono() >= lastAck + l.ttlMs - margin) {
        return this.push({ kind: 'leader-lost', term, why: `no leader keepalive acknowledged for ${Math.round(this.clock.nowMono() - lastAck)} ms (ttl ${l.ttlMs} ms)` });
      }
      this.keepaliveTimer = this.clock.setTimer(interval, () => void tick());
    };
    this.keepaliveTimer = this.clock.setTimer(interval, () => void tick());
  }

  private async stepDown(why: string): Promise<void> {
    if (!this.leadership) return;
    this.log.warn({ why, term: this.term }, 'stepping down: no longer the active controller');
    this.term++;
    this.leadership = undefined;
    this.clearAll();
    await this.sub?.close().catch(() => undefined);
    this.sub = undefined;
    this.synced = false;
    this.hosts.clear();
    this.freeze = NOT_FROZEN;
    this.freezeResumeAtWall = undefined;
    this.lastStatus = '';
    this.campaignTimer = this.clock.setTimer(this.o.campaignInterval, () => this.push({ kind: 'campaign' }));
  }

  private clearAll(): void {
    for (const h of [this.campaignTimer, this.keepaliveTimer, this.freezeTimer, this.freezeCheckTimer, this.gcTimer, this.resyncTimer, this.statusTimer]) if (h) this.clock.clearTimer(h);
    this.campaignTimer = this.keepaliveTimer = this.freezeTimer = this.freezeCheckTimer = this.gcTimer = this.resyncTimer = this.statusTimer = undefined;
    this.freezeCheckQueued = false;
    for (const t of this.hosts.values()) {
      if (t.fenceTimer) this.clock.clearTimer(t.fenceTimer);
      if (t.retryTimer) this.clock.clearTimer(t.retryTimer);
      t.fenceTimer = t.retryTimer = undefined;
    }
    this.sweepQueued = false;
    this.detachesInFlight = 0;
    this.detachQueue.clear();
  }

  // ---- view of the hosts -----------------------------------------------------------------------

  /** Lists every host, then watches from just after that snapshot (also after a watch error). */
  private async resync(): Promise<void> {
    this.resyncTimer = undefined;
    if (!this.leadership) return;
    const term = this.term;
    await this.sub?.close().catch(() => undefined);
    this.sub = undefined;
    this.synced = false;
    try {
      const snap = await this.store.listHosts(this.o.callDeadline);
      const at = rev(snap.revision);
      const present = new Set<string>();
      for (const h of snap.hosts) {
        present.add(h.hostId);
        const t = this.track(h.hostId);
        this.setRecord(t, h.record, h.recordRevision);
        t.recordSeen = at;
        t.aliveSeen = at;
        if (h.alive) {
          t.alive = h.alive;
          t.goneWall = t.goneMono = undefined;
        } else t.alive = undefined;
      }
      for (const t of this.hosts.values()) {
        if (present.has(t.hostId)) continue;
        this.setRecord(t, undefined, undefined);
        t.alive = undefined;
        t.recordSeen = t.aliveSeen = at;
      }
      this.sub = await this.store.watchHosts(
        String(at + 1n),
        {
          onEvent: (e) => this.push({ kind: 'host', term, e, wall: this.clock.now(), mono: this.clock.nowMono() }),
          onError: (err) => this.push({ kind: 'watch-error', term, err }),
        },
        this.o.callDeadline,
      );
    } catch (err) {
      this.log.warn({ err: messageOf(err) }, 'listing hosts failed; retrying');
      this.resyncTimer = this.clock.setTimer(this.o.retryDelay, () => this.push({ kind: 'resync', term }));
      return;
    }
    this.synced = true;
    this.log.info({ hosts: this.hosts.size }, 'host view synced');
    for (const t of [...this.hosts.values()]) await this.reconcile(t);
    await this.evaluateFreeze();
    this.requestSweep();
  }

  private track(hostId: string): Tracked {
    let t = this.hosts.get(hostId);
    if (!t) {
      t = { hostId, recordSeen: 0n, aliveSeen: 0n };
      this.hosts.set(hostId, t);
    }
    return t;
  }

  /** Sets the record, noting a return before the fence. */
  private setRecord(t: Tracked, record: HostRecord | undefined, revision: Revision | undefined): { returned: boolean } {
    const prev = t.record;
    t.record = record;
    t.revision = revision;
    const returned = prev?.state === 'detached' && (record?.state === 'attached' || record?.state === 'ready');
    return { returned };
  }

  private async applyHostEvent(e: HostWatchEvent, wall: number, mono: number): Promise<void> {
    if (!this.synced) return;
    const t = this.track(e.hostId);
    const r = rev(e.revision);
    const wasSchedulable = isSchedulable(t.record, t.alive !== undefined);
    if (e.kind === 'record' || e.kind === 'record-deleted') {
      if (r <= t.recordSeen) return;
      t.recordSeen = r;
      const prevState = t.record?.state;
      const { returned } = this.setRecord(t, e.kind === 'record' ? e.record : undefined, e.kind === 'record' ? e.revision : undefined);
      if (returned && t.record) {
        this.log.info({ hostId: t.hostId, epoch: t.record.epoch, state: t.record.state }, 'host came back before the fence: its fence is cancelled');
        await this.emit({ kind: 'host-returned', hostId: t.hostId, epoch: t.record.epoch, detail: `host ${t.hostId} re-registered (${t.record.state}, epoch ${t.record.epoch}) before its fence deadline` });
      }
      if (t.record?.state === 'fenced' && prevState !== 'fenced') this.requestSweep();
    } else {
      if (r <= t.aliveSeen) return;
      t.aliveSeen = r;
      if (e.kind === 'alive') {
        t.alive = e.alive;
        t.goneWall = t.goneMono = undefined;
      } else {
        t.alive = undefined;
        t.goneWall = wall;
        t.goneMono = mono;
        this.log.info({ hostId: t.hostId }, 'host lease gone (alive key deleted)');
      }
    }
    if (!t.record && !t.alive) {
      this.disarm(t);
      this.hosts.delete(t.hostId);
    } else await this.reconcile(t);
    if (!wasSchedulable && isSchedulable(t.record, t.alive !== undefined)) this.requestSweep();
    this.markFreezeDirty();
  }

  // ---- per-host decisions ------------------------------------------------------------------------

  private async reconcile(t: Tracked): Promise<void> {
    if (!this.leadership || !this.synced || t.detaching) return;
    const rec = t.record;
    if (rec) {
      const problems = timingProblems(rec);
      if (problems !== undefined && t.unsafeReported !== rec.epoch) {
        t.unsafeReported = rec.epoch;
        this.log.warn({ hostId: t.hostId, epoch: rec.epoch, violations: problems }, 'host publishes unsafe GC timings: it will never be fenced automatically');
        await this.emit({
          kind: 'host-unsafe-timings',
          hostId: t.hostId,
          epoch: rec.epoch,
          violations: problems,
          detail: `host ${t.hostId} publishes unsafe timings (${problems}); it will never be fenced automatically`,
        });
      }
    }
    // A write failed for good at this record: nothing more until the record changes (reported once).
    if (t.stuckAt !== undefined && t.stuckAt === t.revision) return;
    if (rec?.state === 'fenced') {
      if (t.lostPending) await this.completeFence(t);
      return this.disarm(t);
    }
    const d = decideHost(rec, t.alive !== undefined);
    switch (d.kind) {
      case 'detach':
        return this.detach(t);
      case 'await-fence':
        return this.armFence(t);
      case 'never-fence': {
        this.disarm(t);
        const key = `${incarnationOf(rec!)}:${d.blockers.join(',')}`;
        if (t.blockedReported !== key) {
          t.blockedReported = key;
          this.log.warn({ hostId: t.hostId, blockers: d.blockers }, 'detached host will not be fenced automatically');
          await this.emit({
            kind: 'host-fence-blocked',
            hostId: t.hostId,
            epoch: rec!.epoch,
            blockers: d.blockers,
            detail: `host ${t.hostId} is detached but will not be fenced automatically (${d.blockers.join(', ')}); only 'tether host fence ${t.hostId} --confirm' can fence it`,
          });
        }
        return;
      }
      default:
        this.disarm(t);
    }
  }

  // ---- raft terms (etcd 3.4 early revoke) --------------------------------------------------------

  /** Records a raft term higher than any seen (the first one too: the history before it is unknown). */
  private noteTerm(raftTerm: number | undefined, mono: number): boolean {
    if (raftTerm === undefined || (this.termChange !== undefined && raftTerm <= this.termChange.term)) return false;
    const first = this.termChange === undefined;
    this.termChange = { term: raftTerm, seenMono: mono };
    if (first) this.log.info({ raftTerm }, 'first raft term seen: a lease lost within one TTL from now gets the TTL on top of its fence window (the term history before now is unknown)');
    else this.log.warn({ raftTerm }, 'etcd raft term changed (leader election): a lease lost within one TTL of now gets the TTL on top of its fence window (etcd 3.4 early revoke, #15247)');
    return true;
  }

  /** A term seen in a response header: noted, then every pending fence whose loss is within one TTL of it is lengthened. */
  private async observeTerm(raftTerm: number, mono: number): Promise<void> {
    this.noteTerm(raftTerm, mono);
    if (!this.leadership || !this.synced) return;
    for (const t of [...this.hosts.values()]) await this.maybeExtend(t);
  }

  /**
   * When the current detachment's loss lies within one TTL of the last term change and its window does
   * not include the TTL yet, lengthens it to `loss + ttl + window` (timer, record and a
   * `fence-deadline-extended` event). True when the deadline moved.
   */
  private async maybeExtend(t: Tracked): Promise<boolean> {
    const rec = t.record;
    if (!this.leadership || !rec || rec.state !== 'detached' || t.termExtended || t.detaching) return false;
    if (t.lossMono === undefined || t.lossWall === undefined || t.fenceAtMono === undefined || t.revision === undefined || t.incarnation === undefined) return false;
    if (!earlyRevokeSuspected(t.lossMono, this.termChange, rec.timings?.ttl ?? 0)) return false;
    t.termExtended = true;
    const due = t.lossWall + lossToFenceMs(rec.timings, { fenceWindowOverride: this.o.fenceWindowOverride, earlyRevoke: true });
    const dueMono = t.lossMono + (due - t.lossWall);
    if (dueMono <= t.fenceAtMono) return false;
    const from = t.fenceAtWall ?? rec.fenceDeadline ?? null;
    t.fenceAtMono = dueMono;
    t.fenceAtWall = due;
    if (t.fenceTimer) this.clock.clearTimer(t.fenceTimer);
    t.fenceTimer = undefined;
    const term = this.termChange!.term;
    this.log.warn({ hostId: t.hostId, raftTerm: term, from, to: due }, 'lease lost within one TTL of a raft term change: fence window lengthened by the TTL (etcd 3.4 early revoke)');
    const nowWall = this.clock.now();
    await this.write(
      t.hostId,
      {
        hosts: [{ hostId: t.hostId, expectRevision: t.revision, requireAliveAbsent: true, next: { ...rec, fenceDeadline: Math.max(rec.fenceDeadline ?? 0, due), updatedAt: nowWall } }],
        events: [
          {
            kind: 'fence-deadline-extended',
            hostId: t.hostId,
            epoch: rec.epoch,
            from,
            to: due,
            why: 'raft-term-change',
            at: nowWall,
            detail: `lease of ${t.hostId} vanished within one TTL of a raft term change (term ${term}): etcd 3.4 may have revoked it early (#15247), so its VMs are treated as gone only at ${new Date(due).toISOString()} (loss + ttl + window)`,
          },
        ],
      },
      { action: 'extend', retry: false },
    );
    this.armTimer(t);
    return true;
  }

  // ---- detach and fence ------------------------------------------------------------------------

  /**
   * Starts the detach txn ({@link detachChange}: record unchanged and `alive` still absent -> `detached`
   * with the deadline, plus a `host-detached` event) without waiting for it: many hosts expiring at
   * once are detached by up to {@link MAX_DETACHES_IN_FLIGHT} concurrent txns; the result comes back as
   * a `detach-done` input. While its txn is in flight the host is not reconciled (its own write must not
   * look like a takeover).
   */
  private detach(t: Tracked): void {
    if (t.detaching) return;
    if (this.detachesInFlight >= MAX_DETACHES_IN_FLIGHT) {
      this.detachQueue.add(t.hostId);
      return;
    }
    const l = this.leadership!;
    const rec = t.record!;
    const nowWall = this.clock.now();
    const nowMono = this.clock.nowMono();
    const obsWall = t.goneWall ?? nowWall;
    const obsMono = t.goneMono ?? nowMono;
    this.noteTerm(this.store.raftTerm(), nowMono);
    const suspected = earlyRevokeSuspected(obsMono, this.termChange, rec.timings?.ttl ?? 0);
    const { next, change } = detachChange({
      hostId: t.hostId,
      record: rec,
      revision: t.revision!,
      observedWall: obsWall,
      nowWall,
      fenceWindowOverride: this.o.fenceWindowOverride,
      ...(suspected ? { termChange: { term: this.termChange!.term } } : {}),
    });
    t.detaching = true;
    this.detachesInFlight++;
    const term = this.term;
    const done = (res: CommitResult | undefined, err?: unknown) =>
      this.push({ kind: 'detach-done', term, hostId: t.hostId, next, obsWall, obsMono, termExtended: suspected, ...(res ? { res } : {}), ...(err !== undefined ? { err } : {}) });
    this.store.commit({ ...change, leader: l }, this.o.callDeadline).then(
      (res) => done(res),
      (err: unknown) => done(undefined, err ?? new Error('commit failed')),
    );
  }

  private async detachDone(i: Extract<Input, { kind: 'detach-done' }>): Promise<void> {
    this.detachesInFlight = Math.max(0, this.detachesInFlight - 1);
    const t = this.hosts.get(i.hostId);
    if (t) t.detaching = false;
    for (const id of [...this.detachQueue]) {
      if (this.detachesInFlight >= MAX_DETACHES_IN_FLIGHT) break;
      this.detachQueue.delete(id);
      const q = this.hosts.get(id);
      if (q && q !== t) await this.reconcile(q);
    }
    if (!t) return;
    if (i.err !== undefined || !i.res) {
      if (!isRetryable(i.err)) return this.giveUp(t, 'detach', i.err);
      this.log.warn({ hostId: t.hostId, err: messageOf(i.err) }, 'detach txn failed; retrying');
      this.retryLater(t);
      return;
    }
    if (!i.res.ok) {
      if (i.res.reason === 'not-leader') return this.stepDown('a txn found another controller holding controller/leader');
      this.log.debug({ hostId: t.hostId }, 'detach txn lost a race (the host re-registered or its record changed); re-evaluating');
      return this.reconcile(t);
    }
    t.attempts = 0;
    const r = rev(i.res.revision);
    if (r >= t.recordSeen) {
      this.setRecord(t, i.next, i.res.revision);
      t.recordSeen = r;
    }
    if (t.revision === i.res.revision) {
      this.disarm(t);
      const deadline = i.next.fenceDeadline!;
      t.incarnation = incarnationOf(i.next);
      t.fenceAtMono = i.obsMono + (deadline - i.obsWall);
      t.fenceAtWall = deadline;
      t.lossWall = i.obsWall;
      t.lossMono = i.obsMono;
      t.termExtended = i.termExtended;
      this.log.info(
        { hostId: t.hostId, epoch: i.next.epoch, fenceInMs: Math.round(t.fenceAtMono - this.clock.nowMono()), heldAtDetach: i.next.heldAtDetach, termExtended: i.termExtended },
        'host detached',
      );
    }
    await this.reconcile(t);
    await this.maybeExtend(t); // a term change seen while the detach txn was in flight
    this.markFreezeDirty();
  }

  /**
   * Arms the fence timer of a detached host. A deadline this replica did not compute itself in this
   * term (failover, or a detachment it did not write) follows the takeover rule — and the raft-term
   * rule, with the recorded `detachedAt` as the loss — and the later deadline is written back to the
   * record so every reader sees it.
   */
  private async armFence(t: Tracked): Promise<void> {
    const rec = t.record!;
    const inc = incarnationOf(rec);
    if (t.incarnation !== inc || t.fenceAtMono === undefined) {
      this.disarm(t);
      const nowWall = this.clock.now();
      const nowMono = this.clock.nowMono();
      const window = effectiveFenceWindow(rec.timings, this.o.fenceWindowOverride);
      const takeoverDue = takeoverFenceDeadline(rec.fenceDeadline, nowWall, window);
      const lossWall = Math.min(rec.detachedAt ?? nowWall, nowWall);
      const lossMono = nowMono - (nowWall - lossWall);
      const suspected = earlyRevokeSuspected(lossMono, this.termChange, rec.timings?.ttl ?? 0);
      const termDue = suspected ? lossWall + lossToFenceMs(rec.timings, { fenceWindowOverride: this.o.fenceWindowOverride, earlyRevoke: true }) : 0;
      const due = Math.max(takeoverDue, termDue);
      t.incarnation = inc;
      t.fenceAtMono = nowMono + (due - nowWall);
      t.fenceAtWall = due;
      t.lossWall = lossWall;
      t.lossMono = lossMono;
      t.termExtended = suspected;
      const why = termDue > takeoverDue ? 'raft-term-change' : 'takeover';
      this.log.info({ hostId: t.hostId, recorded: rec.fenceDeadline, due, fenceInMs: due - nowWall, why }, 'pending fence taken over: the recorded deadline or a full window from now, whichever is later');
      if (rec.fenceDeadline === undefined || due > rec.fenceDeadline) {
        await this.write(
          t.hostId,
          {
            hosts: [{ hostId: t.hostId, expectRevision: t.revision!, requireAliveAbsent: true, next: { ...rec, fenceDeadline: due, updatedAt: nowWall } }],
            events: [
              {
                kind: 'fence-deadline-extended',
                hostId: t.hostId,
                epoch: rec.epoch,
                from: rec.fenceDeadline ?? null,
                to: due,
                why,
                at: nowWall,
                detail:
                  why === 'takeover'
                    ? `controller ${this.o.controllerId} took over the pending fence of ${t.hostId}: deadline ${new Date(due).toISOString()} (a full window from its takeover)`
                    : `controller ${this.o.controllerId} took over the pending fence of ${t.hostId}, lost within one TTL of a raft term change: deadline ${new Date(due).toISOString()} (loss + ttl + window, etcd 3.4 early revoke)`,
              },
            ],
          },
          { action: 'extend', retry: false },
        );
        if (t.incarnation !== inc) return;
      }
    }
    this.armTimer(t);
  }

  private armTimer(t: Tracked): void {
    if (t.fenceTimer !== undefined || t.incarnation === undefined || t.fenceAtMono === undefined) return;
    const delay = Math.max(0, t.fenceAtMono - this.clock.nowMono());
    const term = this.term;
    const inc = t.incarnation;
    t.fenceTimer = this.clock.setTimer(delay, () => this.push({ kind: 'fence-due', term, hostId: t.hostId, incarnation: inc }));
  }

  private disarm(t: Tracked): void {
    if (t.fenceTimer) this.clock.clearTimer(t.fenceTimer);
    t.fenceTimer = undefined;
    t.incarnation = undefined;
    t.fenceAtMono = undefined;
    t.fenceAtWall = undefined;
    t.lossWall = undefined;
    t.lossMono = undefined;
    t.termExtended = undefined;
  }

  private async fenceDue(hostId: string, incarnation: string): Promise<void> {
    const t = this.hosts.get(hostId);
    if (!t || t.incarnation !== incarnation) return;
    t.fenceTimer = undefined;
    if (t.stuckAt !== undefined && t.stuckAt === t.revision) return;
    const d = decideHost(t.record, t.alive !== undefined);
    if (d.kind !== 'await-fence') return this.reconcile(t);
    if (this.clock.nowMono() < t.fenceAtMono!) return this.armTimer(t); // never early
    if (this.freezeDirty) await this.evaluateFreeze(); // decide on the current detached share
    if (!fencingAllowed(this.freeze)) {
      this.log.warn({ hostId, freeze: describeFreeze(this.freeze, this.o.freezeShare, this.clock.nowMono()) }, 'fence deadline passed but the mass-disruption freeze holds it');
      return;
    }
    await this.fence(t);
  }

  /**
   * The fence ({@link fenceChange}): record still `detached` at this revision, lease still absent ->
   * `fenced`, one event — a constant-size txn; then the host's VMs are marked lost in further txns
   * ({@link completeFence}). Re-checks the raft term first (the VM listing's header is fresh): a term
   * change within one TTL of the loss lengthens the window instead.
   */
  private async fence(t: Tracked): Promise<void> {
    let vms: VmEntry[];
    try {
      vms = await this.store.listVms(this.o.callDeadline);
    } catch (err) {
      if (!isRetryable(err)) return this.giveUp(t, 'fence', err);
      this.log.warn({ hostId: t.hostId, err: messageOf(err) }, 'listing VMs for the fence failed; retrying');
      this.retryLater(t);
      return;
    }
    this.noteTerm(this.store.raftTerm(), this.clock.nowMono());
    if (await this.maybeExtend(t)) return;
    const rec = t.record;
    if (!rec || rec.state !== 'detached' || t.revision === undefined) return this.reconcile(t);
    const nowWall = this.clock.now();
    const pending = vmsToMarkLost(vms, t.hostId, rec.epoch).map((v) => v.key);
    const { change } = fenceChange({ hostId: t.hostId, record: rec, revision: t.revision, nowWall, by: 'controller', pendingVms: pending });
    const lateMs = Math.round(nowWall - (t.fenceAtWall ?? nowWall));
    const ok = await this.write(t.hostId, change, { action: 'fence' });
    if (!ok) return;
    this.disarm(t);
    this.log.warn({ hostId: t.hostId, epoch: rec.epoch, lostVms: pending.length, lateMs }, 'host fenced');
    t.lostPending = pending.length > 0;
    if (t.lostPending) await this.completeFence(t, vms);
    this.requestSweep();
  }

  /**
   * Marks lost every VM of a fenced host at (or below) its epoch ({@link vmsLostChanges}: txns within
   * the store's limits, each guarded by the fenced record's revision and the VMs' revisions). Used
   * right after the fence, after a conflict (retry with backoff), and by every sweep — so a fence
   * interrupted by a crash is finished by whoever leads next. True when no VM is left to mark.
   */
  private async completeFence(t: Tracked, known?: readonly VmEntry[]): Promise<boolean> {
    const rec = t.record;
    if (!this.leadership || rec?.state !== 'fenced' || t.revision === undefined) {
      t.lostPending = false;
      return rec?.state !== 'fenced';
    }
    if (t.stuckAt !== undefined && t.stuckAt === t.revision) return false;
    let vms = known;
    if (!vms) {
      try {
        vms = await this.store.listVms(this.o.callDeadline);
      } catch (err) {
        if (!isRetryable(err)) {
          await this.giveUp(t, 'mark-lost', err);
          return false;
        }
        this.log.warn({ hostId: t.hostId, err: messageOf(err) }, 'listing VMs to mark lost failed; retrying');
        t.lostPending = true;
        this.retryLater(t);
        return false;
      }
    }
    const startedMono = this.clock.nowMono();
    const plan = vmsLostChanges({ hostId: t.hostId, record: rec, revision: t.revision, vms, nowWall: this.clock.now(), by: 'controller', limits: this.store.txnLimits, leader: true });
    const reported = (t.oversizedReported ??= new Set());
    for (const key of plan.oversized) {
      if (reported.has(key)) continue;
      reported.add(key);
      await this.report(t.hostId, 'mark-lost', new TetherError('FAILED_PRECONDITION', `VM ${key} of fenced host ${t.hostId}: its record alone exceeds the txn limits (${this.store.txnLimits.maxOps} ops, ${this.store.txnLimits.maxBytes} bytes); it cannot be marked lost, mark or delete it by hand`));
    }
    let marked = 0;
    let conflicts = 0;
    for (const c of plan.changes) {
      const ok = await this.write(t.hostId, c, { action: 'mark-lost', retry: false });
      if (!this.leadership || (t.stuckAt !== undefined && t.stuckAt === t.revision)) return false;
      if (ok) marked += c.vms?.length ?? 0;
      else conflicts++;
    }
    if (plan.changes.length > 0) {
      this.log.info({ hostId: t.hostId, epoch: rec.epoch, marked, txns: plan.changes.length, conflicts, ms: Math.round(this.clock.nowMono() - startedMono) }, 'VMs of the fenced host marked lost');
    }
    if (conflicts > 0) {
      t.lostPending = true;
      this.retryLater(t);
      return false;
    }
    t.lostPending = false;
    return plan.oversized.length === 0;
  }

  /**
   * Commits `change` as the leader. On success updates the tracked records it wrote; on `not-leader`
   * steps down; on a conflict or a retryable error retries the host later with backoff (when `retry`);
   * on a non-retryable error reports it ({@link giveUp}) and does not retry.
   */
  private async write(hostId: string | undefined, change: Omit<Change, 'leader'>, opts: { readonly action: string; readonly retry?: boolean }): Promise<boolean> {
    const l = this.leadership;
    if (!l) return false;
    const retry = opts.retry ?? true;
    const t = hostId ? this.hosts.get(hostId) : undefined;
    let res;
    try {
      res = await this.store.commit({ ...change, leader: l }, this.o.callDeadline);
    } catch (err) {
      if (!isRetryable(err)) {
        await this.giveUp(t, opts.action, err, hostId);
        return false;
      }
      this.log.warn({ hostId, action: opts.action, err: messageOf(err) }, 'controller txn failed; retrying with backoff');
      if (t && retry) this.retryLater(t);
      return false;
    }
    if (res.ok) {
      for (const h of change.hosts ?? []) {
        const w = this.hosts.get(h.hostId);
        if (!w) continue;
        this.setRecord(w, h.next ?? undefined, h.next ? res.revision : undefined);
        w.recordSeen = rev(res.revision);
      }
      if (t) t.attempts = 0;
      return true;
    }
    if (res.reason === 'not-leader') {
      this.push({ kind: 'leader-lost', term: this.term, why: 'a txn found another controller holding controller/leader' });
      return false;
    }
    this.log.debug({ hostId, action: opts.action }, 'controller txn lost a race (record or VM changed); re-evaluating');
    if (t && retry) this.retryLater(t);
    return false;
  }

  /** Retries the host later: `retryDelay`, doubled per consecutive failure, at most `maxRetryDelay`. */
  private retryLater(t: Tracked): void {
    if (t.retryTimer) return;
    const attempts = t.attempts ?? 0;
    t.attempts = attempts + 1;
    const delay = Math.min(this.o.maxRetryDelay, this.o.retryDelay * 2 ** Math.min(attempts, 20));
    const term = this.term;
    t.retryTimer = this.clock.setTimer(delay, () => this.push({ kind: 'retry-host', term, hostId: t.hostId }));
  }

  /**
   * A write that retrying cannot fix: reported ({@link report}), and the host is left alone until its
   * record changes (`stuckAt`).
   */
  private async giveUp(t: Tracked | undefined, action: string, err: unknown, hostId = t?.hostId): Promise<void> {
    if (t) t.stuckAt = t.revision;
    await this.report(hostId, action, err);
  }

  /**
   * Error log, `controller-error` event, and a line in the published status (`failures`) — once per
   * distinct failure (a sweep meeting the same one every GC tick only logs it at debug level).
   */
  private async report(hostId: string | undefined, action: string, err: unknown): Promise<void> {
    const code = err instanceof TetherError ? err.code : 'INTERNAL';
    const message = messageOf(err);
    const key = `${hostId ?? ''}\u0000${action}\u0000${message}`;
    if (this.reported.has(key)) {
      this.log.debug({ hostId, action, code, err: message }, 'controller write still cannot succeed (reported before)');
      return;
    }
    if (this.reported.size >= 1000) this.reported.clear();
    this.reported.add(key);
    this.failures.push({ hostId: hostId ?? null, action, code, message, at: this.clock.now() });
    if (this.failures.length > MAX_FAILURES_KEPT) this.failures.splice(0, this.failures.length - MAX_FAILURES_KEPT);
    this.log.error({ hostId, action, code, err: message }, 'controller write cannot succeed by retrying: not retried; an operator must look');
    await this.emit({
      kind: 'controller-error',
      hostId: hostId ?? null,
      action,
      code,
      detail: `${action}${hostId ? ` of ${hostId}` : ''} failed and is not retried (${code}): ${message}`,
    });
  }

  /** Appends an event (best effort, as the leader). */
  private async emit(body: ClusterEventBody & { detail: string }): Promise<void> {
    const l = this.leadership;
    if (!l) return;
    const ev = { ...body, at: this.clock.now() } as ClusterEvent;
    try {
      await this.store.commit({ leader: l, events: [ev] }, this.o.callDeadline);
    } catch (err) {
      this.log.warn({ err: messageOf(err), event: ev.kind }, 'writing an event failed');
    }
  }

  // ---- mass-disruption freeze ------------------------------------------------------------------

  /**
   * Host states changed: the freeze is re-evaluated once per burst (one check, FREEZE_DEBOUNCE_MS
   * later), not once per event — it scans every host. Fence and sweep decisions re-evaluate first when it is dirty, so they
   * never act on a stale share.
   */
  private markFreezeDirty(): void {
    this.freezeDirty = true;
    if (this.freezeCheckQueued) return;
    this.freezeCheckQueued = true;
    const term = this.term;
    this.freezeCheckTimer = this.clock.setTimer(FREEZE_DEBOUNCE_MS, () => {
      this.freezeCheckTimer = undefined;
      this.push({ kind: 'freeze-check', term });
    });
  }

  private async evaluateFreeze(): Promise<void> {
    this.freezeDirty = false;
    if (!this.leadership || !this.synced) return;
    const records = [...this.hosts.values()].map((t) => t.record).filter((r): r is HostRecord => r !== undefined);
    const count = countDetached(records.map((r) => r.state));
    const pool = records.filter((r) => r.state === 'attached' || r.state === 'ready' || r.state === 'detached');
    const window = pool.length > 0 ? Math.max(...pool.map((r) => effectiveFenceWindow(r.timings ?? DEFAULT_TIMINGS, this.o.fenceWindowOverride))) : DEFAULT_TIMINGS.fenceWindow;
    const nowMono = this.clock.nowMono();
    const nowWall = this.clock.now();
    const { state, transition } = evaluateFreeze(this.freeze, count, nowMono, { limit: this.o.freezeShare, window });
    this.freeze = state;
    if (transition === 'entered') {
      if (this.freezeTimer) this.clock.clearTimer(this.freezeTimer);
      this.freezeTimer = undefined;
      this.freezeResumeAtWall = undefined;
      const why = describeFreeze(state, this.o.freezeShare, nowMono)!;
      this.log.warn({ detached: count.detached, total: count.total }, why);
      await this.emit({ kind: 'freeze-entered', detached: count.detached, total: count.total, limit: this.o.freezeShare, detail: why });
    } else if (transition === 'fell-back' && state.mode === 'resuming') {
      this.freezeResumeAtWall = nowWall + (state.resumeAt - nowMono);
      const term = this.term;
      this.freezeTimer = this.clock.setTimer(state.resumeAt - nowMono, () => this.push({ kind: 'freeze-check', term }));
      this.log.warn({ detached: count.detached, total: count.total, resumeInMs: state.resumeAt - nowMono }, 'detached share fell back: fencing resumes after a full fence window');
      await this.emit({
        kind: 'freeze-lifted',
        detached: count.detached,
        total: count.total,
        resumeAt: this.freezeResumeAtWall,
        detail: `${count.detached} of ${count.total} hosts detached: fencing resumes at ${new Date(this.freezeResumeAtWall).toISOString()} (a full fence window)`,
      });
    } else if (transition === 'resumed') {
      this.freezeResumeAtWall = undefined;
      this.log.info({}, 'mass-disruption freeze over: fencing and rescheduling resume');
      await this.emit({ kind: 'freeze-resumed', detail: 'mass-disruption freeze over: fencing and rescheduling resume' });
      for (const t of this.hosts.values()) {
        if (t.incarnation !== undefined && t.fenceAtMono !== undefined && t.fenceAtMono <= nowMono && t.fenceTimer === undefined) {
          this.push({ kind: 'fence-due', term: this.term, hostId: t.hostId, incarnation: t.incarnation });
        }
      }
      this.requestSweep();
    }
  }

  // ---- reschedule ------------------------------------------------------------------------------

  private requestSweep(): void {
    if (this.sweepQueued || !this.leadership) return;
    this.sweepQueued = true;
    this.push({ kind: 'sweep', term: this.term });
  }

  /**
   * Re-places lost VMs (policy `reschedule`) and VMs pending without a host on schedulable hosts: new
   * uid, the host's current epoch, phase `pending`; no capacity -> `pending` without a host and the reason.
   * Policy `none` leaves a lost VM lost (noted once in its record and an event). Nothing moves during a freeze.
   *
   * First, whatever the freeze: a fenced host whose VMs at its epoch are not all lost (a fence
   * interrupted by a crash or a lost race) gets them marked lost ({@link completeFence}).
   */
  private async sweep(): Promise<void> {
    if (this.freezeDirty) await this.evaluateFreeze();
    if (!this.leadership || !this.synced) return;
    let vms;
    try {
      vms = await this.store.listVms(this.o.callDeadline);
    } catch (err) {
      this.log.warn({ err: messageOf(err) }, 'listing VMs for the reschedule failed; retrying at the next GC tick');
      return;
    }
    let completed = 0;
    for (const t of [...this.hosts.values()]) {
      const rec = t.record;
      if (rec?.state !== 'fenced' || t.revision === undefined || (t.stuckAt !== undefined && t.stuckAt === t.revision)) continue;
      const left = vmsToMarkLost(vms, t.hostId, rec.epoch);
      if (left.length === 0 || left.every((v) => t.oversizedReported?.has(v.key))) continue;
      this.log.warn({ hostId: t.hostId, epoch: rec.epoch, vms: left.length }, 'fenced host still has VMs not marked lost (an interrupted fence): marking them now');
      await this.completeFence(t, vms);
      completed++;
    }
    if (!this.leadership || !fencingAllowed(this.freeze)) return;
    if (completed > 0) {
      try {
        vms = await this.store.listVms(this.o.callDeadline);
      } catch (err) {
        this.log.warn({ err: messageOf(err) }, 'listing VMs for the reschedule failed; retrying at the next GC tick');
        return;
      }
    }
    const nowWall = this.clock.now();
    // VMs of an older epoch on a host that rejoined (ready, after a verified cleanup) are gone: mark them lost.
    let marked = 0;
    for (const v of vms) {
      const t = v.record.hostId !== undefined ? this.hosts.get(v.record.hostId) : undefined;
      if (!t?.record || t.revision === undefined || !staleOnRejoinedHost(v.record, { hostId: t.hostId, epoch: t.record.epoch, state: t.record.state })) continue;
      const why = `host ${t.hostId} rejoined clean at epoch ${t.record.epoch}; this incarnation (epoch ${v.record.hostEpoch ?? 0}) is gone`;
      const ok = await this.write(undefined, {
        guards: [{ hostId: t.hostId, expectRevision: t.revision }],
        vms: [{ key: v.key, expectRevision: v.revision, next: markLost(v.record, why, nowWall) }],
        events: [{ kind: 'vm-lost', vm: v.key, hostId: t.hostId, hostEpoch: v.record.hostEpoch ?? 0, hostRejoinedEpoch: t.record.epoch, at: nowWall, detail: `VM ${v.key} lost: ${why}` }],
      }, { action: 'mark-lost', retry: false });
      if (ok) marked++;
    }
    if (marked > 0) {
      try {
        vms = await this.store.listVms(this.o.callDeadline);
      } catch (err) {
        this.log.warn({ err: messageOf(err) }, 'listing VMs for the reschedule failed; retrying at the next GC tick');
        return;
      }
    }
    const keepReason = 'lost; restartPolicy none: left for the operator';
    for (const v of vms) {
      if (v.record.phase !== 'lost' || restartPolicyOf(v.record) !== 'none' || v.record.reason === keepReason) continue;
      await this.write(undefined, {
        vms: [{ key: v.key, expectRevision: v.revision, next: { ...v.record, reason: keepReason, generation: v.record.generation + 1, updatedAt: nowWall } }],
        events: [{ kind: 'vm-lost-kept', vm: v.key, hostId: v.record.hostId ?? null, at: nowWall, detail: `VM ${v.key} is lost and has restartPolicy none: left for the operator` }],
      }, { action: 'keep-lost', retry: false });
    }
    const toPlace = vms.filter(
      (v) => (v.record.phase === 'lost' && restartPolicyOf(v.record) === 'reschedule') || (v.record.phase === 'pending' && v.record.hostId === undefined),
    );
    if (toPlace.length === 0) return;
    const hosts: SchedulableHost[] = [];
    for (const t of this.hosts.values()) {
      if (t.record && isSchedulable(t.record, t.alive !== undefined)) hosts.push({ hostId: t.hostId, epoch: t.record.epoch, capacity: t.record.capacity });
    }
    const placements = placeVms(
      toPlace.map((v) => ({ key: v.key, spec: v.record.spec })),
      hosts,
      vms.map((v) => v.record),
    );
    for (const p of placements) {
      const v = toPlace.find((x) => x.key === p.key)!;
      if ('hostId' in p) {
        const target = this.hosts.get(p.hostId);
        if (!target?.revision) continue;
        const uid = this.o.newUid();
        const next: ClusterVmRecord = { ...withoutPlacement(v.record), uid, hostId: p.hostId, hostEpoch: p.hostEpoch, phase: 'pending', generation: v.record.generation + 1, updatedAt: nowWall };
        const ok = await this.write(undefined, {
          guards: [{ hostId: p.hostId, expectRevision: target.revision }],
          vms: [{ key: v.key, expectRevision: v.revision, next }],
          events: [{ kind: 'vm-rescheduled', vm: v.key, fromHost: v.record.hostId ?? null, toHost: p.hostId, uid, at: nowWall, detail: `VM ${v.key} placed on ${p.hostId} (epoch ${p.hostEpoch}) as ${uid}` }],
        }, { action: 'reschedule', retry: false });
        if (ok) this.log.info({ vm: v.key, from: v.record.hostId, to: p.hostId, uid }, 'VM rescheduled');
      } else {
        if (v.record.phase === 'pending' && v.record.hostId === undefined && v.record.reason === p.reason) continue;
        const next: ClusterVmRecord = { ...withoutPlacement(v.record), phase: 'pending', reason: p.reason, generation: v.record.generation + 1, updatedAt: nowWall };
        await this.write(undefined, {
          vms: [{ key: v.key, expectRevision: v.revision, next }],
          events: [{ kind: 'vm-pending', vm: v.key, reason: p.reason, at: nowWall, detail: `VM ${v.key} waits for capacity: ${p.reason}` }],
        }, { action: 'pending', retry: false });
      }
    }
  }

  // ---- host-record GC and event retention -----------------------------------------------------

  private async gc(): Promise<void> {
    this.gcTimer = undefined;
    const term = this.term;
    const nowWall = this.clock.now();
    for (const t of [...this.hosts.values()]) {
      const rec = t.record;
      if (!rec || t.revision === undefined) continue;
      const action = hostGcAction(rec, t.alive !== undefined, nowWall, { ttl: this.o.hostRecordTtl, removeAfter: this.o.retiredRemoveAfter });
      if (action === 'retire') {
        const ok = await this.write(t.hostId, {
          hosts: [{ hostId: t.hostId, expectRevision: t.revision, requireAliveAbsent: true, next: { ...rec, state: 'retired', updatedAt: nowWall } }],
          events: [{ kind: 'host-retired', hostId: t.hostId, epoch: rec.epoch, at: nowWall, detail: `host ${t.hostId} fenced and absent for over ${Math.round(this.o.hostRecordTtl / 1000)}s: retired` }],
        }, { action: 'retire', retry: false });
        if (ok) this.log.info({ hostId: t.hostId }, 'host record retired');
      } else if (action === 'remove') {
        const ok = await this.write(t.hostId, {
          hosts: [{ hostId: t.hostId, expectRevision: t.revision, requireAliveAbsent: true, next: null }],
          events: [{ kind: 'host-removed', hostId: t.hostId, at: nowWall, detail: `retired host record ${t.hostId} removed` }],
        }, { action: 'remove', retry: false });
        if (ok) {
          this.disarm(t);
          this.hosts.delete(t.hostId);
          this.log.info({ hostId: t.hostId }, 'host record removed');
        }
      }
    }
    try {
      const n = await this.store.pruneEvents(this.o.eventRetention, this.o.callDeadline);
      if (n > 0) this.log.debug({ deleted: n }, 'old events pruned');
    } catch (err) {
      this.log.warn({ err: messageOf(err) }, 'pruning events failed');
    }
    this.requestSweep();
    if (term === this.term && this.leadership) this.gcTimer = this.clock.setTimer(this.o.gcInterval, () => this.push({ kind: 'gc', term }));
  }

  // ---- status ----------------------------------------------------------------------------------

  private computeStatus(): ControllerStatus {
    const nowMono = this.clock.nowMono();
    const records = [...this.hosts.values()].map((t) => t.record).filter((r): r is HostRecord => r !== undefined);
    const count = countDetached(records.map((r) => r.state));
    const frozen = !fencingAllowed(this.freeze);
    const freezeReason = describeFreeze(this.freeze, this.o.freezeShare, nowMono);
    const hosts: ControllerHostStatus[] = [];
    for (const t of [...this.hosts.values()].sort((a, b) => (a.hostId < b.hostId ? -1 : 1))) {
      if (!t.record) continue;
      const d = decideHost(t.record, t.alive !== undefined);
      const unsafe = timingProblems(t.record);
      const s: { hostId: string; fenceAt?: number; blocked?: string; unsafeTimings?: string } = { hostId: t.hostId };
      if (d.kind === 'await-fence' && t.fenceAtWall !== undefined) {
        s.fenceAt = t.fenceAtWall;
        if (frozen) s.blocked = 'mass-disruption freeze';
      }
      if (d.kind === 'never-fence') s.blocked = d.blockers.join(', ');
      if (unsafe !== undefined) s.unsafeTimings = unsafe;
      if (s.fenceAt !== undefined || s.blocked !== undefined || s.unsafeTimings !== undefined) hosts.push(s);
    }
    return {
      controllerId: this.o.controllerId,
      leaderSince: this.leaderSinceWall,
      at: this.clock.now(),
      freeze: {
        mode: this.freeze.mode,
        detached: count.detached,
        total: count.total,
        limit: this.o.freezeShare,
        ...(this.freezeResumeAtWall !== undefined ? { resumeAt: this.freezeResumeAtWall } : {}),
        ...(freezeReason !== undefined ? { reason: freezeReason } : {}),
      },
      hosts,
      ...(this.failures.length > 0 ? { failures: [...this.failures] } : {}),
      ...(this.storeInfo ? { store: this.storeInfo } : {}),
    };
  }

  /** Publishes `controller/status` when it changed (ignoring its timestamp); at most every {@link STATUS_DEBOUNCE_MS}. */
  private async publishStatus(): Promise<void> {
    if (!this.synced) return;
    const doc = this.computeStatus();
    const sig = JSON.stringify({ ...doc, at: 0, freeze: { ...doc.freeze, reason: doc.freeze.mode } });
    if (sig === this.lastStatus || !this.leadership) return;
    try {
      await this.store.putStatus(this.leadership, doc, this.o.callDeadline);
      this.lastStatus = sig;
    } catch (err) {
      this.log.debug({ err: messageOf(err) }, 'publishing controller status failed');
    }
  }
}
