import { TetherError } from '../../domain/errors.js';
import {
  FIRST_REGISTRATION_BACKOFF_MS,
  judgeRegistration,
  leaseGrantedEvent,
  registrationRetry,
  registrationWanted,
  type RegistrationMode,
} from '../../domain/registration-loop.js';
import type { GcSession } from './gc-session.js';
import type { HoldSync } from './hold-sync.js';
import { localHoldSet, saveSilence, setLocalHold } from './persisted-state.js';

/** What this agent registers as (HostGcOptions). */
export interface RegistrantInfo {
  readonly agentId: string;
  /** The machine this agent runs on (see `Registration.machineId`). */
  readonly machineId?: string;
  readonly holder: string;
  readonly capacity: { vcpu: number; memoryMb: number };
  readonly labels?: Record<string, string>;
  readonly agentVersion: string;
  /** Where this host's peer channel listens (`HostRecord.peerAddress`); absent: no peer channel. */
  readonly peerAddress?: string;
}

/**
 * (Re-)registration: grant a lease, run the registration txn, feed the answer to the lifecycle, and
 * retry as src/domain/registration-loop.ts says until it is no longer wanted.
 *
 * Invariants: one registration loop at a time (a second `register` while one runs returns at once);
 * a refused registration's lease is revoked (best effort); waits are on the injected Clock.
 */
export class Registrar {
  private running: RegistrationMode | undefined;
  /** A registration asked for while a loop ran: started when that loop ends (if still wanted then). */
  private pending: RegistrationMode | undefined;

  constructor(
    private readonly s: GcSession,
    private readonly me: RegistrantInfo,
    private readonly holds: HoldSync,
  ) {}

  /**
   * Registers in `mode` until registered, refused for good, no longer wanted, or stopped. Asked for
   * while a loop runs, it is not dropped: it runs once that loop ends (a host that fenced while a
   * `reattach` loop was still retrying must still register `ready` once clean).
   */
  async register(mode: RegistrationMode): Promise<void> {
    if (this.running) {
      if (mode !== this.running) this.pending = mode;
      return;
    }
    this.running = mode;
    const s = this.s;
    const { clock, logger, inventory, hostId } = s.ctx;
    const t = s.t;
    let backoff = FIRST_REGISTRATION_BACKOFF_MS;
    let lastError: string | undefined;
    let waitingOn: string | undefined;
    let txnSent = false;
    try {
      while (!s.stopped) {
        if (!registrationWanted(mode, s.state.phase, s.lease !== undefined)) return;
        const sentAt = clock.nowMono();
        try {
          // A lease this host vouched for to its peers must be gone before the host is put back
          // (docs/peer-check.md "The witness"): else the controller might never count it detached.
          if (s.silentUntil !== undefined && clock.nowMono() < s.silentUntil) {
            await clock.sleep(Math.min(t.heartbeatInterval, s.silentUntil - clock.nowMono()));
            continue;
          }
          const vouched = s.silencedLease;
          if (vouched !== undefined) {
            if (await s.store.leaseExists(vouched, t.heartbeatInterval)) {
              await clock.sleep(t.heartbeatInterval);
              continue;
            }
            // A peer's question answered during that read may have extended the promise.
            if (s.silencedLease !== vouched || (s.silentUntil !== undefined && clock.nowMono() < s.silentUntil)) continue;
          }
          // No await from the checks above to `membershipUnresolved = true` below: an answer given
          // after this point says `silent: false` and promises nothing.
          if (s.silencedLease !== undefined || s.silentUntil !== undefined) {
            logger.info({ lease: s.silencedLease }, 'the promise made to peers as a witness is kept (lease gone, stay-away over): registering again');
            s.silencedLease = undefined;
            s.silentUntil = undefined;
            s.promisedMs = 0;
            saveSilence(inventory, undefined);
          }
          // From here until a definite answer this host may be put back: it vouches for nothing.
          s.membershipUnresolved = true;
          txnSent = false;
          const lease = await s.store.grantLease(t.ttl, t.heartbeatInterval * 2);
          const reachable = leaseGrantedEvent(mode);
          if (reachable) s.dispatch(reachable);
          txnSent = true;
          const res = await s.store.register(
            {
              hostId,
              mode,
              epoch: s.state.epoch,
              lease,
              agentId: this.me.agentId,
              ...(this.me.machineId !== undefined ? { machineId: this.me.machineId } : {}),
              holder: this.me.holder,
              holdApplied: s.state.held,
              record: { hostId, timings: t, capacity: this.me.capacity, labels: this.me.labels ?? {}, agentVersion: this.me.agentVersion, ...(this.me.peerAddress !== undefined ? { peerAddress: this.me.peerAddress } : {}) },
            },
            t.heartbeatInterval * 2,
          );
          s.membershipUnresolved = false;
          const v = judgeRegistration(t, res, sentAt, s.duplicateOf, mode, waitingOn);
          if (v.kind === 'registered') {
            s.lease = lease;
            s.lastAckReceivedAt = clock.nowMono();
            s.unanswered = 0;
            s.duplicateOf = undefined;
            if (localHoldSet(inventory)) setLocalHold(inventory, false);
            s.dispatch(v.event);
            void this.holds.sync();
            return;
          }
          void s.store.revokeLease(lease, t.heartbeatInterval).catch(() => undefined);
          if (v.kind === 'wait') {
            if (v.report) {
              logger.warn({ detail: v.detail }, `rejoin refused for now: ${v.detail}. This host is clean and runs nothing; retrying every ${t.ttl} ms`);
              inventory.addEvent('registration-refused', clock.now(), { reason: 'epoch-mismatch', detail: v.detail });
            }
            waitingOn = v.detail;
            await clock.sleep(v.retryAfterMs);
            continue;
          }
          if (v.kind === 'duplicate') {
            const detail = v.duplicateOf;
            if (v.report) {
              logger.error({ detail }, `registration refused: ${detail}. This agent does not act on the cluster (and fences nothing for it) while the other one holds this host id; retrying every ${t.ttl} ms`);
              inventory.addEvent('registration-refused', clock.now(), { reason: 'duplicate', detail });
            }
            s.duplicateOf = v.duplicateOf;
            s.dispatch(v.event);
            await clock.sleep(v.retryAfterMs);
            continue;
          }
          logger.warn({ reason: v.reason, detail: v.detail }, 'registration refused');
          inventory.addEvent('registration-refused', clock.now(), { reason: v.reason, detail: v.detail });
          s.dispatch(v.event);
          return;
        } catch (err) {
          // No txn sent (the grant failed): nothing can have put this host back.
          if (!txnSent) s.membershipUnresolved = false;
          const r = registrationRetry(t, backoff, err, lastError);
          if (r.retryable) logger.debug({ mode, err: r.message }, 'registration attempt failed');
          else {
            // e.g. a malformed host record: say so loudly (once per message) and keep backing off.
            const code = err instanceof TetherError ? err.code : undefined;
            if (r.report) {
              logger.error({ mode, code, err: r.message }, 'registration failed and will keep failing until an operator fixes the cause');
              inventory.addEvent('registration-error', clock.now(), { code, err: r.message });
            }
            lastError = r.message;
          }
          await clock.sleep(r.delayMs);
          backoff = r.nextBackoffMs;
        }
      }
    } finally {
      this.running = undefined;
      const next = this.pending;
      this.pending = undefined;
      if (next && !s.stopped) void this.register(next);
    }
  }
}
