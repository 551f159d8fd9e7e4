/**
 * Operator actions on hosts that go straight to the store (no controller needed): the confirmed manual
 * fence — through the same pure builders as the controller's fence (`domain/fence-changes.ts`) — and
 * hold/release with the hold protocol's acknowledgement and the messages the rules of ARCHITECTURE.md
 * ("Overrides and their safety") call for.
 */
import type { VmEntry } from '../domain/cluster-change.js';
import { NotFoundError, TetherError } from '../domain/errors.js';
import { fenceChange, vmsLostChanges, vmsToMarkLost } from '../domain/fence-changes.js';
import { describeHold } from '../domain/hold.js';
import type { HostRecord } from '../domain/host-record.js';
import type { Clock } from '../ports/clock.js';
import type { ControllerStore, Revision } from '../ports/controller-store.js';

const ATTEMPTS = 5;

/** Outcome of {@link operatorFence}. */
export interface OperatorFenceResult {
  readonly record: HostRecord;
  /** `ns/name` of the VMs this call marked lost. */
  readonly lostVms: readonly string[];
  /**
   * VMs still to be marked lost (they kept changing, or their record alone is over the txn limits):
   * the active controller finishes them on its next sweep.
   */
  readonly pendingVms: readonly string[];
  /** True when the record was already fenced (only VMs left unmarked by an earlier fence were marked). */
  readonly alreadyFenced: boolean;
}

/**
 * `tether host fence <id> --confirm`: for an operator who knows the host is powered off. The fence txn
 * (record unchanged, `alive` key absent -> `fenced`, `host-fenced` event `by: operator`; constant
 * size), then the host's VMs are marked `lost` in txns within the store's limits, each guarded by the
 * fenced record; the active controller then reschedules them. On a host already fenced, marks lost
 * whatever an interrupted fence left (idempotent).
 *
 * Refused (FAILED_PRECONDITION, nothing changed) while the host holds a live lease (its `alive` key
 * exists: it is running and heartbeating) and for a retired record; NOT_FOUND for an unknown host.
 * Works on held hosts and hosts held when they detached: that is what it is for.
 */
export async function operatorFence(store: ControllerStore, clock: Clock, hostId: string, deadlineMs: number): Promise<OperatorFenceResult> {
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    const h = await store.getHost(hostId, deadlineMs);
    const rec = h.record;
    if (!rec || h.recordRevision === undefined) throw new NotFoundError(`host ${hostId}`);
    if (rec.state === 'fenced') {
      const done = await markFencedVmsLost(store, clock, hostId, deadlineMs);
      return { record: rec, lostVms: done.marked, pendingVms: done.left, alreadyFenced: true };
    }
    if (h.alive) {
      throw new TetherError(
        'FAILED_PRECONDITION',
        `host ${hostId} holds a live lease (epoch ${h.alive.epoch}): it is running and heartbeating, so it is not powered off; nothing was changed`,
      );
    }
    if (rec.state === 'retired') throw new TetherError('FAILED_PRECONDITION', `host ${hostId} is retired; nothing to fence`);
    const vms = await store.listVms(deadlineMs);
    const pending = vmsToMarkLost(vms, hostId, rec.epoch).map((v) => v.key);
    const { next, change } = fenceChange({ hostId, record: rec, revision: h.recordRevision, nowWall: clock.now(), by: 'operator', pendingVms: pending });
    const res = await store.commit(change, deadlineMs);
    if (!res.ok) continue;
    const done = await markFencedVmsLost(store, clock, hostId, deadlineMs, { record: next, revision: res.revision, vms });
    return { record: next, lostVms: done.marked, pendingVms: done.left, alreadyFenced: false };
  }
  throw new TetherError('UNAVAILABLE', `fence of ${hostId}: the record kept changing under ${ATTEMPTS} attempts; nothing was changed`, { retryable: true });
}

/**
 * Marks lost the VMs of a `fenced` host at (or below) its epoch, in txns within the store's limits
 * (operator side of `vmsLostChanges`). A batch that lost a race is rebuilt from a fresh read, at most
 * {@link ATTEMPTS} rounds. Returns what it marked and what is left.
 */
async function markFencedVmsLost(
  store: ControllerStore,
  clock: Clock,
  hostId: string,
  deadlineMs: number,
  first?: { readonly record: HostRecord; readonly revision: Revision; readonly vms: readonly VmEntry[] },
): Promise<{ marked: string[]; left: string[] }> {
  const marked: string[] = [];
  let left: string[] = [];
  for (let round = 0; round < ATTEMPTS; round++) {
    let record = first?.record;
    let revision = first?.revision;
    let vms = first?.vms;
    if (round > 0 || !first) {
      const h = await store.getHost(hostId, deadlineMs);
      record = h.record;
      revision = h.recordRevision;
      vms = await store.listVms(deadlineMs);
    }
    if (!record || revision === undefined || !vms || record.state !== 'fenced') return { marked, left: [] };
    const plan = vmsLostChanges({ hostId, record, revision, vms, nowWall: clock.now(), by: 'operator', limits: store.txnLimits, leader: false });
    left = [...plan.pending];
    let conflicts = 0;
    for (const c of plan.changes) {
      const res = await store.commit(c, deadlineMs);
      if (!res.ok) {
        conflicts++;
        continue;
      }
      const keys = new Set((c.vms ?? []).map((v) => v.key));
      marked.push(...keys);
      left = left.filter((k) => !keys.has(k));
    }
    if (conflicts === 0) return { marked, left };
  }
  return { marked, left };
}

