/**
 * The cluster controller (ARCHITECTURE.md sections 1-3, issue 4): one active replica, elected through
 * the store, watches `hosts/`; a lease gone makes a record `detached` with a fence deadline; at the
 * deadline one txn fences the host and marks its VMs `lost`; lost VMs are rescheduled; long-gone host
 * records are retired and removed.
 *
 * One owner of mutable state: watch callbacks and timers only push inputs onto a queue; a single async
 * loop applies them in order. Every write is one txn guarded by `mod_revision` compares and by this
 * replica's leadership (see {@link Leadership}), so a decision taken on a stale view, or by a replica
 * that lost the election, loses instead of overwriting: "host came back in time" and "cluster fenced the
 * host" cannot both win, and a host is never fenced twice.
 */
import { randomBytes } from 'node:crypto';
import type { ClusterEvent, ClusterEventBody } from '../domain/cluster-event.js';
import { lostWithHost, markLost, restartPolicyOf, staleOnRejoinedHost, type ClusterVmRecord } from '../domain/cluster-vm.js';
import { messageOf } from '../domain/errors.js';
import {
  decideHost,
  detachRecord,
  effectiveFenceWindow,
  fencedRecord,
  takeoverFenceDeadline,
  timingProblems,
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
  ControllerHostStatus,
  ControllerStatus,
  ControllerStore,
  HostWatchEvent,
  Leadership,
  Revision,
  Subscription,
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
  /**
   * After the controller sees an operator release a hold, a detachment within this time still counts
   * as held (the host reads the hold only every few heartbeats, so it may not know of the release and
   * would not self-fence). Default 30 s.
   */
  readonly holdReleaseGrace?: number;
  /** Delay before retrying a failed or conflicting write (default 1 s). */
  readonly retryDelay?: number;
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
  | {
      readonly kind: 'detach-done';
      readonly term: number;
      readonly hostId: string;
      readonly next: HostRecord;
      readonly obsWall: number;
      readonly obsMono: number;
      readonly res?: CommitResult;
      readonly err?: string;
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
  /** When the controller saw the operator release the hold. */
  releasedMono?: number;
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
 *  - a host held now or held when it detached, or publishing unsafe timings, is never fenced here;
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
      holdReleaseGrace: options.holdReleaseGrace ?? 30_000,
      retryDelay: options.retryDelay ?? 1000,
      newUid: options.newUid ?? (() => randomBytes(16).toString('hex')),
    };
    this.log = logger.child({ c: 'controller', controllerId: options.controllerId });
  }

  /** Starts the loop and campaigning. Idempotent. */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.loop = this.run();
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
    await this.resync();
    this.gcTimer = this.clock.setTimer(this.o.gcInterval, () => this.push({ kind: 'gc', term: this.term }));
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
        this.setRecord(t, h.record, h.recordRevision, this.clock.nowMono());
        t.recordSeen = at;
        t.aliveSeen = at;
        if (h.alive) {
          t.alive = h.alive;
          t.goneWall = t.goneMono = undefined;
        } else t.alive = undefined;
      }
      for (const t of this.hosts.values()) {
        if (present.has(t.hostId)) continue;
        this.setRecord(t, undefined, undefined, this.clock.nowMono());
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

  /** Sets the record, noting an operator release (hold true -> false) and a return before the fence. */
  private setRecord(t: Tracked, record: HostRecord | undefined, revision: Revision | undefined, mono: number): { returned: boolean } {
    const prev = t.record;
    t.record = record;
    t.revision = revision;
    if (prev?.hold && record && !record.hold) t.releasedMono = mono;
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
      const { returned } = this.setRecord(t, e.kind === 'record' ? e.record : undefined, e.kind === 'record' ? e.revision : undefined, mono);
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

  /**
   * Starts the detach txn (record unchanged and `alive` still absent -> `detached` with the deadline,
   * plus a `host-detached` event) without waiting for it: many hosts expiring at once are detached by
   * up to {@link MAX_DETACHES_IN_FLIGHT} concurrent txns; the result comes back as a `detach-done` input.
   * While its txn is in flight the host is not reconciled (its own write must not look like a takeover).
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
    const releasedRecently = t.releasedMono !== undefined && obsMono - t.releasedMono < this.o.holdReleaseGrace;
    const next = detachRecord(rec, obsWall, { fenceWindowOverride: this.o.fenceWindowOverride, releasedRecently });
    const deadline = next.fenceDeadline!;
    const change: Change = {
      leader: l,
      hosts: [{ hostId: t.hostId, expectRevision: t.revision!, requireAliveAbsent: true, next }],
      events: [
        {
          kind: 'host-detached',
          hostId: t.hostId,
          epoch: rec.epoch,
          fenceDeadline: deadline,
          heldAtDetach: next.heldAtDetach === true,
          at: nowWall,
          detail: `lease of ${t.hostId} gone; ${next.heldAtDetach ? 'held: it will not be fenced automatically' : `its VMs are treated as gone at ${new Date(deadline).toISOString()} unless it re-registers first`}`,
        },
      ],
    };
    t.detaching = true;
    this.detachesInFlight++;
    const term = this.term;
    const done = (res: CommitResult | undefined, err?: string) =>
      this.push({ kind: 'detach-done', term, hostId: t.hostId, next, obsWall, obsMono, ...(res ? { res } : {}), ...(err !== undefined ? { err } : {}) });
    this.store.commit(change, this.o.callDeadline).then(
      (res) => done(res),
      (err) => done(undefined, messageOf(err)),
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
      this.log.warn({ hostId: t.hostId, err: i.err }, 'detach txn failed; retrying');
      this.retryLater(t);
      return;
    }
    if (!i.res.ok) {
      if (i.res.reason === 'not-leader') return this.stepDown('a txn found another controller holding controller/leader');
      this.log.debug({ hostId: t.hostId }, 'detach txn lost a race (the host re-registered or its record changed); re-evaluating');
      return this.reconcile(t);
    }
    const r = rev(i.res.revision);
    if (r >= t.recordSeen) {
      this.setRecord(t, i.next, i.res.revision, this.clock.nowMono());
      t.recordSeen = r;
    }
    if (t.revision === i.res.revision) {
      this.disarm(t);
      const deadline = i.next.fenceDeadline!;
      t.incarnation = incarnationOf(i.next);
      t.fenceAtMono = i.obsMono + (deadline - i.obsWall);
      t.fenceAtWall = deadline;
      this.log.info({ hostId: t.hostId, epoch: i.next.epoch, fenceInMs: Math.round(t.fenceAtMono - this.clock.nowMono()), heldAtDetach: i.next.heldAtDetach }, 'host detached');
    }
    await this.reconcile(t);
    this.markFreezeDirty();
  }

  /**
   * Arms the fence timer of a detached host. A deadline this replica did not compute itself in this
   * term (failover, or a detachment it did not write) follows the takeover rule, and the later deadline
   * is written back to the record so every reader sees it.
   */
  private async armFence(t: Tracked): Promise<void> {
    const rec = t.record!;
    const inc = incarnationOf(rec);
    if (t.incarnation !== inc || t.fenceAtMono === undefined) {
      this.disarm(t);
      const nowWall = this.clock.now();
      const nowMono = this.clock.nowMono();
      const window = effectiveFenceWindow(rec.timings, this.o.fenceWindowOverride);
      const due = takeoverFenceDeadline(rec.fenceDeadline, nowWall, window);
      t.incarnation = inc;
      t.fenceAtMono = nowMono + (due - nowWall);
      t.fenceAtWall = due;
      this.log.info({ hostId: t.hostId, recorded: rec.fenceDeadline, due, fenceInMs: due - nowWall }, 'pending fence taken over: the recorded deadline or a full window from now, whichever is later');
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
                at: nowWall,
                detail: `controller ${this.o.controllerId} took over the pending fence of ${t.hostId}: deadline ${new Date(due).toISOString()} (a full window from its takeover)`,
              },
            ],
          },
          nowWall,
          false,
        );
        if (t.incarnation !== inc) return;
      }
    }
    if (t.fenceTimer === undefined) {
      const delay = Math.max(0, t.fenceAtMono! - this.clock.nowMono());
      const term = this.term;
      t.fenceTimer = this.clock.setTimer(delay, () => this.push({ kind: 'fence-due', term, hostId: t.hostId, incarnation: inc }));
    }
  }

  private disarm(t: Tracked): void {
    if (t.fenceTimer) this.clock.clearTimer(t.fenceTimer);
    t.fenceTimer = undefined;
    t.incarnation = undefined;
    t.fenceAtMono = undefined;
    t.fenceAtWall = undefined;
  }

  private async fenceDue(hostId: string, incarnation: string): Promise<void> {
    const t = this.hosts.get(hostId);
    if (!t || t.incarnation !== incarnation) return;
    t.fenceTimer = undefined;
    const d = decideHost(t.record, t.alive !== undefined);
    if (d.kind !== 'await-fence') return this.reconcile(t);
    if (this.clock.nowMono() < t.fenceAtMono!) return this.armFence(t); // never early
    if (this.freezeDirty) await this.evaluateFreeze(); // decide on the current detached share
    if (!fencingAllowed(this.freeze)) {
      this.log.warn({ hostId, freeze: describeFreeze(this.freeze, this.o.freezeShare, this.clock.nowMono()) }, 'fence deadline passed but the mass-disruption freeze holds it');
      return;
    }
    await this.fence(t);
  }

  /** The fence txn: record still `detached` at this revision, lease still absent -> `fenced`, its VMs `lost`, one event. */
  private async fence(t: Tracked): Promise<void> {
    const rec = t.record!;
    let vms;
    try {
      vms = await this.store.listVms(this.o.callDeadline);
    } catch (err) {
      this.log.warn({ hostId: t.hostId, err: messageOf(err) }, 'listing VMs for the fence failed; retrying');
      this.retryLater(t);
      return;
    }
    const nowWall = this.clock.now();
    const lost = vms.filter((v) => lostWithHost(v.record, t.hostId, rec.epoch));
    const reason = `host ${t.hostId} fenced at epoch ${rec.epoch}`;
    const ok = await this.write(
      t.hostId,
      {
        hosts: [{ hostId: t.hostId, expectRevision: t.revision!, requireAliveAbsent: true, next: fencedRecord(rec, nowWall) }],
        vms: lost.map((v) => ({ key: v.key, expectRevision: v.revision, next: markLost(v.record, reason, nowWall) })),
        events: [
          {
            kind: 'host-fenced',
            hostId: t.hostId,
            epoch: rec.epoch,
            by: 'controller',
            lostVms: lost.map((v) => v.key),
            at: nowWall,
            detail: `fence window of ${t.hostId} passed (deadline ${new Date(rec.fenceDeadline ?? nowWall).toISOString()}): fenced at epoch ${rec.epoch}, ${lost.length} VM(s) lost`,
          },
        ],
      },
      nowWall,
    );
    if (!ok) return;
    this.disarm(t);
    this.log.warn({ hostId: t.hostId, epoch: rec.epoch, lostVms: lost.length, lateMs: Math.round(nowWall - (t.fenceAtWall ?? nowWall)) }, 'host fenced');
    this.requestSweep();
  }

  /**
   * Commits `change` as the leader. On success updates the tracked records it wrote; on `not-leader`
   * steps down; on a conflict or an error retries the host later (when `retry`).
   */
  private async write(hostId: string | undefined, change: Omit<Change, 'leader'>, _nowWall: number, retry = true): Promise<boolean> {
    const l = this.leadership;
    if (!l) return false;
    let res;
    try {
      res = await this.store.commit({ ...change, leader: l }, this.o.callDeadline);
    } catch (err) {
      this.log.warn({ hostId, err: messageOf(err) }, 'controller txn failed; retrying');
      const t = hostId ? this.hosts.get(hostId) : undefined;
      if (t && retry) this.retryLater(t);
      return false;
    }
    if (res.ok) {
      for (const h of change.hosts ?? []) {
        const t = this.hosts.get(h.hostId);
        if (!t) continue;
        this.setRecord(t, h.next ?? undefined, h.next ? res.revision : undefined, this.clock.nowMono());
        t.recordSeen = rev(res.revision);
      }
      return true;
    }
    if (res.reason === 'not-leader') {
      this.push({ kind: 'leader-lost', term: this.term, why: 'a txn found another controller holding controller/leader' });
      return false;
    }
    this.log.debug({ hostId }, 'controller txn lost a race (record or VM changed); re-evaluating');
    const t = hostId ? this.hosts.get(hostId) : undefined;
    if (t && retry) this.retryLater(t);
    return false;
  }

  private retryLater(t: Tracked): void {
    if (t.retryTimer) return;
    const term = this.term;
    t.retryTimer = this.clock.setTimer(this.o.retryDelay, () => this.push({ kind: 'retry-host', term, hostId: t.hostId }));
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
   */
  private async sweep(): Promise<void> {
    if (this.freezeDirty) await this.evaluateFreeze();
    if (!this.leadership || !this.synced || !fencingAllowed(this.freeze)) return;
    let vms;
    try {
      vms = await this.store.listVms(this.o.callDeadline);
    } catch (err) {
      this.log.warn({ err: messageOf(err) }, 'listing VMs for the reschedule failed; retrying at the next GC tick');
      return;
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
      }, nowWall, false);
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
      }, nowWall, false);
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
        }, nowWall, false);
        if (ok) this.log.info({ vm: v.key, from: v.record.hostId, to: p.hostId, uid }, 'VM rescheduled');
      } else {
        if (v.record.phase === 'pending' && v.record.hostId === undefined && v.record.reason === p.reason) continue;
        const next: ClusterVmRecord = { ...withoutPlacement(v.record), phase: 'pending', reason: p.reason, generation: v.record.generation + 1, updatedAt: nowWall };
        await this.write(undefined, {
          vms: [{ key: v.key, expectRevision: v.revision, next }],
          events: [{ kind: 'vm-pending', vm: v.key, reason: p.reason, at: nowWall, detail: `VM ${v.key} waits for capacity: ${p.reason}` }],
        }, nowWall, false);
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
        }, nowWall, false);
        if (ok) this.log.info({ hostId: t.hostId }, 'host record retired');
      } else if (action === 'remove') {
        const ok = await this.write(t.hostId, {
          hosts: [{ hostId: t.hostId, expectRevision: t.revision, requireAliveAbsent: true, next: null }],
          events: [{ kind: 'host-removed', hostId: t.hostId, at: nowWall, detail: `retired host record ${t.hostId} removed` }],
        }, nowWall, false);
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
