/**
 * The cluster controller (ARCHITECTURE.md sections 1-3, issue 4): one active replica, elected through
 * the store, watches `hosts/`; a lease gone makes a record `detached` with a fence deadline; at the
 * deadline one constant-size txn fences the host, then further txns (each within the store's
 * {@link TxnLimits}) mark its VMs `lost` — the builders of `domain/fence-changes.ts`, shared with the
 * operator's fence; lost VMs are rescheduled; long-gone host records are retired and removed.
 *
 * Every decision is taken by the pure core `domain/controller/` (`step(state, input, now) -> { state,
 * effects }`, see docs/controller.md). This class is its runner: it owns the input queue, applies one
 * input at a time, executes the effects against the {@link ControllerStore} and the {@link Clock}
 * (store calls, timers, logs) and feeds their outcomes back as inputs. It decides nothing: it reads
 * the clock once per input, draws new VM uids from the injected `newUid`, and adds this replica's
 * leadership token to every txn (so a replica that lost the election can change nothing).
 *
 * One owner of mutable state: watch callbacks, timers and store replies only push inputs onto the
 * queue; the queue is drained on a microtask, one `step` after the other.
 */
import { randomBytes } from 'node:crypto';
import { coreConfig, initialState, step, type CoreOptions } from '../domain/controller/step.js';
import { statusOf } from '../domain/controller/status.js';
import type { Call, CallError, ControllerState, Effect, Input, Now, Reply } from '../domain/controller/types.js';
import { messageOf, TetherError } from '../domain/errors.js';
import type { Clock, TimerHandle } from '../ports/clock.js';
import type { ControllerStatus, ControllerStore, Leadership, Subscription, TxnLimits } from '../ports/controller-store.js';
import type { Logger } from '../ports/logger.js';

/** Options of {@link Controller}. Durations in ms. */
export interface ControllerOptions extends Omit<CoreOptions, 'txnLimits'> {
  /** New VM uids (default 32 random hex chars). The only source of ids: a simulator injects a seeded one. */
  readonly newUid?: () => string;
}

/** The replica's role and, when leading, its status document. */
export interface ControllerView {
  readonly controllerId: string;
  readonly role: 'leader' | 'standby' | 'stopped';
  /** Present while leading. */
  readonly status?: ControllerStatus;
}

/** A store failure as the core sees it (stable code, message, retryable). */
function callError(err: unknown): CallError {
  return { code: err instanceof TetherError ? err.code : 'INTERNAL', message: messageOf(err), retryable: err instanceof TetherError && err.retryable };
}

/**
 * See the module doc. Constructor injection: the store, the clock (all deadlines and timers; wall time
 * only for records and display), the logger.
 *
 * Invariants (each enforced by a test; the rules live in the core, see docs/controller.md):
 *  - a host is fenced only when its record is still `detached` at the same `mod_revision` and its
 *    `alive` key is absent, and never before its deadline on this replica's monotonic clock;
 *  - a replica that takes over uses the recorded deadline or a full window from its takeover, whichever
 *    is later;
 *  - a host that acknowledged a hold (`holdSeen`) now or when it detached, or publishing unsafe
 *    timings, is never fenced here; a requested hold the host has not acknowledged blocks nothing;
 *  - a lease lost within one TTL of a raft term change this replica saw gets `ttl + window`;
 *  - every txn fits the store's limits; a fenced host whose VMs are not all lost gets them marked lost;
 *  - while more than `freezeShare` of the hosts are detached, and for a full fence window after the share
 *    falls back, nothing is fenced or rescheduled.
 */
export class Controller {
  private readonly log: Logger;
  private readonly newUid: () => string;
  private readonly controllerId: string;
  private readonly callDeadline: number;
  private state: ControllerState;
  private readonly queue: Input[] = [];
  private draining = false;
  private scheduled = false;
  private stopped = false;
  private started = false;
  private leadership: Leadership | undefined;
  private sub: Subscription | undefined;
  /** Request id of the watch `sub` belongs to (events carry it). */
  private subWatch: number | undefined;
  /** The VM watch, and its request id. */
  private vmSub: Subscription | undefined;
  private vmSubWatch: number | undefined;
  private readonly timers = new Map<string, { readonly id: number; readonly handle: TimerHandle }>();
  private unsubscribeTerm: (() => void) | undefined;

  constructor(
    private readonly store: ControllerStore,
    private readonly clock: Clock,
    logger: Logger,
    options: ControllerOptions,
  ) {
    const { newUid, ...core } = options;
    this.state = initialState(coreConfig({ ...core, txnLimits: store.txnLimits as TxnLimits }));
    this.controllerId = options.controllerId;
    this.callDeadline = this.state.cfg.callDeadline;
    this.newUid = newUid ?? (() => randomBytes(16).toString('hex'));
    this.log = logger.child({ c: 'controller', controllerId: options.controllerId });
  }