/** Options of {@link setHostHold}. */
export interface HoldOptions {
  /** Wait until the host acknowledges (its `holdSeen` matches). Default false. */
  readonly wait?: boolean;
  /** How long to wait (default max(10 s, 10 heartbeat intervals of the host)). */
  readonly timeoutMs?: number;
  /** Poll period (default 250 ms). */
  readonly pollMs?: number;
  /** Progress lines while waiting (about every 2 s). */
  readonly progress?: (line: string) => void;
}

/** Outcome of {@link setHostHold}: the record and what the operator must know. */
export interface HoldResult {
  readonly record: HostRecord;
  /** True when the host acknowledged the change (`holdSeen` equals the requested hold). */
  readonly acknowledged: boolean;
  /** How the hold shows in `tether host list` now (requested and acknowledged). */
  readonly shown: string;
  /** Warnings to print (empty when there is nothing to add). */
  readonly notes: readonly string[];
}

/**
 * `tether host hold|release <id>`: sets the requested hold on the record (guarded txn with a
 * `host-hold-changed` event), then, with `wait`, waits (bounded) until the host acknowledges it. The
 * hold protocol: the controller honours exactly what the host acknowledged (`holdSeen`), so
 * - a hold not yet acknowledged is NOT honoured: the host still self-fences and the controller still
 *   fences it on schedule if it detaches; a detached host cannot acknowledge at all;
 * - a release not yet acknowledged is not effective: the controller still treats the host as held;
 * - a host that applied a hold when it detached stays held for that detachment (it does not
 *   self-fence), so only `tether host fence <id> --confirm` can fence it.
 */
export async function setHostHold(store: ControllerStore, clock: Clock, hostId: string, hold: boolean, deadlineMs: number, opts: HoldOptions = {}): Promise<HoldResult> {
  let record = await store.setHold(hostId, hold, clock.now(), deadlineMs);
  const reachable = record.state === 'attached' || record.state === 'ready';
  const notes: string[] = [];
  const acked = (r: HostRecord) => (r.holdSeen ?? false) === hold;
  if (!reachable) {
    if (hold) {
      notes.push(
        `host ${hostId} is ${record.state}: it cannot acknowledge this hold, so the hold is NOT honoured for now: its own watchdog stops its VMs on schedule and the controller fences it on schedule; the hold takes effect once the host is back and acknowledges it`,
      );
    } else if (record.state === 'detached' && record.heldAtDetach) {
      notes.push(
        `host ${hostId} applied a hold when it detached and stays held for this detachment (it does not self-fence); only 'tether host fence ${hostId} --confirm' can fence it, once you know it is powered off`,
      );
    }
  } else if (opts.wait && !acked(record)) {
    const timeout = opts.timeoutMs ?? Math.max(10_000, 10 * (record.timings?.heartbeatInterval ?? 1000));
    const poll = opts.pollMs ?? 250;
    const start = clock.nowMono();
    let lastProgress = start;
    opts.progress?.(`waiting up to ${Math.round(timeout / 1000)}s for host ${hostId} to acknowledge the ${hold ? 'hold' : 'release'}`);
    while (!acked(record) && clock.nowMono() - start < timeout) {
      await new Promise<void>((resolve) => clock.setTimer(poll, resolve));
      const h = await store.getHost(hostId, deadlineMs);
      if (!h.record) throw new NotFoundError(`host ${hostId}`);
      record = h.record;
      if (record.hold !== hold) {
        notes.push(`the requested hold of ${hostId} was changed again meanwhile (now ${record.hold ? 'held' : 'released'})`);
        break;
      }
      if (record.state !== 'attached' && record.state !== 'ready') break;
      if (clock.nowMono() - lastProgress >= 2000) {
        lastProgress = clock.nowMono();
        opts.progress?.(`still waiting for ${hostId} (${Math.round((lastProgress - start) / 1000)}s of ${Math.round(timeout / 1000)}s)`);
      }
    }
  }
  const acknowledged = acked(record);
  if (reachable && !acknowledged) {
    notes.push(
      hold
        ? `host ${hostId} has ${opts.wait ? 'not' : 'not yet'} acknowledged the hold: it is NOT honoured yet — the host still self-fences and the controller still fences it on schedule if it detaches`
        : `host ${hostId} has ${opts.wait ? 'not' : 'not yet'} acknowledged the release: the controller still treats it as held (it would not fence it if it detached now)`,
    );
  }
  return { record, acknowledged, shown: describeHold(record.hold, record.holdSeen ?? false), notes };
}