  /** Starts campaigning. Idempotent. */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.unsubscribeTerm = this.store.onRaftTerm((term) => this.push({ kind: 'raft-term', term, at: this.now() }));
    const known = this.store.raftTerm();
    if (known !== undefined) this.push({ kind: 'raft-term', term: known, at: this.now() });
    this.push({ kind: 'start' });
  }

  /**
   * Stops applying inputs and every timer. With `resign`, gives leadership up at once (the standby
   * takes over within its campaign interval); without it (a crash, as tests simulate), the leader
   * lease expires on its own after its TTL. The store is the caller's to close.
   */
  async stop(opts: { resign?: boolean } = {}): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.unsubscribeTerm?.();
    this.queue.length = 0;
    for (const t of this.timers.values()) this.clock.clearTimer(t.handle);
    this.timers.clear();
    const l = this.leadership;
    this.leadership = undefined;
    await Promise.all([this.closeWatch(), this.closeVmWatch()]);
    if (l && opts.resign) await this.store.resign(l, this.callDeadline).catch((err) => this.log.warn({ err: messageOf(err) }, 'resign failed; the leader lease will expire'));
  }

  /** True while this replica leads. */
  get isLeader(): boolean {
    return !this.stopped && this.state.leader;
  }

  /** Role and (while leading) the status document, computed now (the published one lags by up to 250 ms). */
  view(): ControllerView {
    const s = this.state;
    const role = this.stopped ? 'stopped' : s.leader ? 'leader' : 'standby';
    return { controllerId: this.controllerId, role, ...(!this.stopped && s.leader && s.synced ? { status: statusOf(s, this.now()) } : {}) };
  }

  // ---- the queue ----------------------------------------------------------------------------------

  private now(): Now {
    return { wall: this.clock.now(), mono: this.clock.nowMono() };
  }

  private push(i: Input): void {
    if (this.stopped) return;
    this.queue.push(i);
    if (this.scheduled || this.draining) return;
    this.scheduled = true;
    queueMicrotask(() => this.drain());
  }

  /** Applies every queued input in order, one step each, executing its effects before the next. */
  private drain(): void {
    this.scheduled = false;
    this.draining = true;
    try {
      for (let i = this.queue.shift(); i !== undefined && !this.stopped; i = this.queue.shift()) {
        let effects: readonly Effect[];
        try {
          const r = step(this.state, i, this.now());
          this.state = r.state;
          effects = r.effects;
        } catch (err) {
          this.log.error({ err: messageOf(err), input: i.kind }, 'controller step failed (will retry on the next event)');
          continue;
        }
        for (const e of effects) this.execute(e);
      }
    } finally {
      this.draining = false;
    }
  }

  // ---- effects ------------------------------------------------------------------------------------

  private execute(e: Effect): void {
    switch (e.kind) {
      case 'log':
        this.log[e.level]({ ...e.fields }, e.msg);
        return;
      case 'set-timer': {
        const prev = this.timers.get(e.key);
        if (prev) this.clock.clearTimer(prev.handle);
        const handle = this.clock.setTimer(e.delayMs, () => {
          if (this.timers.get(e.key)?.id === e.id) this.timers.delete(e.key);
          this.push({ kind: 'timer', key: e.key, id: e.id });
        });
        this.timers.set(e.key, { id: e.id, handle });
        return;
      }
      case 'clear-timer': {
        const t = this.timers.get(e.key);
        if (t) this.clock.clearTimer(t.handle);
        this.timers.delete(e.key);
        return;
      }
      case 'close-watch':
        void (e.which === 'vms' ? this.closeVmWatch() : this.closeWatch());
        return;
      case 'leadership-dropped':
        this.leadership = undefined;
        return;
      case 'call':
        return this.call(e.req, e.call, e.deadlineMs);
    }
  }

  private async closeWatch(): Promise<void> {
    const sub = this.sub;
    this.sub = undefined;
    this.subWatch = undefined;
    await sub?.close().catch(() => undefined);
  }

  private async closeVmWatch(): Promise<void> {
    const sub = this.vmSub;
    this.vmSub = undefined;
    this.vmSubWatch = undefined;
    await sub?.close().catch(() => undefined);
  }

  /** Starts a store call; its outcome comes back as an input (with the store's raft term then). */
  private call(req: number, c: Call, deadline: number): void {
    const reply = (r: Reply) => this.push({ kind: 'reply', req, reply: r, ...this.term() });
    const failed = (err: unknown) => this.push({ kind: 'failed', req, error: callError(err ?? new Error('store call failed')), ...this.term() });
    const run = (p: Promise<Reply>) => p.then(reply, failed);
    const l = this.leadership;
    const notLeader = () => Promise.resolve<Reply>({ op: 'commit', result: { ok: false, reason: 'not-leader' } });
    switch (c.op) {
      case 'campaign':
        return void run(
          this.store.campaign(c.candidateId, c.ttlMs, deadline).then((won): Reply => {
            if (won && !this.stopped) this.leadership = won;
            return won ? { op: 'campaign', won: true, ttlMs: won.ttlMs } : { op: 'campaign', won: false };
          }),
        );
      case 'keep-leadership':
        if (!l) return void run(Promise.resolve({ op: 'keep-leadership', answer: 'lost' }));
        // a keepalive waits at most one keepalive interval (a third of the TTL), not the call deadline
        return void run(this.store.keepLeadership(l, Math.max(100, Math.floor(l.ttlMs / 3))).then((answer): Reply => ({ op: 'keep-leadership', answer })));
      case 'server-status':
        return void run(this.store.serverStatus(deadline).then((st): Reply => ({ op: 'server-status', version: st.version, raftTerm: st.raftTerm })));
      case 'list-hosts':
        // the published freeze contract is read with the listing (the core needs both once synced)
        return void run(
          Promise.all([this.store.listHosts(deadline), this.store.getFreezeContract(deadline)]).then(([snapshot, contract]): Reply => ({
            op: 'list-hosts',
            snapshot,
            ...(contract !== undefined ? { contract } : {}),
          })),
        );
      case 'watch-hosts': {
        void this.closeWatch();
        this.subWatch = req;
        return void run(
          this.store
            .watchHosts(
              c.fromRevision,
              {
                onEvent: (event) => this.push({ kind: 'host-event', watch: req, event, at: this.now(), ...this.term() }),
                onProgress: (revision) => this.push({ kind: 'hosts-progress', watch: req, revision }),
                onError: (err) => this.push({ kind: 'watch-error', watch: req, message: messageOf(err) }),
              },
              deadline,
            )
            .then((sub): Reply => {
              if (this.subWatch === req && !this.stopped) this.sub = sub;
              else void sub.close().catch(() => undefined);
              return { op: 'watch-hosts' };
            }),
        );
      }
      case 'list-vms':
        return void run(this.store.scanVms(deadline).then((scan): Reply => ({ op: 'list-vms', vms: scan.entries, revision: scan.revision })));
      case 'watch-vms': {
        void this.closeVmWatch();
        this.vmSubWatch = req;
        return void run(
          this.store
            .watchVms(
              c.fromRevision,
              {
                onEvent: (batch) => this.push({ kind: 'vm-batch', watch: req, batch, ...this.term() }),
                onError: (err) => this.push({ kind: 'watch-error', watch: req, message: messageOf(err) }),
              },
              deadline,
            )
            .then((sub): Reply => {
              if (this.vmSubWatch === req && !this.stopped) this.vmSub = sub;
              else void sub.close().catch(() => undefined);
              return { op: 'watch-vms' };
            }),
        );
      }
      case 'get-host':
        return void run(
          this.store.getHost(c.hostId, deadline).then(({ readRevision, ...host }): Reply => ({ op: 'get-host', host, revision: readRevision })),
        );
      case 'sync-hosts':
        if (!l) return void run(Promise.reject(new TetherError('FAILED_PRECONDITION', 'not the leader')));
        return void run(this.store.syncHosts(l, deadline).then((revision): Reply => ({ op: 'sync-hosts', revision })));
      case 'put-contract':
        if (!l) return void run(Promise.reject(new TetherError('FAILED_PRECONDITION', 'not the leader')));
        return void run(this.store.putFreezeContract(l, c.contract, deadline).then((): Reply => ({ op: 'put-contract' })));
      case 'commit':
        if (!l) return void run(notLeader());
        return void run(this.store.commit({ ...c.change, leader: l }, deadline).then((result): Reply => ({ op: 'commit', result })));
      case 'prune-events':
        return void run(this.store.pruneEvents(c.keep, deadline).then((deleted): Reply => ({ op: 'prune-events', deleted })));
      case 'put-status':
        if (!l) return void run(Promise.reject(new TetherError('FAILED_PRECONDITION', 'not the leader')));
        return void run(this.store.putStatus(l, c.status, deadline).then((): Reply => ({ op: 'put-status' })));
      case 'new-uids':
        return void run(Promise.resolve({ op: 'new-uids', uids: Array.from({ length: c.count }, () => this.newUid()) }));
    }
  }

  private term(): { raftTerm?: number } {
    const t = this.store.raftTerm();
    return t !== undefined ? { raftTerm: t } : {};
  }
}
